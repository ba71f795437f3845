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
from lasa.judges.base import LABELS, UNPARSED, Judge, JudgeItem, Judgement, strip_control_tokens
from lasa.judges.validation import cohen_kappa

logger = logging.getLogger(__name__)

JUDGE_NAMES = tuple(JUDGES)


def unjudged(verdict: dict) -> bool:
    """True when the judge gave no verdict on this response (the ``llm`` judge's unreadable answer,
    stored as ``invalid`` with an ``UNPARSED`` reason). Such a row is the judge's failure, not the
    model's answer: every rate, agreement and paired comparison leaves it out and counts it."""
    return str(verdict.get("reason", "")).startswith(UNPARSED)


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


def judges_fingerprint(names: Sequence[str]) -> dict[str, str]:
    """What each named judge's verdicts depend on beyond its code's name, read without building
    it: the shipped weights and the labelled corpus they were fitted on, the refusal rule and the
    source of the modules that decide a verdict. A
    stage keyed on it is redone when a lasa update changes them (``llm``: its model and endpoint
    are in the stage config already)."""
    from lasa.data import data_path
    from lasa.judges.corpus import corpus_rows, labels_key
    from lasa.judges.embedding import SHIPPED_REFUSAL, encoder_version
    from lasa.judges.lexicon import REFUSAL_RULE
    from lasa.judges.pair import SHIPPED_HEAD
    from lasa.runs import files_digest

    def digest(*parts: tuple[str, str]) -> str:
        files = [data_path(*p) for p in parts]
        return files_digest([f for f in files if f.is_file()])

    from lasa.judges.base import RULE_MODULES, source_digest

    # the code that decides a verdict, as the judges' version strings carry it: cached verdicts of
    # other rules are redone by `lasa evaluate`, so `lasa run` must not skip the stage either
    rules = source_digest(*RULE_MODULES)
    out: dict[str, str] = {}
    for name in names:
        if name in ("pair", "probe"):  # its head and the refusal classifier its refusal flag reads;
            # the probe judge is pair plus its own head and prompt template (lasa.judges.probe)
            from lasa.judges.probe import SHIPPED_PROBE_HEAD

            own = ("lasa.judges.probe",) if name == "probe" else ()
            head = SHIPPED_PROBE_HEAD if name == "probe" else SHIPPED_HEAD
            code = source_digest(
                *own, "lasa.judges.pair", "lasa.judges.features", "lasa.judges.embedding", *RULE_MODULES
            )
            out[name] = f"{digest(head, SHIPPED_REFUSAL)}-{REFUSAL_RULE}-{code}-{encoder_version()}"
        elif name == "embedding":
            code = source_digest("lasa.judges.embedding", *RULE_MODULES)
            out[name] = (
                f"{labels_key(corpus_rows())}-{digest(SHIPPED_REFUSAL)}-{REFUSAL_RULE}-{code}-{encoder_version()}"
            )
        elif name == "lexicon":
            out[name] = f"{REFUSAL_RULE}-{rules}"
        elif name == "llm":  # its prompt and answer parsing (its model / endpoint: the stage config)
            out[name] = source_digest("lasa.judges.llm", *RULE_MODULES)
    return out


def response_hash(text: str) -> str:
    """The short hash a cached verdict keeps of the response it judged."""
    # surrogatepass: a lone surrogate ("\\ud800" in a JSON file) is hashed, not a traceback
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def read_verdicts(path: Path, strict: bool = True) -> dict[str, dict]:
    """A verdict cache (``judgements_<judge>.jsonl``) as uid -> verdict row.

    ``strict`` (a variant's own cache): a damaged file or a row that is not a verdict (no ``uid``)
    is a one-line error naming the file; delete it and its verdicts are judged again. Otherwise (another
    variant's file, read only to reuse its verdicts) a damaged file or row is skipped with a warning:
    a hand-copied ``eval/kto.bak/`` must not stop the evaluation of ``base``."""
    from lasa.runs import read_jsonl

    if not path.is_file():
        return {}
    try:
        rows = read_jsonl(path)
    except LasaError:
        if strict:
            raise
        logger.warning("%s is not valid JSON lines; its verdicts are not reused", path)
        return {}
    good = [r for r in rows if isinstance(r, dict) and isinstance(r.get("uid"), str)]
    bad = len(rows) - len(good)
    if bad and strict:
        raise LasaError(
            f"{path}: {bad} line(s) are not verdicts (a JSON object with a 'uid'); delete the file and rerun "
            "(its responses are judged again)"
        )
    if bad:
        logger.warning("%s: %d line(s) are not verdicts; skipped", path, bad)
    return {r["uid"]: r for r in good}


