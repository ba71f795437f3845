"""Stage 3 — semantic-conditioned KTO: a small data transformation plus the stock ``trl.KTOTrainer``.

LASA teaches the model to act on the SSI's signal. The signal is a fixed conditioning text at
the start of the assistant turn; during training each row carries it with probability
ρ_safety = 0.5 (harmful prompts) or ρ_general = 0.05 (benign prompts), on the *prompt side*, so
its tokens get no loss. The model learns: text present → refuse (in the user's language); text
absent → still refuse harmful requests; text present on a benign prompt (a false alarm) → still
help. At inference the SSI decides per prompt whether the text is placed (``lasa generate --gate``).

Everything else is stock TRL/PEFT, so it scales like any TRL run (accelerate, DeepSpeed, FSDP):
rows are written in TRL's unpaired text format (``prompt`` already chat-templated, ``completion``,
``label``); ``KTOTrainer`` computes the loss (log-probabilities only on completion tokens), the
reference model is the adapter-disabled base, and the KL reference point comes from TRL's
mismatched pairs. Two of the release's flaws are data-order bugs that this module fixes:

- rows are shuffled once with a seed (the release trained on all safety rows, then all general);
- TRL builds each KL pair by rotating completions by one *within a batch*, so the order is
  arranged so that no batch holds two rows of the same prompt: a KL pair never matches a prompt
  with its own sibling completion (the release's adjacent chosen/rejected rows did exactly that).

Baselines share the path: ``--method kto`` (same rows, never conditioned) and ``--method sft``
(supervised fine-tuning on the desirable completions, TRL ``SFTTrainer``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lasa import distributed
from lasa.conditioning import CONDITIONING_SEPARATOR, chat_prefix
from lasa.config import AlignConfig
from lasa.config.registry import ADAPTER_METHOD_FILE
from lasa.data.rows import build_rows, condition_rows, fill_last_batch, kl_pairs, load_user_rows, order_for_kl
from lasa.errors import LasaError
from lasa.on_policy import cached_on_policy_rows
from lasa.results import AlignResult
from lasa.runs import RunDir, read_jsonl, save_figure, sha256_file, write_json, write_jsonl

logger = logging.getLogger(__name__)

# -- rows in TRL's format --------------------------------------------------------------------


def to_trl_rows(rows: list[dict], tokenizer: Any) -> list[dict]:
    """TRL unpaired text rows; the conditioning text sits at the start of the assistant turn, on
    the prompt side (no loss on it)."""
    out = []
    for r in rows:
        prompt = chat_prefix(tokenizer, r["prompt"])
        if r.get("conditioned"):
            prompt += r["conditioning_text"] + CONDITIONING_SEPARATOR
        out.append({"prompt": prompt, "completion": r["completion"], "label": bool(r["label"])})
    return out


def drop_overlong_prompts(rows: list[dict], tokenizer: Any, max_length: int) -> tuple[list[dict], int]:
    """The rows whose prompt side (chat template, plus the conditioning text where it applies) is
    shorter than ``max_length`` tokens, and how many were dropped.

    TRL's KTOTrainer drops such rows itself (no completion token would survive truncation), but
    after lasa has ordered the rows into batches: every batch after a dropped row would shift by
    one and could hold two rows of one prompt. Dropping them first keeps the order lasa built. One
    token of margin for a tokenizer that adds a BOS."""
    prompts = [r["prompt"] for r in to_trl_rows(rows, tokenizer)]
    lengths = (
        [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]] if prompts else []
    )
    keep = [r for r, n in zip(rows, lengths) if n < max_length - 1]
    if rows and not keep:  # before anything of the previous run is removed
        raise LasaError(
            f"every row's prompt fills --max-length {max_length} (the shortest is {min(lengths)} tokens); "
            f"raise --max-length above {min(lengths) + 1}"
        )
    if len(keep) < len(rows):
        logger.warning(
            "%d of %d rows dropped: their prompt fills --max-length %d (raise it to keep them)",
            len(rows) - len(keep),
            len(rows),
            max_length,
        )
    return keep, len(rows) - len(keep)


# -- training --------------------------------------------------------------------------------


def save_adapter(
    model: Any,
    dest: Path,
    method: str | None = None,
    tokenizer: Any = None,
    record: dict | None = None,
) -> None:
    """``model.save_pretrained`` into ``dest``, whole or not at all (:func:`_finish_save`).

    For a model whose weights this process holds whole (one process, or DDP); a trainer's final
    weights go through :func:`save_trained`, which also gathers sharded ones."""
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp))
    _finish_save(tmp, dest, method, record)


def save_trained(trainer: Any, dest: Path, method: str, record: dict | None = None) -> None:
    """Save the trained adapter (or full fine-tune) with the trainer's own ``save_model``, called on
    every process: under ZeRO-3 or FSDP each process holds a shard of the weights, and
    ``save_model`` gathers them before the main process writes (a plain ``save_pretrained`` on rank
    0 wrote its empty shards). The model's tokenizer is saved with it, so a full fine-tune is a
    directory ``transformers`` loads as a model. Rank 0 then finishes the folder
    (:func:`_finish_save`)."""
    acc = trainer.accelerator
    tmp = dest.parent / f".{dest.name}.tmp-save"  # one name on every rank
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    trainer.save_model(str(tmp))
    acc.wait_for_everyone()
    if acc.is_main_process:
        (tmp / "training_args.bin").unlink(missing_ok=True)  # pickled TrainingArguments: not the model
        _finish_save(tmp, dest, method, record)
    acc.wait_for_everyone()


#: The settings of lasa's own row recipe, which a ``--data`` file replaces.
RECIPE_FIELDS = ("train_langs", "n_safety", "n_general", "n_hard_negative", "rows")


def _warn_recipe_ignored(cfg: AlignConfig) -> None:
    """``--data`` brings its own rows: recipe settings that differ from their defaults (given on the
    command line or by a preset) do nothing, and used to do it without a word."""
    import dataclasses

    defaults = {f.name: f for f in dataclasses.fields(AlignConfig)}
    changed = []
    for name in RECIPE_FIELDS:
        f = defaults[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if getattr(cfg, name) != default:
            changed.append(f"{name}={getattr(cfg, name)}")
    if changed:
        logger.warning(
            "--data %s holds the training rows, so lasa's recipe settings %s are ignored",
            cfg.data,
            ", ".join(changed),
        )


def planned_steps(cfg: AlignConfig, n_rows: int, processes: int = 1) -> int:
    """Optimizer steps the trainer will take on ``n_rows`` training rows: ``--max-steps``, else
    epochs × ceil(batches per process / accumulation), as ``transformers.Trainer`` counts them."""
    if cfg.max_steps:
        return cfg.max_steps
    batches = math.ceil(n_rows / (cfg.batch_size * processes))
    per_epoch = max(math.ceil(batches / cfg.gradient_accumulation_steps), 1)
    return math.ceil(cfg.epochs * per_epoch)


def check_schedule(cfg: AlignConfig, n_rows: int) -> None:
    """Schedule flags the run cannot honour, before the model load: an intermediate adapter past
    the last step of an ``--epochs`` run (never written) is an error; a warmup as long as the run
    (the learning rate never reaches ``--learning-rate``) is a warning."""
    steps = planned_steps(cfg, n_rows, distributed.world_size())
    late = [n for n in cfg.save_adapter_at if n > steps]
    if late:
        raise LasaError(
            f"--save-adapter-at {max(late)} is past the run's last step ({steps}: {n_rows} rows, batch "
            f"{cfg.batch_size}, {cfg.epochs:g} epoch(s)); training would never reach it"
        )
    if 1 in cfg.save_adapter_at and cfg.warmup_steps >= 1:
        logger.warning(
            "--save-adapter-at 1 with --warmup-steps %d: a linear warmup's first step has learning rate 0, so "
            "that checkpoint is the starting model",
            cfg.warmup_steps,
        )
    if cfg.warmup_steps >= steps:
        logger.warning(
            "--warmup-steps %d covers the whole run (%d steps): the learning rate never reaches %g",
            cfg.warmup_steps,
            steps,
            cfg.learning_rate,
        )


def _sharded(trainer: Any) -> bool:
    """Whether each process holds only a shard of the weights (FSDP, DeepSpeed ZeRO-3)."""
    if getattr(trainer, "is_fsdp_enabled", False):
        return True
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return bool(getattr(trainer, "is_deepspeed_enabled", False) and getattr(plugin, "zero_stage", 0) == 3)


def _finish_save(tmp: Path, dest: Path, method: str | None, record: dict | None) -> None:
    """Make a saved folder byte-stable, label it, and move it to ``dest`` in one rename.

    PEFT keeps ``target_modules`` as a set and writes it in the set's iteration order, which
    Python's string hashing changes from process to process: two trainings with identical weights
    then leave different ``adapter_config.json`` bytes, hence different adapter digests, and an
    evaluation keyed on the digest would regenerate for nothing. The set-valued fields are
    written sorted (the same set, so PEFT loads the same adapter).

    ``lasa_adapter.json`` names the method, and for a full fine-tune (``--no-lora``) holds its
    ``record`` (:func:`full_checkpoint_record`): ``lasa evaluate`` reads it to evaluate the
    checkpoint as the method's variant of its base model."""
    for config in tmp.rglob("adapter_config.json"):
        data = json.loads(config.read_text())
        for key in ("target_modules", "exclude_modules"):
            if isinstance(data.get(key), list):
                data[key] = sorted(data[key])
        config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    if method:  # not part of the adapter's digest (its weights and config are)
        (tmp / ADAPTER_METHOD_FILE).write_text(json.dumps({"method": method, **(record or {})}) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


def freeze_through(lm: Any, bottleneck: int) -> int:
    """Full fine-tuning above the bottleneck: freeze the input embeddings and decoder blocks
    ``1..bottleneck`` (1-based), so the state the SSI reads at L* is the base model's, exactly, in
    the fine-tuned model too (the release trained every weight and then gated with the moved state:
    flaw 3 in the method notes). With tied embeddings the LM head stays frozen with them. Returns
    the number of frozen blocks."""
    lm.model.get_input_embeddings().requires_grad_(False)
    for block in list(lm.layers)[:bottleneck]:
        block.requires_grad_(False)
    return int(bottleneck)


def full_checkpoint_record(method: str, lm: Any, frozen: int) -> dict:
    """What ``lasa evaluate`` needs to evaluate a full fine-tune as a variant of its base model:
    the base (spec, resolved path, fingerprint: the SSI trained on the base is checked against it)
    and how many leading blocks training left untouched (the gate is exact up to there)."""
    base_path = Path(lm.path)
    return {
        "full_model": True,
        "base_model": lm.spec,
        # absolute: a relative --model would name another directory from another working directory
        "base_path": str(base_path.resolve()) if base_path.exists() else lm.path,
        "base_fingerprint": lm.fingerprint,
        "frozen_blocks": frozen,
    }


def block_linear_names(layers: Any) -> list[str]:
    """Leaf names of the nn.Linear modules inside a decoder block ("all-linear", resolved so that
    PEFT can combine it with ``layers_to_transform``)."""
    from torch import nn

    return sorted(
        {name.rsplit(".", 1)[-1] for name, mod in layers[0].named_modules() if isinstance(mod, nn.Linear)}
    )


def lora_config(cfg: AlignConfig, num_layers: int, bottleneck: int | None, layers_module: Any = None) -> Any:
    from peft import LoraConfig

    layers = None
    if cfg.lora_layers == "above_bottleneck":
        if bottleneck is None:
            raise LasaError(
                "--lora-layers above_bottleneck needs RUN/locate/bottleneck.json (run `lasa locate`) "
                "or --bottleneck-layer N"
            )
        layers = list(range(bottleneck, num_layers))  # 0-based blocks after block L* (1-based)
        if not layers:
            raise LasaError(f"the bottleneck is the last layer ({bottleneck}); no layer above it to adapt")
    targets: Any = cfg.lora_target_modules
    if targets == ["all-linear"]:
        targets = block_linear_names(layers_module) if layers_module is not None else "all-linear"
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
        bias="none",
    )


