"""Does the `pair` judge improve with more labels like the ones it judges? A held-out check.

The shipped judge trains on every hand-labelled file (:func:`lasa.judges.corpus.corpus_rows`):
the 1,034-row corpus built for it, then the sets labelled to check evaluation runs (c100, the dose
run, hn10). This compares, on identical held-out groups, the shipped recipe
(``lasa.judges.pair.MEMBERS``) fitted on the first corpus alone with the same recipe fitted on
the pooled labels: leave-one-run-group-out (a later set's twin runs, which answered the same
prompts, are held out together) and leave-one-language-out. Scores are reported on all rows, on
the later sets alone (which the first-corpus judge never saw in any fold) and per later set.
Features come from the e5 cache, so a rerun costs seconds (minutes for new rows).

    python scripts/judge_more_labels.py
"""

from __future__ import annotations

import numpy as np

from lasa.judges.corpus import CORPUS, corpus_rows
from lasa.judges.pair import MEMBERS, PairEnsemble, corpus_blocks
from lasa.judges.validation import agreement, breakdown


def main() -> None:
    rows = corpus_rows()
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


if __name__ == "__main__":
    main()
