"""Recompute the results.json of every variant a run directory evaluated, with the settings it
recorded (RUN/config.yaml), from its cached completions and verdicts.

Why: lasa's statistics change between releases (this round: intervals that account for prompts
shared across languages, the judge-corrected average per language), and ``lasa run`` keys an
evaluation on what generated and judged it, not on how its rates are summarised, so it would
keep the old results.json. This reruns ``lasa evaluate`` per variant: nothing is generated again
(the completions' records match), verdicts are reused unless the judge changed, and utility
scores come from their caches. Then ``lasa report --run-dir RUN`` rebuilds the tables.

    python scripts/reevaluate.py runs/quick_s39
    python scripts/reevaluate.py runs/q15_s40 --variants base base+gate
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lasa.config import EvaluateConfig
from lasa.errors import LasaError
from lasa.evaluate import run_evaluate


def recorded_evaluations(run_dir: Path, variants: list[str] | None = None) -> dict[str, dict]:
    """variant -> the EvaluateConfig fields ``RUN/config.yaml`` recorded for it, pointed at ``run_dir``
    (the recorded ``run_dir`` is where the run was made: for a moved or copied run it names another
    run, whose results.json would be rewritten instead), or a one-line LasaError."""
    from lasa.config.base import config_fields, load_yaml_doc

    path = run_dir / "config.yaml"
    if not path.is_file():
        raise LasaError(f"{path} not found: is {run_dir} a lasa run directory?")
    try:
        stages = load_yaml_doc(path).get("stages") or {}
    except LasaError as err:
        raise LasaError(f"{err} (RUN/config.yaml is written by each stage: rerun one)") from None
    if not isinstance(stages, dict):
        raise LasaError(f"{path}: 'stages' is not a mapping; is this a lasa run's config.yaml?")
    known = {f.name for f in config_fields(EvaluateConfig)}
    todo: dict[str, dict] = {}
    recorded_variants = sorted(str(n).split(":", 1)[1] for n in stages if str(n).startswith("evaluate:"))
    for name, entry in stages.items():
        variant = str(name).split(":", 1)[1] if str(name).startswith("evaluate:") else None
        if variant is None or (variants and variant not in variants):
            continue
        recorded = entry.get("config") if isinstance(entry, dict) else None
        if not isinstance(recorded, dict):
            raise LasaError(f"{path}: stage {name!r} records no config mapping; rerun `lasa evaluate` for it")
        old_run = recorded.get("run_dir")
        cfg = {k: v for k, v in recorded.items() if k in known}
        dropped = sorted(set(recorded) - known)
        if dropped:  # a setting an older lasa recorded and this one no longer has
            logging.warning("%s: recorded setting(s) %s are not read by this lasa; dropped", variant, dropped)
        cfg["run_dir"] = str(run_dir)
        cfg.setdefault("variant", variant)
        for key in ("ssi", "adapter"):  # paths inside the run as recorded, moved with it
            value = cfg.get(key)
            if isinstance(value, str) and isinstance(old_run, str) and Path(value).is_relative_to(old_run):
                cfg[key] = str(run_dir / Path(value).relative_to(old_run))
        todo[variant] = cfg
    missing = [v for v in variants or [] if v not in todo]
    if missing:
        raise LasaError(
            f"{path} records no evaluation of {', '.join(missing)} (recorded: "
            f"{', '.join(recorded_variants) or 'none'})"
        )
    if not todo:
        raise LasaError(f"{path} records no evaluation")
    return todo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--variants", nargs="*", help="only these variants (default: every evaluated one)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        todo = recorded_evaluations(args.run_dir, args.variants)
    except LasaError as e:
        raise SystemExit(f"reevaluate.py: error: {e}") from None
    for variant, recorded in todo.items():
        try:
            res = run_evaluate(EvaluateConfig(**recorded))
        except LasaError as e:
            raise SystemExit(f"{variant}: {e}") from None
        logging.info(
            "%s: ASR %.1f%% [%.1f, %.1f]", variant, 100 * res.asr, *(100 * x for x in res.asr_interval)
        )


if __name__ == "__main__":
    main()
