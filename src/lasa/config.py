"""One config dataclass per stage; the YAML file and the ``--flags`` are the same keys.

The fields carry their help text in ``metadata["help"]`` (the TRL/transformers convention), so the
same class documents the Python API, ``lasa <stage> --help`` and the YAML presets in ``configs/``.
Precedence: dataclass default < YAML file (``--config``) < command-line flag.

A YAML file may hold keys for several stages at once (a ``lasa run`` preset): top-level keys apply
to every stage that has a field of that name, and a mapping named after a stage applies to that
stage only::

    model: default
    run_dir: runs/qwen05b
    locate:
      n_queries: 100
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml

from lasa.conditioning import CONDITIONING_TEXT
from lasa.data import MULTIJAIL_N, XSTEST_N, XSTEST_SAFE_N
from lasa.errors import LasaError

T = TypeVar("T", bound="StageConfig")


@dataclass
class StageConfig:
    """Fields every stage shares."""

    model: str = field(
        default="default",
        metadata={
            "help": "Model to use: an HF hub id or local directory, a .gguf file, or an embedded model name "
            "('default' = qwen2.5-coder-0.5b, or qwen2.5-coder-1.5b). See `lasa models list`."
        },
    )
    run_dir: str = field(
        default="runs/default",
        metadata={"help": "Run directory; each stage writes its artefacts to RUN_DIR/<stage>/."},
    )
    seed: int = field(default=42, metadata={"help": "Random seed for every sampling step of the stage."})
    device: str = field(
        default="auto",
        metadata={"help": "Torch device: 'auto' (cuda, then mps, then cpu), 'cpu', 'cuda:0', ..."},
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(
        default="auto",
        metadata={
            "help": "Model weights dtype; 'auto' = float32 on CPU (bf16 is slower there), bfloat16 on GPU."
        },
    )

    #: Stage name: the YAML section and the key in RUN/config.yaml.
    stage: ClassVar[str] = "stage"

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise LasaError(f"--seed must be >= 0, got {self.seed}")

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_yaml(cls: type[T], path: str | Path | None = None, **overrides: Any) -> T:
        """Python-API twin of ``--config FILE --key value``: YAML values, then keyword overrides."""
        values = load_yaml_for(cls, path) if path else {}
        unknown = set(overrides) - {f.name for f in config_fields(cls)}
        if unknown:
            raise LasaError(f"{cls.__name__} has no field(s) {', '.join(sorted(unknown))}")
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in config_fields(type(self))}


def config_fields(cls: type[StageConfig]) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def load_yaml_for(cls: type[StageConfig], path: str | Path) -> dict[str, Any]:
    """The keys of a (possibly multi-stage) YAML file that apply to the stage ``cls``."""
    path = Path(path)
    if not path.is_file():
        raise LasaError(f"config file not found: {path}")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise LasaError(f"{path}:{where} is not valid YAML; fix the file") from None
    if not isinstance(doc, dict):
        raise LasaError(f"{path} must hold a YAML mapping of config keys")
    known = {f.name for f in config_fields(cls)}
    all_stage_names = set(STAGE_CONFIGS) | set(STAGE_SECTIONS)
    all_known = {f.name for c in STAGE_CONFIGS.values() for f in config_fields(c)}
    stage = cls.stage
    values: dict[str, Any] = {}
    for key, value in doc.items():
        if key in all_stage_names:
            continue
        if key in known:
            values[key] = value
        elif key not in all_known:
            raise LasaError(f"{path}: unknown key {key!r}; see `lasa <stage> --help` for the valid keys")
    section = doc.get(stage) or {}
    if not isinstance(section, dict):
        raise LasaError(f"{path}: section {stage!r} must be a mapping")
    for key, value in section.items():
        if key not in known:
            raise LasaError(
                f"{path}: unknown key {stage}.{key}; see `lasa {stage} --help` for the valid keys"
            )
        values[key] = value
    return values


def _tidy_help(parser: Any) -> None:
    """Show each flag once, in dash style (``--run-dir``; ``--run_dir`` is still accepted), and give
    the ``--no-X`` switches HfArgumentParser adds their own help instead of the positive flag's."""
    for action in parser._actions:
        opts = action.option_strings
        if not opts:
            continue
        dashed = [o for o in opts if "_" not in o.lstrip("-")] or [opts[0].replace("_", "-")]
        action.option_strings = dashed  # parsing still knows every alias (parser._option_string_actions)
        long = next((o for o in dashed if o.startswith("--no-")), None)
        if long and action.const is False:
            positive = long.removeprefix("--no-")
            action.help = f"Turn --{positive} off."


