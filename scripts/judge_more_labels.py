"""Does the `pair` judge improve with more labels like the ones it judges? A held-out check.

Fits the shipped head's recipe (``lasa.judges.pair.MEMBERS``) on the training corpus alone and on
the corpus plus the paired hand-label sets of runs/c100 (rows that also sit in the held-out file
removed), and scores both on ``heldout_c100.jsonl`` (never trained on); then the reverse (the
paired set as the test). Last, every labelled set so far against ``sampled_hn10_kto.jsonl``, a
later adapter's answers (all its judged-unsafe answers plus a random 200 of the rest, so its
kappa is that of a set enriched in what the judge calls unsafe). Features come from the e5
cache, so a rerun costs seconds (a minute for new rows).

    python scripts/judge_more_labels.py
"""

from __future__ import annotations

import numpy as np

from lasa.data import data_path
from lasa.judges.base import LABELS
from lasa.judges.corpus import corpus_rows
from lasa.judges.pair import MEMBERS, PairEnsemble, corpus_blocks
from lasa.judges.validation import agreement, breakdown
from lasa.runs import read_jsonl

PAIRED = ("paired_c100_lasa_kto.jsonl", "paired_c100_lasa_kto_gated.jsonl")
LATER = "sampled_hn10_kto.jsonl"


def labelled(name: str) -> list[dict]:
    return [r for r in read_jsonl(data_path("judge_labels", name)) if r.get("label") in LABELS]


def main() -> None:
    base, held = corpus_rows(), labelled("heldout_c100.jsonl")
    seen = {(r["prompt"], r["response"]) for r in held}
    paired = [r for f in PAIRED for r in labelled(f) if (r["prompt"], r["response"]) not in seen]
    later = labelled(LATER)
    rows = base + paired + held + later
    blocks = corpus_blocks(rows)
    y = [r["label"] for r in rows]
    i_base = np.arange(len(base))
    i_pair = np.arange(len(base), len(base) + len(paired))
    i_held = np.arange(len(base) + len(paired), len(base) + len(paired) + len(held))
    i_later = np.arange(len(rows) - len(later), len(rows))

    def sub(idx: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v[idx] for k, v in blocks.items()}

    def check(train: np.ndarray, test: np.ndarray, name: str) -> None:
        judge = PairEnsemble.fit(sub(train), [y[i] for i in train], MEMBERS)
        pred, gold = judge.labels(sub(test)), [y[i] for i in test]
        a = agreement(gold, pred)
        per = breakdown(gold, pred, [rows[i]["language"] for i in test])
        print(
            f"{name:34s} train {len(train):5d} test {len(test):4d}  kappa {a['kappa']:.3f}  "
            f"unsafe recall {a['unsafe_recall']:.3f}  judged ASR {np.mean([p == 'unsafe' for p in pred]):.3f} "
            f"gold {np.mean([g == 'unsafe' for g in gold]):.3f}  worst language kappa "
            f"{min(v['kappa'] for v in per.values()):.2f}"
        )

    check(i_base, i_held, "corpus -> heldout_c100")
    check(np.r_[i_base, i_pair], i_held, "corpus + paired -> heldout_c100")
    check(i_base, i_pair, "corpus -> paired")
    check(np.r_[i_base, i_held], i_pair, "corpus + heldout_c100 -> paired")
    check(i_base, i_later, "corpus -> hn10")
    check(np.r_[i_base, i_pair, i_held], i_later, "corpus + paired + heldout -> hn10")


if __name__ == "__main__":
    main()
