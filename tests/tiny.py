"""Tiny offline fixtures: a byte-level BPE tokenizer trained on vendored multilingual text and
random decoder-only models built from a config. Nothing here touches the network."""

from __future__ import annotations

import os
from pathlib import Path

# The device the model-running tests use: cpu here and in CI; `LASA_TEST_DEVICE=cuda` reruns the same
# assertions on a GPU (scripts/gpu_check.sh), where bf16, device placement and CUDA kernels differ.
DEVICE = os.environ.get("LASA_TEST_DEVICE", "cpu")
# The weights' dtype there: `LASA_TEST_DTYPE=float32` keeps fp32 on the GPU (its default is bf16).
DTYPE = os.environ.get("LASA_TEST_DTYPE") or ("float32" if DEVICE == "cpu" else "bfloat16")
# Tolerance for two computations of the same quantity that take different kernels (batch shapes):
# fp32 on a GPU picks shape-dependent GEMM algorithms and differs by ~3e-4 on the H200; bf16 keeps
# 8 bits of mantissa (a mix-up of prompts or positions differs by > 0.1 either way).
TOL = 1e-4 if DEVICE == "cpu" else 1e-3 if DTYPE == "float32" else 3e-2

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def corpus() -> list[str]:
    from lasa.data import load_multijail, load_sib200

    mj, sib = load_multijail(), load_sib200()
    return [t for table in (mj, sib) for col in table.texts.values() for t in col[:200]]


def build_tokenizer(vocab_size: int = 600):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None
    )
    fast.chat_template = CHATML
    return fast


def build_model(kind: str, vocab_size: int, layers: int = 4, hidden: int = 32, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=2,
        bos_token_id=None,
    )
    if kind == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common))
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(**common))
    raise ValueError(kind)


def save_tiny(path: Path, kind: str = "qwen2", tokenizer=None, **kw) -> Path:
    tokenizer = tokenizer or build_tokenizer()
    model = build_model(kind, len(tokenizer), **kw)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


_GGUF_BLOCK_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
_GGUF_TOP_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def write_tiny_gguf(model, tokenizer, path: Path) -> Path:
    """Write a tiny Qwen2 model as an F32 GGUF file (llama.cpp tensor names), for the GGUF code path."""
    import json

    import gguf
    import numpy as np

    cfg = model.config
    w = gguf.GGUFWriter(str(path), arch="qwen2")
    w.add_name("tiny-qwen2")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(float(getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    tj = json.loads(tokenizer.backend_tokenizer.to_str())
    tokens = [""] * len(tokenizer)
    for tok, i in tj["model"]["vocab"].items():
        tokens[i] = tok
    for added in tj["added_tokens"]:
        tokens[added["id"]] = added["content"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIAL else 1 for t in tokens])
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tj["model"]["merges"]])
    w.add_eos_token_id(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    w.add_pad_token_id(tokenizer.pad_token_id)
    w.add_chat_template(CHATML)
    for name, tensor in model.state_dict().items():
        if name in _GGUF_TOP_NAMES:
            gname = _GGUF_TOP_NAMES[name]
        else:
            parts = name.split(".")  # model.layers.{i}.{module...}.{weight|bias}
            gname = f"blk.{parts[2]}.{_GGUF_BLOCK_NAMES['.'.join(parts[3:-1])]}.{parts[-1]}"
        w.add_tensor(gname, tensor.detach().float().numpy().astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
