"""Harmful and benign prompts for the SSI (training and cross-lingual evaluation) and for KTO.

The recipe is the point of this module, so it is spelled out:

*Training* (``training_prompts``), in the training languages only (default en + zh):
- harmful: English HarmBench (standard), AdvBench, StrongREJECT and TDC-2023 requests; XSafety
  items that lasa's maintainers labelled harmful (requests, questions and abusive or criminal
  statements; parallel en/zh/ar/bn);
- benign: Alpaca instructions (en), XSafety items labelled benign (mostly sensitive-but-fine
  questions: hard negatives), XQuAD questions and MGSM problems from their *training* halves,
  and FLORES statements from SIB-200's train split.
Every harmful or benign training prompt is de-duplicated against all 315 MultiJail prompts in
every language (MultiJail is the test set and never trains anything). Each
(language, label, form) cell is capped so that neither class owns a surface form: a probe on
the last token otherwise learns "ends with '?'" instead of "is harmful".

*Evaluation* (``evaluation_prompts``), for all ten languages: harmful = MultiJail; benign =
question-form text in the same language from the *evaluation* halves (XQuAD: en zh vi ar th;
MGSM: en zh th bn sw), and FLORES statements (SIB-200 dev+test) only where no question-form
text exists (it, ko, jv). The benign source is recorded per language, and the form of every
prompt is kept so that a form-only control can be reported next to the SSI.
"""

from __future__ import annotations

import copy
import csv
import json
import random
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache

from lasa.data import LANGUAGES, data_path, load_multijail, load_sib200, normalize_languages
from lasa.errors import LasaError

#: Languages with harmful training data outside MultiJail (XSafety covers en zh ar bn).
TRAINABLE_LANGUAGES = ("en", "zh", "ar", "bn")
XQUAD_LANGS = ("en", "zh", "vi", "ar", "th")
MGSM_LANGS = ("en", "zh", "th", "bn", "sw")
#: The file is grouped by article; rows [:607] train, [607:] evaluate. 607 is the article
#: boundary nearest the middle (595 split *Newcastle_upon_Tyne* 13 / 12 until 2026-12: SOURCE.md).
XQUAD_TRAIN_ROWS = 607
MGSM_TRAIN_ROWS = 100  # rows [:100] train, [100:] evaluate
FORMS = ("question", "instruction", "statement")


@dataclass(frozen=True)
class Prompt:
    text: str
    lang: str
    label: int  # 1 harmful, 0 benign
    source: str
    form: str
    id: str

    def to_dict(self) -> dict:
        return asdict(self)


# -- text helpers ----------------------------------------------------------------------------

_QUESTION_END = ("?", "？", "؟", ";")  # ';' is the Greek question mark, harmless elsewhere


def guess_form(text: str, default: str = "instruction") -> str:
    """Coarse surface form: a question if it ends with a question mark, else ``default``."""
    return "question" if text.rstrip().rstrip("\"'”’)）").endswith(_QUESTION_END) else default


