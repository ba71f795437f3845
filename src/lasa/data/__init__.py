"""Vendored datasets and their loaders.

Every file under this package is a copy of a public dataset with its licence and a ``SOURCE.md``
giving origin, commit and licence (see ``NOTICE`` at the repository root). Loaders return
:class:`ParallelTable` objects: one row per query id, one column per language, so that
"the same meaning in ten languages" is a first-class object, which is what the bottleneck
geometry is measured on.
"""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

from lasa.errors import LasaError

#: The ten MultiJail languages in the paper's order (high → medium → low resource after English).
LANGUAGES: tuple[str, ...] = ("en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv")
LANGUAGE_NAMES: dict[str, str] = {
    "en": "English",
    "zh": "Chinese",
    "it": "Italian",
    "vi": "Vietnamese",
    "ar": "Arabic",
    "ko": "Korean",
    "th": "Thai",
    "bn": "Bengali",
    "sw": "Swahili",
    "jv": "Javanese",
}
#: MultiJail's resource tiers (English is the reference and belongs to no tier).
TIERS: dict[str, tuple[str, ...]] = {
    "high": ("zh", "it", "vi"),
    "medium": ("ar", "ko", "th"),
    "low": ("bn", "sw", "jv"),
}
_ALIASES = {"jw": "jv"}  # MultiJail and some HF datasets spell Javanese "jw"
#: MultiJail's parallel prompts per language, and XSTest's prompts (250 safe + 200 unsafe).
MULTIJAIL_N = 315
XSTEST_N = 450
#: of which safe-but-scary (the rest are unsafe contrasts)
XSTEST_SAFE_N = 250

_SIB_CODES = {
    "en": "eng_Latn",
    "zh": "zho_Hans",
    "it": "ita_Latn",
    "vi": "vie_Latn",
    "ar": "arb_Arab",
    "ko": "kor_Hang",
    "th": "tha_Thai",
    "bn": "ben_Beng",
    "sw": "swh_Latn",
    "jv": "jav_Latn",
}


def normalize_language(code: str) -> str:
    """Map a user-given code to one of :data:`LANGUAGES`, or raise a one-line error listing them."""
    norm = _ALIASES.get(code.strip().lower(), code.strip().lower())
    if norm not in LANGUAGES:
        raise LasaError(
            f"unknown language code {code!r}; valid codes: {' '.join(LANGUAGES)} (jw is accepted for jv)"
        )
    return norm


def normalize_languages(codes: Iterable[str] | str | None) -> list[str]:
    """Validate and de-duplicate a list of codes (also accepts "all" or a comma-separated string)."""
    if codes is None:
        return list(LANGUAGES)
    if isinstance(codes, str):
        codes = [codes]
    flat = [c for item in codes for c in str(item).replace(",", " ").split()]
    if not flat or flat == ["all"]:
        return list(LANGUAGES)
    out: list[str] = []
    for code in flat:
        norm = normalize_language(code)
        if norm not in out:
            out.append(norm)
    return out


def data_path(*parts: str) -> Path:
    """Path of a vendored file inside the installed package (works from a wheel or a checkout)."""
    return Path(str(resources.files("lasa.data").joinpath(*parts)))


@dataclass
class ParallelTable:
    """The same items in several languages: ``texts[lang][i]`` translates ``texts[other][i]``."""

    source: str
    ids: list[str]
    texts: dict[str, list[str]]
    meta: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for lang, col in self.texts.items():
            if len(col) != len(self.ids):
                raise ValueError(
                    f"{self.source}: column {lang} has {len(col)} rows, expected {len(self.ids)}"
                )

    @property
    def languages(self) -> list[str]:
        return list(self.texts)

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, rows: Sequence[int]) -> ParallelTable:
        return ParallelTable(
            source=self.source,
            ids=[self.ids[i] for i in rows],
            texts={lang: [col[i] for i in rows] for lang, col in self.texts.items()},
            meta={k: [v[i] for i in rows] for k, v in self.meta.items()},
        )

    def sample(self, n: int | None, seed: int) -> ParallelTable:
        """``n`` rows drawn without replacement with ``seed`` (all rows, in order, when n is None)."""
        if n is None or n >= len(self):
            if n is not None and n > len(self):
                raise LasaError(
                    f"{self.source} has {len(self)} parallel rows; asked for {n}: lower --n-queries"
                )
            return self
        rows = sorted(random.Random(seed).sample(range(len(self)), n))
        return self.select(rows)

    def head(self, n: int | None) -> ParallelTable:
        if n is None or n >= len(self):
            return self
        return self.select(range(n))


def _check_columns(path: Path, header: Sequence[str], needed: Iterable[str]) -> None:
    missing = [c for c in needed if c not in header]
    if missing:
        raise LasaError(f"{path}: missing column(s) {', '.join(missing)}; is this the right file?")


