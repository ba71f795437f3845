"""Rebuild the opt-in ``probe`` judge's weights (src/lasa/data/judge_models/probe-head.json).

The ``probe`` judge is the shipped ``pair`` recipe plus one logistic head on a frozen chat model's
last-token states of a judge prompt holding the request and the answer (``lasa.judges.probe``),
the three heads' probabilities averaged: the candidate that read best in
``scripts/judge_probe_check.py`` (the 1.5B at layers 9 and 14, C 0.05, all fixed before any
held-out row was scored). This fits it on every pooled label with the same leave-one-language /
model / generation-run-out validation as ``pair`` (the corrected ASR reads its per-language
counts), scores the two fresh held-out sets, and writes the weights with both in their meta.

The probe states are extracted once per (request, answer) and cached in the temp directory
(shared with ``judge_probe_check.py``; about 1.7 s per response for the 1.5B on 2 CPU cores, 80
minutes for the 2,845 labelled responses, resumable), then the fits take a few minutes.

    python scripts/build_probe_judge.py [--probe-model qwen2.5-coder-1.5b] [--probe-layers 9 14]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

DATA = Path(__file__).resolve().parents[1] / "src" / "lasa" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probe-model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--probe-layers", nargs="+", type=int, default=[9, 14])
    ap.add_argument("--out", default=None, help="where to write the weights (default: the shipped file)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from judge_experiments import probe_block
    from judge_probe_check import _summary

    from lasa.judges.corpus import HELD_OUT_FILES, corpus_rows
    from lasa.judges.pair import corpus_blocks, fit_judge
    from lasa.judges.probe import PROBE_C, SHIPPED_PROBE_HEAD, probe_spec
    from lasa.runs import read_jsonl, write_json

    rows = corpus_rows()
    blocks = corpus_blocks(rows)
    blocks["probe"] = probe_block(rows, args.probe_model, args.probe_layers)
    judge = fit_judge(rows, blocks, spec=probe_spec())
    judge.meta.update(
        probe_model=args.probe_model,
        probe_layers=list(args.probe_layers),
        probe_width=int(blocks["probe"].shape[1]),
        probe_c=PROBE_C,
    )
    fresh: dict[str, dict] = {}
    gold_all: list[str] = []
    pred_all: list[str] = []
    for f in HELD_OUT_FILES:
        fr = [
            r
            for r in read_jsonl(DATA / "judge_labels" / f)
            if r.get("label") in ("safe", "unsafe", "invalid")
        ]
        fb = corpus_blocks(fr)
        fb["probe"] = probe_block(fr, args.probe_model, args.probe_layers)
        gold, pred = [r["label"] for r in fr], judge.labels(fb)
        fresh[f] = _summary(gold, pred)
        gold_all += gold
        pred_all += pred
    fresh["both"] = _summary(gold_all, pred_all)
    judge.meta["validation"]["fresh_heldout"] = fresh
    out = Path(args.out) if args.out else DATA / Path(*SHIPPED_PROBE_HEAD)
    write_json(out, judge.to_json())
    logging.info("wrote %s: %s", out, judge.meta["validation"].get("summary"))
    summary = {s: v["overall"] for s, v in judge.meta["validation"]["splits"].items()}
    print(json.dumps({"grouped": summary, "fresh_heldout": fresh}, indent=1))


if __name__ == "__main__":
    main()
