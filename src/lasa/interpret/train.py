"""Fitting the SSI: group-aware train/validation split, the training loop, and one fit + per-language
evaluation at a layer (shared by the stage and the layer sweep)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from lasa.config import InterpretConfig
from lasa.data.safety import Prompt
from lasa.errors import LasaError
from lasa.interpret.calibrate import calibrate_threshold
from lasa.interpret.metrics import per_language
from lasa.ssi import SSI, SafetySemanticInterpreter


def group_split(prompts: Sequence[Prompt], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Train/validation indices; all translations of one item (same ``id``) land on the same side."""
    train, val = [], []
    for i, p in enumerate(prompts):
        h = int(hashlib.sha256(f"{seed}:{p.id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        (val if h < val_fraction else train).append(i)
    return train, val


def train_ssi(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    cfg: InterpretConfig,
) -> tuple[SafetySemanticInterpreter, list[dict], float, float]:
    """AdamW + BCE-with-logits (pos_weight when unbalanced), grad clip, early stopping on val loss.

    Returns the best module, the per-epoch log, the calibrated threshold and its val balanced acc.
    """
    from sklearn.metrics import roc_auc_score

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = SafetySemanticInterpreter(x_train.shape[1], cfg.hidden, cfg.dropout)
    model.fit_scaler(x_train)
    n_pos = float(y_train.sum())
    n_neg = float(len(y_train) - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise LasaError("SSI training data has a single class; check --train-langs")
    if not (torch.isfinite(x_train).all() and torch.isfinite(x_val).all()):
        raise LasaError(
            "the SSI's input states hold inf or nan (a half-precision overflow?); rerun with --dtype float32"
        )
    if len(y_val) == 0 or not 0 < float(y_val.sum()) < len(y_val):
        # early stopping and the threshold are chosen on validation: both classes must be there
        raise LasaError(
            f"the SSI's validation split has {len(y_val)} prompts and not both classes; "
            "raise --cap or --val-fraction"
        )
    pos_weight = torch.tensor(n_neg / n_pos) if abs(n_neg / n_pos - 1) > 0.1 else None
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    val_loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best_state, best_loss, bad, log = None, math.inf, 0, []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        perm = torch.randperm(len(x_train), generator=gen)
        total = 0.0
        for i in range(0, len(perm), cfg.train_batch_size):
            idx = perm[i : i + cfg.train_batch_size]
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            total += loss.item() * len(idx)
        model.eval()
        with torch.no_grad():
            logits = model(x_val)
            vloss = float(val_loss_fn(logits, y_val))
        vauc = (
            float(roc_auc_score(y_val.numpy(), logits.numpy()))
            if 0 < y_val.sum() < len(y_val)
            else float("nan")
        )
        log.append({"epoch": epoch, "train_loss": total / len(x_train), "val_loss": vloss, "val_auroc": vauc})
        if vloss < best_loss - 1e-4:
            best_loss, bad = vloss, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    if best_state is None:
        raise LasaError("the SSI's validation loss was never finite; rerun with --dtype float32")
    model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        val_probs = torch.sigmoid(model(x_val)).numpy()
    threshold, bacc = calibrate_threshold(val_probs, y_val.numpy(), *cfg.threshold_range)
    return model, log, threshold, bacc


@dataclass
class Split:
    """Row indices into the de-duplicated text list whose states were extracted."""

    train: list[int]
    val: list[int]
    eval: list[int]
    xstest: list[int]
    y_train: torch.Tensor
    y_val: torch.Tensor
    eval_prompts: list[Prompt]
    calibration: list[int] = field(default_factory=list)  # parallel FLORES rows (label-free)
    calibration_langs: list[str] = field(default_factory=list)


def fit_and_evaluate(x: torch.Tensor, layer: int, split: Split, cfg: InterpretConfig) -> dict:
    module, log, threshold, bacc = train_ssi(x[split.train], split.y_train, x[split.val], split.y_val, cfg)
    ssi = SSI(module, {"layer": layer, "threshold": threshold, "pooling": cfg.pooling})
    probs = ssi.predict_proba(x[split.eval])
    return {
        "ssi": ssi,
        "log": log,
        "threshold": threshold,
        "val_balanced_accuracy": bacc,
        "probs": probs,
        "per_language": per_language(probs, split.eval_prompts, threshold),
    }
