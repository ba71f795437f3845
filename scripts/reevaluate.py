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

import yaml

from lasa.config import EvaluateConfig
from lasa.errors import LasaError
from lasa.evaluate import run_evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--variants", nargs="*", help="only these variants (default: every evaluated one)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    path = args.run_dir / "config.yaml"
    if not path.is_file():
        raise SystemExit(f"{path} not found: is {args.run_dir} a lasa run directory?")
    stages = (yaml.safe_load(path.read_text()) or {}).get("stages", {})
    todo = {
        name.split(":", 1)[1]: entry["config"]
        for name, entry in stages.items()
        if name.startswith("evaluate:") and (not args.variants or name.split(":", 1)[1] in args.variants)
    }
    if not todo:
        raise SystemExit(
            f"{path} records no evaluation{' of ' + ', '.join(args.variants) if args.variants else ''}"
        )
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