def parse_stage_args(cls: type[T], argv: Sequence[str], prog: str, description: str | None = None) -> T:
    """Parse ``--config FILE`` and flags into ``cls`` (flags win), with a one-line error on bad input."""
    from trl import TrlParser

    parser = TrlParser(dataclass_types=[cls], prog=prog, description=description, allow_abbrev=False)
    parser.add_argument(
        "--config",
        metavar="FILE.yaml",
        help="YAML file with any of the keys below (top-level, or under a section named after the stage); "
        "flags override it.",
    )
    _tidy_help(parser)
    argv = list(argv)
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise LasaError("--config needs a file path")
        parser.set_defaults_with_config(**load_yaml_for(cls, argv[i + 1]))
        del argv[i : i + 2]
    try:
        cfg, *_, unknown = parser.parse_args_into_dataclasses(
            args=argv, look_for_args_file=False, return_remaining_strings=True
        )
    except TypeError as err:  # dataclass __init__ rejecting a YAML value of the wrong shape
        raise LasaError(str(err)) from None
    if unknown:  # HfArgumentParser would raise a ValueError with a traceback
        raise LasaError(f"unrecognized arguments: {' '.join(unknown)} (see `{prog} --help`)")
    return cfg


# -- stage configs ---------------------------------------------------------------------------


