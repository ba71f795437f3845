"""``lasa judge-check``: every judge against human labels, per language.

An ASR is only as good as its judge, and MultiJail never released one. This measures each judge's
accuracy and Cohen's kappa against a labelled file (``prompt, response, language, label`` per
line, label in safe / unsafe / invalid), overall and per language, with confusion matrices, so the
default judge is chosen by evidence and its error is known.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from lasa.data import normalize_language
from lasa.errors import LasaError
from lasa.judges import LABELS, cohen_kappa, get_judge, judge_samples

logger = logging.getLogger(__name__)


def load_labels(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise LasaError(f"labels file not found: {path}")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise LasaError(f"{path}:{n}: not valid JSON") from None
            missing = [k for k in ("prompt", "response", "label") if k not in row]
            lang = row.get("language", row.get("lang"))
            if missing or lang is None:
                need = ", ".join([*missing, *([] if lang is not None else ["language"])])
                raise LasaError(
                    f"{path}:{n}: missing field(s) {need}; each line needs prompt, response, language, label"
                )
            if row["label"] not in LABELS:
                raise LasaError(f"{path}:{n}: label {row['label']!r} is not one of {', '.join(LABELS)}")
            try:
                lang = normalize_language(str(lang))
            except LasaError as err:
                raise LasaError(f"{path}:{n}: {err}") from None
            rows.append(
                {
                    "uid": row.get("id", f"row{n}"),
                    "prompt": row["prompt"],
                    "response": row["response"],
                    "lang": lang,
                    "label": row["label"],
                }
            )
    if not rows:
        raise LasaError(f"{path} holds no labelled rows")
    return rows


def _scores(gold: list[str], pred: list[str]) -> dict:
    gold_bin = [g == "unsafe" for g in gold]
    pred_bin = [p == "unsafe" for p in pred]
    return {
        "n": len(gold),
        "accuracy": float(np.mean([g == p for g, p in zip(gold, pred)])),
        "kappa": cohen_kappa(gold, pred),
        "unsafe_accuracy": float(np.mean([g == p for g, p in zip(gold_bin, pred_bin)])),
        "gold_asr": float(np.mean(gold_bin)),
        "judged_asr": float(np.mean(pred_bin)),
    }


def check_judges(labels_path: str | Path, judges: list[str], **judge_kwargs: Any) -> dict:
    rows = load_labels(labels_path)
    gold = [r["label"] for r in rows]
    out: dict[str, Any] = {
        "labels": str(labels_path),
        "n": len(rows),
        "gold_counts": dict(Counter(gold)),
        "judges": {},
    }
    for name in judges:
        verdicts = judge_samples(get_judge(name, **judge_kwargs), rows)
        pred = [v["label"] for v in verdicts]
        per_lang = {}
        for lang in dict.fromkeys(r["lang"] for r in rows):
            idx = [i for i, r in enumerate(rows) if r["lang"] == lang]
            per_lang[lang] = _scores([gold[i] for i in idx], [pred[i] for i in idx])
        confusion = {
            g: {p: sum(1 for a, b in zip(gold, pred) if a == g and b == p) for p in LABELS} for g in LABELS
        }
        out["judges"][name] = {
            "overall": _scores(gold, pred),
            "per_language": per_lang,
            "confusion": confusion,
            "predictions": [
                {"uid": r["uid"], "gold": g, "pred": v["label"], "reason": v["reason"]}
                for r, g, v in zip(rows, gold, verdicts)
            ],
        }
    best = max(out["judges"], key=lambda j: out["judges"][j]["overall"]["kappa"])
    out["best_judge"] = best
    return out
