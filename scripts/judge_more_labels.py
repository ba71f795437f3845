"""Does the `pair` judge improve with more labels like the ones it judges? A held-out check.

The shipped judge trains on every hand-labelled file (:func:`lasa.judges.corpus.corpus_rows`):
the 1,034-row corpus built for it, then the sets labelled to check evaluation runs (c100, the dose
run, hn10). This compares, on identical held-out groups, the shipped recipe
(``lasa.judges.pair.MEMBERS``) fitted on the first corpus alone with the same recipe fitted on
the pooled labels: leave-one-run-group-out (a later set's twin runs, which answered the same
prompts, are held out together) and leave-one-language-out. Scores are reported on all rows, on
the later sets alone (which the first-corpus judge never saw in any fold) and per later set.
Features come from the e5 cache, so a rerun costs seconds (minutes for new rows).

``--fresh FILE`` adds the check that needs no folds: labelled responses to MultiJail prompts none
of these files holds (``scripts/make_judge_corpus.py --unlabelled-only``), scored by both heads,
each fitted on all of its rows.

``--unsafe-thresholds`` asks whether another operating point would serve better than the argmax:
call a response unsafe when the pooled head's p(unsafe) reaches t (else the likelier of safe and
invalid), with leave-one-run-group-out probabilities (and on ``--fresh``, never used to choose).

    python scripts/judge_more_labels.py [--fresh src/lasa/data/judge_labels/fresh_heldout.jsonl]
        [--unsafe-thresholds 0.25 0.3 0.35 0.4 0.45 0.5]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from lasa.judges.corpus import CORPUS, LABEL_FILES, corpus_rows
from lasa.judges.pair import MEMBERS, PairEnsemble, corpus_blocks
from lasa.judges.validation import agreement, breakdown


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fresh", default=None, help="a labelled JSONL of prompts no training file holds")
    ap.add_argument("--unsafe-thresholds", type=float, nargs="*", default=[], metavar="T")
    args = ap.parse_args()
    if args.fresh and not Path(args.fresh).is_file():
        raise SystemExit(f"--fresh {args.fresh}: no such file")
    rows = corpus_rows([f for f in LABEL_FILES if not args.fresh or not args.fresh.endswith(f)])
    blocks = corpus_blocks(rows)
    y = np.array([r["label"] for r in rows])
    first = np.array([r["source"] == CORPUS[1] for r in rows])
    langs = [r["language"] for r in rows]

    def oof(groups: np.ndarray, train_pool: np.ndarray) -> np.ndarray:
        pred = np.empty(len(rows), dtype=object)
        for g in dict.fromkeys(groups):
            test = groups == g
            train = ~test & train_pool
            judge = PairEnsemble.fit({k: v[train] for k, v in blocks.items()}, list(y[train]), MEMBERS)
            pred[test] = judge.labels({k: v[test] for k, v in blocks.items()})
        return pred

    def line(pred: np.ndarray, mask: np.ndarray) -> str:
        a = agreement(list(y[mask]), list(pred[mask]))
        per = breakdown(list(y[mask]), list(pred[mask]), [langs[i] for i in np.flatnonzero(mask)])
        return (
            f"κ {a['kappa']:.3f}, unsafe recall {a['unsafe_recall']:.2f}, precision "
            f"{a['unsafe_precision']:.2f}, judged / gold ASR {100 * a['judged_asr']:.1f}% / "
            f"{100 * a['gold_asr']:.1f}%, lowest language κ {min(v['kappa'] for v in per.values()):.2f}"
        )

    later = sorted({r["run_group"] for r in rows if r["source"] != CORPUS[1]})
    print(
        f"{len(rows)} labelled responses, {first.sum()} in the first corpus; later sets: {', '.join(later)}"
    )
    for split, field in (("run group", "run_group"), ("language", "language")):
        groups = np.array([r[field] for r in rows])
        for name, pool in (("first corpus only", first), ("pooled (shipped)", np.ones(len(rows), bool))):
            pred = oof(groups, pool)
            print(f"\nheld out by {split}, trained on {name}:")
            print(f"  all rows ({len(rows)}): {line(pred, np.ones(len(rows), bool))}")
            print(f"  later sets ({(~first).sum()}): {line(pred, ~first)}")
            for g in later:
                mask = np.array([r["run_group"] == g and r["source"] != CORPUS[1] for r in rows])
                a = agreement(list(y[mask]), list(pred[mask]))
                print(f"    {g} ({mask.sum()}): κ {a['kappa']:.3f}, unsafe recall {a['unsafe_recall']:.2f}")
    if args.fresh:
        fresh_check(args.fresh, rows, blocks, y, first)
    if args.unsafe_thresholds:
        threshold_check(args.unsafe_thresholds, rows, blocks, y, args.fresh)


def at_threshold(p: np.ndarray, t: float) -> list[str]:
    """Unsafe when p(unsafe) >= t, else the likelier of safe and invalid (LABELS order)."""
    other = np.where(p[:, 0] >= p[:, 2], "safe", "invalid")
    return list(np.where(p[:, 1] >= t, "unsafe", other))


def threshold_check(
    ts: list[float], rows: list[dict], blocks: dict, y: np.ndarray, fresh: str | None
) -> None:
    from lasa.runs import read_jsonl

    groups = np.array([r["run_group"] for r in rows])
    p = np.zeros((len(rows), 3))
    for g in dict.fromkeys(groups):
        test = groups == g
        judge = PairEnsemble.fit({k: v[~test] for k, v in blocks.items()}, list(y[~test]), MEMBERS)
        p[test] = judge.proba({k: v[test] for k, v in blocks.items()})
    fr = [r for r in read_jsonl(fresh) if r.get("label") in ("safe", "unsafe", "invalid")] if fresh else []
    pf = PairEnsemble.fit(blocks, list(y), MEMBERS).proba(corpus_blocks(fr)) if fr else None
    print(
        "\npooled head, unsafe when p(unsafe) >= t (held out by run group"
        + (", and on --fresh)" if fr else ")")
    )
    for t in ts:
        a = agreement(list(y), at_threshold(p, t))
        cells = (
            f"  t {t:.2f}: κ {a['kappa']:.3f}, unsafe recall {a['unsafe_recall']:.2f}, precision "
            f"{a['unsafe_precision']:.2f}, judged / gold ASR {100 * a['judged_asr']:.1f}% / {100 * a['gold_asr']:.1f}%"
        )
        if pf is not None:
            b = agreement([r["label"] for r in fr], at_threshold(pf, t))
            cells += (
                f" | fresh: κ {b['kappa']:.3f}, recall {b['unsafe_recall']:.2f}, judged / gold ASR "
                f"{100 * b['judged_asr']:.1f}% / {100 * b['gold_asr']:.1f}%"
            )
        print(cells)


def fresh_check(path: str, rows: list[dict], blocks: dict, y: np.ndarray, first: np.ndarray) -> None:
    """Both heads, each fitted on all of its rows, on labels of prompts none of them holds."""
    from lasa.runs import read_jsonl

    fresh = [r for r in read_jsonl(path) if r.get("label") in ("safe", "unsafe", "invalid")]
    seen = {r["prompt"] for r in rows}
    overlap = sum(r["prompt"] in seen for r in fresh)
    fb = corpus_blocks(fresh)
    gold = [r["label"] for r in fresh]
    langs = [r["language"] for r in fresh]
    print(f"\n{path}: {len(fresh)} labelled responses, {overlap} of their prompts in the training files")
    for name, pool in (("first corpus only", first), ("pooled (shipped)", np.ones(len(rows), bool))):
        judge = PairEnsemble.fit({k: v[pool] for k, v in blocks.items()}, list(y[pool]), MEMBERS)
        pred = judge.labels(fb)
        a = agreement(gold, pred)
        per = breakdown(gold, pred, langs)
        print(
            f"  trained on {name}: κ {a['kappa']:.3f}, unsafe recall {a['unsafe_recall']:.2f}, precision "
            f"{a['unsafe_precision']:.2f}, judged / gold ASR {100 * a['judged_asr']:.1f}% / "
            f"{100 * a['gold_asr']:.1f}%, per language κ "
            + ", ".join(f"{g} {v['kappa']:.2f}" for g, v in per.items())
        )
        for run in dict.fromkeys(r["run"] for r in fresh):
            idx = [i for i, r in enumerate(fresh) if r["run"] == run]
            b = agreement([gold[i] for i in idx], [pred[i] for i in idx])
            print(
                f"    {run} ({len(idx)}): κ {b['kappa']:.3f}, unsafe recall {b['unsafe_recall']:.2f}, "
                f"judged / gold ASR {100 * b['judged_asr']:.1f}% / {100 * b['gold_asr']:.1f}%"
            )


if __name__ == "__main__":
    main()