@dataclass
class LocateConfig(StageConfig):
    """``lasa locate``: find the semantic bottleneck layer."""

    stage: ClassVar[str] = "locate"

    langs: list[str] = field(
        default_factory=lambda: ["all"],
        metadata={
            "help": "Languages of the parallel prompts (ISO codes from: en zh it vi ar ko th bn sw jv; or 'all')."
        },
    )
    n_queries: int = field(
        default=100,
        metadata={
            "help": "Parallel queries (meanings); each appears once per language. With source=mixed, "
            "half come from MultiJail and half from SIB-200."
        },
    )
    source: Literal["mixed", "multijail", "sib200"] = field(
        default="mixed",
        metadata={
            "help": "Parallel data: MultiJail (harmful requests), SIB-200/FLORES (neutral statements), or both."
        },
    )
    pooling: Literal["last", "mean"] = field(
        default="last",
        metadata={
            "help": "Prompt representation: last non-padding token, or mean over real tokens "
            "excluding the first (attention-sink) token."
        },
    )
    chat_template: bool = field(
        default=False,
        metadata={
            "help": "Wrap each prompt in the model's chat template (user turn + generation prompt) "
            "instead of reading the raw text."
        },
    )
    batch_size: int = field(default=16, metadata={"help": "Prompts per forward pass."})
    max_length: int = field(default=256, metadata={"help": "Truncate prompts to this many tokens."})
    n_bootstrap: int = field(
        default=1000,
        metadata={"help": "Bootstrap resamples over queries for the 95 percent interval of the score."},
    )
    tsne_layers: list[int] = field(
        default_factory=list,
        metadata={
            "help": "Layers drawn in tsne.png (default: an early layer, the bottleneck and the last layer)."
        },
    )
    plots: bool = field(default=True, metadata={"help": "Draw layer_scores.png and tsne.png."})
    force: bool = field(
        default=False,
        metadata={"help": "Re-extract hidden states even if RUN/locate/states.safetensors matches."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        from lasa.data import normalize_languages

        self.langs = normalize_languages(self.langs)
        if len(self.langs) < 2:
            raise LasaError("--langs needs at least two languages to separate meaning from language")
        if self.n_queries < 4:
            raise LasaError(f"--n-queries must be >= 4, got {self.n_queries}")
        if self.source not in ("mixed", "multijail", "sib200"):
            raise LasaError(f"--source must be mixed, multijail or sib200, got {self.source!r}")
        if self.pooling not in ("last", "mean"):
            raise LasaError(f"--pooling must be last or mean, got {self.pooling!r}")
        if self.batch_size < 1 or self.max_length < 2 or self.n_bootstrap < 0:
            raise LasaError("--batch-size >= 1, --max-length >= 2 and --n-bootstrap >= 0 are required")


@dataclass
class InterpretConfig(StageConfig):
    """``lasa interpret``: train and evaluate the Safety Semantic Interpreter (SSI)."""

    stage: ClassVar[str] = "interpret"

    layer: int | None = field(
        default=None,
        metadata={
            "help": "Layer the SSI reads (hidden_states index, 1..L). Default: RUN/locate/bottleneck.json."
        },
    )
    train_langs: list[str] = field(
        default_factory=lambda: ["en", "zh"],
        metadata={
            "help": "Training languages (harmful data exists outside MultiJail for: en zh ar bn). "
            "Every other language is unseen."
        },
    )
    hard_negatives: bool = field(
        default=True,
        metadata={
            "help": "Add lasa's safe-but-scary prompts (en, zh; data/hard_negatives) to the benign training rows, "
            "so that scary words alone do not read as harm. XSTest stays the test."
        },
    )
    calibration: Literal["flores", "none"] = field(
        default="flores",
        metadata={
            "help": "Per-language calibration without harm labels: 'flores' raises each unseen language's "
            "threshold to the 95th percentile of the SSI's logit on its own FLORES sentences (never lowers it), "
            "weighted by a language-ID head on the same state (no language label needed at inference); "
            "'none' = one threshold for all languages."
        },
    )
    calibration_n: int = field(
        default=100,
        metadata={"help": "FLORES sentences per language for --calibration flores (never trained on)."},
    )
    xstest_mt_n: int = field(
        default=0,
        metadata={
            "help": "Also report the SSI's FPR / TPR on the first N safe and N unsafe prompts of lasa's machine-"
            "translated XSTest in every non-English language (0 = skip)."
        },
    )
    cap: int = field(
        default=400,
        metadata={
            "help": "At most this many training prompts per (language, label, form) cell, so that neither "
            "class owns a surface form (question / instruction / statement)."
        },
    )
    val_fraction: float = field(
        default=0.15,
        metadata={
            "help": "Share of training items held out for "
            "early stopping and threshold calibration (translations stay together)."
        },
    )
    hidden: int | None = field(default=None, metadata={"help": "SSI hidden width (default: d_model)."})
    dropout: float = field(default=0.1, metadata={"help": "SSI dropout."})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate."})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay."})
    train_batch_size: int = field(default=64, metadata={"help": "SSI training batch size."})
    epochs: int = field(default=20, metadata={"help": "Maximum training epochs."})
    patience: int = field(
        default=3, metadata={"help": "Early stopping: epochs without a lower validation loss."}
    )
    grad_clip: float = field(default=1.0, metadata={"help": "Gradient-norm clip."})
    threshold_range: list[float] = field(
        default_factory=lambda: [0.30, 0.70],
        metadata={"help": "Grid (step 0.01) searched on validation for the decision threshold."},
    )
    eval_n_harmful: int | None = field(
        default=None,
        metadata={"help": "MultiJail prompts per language for evaluation (first N ids; default all 315)."},
    )
    eval_n_benign: int = field(
        default=300, metadata={"help": "Benign evaluation prompts per language (at most)."}
    )
    sweep: bool = field(
        default=False,
        metadata={
            "help": "Also train the same SSI at every k-th layer "
            "(layer_sweep.json/.png): does the bottleneck transfer best?"
        },
    )
    sweep_every: int = field(default=2, metadata={"help": "k for --sweep."})
    sweep_seeds: int = field(
        default=3,
        metadata={
            "help": "Train the sweep's SSI with this many seeds per layer and report mean and spread: "
            "one seed's early stopping moves a layer's AUROC by a few points."
        },
    )
    pooling: Literal["last", "mean"] = field(
        default="last", metadata={"help": "Token pooling (last = the paper's)."}
    )
    chat_template: bool = field(
        default=False,
        metadata={
            "help": "Read the chat-templated prompt (its last token is the assistant header) instead of the raw "
            "prompt (the paper's). A chat-format SSI is read off the generation prefill at no extra cost; a raw "
            "one costs the gate a pass over layers 1..L*."
        },
    )
    out_name: str = field(
        default="ssi",
        metadata={"help": "Output folder RUN/<out_name>/ (e.g. ssi_chat to keep both formats side by side)."},
    )
    batch_size: int = field(default=16, metadata={"help": "Prompts per forward pass when extracting states."})
    max_length: int = field(
        default=256, metadata={"help": "Truncate prompts to this many tokens (keeping the end)."}
    )
    force: bool = field(
        default=False, metadata={"help": "Re-extract states even if RUN/ssi/states.safetensors matches."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        from lasa.data.safety import validate_train_langs

        self.train_langs = validate_train_langs(self.train_langs)
        if not 0 < self.val_fraction < 0.5:
            raise LasaError(f"--val-fraction must be in (0, 0.5), got {self.val_fraction}")
        if len(self.threshold_range) != 2 or not 0 < self.threshold_range[0] <= self.threshold_range[1] < 1:
            raise LasaError("--threshold-range needs two numbers 0 < lo <= hi < 1")
        if self.calibration == "flores" and self.calibration_n < 10:
            raise LasaError(
                f"--calibration-n must be >= 10 (FLORES sentences per language), got {self.calibration_n}"
            )
        if self.xstest_mt_n < 0:
            raise LasaError(f"--xstest-mt-n must be >= 0, got {self.xstest_mt_n}")
        if min(self.sweep_every, self.sweep_seeds, self.epochs, self.cap, self.eval_n_benign) < 1:
            raise LasaError("--sweep-every, --sweep-seeds, --epochs, --cap and --eval-n-benign must be >= 1")
        if self.eval_n_harmful is not None and not 1 <= self.eval_n_harmful <= MULTIJAIL_N:
            raise LasaError(f"--eval-n-harmful must be in 1..{MULTIJAIL_N}, got {self.eval_n_harmful}")
        if self.layer is not None and self.layer < 1:
            raise LasaError(
                f"--layer {self.layer} is out of range; layers are 1..num_layers (0 is the embeddings)"
            )


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
        metadata={"help": "Override the SSI's validation-calibrated threshold (p(harmful) above it gates)."},
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
            "a LoRA (GPU; pip install 'lasa[vllm]'), SSI scores from a truncated HF pass."
        },
    )
    do_sample: bool = field(default=False, metadata={"help": "Sample instead of greedy decoding."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (with --do-sample)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling (with --do-sample)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        from lasa.data import normalize_languages

        # a known variant name sets what makes it, unless the flags already say otherwise
        known = VARIANTS.get(self.variant or "")
        if known is not None:
            if self.adapter is None:
                self.adapter = known.get("adapter")
            self.gate = self.gate or bool(known.get("gate"))
            method_clash = self.adapter in ("lasa", "kto", "sft") and self.adapter != known.get("adapter")
            if (
                bool(known.get("gate")) != self.gate
                or method_clash
                or (self.adapter and not known.get("adapter"))
            ):
                raise LasaError(
                    f"--variant {self.variant} means {known or 'no adapter and no gate'}; it conflicts with "
                    f"--adapter {self.adapter} / --gate {self.gate} (give a custom variant another name)"
                )
        self.langs = normalize_languages(self.langs)
        self.n = str(self.n).strip().lower()
        if self.n != "all" and (not self.n.isdigit() or not 1 <= int(self.n) <= MULTIJAIL_N):
            raise LasaError(f"--n must be 1..{MULTIJAIL_N} or 'all', got {self.n!r}")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise LasaError("--max-new-tokens and --batch-size must be >= 1")
        if self.xstest_n is not None and not 1 <= self.xstest_n <= XSTEST_N:
            raise LasaError(f"--xstest-n must be in 1..{XSTEST_N}, got {self.xstest_n}")
        if not 0 <= self.xstest_mt_n <= XSTEST_SAFE_N:
            raise LasaError(
                f"--xstest-mt-n must be in 0..{XSTEST_SAFE_N} (safe prompts per language), got {self.xstest_mt_n}"
            )

    @property
    def n_prompts(self) -> int | None:
        return None if self.n == "all" else int(self.n)


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

#: Judges by name -> "module:Class", built lazily by ``lasa.judges.get_judge`` (the e5 judges load a
#: model). The table lives here so that configs validate judge names without importing the judges.
JUDGES: dict[str, str] = {
    "pair": "lasa.judges.pair:PairJudge",
    "lexicon": "lasa.judges.lexicon:LexiconJudge",
    "embedding": "lasa.judges.embedding:EmbeddingJudge",
    "llm": "lasa.judges.llm:LLMJudge",
}
#: The judge every ASR is counted with unless told otherwise; chosen by grouped-split validation on
#: lasa's labelled corpus (docs/judge_validation.md).
DEFAULT_JUDGE = "pair"

#: Utility tasks ``lasa evaluate`` knows (lasa.utility implements them).
UTILITY_TASKS = ("mgsm", "xcopa", "mmlu", "drift")


@dataclass
class JudgeConfig:
    """Which judges count and how the ``llm`` judge is reached: one definition for ``lasa evaluate``
    and ``lasa judge-check``, validated when the config is built (before anything is generated)."""

    judges: list[str] = field(
        default_factory=lambda: ["pair", "lexicon"],
        metadata={"help": "Judges to run (pair, lexicon, embedding, llm); each is cached per sample."},
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


@dataclass
class EvaluateConfig(JudgeConfig, GenerateConfig):
    """``lasa evaluate``: generate what is missing, judge it, and measure over-refusal and utility."""

    stage: ClassVar[str] = "evaluate"

    utility: list[str] = field(
        default_factory=lambda: ["mgsm", "xcopa", "mmlu"],
        metadata={"help": "Utility tasks (mgsm, xcopa, mmlu); pass 'none' to skip."},
    )
    mgsm_n: int = field(default=50, metadata={"help": "MGSM problems per language (en zh th bn sw)."})
    mgsm_max_new_tokens: int = field(
        default=384, metadata={"help": "New tokens for MGSM step-by-step answers."}
    )
    xcopa_n: int = field(default=100, metadata={"help": "XCOPA items per language (it sw th vi zh)."})
    mmlu_n: int = field(default=200, metadata={"help": "MMLU (English) questions, mixed over subjects."})
    drift_n: int = field(
        default=50,
        metadata={
            "help": "drift: FLORES sentences and benign chat prompts per language for the adapter's perplexity "
            "and KL from its base."
        },
    )
    utility_batch_size: int = field(default=8, metadata={"help": "Batch size for log-likelihood scoring."})

    def __post_init__(self) -> None:
        super().__post_init__()

        if self.utility in (["none"], ["None"], []):
            self.utility = []
        bad = [t for t in self.utility if t not in UTILITY_TASKS]
        if bad:
            raise LasaError(
                f"unknown utility task(s) {', '.join(bad)}; choose from {', '.join(UTILITY_TASKS)} (or 'none')"
            )
        if self.default_judge not in self.judges:
            raise LasaError(
                f"--default-judge {self.default_judge} must be one of --judges {' '.join(self.judges)}"
            )


@dataclass
class AlignConfig(StageConfig):
    """``lasa align``: semantic-conditioned KTO (``lasa``) or the ``kto`` / ``sft`` baselines, with PEFT LoRA."""

    stage: ClassVar[str] = "align"

    method: Literal["lasa", "kto", "sft"] = field(
        default="lasa",
        metadata={
            "help": "lasa = KTO with the conditioning transform; kto = the same rows, never "
            "conditioned; sft = supervised fine-tuning on the desirable completions."
        },
    )
    data: str | None = field(
        default=None,
        metadata={
            "help": "Your own rows (JSONL/JSON): paired prompt, chosen, "
            "rejected, source, or unpaired prompt, completion, label. Default: lasa's recipe."
        },
    )
    train_langs: list[str] = field(
        default_factory=lambda: ["en", "zh"],
        metadata={"help": "Languages of the safety rows (never MultiJail)."},
    )
    rows: Literal["template", "on_policy"] = field(
        default="template",
        metadata={
            "help": "Completions of the built-in recipe: 'template' (a stock refusal / compliant opening per "
            "language) or 'on_policy' (the model's own answers: its refusal under the conditioning text is "
            "desirable, its compliance without it undesirable; on benign prompts its own answer is desirable and "
            "a needless refusal undesirable; the judge decides which is which, templates fill the gaps)."
        },
    )
    on_policy_max_new_tokens: int = field(
        default=96, metadata={"help": "--rows on_policy: new tokens per generated completion."}
    )
    on_policy_judge: str = field(
        default="pair", metadata={"help": "--rows on_policy: the judge that sorts refusals from compliance."}
    )
    n_safety: int = field(
        default=64, metadata={"help": "Harmful prompts; each gives a desirable and an undesirable row."}
    )
    n_general: int = field(
        default=32, metadata={"help": "Benign prompts; each gives a desirable and an undesirable row."}
    )
    rho_safety: float = field(default=0.5, metadata={"help": "P(conditioned) for safety rows (lasa only)."})
    rho_general: float = field(
        default=0.05, metadata={"help": "P(conditioned) for general rows (lasa only)."}
    )
    conditioning_text: str = field(
        default=CONDITIONING_TEXT,
        metadata={"help": "Text placed at the start of the assistant turn of conditioned rows."},
    )
    beta: float = field(default=0.1, metadata={"help": "KTO beta."})
    desirable_weight: float = field(default=1.0, metadata={"help": "KTO desirable weight."})
    undesirable_weight: float = field(default=1.0, metadata={"help": "KTO undesirable weight."})
    learning_rate: float = field(
        default=2e-4, metadata={"help": "Learning rate (LoRA; the paper's full fine-tuning used 1e-6)."}
    )
    epochs: float = field(default=1.0, metadata={"help": "Epochs over the rows."})
    max_steps: int = field(default=0, metadata={"help": "Stop after this many optimizer steps (0 = epochs)."})
    save_adapter_at: list[int] = field(
        default_factory=list,
        metadata={
            "help": "Also save the adapter after these optimizer steps, to RUN/align/<method>/checkpoints/"
            "<method>-step<N>/ (a dose-response in one training run; evaluate each with --adapter DIR)."
        },
    )
    batch_size: int = field(
        default=4, metadata={"help": "Per-device batch (KTO's KL pairs are built inside it; >= 2)."}
    )
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Gradient accumulation."})
    lr_scheduler: str = field(default="linear", metadata={"help": "transformers LR scheduler type."})
    warmup_steps: int = field(default=2, metadata={"help": "Warm-up steps."})
    max_length: int = field(default=384, metadata={"help": "Max tokens of prompt + completion."})
    lora: bool = field(default=True, metadata={"help": "Train a LoRA adapter (else full fine-tuning)."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"],
        metadata={"help": "LoRA target modules ('all-linear' or names)."},
    )
    lora_layers: Literal["above_bottleneck", "all"] = field(
        default="above_bottleneck",
        metadata={
            "help": "Adapt only the blocks above the bottleneck (keeps the "
            "SSI's input unchanged, so the gate reads the adapted model's own "
            "prefill) or all blocks."
        },
    )
    bottleneck_layer: int | None = field(
        default=None, metadata={"help": "Override RUN/locate/bottleneck.json."}
    )
    precompute_ref_log_probs: bool = field(
        default=False, metadata={"help": "TRL: reference log-probs once before training."}
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Trade compute for memory (off on CPU when memory allows)."}
    )
    bf16: bool = field(default=True, metadata={"help": "bf16 on GPU (ignored on CPU, where fp32 is faster)."})
    dry_run: bool = field(default=False, metadata={"help": "Write rows.jsonl and stop before training."})

    def __post_init__(self) -> None:
        super().__post_init__()
        from lasa.data.safety import validate_train_langs

        self.train_langs = validate_train_langs(self.train_langs)
        if self.method not in ("lasa", "kto", "sft"):
            raise LasaError(f"--method must be lasa, kto or sft, got {self.method!r}")
        if self.batch_size < 2 and self.method != "sft":
            raise LasaError("--batch-size must be >= 2 for KTO (its KL pairs are built within a batch)")
        for name in ("rho_safety", "rho_general"):
            if not 0 <= getattr(self, name) <= 1:
                raise LasaError(f"--{name.replace('_', '-')} must be in [0, 1]")
        if self.n_safety < 1 or self.n_general < 0:
            raise LasaError("--n-safety must be >= 1 and --n-general >= 0")
        if any(n < 1 for n in self.save_adapter_at):
            raise LasaError("--save-adapter-at takes optimizer steps >= 1")
        if self.rows == "on_policy":
            if self.data:
                raise LasaError(
                    "--rows on_policy builds rows from the recipe; it does not apply to --data FILE"
                )
            if self.on_policy_judge not in JUDGES or self.on_policy_judge == "llm":
                raise LasaError(
                    f"--on-policy-judge must be one of {', '.join(j for j in JUDGES if j != 'llm')}, "
                    f"got {self.on_policy_judge!r}"
                )


@dataclass
class RunConfig(StageConfig):
    """``lasa run``: every stage on one run directory (stage settings come from --config sections)."""

    stage: ClassVar[str] = "run"

    variants: list[str] = field(
        default_factory=lambda: ["base", "base+gate", "kto", "lasa+gate"],
        metadata={"help": "Variants to evaluate: base, base+gate, kto, kto+gate, sft, lasa, lasa+gate."},
    )
    force: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Stages to redo from scratch (locate, interpret, align, align:lasa, evaluate, "
            "evaluate:base, ..., all); other stages are skipped when up to date."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad:
            raise LasaError(f"unknown variant(s) {', '.join(bad)}; choose from {', '.join(VARIANTS)}")
        if len(set(self.variants)) != len(self.variants):
            raise LasaError("--variants lists a variant twice")


@dataclass
class JudgeCheckConfig(JudgeConfig):
    """``lasa judge-check``: judges against human labels (the judge fields are evaluate's)."""

    stage: ClassVar[str] = "judge_check"

    labels: str | None = field(
        default=None,
        metadata={"help": "Labelled JSONL file (prompt, response, language, label in safe/unsafe/invalid)."},
    )
    judges: list[str] = field(
        default_factory=lambda: [DEFAULT_JUDGE],
        metadata={
            "help": f"Judges to check (default: the default judge, {DEFAULT_JUDGE}); any of {', '.join(JUDGES)}."
        },
    )
    out: str | None = field(
        default=None,
        metadata={"help": "Write the full report (with per-sample predictions) to this JSON file."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.labels:
            raise LasaError("--labels FILE.jsonl is required (prompt, response, language, label per line)")


@dataclass
class ReportConfig:
    """``lasa report``: rebuild RUN/report.{md,html} from the artefacts on disk."""

    stage: ClassVar[str] = "report"

    run_dir: str | None = field(default=None, metadata={"help": "Run directory (required)."})
    variants: list[str] | None = field(
        default=None, metadata={"help": "Variant order in the tables (default: all found)."}
    )

    def __post_init__(self) -> None:
        if not self.run_dir:
            raise LasaError("--run-dir is required (the run directory to report on)")
        if not Path(self.run_dir).is_dir():
            raise LasaError(f"run directory not found: {self.run_dir}")


STAGE_CONFIGS: dict[str, type[StageConfig]] = {
    "locate": LocateConfig,
    "interpret": InterpretConfig,
    "align": AlignConfig,
    "generate": GenerateConfig,
    "evaluate": EvaluateConfig,
    "run": RunConfig,
}
#: Section names a YAML preset may hold (a stage ignores the others' sections).
STAGE_SECTIONS = ("locate", "interpret", "align", "generate", "evaluate", "report", "run", "judge_check")
