"""Compare per-language calibration rules for the SSI gate on an interpreted run, without a model.

``python scripts/gate_calibration.py RUN/SSI_DIR [--out docs/gate_calibration.json]``

Reads the SSI and its cached states (``lasa interpret`` with ``--calibration flores`` and
``--xstest-mt-n N`` caches the FLORES calibration sentences and the translated XSTest prompts
next to the evaluation set) and, for each rule, reports per language the TPR / FPR on the SSI's
evaluation set (MultiJail vs same-form benign prompts) and the flag rate on translated XSTest's
safe and unsafe prompts. Rules (the training languages always keep the validated threshold):

- ``global``: one threshold for every language (no calibration);
- ``median_shift``: shift each unseen language's logits by its FLORES median minus the training
  languages' (a parallel-text offset);
- ``flores_q95`` / ``flores_q99``: raise an unseen language's threshold to the 95th / 99th
  percentile of its own FLORES logits when that is higher (lasa's default is q95);
- ``oracle_5fpr``: the threshold at 5% FPR on the evaluation set's benign prompts, per language
  (uses the labels: the ceiling of what the layer allows, not a rule).
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import numpy as np
import torch


def _calibration_n(meta: dict) -> int:
    """How many FLORES sentences per language the SSI was calibrated on: recorded in ``ssi.json``
    (``calibration.n_per_language``; older runs only say it in the ``data`` sentence)."""
    cal = meta.get("calibration") or {}
    if "n_per_language" in cal:
        return int(cal["n_per_language"])
    found = re.search(r"(\d+) parallel sentences", str(cal.get("data", "")))
    if found is None:
        raise SystemExit(
            "error: the SSI records no FLORES calibration; this table needs `lasa interpret --calibration flores`"
        )
    return int(found.group(1))


def main() -> None:
    from lasa.data import LANGUAGES
    from lasa.errors import LasaError
    from lasa.interpret.stage import CachedStates, saved_prompts
    from lasa.runs import write_json
    from lasa.ssi import SSI

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ssi_dir")
    ap.add_argument("--out", default=None, help="Also write the table as JSON here.")
    args = ap.parse_args()
    d = Path(args.ssi_dir)
    try:
        ssi = SSI.load(d).without_calibration()
        prompts = saved_prompts(d, calibration_n=_calibration_n(ssi.meta))
        cache = CachedStates(d)
        x = cache.layer(ssi.layer)
    except LasaError as e:
        raise SystemExit(f"error: {e}") from None
    layer = ssi.layer
    seen = list(ssi.meta["train_languages"])
    evalp, calp, xs = prompts.evaluation, prompts.calibration, prompts.xstest_mt
    n_mt = sum(1 for r in xs if r["label"] == "safe" and r["lang"] == xs[0]["lang"]) if xs else 0

    def logits(texts: list[str]) -> np.ndarray:
        try:
            rows = cache.rows(texts)
        except LasaError as e:
            raise SystemExit(f"error: {e}") from None
        with torch.inference_mode():
            return ssi.module(x[rows]).numpy()

    t = math.log(ssi.threshold / (1 - ssi.threshold))
    cal = {g: logits([p.text for p in calp if p.lang == g]) for g in LANGUAGES}
    ev = {g: [p for p in evalp if p.lang == g] for g in LANGUAGES}
    ev_logit = {g: logits([p.text for p in ev[g]]) for g in LANGUAGES}
    ev_y = {g: np.array([p.label for p in ev[g]]) for g in LANGUAGES}
    seen_median = float(np.mean([np.median(cal[s]) for s in seen]))

    def oracle(g: str) -> float:
        benign = np.sort(ev_logit[g][ev_y[g] == 0])
        return float(benign[math.ceil(0.95 * len(benign)) - 1])

    rules = {
        "global": lambda g: t,
        "median_shift": lambda g: t + float(np.median(cal[g])) - seen_median,
        "flores_q95": lambda g: max(t, float(np.quantile(cal[g], 0.95))),
        "flores_q99": lambda g: max(t, float(np.quantile(cal[g], 0.99))),
        "oracle_5fpr": oracle,
    }
    table: dict[str, dict] = {}
    for name, thr in rules.items():
        per = {}
        for g in LANGUAGES:
            th = t if g in seen and name != "oracle_5fpr" else thr(g)
            le, y = ev_logit[g], ev_y[g]
            r = {"tpr": float((le[y == 1] > th).mean()), "fpr": float((le[y == 0] > th).mean())}
            xr = [q for q in xs if q.get("lang") == g]
            if xr:
                lx = logits([q["prompt"] for q in xr])
                safe = np.array([q["label"] == "safe" for q in xr])
                r |= {
                    "xstest_mt_fpr": float((lx[safe] > th).mean()),
                    "xstest_mt_tpr": float((lx[~safe] > th).mean()),
                }
            per[g] = r
        unseen = [g for g in LANGUAGES if g not in seen]
        mean = {k: float(np.mean([per[g][k] for g in unseen if k in per[g]])) for k in per[unseen[0]]}
        table[name] = {"per_language": per, "mean_unseen": mean}
        cells = "  ".join(
            f"{g} {per[g]['tpr']:.2f}/{per[g]['fpr']:.2f}"
            + (f"/{per[g]['xstest_mt_fpr']:.2f}" if "xstest_mt_fpr" in per[g] else "")
            for g in LANGUAGES
        )
        print(
            f"{name:13s} unseen mean: TPR {mean['tpr']:.2f} FPR {mean['fpr']:.2f}"
            + (
                f" XSTest-MT FPR {mean['xstest_mt_fpr']:.2f} TPR {mean['xstest_mt_tpr']:.2f}"
                if "xstest_mt_fpr" in mean
                else ""
            )
            + f"\n    (TPR/FPR/XSTest-MT-FPR) {cells}"
        )
    if args.out:
        write_json(
            args.out,
            {
                "ssi": str(d),
                "layer": layer,
                "threshold": ssi.threshold,
                "n_xstest_mt_per_label": n_mt,
                "rules": table,
            },
        )


if __name__ == "__main__":
    main()
