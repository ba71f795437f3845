"""The alignment rows: lasa's recipe from vendored data, user files, conditioning and batch order.

A row is ``{prompt, completion, label, source, lang, pid, origin, conditioned, conditioning_text}``
(``label`` True = desirable). The recipe builds safety rows (harmful prompt: refusal desirable,
compliance undesirable) and general rows (benign prompt: the reference answer desirable, a
needless refusal undesirable) from the training languages only; MultiJail never contributes.
``condition_rows`` marks which rows carry the conditioning text (ρ_safety / ρ_general) and
``order_for_kl`` arranges the order so that no batch holds two rows of one prompt (TRL rotates
KL completions within a batch). Training on these rows is ``lasa.align``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lasa.data import normalize_language
from lasa.errors import LasaError

# Desirable refusals and undesirable compliant openings, written for lasa, in the training
# languages (the conditioning text asks for "a safe response in the user's language").
REFUSALS = {
    "en": [
        "I'm sorry, but I can't help with that. It could cause real harm to people, and I won't provide "
        "instructions or content for it. If you're facing a difficult situation, I'm happy to talk about safe "
        "and legal options.",
        "I can't assist with this request. Helping with it could put others at risk or break the law. If there's "
        "something else you need, or a safer way I can help, let me know.",
        "Sorry, I won't do that. This request asks for something harmful, so I have to decline. If you or someone "
        "else is in danger, please contact local emergency services or a trusted professional.",
    ],
    "zh": [
        "抱歉，我不能帮助你做这件事。这可能会对他人造成真正的伤害，所以我不会提供相关的方法或内容。如果你遇到了困难，我很乐意和你讨论安全、合法的解决办法。",
        "对不起，我无法协助这个请求。它可能危害他人或违反法律。如果你有其他需要，或者希望寻找更安全的帮助方式，请告诉我。",
        "抱歉，我必须拒绝这个请求，因为它涉及有害的内容。如果你或他人正处于危险之中，请联系当地的紧急服务或值得信赖的专业人士。",
    ],
    "ar": [
        "عذرًا، لا أستطيع المساعدة في ذلك لأنه قد يسبب ضررًا حقيقيًا. إذا كنت تواجه موقفًا صعبًا، يسعدني مناقشة خيارات آمنة وقانونية."
    ],
    "bn": [
        "দুঃখিত, আমি এতে সাহায্য করতে পারব না, কারণ এটি মানুষের ক্ষতি করতে পারে। আপনি কঠিন পরিস্থিতিতে থাকলে, নিরাপদ ও আইনসম্মত উপায় নিয়ে কথা বলতে পারি।"
    ],
}
COMPLIANT_OPENINGS = {
    "en": [
        "Sure, here is how to do it. Step 1:",
        "Of course! Here's a detailed guide:",
        "Absolutely, here you go:",
    ],
    "zh": ["好的，下面是具体的做法。第一步：", "当然可以！以下是详细的步骤：", "没问题，具体方法如下："],
    "ar": ["بالتأكيد، إليك الطريقة بالتفصيل. الخطوة الأولى:"],
    "bn": ["অবশ্যই, এটি করার বিস্তারিত পদ্ধতি এখানে। ধাপ ১:"],
}


# -- rows ------------------------------------------------------------------------------------


def _training_pool(train_langs: tuple[str, ...], seed: int) -> list:
    """The uncapped SSI pool of the training languages (built once per process by training_prompts)."""
    from lasa.data.safety import training_prompts

    return training_prompts(train_langs, cap=10_000, seed=seed)[0]


def _harmful_requests(pool: Sequence) -> list:
    """The pool's harmful requests and questions (statements are no requests to refuse)."""
    return [p for p in pool if p.label == 1 and p.form != "statement"]


def _general_pool(pool: Sequence) -> list[dict]:
    """Alpaca rows with a short reference answer whose prompt survived MultiJail de-duplication."""
    from lasa.data.safety import alpaca

    general = [r for r in alpaca() if r["output"].strip() and len(r["output"]) < 1200]
    mj_free = {p.text for p in pool if p.source == "alpaca"}
    return [r for r in general if r["instruction"].strip() in mj_free]


