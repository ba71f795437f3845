"""The utility task table: each configurable ``--utility`` name and the function that measures it
for one evaluated variant, with a per-task cache in ``utility.json`` and reuse from the ungated twin."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lasa.config import EvaluateConfig
from lasa.generate import Gate, GenerationSettings
from lasa.models import LoadedModel
from lasa.runs import read_json, write_json


def _mgsm(cfg: EvaluateConfig, lm: LoadedModel, gate: Gate | None) -> tuple[dict, list[dict] | None]:
    from lasa import utility

    settings = GenerationSettings(max_new_tokens=cfg.mgsm_max_new_tokens, batch_size=cfg.batch_size)
    return utility.eval_mgsm(lm, utility.MGSM_LANGS, cfg.mgsm_n, settings, gate)


def _xcopa(cfg: EvaluateConfig, lm: LoadedModel, gate: Gate | None) -> tuple[dict, list[dict] | None]:
    from lasa import utility

    return utility.eval_xcopa(lm, utility.XCOPA_LANGS, cfg.xcopa_n, cfg.utility_batch_size), None


def _mmlu(cfg: EvaluateConfig, lm: LoadedModel, gate: Gate | None) -> tuple[dict, list[dict] | None]:
    from lasa import utility

    return utility.eval_mmlu(lm, cfg.mmlu_n, cfg.utility_batch_size), None


def _drift(cfg: EvaluateConfig, lm: LoadedModel, gate: Gate | None) -> tuple[dict, list[dict] | None]:
    from lasa.runs import RunDir
    from lasa.utility.drift import REFERENCE_FILE, eval_drift, run_adapter_split

    reference = RunDir(cfg.run_dir).path / "eval" / REFERENCE_FILE
    base_lm = None
    if lm.full_checkpoint:  # a full fine-tune has no adapter to switch off: its base is loaded beside it
        from lasa.models import load_base_of

        base_lm = load_base_of(lm, cfg.device, cfg.dtype)
    summary = eval_drift(
        lm,
        cfg.langs,
        cfg.drift_n,
        cfg.utility_batch_size,
        reference_path=reference,
        base_split=run_adapter_split(cfg.run_dir),
        base_lm=base_lm,
    )
    return summary, None


#: The utility tasks by name (names validated against lasa.config.UTILITY_TASKS when cfg is built):
#: each returns (summary, per-item records to keep, or None).
UTILITY_RUNNERS: dict[
    str, Callable[[EvaluateConfig, LoadedModel, Gate | None], tuple[dict, list[dict] | None]]
] = {
    "mgsm": _mgsm,
    "xcopa": _xcopa,
    "mmlu": _mmlu,
    "drift": _drift,
}


#: what, besides its own settings, a utility figure depends on: the model's weights and dtype and
#: the adapter's (from :func:`lasa.evaluate.generation_info`); MGSM also on the gate
_IDENTITY = ("model", "model_weights", "dtype", "adapter_digest")


def utility_keys(cfg: EvaluateConfig, info: dict) -> dict[str, str]:
    """Per task, what its stored figure was measured with: a figure whose key differs is measured
    again (the item count alone kept a retrained adapter's, a new SSI's or a longer MGSM budget's
    figures stale). XCOPA, MMLU and drift do not read the gate, so a gated variant's keys equal its
    ungated twin's and the twin's figures are taken."""
    from lasa.runs import fingerprint

    who = {k: info.get(k) for k in _IDENTITY}
    gate = info.get("gate_digest")  # MGSM decodes greedily, gated like the variant
    return {
        "mgsm": fingerprint(
            {"n": cfg.mgsm_n, "max_new_tokens": cfg.mgsm_max_new_tokens, **who, "gate": gate}
        ),
        "xcopa": fingerprint({"n": cfg.xcopa_n, **who}),
        "mmlu": fingerprint({"n": cfg.mmlu_n, **who}),
        "drift": fingerprint({"n": cfg.drift_n, "langs": list(cfg.langs), **who}),
    }


def run_utility(
    cfg: EvaluateConfig,
    lm: LoadedModel,
    gate: Gate | None,
    out: Path,
    twin: Path | None = None,
    info: dict | None = None,
) -> dict:
    """MGSM (generation, gated like the variant), XCOPA and MMLU (log-likelihood; the gate does not
    apply: there is no assistant turn to condition, so a gated variant takes them from its ungated
    ``twin`` when that was measured with the same model and adapter). ``info``: the variant's
    generation record (:func:`lasa.evaluate.generation_info`), which keys every stored figure."""
    from lasa.runs import write_jsonl

    res: dict[str, Any] = {}
    cache = out / "utility.json"
    done = read_json(cache) if cache.is_file() else {}
    key = utility_keys(cfg, info or {})
    if twin is not None and (twin / "results.json").is_file():
        other = read_json(twin / "results.json")
        for task in ("xcopa", "mmlu", "drift"):
            theirs = other.get("utility", {}).get(task)
            if (
                isinstance(theirs, dict)
                and theirs.get("key") == key[task]
                and done.get(task, {}).get("key") != key[task]
            ):
                done[task] = theirs | {"copied_from": twin.name}
    for task in cfg.utility:
        if done.get(task, {}).get("key") == key.get(task):
            res[task] = done[task]
            continue
        t0 = time.time()
        summary, records = UTILITY_RUNNERS[task](cfg, lm, gate)
        if records is not None:
            write_jsonl(out / f"completions_{task}.jsonl", records)
        res[task] = summary | {"key": key.get(task), "seconds": round(time.time() - t0, 1)}
        write_json(cache, res | {k: v for k, v in done.items() if k not in res})
    return res
