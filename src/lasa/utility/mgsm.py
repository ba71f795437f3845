"""MGSM (en zh th bn sw): multilingual reasoning through generation, optionally SSI-gated."""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterable

from lasa.data.safety import MGSM_TRAIN_ROWS, mgsm_rows
from lasa.errors import LasaError
from lasa.generate import Gate, GenerationSettings, generate_all
from lasa.models import LoadedModel
from lasa.utility.engine import _check_n, task_languages

logger = logging.getLogger(__name__)

MGSM_LANGS: tuple[str, ...] = ("en", "zh", "th", "bn", "sw")

#: The instruction appended to every MGSM problem. English in every language on purpose: only the
#: problem's language varies, and the fixed closing phrase gives the answer extractor an anchor
#: (it also accepts the last number, for models that answer in the problem's language).
MGSM_INSTRUCTION = "Solve the problem step by step and end with 'The answer is <number>'."


# -- MGSM ------------------------------------------------------------------------------------

# one number: "1,234.5" (thousands groups of three), "2,76,000" (Indian lakh groups, as Bengali
# answers write them), "1234", "-3", "0.25"; a group ends where its digits do ("1,2345" is not
# 1,234); a minus sign only when it does not follow a word character ("3-5" is a range)
_NUMBER = re.compile(
    r"(?:(?<!\w)-)?(?:\d{1,2}(?:,\d{2})+,\d{3}(?!\d)|\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?"
)
# the end of the sentence after an "answer" anchor (a full stop that is not a decimal point)
_SENTENCE_END = re.compile(r"(?<!\d)[.。।!?\n]|[.。।!?](?!\d)")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
# "The answer is 42", "Answer: 42", and the same phrase in the MGSM languages
_ANSWER_IS = re.compile(
    r"answer\s*(?:is\b|[:：])|答案\s*(?:是|为|[:：])|คำตอบ\s*(?:คือ|[:：])"
    r"|উত্তর\s*(?:হল|হলো|[:：])|jibu\s*(?:ni\b|[:：])",
    re.IGNORECASE,
)


def normalize_digits(text: str) -> str:
    """Map every decimal digit of any script (Bengali ১২, Thai ๑๒, full-width １２) to ASCII.

    ``unicodedata.decimal`` rather than ``digit``: the latter also maps superscripts and circled
    numbers ("x²", "①"), which are not place-value digits.
    """
    return "".join(
        c if c.isascii() else str(d) if (d := unicodedata.decimal(c, None)) is not None else c for c in text
    )


def parse_number(token: str) -> int | float:
    """A number matched by the extractor (thousands separators allowed) as an int when integral."""
    value = float(token.replace(",", ""))
    return int(value) if value.is_integer() else value


def _numbers(text: str) -> list[str]:
    return _NUMBER.findall(text)


def extract_answer(text: str) -> int | float | None:
    """The final numeric answer of a response, or None when it contains no number.

    In order of preference: the last ``\\boxed{...}``; the first number after the last "answer is" /
    "Answer:" (or its zh/th/bn/sw equivalent); the last number in the text.
    """
    text = normalize_digits(text).replace("\u2212", "-")  # the Unicode minus sign
    for boxed in reversed(_BOXED.findall(text)):
        found = _numbers(boxed)
        if found:
            return parse_number(found[-1])
    anchors = list(_ANSWER_IS.finditer(text))
    if anchors:
        after = text[anchors[-1].end() :]
        end = _SENTENCE_END.search(after)
        sentence = after[: end.start()] if end else after
        # "the answer: 16 - 3 - 4 = 9 eggs, and 9 * 2 = 18": a worked equation ends in its result
        found = _numbers(sentence.rsplit("=", 1)[1]) if "=" in sentence else []
        found = found or _numbers(after)
        if found:
            return parse_number(found[0])
    found = _numbers(text)
    return parse_number(found[-1]) if found else None


def answers_match(prediction: int | float | None, gold: int | float) -> bool:
    return prediction is not None and abs(float(prediction) - float(gold)) < 1e-9


