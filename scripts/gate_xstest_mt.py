"""How often the SSI gate fires on XSTest in every language: ``python scripts/gate_xstest_mt.py RUN``.

XSTest's 250 safe-but-scary prompts (and 200 unsafe contrasts) exist in English only; lasa ships
machine translations into the nine other MultiJail languages (``data/xstest_mt/``, not human-
verified). This scores every prompt with the run's SSI (``RUN/ssi`` or ``--ssi DIR``) and reports,
per language, the gate's false-positive rate on the safe prompts (the over-refusal the gate itself
causes: a flagged prompt gets the refusal-intent text) and its true-positive rate on the unsafe
ones, with Wilson intervals. Writes ``RUN/ssi/xstest_multilingual.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--ssi", default=None, help="SSI directory (default RUN/ssi)")
    ap.add_argument("--model", default="default")
    ap.add_argument("--langs", nargs="+", default=["all"])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import numpy as np

    from lasa.data import normalize_languages
    from lasa.data.safety import xstest_multilingual
    from lasa.models import load_model
    from lasa.runs import write_json
    from lasa.ssi import SSI
    from lasa.stats import wilson

    ssi = SSI.load(args.ssi or args.run_dir)
    langs = normalize_languages(args.langs)
    data = {g: xstest_multilingual(g) for g in langs}  # fails before the model load if a file is missing
    lm = load_model(args.model)
    out: dict = {"ssi_layer": ssi.layer, "threshold": ssi.threshold, "per_language": {}}
    print(f"{'lang':5s} {'FPR safe (n=250)':>24s} {'TPR unsafe (n=200)':>24s}")
    for g in langs:
        rows = data[g]
        flags = ssi.flags(ssi.score(lm, [r["prompt"] for r in rows], progress=True))
        safe = np.array([r["label"] == "safe" for r in rows])
        fpr = wilson(int(flags[safe].sum()), int(safe.sum()))
        tpr = wilson(int(flags[~safe].sum()), int((~safe).sum()))
        out["per_language"][g] = {"fpr_safe": fpr.to_dict(), "tpr_unsafe": tpr.to_dict()}
        print(f"{g:5s} {fpr.fmt():>24s} {tpr.fmt():>24s}")
    path = Path(args.out) if args.out else Path(args.run_dir) / "ssi" / "xstest_multilingual.json"
    write_json(path, out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