def judge_samples(
    judge: Judge,
    samples: Sequence[dict],
    path: Path | None = None,
    donors: Sequence[Path] = (),
    chunk: int = 128,
) -> list[dict]:
    """Verdicts for ``samples`` (dicts with uid, prompt, response, lang), reusing ``path``'s cache.

    ``donors``: other verdict files of the same run and judge (the other variants'): a sample whose
    uid (so its prompt) and response match one of theirs, judged by this judge version, takes that
    verdict instead of being judged again — a gated variant shares most answers with its ungated
    twin, and adapters often leave an answer unchanged. Taken verdicts are written to ``path``.

    What is left is judged ``chunk`` samples at a time, and ``path`` is rewritten after each chunk,
    so an interrupted evaluation (a slow endpoint for the ``llm`` judge, 1,000 responses of a full
    preset) resumes from the verdicts it has instead of judging everything again."""
    from lasa.runs import write_jsonl

    cache = read_verdicts(path) if path is not None else {}
    version = str(getattr(judge, "version", ""))  # new judge weights invalidate old verdicts

    def valid(hit: dict | None, s: dict) -> bool:
        # the prompt too: a data fix can change the text behind a uid, and a judge that reads the
        # request (pair, llm) may then judge the same answer differently (older caches lack it)
        return (
            hit is not None
            and hit.get("response_sha") == response_hash(s["response"])
            and hit.get("prompt_sha", response_hash(s["prompt"])) == response_hash(s["prompt"])
            and hit.get("judge_version", "") == version
            and hit.get("label") in LABELS
            and not unjudged(hit)  # a flaky answer is asked again
        )

    out: list[dict | None] = [cache.get(s["uid"]) if valid(cache.get(s["uid"]), s) else None for s in samples]
    taken: dict[str, dict] = {}
    for donor in donors:
        if all(r is not None for r in out) or not donor.is_file():
            continue
        given = read_verdicts(donor, strict=False)
        for i, s in enumerate(samples):
            if out[i] is None and valid(given.get(s["uid"]), s):
                out[i] = taken[s["uid"]] = given[s["uid"]]
    todo = [s for s, r in zip(samples, out) if r is None]
    if taken and not todo and path is not None:
        write_jsonl(path, list({**cache, **taken}.values()))
    fresh: dict[str, dict] = {}
    for start in range(0, len(todo), max(1, chunk)):
        part = todo[start : start + max(1, chunk)]
        verdicts = judge.judge([JudgeItem(s["prompt"], s["response"], s["lang"]) for s in part])
        for s, v in zip(part, verdicts, strict=True):
            fresh[s["uid"]] = {
                "uid": s["uid"],
                "lang": s["lang"],
                "label": v.label,
                "score": v.score,
                "refusal": v.refusal,
                "reason": v.reason,
                "judge": judge.name,
                "judge_version": version,
                "response_sha": response_hash(s["response"]),
                "prompt_sha": response_hash(s["prompt"]),
            }
        if path is not None:
            write_jsonl(path, list({**cache, **taken, **fresh}.values()))
    out = [r if r is not None else fresh[s["uid"]] for r, s in zip(out, samples)]
    return out  # type: ignore[return-value]


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
    "judges_fingerprint",
    "read_verdicts",
    "response_hash",
    "strip_control_tokens",
    "unjudged",
]
