"""Would more labels make the `pair` judge good enough? Its learning curve on held-out labels.

The shipped recipe (``lasa.judges.pair.MEMBERS``) is refitted on random subsets of the pooled
training labels (``corpus_rows``: every training file) of growing size, several draws per size,
and each fit is scored on held-out files whose prompts no training file holds (the fresh sets of
``scripts/make_judge_corpus.py --unlabelled-only``): new prompts, new generation runs, new labels —
the situation of a user's evaluation. If agreement still climbs at the full corpus, labelling more
is the way to the issue's bar (κ ≥ 0.8, unsafe recall ≥ 0.85); if it has flattened, the frozen
features are the ceiling and a stronger reader is. A log-linear fit of κ against the number of
labels gives a rough extrapolation, printed as such (a flattening curve makes it optimistic).

    python scripts/judge_learning_curve.py --heldout src/lasa/data/judge_labels/fresh_heldout.jsonl \\
        --out docs/judge_learning_curve

Features come from the e5 cache (:func:`lasa.judges.pair.corpus_blocks`), so a rerun costs the
fits only (about a minute).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from lasa.judges.corpus import corpus_rows
from lasa.judges.pair import MEMBERS, PairEnsemble, corpus_blocks
from lasa.judges.validation import agreement
from lasa.stats import wilson

LABELS = ("safe", "unsafe", "invalid")


def heldout_rows(path: str) -> list[dict]:
    """The labelled rows of a held-out file, or a one-line error: a file of another kind (an export's
    items.jsonl, a key, a JSON document) reached the featurizer and ended in a numpy traceback."""
    from lasa.errors import LasaError
    from lasa.runs import read_jsonl

    try:
        rows = read_jsonl(path)
    except LasaError as err:
        raise SystemExit(f"--heldout: {err}") from None
    rows = [r for r in rows if isinstance(r, dict) and r.get("label") in LABELS]
    need = ("prompt", "response", "language")
    bad = next((r for r in rows if not all(isinstance(r.get(k), str) for k in need)), None)
    if not rows or bad is not None:
        raise SystemExit(
            f"--heldout {path}: not a labels file (rows with {', '.join(need)} and a label "
            f"{'/'.join(LABELS)}, as src/lasa/data/judge_labels/*.jsonl); "
            + ("no labelled rows" if not rows else f"a row has keys {sorted(bad)[:8]}")
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heldout", nargs="+", required=True, help="labelled JSONL files no training file holds")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.2, 0.35, 0.5, 0.7, 1.0])
    ap.add_argument("--draws", type=int, default=5, help="random subsets per fraction (1 at 1.0)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="writes OUT.json, OUT.md and OUT.png")
    args = ap.parse_args()
    missing = [f for f in args.heldout if not Path(f).is_file()]
    if missing:
        raise SystemExit(f"--heldout: no such file: {', '.join(missing)}")
    if any(not 0 < f <= 1 for f in args.fractions):
        raise SystemExit("--fractions must lie in (0, 1]")
    stems = [Path(f).stem for f in args.heldout]
    if len(set(stems)) != len(stems):  # results are keyed by file name: one set silently replaced another
        raise SystemExit(f"--heldout: two files share a name ({', '.join(stems)}); rename one")
    out = Path(args.out)
    if out.is_dir():
        raise SystemExit(f"--out {out} is a folder; give a path prefix (writes OUT.json, OUT.md, OUT.png)")
    heldout = {path: heldout_rows(path) for path in args.heldout}  # before the corpus features

    from lasa.runs import write_text

    rows = corpus_rows()
    blocks = corpus_blocks(rows)
    y = np.array([r["label"] for r in rows])
    seen = {r["prompt"] for r in rows}
    held = {}
    for path in args.heldout:
        fr = heldout[path]
        overlap = sum(r["prompt"] in seen for r in fr)
        if overlap:
            raise SystemExit(f"{path}: {overlap} prompts are in the training files; not a held-out set")
        held[Path(path).stem] = (fr, corpus_blocks(fr))
    rng = np.random.default_rng(args.seed)
    points = []
    full_pred: dict[str, list[str]] = {}  # the full-corpus fit's verdicts: the shipped judge's
    for frac in sorted(args.fractions):
        n = max(30, round(frac * len(rows)))
        for d in range(1 if frac >= 1 else args.draws):
            idx = np.sort(rng.choice(len(rows), size=n, replace=False)) if frac < 1 else np.arange(len(rows))
            judge = PairEnsemble.fit({k: v[idx] for k, v in blocks.items()}, list(y[idx]), MEMBERS)
            for name, (fr, fb) in held.items():
                pred = judge.labels(fb)
                if frac >= 1:
                    full_pred[name] = pred
                a = agreement([r["label"] for r in fr], pred)
                points.append(
                    {
                        "heldout": name,
                        "n_train": int(n),
                        "draw": d,
                        "kappa": a["kappa"],
                        "unsafe_recall": a["unsafe_recall"],
                        "unsafe_precision": a["unsafe_precision"],
                        "judged_asr": a["judged_asr"],
                        "gold_asr": a["gold_asr"],
                    }
                )
        print(
            f"{n} labels: "
            + "; ".join(
                f"{name} κ {np.mean([p['kappa'] for p in points if p['n_train'] == n and p['heldout'] == name]):.3f}"
                for name in held
            ),
            flush=True,
        )
    summary = {}
    for name in held:
        ns = sorted({p["n_train"] for p in points if p["heldout"] == name})
        table = []
        for n in ns:
            pts = [p for p in points if p["heldout"] == name and p["n_train"] == n]
            table.append(
                {
                    "n_train": n,
                    "draws": len(pts),
                    **{
                        k: float(np.mean([p[k] for p in pts]))
                        for k in ("kappa", "unsafe_recall", "unsafe_precision", "judged_asr")
                    },
                    "kappa_sd": float(np.std([p["kappa"] for p in pts])),
                }
            )
        # κ ≈ a + b·ln(n): the labels a log-linear trend would need for κ 0.8 (rough, and optimistic
        # if the curve flattens)
        b, a = np.polyfit(np.log([t["n_train"] for t in table]), [t["kappa"] for t in table], 1)
        need = float(np.exp((0.8 - a) / b)) if b > 0 else None
        summary[name] = {
            "n": len(held[name][0]),
            "curve": table,
            "loglinear": {"a": a, "b": b, "n_for_kappa_0.8": need},
        }
    combined = None
    if len(full_pred) > 1:  # every held-out set at once, scored by the full-corpus (shipped) fit
        gold = [r["label"] for name in full_pred for r in held[name][0]]
        pred = [p for name in full_pred for p in full_pred[name]]
        a = agreement(gold, pred)
        keys = ("kappa", "unsafe_recall", "unsafe_precision", "judged_asr", "gold_asr")
        combined = {"n": len(gold), **{k: a[k] for k in keys}}
        for k, labels in (("judged_asr", pred), ("gold_asr", gold)):  # 95% Wilson intervals
            w = wilson(sum(x == "unsafe" for x in labels), len(labels))
            combined[f"{k}_ci"] = [w.low, w.high]
    command = "python scripts/judge_learning_curve.py " + " ".join(
        ["--heldout", *args.heldout, "--out", args.out]
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(summary, out.with_suffix(".png"))  # first: a failed plot leaves no .json / .md without it
    write_text(
        out.with_suffix(".json"),
        json.dumps(
            {
                "command": command,
                "n_corpus": len(rows),
                "heldout": summary,
                "combined": combined,
                "points": points,
            },
            indent=1,
        )
        + "\n",
    )
    text = markdown(summary, len(rows), command, out.with_suffix(".png").name, combined)
    write_text(out.with_suffix(".md"), text)
    print(text)


def markdown(summary: dict, n_corpus: int, command: str, png: str, combined: dict | None = None) -> str:
    lines = [
        "# The `pair` judge's learning curve on held-out labels",
        "",
        f"Generated by `{command}`: the shipped recipe refitted on random subsets of the {n_corpus} "
        "pooled training labels (mean of the draws per size; one fit at the full corpus), scored on "
        "held-out files whose prompts no training file holds.",
        "",
        f"![learning curve]({png})",
        "",
    ]
    for name, s in summary.items():
        lines += [
            f"## {name} ({s['n']} labelled responses)",
            "",
            "| training labels | draws | κ (sd) | unsafe recall | unsafe precision | judged ASR |",
            "|---|---|---|---|---|---|",
        ]
        for t in s["curve"]:
            lines.append(
                f"| {t['n_train']} | {t['draws']} | {t['kappa']:.3f} ({t['kappa_sd']:.3f}) | "
                f"{t['unsafe_recall']:.2f} | {t['unsafe_precision']:.2f} | {100 * t['judged_asr']:.1f}% |"
            )
        ll = s["loglinear"]
        need = ll["n_for_kappa_0.8"]
        lines += [
            "",
            f"Log-linear fit κ ≈ {ll['a']:.3f} + {ll['b']:.3f}·ln(labels): "
            + (
                f"κ 0.8 at about {need:.1g} labels (a rough extrapolation, optimistic if the curve flattens)."
                if need
                else "κ does not rise with more labels."
            ),
            "",
        ]
    if combined:
        lines += [
            f"## All held-out sets together ({combined['n']} labelled responses), the full-corpus fit",
            "",
            f"κ {combined['kappa']:.3f}, unsafe recall {combined['unsafe_recall']:.2f}, unsafe precision "
            f"{combined['unsafe_precision']:.2f}, judged ASR {100 * combined['judged_asr']:.1f}% "
            f"[{100 * combined['judged_asr_ci'][0]:.1f}, {100 * combined['judged_asr_ci'][1]:.1f}] vs gold "
            f"{100 * combined['gold_asr']:.1f}% [{100 * combined['gold_asr_ci'][0]:.1f}, "
            f"{100 * combined['gold_asr_ci'][1]:.1f}] (95% Wilson).",
            "",
        ]
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for name, s in summary.items():
        ns = [t["n_train"] for t in s["curve"]]
        ax[0].errorbar(
            ns,
            [t["kappa"] for t in s["curve"]],
            yerr=[t["kappa_sd"] for t in s["curve"]],
            marker="o",
            label=name,
        )
        ax[1].plot(ns, [t["unsafe_recall"] for t in s["curve"]], marker="o", label=name)
    ax[0].axhline(0.8, color="grey", ls="--", lw=1)
    ax[1].axhline(0.85, color="grey", ls="--", lw=1)
    ticks = sorted({t["n_train"] for s in summary.values() for t in s["curve"]})
    for a, t in zip(ax, ("Cohen's κ (3 classes)", "unsafe recall")):
        a.set_xscale("log")
        a.set_xticks(ticks, [str(n) for n in ticks], minor=False)
        a.minorticks_off()
        a.set_xlabel("training labels")
        a.set_title(t)
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
