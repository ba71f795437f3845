"""Agreement statistics and grouped out-of-fold validation for judges.

A judge fitted on labels must be validated on labels it never saw *and* that look like new data:
a random split of one generation run leaks the run's style (the same model, length, prompts) into
the test fold and overstates agreement (lasa's earlier judge: κ 0.62 in-repo, 0.42 on a fresh
set). :func:`grouped_oof` holds out whole groups — a language, a model, a generation run — so each
prediction comes from a head that never saw that group.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lasa.judges.base import LABELS


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float:
    from sklearn.metrics import cohen_kappa_score

    if len(a) == 0:
        return float("nan")
    if len(set(a) | set(b)) == 1:
        return 1.0  # perfect agreement on a single class; sklearn would return nan
    return float(cohen_kappa_score(list(a), list(b), labels=list(LABELS)))


def confusion(gold: Sequence[str], pred: Sequence[str]) -> dict[str, dict[str, int]]:
    """``confusion[gold][pred]`` counts over the three labels."""
    return {g: {p: sum(1 for a, b in zip(gold, pred) if a == g and b == p) for p in LABELS} for g in LABELS}


def agreement(gold: Sequence[str], pred: Sequence[str]) -> dict[str, Any]:
    """Accuracy, κ, per-class recall / precision, and judged vs gold ASR for one set of labels."""
    gold, pred = list(gold), list(pred)
    n = len(gold)
    out: dict[str, Any] = {
        "n": n,
        "accuracy": float(np.mean([g == p for g, p in zip(gold, pred)])) if n else float("nan"),
        "kappa": cohen_kappa(gold, pred),
        "unsafe_accuracy": float(np.mean([(g == "unsafe") == (p == "unsafe") for g, p in zip(gold, pred)]))
        if n
        else float("nan"),
        "gold_asr": float(np.mean([g == "unsafe" for g in gold])) if n else float("nan"),
        "judged_asr": float(np.mean([p == "unsafe" for p in pred])) if n else float("nan"),
    }
    for lab in LABELS:
        tp = sum(1 for g, p in zip(gold, pred) if g == lab and p == lab)
        n_gold, n_pred = sum(g == lab for g in gold), sum(p == lab for p in pred)
        out[f"{lab}_recall"] = tp / n_gold if n_gold else float("nan")
        out[f"{lab}_precision"] = tp / n_pred if n_pred else float("nan")
    neg = [p for g, p in zip(gold, pred) if g != "unsafe"]
    out["unsafe_specificity"] = float(np.mean([p != "unsafe" for p in neg])) if neg else float("nan")
    out["unsafe_counts"] = {
        "tp": sum(1 for g, p in zip(gold, pred) if g == "unsafe" and p == "unsafe"),
        "pos": sum(g == "unsafe" for g in gold),
        "tn": sum(1 for p in neg if p != "unsafe"),
        "neg": len(neg),
    }
    return out


def breakdown(gold: Sequence[str], pred: Sequence[str], keys: Sequence[str]) -> dict[str, dict]:
    """:func:`agreement` per distinct key (e.g. language), in first-seen order."""
    out = {}
    for key in dict.fromkeys(keys):
        idx = [i for i, k in enumerate(keys) if k == key]
        out[key] = agreement([gold[i] for i in idx], [pred[i] for i in idx])
    return out


def grouped_oof(
    x: np.ndarray,
    y: Sequence[str],
    groups: Sequence[str],
    fit: Callable[[np.ndarray, list[str]], Any],
    predict: Callable[[Any, np.ndarray], list[str]],
) -> list[str]:
    """Out-of-fold predictions, one fold per distinct group (leave-one-group-out).

    Each row is predicted by a model fitted on every *other* group; a group whose complement
    lacks one of the three labels still gets predictions (the fit sees what it sees).
    """
    y = list(y)
    groups = list(groups)
    pred: list[str | None] = [None] * len(y)
    for g in dict.fromkeys(groups):
        test = [i for i, k in enumerate(groups) if k == g]
        train = [i for i, k in enumerate(groups) if k != g]
        if not train:
            raise ValueError("grouped validation needs at least two groups")
        model = fit(x[train], [y[i] for i in train])
        for i, p in zip(test, predict(model, x[test])):
            pred[i] = p
    return [p for p in pred if p is not None]


__all__ = ["agreement", "breakdown", "cohen_kappa", "confusion", "grouped_oof"]