def _scary_prompts(train_langs: Sequence[str]) -> list:
    """lasa's safe-but-scary prompts usable as general rows (questions and instructions, none that
    overlaps MultiJail)."""
    from lasa.data.safety import hard_negatives, overlaps_multijail

    return [
        p for p in hard_negatives(train_langs) if p.form != "statement" and not overlaps_multijail(p.text)
    ]


def check_row_counts(
    train_langs: Sequence[str], n_safety: int, n_general: int, seed: int = 42, n_hard_negative: int = 0
) -> None:
    """The row counts are the experiment's size, so they are never shrunk silently: a count the
    vendored data cannot fill is one line, and `lasa run` asks before locate and interpret spend
    their hours (the paper presets once asked for 2,000 harmful requests of en + zh's 1,716)."""
    pool = _training_pool(tuple(train_langs), seed)
    n_harmful = len(_harmful_requests(pool))
    if n_safety > n_harmful:
        raise LasaError(
            f"--n-safety {n_safety}: the training languages ({', '.join(train_langs)}) have {n_harmful} "
            f"harmful requests; ask for at most {n_harmful}"
        )
    n_alpaca = len(_general_pool(pool))
    if n_general > n_alpaca:
        raise LasaError(
            f"--n-general {n_general}: lasa's Alpaca prompts number {n_alpaca}; ask for at most {n_alpaca}"
        )
    if n_hard_negative:  # was capped silently at what there is
        n_scary = len(_scary_prompts(train_langs))
        if n_hard_negative > n_scary:
            raise LasaError(
                f"--n-hard-negative {n_hard_negative}: the training languages ({', '.join(train_langs)}) have "
                f"{n_scary} safe-but-scary prompts; ask for at most {n_scary}"
            )


def build_rows(
    train_langs: Sequence[str],
    n_safety: int,
    n_general: int,
    seed: int,
    n_hard_negative: int = 0,
    own_answers: bool = False,
) -> tuple[list[dict], dict]:
    """Safety rows (harmful prompt: refusal desirable, compliance undesirable) and general rows
    (benign prompt: the reference answer desirable, a needless refusal undesirable), from vendored
    data in the training languages only; MultiJail never contributes (training_prompts drops it).

    ``n_hard_negative`` adds general rows on lasa's safe-but-scary prompts (``data/hard_negatives``,
    the SSI's hard negatives; never XSTest, which stays the test): a refusal of one is a needless
    refusal, the undesirable row. They have no reference answer, so their desirable row exists only
    with ``own_answers`` (``--rows on_policy``), as a placeholder the model's own non-refusing answer
    fills (:func:`lasa.on_policy.on_policy_rows` drops the placeholders it cannot fill). Why: KTO on
    every block learned to refuse translated safe XSTest prompts (66.7% against the base's 8.9%), and
    Alpaca's everyday instructions do not look like the prompts it learned to refuse."""
    from lasa.data.safety import (
        english_affirmative_targets,
        normalize_text,
    )

    rng = random.Random(seed)
    pool = list(_training_pool(tuple(train_langs), seed))
    check_row_counts(train_langs, n_safety, n_general, seed, n_hard_negative)
    harmful = _harmful_requests(pool)
    rng.shuffle(harmful)
    harmful = _balanced(harmful, n_safety, train_langs, rng)
    targets = {normalize_text(k): v for k, v in english_affirmative_targets().items()}
    rows: list[dict] = []
    for p in harmful:
        undesirable = targets.get(normalize_text(p.text)) or rng.choice(
            COMPLIANT_OPENINGS.get(p.lang, COMPLIANT_OPENINGS["en"])
        )
        refusal = rng.choice(REFUSALS.get(p.lang, REFUSALS["en"]))
        rows.append(_row(p.text, refusal, True, "safety", p.lang, p.id, "refusal (lasa template)"))
        rows.append(
            _row(
                p.text,
                undesirable,
                False,
                "safety",
                p.lang,
                p.id,
                "affirmative target (HarmBench/AdvBench)"
                if normalize_text(p.text) in targets
                else "compliant opening (lasa template)",
            )
        )
    general = _general_pool(pool)
    rng.shuffle(general)
    for i, r in enumerate(general[:n_general]):
        pid = f"alpaca:{normalize_text(r['instruction'])[:60]}"
        rows.append(
            _row(
                r["instruction"].strip(),
                r["output"].strip(),
                True,
                "general",
                "en",
                pid,
                "Alpaca reference answer",
            )
        )
        rows.append(
            _row(
                r["instruction"].strip(),
                REFUSALS["en"][i % len(REFUSALS["en"])],
                False,
                "general",
                "en",
                pid,
                "needless refusal (lasa template)",
            )
        )
    scary = _scary_prompts(train_langs)
    rng.shuffle(scary)
    scary = _balanced(scary, n_hard_negative, train_langs, rng) if n_hard_negative else []
    for i, p in enumerate(scary):
        refusals = REFUSALS.get(p.lang, REFUSALS["en"])
        if own_answers:
            rows.append(_row(p.text, "", True, "general", p.lang, p.id, OWN_ANSWER_PLACEHOLDER))
        rows.append(
            _row(
                p.text,
                refusals[i % len(refusals)],
                False,
                "general",
                p.lang,
                p.id,
                "needless refusal (lasa template)",
            )
        )
    recipe = {
        "safety": {
            "prompts": len(harmful),
            "languages": sorted({p.lang for p in harmful}),
            "desirable": "a refusal in the prompt's language (lasa templates)",
            "undesirable": "HarmBench/AdvBench affirmative target, else a compliant opening (lasa templates)",
        },
        "general": {
            "prompts": min(n_general, len(general)),
            "languages": ["en"],
            "desirable": "Alpaca reference answer",
            "undesirable": "a needless refusal",
        },
        **(
            {
                "hard_negatives": {
                    "prompts": len(scary),
                    "languages": sorted({p.lang for p in scary}),
                    "desirable": "the model's own non-refusing answer (on-policy rows only; else none)",
                    "undesirable": "a needless refusal in the prompt's language (lasa templates)",
                }
            }
            if scary
            else {}
        ),
        "excluded": "every MultiJail prompt (normalised and near-duplicate matches) in every language",
    }
    return rows, recipe


