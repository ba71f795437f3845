"""Rebuild the opt-in ``probe`` judge's weights (src/lasa/data/judge_models/probe-head.json).

The ``probe`` judge is the shipped ``pair`` recipe plus one logistic head on a frozen chat model's
last-token states of a judge prompt holding the request and the answer (``lasa.judges.probe``),
the three heads' probabilities averaged: the candidate that read best in
``scripts/judge_probe_check.py`` (the 1.5B at layers 9 and 14, C 0.05, all fixed before any
held-out row was scored). This fits it on every pooled label with the same leave-one-language /
model / generation-run-out validation as ``pair`` (the corrected ASR reads its per-language
counts). The weights it writes are the shipped ``pair`` heads as they are plus the probe head fitted
on every label, so ``probe`` is exactly ``pair`` and one head. It scores the two fresh held-out sets
beside the ``pair`` judge, with a bootstrap interval of the κ gain that resamples MultiJail prompts,
and writes the weights with all of it in their meta.

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


def kappa_gain(
    gold: list[str], new: list[str], old: list[str], clusters: list[str], draws: int = 2000
) -> dict:
    """κ(new) − κ(old) on the same rows, with a 95% bootstrap interval that resamples MultiJail prompt
    ids (their answers in every language and run move together), and the share of draws at or
    below zero (a one-sided bootstrap p)."""
    import numpy as np

    from lasa.judges.validation import cohen_kappa

    g, a, b = (np.asarray(x) for x in (gold, new, old))
    ids = sorted(set(clusters))
    rows = {c: np.flatnonzero(np.asarray(clusters) == c) for c in ids}
    rng = np.random.default_rng(0)
    diffs = []
    for _ in range(draws):
        idx = np.concatenate([rows[c] for c in rng.choice(ids, size=len(ids), replace=True)])
        diffs.append(cohen_kappa(list(g[idx]), list(a[idx])) - cohen_kappa(list(g[idx]), list(b[idx])))
    point = cohen_kappa(gold, new) - cohen_kappa(gold, old)
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {
        "difference": round(float(point), 3),
        "ci95": [round(float(lo), 3), round(float(hi), 3)],
        "share_of_draws_le_0": round(float(np.mean(np.asarray(diffs) <= 0)), 4),
        "clusters": len(ids),
        "draws": draws,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probe-model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--probe-layers", nargs="+", type=int, default=[9, 14])
    ap.add_argument("--out", default=None, help="where to write the weights (default: the shipped file)")
    ap.add_argument(
        "--doc",
        default="docs/judge_probe_shipped.md",
        help="a table of the validation and the fresh-set comparison ('' to skip)",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from judge_experiments import probe_block
    from judge_probe_check import _summary

    from lasa.judges.corpus import HELD_OUT_FILES, corpus_rows
    from lasa.judges.pair import PairEnsemble, corpus_blocks, fit_judge, load_judge_weights
    from lasa.judges.probe import PROBE_C, SHIPPED_PROBE_HEAD, probe_spec
    from lasa.runs import read_jsonl, write_json

    rows = corpus_rows()
    blocks = corpus_blocks(rows)
    blocks["probe"] = probe_block(rows, args.probe_model, args.probe_layers)
    judge = fit_judge(rows, blocks, spec=probe_spec())
    # the shipped pair heads as they are, so `probe` is exactly `pair` plus one head and comparing the
    # two judges isolates the probe's contribution (the grouped validation above refits all three
    # heads in every fold: it validates the recipe)
    shipped = load_judge_weights()
    if [m.blocks for m in shipped.members] != [m.blocks for m in judge.members[:2]]:
        raise SystemExit(
            "the shipped pair head's members differ from lasa.judges.pair.MEMBERS: rebuild it first"
        )
    judge.members[:2] = shipped.members
    judge.meta.update(
        probe_model=args.probe_model,
        probe_layers=list(args.probe_layers),
        probe_width=int(blocks["probe"].shape[1]),
        probe_c=PROBE_C,
    )
    # the shipped pair judge is this ensemble's first two members: score both on the fresh sets
    pair_only = PairEnsemble(judge.members[:2], {})
    fresh: dict[str, dict] = {}
    gold_all: list[str] = []
    pred_all: list[str] = []
    pair_all: list[str] = []
    clusters: list[str] = []
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
        pair_pred = pair_only.labels(fb)
        fresh[f"pair_{f}"] = _summary(gold, pair_pred)
        pair_all += pair_pred
        clusters += [str(r.get("mj_id", r["prompt"])) for r in fr]
    fresh["both"] = _summary(gold_all, pred_all)
    fresh["pair_both"] = _summary(gold_all, pair_all)
    fresh["kappa_gain_over_pair"] = kappa_gain(gold_all, pred_all, pair_all, clusters)
    judge.meta["validation"]["fresh_heldout"] = fresh
    out = Path(args.out) if args.out else DATA / Path(*SHIPPED_PROBE_HEAD)
    write_json(out, judge.to_json())
    logging.info("wrote %s: %s", out, judge.meta["validation"].get("summary"))
    summary = {s: v["overall"] for s, v in judge.meta["validation"]["splits"].items()}
    print(json.dumps({"grouped": summary, "fresh_heldout": fresh}, indent=1))
    if args.doc:
        Path(args.doc).write_text(table(judge.meta, summary, fresh))


def table(meta: dict, grouped: dict, fresh: dict) -> str:
    """The markdown docs/results.md quotes: grouped validation of the recipe and both judges on the fresh sets."""
    lines = [
        f"`probe` judge: the shipped `pair` heads + a head (C {meta['probe_c']}) on {meta['probe_model']}'s "
        f"judge-prompt states at layers {', '.join(map(str, meta['probe_layers']))}, fitted on "
        f"{meta['n']} pooled labels (`python scripts/build_probe_judge.py`).",
        "",
        "Grouped validation (all three heads refitted without the held-out group):",
        "",
        "| held out | n | κ | unsafe recall | unsafe precision | judged / gold ASR |",
        "|---|---|---|---|---|---|",
    ]
    for split, o in grouped.items():
        lines.append(
            f"| {split} | {o['n']} | {o['kappa']:.3f} | {o['unsafe_recall']:.2f} | {o['unsafe_precision']:.2f} "
            f"| {100 * o['judged_asr']:.1f}% / {100 * o['gold_asr']:.1f}% |"
        )
    lines += [
        "",
        "The two fresh held-out sets (prompts no training file holds):",
        "",
        "| judge | set | n | κ | unsafe recall | unsafe precision | judged [95% CI] / gold ASR |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, o in fresh.items():
        if not isinstance(o, dict) or "kappa" not in o:
            continue
        judge, part = ("pair", key[5:]) if key.startswith("pair_") else ("probe", key)
        lines.append(
            f"| {judge} | {part} | {o['n']} | {o['kappa']:.3f} | {o['unsafe_recall']:.2f} "
            f"| {o['unsafe_precision']:.2f} | {o['judged_asr']}% [{o['judged_asr_ci'][0]}, "
            f"{o['judged_asr_ci'][1]}] / {o['gold_asr']}% |"
        )
    g = fresh["kappa_gain_over_pair"]
    lines += [
        "",
        f"κ(probe) − κ(pair) on both fresh sets: {g['difference']:+.3f} [{g['ci95'][0]:+.3f}, "
        f"{g['ci95'][1]:+.3f}] (95% bootstrap over {g['clusters']} MultiJail prompts, {g['draws']} draws; "
        f"share of draws ≤ 0: {g['share_of_draws_le_0']}).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
