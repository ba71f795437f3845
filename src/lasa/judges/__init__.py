"""Judges behind one interface, with per-sample caching and agreement statistics.

``get_judge(name)`` builds a judge; ``judge_samples`` runs it over completion records and caches
every verdict in ``judgements_<judge>.jsonl`` next to the completions (keyed by sample id and a
hash of the response), so swapping or adding a judge never re-generates anything and
re-running a judge never re-judges an unchanged response.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lasa.config import DEFAULT_JUDGE, JUDGES
from lasa.errors import LasaError
from lasa.judges.base import LABELS, Judge, JudgeItem, Judgement, strip_control_tokens
from lasa.judges.validation import cohen_kappa

logger = logging.getLogger(__name__)

JUDGE_NAMES = tuple(JUDGES)


def check_judge_name(name: str) -> str:
    if name not in JUDGES:
        raise LasaError(f"unknown judge {name!r}; choose from {', '.join(JUDGE_NAMES)}")
    return name


def get_judge(name: str, **kwargs: Any) -> Judge:
    import importlib

    module, cls = JUDGES[check_judge_name(name)].split(":")
    factory = getattr(importlib.import_module(module), cls)
    if name == "llm":
        return factory(
            model=kwargs.get("judge_model"),
            url=kwargs.get("judge_url"),
            api_model=kwargs.get("judge_api_model"),
        )
    return factory()


def response_hash(text: str) -> str:
    """The short hash a cached verdict keeps of the response it judged."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def judge_samples(judge: Judge, samples: Sequence[dict], path: Path | None = None) -> list[dict]:
    """Verdicts for ``samples`` (dicts with uid, prompt, response, lang), reusing ``path``'s cache."""
    from lasa.runs import read_jsonl, write_jsonl

    cache: dict[str, dict] = {}
    if path is not None and path.is_file():
        cache = {r["uid"]: r for r in read_jsonl(path)}
    version = str(getattr(judge, "version", ""))  # new judge weights invalidate old verdicts
    out, todo = [], []
    for s in samples:
        hit = cache.get(s["uid"])
        if (
            hit is not None
            and hit.get("response_sha") == response_hash(s["response"])
            and hit.get("judge_version", "") == version
        ):
            out.append(hit)
        else:
            out.append(None)
            todo.append(s)
    if todo:
        verdicts = judge.judge([JudgeItem(s["prompt"], s["response"], s["lang"]) for s in todo])
        fresh = {
            s["uid"]: {
                "uid": s["uid"],
                "lang": s["lang"],
                "label": v.label,
                "score": v.score,
                "refusal": v.refusal,
                "reason": v.reason,
                "judge": judge.name,
                "judge_version": version,
                "response_sha": response_hash(s["response"]),
            }
            for s, v in zip(todo, verdicts)
        }
        out = [r if r is not None else fresh[s["uid"]] for r, s in zip(out, samples)]
        if path is not None:
            merged = {**cache, **fresh}
            write_jsonl(path, list(merged.values()))
    return out


__all__ = [
    "DEFAULT_JUDGE",
    "JUDGES",
    "JUDGE_NAMES",
    "LABELS",
    "JudgeItem",
    "Judgement",
    "check_judge_name",
    "cohen_kappa",
    "get_judge",
    "judge_samples",
    "response_hash",
    "strip_control_tokens",
]