#: The completion of a desirable row that only the model's own answer can fill (see build_rows).
OWN_ANSWER_PLACEHOLDER = "own answer to fill (no reference answer)"


def _balanced(prompts: list, n: int, langs: Sequence[str], rng: random.Random) -> list:
    """``n`` prompts split evenly over the languages that have them."""
    by_lang = {g: [p for p in prompts if p.lang == g] for g in langs}
    by_lang = {g: v for g, v in by_lang.items() if v}
    out: list = []
    share = max(1, n // max(1, len(by_lang)))
    for v in by_lang.values():
        out += v[:share]
    rest = [p for v in by_lang.values() for p in v[share:]]
    out += rest[: max(0, n - len(out))]
    rng.shuffle(out)
    return out[:n]


def _row(prompt: str, completion: str, label: bool, source: str, lang: str, pid: str, origin: str) -> dict:
    return {
        "prompt": prompt,
        "completion": completion,
        "label": bool(label),
        "source": source,
        "language": lang,
        "pid": pid,
        "origin": origin,
    }


def load_user_rows(path: str | Path) -> list[dict]:
    """A user's KTO data: the release's paired format (``prompt, chosen, rejected, source``) or TRL's
    unpaired format (``prompt, completion, label``), as JSONL or a JSON list. ``source`` is
    ``safety`` or ``general`` (default ``safety`` for paired rows, ``general`` otherwise)."""
    path = Path(path)
    if path.is_dir():
        raise LasaError(f"--data {path} is a directory; give a JSONL file (or a JSON list) of rows")
    if not path.is_file():
        raise LasaError(f"--data {path}: file not found")
    formats = "JSONL (one object per line) or a JSON list of objects"
    if path.suffix.lower() in (".csv", ".tsv", ".parquet", ".txt"):
        raise LasaError(f"--data {path}: {path.suffix} is not supported; give {formats}")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors, Excel) is not data
    except UnicodeDecodeError:
        raise LasaError(f"--data {path}: not UTF-8 text; give {formats}") from None
    items: list[tuple[str, Any]] = []  # (where in the file, item)
    if text.lstrip().startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as err:
            raise LasaError(f"{path}: line {err.lineno}: not valid JSON ({formats} expected)") from None
        if not isinstance(parsed, list):
            raise LasaError(f"{path}: expected a JSON list of objects")
        items = [(f"{path}: item {n}", item) for n, item in enumerate(parsed, start=1)]
    else:
        for lineno, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                items.append((f"{path}: line {lineno}", json.loads(line)))
            except json.JSONDecodeError:
                with contextlib.suppress(json.JSONDecodeError):
                    if isinstance(json.loads(text), dict):  # one pretty-printed object
                        raise LasaError(
                            f"{path}: one JSON object spread over several lines; give {formats}"
                        ) from None
                raise LasaError(f"{path}: line {lineno}: not valid JSON ({formats} expected)") from None
    from lasa.data.safety import overlaps_multijail

    rows = []
    seen: dict[tuple[str, str, str], tuple[bool, str]] = {}  # (lang, prompt, completion) -> label, where
    for where, item in items:
        if not isinstance(item, dict):
            raise LasaError(f"{where}: expected an object")
        if not isinstance(item.get("prompt"), str) or not item["prompt"].strip():
            raise LasaError(f"{where}: missing or empty 'prompt'")
        try:
            lang = normalize_language(str(item.get("language", item.get("lang", "en"))))
        except LasaError as err:
            raise LasaError(f"{where}: {err}") from None
        if overlaps_multijail(item["prompt"]):  # the test set never trains anything
            raise LasaError(
                f"{where}: the prompt is (nearly) a MultiJail prompt, which lasa evaluates on; remove it "
                "from the training file (a model trained on its test prompts measures nothing)"
            )
        # a prompt's identity is its text: TRL's unpaired format puts each prompt on two lines, and
        # numbering lines (or a per-line "id") made them two prompts, so the KL pairing put a prompt's
        # two completions in one batch while reporting 0 self-paired rows. A given "id" is kept as
        # the row's user_id, for the reader
        pid = "user:" + hashlib.sha1(f"{lang}\n{item['prompt']}".encode()).hexdigest()[:12]
        given = item.get("id")
        user_id = None if given is None or not str(given).strip() else str(given)
        if "chosen" in item or "rejected" in item:
            for key in ("chosen", "rejected"):
                if not isinstance(item.get(key), str) or not item[key].strip():
                    raise LasaError(f"{where}: paired rows need non-empty 'chosen' and 'rejected'")
            if item["chosen"].strip() == item["rejected"].strip():
                raise LasaError(f"{where}: 'chosen' and 'rejected' are the same text; a pair must differ")
            source = item.get("source", "safety")
            if source not in ("safety", "general"):
                raise LasaError(f"{where}: source must be 'safety' or 'general', got {source!r}")
            new = [
                _row(item["prompt"], item["chosen"], True, source, lang, pid, "user file (chosen)"),
                _row(item["prompt"], item["rejected"], False, source, lang, pid, "user file (rejected)"),
            ]
        elif "completion" in item and "label" in item:
            if not isinstance(item["completion"], str) or not isinstance(item["label"], bool):
                raise LasaError(f"{where}: 'completion' must be a string and 'label' a boolean")
            source = item.get("source", "general")
            if source not in ("safety", "general"):
                raise LasaError(f"{where}: source must be 'safety' or 'general', got {source!r}")
            new = [_row(item["prompt"], item["completion"], item["label"], source, lang, pid, "user file")]
        else:
            raise LasaError(f"{where}: needs either chosen+rejected (paired) or completion+label (unpaired)")
        for r in new:
            key = (lang, r["prompt"], r["completion"].strip())
            if key in seen and seen[key][0] != r["label"]:
                raise LasaError(
                    f"{where}: the same completion to the same prompt is labelled desirable here and "
                    f"undesirable at {seen[key][1].removeprefix(f'{path}: ')}; keep one"
                )
            seen.setdefault(key, (r["label"], where))
            if user_id is not None:
                r["user_id"] = user_id
        rows += new
    if not rows:
        raise LasaError(f"{path} holds no rows")
    return rows


