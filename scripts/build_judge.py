"""Rebuild the shipped judge weights (src/lasa/data/judge_models/).

* ``embedding-refusal.json``: the e5 refusal classifier on XSTest's 2,250 human-labelled
  completions (what ``lasa`` would otherwise fit at first use, ~7 minutes on 2 cores), keyed by
  the hash of its training data. A user-cache entry for the same data is reused; ``--retrain``
  ignores it.
* ``pair-head.json``: the default ``pair`` judge's weights (an ensemble of two logistic heads), fitted on lasa's labelled corpus
  (``data/judge_labels/multijail_responses.jsonl``) with its leave-one-language / model /
  generation-run-out validation stored beside the weights (the corrected ASR reads it).

    python scripts/build_judge.py [--retrain] [--skip-refusal]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

from lasa.judges.corpus import corpus_rows
from lasa.judges.embedding import SHIPPED_REFUSAL, Encoder, RefusalClassifier
from lasa.judges.pair import SHIPPED_HEAD, corpus_blocks, fit_judge
from lasa.runs import write_json

DATA = Path(__file__).resolve().parents[1] / "src" / "lasa" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--retrain", action="store_true", help="ignore the user cache and fit again")
    ap.add_argument("--skip-refusal", action="store_true", help="keep the shipped refusal classifier")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    encoder = Encoder()
    if not args.skip_refusal:
        if args.retrain:
            with tempfile.TemporaryDirectory() as tmp:
                clf = RefusalClassifier.cached(encoder, cache_root=Path(tmp), use_shipped=False)
        else:
            clf = RefusalClassifier.cached(encoder, use_shipped=False)
        write_json(DATA / Path(*SHIPPED_REFUSAL), clf.to_json(RefusalClassifier.data_key()))
        logging.info("wrote refusal classifier (cv balanced accuracy %.3f)", clf.meta["cv_balanced_accuracy"])

    rows = corpus_rows()
    blocks = corpus_blocks(rows, encoder, refresh=args.retrain)
    judge = fit_judge(rows, blocks)
    out = DATA / Path(*SHIPPED_HEAD)
    write_json(out, judge.to_json())
    logging.info("wrote %s: %s", out, judge.meta["validation"].get("summary"))
    print(json.dumps({s: v["overall"] for s, v in judge.meta["validation"]["splits"].items()}, indent=1))


if __name__ == "__main__":
    main()
