"""The named things a config may refer to, validated when the config is built: the variants lasa
evaluates, the judges and the utility tasks (their implementations register under the same names
in :mod:`lasa.judges` and :mod:`lasa.utility.runner`; tests keep the two in step)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: The variants lasa evaluates, as the generate / evaluate settings that make each one. ``lasa run``
#: trains the adapters they need; ``lasa generate/evaluate --variant NAME`` expands a name here.
VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "base+gate": {"gate": True},
    "kto": {"adapter": "kto"},
    "kto+gate": {"adapter": "kto", "gate": True},
    "sft": {"adapter": "sft"},
    "sft+gate": {"adapter": "sft", "gate": True},
    "lasa": {"adapter": "lasa"},
    "lasa+gate": {"adapter": "lasa", "gate": True},
}


#: The training methods (``lasa align --method``): the adapters the variants above name.
METHODS: tuple[str, ...] = tuple(dict.fromkeys(v["adapter"] for v in VARIANTS.values() if "adapter" in v))

#: Written into every adapter folder ``lasa align`` saves: which method trained it, so a copied
#: adapter given as another method's variant (``--variant lasa --adapter COPY_OF_KTO``) is refused.
ADAPTER_METHOD_FILE = "lasa_adapter.json"


def adapter_record(path: str | Path) -> dict:
    """``lasa_adapter.json`` of a directory ``lasa align`` saved (the method; for a full fine-tune
    also its base model and frozen blocks, :func:`lasa.align.full_checkpoint_record`); {} when
    absent or unreadable. Torch-free, so configs read it while they validate."""
    try:
        doc = json.loads((Path(path) / ADAPTER_METHOD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


#: Judges by name -> "module:Class", built lazily by ``lasa.judges.get_judge`` (the e5 judges load a
#: model). The table lives here so that configs validate judge names without importing the judges.
JUDGES: dict[str, str] = {
    "pair": "lasa.judges.pair:PairJudge",
    "lexicon": "lasa.judges.lexicon:LexiconJudge",
    "embedding": "lasa.judges.embedding:EmbeddingJudge",
    "llm": "lasa.judges.llm:LLMJudge",
    # opt-in: pair plus a head on Qwen2.5-Coder-1.5B's reading of the pair (a 1.5B forward per item)
    "probe": "lasa.judges.probe:ProbeJudge",
}


#: The judge every ASR is counted with unless told otherwise; chosen by grouped-split validation on
#: lasa's labelled corpus (docs/judge_validation.md).
DEFAULT_JUDGE = "pair"


#: Utility tasks ``lasa evaluate`` knows (lasa.utility implements them).
UTILITY_TASKS = ("mgsm", "xcopa", "mmlu", "drift")
