"""XCOPA (it sw th vi zh): multilingual commonsense by log-likelihood, no generation."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from lasa.data import XCOPA_LANGS, xcopa_rows
from lasa.errors import LasaError
from lasa.models import LoadedModel
from lasa.utility.engine import _check_n, loglikelihood, task_languages

logger = logging.getLogger(__name__)

#: The words for "because" (the premise's cause is asked for) and "so" (its effect), as in
#: lm-eval-harness's XCOPA task.
XCOPA_CONNECTORS: dict[str, dict[str, str]] = {
    "it": {"cause": "perché", "effect": "quindi"},
    "sw": {"cause": "kwa sababu", "effect": "kwa hiyo"},
    "th": {"cause": "เพราะ", "effect": "ดังนั้น"},
    "vi": {"cause": "bởi vì", "effect": "vì vậy"},
    "zh": {"cause": "因为", "effect": "所以"},
}
#: How a clause is joined in running text: (premise → connector, connector → choice). Chinese takes
#: a full-width comma and no spaces; Thai separates clauses with a space but attaches the word after
#: the conjunction; the Latin-script languages use spaces.
_XCOPA_JOIN: dict[str, tuple[str, str]] = {"zh": ("，", ""), "th": (" ", "")}
_FINAL_PUNCT = ".。!！?？…;；:：,，"
_XCOPA_REFERENCE = "zh"  # whose ``question`` field (cause / effect) is trusted; see xcopa_items


# -- XCOPA -----------------------------------------------------------------------------------


def xcopa_items(lang: str, split: str = "test") -> list[dict]:
    """The vendored XCOPA file of one language, in file order (parallel across languages by ``idx``),
    with ``question`` taken from the Chinese file.

    Whether an item asks for the cause or the effect is a property of the COPA item, not of its
    translation, but upstream's th files say "effect" for every item and its it and sw files for a
    few (4 and 37 of 500 test items, always "effect" where the zh and vi files, which agree on all
    600 items, say "cause"). The wrong connector would make those items nonsense, so the zh value
    is used everywhere; the upstream value is kept as ``question_upstream``.
    """
    items = xcopa_rows(lang, split)
    reference = xcopa_rows(_XCOPA_REFERENCE, split)
    if [it["idx"] for it in items] != [it["idx"] for it in reference]:
        raise LasaError(f"xcopa {lang} {split} is not parallel to {_XCOPA_REFERENCE}; vendored files corrupt")
    return [
        {**it, "question": ref["question"], "question_upstream": it["question"]}
        for it, ref in zip(items, reference)
    ]


def xcopa_pair(item: dict, lang: str) -> tuple[str, tuple[str, str]]:
    """``(context, (continuation 1, continuation 2))`` for one XCOPA item.

    The premise loses its final punctuation, the connector for ``cause`` / ``effect`` follows,
    and each choice (first letter lowercased; a no-op for scripts without case) continues it.
    """
    connector = XCOPA_CONNECTORS[lang][item["question"]]
    before, after = _XCOPA_JOIN.get(lang, (" ", " "))
    premise = item["premise"].strip().rstrip(_FINAL_PUNCT).rstrip()
    context = f"{premise}{before}{connector}"

    def cont(choice: str) -> str:
        choice = choice.strip()
        return after + choice[:1].lower() + choice[1:]

    return context, (cont(item["choice1"]), cont(item["choice2"]))


def eval_xcopa(
    lm: LoadedModel,
    langs: Iterable[str] | str | None = None,
    n_per_lang: int | None = 100,
    batch_size: int = 16,
    progress: bool = True,
) -> dict:
    """Accuracy per language on the first ``n_per_lang`` XCOPA test items (the same items everywhere).

    The more likely continuation (summed log-probability, not length-normalised) is the answer;
    chance is 0.5.
    """
    langs = task_languages("xcopa", langs, XCOPA_LANGS)
    n = _check_n("xcopa", n_per_lang, len(xcopa_items(langs[0])), "test items per language")
    contexts: list[str] = []
    continuations: list[str] = []
    labels: dict[str, list[int]] = {}
    for lang in langs:
        items = xcopa_items(lang)[:n]  # parallel by construction (checked against the zh file)
        labels[lang] = [int(it["label"]) for it in items]
        for it in items:
            ctx, (c1, c2) = xcopa_pair(it, lang)
            contexts += [ctx, ctx]
            continuations += [c1, c2]
    scores = loglikelihood(
        lm, contexts, continuations, batch_size=batch_size, progress=progress, desc="xcopa"
    )
    accuracy: dict[str, float] = {}
    pos = 0
    for lang in langs:
        right = 0
        for label in labels[lang]:
            s1, s2 = scores[pos], scores[pos + 1]
            right += int((0 if s1 >= s2 else 1) == label)
            pos += 2
        accuracy[lang] = right / n
    result = {
        "task": "xcopa",
        "split": "test",
        "n_per_lang": n,
        "accuracy": accuracy,
        "mean": sum(accuracy.values()) / len(accuracy),
        "chance": 0.5,
    }
    logger.info(
        "xcopa (n=%d per language): %s, mean %.3f",
        n,
        " ".join(f"{k}={v:.3f}" for k, v in accuracy.items()),
        result["mean"],
    )
    return result
