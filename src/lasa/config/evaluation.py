"""The configs of generate, evaluate and judge-check (with the judge settings they share)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from lasa.conditioning import CONDITIONING_TEXT
from lasa.config.base import StageConfig, nonempty_langs, safe_name
from lasa.config.registry import (
    DEFAULT_JUDGE,
    JUDGES,
    METHODS,
    UTILITY_TASKS,
    VARIANTS,
    adapter_record,
)
from lasa.data import MULTIJAIL_N, XSTEST_N, XSTEST_SAFE_N
from lasa.errors import LasaError


def check_endpoint_url(url: str) -> None:
    """A one-line error unless ``url`` is an http(s) URL with a host (``notaurl`` once reached urllib
    and came back as a ValueError traceback, after the whole generation); the ``llm`` judge's too."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 (raises on a port that is not a number in 0..65535)
    except ValueError:
        raise LasaError(
            f"--judge-url {url!r} has a bad port; give the endpoint's base, e.g. http://localhost:8000/v1"
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LasaError(
            f"--judge-url {url!r} is not an http(s) URL with a host; give the endpoint's base, e.g. "
            "http://localhost:8000/v1 (lasa appends /chat/completions)"
        )


def _importable(module: str) -> bool:
    import importlib.util
    import sys

    if module in sys.modules:
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _trained_by(adapter: str | None) -> str | None:
    """The method ``lasa align`` trained an adapter directory with, from its ``summary.json``
    (``RUN/align/<method>/``, beside ``adapter/``); None for an adapter lasa did not train."""
    if not adapter:
        return None
    method = adapter_record(adapter).get("method")  # travels with a copy of the adapter
    if method is None:
        for f in (Path(adapter) / "summary.json", Path(adapter).parent / "summary.json"):
            if f.is_file():
                try:
                    method = json.loads(f.read_text(encoding="utf-8")).get("method")
                except (OSError, ValueError, AttributeError):
                    return None
                break
    return method if method in METHODS else None


@dataclass
class GenerateConfig(StageConfig):
    """``lasa generate``: chat completions of one variant (base / adapter, with or without the SSI gate)."""

    stage: ClassVar[str] = "generate"

    variant: str | None = field(
        default=None,
        metadata={
            "help": "Name of RUN/eval/<variant>/ (default: base, base+gate, <adapter>, <adapter>+gate)."
        },
    )
    adapter: str | None = field(
        default=None,
        metadata={
            "help": "PEFT adapter: a directory, or a method trained in this run (lasa, kto, sft → "
            "RUN/align/<method>/adapter)."
        },
    )
    gate: bool = field(
        default=False,
        metadata={
            "help": "Gate with the SSI: flagged prompts get the conditioning "
            "text at the start of the assistant turn."
        },
    )
    gate_threshold: float | None = field(
        default=None,
        metadata={
            "gt": 0,
            "lt": 1,
            "help": "Override the SSI's validation-calibrated threshold (p(harmful) above it gates).",
        },
    )
    ssi: str | None = field(default=None, metadata={"help": "Where the SSI is (default: RUN/ssi)."})
    conditioning_text: str = field(
        default=CONDITIONING_TEXT,
        metadata={"help": "Text placed at the start of the assistant turn for flagged prompts."},
    )
    langs: list[str] = field(default_factory=lambda: ["all"], metadata={"help": "MultiJail languages."})
    n: str = field(
        default="100",
        metadata={
            "help": "MultiJail prompts per language: the first N ids, the same in "
            "every language ('all' = 315)."
        },
    )
    xstest: bool = field(default=True, metadata={"help": "Also generate for XSTest (over-refusal)."})
    reuse_ungated: bool = field(
        default=True,
        metadata={
            "help": "Gated variants: copy the ungated variant's completion (RUN/eval/<variant without "
            "+gate>, same settings and adapter) for every prompt the SSI does not flag, and its "
            "log-likelihood utility scores; the gate leaves those untouched, so only flagged rows "
            "are generated."
        },
    )
    xstest_n: int | None = field(
        default=None,
        metadata={"help": "XSTest prompts (default all 450; a subset keeps the safe/unsafe mix)."},
    )
    xstest_mt_n: int = field(
        default=0,
        metadata={
            "help": "Also generate for the first N safe and N unsafe prompts of lasa's machine-translated "
            "XSTest in each evaluated non-English language, and report the refusal rate on the safe ones "
            "per language (0 = skip)."
        },
    )
    max_new_tokens: int = field(default=128, metadata={"help": "New tokens per response (bn/th need >= 96)."})
    batch_size: int = field(default=16, metadata={"help": "Prompts per generation batch."})
    backend: Literal["hf", "vllm"] = field(
        default="hf",
        metadata={
            "help": "hf = batched transformers generation (CPU/GPU); vllm = vLLM engine with the adapter as "
            "a LoRA (GPU; pip install -e '.[vllm]'), SSI scores from a truncated HF pass."
        },
    )
    do_sample: bool = field(default=False, metadata={"help": "Sample instead of greedy decoding."})
    temperature: float = field(
        default=1.0, metadata={"gt": 0, "help": "Sampling temperature (with --do-sample)."}
    )
    top_p: float = field(
        default=1.0, metadata={"gt": 0, "le": 1, "help": "Nucleus sampling (with --do-sample)."}
    )

    @staticmethod
    def check_flags(cfg: GenerateConfig, argv: list[str], preset: dict | None = None) -> None:
        """``--gate false`` (or ``gate: false`` in the ``--config`` preset, unless a flag turns it back
        on) beside a gated variant name: the name used to win without a word (an unset and a false
        ``gate`` look alike to the config)."""
        from lasa.config.base import explicit_false

        if not (VARIANTS.get(cfg.variant or "") or {}).get("gate"):
            return
        plain = cfg.variant.removesuffix("+gate")
        if explicit_false(argv, "--gate"):
            raise LasaError(
                f"--variant {cfg.variant} is gated, but --gate false asks for no gate; drop --gate false, "
                f"or use --variant {plain}"
            )
        flag_on = any(a == "--gate" or a.startswith("--gate=") for a in argv)
        if (preset or {}).get("gate") is False and not flag_on:
            raise LasaError(
                f"--variant {cfg.variant} is gated, but the preset's `gate: false` asks for no gate; remove "
                f"it from the preset, or use --variant {plain}"
            )

    def unused_settings(self) -> frozenset[str]:
        """Settings these options do not read (warned about when given as flags)."""
        return frozenset(set() if self.xstest else {"xstest_n"})

    def __post_init__(self) -> None:
        super().__post_init__()
        from lasa.data import normalize_languages

        if self.variant is not None:
            safe_name(self.variant, "--variant")  # RUN/eval/<variant>/
        for flag in ("adapter", "ssi"):  # `--adapter "$ADAPTER"` with the variable unset evaluated
            value = getattr(self, flag)  # the base model under the name `base`, and exited 0
            if value is not None and not str(value).strip():
                raise LasaError(
                    f"--{flag} is empty; give a directory or (for --adapter) a method trained in this run, "
                    "or leave the flag out"
                )

        # a known variant name sets what makes it, unless the flags already say otherwise
        known = VARIANTS.get(self.variant or "")
        if known is not None:
            if self.adapter is None:
                self.adapter = known.get("adapter")
            self.gate = self.gate or bool(known.get("gate"))
            trained_by = self.adapter if self.adapter in METHODS else _trained_by(self.adapter)
            method_clash = trained_by is not None and trained_by != known.get("adapter")
            if (
                bool(known.get("gate")) != self.gate
                or method_clash
                or (self.adapter and not known.get("adapter"))
            ):
                asked = (
                    f"{trained_by} ({self.adapter})"
                    if method_clash and trained_by != self.adapter
                    else self.adapter
                )

                def what(adapter: str | None, gate: bool) -> str:
                    return (f"the {adapter} adapter" if adapter else "no adapter") + (
                        " behind the SSI gate" if gate else ", no gate"
                    )

                raise LasaError(
                    f"--variant {self.variant} is {what(known.get('adapter'), bool(known.get('gate')))}, but the "
                    f"settings ask for {what(asked, self.gate)} (--adapter / --gate, or `adapter:` / "
                    "`gate:` in a preset's evaluate section, which applies to every variant); drop them, or give "
                    "a custom variant another name"
                )
        if not self.do_sample and (self.temperature != 1.0 or self.top_p != 1.0):
            given = " and ".join(
                f"--{k.replace('_', '-')} {getattr(self, k)}"
                for k in ("temperature", "top_p")
                if getattr(self, k) != 1.0
            )
            raise LasaError(
                f"{given} applies only to sampling, and decoding is greedy; add --do-sample, or drop it"
            )
        if self.backend == "vllm" and not _importable("vllm"):  # before the model load, not after
            raise LasaError(
                "--backend vllm (`backend: vllm` in a preset, as configs/paper/ set it) needs vLLM: pip install -e '.[vllm]' (GPU only)"
            )
        if self.gate and not self.conditioning_text.strip():
            raise LasaError(
                "--conditioning-text is empty: the gate would insert nothing for the prompts it flags (they "
                "would be counted as gated yet answered as ungated); keep the default or give the text"
            )
        self.langs = normalize_languages(nonempty_langs(self.langs))
        self.n = str(self.n).strip().lower()
        if self.n != "all" and (not self.n.isdigit() or not 1 <= int(self.n) <= MULTIJAIL_N):
            raise LasaError(f"--n must be 1..{MULTIJAIL_N} or 'all', got {self.n!r}")
        for name in ("max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise LasaError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.xstest_n is not None and not 1 <= self.xstest_n <= XSTEST_N:
            raise LasaError(f"--xstest-n must be in 1..{XSTEST_N}, got {self.xstest_n}")
        if not 0 <= self.xstest_mt_n <= XSTEST_SAFE_N:
            raise LasaError(
                f"--xstest-mt-n must be in 0..{XSTEST_SAFE_N} (safe prompts per language), got {self.xstest_mt_n}"
            )
        if self.xstest_mt_n and self.langs == ["en"]:
            raise LasaError(
                "--xstest-mt-n translates XSTest into the evaluated non-English languages, and --langs is en "
                "alone (XSTest itself is English: --xstest-n); add languages or drop --xstest-mt-n"
            )

    @property
    def n_prompts(self) -> int | None:
        return None if self.n == "all" else int(self.n)


@dataclass
class JudgeConfig:
    """Which judges count and how the ``llm`` judge is reached: one definition for ``lasa evaluate``
    and ``lasa judge-check``, validated when the config is built (before anything is generated)."""

    judges: list[str] = field(
        default_factory=lambda: ["pair", "lexicon"],
        metadata={"help": "Judges to run (pair, lexicon, embedding, llm, probe); each is cached per sample."},
    )
    default_judge: str = field(
        default=DEFAULT_JUDGE,
        metadata={
            "help": "The judge whose ASR is the headline "
            "(chosen by `lasa judge-check` agreement with human labels)."
        },
    )
    judge_model: str | None = field(
        default=None, metadata={"help": "llm judge: a local model (HF id, path or embedded name)."}
    )
    judge_url: str | None = field(
        default=None,
        metadata={
            "help": "llm judge: an OpenAI-compatible base URL "
            "(or $LASA_JUDGE_URL); the key comes from $LASA_JUDGE_API_KEY."
        },
    )
    judge_api_model: str | None = field(
        default=None, metadata={"help": "llm judge: the endpoint's model name (or $LASA_JUDGE_MODEL)."}
    )

    def __post_init__(self) -> None:
        if hasattr(super(), "__post_init__"):
            super().__post_init__()  # type: ignore[misc]
        import os

        bad = [j for j in [*self.judges, self.default_judge] if j not in JUDGES]
        if bad:
            raise LasaError(
                f"unknown judge(s) {', '.join(dict.fromkeys(bad))}; choose from {', '.join(JUDGES)}"
            )
        if len(set(self.judges)) != len(self.judges):
            raise LasaError(f"--judges lists a judge twice: {' '.join(self.judges)}")
        if "llm" in self.judges:
            url = self.judge_url or os.environ.get("LASA_JUDGE_URL")
            if not url and not self.judge_model:
                raise LasaError(
                    "the llm judge needs --judge-model (HF id, path or embedded name) or --judge-url / "
                    "$LASA_JUDGE_URL (an OpenAI-compatible endpoint)"
                )
            if url and not (self.judge_api_model or os.environ.get("LASA_JUDGE_MODEL")):
                raise LasaError(
                    "the llm judge endpoint needs a model name: --judge-api-model or $LASA_JUDGE_MODEL"
                )
            if url:
                check_endpoint_url(url)
            # a --judge-model path is checked by lasa.judges.llm.preflight, which every entry point
            # runs before generation (lasa.models sits above this config layer)


@dataclass
class EvaluateConfig(JudgeConfig, GenerateConfig):
    """``lasa evaluate``: generate what is missing, judge it, and measure over-refusal and utility."""

    stage: ClassVar[str] = "evaluate"

    utility: list[str] = field(
        default_factory=lambda: ["mgsm", "xcopa", "mmlu"],
        metadata={"help": f"Utility tasks ({', '.join(UTILITY_TASKS)}); pass 'none' to skip."},
    )
    mgsm_n: int = field(
        default=50, metadata={"ge": 1, "help": "MGSM problems per language (en zh th bn sw)."}
    )
    mgsm_max_new_tokens: int = field(
        default=384, metadata={"ge": 1, "help": "New tokens for MGSM step-by-step answers."}
    )
    xcopa_n: int = field(
        default=100, metadata={"ge": 1, "help": "XCOPA items per language (it sw th vi zh)."}
    )
    mmlu_n: int = field(
        default=200, metadata={"ge": 1, "help": "MMLU (English) questions, mixed over subjects."}
    )
    drift_n: int = field(
        default=50,
        metadata={
            "ge": 1,
            "help": "drift: FLORES sentences and benign chat prompts per language for the adapter's perplexity "
            "and KL from its base.",
        },
    )
    utility_batch_size: int = field(
        default=8, metadata={"ge": 1, "help": "Batch size for log-likelihood scoring."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()

        if self.utility in (["none"], ["None"], []):
            self.utility = []
        if len(self.utility) > 1 and any(t.lower() == "none" for t in self.utility):
            raise LasaError(
                f"--utility {' '.join(self.utility)}: 'none' means no utility task and cannot be combined "
                "with task names; pass either 'none' or the tasks"
            )
        dupes = sorted({t for t in self.utility if self.utility.count(t) > 1})
        if dupes:
            raise LasaError(f"--utility names {', '.join(dupes)} twice; name each task once")
        bad = [t for t in self.utility if t not in UTILITY_TASKS]
        if bad:
            raise LasaError(
                f"unknown utility task(s) {', '.join(bad)}; choose from {', '.join(UTILITY_TASKS)} (or 'none')"
            )
        if not self.judges:
            raise LasaError(f"--judges is empty; name at least one (e.g. --judges {self.default_judge})")
        if self.default_judge not in self.judges:
            raise LasaError(
                f"--default-judge {self.default_judge} must be one of --judges {' '.join(self.judges)}"
            )
        if {"mgsm", "xcopa", "mmlu", "drift"} & set(self.utility):
            from lasa.data import utility_items

            for task in ("mgsm", "xcopa", "mmlu", "drift"):
                n, have = getattr(self, f"{task}_n"), utility_items(task)
                if task in self.utility and have is not None and n > have:
                    raise LasaError(
                        f"--{task}-n {n}: the vendored {task} has {have} items"
                        f"{' per language' if task != 'mmlu' else ''}; ask for at most {have}"
                    )


@dataclass
class JudgeCheckConfig(JudgeConfig):
    """``lasa judge-check``: judges against human labels (the judge fields are evaluate's)."""

    stage: ClassVar[str] = "judge_check"

    labels: str | None = field(
        default=None,
        metadata={"help": "Labelled JSONL file (prompt, response, language, label in safe/unsafe/invalid)."},
    )
    judges: list[str] = field(
        default_factory=list,
        metadata={
            "help": f"Judges to check (default: --default-judge, {DEFAULT_JUDGE}); any of {', '.join(JUDGES)}."
        },
    )
    out: str | None = field(
        default=None,
        metadata={"help": "Write the full report (with per-sample predictions) to this JSON file."},
    )
    unseen_only: bool = field(
        default=False,
        metadata={
            "help": "Score only the labelled responses that lasa's learned judges never trained on (drops the "
            "rows of its labelled corpus, whose agreement is in-sample)."
        },
    )

    def __post_init__(self) -> None:
        if not self.judges:  # `lasa judge-check --default-judge lexicon` checks the lexicon
            self.judges = [self.default_judge]
        super().__post_init__()
        if not self.labels:
            raise LasaError("--labels FILE.jsonl is required (prompt, response, language, label per line)")
        if self.out is not None:  # checked now, not after minutes of judging
            out = Path(self.out)
            if not self.out.strip() or out.is_dir():
                raise LasaError(f"--out {self.out!r}: give a file path for the JSON report")
            parent = next((p for p in out.parents if p.exists()), Path("."))
            if not parent.is_dir():
                raise LasaError(f"--out {self.out}: {parent} is a file, not a directory")
            from lasa.config.base import writable_dir

            if not writable_dir(parent):
                raise LasaError(f"--out {self.out}: cannot write in {parent}; choose another path")
