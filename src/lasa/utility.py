"""Did safety training cost the model its abilities? Small, fixed, before/after utility checks.

A safety adapter or gate that makes the model refuse more is only useful if it does not also make
it worse at everything else, in every language it was made safer in. lasa therefore measures the
same three things on the base and on the trained model, on the same items:

- **XCOPA** (it sw th vi zh): multilingual commonsense, scored by log-likelihood, so it needs no
  generation and no answer parsing, and it is cheap enough to run on a CPU;
- **MMLU** (English, a vendored 57 x 20 subset): knowledge retention, zero-shot, scored by the
  next-token log-probabilities of the four answer letters (one forward pass per question);
- **MGSM** (en zh th bn sw): multilingual reasoning through *generation*, optionally SSI-gated,
  because a gate that fires on benign maths problems is exactly the utility loss to catch. Only
  rows [100:] are used: rows [:100] may have trained the SSI (``MGSM_TRAIN_ROWS``).

The numbers are for comparing two checkpoints of one model under one setup; templates and data
versions differ from lm-eval-harness and the published MMLU, so they are not leaderboard numbers.

Log-likelihood conventions (:func:`loglikelihood`): the context and the continuation are tokenised
**separately and concatenated** (the context with the tokenizer's special tokens, e.g. Llama's BOS;
the continuation without). The boundary is then exact by construction, and the competing
continuations of one item are conditioned on identical context ids, which a joint tokenisation
does not guarantee (BPE merges across the boundary differ per continuation). Whitespace at the end
of the context is moved to the start of the continuation, so " because" / " A" stay one
space-prefixed token as in running text. Batches are left-padded, so every continuation ends in the
last column and only the last ``max continuation + 1`` positions go through the LM head
(``logits_to_keep``): with a 152k vocabulary, full-sequence logits would dominate memory.
Position ids come from the attention mask, so batched and one-at-a-time scores agree.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import unicodedata
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

import torch

from lasa.data import data_path
from lasa.data.safety import MGSM_TRAIN_ROWS, mgsm_rows
from lasa.errors import LasaError
from lasa.generate import Gate, GenerationSettings, generate_all
from lasa.hidden import format_prompts, pad_batch, position_ids_from_mask
from lasa.models import LoadedModel

logger = logging.getLogger(__name__)

XCOPA_LANGS: tuple[str, ...] = ("it", "sw", "th", "vi", "zh")
MGSM_LANGS: tuple[str, ...] = ("en", "zh", "th", "bn", "sw")

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

MMLU_LETTERS: tuple[str, ...] = ("A", "B", "C", "D")

#: The instruction appended to every MGSM problem. English in every language on purpose: only the
#: problem's language varies, and the fixed closing phrase gives the answer extractor an anchor
#: (it also accepts the last number, for models that answer in the problem's language).
MGSM_INSTRUCTION = "Solve the problem step by step and end with 'The answer is <number>'."


# -- input checks ----------------------------------------------------------------------------


def task_languages(task: str, langs: Iterable[str] | str | None, supported: Sequence[str]) -> list[str]:
    """Validate language codes for one task (``None`` or "all" = every supported language)."""
    if langs is None:
        return list(supported)
    if isinstance(langs, str):
        langs = [langs]
    flat = [c.strip().lower() for item in langs for c in str(item).replace(",", " ").split()]
    if not flat or flat == ["all"]:
        return list(supported)
    out: list[str] = []
    for code in flat:
        if code not in supported:
            raise LasaError(f"{task} has no {code!r}; choose from {' '.join(supported)}")
        if code not in out:
            out.append(code)
    return out


def _check_n(task: str, n: int | None, available: int, unit: str) -> int:
    if n is None:
        return available
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise LasaError(f"{task}: the number of items must be a positive integer, got {n!r}")
    if n > available:
        raise LasaError(f"{task} has {available} {unit}; asked for {n}")
    return n


# -- log-likelihood --------------------------------------------------------------------------


def _encode_pairs(
    tokenizer: Any, contexts: Sequence[str], continuations: Sequence[str]
) -> list[tuple[list[int], list[int]]]:
    pairs = []
    for i, (ctx, cont) in enumerate(zip(contexts, continuations)):
        stripped = ctx.rstrip()
        cont = ctx[len(stripped) :] + cont  # trailing whitespace belongs to the continuation
        ctx_ids = list(tokenizer(stripped, add_special_tokens=True)["input_ids"])
        cont_ids = list(tokenizer(cont, add_special_tokens=False)["input_ids"]) if cont else []
        if not ctx_ids:
            raise LasaError(f"context {i} is empty after tokenisation; a continuation needs text to follow")
        pairs.append((ctx_ids, cont_ids))
    return pairs


@torch.inference_mode()
def loglikelihood(
    lm: LoadedModel,
    contexts: list[str],
    continuations: list[str],
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "log-likelihood",
) -> list[float]:
    """``log P(continuation | context)`` summed over the continuation's tokens, one float per pair.

    Tokenisation: separately, then concatenated (see the module docstring). An empty continuation
    scores 0.0. Contexts are never truncated: a silently shortened context would change the score.
    """
    from tqdm.auto import tqdm

    if len(contexts) != len(continuations):
        raise LasaError(f"{len(contexts)} contexts but {len(continuations)} continuations; pass one per item")
    if batch_size < 1:
        raise LasaError(f"batch size must be at least 1, got {batch_size}")
    pairs = _encode_pairs(lm.tokenizer, contexts, continuations)
    out = [0.0] * len(pairs)
    todo = [i for i, (_, cont) in enumerate(pairs) if cont]
    order = sorted(todo, key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    device = lm.device
    for idx in tqdm(batches, desc=desc, disable=not progress, unit="batch", leave=False):
        seqs = [pairs[i][0] + pairs[i][1] for i in idx]
        cont_lens = torch.tensor([len(pairs[i][1]) for i in idx])
        ids, mask = pad_batch(seqs, pad_id, "left")
        keep = int(cont_lens.max()) + 1
        logits = lm.model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=position_ids_from_mask(mask).to(device),
            use_cache=False,
            logits_to_keep=keep,
        ).logits[:, -keep:-1]  # (B, K-1, V): the predictions for the last K-1 tokens
        targets = ids[:, -(keep - 1) :].to(logits.device)
        # only the positions that predict a continuation token of their row count
        col = torch.arange(keep - 1)
        scored = (col[None, :] >= (keep - 1 - cont_lens)[:, None]).to(logits.device)
        logits = logits.float()
        token_lp = logits.gather(-1, targets[..., None])[..., 0] - torch.logsumexp(logits, -1)
        sums = torch.where(scored, token_lp, 0.0).sum(-1).cpu()  # where, not *: 0 * nan at padding is nan
        for i, value in zip(idx, sums.tolist()):
            out[i] = float(value)
    return out


@torch.inference_mode()
def _next_token_logprobs(
    lm: LoadedModel,
    prompts: Sequence[str],
    token_ids: Sequence[int],
    batch_size: int,
    progress: bool,
    desc: str,
) -> torch.Tensor:
    """``(len(prompts), len(token_ids))`` log-probabilities of single tokens right after each prompt."""
    from tqdm.auto import tqdm

    seqs = format_prompts(lm.tokenizer, list(prompts), chat_template=False)
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    out = torch.zeros((len(seqs), len(token_ids)))
    wanted = torch.as_tensor(list(token_ids))
    for idx in tqdm(batches, desc=desc, disable=not progress, unit="batch", leave=False):
        ids, mask = pad_batch([seqs[i] for i in idx], pad_id, "left")
        logits = (
            lm.model(
                input_ids=ids.to(lm.device),
                attention_mask=mask.to(lm.device),
                position_ids=position_ids_from_mask(mask).to(lm.device),
                use_cache=False,
                logits_to_keep=1,
            )
            .logits[:, -1]
            .float()
        )
        out[torch.as_tensor(idx)] = logits.log_softmax(-1)[:, wanted.to(logits.device)].cpu()
    return out


def choice_logprobs(
    lm: LoadedModel,
    prompts: Sequence[str],
    choices: Sequence[str],
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "choices",
) -> torch.Tensor:
    """``(len(prompts), len(choices))`` log P(choice | prompt), the same choices for every prompt.

    When every choice is a single token this is one forward pass per prompt reading the last
    position; otherwise (e.g. a tokenizer without a " B" token) it falls back to
    :func:`loglikelihood`, which gives the same numbers for single tokens, only slower.
    """
    encoded = [lm.tokenizer(c, add_special_tokens=False)["input_ids"] for c in choices]
    single = all(len(e) == 1 for e in encoded) and len({e[0] for e in encoded}) == len(encoded)
    if single and not any(p != p.rstrip() for p in prompts):  # loglikelihood moves trailing spaces
        return _next_token_logprobs(lm, prompts, [e[0] for e in encoded], batch_size, progress, desc)
    logger.info("choices %s are not single tokens here; scoring them as continuations", list(choices))
    flat = loglikelihood(
        lm,
        [p for p in prompts for _ in choices],
        [c for _ in prompts for c in choices],
        batch_size=batch_size,
        progress=progress,
        desc=desc,
    )
    return torch.tensor(flat).reshape(len(prompts), len(choices))


# -- XCOPA -----------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _read_xcopa(lang: str, split: str) -> tuple[dict, ...]:
    path = data_path("xcopa", lang, f"{split}.{lang}.jsonl")
    with open(path, encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f if line.strip())


def xcopa_items(lang: str, split: str = "test") -> list[dict]:
    """The vendored XCOPA file of one language, in file order (parallel across languages by ``idx``),
    with ``question`` taken from the Chinese file.

    Whether an item asks for the cause or the effect is a property of the COPA item, not of its
    translation, but upstream's th files say "effect" for every item and its it and sw files for a
    few (4 and 37 of 500 test items, always "effect" where the zh and vi files, which agree on all
    600 items, say "cause"). The wrong connector would make those items nonsense, so the zh value
    is used everywhere; the upstream value is kept as ``question_upstream``.
    """
    items = _read_xcopa(lang, split)
    reference = _read_xcopa(_XCOPA_REFERENCE, split)
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


# -- MMLU ------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _mmlu_subset() -> tuple[dict, ...]:
    with open(data_path("mmlu_en", "mmlu_subset.csv"), encoding="utf-8", newline="") as f:
        return tuple(csv.DictReader(f))


def mmlu_rows(n: int | None = None) -> list[dict]:
    """The vendored MMLU subset, round-robin over subjects (the 1st question of every subject, then
    the 2nd, ...), so that any prefix spans as many subjects as it can; the first ``n`` rows."""
    by_subject: dict[str, list[dict]] = {}
    for row in _mmlu_subset():
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
    n = _check_n("mmlu", n, len(_mmlu_subset()), "questions in the vendored subset")
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


# -- MGSM ------------------------------------------------------------------------------------

# one number: "1,234.5" (thousands groups of three), "1234", "-3", "0.25"; a minus sign only when it
# does not follow a word character ("3-5" is a range, not 3 and -5)
_NUMBER = re.compile(r"(?:(?<!\w)-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
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
    text = normalize_digits(text)
    for boxed in reversed(_BOXED.findall(text)):
        found = _numbers(boxed)
        if found:
            return parse_number(found[-1])
    anchors = list(_ANSWER_IS.finditer(text))
    if anchors:
        found = _numbers(text[anchors[-1].end() :])
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


__all__ = [
    "MGSM_INSTRUCTION",
    "MGSM_LANGS",
    "XCOPA_CONNECTORS",
    "XCOPA_LANGS",
    "answers_match",
    "choice_logprobs",
    "eval_mgsm",
    "eval_mmlu",
    "eval_xcopa",
    "extract_answer",
    "loglikelihood",
    "mgsm_items",
    "mmlu_prompt",
    "mmlu_rows",
    "normalize_digits",
    "parse_number",
    "xcopa_pair",
]
