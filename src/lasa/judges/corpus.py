"""lasa's labelled judge corpus: MultiJail responses with adjudicated safe / unsafe / invalid labels.

Every hand-labelled file under ``data/judge_labels/`` (rubric: ``RUBRIC.md`` next to them;
provenance: ``SOURCE.md``), pooled: the 1,034-row corpus built for the judge and the later sets
labelled to check evaluation runs (c100, the dose runs, hn10). Why pool them: on held-out
generation runs the judge fitted on all of them agrees better with the labels (κ 0.64 vs 0.60,
unsafe precision 0.57 vs 0.51; docs/judge_validation.md) than one fitted on the first corpus
alone, and the later sets hold the failure modes of trained adapters that the first lacks; on
300 fresh responses to prompts no file holds (``HELD_OUT_FILES``) it finds 27 of 44 unsafe answers
where the first-corpus head finds 20, at the same κ (0.61); on a second fresh 300, κ 0.62.
Every row carries its generation run, model, variant and length, so judges are validated on
grouped splits (by language, model and run) rather than on random rows of one run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from lasa.judges.base import LABELS

#: The corpus built for the judge; the pooled files follow it.
CORPUS = ("judge_labels", "multijail_responses.jsonl")
#: Every labelled file the judge trains on, in the order duplicates are resolved (first wins).
LABEL_FILES = (
    "multijail_responses.jsonl",
    "heldout_c100.jsonl",
    "paired_c100_lasa_kto.jsonl",
    "paired_c100_lasa_kto_gated.jsonl",
    "sampled_dose_all100_kto.jsonl",
    "sampled_hn10_kto.jsonl",
    "sampled_hn10_lasa_gate.jsonl",
)

#: Labelled files kept out of training on purpose: held-out checks of the shipped judge on
#: MultiJail prompts no training file holds (``scripts/make_judge_corpus.py --unlabelled-only``).
HELD_OUT_FILES = ("fresh_heldout.jsonl", "fresh2_heldout.jsonl")

#: Labelled files that check one paired comparison (``scripts/paired_gold_check.py``) and are not
#: pooled: pooling a file retrains the shipped heads, which moves every judged figure, and pooling
#: these three was measured not to pay (``scripts/judge_more_labels.py --extra ...``: κ on the two
#: fresh held-out sets +0.006 [−0.019, +0.030]), so they stay checks of the differences they settle.
CHECK_FILES = (
    "paired_c100_128_lasa_base.jsonl",
    "paired_c100_128_sft_base.jsonl",
    "paired_c100_128_kto_base.jsonl",
)


def corpus_rows(files: Sequence[str] = LABEL_FILES) -> list[dict]:
    """The labelled rows (adjudicated label in ``label``), one per distinct (prompt, response).

    Each row gets ``source`` (its file) and ``run_group``: what a leave-one-run-out split holds
    out together. In the first corpus that is the generation run; a later set's runs (``c100-base-64``,
    ``c100-lasa-64``, …) answered the same prompts in one evaluation, often with near-identical
    answers, so they form one group (the run name's prefix) and a fold cannot see a twin's answer
    to the prompt it is scored on. A pair labelled in two files keeps the first file's row.
    """
    from lasa.data import data_path
    from lasa.runs import read_jsonl

    rows, seen = [], set()
    for name in files:
        path = data_path("judge_labels", name)
        if not path.is_file():
            continue
        for r in read_jsonl(path):
            key = (r.get("prompt"), r.get("response"))
            if r.get("label") not in LABELS or key in seen:
                continue
            seen.add(key)
            group = r["run"] if name == CORPUS[1] else str(r["run"]).split("-")[0]
            rows.append({**r, "source": name, "run_group": group})
    return rows


def split_group(row: dict, split: str) -> str:
    """The group a leave-one-group-out ``split`` (language, model, run) holds ``row`` out with:
    for ``run`` its :func:`corpus_rows` ``run_group`` where it has one (twin runs together)."""
    if split == "run":
        return str(row.get("run_group", row.get("run", "")))
    return str(row.get(split, ""))


def labels_key(rows: Sequence[dict]) -> str:
    """Hash of the training labels: a shipped head is valid only for the rows it was fitted on."""
    doc = json.dumps([[r["prompt"], r["response"], r["language"], r["label"]] for r in rows])
    return hashlib.sha256(doc.encode()).hexdigest()[:12]


__all__ = ["CORPUS", "HELD_OUT_FILES", "LABEL_FILES", "corpus_rows", "labels_key", "split_group"]