def check_lora_targets(cfg: AlignConfig, bottleneck: int | None) -> None:
    """Refuse ``--lora-target-modules`` that would not adapt what they say, before any weight is
    read: PEFT and TRL only find out after the model is loaded (and after the previous adapter of
    the method was removed), with messages about their own internals. The model's skeleton is
    built on the ``meta`` device from its config (no memory, no weights) and each name is matched
    the way PEFT matches a list (the full module name, or a ``.``-suffix of it) against the
    decoder blocks the run adapts: a name that matches nothing there (a typo, ``lm_head``, a full
    name of a block below the bottleneck, which PEFT would adapt regardless of the placement), a
    container LoRA cannot wrap (``mlp``), or ``all-linear`` beside other names (PEFT then silently
    adapts only the others) is one line. A model whose skeleton cannot be built is left to PEFT."""
    if not cfg.lora:
        return
    targets = list(cfg.lora_target_modules)
    if "all-linear" in targets and len(targets) > 1:
        raise LasaError(
            f"--lora-target-modules {' '.join(targets)}: all-linear already names every linear layer of the "
            "adapted blocks (PEFT would adapt only the other names); pass all-linear alone, or the names alone"
        )
    if targets == ["all-linear"]:
        return
    import torch
    from transformers.pytorch_utils import Conv1D

    from lasa.models import find_decoder_layers, meta_skeleton, text_config

    skeleton = meta_skeleton(cfg.model)
    if skeleton is None:  # an architecture without a causal-LM class here: PEFT will say
        return
    try:
        layers_path, layers = find_decoder_layers(skeleton)
    except Exception:
        return
    n_layers = int(text_config(skeleton.config).num_hidden_layers)
    above = cfg.lora_layers == "above_bottleneck" and bottleneck is not None
    adapted = set(range(bottleneck, n_layers)) if above else set(range(len(layers)))  # type: ignore[arg-type]
    where = f"blocks {bottleneck + 1}..{n_layers}" if above else "the decoder blocks"  # type: ignore[operator]
    wrappable = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, Conv1D)
    names = sorted(
        {name.rsplit(".", 1)[-1] for name, mod in layers[0].named_modules() if isinstance(mod, wrappable)}
    )

    def block_of(name: str) -> int | None:
        if not name.startswith(layers_path + "."):
            return None
        index = name[len(layers_path) + 1 :].split(".", 1)[0]
        return int(index) if index.isdigit() else None

    inside: dict[str, list[tuple[str, Any]]] = {t: [] for t in targets}
    for name, mod in skeleton.named_modules():
        for t in targets:
            if name and (name == t or name.endswith("." + t)) and block_of(name) in adapted:
                inside[t].append((name, mod))
    missing = [t for t, hits in inside.items() if not hits]
    if missing:
        raise LasaError(
            f"--lora-target-modules {' '.join(missing)} matches no module in {where} of {cfg.model} "
            f"(the blocks this run adapts; --lora-layers {cfg.lora_layers}); its blocks' linear layers are: "
            f"{' '.join(names)} (or use all-linear)"
        )
    bad = sorted(
        {
            name.rsplit(".", 1)[-1]
            for hits in inside.values()
            for name, mod in hits
            if not isinstance(mod, wrappable)
        }
    )
    if bad:
        raise LasaError(
            f"--lora-target-modules matches {' '.join(bad)}, which LoRA cannot wrap (not a linear, "
            f"embedding or convolution layer); name leaf layers such as: {' '.join(names)}"
        )