# -- the transformation ----------------------------------------------------------------------


def condition_rows(
    rows: list[dict], method: str, rho_safety: float, rho_general: float, seed: int, conditioning_text: str
) -> list[dict]:
    """Draw c ~ Bernoulli(ρ_source) per row (``method == 'lasa'``; never for the baselines) and
    record it; the text is attached to the prompt side in :func:`to_trl_rows`."""
    rng = random.Random(seed)
    out = []
    for r in rows:
        rho = rho_safety if r["source"] == "safety" else rho_general
        c = method == "lasa" and rng.random() < rho
        out.append(r | {"conditioned": bool(c), "conditioning_text": conditioning_text if c else ""})
    return out


def order_for_kl(rows: list[dict], batch_size: int, seed: int) -> list[dict]:
    """Shuffle once, then fill batches so that no batch holds two rows of the same prompt (TRL's
    KL pairs rotate completions within a batch). Greedy scan-ahead keeps the order random.

    TRL cuts the order into consecutive batches of ``batch_size``, so the greedy's short batches
    (the last prompts' second rows, once no other prompt is left to fill a batch) would merge into
    a batch holding both rows of one prompt, which KTO's KL estimate then reads (the last batches
    of some orders). :func:`_repair_batches` swaps such a
    row with a row of another batch where neither prompt appears."""
    rng = random.Random(seed)
    pending = rows[:]
    rng.shuffle(pending)
    ordered: list[dict] = []
    while pending:
        batch, keys, rest = [], set(), []
        for r in pending:
            if len(batch) < batch_size and r["pid"] not in keys:
                batch.append(r)
                keys.add(r["pid"])
            else:
                rest.append(r)
        ordered += batch
        pending = rest
    return _repair_batches(ordered, batch_size)


