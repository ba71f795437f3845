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

from lasa.data import normalize_language
from lasa.errors import LasaError
from lasa.judges import LABELS, get_judge, judge_samples, unjudged
from lasa.judges.validation import agreement, breakdown, confusion
from lasa.stats import wilson

logger = logging.getLogger(__name__)


def _has_lone_surrogate(text: str) -> bool:
    return any("\ud800" <= ch <= "\udfff" for ch in text)


def load_labels(path: str | Path) -> list[dict]:
    path = Path(path)
    if path.is_dir():
        raise LasaError(f"--labels {path} is a directory; give a JSONL file of labelled responses")
    if not path.is_file():
        raise LasaError(f"labels file not found: {path}")
    rows = []
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is not data
    except UnicodeDecodeError:
        raise LasaError(f"{path} is not UTF-8 text; save the labels as UTF-8 JSON lines") from None
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise LasaError(f"{path}:{n}: not valid JSON") from None
        if not isinstance(row, dict):
            raise LasaError(
                f"{path}:{n}: expected a JSON object with prompt, response, language, label; "
                f"got {type(row).__name__}"
            )
        missing = [k for k in ("prompt", "response", "label") if k not in row]
        lang = row.get("language", row.get("lang"))
        if missing or lang is None:
            need = ", ".join([*missing, *([] if lang is not None else ["language"])])
            raise LasaError(
                f"{path}:{n}: missing field(s) {need}; each line needs prompt, response, language, label"
            )
        bad = [k for k in ("prompt", "response") if not isinstance(row[k], str)]
        if bad:
            raise LasaError(f"{path}:{n}: {' and '.join(bad)} must be text, got {type(row[bad[0]]).__name__}")
        lone = [k for k in ("prompt", "response") if _has_lone_surrogate(row[k])]
        if lone:  # a "\ud83d" escape without its pair: not text any tokenizer or file can hold
            raise LasaError(
                f"{path}:{n}: {lone[0]} holds a lone UTF-16 surrogate escape (half an emoji?); "
                "fix or drop that character"
            )
        # "Unsafe" or " safe" is the same label: hand-made files vary in case and stray spaces
        label = row["label"].strip().lower() if isinstance(row["label"], str) else row["label"]
        if label not in LABELS:
            raise LasaError(f"{path}:{n}: label {row['label']!r} is not one of {', '.join(LABELS)}")
        try:
            lang = normalize_language(str(lang))
        except LasaError as err:
            raise LasaError(f"{path}:{n}: {err}") from None
        rows.append(
            {
                # verdicts are keyed by the line, not the file's own id: ids can repeat (two label
                # files concatenated) or be missing, and two rows must never share one verdict
                "uid": f"line{n}",
                "id": row.get("id", f"row{n}"),
                "line": n,
                "prompt": row["prompt"],
                "response": row["response"],
                "lang": lang,
                "label": label,
            }
        )
    if not rows:
        raise LasaError(f"{path} holds no labelled rows")
    return rows


def check_judges(
    labels_path: str | Path,
    judges: list[str] | None = None,
    default_judge: str | None = None,
    unseen_only: bool = False,
    **judge_kwargs: Any,
) -> dict:
    """Each judge (default: the default judge) against the labels: κ, per-class recall and
    precision, the confusion matrix, and judged vs gold ASR overall and per language.
    ``default_judge``: the one an evaluation would count ASR with (lasa's default unless given).
    ``unseen_only``: drop the rows of lasa's labelled corpus, which the learned judges trained on, so
    every judge is scored on the same out-of-sample rows (a set labelled to check a run can share
    answers with the corpus: greedy decoding repeats a model's earlier answers)."""
    from lasa.judges import DEFAULT_JUDGE, check_judge_name

    default_judge = check_judge_name(default_judge or DEFAULT_JUDGE)
    judges = [check_judge_name(j) for j in (judges or [default_judge])]
    rows = load_labels(labels_path)
    learned = [j for j in judges if j in ("pair", "embedding", "probe")]
    # the shipped heads train on every file of lasa's labelled corpus: agreement on those rows is
    # in-sample and says little about new data
    trained: set[tuple[str, str]] = set()
    if learned or unseen_only:
        from lasa.judges.corpus import corpus_rows

        trained = {(r["prompt"], r["response"]) for r in corpus_rows()}
    dropped = 0
    if unseen_only:
        kept = [r for r in rows if (r["prompt"], r["response"]) not in trained]
        dropped = len(rows) - len(kept)
        if not kept:
            raise LasaError(
                f"--unseen-only: all {len(rows)} labelled responses are in lasa's judge training corpus; "
                "check on labels it never saw (e.g. src/lasa/data/judge_labels/fresh_heldout.jsonl)"
            )
        logger.info("--unseen-only: %d of %d labelled responses dropped (training rows)", dropped, len(rows))
        rows = kept
    from lasa.judges.llm import preflight

    preflight(judges, judge_kwargs.get("judge_url"), judge_kwargs.get("judge_model"))
    gold = [r["label"] for r in rows]
    langs = [r["lang"] for r in rows]
    out: dict[str, Any] = {
        "labels": str(labels_path),
        "n": len(rows),
        "gold_counts": dict(Counter(gold)),
        "default_judge": default_judge,
        "judges": {},
    }
    if unseen_only:
        out["dropped_in_training_corpus"] = dropped
    if learned:
        seen = sum((r["prompt"], r["response"]) in trained for r in rows)
        out["in_training_corpus"] = seen
        if seen:
            logger.warning(
                "%d of the %d labelled responses are in the %s judge's training corpus: their agreement "
                "is in-sample; --unseen-only scores the others, or check on labels it never saw "
                "(e.g. src/lasa/data/judge_labels/fresh_heldout.jsonl)",
                seen,
                len(rows),
                " / ".join(learned),
            )
    for name in judges:
        verdicts = judge_samples(get_judge(name, **judge_kwargs), rows)
        # a verdict the judge could not give (the llm judge's unreadable answer) is no prediction: it
        # is left out of the agreement, as of an evaluation's ASR, and counted (it was scored as an
        # "invalid" prediction, so a judge model that never answered got a confident-looking kappa)
        read = [i for i, v in enumerate(verdicts) if not unjudged(v)]
        read_set = set(read)
        if not read:
            raise LasaError(
                f"the {name} judge gave no readable verdict on any of the {len(rows)} responses (every "
                "answer unparsed); check its model or endpoint (--judge-model / --judge-url)"
            )
        g_read, pred = [gold[i] for i in read], [verdicts[i]["label"] for i in read]
        overall = agreement(g_read, pred)
        overall["unjudged"] = len(rows) - len(read)
        for key, labels in (("gold_asr", g_read), ("judged_asr", pred)):  # every ASR with its interval
            w = wilson(sum(x == "unsafe" for x in labels), len(labels))
            overall[f"{key}_ci"] = [w.low, w.high]
        out["judges"][name] = {
            "overall": overall,
            "per_language": breakdown(g_read, pred, [langs[i] for i in read]),
            "confusion": confusion(g_read, pred),
            "predictions": [
                {
                    "uid": r["id"],
                    "line": r["line"],
                    "lang": r["lang"],
                    "gold": g,
                    "pred": v["label"] if i in read_set else None,
                    "reason": v["reason"],
                }
                for i, (r, g, v) in enumerate(zip(rows, gold, verdicts))
            ],
        }
    out["best_judge"] = max(out["judges"], key=lambda j: out["judges"][j]["overall"]["kappa"])
    return out