class _JsonlLogger:
    """A TrainerCallback that appends every log record to train_log.jsonl (flushed per step)."""

    def __new__(cls, path: Path):
        from transformers import TrainerCallback

        class Callback(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs:
                    with open(path, "a", encoding="utf-8") as f:
                        f.write(
                            json.dumps({"step": state.global_step, "time": round(time.time(), 2), **logs})
                            + "\n"
                        )

        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
        return Callback()


class _AdapterCheckpoints:
    """A TrainerCallback that saves the adapter after the chosen optimizer steps (dose-response)."""

    def __new__(
        cls, root: Path, method: str, steps: set[int], tokenizer: Any = None, record: dict | None = None
    ):
        from transformers import TrainerCallback

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, **kwargs):
                if state.global_step in steps and model is not None:
                    # a full fine-tune's carries its tokenizer and record, like the final checkpoint
                    dest = root / f"{method}-step{state.global_step}"
                    save_adapter(model, dest, method, tokenizer=tokenizer, record=record)

        root.mkdir(parents=True, exist_ok=True)
        return Callback()


class SharedFrozenPrefix:
    """KTO forwards every batch twice through the same frozen blocks: with the adapter (the
    policy) and with it disabled (the reference), and TRL does the same for the KL batch. With
    LoRA above the bottleneck, blocks ``0..k-1`` hold no adapter and no trainable weight, so the
    two passes compute the same state there: this context manager remembers the state after
    block ``k-1`` for the last few inputs and, when a pass arrives with the same input (compared
    exactly: block 0's input, attention mask and positions), skips blocks ``0..k-1`` and replays
    it. The loss is bit-identical; on the 0.5B default (L* = 15 of 24 blocks) the reference
    passes run 9 blocks instead of 24.

    It wraps each block's ``forward`` on the instance (the state dict and the adapter's module
    names are untouched) and restores it on exit. A state that requires grad is never stored
    (full fine-tuning, gradient checkpointing's input grads), so nothing is replayed there."""

    def __init__(self, layers: Any, k: int, max_entries: int = 4):
        if not 0 < k <= len(layers):
            raise ValueError(f"k must be in 1..{len(layers)}, got {k}")
        if any(p.requires_grad for layer in list(layers)[:k] for p in layer.parameters()):
            raise ValueError("SharedFrozenPrefix needs blocks 0..k-1 frozen (no trainable parameter there)")
        self.layers, self.k, self.max_entries = layers, k, max_entries
        self.entries: list[tuple[tuple, Any]] = []
        self.hits = self.misses = 0
        self._replay: Any = None
        self._key: tuple | None = None
        self._saved: list[Any] = []

    @staticmethod
    def _same(a: Any, b: Any) -> bool:
        import torch

        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)
        return a is None and b is None

    def _block(self, i: int, forward: Any, hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
        if i == 0:
            self._replay, self._key = None, None
            if not hidden_states.requires_grad:
                key = (hidden_states, kwargs.get("attention_mask"), kwargs.get("position_ids"))
                for entry_key, state in self.entries:
                    if all(self._same(a, b) for a, b in zip(key, entry_key, strict=True)):
                        self._replay = state
                        break
                else:
                    self._key = key
            self.hits += self._replay is not None
            self.misses += self._replay is None
        if self._replay is not None:
            return self._replay if i == self.k - 1 else hidden_states
        out = forward(hidden_states, *args, **kwargs)
        if i == self.k - 1 and self._key is not None and not out.requires_grad:
            self.entries = [*self.entries, (self._key, out)][-self.max_entries :]
            self._key = None
        return out

    def __enter__(self) -> SharedFrozenPrefix:
        import functools

        for i in range(self.k):
            layer = self.layers[i]
            self._saved.append(layer.__dict__.get("forward"))
            layer.forward = functools.partial(self._block, i, layer.forward)
        return self

    def __exit__(self, *exc: Any) -> None:
        for i, saved in enumerate(self._saved):
            if saved is None:
                del self.layers[i].forward
            else:
                self.layers[i].forward = saved
        self._saved, self.entries, self._replay = [], [], None


def _checkpointing_key() -> str:
    """``activation_checkpointing`` where transformers has it (5.x renamed it; the old name, which
    TRL's configs default to True, warns once per run and goes in v6), else the old name."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def _training_args_common(cfg: AlignConfig, out: Path, on_cpu: bool) -> dict:
    return {
        "output_dir": str(out / "trainer"),
        "per_device_train_batch_size": cfg.batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "learning_rate": cfg.learning_rate,
        "num_train_epochs": cfg.epochs,
        "max_steps": cfg.max_steps if cfg.max_steps else -1,
        "lr_scheduler_type": cfg.lr_scheduler,
        "warmup_steps": cfg.warmup_steps,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "bf16": cfg.bf16 and not on_cpu,
        _checkpointing_key(): cfg.gradient_checkpointing,
        "use_cpu": on_cpu,
        "disable_tqdm": False,
        "max_length": cfg.max_length,
    }


def device_batches(trainer: Any, rows: list[dict]) -> dict:
    """What each process's batches will hold, read off the trainer's own (sharded) data loader:
    the number of device batches and how many hold two rows of one prompt (TRL rotates KL
    completions within a device batch, so such a batch compares a prompt with itself)."""
    sampler = trainer.get_train_dataloader().batch_sampler
    per_rank = [[rows[i]["pid"] for i in batch] for batch in sampler]
    gathered = trainer.accelerator.gather_for_metrics(
        [[len(per_rank), sum(len(set(b)) < len(b) for b in per_rank)]], use_gather_object=True
    )
    return {
        "processes": trainer.accelerator.num_processes,
        "per_process": [int(n) for n, _ in gathered],
        "with_repeated_prompt": int(sum(r for _, r in gathered)),
    }


def train(
    cfg: AlignConfig, rows: list[dict], out: Path, lm: Any = None, bottleneck: int | None = None
) -> dict:
    """Train the adapter with TRL (KTO or SFT) and save it to ``out/adapter``."""
    import torch
    from datasets import Dataset

    from lasa.models import load_model, resolve_device

    on_cpu = resolve_device(cfg.device).type == "cpu"
    lm = lm or load_model(cfg.model, cfg.device, cfg.dtype)
    model, tok = lm.model, lm.tokenizer
    model.train()
    peft_config = lora_config(cfg, lm.num_layers, bottleneck, lm.layers) if cfg.lora else None
    frozen = 0
    if not cfg.lora:
        model.requires_grad_(True)
        if cfg.lora_layers == "above_bottleneck" and bottleneck is not None:
            frozen = freeze_through(lm, bottleneck)
    torch.manual_seed(cfg.seed)
    trl_rows = to_trl_rows(rows, tok)
    log_path = out / "train_log.jsonl"
    callbacks = [_JsonlLogger(log_path)] if distributed.is_main() else []
    record = None if cfg.lora else full_checkpoint_record(cfg.method, lm, frozen)  # a full fine-tune's
    if cfg.save_adapter_at and distributed.is_main():
        callbacks.append(
            _AdapterCheckpoints(
                out / "checkpoints", cfg.method, set(cfg.save_adapter_at), tok if record else None, record
            )
        )
    common = _training_args_common(cfg, out, on_cpu)
    t0 = time.time()
    if cfg.method in ("lasa", "kto"):
        from trl import KTOConfig, KTOTrainer

        trainer_cls: Any = KTOTrainer
        args: Any = KTOConfig(
            **common,
            beta=cfg.beta,
            desirable_weight=cfg.desirable_weight,
            undesirable_weight=cfg.undesirable_weight,
            train_sampling_strategy="sequential",
            precompute_ref_log_probs=precompute_reference(cfg),
            disable_dropout=True,
        )
        data = trl_rows
    else:  # sft: the desirable completions only, loss on the completion tokens
        from trl import SFTConfig, SFTTrainer

        trainer_cls = SFTTrainer
        args = SFTConfig(**common, completion_only_loss=True, packing=False, shuffle_dataset=False)
        data = [{"prompt": r["prompt"], "completion": r["completion"]} for r in trl_rows if r["label"]]
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(data),
        processing_class=tok,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    if cfg.save_adapter_at and _sharded(trainer):
        raise LasaError(
            "--save-adapter-at saves from the main process, which holds only its shard of the weights under "
            "ZeRO-3 / FSDP; train with ZeRO-2 or DDP for a dose-response, or leave --save-adapter-at out"
        )
    batches = device_batches(
        trainer, rows if cfg.method in ("lasa", "kto") else [r for r in rows if r["label"]]
    )
    prefix = _shared_prefix(cfg, lm, peft_config)
    try:
        with prefix or contextlib.nullcontext(), _completion_positions_only():
            result = trainer.train()
    except BaseException:  # interrupted or failed: TRL's scratch folder is of no use to a rerun
        shutil.rmtree(out / "trainer", ignore_errors=True)
        raise
    seconds = time.time() - t0
    save_trained(trainer, out / "adapter", cfg.method, record)
    if trainer.accelerator.is_main_process:
        shutil.rmtree(out / "trainer", ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    steps = int(result.global_step)
    return {
        "device_batches": batches,
        "processes": trainer.accelerator.num_processes,
        "seconds": round(seconds, 1),
        "steps": steps,
        "seconds_per_step": round(seconds / max(1, steps), 2),
        "train_loss": float(result.training_loss),
        "n_rows": len(trl_rows),
        "adapter": str(out / "adapter"),
        "trainable_parameters": int(sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)),
        "reference_model": _reference_kind(trainer, cfg),
        **({"full_fine_tuning": {"frozen_blocks": frozen}} if not cfg.lora else {}),
        "shared_frozen_prefix": (
            {"blocks": prefix.k, "replayed_passes": prefix.hits, "computed_passes": prefix.misses}
            if prefix
            else None
        ),
    }


@contextlib.contextmanager
def _completion_positions_only() -> Iterator[None]:
    """Let TRL's fused LM head score only the completion positions on every device.

    TRL's KTO computes per-token log-probabilities through a chunked LM head that, on Triton devices,
    projects only the positions with a label; elsewhere it projects every position, prompt and
    padding included, so that the tile shapes stay fixed for compilers such as Neuron's. On the CPU
    nothing is compiled, and the head is where the time goes: Qwen's 151,936-token vocabulary is 27%
    of the 0.5B's weights, and the quick preset's rows are mostly prompt. Scoring the labelled
    positions only gives the same log-probabilities and metrics; on the quick preset (0.5B, 2 cores)
    a LASA step went from 13.0 s to 8.2 s (`lasa run` logs, runs/e2e25 vs runs/e2e26).
    A TRL without this switch is left as it is."""
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        yield
        return
    trl_utils._use_triton = lambda device: device.type == "cpu" or original(device)
    try:
        yield
    finally:
        trl_utils._use_triton = original


def precompute_reference(cfg: AlignConfig) -> bool:
    """Whether KTO reads reference log-probs computed once before training: when asked, and always
    for a full fine-tune. There the reference is the starting model, and the alternative is TRL's
    frozen copy of it kept for every step — a second 16 GB for an 8B model in bf16 (under ZeRO-3,
    a second sharded engine). The precomputed values are the same (dropout is off), computed in one
    pass before the first step instead of one per step. Under LoRA the reference is the model with
    the adapter disabled, which costs no memory, so it stays a per-step pass by default."""
    return cfg.method in ("lasa", "kto") and (cfg.precompute_ref_log_probs or not cfg.lora)


def _reference_kind(trainer: Any, cfg: AlignConfig) -> str | None:
    """What KTO's reference was, read off the trainer (recorded in align.json)."""
    if cfg.method not in ("lasa", "kto"):
        return None
    if getattr(trainer, "ref_model", None) is not None:
        return "a frozen copy of the model"
    if trainer.args.precompute_ref_log_probs:
        return "log-probs precomputed before training"
    return "the model with the adapter disabled"


def _shared_prefix(cfg: AlignConfig, lm: Any, peft_config: Any) -> SharedFrozenPrefix | None:
    """The policy / reference sharing of the blocks below the adapter, where it applies: KTO
    (lasa or kto) with reference passes during training and LoRA that leaves the first blocks
    alone (``above_bottleneck``)."""
    if cfg.method not in ("lasa", "kto") or precompute_reference(cfg) or peft_config is None:
        return None
    layers = getattr(peft_config, "layers_to_transform", None)
    k = min(layers) if layers else 0
    return SharedFrozenPrefix(lm.layers, k) if k > 0 else None


def plot_log(log: list[dict], path: Path, title: str) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r for r in log if "loss" in r]
    if not steps:
        return None
    keys = [k for k in ("rewards/margins", "rewards/chosen", "rewards/rejected", "kl") if k in steps[0]]
    fig, axes = plt.subplots(1, 2 if keys else 1, figsize=(11 if keys else 6, 3.8), squeeze=False)
    ax = axes[0, 0]
    x = [r["step"] for r in steps]
    ax.plot(x, [r["loss"] for r in steps], "o-", ms=2, lw=1, label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    if keys:
        ax = axes[0, 1]
        for k in keys:
            ax.plot(x, [r.get(k, float("nan")) for r in steps], "o-", ms=2, lw=1, label=k)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xlabel("step")
        ax.set_title("implicit rewards (β·log π/π_ref)", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def run_align(cfg: AlignConfig, lm: Any = None) -> AlignResult:
    """Build (or load) the rows, condition and order them, train, and write RUN/align/<method>/."""
    from lasa.config.base import expect_config

    expect_config(cfg, AlignConfig, "run_align")
    from lasa.models import check_given_model

    check_given_model(lm, cfg.model, "run_align")
    t0 = time.time()
    run = RunDir(cfg.run_dir)
    with run.stage_dir(
        str(run.align(cfg.method).relative_to(run.path))
    ) as out:  # a failure before any write leaves no directory
        return _align(cfg, lm, run, out, t0)


def _align(cfg: AlignConfig, lm: Any, run: RunDir, out: Path, t0: float) -> AlignResult:
    bottleneck = cfg.bottleneck_layer
    if bottleneck is None and run.bottleneck.is_file():
        from lasa.locate import Bottleneck

        bottleneck = Bottleneck.load(cfg.run_dir).layer_for(cfg.model, cfg.run_dir, "--bottleneck-layer")
    if bottleneck is not None and cfg.lora_layers == "above_bottleneck":  # from the config alone
        from lasa.models import num_layers_of, validate_layer

        n_layers = num_layers_of(cfg.model)
        validate_layer(bottleneck, n_layers, "--bottleneck-layer")
        if bottleneck == n_layers:
            raise LasaError(f"the bottleneck is the last layer ({bottleneck}); no layer above it to adapt")
    if cfg.data:
        _warn_recipe_ignored(cfg)
        rows = load_user_rows(cfg.data)
        recipe = {"file": str(Path(cfg.data).resolve()), "sha256": sha256_file(Path(cfg.data))}
        kinds = {bool(r["label"]) for r in rows}
        if cfg.method == "sft" and True not in kinds:  # TRL's StopIteration, after the model load
            raise LasaError(
                f"--method sft trains on desirable rows, and {cfg.data} has none; add some or use kto"
            )
        if cfg.method in ("lasa", "kto") and len(kinds) < 2:
            logger.warning(
                "%s holds only %s rows: KTO learns from the contrast of desirable and undesirable answers, "
                "so the loss will barely move",
                cfg.data,
                "desirable" if True in kinds else "undesirable",
            )
        if cfg.method == "lasa" and not any(r["source"] == "safety" for r in rows):
            logger.warning(
                'no row of %s has "source": "safety" (unpaired rows default to general), so --method '
                "lasa conditions only --rho-general %.0f%% of them on the refusal-intent text; mark the "
                "harmful-prompt rows as safety",
                cfg.data,
                100 * cfg.rho_general,
            )
    else:
        rows, recipe = build_rows(
            cfg.train_langs,
            cfg.n_safety,
            cfg.n_general,
            cfg.seed,
            n_hard_negative=cfg.n_hard_negative,
            own_answers=cfg.rows == "on_policy",
        )
    # the adapter's placement, after the (cheap) row checks and before rows.jsonl, the on-policy
    # generation and the model load: a missing bottleneck used to fail in lora_config, after all three
    if not cfg.dry_run and cfg.lora_layers == "above_bottleneck" and bottleneck is None:
        raise LasaError(
            f"--lora-layers above_bottleneck needs {run.bottleneck} (run `lasa locate --run-dir "
            f"{cfg.run_dir}`), or pass --bottleneck-layer N or --lora-layers all"
        )
    if not cfg.dry_run:  # a dry run trains nothing: no adapter placement to check
        check_lora_targets(cfg, bottleneck)
    if not cfg.data and cfg.rows == "on_policy":
        from lasa.models import load_model

        lm = lm or load_model(cfg.model, cfg.device, cfg.dtype)
        rows, recipe["on_policy"] = cached_on_policy_rows(rows, lm, cfg, run, out)
    rows = condition_rows(rows, cfg.method, cfg.rho_safety, cfg.rho_general, cfg.seed, cfg.conditioning_text)
    # every method: SFT's trainer drops a row whose prompt fills --max-length too (all of them: an
    # error deep in TRL after the model load); this also meets a tokenizer without a chat template
    from lasa.models import load_tokenizer, resolve_model_path

    tok = lm.tokenizer if lm is not None else load_tokenizer(resolve_model_path(cfg.model))
    rows, overlong = drop_overlong_prompts(rows, tok, cfg.max_length)
    rows = order_for_kl(rows, cfg.batch_size, cfg.seed)
    if distributed.world_size() > 1:
        rows = fill_last_batch(rows, cfg.batch_size)
    # a dry run writes beside the method's folder, never over it: it used to replace a trained
    # method's summary and rows while its adapter stayed (the report then lost the method, and
    # `lasa evaluate --adapter kto` still evaluated the old adapter)
    check_schedule(cfg, sum(1 for r in rows if cfg.method != "sft" or r["label"]))
    dry = out / "dry_run"
    if distributed.is_main() and cfg.dry_run:
        dry.mkdir(parents=True, exist_ok=True)
        write_jsonl(dry / "rows.jsonl", rows)
    previous: _Previous | None = None
    if distributed.is_main() and not cfg.dry_run:
        # the marker goes first: from here on the folder is this run's, and an interrupted run must
        # read as unfinished, not as the previous run's adapter next to these rows. The previous
        # run's files are set aside, not deleted: a retrain that fails or is interrupted puts them
        # back (a killed one leaves them in .previous/, and the folder reads as unfinished)
        previous = _Previous(out)
        write_jsonl(out / "rows.jsonl", rows)
    stats = {
        "n_rows": len(rows),
        "conditioned": {
            s: sum(r["conditioned"] for r in rows if r["source"] == s) for s in ("safety", "general")
        },
        "by_source": {s: sum(r["source"] == s for r in rows) for s in ("safety", "general")},
        "dropped_overlong_prompts": overlong,
        "self_paired_kl": sum(
            rows[i]["pid"] == rows[j]["pid"] for i, j in kl_pairs(rows, cfg.batch_size) if i != j
        ),
    }
    if cfg.dry_run and distributed.is_main():
        write_json(
            dry / "summary.json", {"method": cfg.method, "recipe": recipe, "rows": stats, "dry_run": True}
        )
        logger.info("align %s: dry run, %d rows in %s (nothing trained)", cfg.method, len(rows), dry)
        return AlignResult(
            run.align(cfg.method), cfg.method, {"method": cfg.method, "rows": stats, "recipe": recipe}
        )
    try:
        training = train(cfg, rows, out, lm=lm, bottleneck=bottleneck)
    except BaseException:
        if previous is not None:
            previous.restore()
        raise
    if previous is not None:
        previous.drop()  # the new adapter is saved
    if not distributed.is_main():  # rank 0 writes the adapter and the summary
        return AlignResult(run.align(cfg.method), cfg.method, {"training": training}, rank=distributed.rank())
    stats["device_batches"] = training.pop("device_batches")
    log = read_jsonl(out / "train_log.jsonl")
    plot_log(
        log,
        out / "loss.png",
        f"{cfg.method}: {training['steps']} steps, {len(rows)} rows, "
        f"LoRA {cfg.lora_layers if cfg.lora else 'off (full fine-tuning)'}",
    )
    summary = {
        "method": cfg.method,
        "model": cfg.model,
        # the gate must insert exactly this text (lasa.conditioning.check_adapter_conditioning)
        "conditioning_text": cfg.conditioning_text if cfg.method == "lasa" else None,
        "recipe": recipe,
        "rows": stats,
        "training": training,
        "bottleneck_layer": bottleneck,
        "lora": {
            "r": cfg.lora_r,
            "alpha": cfg.lora_alpha,
            "layers": cfg.lora_layers,
            "target_modules": cfg.lora_target_modules,
            "dropout": cfg.lora_dropout,
        }
        if cfg.lora
        else None,
        "first_last": _first_last(log),
        "seconds": round(time.time() - t0, 1),
    }
    write_json(run.align_summary(cfg.method), summary)  # written last: the stage is done
    from lasa.models import weights_signature

    # the weights it trained on: `lasa run` adopts a hand-run stage only on the same weights
    run.record(
        f"align:{cfg.method}",
        cfg,
        {"training": training, "model_weights": weights_signature(cfg.model)},
        marker=run.align_summary(cfg.method),
    )
    logger.info(
        "align %s: %d steps in %.0f s (%.1f s/step), loss %.3f",
        cfg.method,
        training["steps"],
        training["seconds"],
        training["seconds_per_step"],
        training["train_loss"],
    )
    return AlignResult(run.align(cfg.method), cfg.method, summary)


class _Previous:
    """A trained method's files, moved aside while it is retrained (``RUN/align/<method>/.previous/``).

    ``restore`` puts them back when the retrain fails or is interrupted (it used to delete the
    working adapter and summary first, so a bad flag found by TRL after the model load cost the
    previous training); ``drop`` deletes them once the new adapter is saved. The on-policy row
    cache stays where it is (it is keyed, and shared by the methods)."""

    NAMES = ("summary.json", "adapter", "rows.jsonl", "train_log.jsonl", "loss.png", "checkpoints")
    #: a training's scratch: TRL's output folder and the adapter's half-saved copy
    SCRATCH = ("trainer", ".adapter.tmp-save")

    def __init__(self, out: Path):
        self.out, self.dir = out, out / ".previous"
        self.moved: list[str] = []
        if (self.dir / "summary.json").is_file() and not (out / "summary.json").exists():
            # a retrain was killed before it finished: .previous/ holds the last finished training and
            # the folder only that retrain's partial files, so those go and .previous/ stays set aside
            self._clear()
            self.moved = [name for name in self.NAMES if (self.dir / name).exists()]
            return
        shutil.rmtree(self.dir, ignore_errors=True)  # no finished training in it: nothing to keep
        for name in self.NAMES:  # the marker first
            if (out / name).exists():
                self.dir.mkdir(exist_ok=True)
                os.replace(out / name, self.dir / name)
                self.moved.append(name)

    def _clear(self) -> None:
        """Delete what a failed or killed (re)train wrote in the folder, moved aside or not."""
        for name in (*self.NAMES, *self.SCRATCH):
            dst = self.out / name
            if dst.is_dir():
                shutil.rmtree(dst)
            elif dst.exists():
                dst.unlink()

    def restore(self) -> None:
        self._clear()  # also checkpoints/ and trainer/ of a retrain that had none before
        for name in reversed(self.moved):  # the marker last
            os.replace(self.dir / name, self.out / name)
        if self.moved:
            logger.info("align: the previous %s is back in %s", ", ".join(self.moved), self.out)
        self.drop()

    def drop(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _first_last(log: list[dict], k: int = 5) -> dict:
    """Mean of the first and last k logged steps for the numbers that show learning."""
    steps = [r for r in log if "loss" in r]
    out = {}
    for key in ("loss", "rewards/margins", "rewards/chosen", "rewards/rejected", "kl"):
        vals = [r[key] for r in steps if key in r]
        if len(vals) >= 2:
            kk = min(k, len(vals) // 2)
            out[key] = {"first": sum(vals[:kk]) / kk, "last": sum(vals[-kk:]) / kk}
    return out
