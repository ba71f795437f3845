"""Does a fine-tuned cross-encoder judge beat the ``pair`` judge on held-out groups? (judge issue, item 2c)

Usage::

    python scripts/cross_encoder_judge.py [--splits run language model] [--out docs/cross_encoder_judge.json]

Each fold fine-tunes multilingual-e5-small (LoRA, :mod:`lasa.judges.cross`) on the labelled corpus
minus one group of folds and predicts the held-out group; the ``pair`` ensemble is refitted on the
same folds, so the two are compared on identical held-out rows. Fine-tuning costs minutes per fold
on 2 cores, so the groups are coarser than ``judge_experiments.py``'s leave-one-out: generation
runs in three folds of similar size, languages in three folds (en zh it vi / ar ko th / bn sw jv),
and the 0.5B's rows predicting the 1.5B's. Per-fold predictions are cached next to ``--out`` so an
interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

RUN_FOLDS = {
    "v1-q05-base-128": "A",
    "q05-kto-128": "B",
    "q05-lasa-96": "B",
    "q15-base-96": "B",
    "quick-kto-48": "B",
    "q05-prefill-low-64": "B",
    "q05-base-t0.8-64": "C",
    "q05-base-t1.0-48": "C",
    "quick-base+gate-48": "C",
    "quick-base-48": "C",
    "q05-base-256": "C",
}
LANG_FOLDS = {
    **dict.fromkeys(["en", "zh", "it", "vi"], "high"),
    **dict.fromkeys(["ar", "ko", "th"], "medium"),
    **dict.fromkeys(["bn", "sw", "jv"], "low"),
}


def folds(rows: list[dict], split: str) -> list[tuple[str, list[int], list[int]]]:
    """(name, train rows, test rows) for one split."""
    if split == "model":
        small = [i for i, r in enumerate(rows) if "0.5b" in r["model"]]
        big = [i for i, r in enumerate(rows) if "0.5b" not in r["model"]]
        return [("0.5b->1.5b", small, big)]
    key = (
        (lambda r: RUN_FOLDS.get(r["run"], "C")) if split == "run" else (lambda r: LANG_FOLDS[r["language"]])
    )
    groups = [key(r) for r in rows]
    return [
        (g, [i for i, k in enumerate(groups) if k != g], [i for i, k in enumerate(groups) if k == g])
        for g in dict.fromkeys(groups)
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labels", default="src/lasa/data/judge_labels/multijail_responses.jsonl")
    ap.add_argument("--out", default="docs/cross_encoder_judge.json")
    ap.add_argument("--splits", nargs="+", default=["run", "language", "model"])
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch
    from judge_experiments import METRIC_HEADER, features, load, metric_cells

    from lasa.judges.base import LABELS
    from lasa.judges.cross import CrossConfig, CrossEncoder, fit_cross, predict_proba
    from lasa.judges.pair import MEMBERS, PairEnsemble
    from lasa.judges.validation import agreement, breakdown
    from lasa.runs import write_json

    torch.set_num_threads(2)
    rows = load(Path(args.labels))
    y = [r["label"] for r in rows]
    langs = [r["language"] for r in rows]
    blocks = features(rows)
    out = Path(args.out)
    cache_path = out.with_name(out.stem + "_folds.json")
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    cfg = CrossConfig(epochs=args.epochs)
    states: list = []

    def lower_states() -> list:
        """The frozen lower blocks' states, once for every row: every fold and epoch reuses them."""
        if not states:
            enc = CrossEncoder(cfg)
            states.extend(enc.lower(enc.encode([r["prompt"] for r in rows], [r["response"] for r in rows])))
        return states

    results: dict = {"labels": args.labels, "n": len(rows), "config": vars(cfg), "splits": {}}
    for split in args.splits:
        pred = {"cross": [None] * len(rows), "pair": [None] * len(rows), "mix": [None] * len(rows)}
        for name, train, test in folds(rows, split):
            key = f"{split}:{name}:{args.epochs}"
            if key not in cache:
                t0 = time.time()
                model = fit_cross(
                    [rows[i]["prompt"] for i in train],
                    [rows[i]["response"] for i in train],
                    [y[i] for i in train],
                    cfg,
                    states=[lower_states()[i] for i in train],
                )
                p_cross = predict_proba(model, [], [], states=[lower_states()[i] for i in test])
                sub = lambda idx: {k: v[idx] for k, v in blocks.items()}  # noqa: E731
                ens = PairEnsemble.fit(sub(np.array(train)), [y[i] for i in train], MEMBERS)
                p_pair = ens.proba(sub(np.array(test)))
                cache[key] = {
                    "test": test,
                    "cross": p_cross.tolist(),
                    "pair": np.asarray(p_pair).tolist(),
                    "seconds": round(time.time() - t0, 1),
                }
                cache_path.write_text(json.dumps(cache))
                logging.info(
                    "%s fold %s: %d train / %d test in %.0f s",
                    split,
                    name,
                    len(train),
                    len(test),
                    time.time() - t0,
                )
            doc = cache[key]
            pc, pp = np.array(doc["cross"]), np.array(doc["pair"])
            for j, i in enumerate(doc["test"]):
                pred["cross"][i] = LABELS[int(pc[j].argmax())]
                pred["pair"][i] = LABELS[int(pp[j].argmax())]
                pred["mix"][i] = LABELS[int((pc[j] + pp[j]).argmax())]
        idx = [i for i in range(len(rows)) if pred["cross"][i] is not None]
        gold = [y[i] for i in idx]
        results["splits"][split] = {
            judge: agreement(gold, [p[i] for i in idx])
            | {"per_language": breakdown(gold, [p[i] for i in idx], [langs[i] for i in idx])}
            for judge, p in pred.items()
        }
        for judge, v in results["splits"][split].items():
            logging.info(
                "%-8s %-6s κ %.3f  unsafe recall %.2f precision %.2f  ASR %.3f / %.3f  min-language κ %.2f",
                split, judge, v["kappa"], v["unsafe_recall"], v["unsafe_precision"], v["judged_asr"], v["gold_asr"],
                min(p["kappa"] for p in v["per_language"].values()),
            )  # fmt: skip
    write_json(out, results)
    names = {"cross": "cross-encoder (e5 + LoRA)", "pair": "pair (default)", "mix": "mean of the two"}
    lines = [
        "# Cross-encoder judge vs `pair` on identical held-out folds",
        "",
        f"Generated by `python scripts/cross_encoder_judge.py --splits {' '.join(args.splits)}` from "
        f"`{args.labels}` ({len(rows)} responses). Settings fixed before any fold was scored: "
        + ", ".join(f"{k} {v}" for k, v in vars(cfg).items())
        + ".",
        "",
        f"| split | judge | {METRIC_HEADER} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for split, res in results["splits"].items():
        for judge, v in res.items():
            lines.append(f"| {split} | {names[judge]} | {metric_cells(v)} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    logging.info("wrote %s and %s", out, out.with_suffix(".md"))


if __name__ == "__main__":
    main()