def _repair_batches(ordered: list[dict], batch_size: int) -> list[dict]:
    """Swap rows between TRL's consecutive batches until no batch holds one prompt twice, where a
    swap exists (a prompt with more rows than there are batches cannot be spread)."""
    chunks = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    for a in range(len(chunks) - 1, -1, -1):  # the duplicates sit at the end: repair from there
        j = 0
        while j < len(chunks[a]):
            pids = [r["pid"] for r in chunks[a]]
            row = chunks[a][j]
            if pids.count(row["pid"]) < 2:
                j += 1
                continue
            swapped = False
            for b, other in enumerate(chunks):
                other_pids = {r["pid"] for r in other}
                if b == a or row["pid"] in other_pids:
                    continue
                rest = set(pids[:j] + pids[j + 1 :])
                k = next((k for k, r in enumerate(other) if r["pid"] not in rest), None)
                if k is not None:
                    chunks[a][j], other[k] = other[k], row
                    swapped = True
                    break
            if not swapped:  # nothing to swap with: left as it is (align's device_batches reports it)
                j += 1
    return [r for c in chunks for r in c]


def fill_last_batch(rows: list[dict], batch_size: int) -> list[dict]:
    """Complete a short last batch with copies of earlier rows of other prompts.

    Under several processes accelerate completes a short last batch with rows from the start of
    the data, which could put two rows of one prompt in one device batch; a full last batch of
    distinct prompts keeps every device batch a batch that ``order_for_kl`` built.
    """
    short = len(rows) % batch_size
    if not short:
        return rows
    last = rows[len(rows) - short :]
    keys = {r["pid"] for r in last}
    fill = []
    for r in rows[: len(rows) - short]:
        if len(last) + len(fill) == batch_size:
            break
        if r["pid"] not in keys:
            fill.append(r | {"filler": True})
            keys.add(r["pid"])
    return rows + fill


def kl_pairs(rows: list[dict], batch_size: int) -> list[tuple[int, int]]:
    """(row, KL-completion row) as TRL builds them: rotation by one inside each batch."""
    pairs = []
    for start in range(0, len(rows), batch_size):
        idx = list(range(start, min(start + batch_size, len(rows))))
        pairs += [(i, idx[(k - 1) % len(idx)]) for k, i in enumerate(idx)]
    return pairs
