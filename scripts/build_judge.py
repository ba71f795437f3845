"""Rebuild the embedding judge's shipped refusal classifier (src/lasa/data/judge_models/).

Fits the logistic regression on multilingual-e5-small embeddings of XSTest's 2,250 human-labelled
completions (what ``lasa`` would otherwise do at first use, ~7 minutes on 2 cores) and writes it
with the hash of its training data. A user-cache entry for the same data, written by the same
code, is reused rather than re-embedding; ``--retrain`` ignores it.

    python scripts/build_judge.py [--retrain]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from lasa.judges.embedding import SHIPPED_REFUSAL, Encoder, RefusalClassifier
from lasa.runs import write_json

OUT = Path(__file__).resolve().parents[1] / "src" / "lasa" / "data" / Path(*SHIPPED_REFUSAL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--retrain", action="store_true", help="ignore the user cache and fit again")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    encoder = Encoder()
    if args.retrain:
        with tempfile.TemporaryDirectory() as tmp:
            clf = RefusalClassifier.cached(encoder, cache_root=Path(tmp), use_shipped=False)
    else:
        clf = RefusalClassifier.cached(encoder, use_shipped=False)
    write_json(OUT, clf.to_json(RefusalClassifier.data_key()))
    logging.info("wrote %s (cv balanced accuracy %.3f)", OUT, clf.meta["cv_balanced_accuracy"])


if __name__ == "__main__":
    main()
