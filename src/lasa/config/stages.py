"""The configs of locate, interpret, align, run and report (generation and evaluation: :mod:`.evaluation`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from lasa.conditioning import CONDITIONING_TEXT
from lasa.config.base import StageConfig, nonempty_langs, safe_name
from lasa.config.registry import JUDGES, VARIANTS
from lasa.data import MULTIJAIL_N
from lasa.errors import LasaError

logger = logging.getLogger(__name__)


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
    batch_size: int = field(default=16, metadata={"ge": 1, "help": "Prompts per forward pass."})
    max_length: int = field(default=256, metadata={"ge": 2, "help": "Truncate prompts to this many tokens."})
    n_bootstrap: int = field(
        default=1000,
        # 100,000 resamples of 500 queries x 24 layers is already minutes; a typo's 1e9 ran out of memory
        metadata={
            "ge": 0,
            "le": 100_000,
            "help": "Bootstrap resamples over queries for the 95 percent interval of the score.",
        },
    )
    tsne_layers: list[int] = field(
        default_factory=list,
        metadata={
            "ge": 1,
            "help": "Layers drawn in tsne.png (default: an early layer, the bottleneck and the last layer).",
        },
    )
    plots: bool = field(default=True, metadata={"help": "Draw layer_scores.png and tsne.png."})
    force: bool = field(
        default=False,
        metadata={"help": "Re-extract hidden states even if RUN/locate/states.safetensors matches."},
    )

    def unused_settings(self) -> frozenset[str]:
        """Settings these options do not read (warned about when given as flags)."""
        return frozenset({"tsne_layers"} if not self.plots else set())

    def __post_init__(self) -> None:
        super().__post_init__()
        from lasa.data import normalize_languages

        self.langs = normalize_languages(nonempty_langs(self.langs))
        if len(self.langs) < 2:
            raise LasaError("--langs needs at least two languages to separate meaning from language")
        if self.n_queries < 4:
            raise LasaError(f"--n-queries must be >= 4, got {self.n_queries}")
        if self.source not in ("mixed", "multijail", "sib200"):
            raise LasaError(f"--source must be mixed, multijail or sib200, got {self.source!r}")
        if self.pooling not in ("last", "mean"):
            raise LasaError(f"--pooling must be last or mean, got {self.pooling!r}")


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
    hidden: int | None = field(
        default=None, metadata={"ge": 1, "help": "SSI hidden width (default: d_model)."}
    )
    dropout: float = field(default=0.1, metadata={"ge": 0, "lt": 1, "help": "SSI dropout."})
    lr: float = field(default=1e-3, metadata={"gt": 0, "help": "AdamW learning rate."})
    weight_decay: float = field(default=1e-4, metadata={"ge": 0, "help": "AdamW weight decay."})
    train_batch_size: int = field(default=64, metadata={"ge": 1, "help": "SSI training batch size."})
    epochs: int = field(default=20, metadata={"ge": 1, "help": "Maximum training epochs."})
    patience: int = field(
        default=3, metadata={"ge": 0, "help": "Early stopping: epochs without a lower validation loss."}
    )
    grad_clip: float = field(default=1.0, metadata={"gt": 0, "help": "Gradient-norm clip."})
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
    sweep_every: int = field(default=2, metadata={"ge": 1, "help": "k for --sweep."})
    sweep_seeds: int = field(
        default=3,
        metadata={
            "ge": 1,
            "help": "Train the sweep's SSI with this many seeds per layer and report mean and spread: "
            "one seed's early stopping moves a layer's AUROC by a few points.",
        },
    )
    spread_seeds: int = field(
        default=5,
        metadata={
            "help": "Also re-split and retrain the SSI with this many seeds (the first is the saved SSI) and report "
            "the spread of its threshold, XSTest false-positive rate and AUROC (metrics.json seed_spread): on a "
            "small pool one seed's figure can be a lucky draw. 1 = off."
        },
    )
    ensemble: int = field(
        default=1,
        metadata={
            "ge": 1,
            "le": 64,
            "key_omits_default": True,
            "help": "Gate with the mean decision margin of this many SSIs, each trained on its own train / "
            "validation split (seeds seed..seed+N-1) at its own validated threshold, instead of one (the "
            "paper's). On the quick preset one SSI's XSTest safe-prompt FPR ranges 0.12-0.58 over 15 seeds, "
            "ensembles of 5 range 0.23-0.32: the gate stops hinging on the seed (scripts/ssi_ensemble.py). "
            "Costs N small fits; scoring stays one pass.",
        },
    )
    pooling: Literal["last", "mean", "user_last", "user_mean"] = field(
        default="last",
        metadata={
            "help": "Token pooling (last = the paper's). user_last (with --chat-template): the last token of the "
            "user's message inside the chat prefill, which generation computes anyway, so the gate needs no "
            "extra pass; user_mean: the mean over the user's own tokens there, likewise free."
        },
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
    batch_size: int = field(
        default=16, metadata={"ge": 1, "help": "Prompts per forward pass when extracting states."}
    )
    max_length: int = field(  # a negative one dropped the first tokens of every prompt (s[-n:])
        default=256, metadata={"ge": 2, "help": "Truncate prompts to this many tokens (keeping the end)."}
    )
    force: bool = field(
        default=False, metadata={"help": "Re-extract states even if RUN/ssi/states.safetensors matches."}
    )

    def unused_settings(self) -> frozenset[str]:
        """Settings these options do not read (warned about when given as flags)."""
        unused = set() if self.sweep else {"sweep_every", "sweep_seeds"}
        if self.calibration == "none":
            unused.add("calibration_n")
        return frozenset(unused)

    @property
    def record_name(self) -> str:
        """The stage's entry in ``RUN/config.yaml`` (one per SSI folder)."""
        return "interpret" if self.out_name == "ssi" else f"interpret:{self.out_name}"

    def __post_init__(self) -> None:
        super().__post_init__()
        from lasa.data.safety import validate_train_langs

        self.train_langs = validate_train_langs(self.train_langs)
        safe_name(self.out_name, "--out-name")  # RUN/<out_name>/ is what a forced rerun deletes
        if not 0 < self.val_fraction < 0.5:
            raise LasaError(f"--val-fraction must be in (0, 0.5), got {self.val_fraction}")
        if len(self.threshold_range) != 2 or not 0 < self.threshold_range[0] <= self.threshold_range[1] < 1:
            raise LasaError("--threshold-range needs two numbers 0 < lo <= hi < 1")
        if self.calibration == "flores" and self.calibration_n < 10:
            raise LasaError(
                f"--calibration-n must be >= 10 (FLORES sentences per language), got {self.calibration_n}"
            )
        from lasa.data import XSTEST_SAFE_N

        if not 0 <= self.xstest_mt_n <= XSTEST_SAFE_N:  # it was capped without a word
            raise LasaError(
                f"--xstest-mt-n must be in 0..{XSTEST_SAFE_N} (safe prompts per language), got {self.xstest_mt_n}"
            )
        for name in ("sweep_every", "sweep_seeds", "spread_seeds", "epochs", "cap", "eval_n_benign"):
            if getattr(self, name) < 1:  # the flag at fault, not a list of six
                raise LasaError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.eval_n_harmful is not None and not 1 <= self.eval_n_harmful <= MULTIJAIL_N:
            raise LasaError(f"--eval-n-harmful must be in 1..{MULTIJAIL_N}, got {self.eval_n_harmful}")
        if self.layer is not None and self.layer < 1:
            raise LasaError(
                f"--layer {self.layer} is out of range; layers are 1..num_layers (0 is the embeddings)"
            )
        if self.pooling not in ("last", "mean", "user_last", "user_mean"):
            raise LasaError(f"--pooling must be last, mean, user_last or user_mean, got {self.pooling!r}")
        if self.pooling in ("user_last", "user_mean") and not self.chat_template:
            raise LasaError(
                f"--pooling {self.pooling} reads the user's turn inside the chat template; add --chat-template"
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
        default=96, metadata={"ge": 1, "help": "--rows on_policy: new tokens per generated completion."}
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
    n_hard_negative: int = field(
        default=0,
        metadata={
            "help": "Safe-but-scary prompts (lasa's hard negatives, training languages): a refusal is an "
            "undesirable row; with --rows on_policy the model's own non-refusing answer is a desirable one."
        },
    )
    rho_safety: float = field(default=0.5, metadata={"help": "P(conditioned) for safety rows (lasa only)."})
    rho_general: float = field(
        default=0.05, metadata={"help": "P(conditioned) for general rows (lasa only)."}
    )
    conditioning_text: str = field(
        default=CONDITIONING_TEXT,
        metadata={"help": "Text placed at the start of the assistant turn of conditioned rows."},
    )
    beta: float = field(default=0.1, metadata={"gt": 0, "help": "KTO beta."})
    desirable_weight: float = field(default=1.0, metadata={"ge": 0, "help": "KTO desirable weight."})
    undesirable_weight: float = field(default=1.0, metadata={"ge": 0, "help": "KTO undesirable weight."})
    learning_rate: float = field(
        default=2e-4,
        metadata={"gt": 0, "help": "Learning rate (LoRA; the paper's full fine-tuning used 1e-6)."},
    )
    epochs: float = field(default=1.0, metadata={"gt": 0, "help": "Epochs over the rows."})
    max_steps: int = field(
        default=0, metadata={"ge": 0, "help": "Stop after this many optimizer steps (0 = epochs)."}
    )
    save_adapter_at: list[int] = field(
        default_factory=list,
        metadata={
            "help": "Also save the adapter after these optimizer steps, to RUN/align/<method>/checkpoints/"
            "<method>-step<N>/ (a dose-response in one training run; evaluate each with --adapter DIR)."
        },
    )
    batch_size: int = field(
        default=4, metadata={"ge": 1, "help": "Per-device batch (KTO's KL pairs are built inside it; >= 2)."}
    )
    gradient_accumulation_steps: int = field(default=1, metadata={"ge": 1, "help": "Gradient accumulation."})
    lr_scheduler: str = field(default="linear", metadata={"help": "transformers LR scheduler type."})
    warmup_steps: int = field(default=2, metadata={"ge": 0, "help": "Warm-up steps."})
    max_length: int = field(default=384, metadata={"ge": 2, "help": "Max tokens of prompt + completion."})
    lora: bool = field(default=True, metadata={"help": "Train a LoRA adapter (else full fine-tuning)."})
    lora_r: int = field(default=8, metadata={"ge": 1, "help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"gt": 0, "help": "LoRA alpha."})
    lora_dropout: float = field(default=0.0, metadata={"ge": 0, "lt": 1, "help": "LoRA dropout."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"],
        metadata={"help": "LoRA target modules ('all-linear' or names)."},
    )
    lora_layers: Literal["above_bottleneck", "all"] = field(
        default="above_bottleneck",
        metadata={
            "help": "Train only the blocks above the bottleneck (keeps the "
            "SSI's input unchanged, so the gate reads the adapted model's own "
            "prefill) or all blocks. LoRA adapts them; with --no-lora the "
            "embeddings and blocks up to L* are frozen."
        },
    )
    bottleneck_layer: int | None = field(
        default=None, metadata={"ge": 1, "help": "Override RUN/locate/bottleneck.json."}
    )
    precompute_ref_log_probs: bool = field(
        default=False,
        metadata={
            "help": "TRL: reference log-probs once before training. Always on with --no-lora (full "
            "fine-tuning), where the alternative is a frozen copy of the whole model in memory."
        },
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Trade compute for memory (off on CPU when memory allows)."}
    )
    bf16: bool = field(default=True, metadata={"help": "bf16 on GPU (ignored on CPU, where fp32 is faster)."})
    dry_run: bool = field(
        default=False,
        metadata={
            "help": "Write the training rows and their summary to RUN/align/<method>/dry_run/ and stop "
            "before training (a trained adapter of the method and its summary are left as they are)."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        from lasa.data.safety import validate_train_langs

        self.train_langs = validate_train_langs(self.train_langs)
        if self.data is not None and not self.data.strip():
            raise LasaError("--data is empty; give a JSONL / JSON file, or leave it out for lasa's recipe")
        if self.method not in ("lasa", "kto", "sft"):
            raise LasaError(f"--method must be lasa, kto or sft, got {self.method!r}")
        if not self.lora and self.lora_layers == "all":
            logger.warning(
                "--no-lora --lora-layers all trains every weight, the blocks up to the bottleneck included: "
                "the SSI would read a state the training moved, so `lasa evaluate` will refuse to gate this "
                "checkpoint (the default, above_bottleneck, freezes the blocks up to L*)"
            )
        if self.batch_size < 2 and self.method != "sft":
            raise LasaError("--batch-size must be >= 2 for KTO (its KL pairs are built within a batch)")
        for name in ("rho_safety", "rho_general"):
            if not 0 <= getattr(self, name) <= 1:
                raise LasaError(f"--{name.replace('_', '-')} must be in [0, 1]")
        if self.n_safety < 1:
            raise LasaError(f"--n-safety must be >= 1, got {self.n_safety}")
        for name in ("n_general", "n_hard_negative"):
            if getattr(self, name) < 0:
                raise LasaError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if any(n < 1 for n in self.save_adapter_at):
            raise LasaError("--save-adapter-at takes optimizer steps >= 1")
        if self.max_steps == 1 and self.warmup_steps >= 1:
            # a linear warmup's first step has learning rate 0: the one step changes nothing, the
            # adapter's B matrices stay at their zero initialisation and it is the base model
            raise LasaError(
                f"--max-steps 1 with --warmup-steps {self.warmup_steps} trains nothing (a warmup's first step "
                "has learning rate 0); add --warmup-steps 0 or raise --max-steps"
            )
        if self.method == "lasa" and not self.conditioning_text.strip():
            raise LasaError(
                "--conditioning-text is empty: LASA's rows are conditioned on it (an empty one makes "
                "--method lasa plain KTO); give the refusal-intent text, or use --method kto"
            )
        if self.max_steps and any(n > self.max_steps for n in self.save_adapter_at):
            raise LasaError(
                f"--save-adapter-at {max(self.save_adapter_at)} is past --max-steps {self.max_steps}; "
                "training would never reach it"
            )
        if not self.lora_target_modules:
            raise LasaError("--lora-target-modules needs at least one name (or all-linear)")
        if self.lora_dropout > 0 and self.method in ("lasa", "kto"):
            raise LasaError(
                f"--lora-dropout {self.lora_dropout} has no effect with --method {self.method}: KTO trains "
                "without dropout (TRL's disable_dropout, so the policy's and the reference's log-probs "
                "compare); leave it at 0, or use --method sft"
            )
        from transformers.trainer_utils import SchedulerType

        # the ones that need lr_scheduler_kwargs (min_lr, decay steps) or a metric to track, which lasa
        # does not pass: accepted here, they failed in the trainer after the model load
        needs_kwargs = {
            "cosine_with_min_lr",
            "cosine_warmup_with_min_lr",
            "warmup_stable_decay",
            "reduce_lr_on_plateau",
            "greedy",
        }
        schedulers = [t.value for t in SchedulerType if t.value not in needs_kwargs]
        if self.lr_scheduler not in schedulers:
            raise LasaError(
                f"--lr-scheduler must be one of {', '.join(schedulers)}, got {self.lr_scheduler!r}"
            )
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

    def unused_settings(self) -> frozenset[str]:
        """The settings this method does not read (the conditioning's ρ for the baselines, KTO's
        β and weights for SFT, the on-policy generation's for vendored rows): `lasa run` keys the
        stage as if they were at their defaults, so changing one for LASA does not retrain KTO."""
        unused = set()
        if self.rows != "on_policy":
            unused |= {"on_policy_max_new_tokens", "on_policy_judge"}
        if self.method != "lasa":  # condition_rows draws nothing for the baselines
            unused |= {"rho_safety", "rho_general"}
            if self.rows != "on_policy":  # on-policy rows answer under the conditioning text
                unused.add("conditioning_text")
        if self.method == "sft":
            unused |= {"beta", "desirable_weight", "undesirable_weight", "precompute_ref_log_probs"}
        return frozenset(unused)


@dataclass
class RunConfig(StageConfig):
    """``lasa run``: every stage on one run directory (stage settings come from --config sections)."""

    stage: ClassVar[str] = "run"

    variants: list[str] = field(
        default_factory=lambda: ["base", "base+gate", "kto", "lasa+gate"],
        metadata={"help": f"Variants to evaluate: {', '.join(VARIANTS)}."},
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
        if not self.variants:
            raise LasaError(f"--variants is empty; name at least one of {', '.join(VARIANTS)}")


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
        from lasa.config.base import check_run_dir, expand_run_dir

        self.run_dir = expand_run_dir(self.run_dir)
        check_run_dir(self.run_dir)  # a file is named as one
        if not Path(self.run_dir).is_dir():
            raise LasaError(f"run directory not found: {self.run_dir}")


@dataclass
class ModelsConfig:
    """``lasa models list`` / ``lasa models prepare [NAME] [--force]``: the embedded (offline) models.

    The two positional words are read as ``--action`` and ``--name``, so the command keeps its
    short form while going through the same config path (and ``--help``) as every stage."""

    stage: ClassVar[str] = "models"

    action: Literal["list", "prepare"] = field(
        default="list",
        metadata={
            "help": "list: show the embedded models and whether they are prepared; prepare: assemble, verify "
            "(sha256) and convert one into the cache."
        },
    )
    name: str = field(
        default="default",
        metadata={"help": "The model to prepare: default, qwen2.5-coder-0.5b or qwen2.5-coder-1.5b."},
    )
    force: bool = field(default=False, metadata={"help": "prepare: rebuild even if already prepared."})

    def unused_settings(self) -> frozenset[str]:
        """Settings these options do not read (warned about when given as flags)."""
        return frozenset({"force"} if self.action == "list" else set())
