from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lasa.errors import LasaError
from lasa.models import (
    find_decoder_layers,
    fingerprints_match,
    load_model,
    model_fingerprint,
    resolve_model_path,
    validate_layer,
)


@pytest.mark.parametrize("fixture", ["tiny_qwen", "tiny_llama"])
def test_load_and_discover_layers(request, fixture):
    lm = load_model(str(request.getfixturevalue(fixture)), device="cpu")
    assert lm.num_layers == 4 and lm.hidden_size == 32
    assert lm.layers_path == "model.layers"
    assert not any(p.requires_grad for p in lm.model.parameters())


def test_layer_discovery_through_peft_wrapper(tiny_qwen):
    from peft import LoraConfig, get_peft_model

    lm = load_model(str(tiny_qwen), device="cpu")
    wrapped = get_peft_model(lm.model, LoraConfig(r=2, target_modules=["q_proj"]))
    path, layers = find_decoder_layers(wrapped)
    assert path.endswith("model.layers") and len(layers) == 4


def test_moe_is_refused(tmp_path):
    from transformers import Qwen2MoeConfig

    Qwen2MoeConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_experts=4).save_pretrained(
        tmp_path
    )
    with pytest.raises(LasaError, match="mixture-of-experts.*not supported"):
        load_model(str(tmp_path), device="cpu")


def test_bad_model_paths(tmp_path):
    with pytest.raises(LasaError, match="model path not found: ./nope"):
        resolve_model_path("./nope")
    with pytest.raises(LasaError, match="no config.json"):
        resolve_model_path(str(tmp_path))
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(LasaError, match=r"must be a \.gguf"):
        resolve_model_path(str(f))
    g = tmp_path / "broken.gguf"
    g.write_bytes(b"not a gguf file at all")
    with pytest.raises(LasaError, match="could not read .* as a GGUF model"):
        resolve_model_path(str(g))
    # nothing half-written is left in the cache after the failure
    cache = Path(os.environ["LASA_CACHE"]) / "models"
    assert cache.is_dir() and list(cache.iterdir()) == []


def test_offline_hub_id_gives_one_line_error():
    with pytest.raises(LasaError) as e:
        load_model("no-such-org/no-such-model", device="cpu")
    msg = str(e.value)
    assert "'no-such-org/no-such-model' is not in the local Hugging Face cache" in msg and "\n" not in msg
    assert "HF_HUB_OFFLINE=1 is set" in msg


def test_unreachable_hub_fails_in_seconds(monkeypatch):
    import socket
    import time

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def refused(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(socket, "create_connection", refused)
    t0 = time.perf_counter()
    with pytest.raises(LasaError, match="the hub \\(huggingface.co\\) cannot be reached"):
        load_model("no-such-org/no-such-model", device="cpu")
    assert time.perf_counter() - t0 < 10


def test_fingerprint_tolerates_dtype_but_not_other_weights(tiny_qwen, tmp_path, tokenizer):
    import tiny

    lm = load_model(str(tiny_qwen), device="cpu")
    fp = model_fingerprint(lm.model, lm.tokenizer)
    bf16 = load_model(str(tiny_qwen), device="cpu", dtype="bfloat16")
    assert fingerprints_match(fp, model_fingerprint(bf16.model, bf16.tokenizer))
    other = tiny.build_model("qwen2", len(tokenizer), seed=1)
    assert not fingerprints_match(fp, model_fingerprint(other, tokenizer))
    llama = load_model(str(tiny.save_tiny(tmp_path / "l", "llama", tokenizer)), device="cpu")
    assert fp["id"] != model_fingerprint(llama.model, llama.tokenizer)["id"]
    assert json.loads(json.dumps(fp)) == fp


def test_validate_layer():
    assert validate_layer(4, 4) == 4
    for bad in (0, 5, -1):
        with pytest.raises(LasaError, match=r"out of range; this model has layers 1\.\.4"):
            validate_layer(bad, 4)


def test_adapter_folder_given_as_the_model_names_the_adapter_flag(tmp_path, tiny_qwen):
    from peft import LoraConfig, get_peft_model

    from lasa.models import check_model_spec

    lm = load_model(str(tiny_qwen), device="cpu")
    get_peft_model(lm.model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path / "adapter")
    for check in (resolve_model_path, check_model_spec):
        with pytest.raises(LasaError, match="is a PEFT adapter, not a model: .*--model") as e:
            check(str(tmp_path / "adapter"))
        assert str(tiny_qwen) in str(e.value) and "--adapter" in str(e.value)


def _edited_copy(src: Path, dst: Path, drop: tuple[str, ...]) -> Path:
    import shutil

    shutil.copytree(src, dst)
    conf = json.loads((dst / "config.json").read_text())
    for key in drop:
        conf.pop(key, None)
    (dst / "config.json").write_text(json.dumps(conf))
    return dst


def test_config_without_num_hidden_layers_is_a_one_line_error(tmp_path, tiny_qwen):
    # beside layer_types transformers refuses the config (a traceback from huggingface_hub);
    # without them it builds the class default, 32 blocks, 28 of them random (no error at all)
    for drop in (("num_hidden_layers",), ("num_hidden_layers", "layer_types")):
        path = _edited_copy(tiny_qwen, tmp_path / "-".join(drop), drop)
        with pytest.raises(LasaError, match="config.json") as e:
            load_model(str(path), device="cpu")
        assert "restore it from the original checkpoint" in str(e.value) and "\n" not in str(e.value)


def test_tokenizer_larger_than_the_embedding_is_refused_before_the_weights(tmp_path, tokenizer, monkeypatch):
    from transformers import AutoModelForCausalLM

    from tiny import build_model

    build_model("qwen2", 300).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)  # 600 tokens: ids >= 300 failed in the embedding (IndexError)

    def no_weights(*a, **k):
        raise AssertionError("weights loaded before the check")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_weights)
    with pytest.raises(LasaError, match="600 tokens but the model only 300 embedding rows"):
        load_model(str(tmp_path), device="cpu")
