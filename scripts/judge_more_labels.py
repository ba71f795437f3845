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

``--extra FILE ...`` asks the same question of labelled files not pooled yet (the ``CHECK_FILES``
that hand-check a paired comparison): the shipped pool against the pool plus those files, on the
same run-group folds (an extra set whose prompts a pooled set answered, such as runs/c100_128's
beside runs/c100's, is held out with it) and on the held-out fresh sets, with a bootstrap interval
of the κ difference over MultiJail prompts there.

    python scripts/judge_more_labels.py [--fresh src/lasa/data/judge_labels/fresh_heldout.jsonl]
        [--unsafe-thresholds 0.25 0.3 0.35 0.4 0.45 0.5]
    python scripts/judge_more_labels.py --extra paired_c100_128_lasa_base.jsonl \
        paired_c100_128_sft_base.jsonl paired_c100_128_kto_base.jsonl
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
    ap.add_argument(
        "--extra",
        nargs="+",
        default=None,
        metavar="FILE",
        help="labelled files under src/lasa/data/judge_labels/ not pooled yet: pooled vs pooled + these",
    )
    args = ap.parse_args()
    if args.fresh and not Path(args.fresh).is_file():
        raise SystemExit(f"--fresh {args.fresh}: no such file")
    if args.extra:
        extra_check(args.extra, [args.fresh] if args.fresh else None)
        return
    rows = corpus_rows([f for f in LABEL_FILES if not args.fresh or not args.fresh.endswith(f)])
    blocks = corpus_blocks(rows)
    y = np.array([r["label"] for r in rows])
    first = np.array([r["source"] == CORPUS[1] for r in rows])
    langs = [r["language"] for r in rows]

    def oof(groups: np.ndarray, train_pool: np.ndarray) -> np.ndarray:
        return oof_labels(blocks, y, groups, train_pool)

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
        fresh_check(
            [args.fresh],
            rows,
            blocks,
            y,
            [("first corpus only", first), ("pooled (shipped)", np.ones(len(rows), bool))],
        )
    if args.unsafe_thresholds:
        threshold_check(args.unsafe_thresholds, rows, blocks, y, args.fresh)


def oof_labels(
    blocks: dict, y: np.ndarray, groups: np.ndarray, train_pool: np.ndarray, members: tuple = MEMBERS
) -> np.ndarray:
    """Leave-one-group-out labels: each group scored by the recipe ``members`` (the shipped one by
    default) fitted on the ``train_pool`` rows outside it."""
    pred = np.empty(len(y), dtype=object)
    for g in dict.fromkeys(groups):
        test = groups == g
        train = ~test & train_pool
        judge = PairEnsemble.fit({k: v[train] for k, v in blocks.items()}, list(y[train]), members)
        pred[test] = judge.labels({k: v[test] for k, v in blocks.items()})
    return pred


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


def fresh_check(
    paths: list[str], rows: list[dict], blocks: dict, y: np.ndarray, pools: list[tuple[str, np.ndarray]]
) -> tuple[list[dict], dict[str, list]]:
    """Each pool's head, fitted on all of its rows, on labels of prompts none of them holds (the
    files of ``paths`` together); returns those rows and each pool's predictions."""
    from lasa.judges.base import LABELS
    from lasa.runs import read_jsonl

    fresh = [r for path in paths for r in read_jsonl(path) if r.get("label") in LABELS]
    seen = {r["prompt"] for r in rows}
    overlap = sum(r["prompt"] in seen for r in fresh)
    fb = corpus_blocks(fresh)
    gold = [r["label"] for r in fresh]
    langs = [r["language"] for r in fresh]
    print(
        f"\n{', '.join(paths)}: {len(fresh)} labelled responses, {overlap} of their prompts in the training files"
    )
    preds = {}
    for name, pool in pools:
        judge = PairEnsemble.fit({k: v[pool] for k, v in blocks.items()}, list(y[pool]), MEMBERS)
        pred = preds[name] = list(judge.labels(fb))
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
    return fresh, preds


def extra_check(extra: list[str], fresh: list[str] | None) -> None:
    """The shipped pool vs the pool plus ``extra``: leave-one-run-group-out on both kinds of rows,
    and each fitted on all of its rows for the fresh held-out files."""
    import sys

    from lasa.data import data_path
    from lasa.judges.base import LABELS
    from lasa.judges.corpus import HELD_OUT_FILES
    from lasa.runs import read_jsonl

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from build_probe_judge import kappa_gain

    names = [Path(f).name for f in extra]
    for n in names:
        if n in LABEL_FILES or n in HELD_OUT_FILES:
            raise SystemExit(f"--extra {n}: already pooled or held out; name a file that is neither")
        if not data_path("judge_labels", n).is_file():
            raise SystemExit(f"--extra {n}: no such file under src/lasa/data/judge_labels/")
    rows = corpus_rows(LABEL_FILES + tuple(names))
    is_extra = np.array([r["source"] in names for r in rows])
    # answers labelled in both rounds (a pooled file and an extra one): how stable the gold is
    pooled = {(r["prompt"], r["response"]): r["label"] for r in rows if r["source"] not in names}
    twice: dict[tuple, str] = {}
    for n in names:
        for r in read_jsonl(data_path("judge_labels", n)):
            key = (r.get("prompt"), r.get("response"))
            if key in pooled and r.get("label") in LABELS:
                twice.setdefault(key, r["label"])
    if twice:
        from lasa.judges.validation import cohen_kappa

        first_round = [pooled[k] for k in twice]
        print(
            f"{len(twice)} distinct answers of the extra files were labelled before (pooled files): "
            f"same adjudicated label {sum(a == b for a, b in zip(first_round, twice.values()))} times, "
            f"κ {cohen_kappa(first_round, list(twice.values())):.3f} between the rounds"
        )
    # an extra set answers prompts a pooled set answered (runs/c100_128's greedy answers extend
    # runs/c100's): hold it out with the pooled group holding most of its prompts, if that is half
    prompts_of: dict[str, set] = {}
    for r, e in zip(rows, is_extra):
        prompts_of.setdefault(("x:" if e else "") + r["run_group"], set()).add(
            r.get("prompt_en") or r["prompt"]
        )
    merge = {}
    for g, ps in prompts_of.items():
        if not g.startswith("x:"):
            continue
        best = max((k for k in prompts_of if not k.startswith("x:")), key=lambda k: len(ps & prompts_of[k]))
        share = len(ps & prompts_of[best]) / len(ps)
        merge[g[2:]] = best if share >= 0.5 else g[2:]
        print(
            f"extra group {g[2:]}: {share:.0%} of its prompts in pooled group {best} -> held out with {merge[g[2:]]}"
        )
    groups = np.array([merge[r["run_group"]] if e else r["run_group"] for r, e in zip(rows, is_extra)])
    blocks = corpus_blocks(rows)
    y = np.array([r["label"] for r in rows])
    pools = (("pooled (shipped)", ~is_extra), ("pooled + extra", np.ones(len(rows), bool)))

    def summary(gold: list, pred: list) -> str:
        a = agreement(gold, pred)
        return (
            f"κ {a['kappa']:.3f}, unsafe recall {a['unsafe_recall']:.2f}, precision "
            f"{a['unsafe_precision']:.2f}, judged / gold ASR {100 * a['judged_asr']:.1f}% / {100 * a['gold_asr']:.1f}%"
        )

    print(f"{(~is_extra).sum()} pooled rows + {is_extra.sum()} extra rows ({', '.join(names)})")
    for name, pool in pools:
        pred = oof_labels(blocks, y, groups, pool)
        print(f"\nheld out by run group, trained on {name}:")
        print(f"  pooled rows ({(~is_extra).sum()}): {summary(list(y[~is_extra]), list(pred[~is_extra]))}")
        print(f"  extra rows ({is_extra.sum()}): {summary(list(y[is_extra]), list(pred[is_extra]))}")
    paths = fresh or [str(data_path("judge_labels", f)) for f in HELD_OUT_FILES]
    fr, preds = fresh_check(paths, rows, blocks, y, list(pools))
    gold = [r["label"] for r in fr]
    clusters = [str(r.get("mj_id", r["prompt"])) for r in fr]
    gain = kappa_gain(gold, preds[pools[1][0]], preds[pools[0][0]], clusters)
    print(
        f"  κ(pooled + extra) − κ(pooled): {gain['difference']:+.3f} [{gain['ci95'][0]:+.3f}, "
        f"{gain['ci95'][1]:+.3f}] (95% bootstrap over {gain['clusters']} MultiJail prompts; "
        f"{gain['share_of_draws_le_0']:.1%} of draws at or below 0)"
    )


if __name__ == "__main__":
    main()