def load_multijail(languages: Iterable[str] | None = None, path: str | Path | None = None) -> ParallelTable:
    """MultiJail (Deng et al., ICLR 2024): 315 harmful prompts, human-translated into 9 languages.

    It is lasa's safety *test* set: use it to locate the bottleneck or to evaluate, never to
    train a probe or an adapter.
    """
    langs = normalize_languages(languages)
    path = Path(path) if path else data_path("multijail", "MultiJail.csv")
    with open(path, encoding="utf-8-sig", newline="") as f:  # the file starts with a BOM
        reader = csv.DictReader(f)
        _check_columns(path, reader.fieldnames or [], ["id", "tags", *langs])
        rows = list(reader)
    for i, row in enumerate(rows, start=2):
        for lang in langs:
            if not (row.get(lang) or "").strip():
                raise LasaError(
                    f"{path}:{i}: empty {lang} prompt for id {row.get('id')}; the file is malformed"
                )
    return ParallelTable(
        source="multijail",
        ids=[row["id"] for row in rows],
        texts={lang: [row[lang].strip() for row in rows] for lang in langs},
        meta={"tags": [row["tags"] for row in rows], "origin": [row.get("source", "") for row in rows]},
    )


def load_sib200(
    languages: Iterable[str] | None = None, splits: Sequence[str] = ("train", "dev", "test")
) -> ParallelTable:
    """FLORES-200 sentences via SIB-200: 1004 neutral statements, 10-way parallel by ``index_id``."""
    langs = normalize_languages(languages)
    texts: dict[str, list[str]] = {}
    ids: list[str] | None = None
    categories: list[str] = []
    for lang in langs:
        col: list[str] = []
        col_ids: list[str] = []
        for split in splits:
            path = data_path("sib200", _SIB_CODES[lang], f"{split}.tsv")
            with open(path, encoding="utf-8", newline="") as f:
                reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
                _check_columns(path, reader.fieldnames or [], ["index_id", "category", "text"])
                for row in reader:
                    col_ids.append(row["index_id"])
                    col.append(row["text"].strip())
                    if ids is None:
                        categories.append(row["category"])
        if ids is None:
            ids = col_ids
        elif col_ids != ids:
            raise LasaError(f"SIB-200 {lang} is not parallel to {langs[0]}; the vendored files are corrupt")
        texts[lang] = col
    return ParallelTable(source="sib200", ids=list(ids or []), texts=texts, meta={"category": categories})


__all__ = [
    "LANGUAGES",
    "LANGUAGE_NAMES",
    "TIERS",
    "ParallelTable",
    "data_path",
    "load_multijail",
    "load_sib200",
    "normalize_language",
    "normalize_languages",
]


# -- utility data (read here, scored in lasa.utility) ----------------------------------------

XCOPA_LANGS: tuple[str, ...] = ("it", "sw", "th", "vi", "zh")


@lru_cache(maxsize=16)
def xcopa_rows(lang: str, split: str = "test") -> tuple[dict, ...]:
    """The vendored XCOPA file of one language as written upstream (lasa.utility.xcopa fixes it up)."""
    path = data_path("xcopa", lang, f"{split}.{lang}.jsonl")
    with open(path, encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f if line.strip())


@lru_cache(maxsize=1)
def mmlu_subset() -> tuple[dict, ...]:
    """The vendored MMLU subset (57 subjects x 20 questions), rows as in the CSV."""
    with open(data_path("mmlu_en", "mmlu_subset.csv"), encoding="utf-8", newline="") as f:
        return tuple(csv.DictReader(f))


def utility_items(task: str) -> int | None:
    """How many items ``--<task>-n`` may ask for (per language where the task has languages), from
    the vendored files alone, so a config asking for more is refused when it is built, not after
    the variant's generation and judging (``None``: the task has no such limit)."""
    from lasa.data.safety import MGSM_LANGS, MGSM_TRAIN_ROWS, mgsm_rows

    if task == "mgsm":
        return min(len(mgsm_rows(lang)) for lang in MGSM_LANGS) - MGSM_TRAIN_ROWS
    if task == "xcopa":
        return min(len(xcopa_rows(lang)) for lang in XCOPA_LANGS)
    if task == "mmlu":
        return len(mmlu_subset())
    if task == "drift":  # FLORES sentences and benign chat prompts per language, the fewer of the two
        from lasa.data.safety import evaluation_prompts, flores

        benign, _ = evaluation_prompts(list(LANGUAGES), n_harmful=1, n_benign=10**6)
        chats = Counter(p.lang for p in benign if p.label == 0)
        return min(min(len(flores(g, "eval")), chats[g]) for g in LANGUAGES)
    return None