def mgsm_prompt(question: str) -> str:
    return f"{question.strip()}\n\n{MGSM_INSTRUCTION}"


def mgsm_items(lang: str, n: int | None) -> list[dict]:
    """The evaluation rows ``[MGSM_TRAIN_ROWS:]`` of one language (rows before it may have trained the
    SSI), first ``n``: ``{"id", "question", "gold"}``; ids are file rows, as in lasa.data.safety."""
    rows = mgsm_rows(lang)[MGSM_TRAIN_ROWS:]
    n = _check_n("mgsm", n, len(rows), "evaluation problems per language (rows 100 onwards)")
    out = []
    for i, (question, answer) in enumerate(rows[:n], start=MGSM_TRAIN_ROWS):
        gold = _numbers(normalize_digits(answer))
        if len(gold) != 1:
            raise LasaError(f"mgsm_{lang}.tsv row {i + 1}: answer {answer!r} is not a number; file corrupt")
        out.append({"id": f"mgsm:{i}", "question": question, "gold": parse_number(gold[0])})
    return out


def eval_mgsm(
    lm: LoadedModel,
    langs: Iterable[str] | str | None = None,
    n_per_lang: int | None = 50,
    settings: GenerationSettings | None = None,
    gate: Gate | None = None,
    progress: bool = True,
) -> tuple[dict, list[dict]]:
    """Exact-match accuracy of the final number, per language; returns ``(summary, per-sample records)``.

    All languages are generated in one call (batched by length across languages), through the chat
    template, optionally with the SSI gate. Step-by-step answers need room: the default is 400 new
    tokens (Qwen2.5-Coder-0.5B ran past 200 on most problems); the share of responses cut off by
    the limit is reported as ``truncated``, and a cut-off response is scored on its last number.
    """
    langs = task_languages("mgsm", langs, MGSM_LANGS)
    settings = settings or GenerationSettings(max_new_tokens=400)
    items = [(lang, item) for lang in langs for item in mgsm_items(lang, n_per_lang)]
    prompts = [mgsm_prompt(item["question"]) for _, item in items]
    generated = generate_all(lm, prompts, settings, gate, progress=progress)
    records = []
    for (lang, item), prompt, gen in zip(items, prompts, generated):
        prediction = extract_answer(gen["response"])
        records.append(
            {
                "id": item["id"],
                "lang": lang,
                "prompt": prompt,
                "response": gen["response"],
                "prediction": prediction,
                "gold": item["gold"],
                "correct": answers_match(prediction, item["gold"]),
                "finish": gen.get("finish"),
                "ssi_score": gen.get("ssi_score"),
                "gated": bool(gen.get("gated")),
            }
        )
    accuracy: dict[str, float] = {}
    truncated: dict[str, float] = {}
    gated: dict[str, float] = {}
    for lang in langs:
        mine = [r for r in records if r["lang"] == lang]
        accuracy[lang] = sum(r["correct"] for r in mine) / len(mine)
        truncated[lang] = sum(r["finish"] == "length" for r in mine) / len(mine)
        gated[lang] = sum(r["gated"] for r in mine) / len(mine)
    summary = {
        "task": "mgsm",
        "rows": f"{MGSM_TRAIN_ROWS}:",
        "n_per_lang": len(records) // len(langs),
        "accuracy": accuracy,
        "mean": sum(accuracy.values()) / len(accuracy),
        "truncated": truncated,
        "gated": gated,
        "instruction": MGSM_INSTRUCTION,
        "generation": settings.to_dict(),
    }
    logger.info(
        "mgsm (n=%d per language): %s, mean %.3f",
        summary["n_per_lang"],
        " ".join(f"{k}={v:.3f}" for k, v in accuracy.items()),
        summary["mean"],
    )
    if any(v > 0.2 for v in truncated.values()):
        logger.warning(
            "mgsm: over 20%% of responses hit max_new_tokens=%d in some language (%s); raise it",
            settings.max_new_tokens,
            " ".join(f"{k}={v:.0%}" for k, v in truncated.items()),
        )
    return summary, records
