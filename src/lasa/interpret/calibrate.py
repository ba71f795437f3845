"""The SSI's operating point: the validated global threshold, and per-language offsets fitted on
parallel benign FLORES text (no harm labels in the unseen languages)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from lasa.data.safety import Prompt
from lasa.ssi import SSI, LanguageCalibration


def calibrate_threshold(
    probs: np.ndarray, labels: np.ndarray, lo: float = 0.30, hi: float = 0.70
) -> tuple[float, float]:
    """The grid threshold in [lo, hi] (step 0.01) with the best balanced accuracy on validation."""
    labels = np.asarray(labels).astype(bool)
    best_t, best = lo, -1.0
    for t in np.round(np.arange(lo, hi + 1e-9, 0.01), 2):
        pred = probs > t
        tpr = pred[labels].mean() if labels.any() else 0.0
        tnr = (~pred[~labels]).mean() if (~labels).any() else 0.0
        bacc = (tpr + tnr) / 2
        if bacc > best + 1e-12:
            best_t, best = float(t), float(bacc)
    return best_t, best


def calibration_prompts(pool: Sequence[Prompt], n: int) -> list[Prompt]:
    """``n`` parallel FLORES sentences per MultiJail language, none of them in the SSI's training
    pool (the same ids in every language), from FLORES' train split (evaluation uses dev/test)."""
    from lasa.data import LANGUAGES
    from lasa.data.safety import flores

    used = {p.id for p in pool if p.source == "flores"}
    ids = [p.id for p in flores("en", "train") if p.id not in used][:n]
    keep = set(ids)
    return [p for lang in LANGUAGES for p in flores(lang, "train") if p.id in keep]


def fit_language_calibration(
    ssi: SSI,
    x: torch.Tensor,
    prompts: Sequence[Prompt],
    seen: Sequence[str],
    seed: int,
    benign_fpr: float = 0.05,
) -> tuple[LanguageCalibration, dict]:
    """Fit :class:`lasa.ssi.LanguageCalibration` on states ``x`` of parallel benign sentences.

    Each unseen language gets the offset that moves its effective threshold up to the
    ``1 - benign_fpr`` quantile of the SSI's logit on its own benign sentences, when that quantile
    lies above the validated threshold (it never lowers a threshold); the training languages keep
    0. So in a language whose ordinary text already scores "harmful", the gate fires on at most
    about ``benign_fpr`` of ordinary text. (Matching medians instead over-corrects: FLORES
    statements in an unseen language sit far above the training languages', harmful requests do
    not move as much, and the gate stops firing at all; ``scripts/gate_calibration.py`` compares.)
    The language-ID head's accuracy is measured on held-out sentence ids, then it is refitted on
    all of them.
    """
    from sklearn.linear_model import LogisticRegression

    langs = list(dict.fromkeys(p.lang for p in prompts))
    y = np.array([langs.index(p.lang) for p in prompts])
    with torch.inference_mode():
        z = ssi.module.standardise(torch.as_tensor(x, dtype=torch.float32))
        raw = ssi.module(torch.as_tensor(x, dtype=torch.float32)).numpy()
    ids = sorted({p.id for p in prompts})
    held = set(ids[::5])  # every 5th sentence id: all its translations are held out together
    is_held = np.array([p.id in held for p in prompts])

    def lid() -> LogisticRegression:
        return LogisticRegression(C=0.1, max_iter=3000, random_state=seed)

    probe = lid().fit(z.numpy()[~is_held], y[~is_held])
    lid_accuracy = float((probe.predict(z.numpy()[is_held]) == y[is_held]).mean())
    probe = lid().fit(z.numpy(), y)
    t_logit = math.log(ssi.threshold / (1 - ssi.threshold))
    quantiles = {g: float(np.quantile(raw[y == k], 1 - benign_fpr)) for k, g in enumerate(langs)}
    offsets = {g: 0.0 if g in seen else max(0.0, quantiles[g] - t_logit) for g in langs}
    coef, intercept = probe.coef_, probe.intercept_
    if len(langs) == 2:  # sklearn's binary head: p(second) = sigmoid(w.z + b) = softmax([0, w.z + b])
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    cal = LanguageCalibration(
        langs,
        torch.tensor(coef, dtype=torch.float32),
        torch.tensor(intercept, dtype=torch.float32),
        torch.tensor([offsets[g] for g in langs], dtype=torch.float32),
    )
    report = {
        "method": "flores",
        "rule": f"unseen language: raise its threshold to the {1 - benign_fpr:.2f} quantile of the SSI's logit on "
        "its FLORES sentences when that is higher (never lower); training languages unchanged",
        "data": f"FLORES-200 (SIB-200) train split, {len(ids)} parallel sentences per language, "
        "none in the SSI's training pool",
        "n_per_language": len(ids),
        "languages": langs,
        "offsets_logit": {g: round(v, 4) for g, v in offsets.items()},
        "benign_quantile_logit": {g: round(v, 4) for g, v in quantiles.items()},
        "threshold_logit": round(t_logit, 4),
        "language_id_heldout_accuracy": round(lid_accuracy, 4),
    }
    return cal, report