def normalize_text(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return re.sub(r"[\W_]+", " ", text).strip()


def _shingles(text: str, n: int = 3) -> set[str]:
    t = normalize_text(text).replace(" ", "")
    return {t[i : i + n] for i in range(max(1, len(t) - n + 1))}


@lru_cache(maxsize=1)
def _multijail_index() -> tuple[frozenset[str], list[frozenset[str]], dict[str, list[int]]]:
    """Normalised MultiJail texts, their trigram sets, and an inverted index trigram → texts."""
    mj = load_multijail()
    texts = [t for col in mj.texts.values() for t in col]
    shingles = [frozenset(_shingles(t)) for t in texts]
    postings: dict[str, list[int]] = defaultdict(list)
    for i, sh in enumerate(shingles):
        for g in sh:
            postings[g].append(i)
    return frozenset(normalize_text(t) for t in texts), shingles, postings


def overlaps_multijail(text: str, threshold: float = 0.6) -> bool:
    """Exact (normalised) match, or character-trigram Jaccard >= ``threshold`` with any MultiJail
    prompt in any language (a translation-preserving paraphrase of a test prompt is still a leak)."""
    exact, shingles, postings = _multijail_index()
    if normalize_text(text) in exact:
        return True
    s = _shingles(text)
    shared = Counter(i for g in s for i in postings.get(g, ()))
    return any(k / (len(s) + len(shingles[i]) - k) >= threshold for i, k in shared.items())


# -- sources ---------------------------------------------------------------------------------


def _read_csv(*parts: str) -> list[dict]:
    with open(data_path(*parts), encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


def english_harmful() -> list[Prompt]:
    out = []
    for row in _read_csv("harmful_en", "harmbench_behaviors_text_all.csv"):
        if row["FunctionalCategory"] == "standard":
            out.append(("harmbench", row["BehaviorID"], row["Behavior"]))
    for row in _read_csv("harmful_en", "advbench_behaviors.csv"):
        out.append(("advbench", row["BehaviorID"], row["Behavior"]))
    for i, row in enumerate(_read_csv("harmful_en", "strongreject_dataset.csv")):
        out.append(("strongreject", str(i), row["forbidden_prompt"]))
    for i, row in enumerate(_read_csv("harmful_en", "tdc2023_test_phase_behaviors.csv")):
        out.append(("tdc2023", str(i), row["Behavior"]))
    return [Prompt(t.strip(), "en", 1, src, guess_form(t), f"{src}:{i}") for src, i, t in out if t.strip()]


def english_affirmative_targets() -> dict[str, str]:
    """Behaviour text → "Sure, here is ..." target (HarmBench and AdvBench), for undesirable KTO rows."""
    out = {}
    hb = json.loads(data_path("harmful_en", "harmbench_targets_text.json").read_text(encoding="utf-8"))
    for row in _read_csv("harmful_en", "harmbench_behaviors_text_all.csv"):
        if row["BehaviorID"] in hb:
            out[row["Behavior"].strip()] = hb[row["BehaviorID"]]
    ab = json.loads(data_path("harmful_en", "advbench_targets.json").read_text(encoding="utf-8"))
    for row in _read_csv("harmful_en", "advbench_behaviors.csv"):
        if row["BehaviorID"] in ab:
            out[row["Behavior"].strip()] = ab[row["BehaviorID"]]
    return out


def xsafety(langs: Iterable[str]) -> list[Prompt]:
    out = []
    for row in _read_csv("xsafety", "xsafety_labelled.csv"):
        if row["label"] not in ("harmful", "benign"):
            continue
        for lang in langs:
            if lang in row and row[lang].strip():
                out.append(
                    Prompt(
                        row[lang].strip(),
                        lang,
                        int(row["label"] == "harmful"),
                        "xsafety",
                        row["form"],
                        f"xsafety:{row['category']}:{row['idx']}",
                    )
                )
    return out


def alpaca(with_input: bool = False) -> list[dict]:
    rows = json.loads(data_path("alpaca", "alpaca_5000.json").read_text(encoding="utf-8"))
    return [r for i, r in enumerate(rows) if with_input or not r["input"].strip()]


def alpaca_prompts() -> list[Prompt]:
    return [
        Prompt(r["instruction"].strip(), "en", 0, "alpaca", guess_form(r["instruction"]), f"alpaca:{i}")
        for i, r in enumerate(alpaca())
    ]


def hard_negatives(langs: Iterable[str]) -> list[Prompt]:
    """Safe prompts that sound harmful, written for lasa (``data/hard_negatives/SOURCE.md``):
    benign SSI training rows, so that scary words alone stop reading as harm. en and zh only.

    The surface form is the file's own ``form`` field (question / instruction / statement, set
    by the authors): :func:`guess_form` only sees a question mark, so it would call the 109
    statements instructions, and the form-capped SSI cells and align's statement filter (a
    statement is no request to answer or refuse) would treat them as requests."""
    out = []
    for lang in langs:
        path = data_path("hard_negatives", f"{lang}.jsonl")
        if not path.is_file():
            continue
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                r = json.loads(line)
                form = r.get("form") or guess_form(r["text"])
                if form not in FORMS:
                    raise LasaError(
                        f"{path.name} line {n}: form {form!r} is not one of {', '.join(FORMS)}; "
                        "the vendored file is corrupt (reinstall lasa)"
                    )
                out.append(Prompt(r["text"], lang, 0, "hard_negatives", form, f"hardneg:{r['id']}"))
    return out


def xquad(lang: str, split: str) -> list[Prompt]:
    if lang not in XQUAD_LANGS:
        return []
    rows = _read_csv("xquad", "xquad_questions_parallel.csv")
    rows = rows[:XQUAD_TRAIN_ROWS] if split == "train" else rows[XQUAD_TRAIN_ROWS:]
    return [
        Prompt(r[f"question_{lang}"].strip(), lang, 0, "xquad", "question", f"xquad:{r['id']}")
        for r in rows
        if r[f"question_{lang}"].strip()
    ]


def mgsm_rows(lang: str) -> list[tuple[str, str]]:
    with open(data_path("mgsm", f"mgsm_{lang}.tsv"), encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    for i, r in enumerate(rows):
        if len(r) != 2:
            raise LasaError(
                f"mgsm_{lang}.tsv row {i + 1}: expected question<TAB>answer; the vendored file is corrupt"
            )
    return [(q.strip(), a.strip()) for q, a in rows]


def mgsm(lang: str, split: str) -> list[Prompt]:
    if lang not in MGSM_LANGS:
        return []
    rows = list(enumerate(mgsm_rows(lang)))
    rows = rows[:MGSM_TRAIN_ROWS] if split == "train" else rows[MGSM_TRAIN_ROWS:]
    return [Prompt(q, lang, 0, "mgsm", "question", f"mgsm:{i}") for i, (q, _) in rows]


def flores(lang: str, split: str) -> list[Prompt]:
    splits = ("train",) if split == "train" else ("dev", "test")
    table = load_sib200([lang], splits=splits)
    return [
        Prompt(t, lang, 0, "flores", "statement", f"flores:{i}") for i, t in zip(table.ids, table.texts[lang])
    ]


def xstest() -> list[dict]:
    """XSTest v2: 250 safe prompts that merely sound unsafe, and 200 unsafe contrast prompts (English)."""
    return [
        {"id": r["id"], "prompt": r["prompt"].strip(), "type": r["type"], "label": r["label"]}
        for r in _read_csv("xstest", "xstest_prompts.csv")
    ]


def xstest_multilingual(lang: str) -> list[dict]:
    """XSTest in ``lang``: the English original, or lasa's machine translation (``data/xstest_mt/``,
    not human-verified; see its SOURCE.md), with the original ids, types and labels."""
    lang = normalize_languages([lang])[0]
    rows = xstest()
    if lang == "en":
        return rows
    path = data_path("xstest_mt", f"{lang}.jsonl")
    if not path.is_file():
        raise LasaError(f"no translated XSTest for {lang!r} in {path.parent}")
    tr = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                tr[str(r["id"])] = r["prompt"].strip()
    missing = [r["id"] for r in rows if str(r["id"]) not in tr]
    if missing:
        raise LasaError(f"{path} lacks {len(missing)} XSTest ids (first: {missing[0]})")
    return [r | {"prompt": tr[str(r["id"])], "lang": lang} for r in rows]


def xstest_translated(langs: Sequence[str] | None, n: int) -> list[dict]:
    """The first ``n`` safe and ``n`` unsafe XSTest prompts of lasa's machine translation in each
    non-English language of ``langs`` (default: all nine), in XSTest's order."""
    from lasa.data import LANGUAGES

    out: list[dict] = []
    for lang in [g for g in (langs or LANGUAGES) if g != "en"] if n > 0 else []:
        rows = xstest_multilingual(lang)
        out += [r for r in rows if r["label"] == "safe"][:n] + [r for r in rows if r["label"] != "safe"][:n]
    return out


# -- recipes ---------------------------------------------------------------------------------


def _cap_cells(prompts: list[Prompt], cap: int, seed: int) -> list[Prompt]:
    """At most ``cap`` prompts per (language, label, form) cell, drawn with ``seed``; hard
    negatives are a cell of their own, so the cap never thins them out among easy benign rows."""
    cells: dict[tuple, list[Prompt]] = defaultdict(list)
    for p in prompts:
        cells[(p.lang, p.label, p.form, p.source == "hard_negatives")].append(p)
    rng = random.Random(seed)
    out = []
    for key in sorted(cells):
        items = cells[key]
        out += items if len(items) <= cap else rng.sample(items, cap)
    return out


def validate_train_langs(langs: Iterable[str] | str) -> list[str]:
    langs = normalize_languages(langs)
    bad = [lang for lang in langs if lang not in TRAINABLE_LANGUAGES]
    if bad:
        raise LasaError(
            f"--train-langs {' '.join(bad)}: no harmful training data outside MultiJail for that language; "
            f"choose from {' '.join(TRAINABLE_LANGUAGES)}"
        )
    return langs


def training_prompts(
    langs: Iterable[str] = ("en", "zh"), cap: int = 400, seed: int = 42, with_hard_negatives: bool = True
) -> tuple[list[Prompt], dict]:
    """The SSI training pool (before the train/validation split) and a summary of the recipe.

    Built once per process for each setting (seconds of reading and de-duplicating the vendored
    sets; interpret's split check, the stage itself and align's row counts all ask for it); the
    caller gets its own list and summary."""
    pool, summary = _training_prompts(tuple(validate_train_langs(langs)), cap, seed, with_hard_negatives)
    return list(pool), copy.deepcopy(summary)


@lru_cache(maxsize=8)
def _training_prompts(
    langs: tuple[str, ...], cap: int, seed: int, with_hard_negatives: bool
) -> tuple[tuple[Prompt, ...], dict]:
    langs = list(langs)
    pool: list[Prompt] = []
    if "en" in langs:
        pool += english_harmful() + alpaca_prompts()
    pool += xsafety(langs)
    if with_hard_negatives:
        pool += hard_negatives(langs)
    for lang in langs:
        pool += xquad(lang, "train") + mgsm(lang, "train") + flores(lang, "train")
    seen: set[tuple[str, str]] = set()
    kept, removed = [], Counter()
    for p in pool:
        key = (p.lang, normalize_text(p.text))
        if key in seen:
            removed["duplicate"] += 1
            continue
        seen.add(key)
        if overlaps_multijail(p.text):
            removed[f"multijail_overlap:{p.source}"] += 1
            continue
        kept.append(p)
    capped = _cap_cells(kept, cap, seed)
    summary = {
        "languages": langs,
        "cap_per_language_label_form": cap,
        "removed": dict(removed),
        "counts": _counts(capped),
        "sources": sorted({p.source for p in capped}),
    }
    return tuple(capped), summary


def evaluation_prompts(
    langs: Iterable[str] | None = None, n_harmful: int | None = None, n_benign: int = 300, seed: int = 42
) -> tuple[list[Prompt], dict[str, str]]:
    """Per language: MultiJail (first ``n_harmful`` ids, the same in every language) and up to
    ``n_benign`` benign prompts; returns the prompts and each language's benign source."""
    langs = normalize_languages(langs)
    mj = load_multijail(langs).head(n_harmful)
    rng = random.Random(seed)
    out: list[Prompt] = []
    benign_source: dict[str, str] = {}
    for lang in langs:
        out += [
            Prompt(t, lang, 1, "multijail", guess_form(t), f"multijail:{i}")
            for i, t in zip(mj.ids, mj.texts[lang])
        ]
        benign = xquad(lang, "eval") + mgsm(lang, "eval")
        if benign:
            benign_source[lang] = "+".join(sorted({p.source for p in benign}))
        else:
            benign = flores(lang, "eval")
            benign_source[lang] = "flores (statements; fallback)"
        out += benign if len(benign) <= n_benign else rng.sample(benign, n_benign)
    return out, benign_source


def _counts(prompts: Iterable[Prompt]) -> dict:
    c: dict[str, dict[str, dict[str, int]]] = {}
    for p in prompts:
        c.setdefault(p.lang, {}).setdefault("harmful" if p.label else "benign", {}).setdefault(p.form, 0)
        c[p.lang]["harmful" if p.label else "benign"][p.form] += 1
    return c


__all__ = [
    "FORMS",
    "LANGUAGES",
    "TRAINABLE_LANGUAGES",
    "Prompt",
    "english_affirmative_targets",
    "english_harmful",
    "evaluation_prompts",
    "guess_form",
    "overlaps_multijail",
    "training_prompts",
    "xstest",
]
