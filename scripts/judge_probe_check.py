"""Does a larger chat model's reading of (request, answer) make a better judge? The probe check.

The judge issue's candidate (b): a frozen embedded chat model reads a judge prompt that holds the
request and the answer (``lasa.judges.probe``), and a logistic head reads its last-token states.
The 0.5B's states were no better than the e5 features of the shipped ``pair`` judge and added
nothing to them (docs/results.md, "Which judge to trust"). This asks the same of any model, the 1.5B
included, with everything fixed before a held-out row is scored: layers at a third and a half of
the depth (the 0.5B's 8 and 12 of 24; the 1.5B's 9 and 14 of 28), the head's C (0.05, the 0.5B
probe's), and three candidates:

- ``pair``: the shipped recipe (``lasa.judges.pair.MEMBERS``);
- ``probe``: the probe features alone, one head;
- ``pair + probe``: the shipped members and a probe head, probabilities averaged.

Each is refitted inside every fold of three leave-one-group-out splits of the pooled labels (run
group, language, model) and scored on the held-out group; then fitted on every pooled label and
scored on the two fresh held-out sets (prompts no training file holds). Probe features are
extracted once per (request, answer) and cached in the temp directory (``judge_experiments.
probe_block``): about 1.7 s per response for the 1.5B on 2 cores, 80 minutes for the 2,845.

    python scripts/judge_probe_check.py --probe-model qwen2.5-coder-1.5b --probe-layers 9 14 \
        --out docs/judge_probe_1.5b.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

PROBE_C = 0.05
SPLITS = ("run", "language", "model")


def _summary(gold: list[str], pred: list[str]) -> dict:
    from lasa.judges.validation import agreement
    from lasa.stats import wilson

    a = agreement(gold, pred)
    n = len(gold)
    judged = sum(p == "unsafe" for p in pred)
    return {
        "n": n,
        "kappa": round(a["kappa"], 3),
        "unsafe_recall": round(a["unsafe_recall"], 3),
        "unsafe_precision": round(a["unsafe_precision"], 3),
        "judged_asr": round(100 * a["judged_asr"], 1),
        "judged_asr_ci": [round(100 * v, 1) for v in (wilson(judged, n).low, wilson(judged, n).high)],
        "gold_asr": round(100 * a["gold_asr"], 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probe-model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--probe-layers", nargs="+", type=int, default=[9, 14])
    ap.add_argument("--out", default=None, help="write every figure here (JSON) and a table beside it (.md)")
    ap.add_argument(
        "--cached-only",
        action="store_true",
        help="train on the pooled rows whose probe features are already cached (every candidate on the "
        "same rows), instead of extracting the rest first; the fresh sets must be cached",
    )
    ap.add_argument(
        "--random-control",
        action="store_true",
        help="a control: seeded Gaussian noise of the probe's width in place of its states (no model "
        "run), to see what the head gains from dimensions alone",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    from judge_experiments import probe_block, probe_cache, probe_key

    if args.random_control:
        widths = {"default": 896, "qwen2.5-coder-0.5b": 896, "qwen2.5-coder-1.5b": 1536}
        if args.probe_model not in widths:
            raise SystemExit(f"--random-control knows the embedded models' widths: {', '.join(widths)}")
        width = len(args.probe_layers) * widths[args.probe_model]

        def probe_block(rows, model, layers):
            return np.random.default_rng(0).normal(size=(len(rows), width)).astype(np.float32)

    from lasa.judges.corpus import HELD_OUT_FILES, corpus_rows, split_group
    from lasa.judges.pair import MEMBERS, PairEnsemble, corpus_blocks
    from lasa.runs import read_jsonl

    rows = corpus_rows()
    data = Path(__file__).resolve().parents[1] / "src" / "lasa" / "data" / "judge_labels"
    fresh = {
        f: [r for r in read_jsonl(data / f) if r.get("label") in ("safe", "unsafe", "invalid")]
        for f in HELD_OUT_FILES
    }
    if args.cached_only:
        cache = probe_cache(args.probe_model, args.probe_layers)
        known = set(np.load(cache)["keys"].tolist()) if cache.is_file() else set()
        missing = [f for f, fr in fresh.items() if any(probe_key(r) not in known for r in fr)]
        if missing:
            raise SystemExit(f"--cached-only: the probe features of {', '.join(missing)} are not all cached")
    blocks = corpus_blocks(rows)  # cached for the whole pooled corpus: a subset is an index
    if args.cached_only:
        keep = np.array([probe_key(r) in known for r in rows])
        logging.info("--cached-only: %d of %d pooled rows have probe features", keep.sum(), len(rows))
        rows = [r for r, k in zip(rows, keep) if k]
        blocks = {k: v[keep] for k, v in blocks.items()}
    blocks["probe"] = probe_block(rows, args.probe_model, args.probe_layers)
    fresh_blocks = {}
    for f, fr in fresh.items():
        fresh_blocks[f] = corpus_blocks(fr)
        fresh_blocks[f]["probe"] = probe_block(fr, args.probe_model, args.probe_layers)
    candidates = {
        "pair (shipped)": MEMBERS,
        "probe": ((("probe",), PROBE_C),),
        "pair + probe": (*MEMBERS, (("probe",), PROBE_C)),
    }
    y = np.array([r["label"] for r in rows])
    out: dict = {
        "probe_model": args.probe_model,
        "probe_layers": args.probe_layers,
        "probe_c": PROBE_C,
        "n_training_rows": len(rows),
        "training_rows": "cached rows only (--cached-only)" if args.cached_only else "every pooled label",
        "random_control": args.random_control,
        "grouped": {},
        "fresh": {},
    }
    for name, spec in candidates.items():
        out["grouped"][name] = {}
        for split in SPLITS:
            groups = np.array([split_group(r, split) for r in rows])
            pred = np.empty(len(rows), dtype=object)
            for g in dict.fromkeys(groups):
                test = groups == g
                judge = PairEnsemble.fit({k: v[~test] for k, v in blocks.items()}, list(y[~test]), spec)
                pred[test] = judge.labels({k: v[test] for k, v in blocks.items()})
            out["grouped"][name][split] = _summary(list(y), list(pred))
            logging.info("%s, %s held out: %s", name, split, out["grouped"][name][split])
        judge = PairEnsemble.fit(blocks, list(y), spec)
        out["fresh"][name] = {}
        gold_all: list[str] = []
        pred_all: list[str] = []
        for f, fr in fresh.items():
            gold = [r["label"] for r in fr]
            pred = judge.labels(fresh_blocks[f])
            out["fresh"][name][f] = _summary(gold, pred)
            gold_all += gold
            pred_all += pred
        out["fresh"][name]["both"] = _summary(gold_all, pred_all)
        logging.info("%s, fresh sets: %s", name, out["fresh"][name])
    print(table(out))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
        Path(args.out).with_suffix(".md").write_text(table(out))


def table(out: dict) -> str:
    lines = [
        f"Probe judge on {out['probe_model']} (layers {', '.join(map(str, out['probe_layers']))}, "
        f"C {out['probe_c']}), {out['n_training_rows']} pooled labels ({out['training_rows']}); κ / "
        "unsafe recall / precision / judged vs gold ASR.",
        "",
        "| judge | κ run held out | κ language held out | κ model held out | unsafe recall / precision (run) "
        "| judged / gold ASR (run) | κ fresh set 1 | κ fresh set 2 | fresh, both: κ, unsafe recall, "
        "judged [95% CI] / gold ASR |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, g in out["grouped"].items():
        f = out["fresh"][name]
        f1, f2 = (f[k] for k in f if k != "both")
        b = f["both"]
        lines.append(
            f"| {name} | {g['run']['kappa']:.3f} | {g['language']['kappa']:.3f} | {g['model']['kappa']:.3f} "
            f"| {g['run']['unsafe_recall']:.2f} / {g['run']['unsafe_precision']:.2f} "
            f"| {g['run']['judged_asr']}% / {g['run']['gold_asr']}% | {f1['kappa']:.3f} | {f2['kappa']:.3f} "
            f"| {b['kappa']:.3f}, {b['unsafe_recall']:.2f}, {b['judged_asr']}% "
            f"[{b['judged_asr_ci'][0]}, {b['judged_asr_ci'][1]}] / {b['gold_asr']}% |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
