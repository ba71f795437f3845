"""MMLU (English, a vendored 57 x 20 subset): zero-shot, next-token log-probabilities of the answer letters."""

from __future__ import annotations

import logging

from lasa.data import mmlu_subset
from lasa.models import LoadedModel
from lasa.utility.engine import _check_n, choice_logprobs

logger = logging.getLogger(__name__)

MMLU_LETTERS: tuple[str, ...] = ("A", "B", "C", "D")


# -- MMLU ------------------------------------------------------------------------------------


def mmlu_rows(n: int | None = None) -> list[dict]:
    """The vendored MMLU subset, round-robin over subjects (the 1st question of every subject, then
    the 2nd, ...), so that any prefix spans as many subjects as it can; the first ``n`` rows."""
    by_subject: dict[str, list[dict]] = {}
    for row in mmlu_subset():
        by_subject.setdefault(row["subject"], []).append(row)
    subjects = sorted(by_subject)
    depth = max(len(v) for v in by_subject.values())
    ordered = [by_subject[s][k] for k in range(depth) for s in subjects if k < len(by_subject[s])]
    return ordered if n is None else ordered[:n]


def mmlu_prompt(row: dict) -> str:
    """The zero-shot prompt of Hendrycks et al.: header, question, lettered options, "Answer:"."""
    subject = row["subject"].replace("_", " ")
    options = "\n".join(f"{letter}. {row[letter]}" for letter in MMLU_LETTERS)
    return (
        f"The following are multiple choice questions (with answers) about {subject}.\n\n"
        f"{row['question'].strip()}\n{options}\nAnswer:"
    )


def eval_mmlu(lm: LoadedModel, n: int | None = 300, batch_size: int = 16, progress: bool = True) -> dict:
    """Zero-shot accuracy on the first ``n`` rows of the subset: the answer is the letter among
    " A" / " B" / " C" / " D" with the highest next-token log-probability. Raw text, no chat
    template (as lm-eval does), so the number tracks knowledge rather than format-following."""
    n = _check_n("mmlu", n, len(mmlu_subset()), "questions in the vendored subset")
    rows = mmlu_rows(n)
    scores = choice_logprobs(
        lm,
        [mmlu_prompt(r) for r in rows],
        [f" {x}" for x in MMLU_LETTERS],
        batch_size=batch_size,
        progress=progress,
        desc="mmlu",
    )
    predicted = [MMLU_LETTERS[p] for p in scores.argmax(-1).tolist()]
    right = sum(int(p == r["answer"]) for p, r in zip(predicted, rows))
    counts = {x: predicted.count(x) for x in MMLU_LETTERS}
    result = {
        "task": "mmlu",
        "n": n,
        "n_subjects": len({r["subject"] for r in rows}),
        "accuracy": right / n,
        "chance": 0.25,
        # small models often answer one letter whatever the question; at-chance accuracy with a
        # skewed histogram means the number cannot detect a utility loss on this model
        "predicted_letters": counts,
        "letter_mass": float(scores.exp().sum(-1).mean()),
    }
    logger.info("mmlu (n=%d, %d subjects): accuracy %.3f", n, result["n_subjects"], result["accuracy"])
    top, top_n = max(counts.items(), key=lambda kv: kv[1])
    if top_n > 0.7 * n:
        logger.warning(
            "mmlu: the model answers %s on %d of %d questions; accuracy near chance here measures a "
            "letter bias, not knowledge",
            top,
            top_n,
            n,
        )
    return result
