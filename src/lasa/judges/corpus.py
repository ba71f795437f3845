"""lasa's labelled judge corpus: MultiJail responses with adjudicated safe / unsafe / invalid labels.

``data/judge_labels/multijail_responses.jsonl`` (rubric: ``RUBRIC.md`` next to it; provenance:
``SOURCE.md``). Every row carries its generation run, model, variant and length, so judges are
validated on grouped splits (by language, model and run) rather than on random rows of one run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from lasa.judges.base import LABELS

CORPUS = ("judge_labels", "multijail_responses.jsonl")


def corpus_rows() -> list[dict]:
    """The labelled rows (adjudicated label in ``label``), in file order."""
    from lasa.data import data_path
    from lasa.runs import read_jsonl

    path = data_path(*CORPUS)
    return [r for r in read_jsonl(path) if r.get("label") in LABELS] if path.is_file() else []


def labels_key(rows: Sequence[dict]) -> str:
    """Hash of the training labels: a shipped head is valid only for the rows it was fitted on."""
    doc = json.dumps([[r["prompt"], r["response"], r["language"], r["label"]] for r in rows])
    return hashlib.sha256(doc.encode()).hexdigest()[:12]


__all__ = ["CORPUS", "corpus_rows", "labels_key"]
