"""Load any decoder-only chat model and find its decoder layers, without per-family adapters.

``--model`` accepts an HF hub id or local directory, a ``.gguf`` file (dequantised once and
cached, like the embedded models) or an embedded model name. Decoder-layer discovery is generic:
the ``nn.ModuleList`` whose length equals ``num_hidden_layers`` (the repeng approach), which
covers Qwen2/Qwen3, Llama, Gemma, Mistral and most other families, including PEFT-wrapped ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lasa import default_model
from lasa.config.registry import adapter_record
from lasa.errors import LasaError

logger = logging.getLogger(__name__)

#: Config attributes that mark a mixture-of-experts model.
_MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


@dataclass
class LoadedModel:
    """A model, its tokenizer and what lasa needs to know about its layer stack."""

    model: Any  # transformers PreTrainedModel (possibly PEFT-wrapped)
    tokenizer: Any
    spec: str  # what the user passed to --model
    path: str  # resolved local directory or hub id
    layers: nn.ModuleList
    layers_path: str
    fingerprint: dict = field(default_factory=dict)
    #: for a full fine-tune lasa trained (:func:`load_full_checkpoint`): its record, which names the
    #: base model it is a variant of (None for a base model, with or without a PEFT adapter)
    full_checkpoint: dict | None = None

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        return int(text_config(self.model.config).hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def name(self) -> str:
        return default_model.embedded_name(self.spec) or self.spec.rstrip("/").split("/")[-1]


def text_config(config: Any) -> Any:
    """The language-model part of a (possibly multimodal) config."""
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def resolve_device(device: str = "auto") -> torch.device:
    if device != "auto":
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise LasaError(f"unknown --device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise LasaError(f"--device {device} requested but CUDA is not available; use --device cpu")
        if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
            raise LasaError(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s)")
        mps = getattr(torch.backends, "mps", None)
        xpu = getattr(torch, "xpu", None)
        available = {
            "cpu": True,
            "cuda": True,
            "mps": bool(mps and mps.is_available()),
            "xpu": bool(xpu and xpu.is_available()),
        }
        if not available.get(dev.type, False):
            raise LasaError(
                f"--device {device} is not available here (lasa runs on cpu, cuda, mps or xpu); use --device auto"
            )
        return dev
    if torch.cuda.is_available():  # under a launcher, each process takes its own GPU
        from lasa import distributed

        return torch.device("cuda", distributed.local_rank() % torch.cuda.device_count())
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32  # bf16 matmuls are several times slower on CPUs without AMX
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise LasaError(f"unknown --dtype {dtype!r}; use auto, float32, bfloat16 or float16") from None


def _looks_like_path(spec: str) -> bool:
    return (
        spec.startswith(("/", ".", "~"))
        or spec.endswith(".gguf")
        or spec.count("/") > 1
        or os.sep * 2 in spec
    )


def prepare_gguf(path: Path, root: Path | None = None) -> Path:
    """Dequantise a user's ``.gguf`` file once into the cache (keyed by path, size and mtime)."""
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    models = (root or default_model.cache_dir()) / "models"
    final = models / f"gguf-{path.stem}-{key}"
    if (final / default_model.MARKER).is_file():
        return final
    tmp = models / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        try:
            default_model.convert_gguf(path, tmp)
        except Exception as err:  # the GGUF reader's errors are deep and long; keep the first line
            raise LasaError(
                f"could not read {path} as a GGUF model ({str(err).splitlines()[0][:200]})"
            ) from err
        (tmp / default_model.MARKER).write_text(
            json.dumps(
                {"name": final.name, "gguf": str(path.resolve()), "prepared_at": time.strftime("%F %T")}
            )
            + "\n"
        )
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _no_config_message(flag: str, spec: str, path: Path) -> str:
    """Why a directory without ``config.json`` is not a model, and what to pass instead. A PEFT
    adapter folder (``RUN/align/<method>/adapter``) is the usual mistake: it was refused as "not
    a transformers checkpoint", which names neither the adapter nor the flag that takes it."""
    conf = path / "adapter_config.json"
    if conf.is_file():
        try:
            base = json.loads(conf.read_text(encoding="utf-8")).get("base_model_name_or_path")
        except (ValueError, OSError, AttributeError):
            base = None
        return (
            f"{flag} {spec} is a PEFT adapter, not a model: pass its base model as --model "
            f"({base or 'the model it was trained on'}) and this folder as --adapter"
        )
    return f"{flag} {spec}: directory has no config.json; is it a transformers checkpoint?"


def check_model_spec(spec: str, flag: str = "--model") -> None:
    """The checks of :func:`resolve_model_path` that cost nothing (no preparing, no network), for a
    model that is loaded late (the ``llm`` judge's, after generation): a missing path, a file that
    is not .gguf or a directory without config.json fails here, naming ``flag``."""
    if not spec or not spec.strip():
        raise LasaError(f"{flag} is empty; pass an HF id, a local directory, a .gguf file or 'default'")
    name = default_model.embedded_name(spec)
    if name:  # prepared, or its part packages installed (a file lookup each): else say which pip fixes it
        if default_model.prepared_path(name) is None:
            default_model.locate_parts(default_model.EMBEDDED[name])
        return
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix != ".gguf":
        raise LasaError(f"{flag} {spec}: a file must be a .gguf model; otherwise pass its directory")
    if path.is_dir() and not (path / "config.json").is_file():
        raise LasaError(_no_config_message(flag, spec, path))
    if not path.exists() and _looks_like_path(spec):
        raise LasaError(
            f"{flag} {spec}: not found (pass an existing directory, a .gguf file, 'default' or an HF id)"
        )


def resolve_model_path(spec: str) -> str:
    """Map ``--model`` to something ``from_pretrained`` can open (preparing embedded/GGUF models)."""
    if not spec or not spec.strip():
        raise LasaError("--model is empty; pass an HF id, a local directory, a .gguf file or 'default'")
    if default_model.embedded_name(spec):
        return str(default_model.prepare(spec, rebuild_damaged=False))
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_file():
            if path.suffix != ".gguf":
                raise LasaError(f"--model {spec}: a file must be a .gguf model; otherwise pass its directory")
            return str(prepare_gguf(path))
        if not (path / "config.json").is_file():
            raise LasaError(_no_config_message("--model", spec, path))
        return str(path)
    if _looks_like_path(spec):
        raise LasaError(
            f"model path not found: {spec} (pass an existing directory, a .gguf file, or 'default')"
        )
    _check_hub_reachable(spec)
    return spec  # a hub id


def check_given_model(lm: Any, spec: str, fn: str) -> None:
    """A model handed to a stage function (``run_locate(cfg, lm)``) must be ``cfg.model``: the stage
    records and keys its artefacts under ``cfg.model``, so another model's states were cached as
    that model's (a later run without ``lm`` reused them) and its bottleneck credited to it.
    Compared by :func:`canonical_spec` (an alias, a path to the same folder and the hub id all
    match), which prepares nothing and asks no hub."""
    if lm is None or getattr(lm, "full_checkpoint", None) is not None:
        return
    if not isinstance(lm, LoadedModel):
        raise LasaError(f"{fn} takes a model from lasa.load_model(...) (or none), got {type(lm).__name__}")
    if canonical_spec(spec) not in {canonical_spec(lm.spec), canonical_spec(lm.path)}:
        raise LasaError(
            f"{fn}: the model passed ({lm.spec!r}) is not the config's model ({spec!r}), under which the "
            f"artefacts would be recorded; build the config with model={lm.spec!r} (or pass no model)"
        )


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def _check_hub_reachable(repo_id: str, timeout: float = 3.0) -> None:
    """Fail in seconds, not after transformers' retries, when a hub id cannot be fetched.

    A hub id already in the local HF cache is left to transformers (no process-wide setting is
    changed); otherwise one TCP connect to the hub decides. With ``HF_HUB_OFFLINE=1`` only the
    cache is consulted.
    """
    import socket

    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # an invalid repo id: let from_pretrained word the error
        return
    if isinstance(
        cached, str
    ):  # in the local cache: transformers can load it (set HF_HUB_OFFLINE=1 to skip its checks)
        return
    hint = (
        f"model {repo_id!r} is not in the local Hugging Face cache and "
        + ("HF_HUB_OFFLINE=1 is set" if _hub_offline() else "the hub (huggingface.co) cannot be reached")
        + "; download it on a connected machine and pass its directory, or use --model default"
    )
    if _hub_offline():
        raise LasaError(hint)
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        raise LasaError(hint) from None


def num_layers_of(spec: str) -> int:
    """Decoder blocks of ``spec`` from its config alone (milliseconds, no weights loaded)."""

    return int(text_config(load_config(resolve_model_path(spec), spec)).num_hidden_layers)


def check_supported(config: Any, spec: str) -> None:
    """Refuse models whose hidden-state geometry lasa cannot interpret (mixture-of-experts)."""
    cfg = text_config(config)
    for key in _MOE_KEYS:
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 1:
            raise LasaError(
                f"{spec} is a mixture-of-experts model ({key}={value}); not supported: per-expert routing makes "
                "the bottleneck geometry ill-posed. Use a dense model."
            )
    if getattr(config, "is_encoder_decoder", False):
        raise LasaError(f"{spec} is an encoder-decoder model; lasa needs a decoder-only chat model")


def find_decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder block list: the ModuleList as long as ``num_hidden_layers`` (shallowest wins)."""
    n = getattr(text_config(model.config), "num_hidden_layers", None)
    candidates = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and (n is None or len(mod) == n)
    ]
    if not candidates:
        raise LasaError(
            f"could not find the decoder layers of {type(model).__name__} (num_hidden_layers={n})"
        )
    # Prefer the conventional names, then the shallowest path (a language model inside a
    # multimodal wrapper sits deeper than a vision tower only if its name is not 'layers').
    candidates.sort(key=lambda nm: (not nm[0].endswith(("layers", ".h", "blocks")), nm[0].count("."), nm[0]))
    return candidates[0]


def model_fingerprint(model: nn.Module, tokenizer: Any) -> dict:
    """Identity of a model, robust to the dtype it was loaded in.

    ``id`` hashes the architecture and tokenizer; ``weight_sample`` is a handful of weights from the
    first and last decoder blocks, compared with a tolerance (bf16 rounding is ~0.4%), so an SSI
    trained on one checkpoint is refused on another checkpoint of the same architecture.
    """
    cfg = text_config(model.config)
    arch = {
        "model_type": getattr(cfg, "model_type", None),
        "num_hidden_layers": getattr(cfg, "num_hidden_layers", None),
        "hidden_size": getattr(cfg, "hidden_size", None),
        "intermediate_size": getattr(cfg, "intermediate_size", None),
        "vocab_size": getattr(cfg, "vocab_size", None),
        "tokenizer_size": len(tokenizer) if tokenizer is not None else None,
    }
    _, layers = find_decoder_layers(model)
    sample: list[float] = []
    for block in (layers[0], layers[-1]):
        weights = [p for name, p in block.named_parameters() if p.dim() == 2 and "lora_" not in name]
        if weights:
            w = weights[0].detach().reshape(-1)
            idx = torch.linspace(0, w.numel() - 1, 16).long().to(w.device)
            sample += [round(float(v), 6) for v in w[idx].float().cpu()]
    return {
        "id": hashlib.sha256(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:16],
        "arch": arch,
        "weight_sample": sample,
    }


#: The files of a checkpoint whose change changes what the model computes.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".json")


def numerics_identity(lm: LoadedModel) -> dict:
    """What a loaded model's numbers depend on, for keys of cached states and scores: the weights'
    files (:func:`weights_signature`), a sample of the loaded weights, dtype and device."""
    param = next(lm.model.parameters())
    return {
        "weights": weights_signature(lm.spec),
        "sample": lm.fingerprint.get("weight_sample"),
        "dtype": str(param.dtype),
        "device": param.device.type,
    }


def canonical_spec(spec: str) -> str:
    """One name per model for comparing two ``--model`` values: the embedded name for an alias
    ('default'), the resolved path for a local checkpoint, else the hub id as given."""
    embedded = default_model.embedded_name(spec)
    if embedded:
        return embedded
    path = Path(spec).expanduser()
    if not path.exists():
        return spec.strip()
    path = path.resolve()
    cached = (default_model.cache_dir() / "models").resolve()
    if path.parent == cached and default_model.embedded_name(path.name):  # an embedded model by its path
        return str(default_model.embedded_name(path.name))
    return str(path)


def weights_signature(spec: str) -> str:
    """A cheap identity of the weights behind ``spec``, for cache keys checked before any model load.

    For a local checkpoint (directory or file, the embedded models included): the names, sizes and
    modification times of its weight and config files, so replacing or re-converting the weights
    under the same path invalidates caches keyed on it, without reading gigabytes to hash them. A
    hub id is its own identity (a cached snapshot does not change in place)."""
    from lasa.runs import fingerprint

    embedded = default_model.embedded_name(spec)
    path = Path(resolve_model_path(spec)) if embedded else Path(spec).expanduser()
    if not path.exists():  # a hub id: no network call here (the cache may be all an offline run has)
        return fingerprint({"id": spec})
    files = sorted(
        f
        for f in ([path] if path.is_file() else path.iterdir())
        if f.is_file() and f.suffix in _WEIGHT_SUFFIXES
    )
    return fingerprint([(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files])


def fingerprints_match(a: dict, b: dict, rtol: float = 1e-2) -> bool:
    if a.get("id") != b.get("id"):
        return False
    sa, sb = a.get("weight_sample") or [], b.get("weight_sample") or []
    if len(sa) != len(sb):
        return False
    ta, tb = torch.tensor(sa), torch.tensor(sb)
    return bool(torch.allclose(ta, tb, rtol=rtol, atol=1e-3 * float(ta.abs().max().clamp(min=1e-6))))


try:  # raised by transformers >= 5 for a config.json whose fields contradict each other
    from huggingface_hub.errors import StrictDataclassError as _CONFIG_INVALID
except ImportError:  # older huggingface_hub: such configs raise ValueError (caught below)
    _CONFIG_INVALID = ()  # type: ignore[assignment,misc]


def load_config(path: str, spec: str) -> Any:
    """The model's transformers config, or a one-line error (no weights are read)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path)
    except _CONFIG_INVALID as err:
        # transformers 5 validates a config as it builds it (hub's strict dataclasses); the cause
        # names the bad field, the wrapper's first line only the validator
        cause = str(err.__cause__ or err).strip()
        raise LasaError(
            f"{spec}: its config.json is invalid ({cause.splitlines()[-1].strip()[:160]}); restore it from "
            "the original checkpoint"
        ) from None
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise LasaError(
            f"could not load model {spec!r} ({first}); check the id, pass a local directory or .gguf file, "
            "or use --model default (this machine may be offline)"
        ) from None


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise LasaError(
            f"no usable tokenizer at {path} ({type(err).__name__}); add the model's tokenizer files"
        ) from None
    if len(tok) < 2:  # transformers builds an empty tokenizer from a folder without tokenizer files
        raise LasaError(
            f"no tokenizer files at {path} (tokenizer.json / vocab); add the model's tokenizer files"
        )
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok


def check_vocab(tokenizer: Any, config: Any, spec: str) -> None:
    """Refuse a tokenizer with more tokens than the model has embedding rows, before the weights
    load: a prompt holding one of the extra ids ended generation in an ``IndexError`` from the
    embedding (a tokenizer of another model, or a model whose embedding was never resized)."""
    rows = getattr(text_config(config), "vocab_size", None)
    if isinstance(rows, int) and rows > 0 and len(tokenizer) > rows:
        raise LasaError(
            f"{spec}: its tokenizer has {len(tokenizer)} tokens but the model only {rows} embedding rows; "
            "pass the tokenizer the model was trained with (or resize the embeddings and save the model)"
        )


def check_loaded_weights(info: dict, spec: str) -> None:
    """Refuse a checkpoint that lacks weights its config asks for: transformers initialises them at
    random and only logs a load report, so a config.json without ``num_hidden_layers`` (the class
    default, 32 for Qwen2, applies) generated from 28 random blocks without an error."""
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise LasaError(
            f"{spec}: the checkpoint has no weights for {len(missing)} parameters of the model its config.json "
            f"describes (first: {missing[0]}); config.json does not match the weights (num_hidden_layers, "
            "vocab_size, ...): restore it from the original checkpoint"
        )


def load_model(spec: str = "default", device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Load ``spec`` for inference (eval mode, no grad); see the module docstring for what it accepts."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(spec)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    t0 = time.time()
    config = load_config(path, spec)
    check_supported(config, spec)
    tokenizer = load_tokenizer(path)  # before the weights: a missing tokenizer fails in milliseconds
    check_vocab(tokenizer, config, spec)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, output_loading_info=True)
    except OSError as err:  # a config without weights next to it
        first = str(err).strip().splitlines()[0][:160]
        raise LasaError(
            f"could not load the weights of {spec!r} ({first}); add them or rebuild the folder"
        ) from None
    check_loaded_weights(info, spec)
    model.to(dev)
    model.eval()
    model.requires_grad_(False)
    layers_path, layers = find_decoder_layers(model)
    fp = model_fingerprint(model, tokenizer)
    logger.info(
        "loaded %s (%s, %d layers, d=%d) on %s/%s in %.1f s",
        spec,
        type(model).__name__,
        len(layers),
        text_config(model.config).hidden_size,
        dev,
        str(torch_dtype).removeprefix("torch."),
        time.time() - t0,
    )
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        spec=spec,
        path=path,
        layers=layers,
        layers_path=layers_path,
        fingerprint=fp,
        # a full fine-tune lasa saved is a variant of its base, however it is loaded
        full_checkpoint=read_full_record(path) if is_full_checkpoint(path) else None,
    )


def meta_skeleton(spec: str) -> nn.Module | None:
    """The model's module tree on the ``meta`` device, built from its config: names and layer
    shapes without weights or memory, for checks that must come before a load (None when this
    transformers has no causal-LM class for the architecture: the load itself will say)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = load_config(resolve_model_path(spec), spec)
    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except Exception:
        return None


def _adapter_mismatch(path: Path, modules: dict[str, nn.Module]) -> str | None:
    """What in the adapter's weights this module tree cannot take (a module it lacks, or a LoRA
    factor whose width differs from the module's), else None."""
    from safetensors import safe_open

    with safe_open(str(path / "adapter_model.safetensors"), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    for key, shape in sorted(shapes.items()):
        for part, axis in ((".lora_A.", 1), (".lora_B.", 0)):
            if part not in key:
                continue
            name = key.split(part)[0].removeprefix("base_model.model.")
            mod = modules.get(name)
            if mod is None:
                return f"it adapts {name}, which this model does not have"
            want = getattr(mod, "in_features" if axis == 1 else "out_features", None)
            if want is not None and len(shape) == 2 and shape[axis] != want:
                side = "inputs" if axis == 1 else "outputs"
                return f"its {name} has {shape[axis]} {side}, this model's {want}"
    return None


#: What a full fine-tune's record must hold for lasa to evaluate it as a variant of its base.
_FULL_RECORD_KEYS = ("base_model", "base_path", "base_fingerprint", "frozen_blocks")


def read_full_record(path: str | Path) -> dict:
    """The record of a full fine-tune (:func:`is_full_checkpoint`), or a one-line error when it lacks
    what the evaluation reads (a hand-edited or hand-written ``lasa_adapter.json``)."""
    rec = adapter_record(path)
    missing = [k for k in _FULL_RECORD_KEYS if k not in rec]
    if missing:
        raise LasaError(
            f"{Path(path) / 'lasa_adapter.json'} marks a full fine-tune but lacks {', '.join(missing)}; "
            "retrain it with `lasa align --no-lora`, or evaluate it as a model of its own with --model"
        )
    return rec


def full_checkpoint_base(rec: dict) -> str:
    """Where a full fine-tune's base model is: the resolved directory recorded at training time
    (absolute, so the working directory does not matter) while it exists, else its ``--model``
    spec (a hub id or an embedded name)."""
    base_path = Path(str(rec["base_path"]))
    return str(base_path) if base_path.is_absolute() and base_path.exists() else str(rec["base_model"])


def is_full_checkpoint(path: str | Path | None) -> bool:
    """A whole fine-tuned model ``lasa align --no-lora`` saved (not a PEFT adapter)."""
    return (
        path is not None
        and (Path(path) / "config.json").is_file()
        and bool(adapter_record(path).get("full_model"))
    )


def checkpoint_weight_files(path: str | Path) -> list[Path]:
    """The weight files of a full fine-tune at ``path``: the shards its index names (and the index),
    else ``model.safetensors`` (listed even when missing, so a check that needs it sees it gone)."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError):
            return [index]
        return [index, *(path / s for s in shards)]
    return [path / "model.safetensors"]


def adapter_complete(path: str | Path) -> bool:
    """Whether ``lasa align``'s output at ``path`` holds its weights: a PEFT adapter's config and
    weights, or a full fine-tune's config and weights (one file or the shards its index names)."""
    path = Path(path)
    if is_full_checkpoint(path):
        return all(f.is_file() for f in checkpoint_weight_files(path))
    return all((path / f).is_file() for f in ("adapter_config.json", "adapter_model.safetensors"))


def load_full_checkpoint(path: str | Path, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Load a full fine-tune as a variant of its base: the weights are the checkpoint's, and
    :attr:`LoadedModel.full_checkpoint` keeps the record naming the base it was trained from
    (:func:`load_model` attaches it to any directory lasa saved this way)."""
    if not is_full_checkpoint(path):
        raise LasaError(f"{path} is not a full fine-tune saved by `lasa align --no-lora`")
    return load_model(str(path), device, dtype)


def load_base_of(lm: LoadedModel, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """The base model a full fine-tune was trained from, checked against the fingerprint recorded at
    training time: another model under the same name would give drift against the wrong base."""
    rec = lm.full_checkpoint or {}
    base = load_model(full_checkpoint_base(rec), device, dtype)
    if not fingerprints_match(base.fingerprint, rec.get("base_fingerprint") or {}):
        raise LasaError(
            f"{base.spec} is not the model {lm.path} was fine-tuned from (its weights differ from the recorded "
            "base fingerprint); put that base back there, or evaluate without the drift utility"
        )
    return base


def check_full_checkpoint_gate(path: str | Path, ssi: Any) -> None:
    """Gating a full fine-tune is exact only when training left the SSI's layer alone: the SSI must
    be the base model's, and its layer at or below the blocks the fine-tune froze (the default
    ``--lora-layers above_bottleneck``). Refused otherwise, from the record alone (before a load)."""
    rec = read_full_record(path)
    if not fingerprints_match(ssi.meta.get("model_fingerprint") or {}, rec["base_fingerprint"]):
        raise LasaError(
            f"the SSI was trained on {ssi.meta.get('model')!r}, but the full fine-tune at {path} was trained "
            f"from {rec['base_model']!r}; gate it with an SSI of its base model"
        )
    frozen = int(rec["frozen_blocks"])
    if ssi.layer > frozen:
        raise LasaError(
            f"the full fine-tune at {path} trained block {frozen + 1} and up, so the SSI's layer {ssi.layer} reads a "
            f"state the training moved; retrain it with --bottleneck-layer {ssi.layer} or more (blocks up to it "
            f"frozen), gate with an SSI at layer {frozen} or less, or evaluate it without the gate"
        )


def check_adapter_fits(adapter: str | Path, spec: str) -> None:
    """A one-line error, before the model loads, when a PEFT adapter was trained for another base
    model (PEFT's own message is a state-dict size mismatch or a "target modules not found"
    traceback, after the load). Checked on the model's meta skeleton against the adapter's
    safetensors header; an adapter saved another way, or an architecture without a skeleton, is
    left to PEFT."""
    path = Path(adapter)
    if is_full_checkpoint(path):
        return  # a whole model, loaded as such (lasa.evaluate.load_variant)
    if not (path / "adapter_model.safetensors").is_file():
        return
    skeleton = meta_skeleton(spec)
    if skeleton is None:
        return
    try:
        problem = _adapter_mismatch(path, dict(skeleton.named_modules()))
    except Exception:  # an unreadable header: PEFT's load names it
        return
    if problem:
        raise LasaError(
            f"adapter {path} was trained for another base model than {spec} ({problem}); pass the "
            "model it was trained on (--model), or an adapter trained on this one"
        )


def load_adapter(lm: LoadedModel, path: str | Path) -> LoadedModel:
    """Wrap ``lm`` with a trained PEFT adapter (inference mode); the base fingerprint is kept."""
    from peft import PeftModel

    if is_full_checkpoint(path):
        raise LasaError(
            f"{path} is a full fine-tune, not an adapter: load it with lasa.load_model({str(path)!r})"
        )

    problem = (
        _adapter_mismatch(Path(path), dict(lm.model.named_modules()))
        if (Path(path) / "adapter_model.safetensors").is_file()
        else None
    )
    if problem:  # the Python API's path: a one-line error instead of PEFT's state-dict traceback
        raise LasaError(f"adapter {path} was trained for another base model ({problem})")
    with warnings.catch_warnings():
        # PEFT reads transformers' deprecated `is_gradient_checkpointing` (a FutureWarning from
        # transformers >= 5.24 that says nothing about the user's run); only that one is muted.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        model = PeftModel.from_pretrained(lm.model, str(path), is_trainable=False)
    model.eval()
    layers_path, layers = find_decoder_layers(model)
    return LoadedModel(
        model=model,
        tokenizer=lm.tokenizer,
        spec=lm.spec,
        path=lm.path,
        layers=layers,
        layers_path=layers_path,
        fingerprint=lm.fingerprint,
    )


def validate_layer(layer: int, num_layers: int, what: str = "--layer") -> int:
    """Layers are ``hidden_states`` indices: 1..num_layers (0 would be the embeddings)."""
    if not isinstance(layer, int) or not 1 <= layer <= num_layers:
        raise LasaError(f"{what} {layer} is out of range; this model has layers 1..{num_layers}")
    return layer


class base_model:
    """Context manager: run a PEFT-wrapped model with its adapters disabled (a no-op otherwise)."""

    def __init__(self, lm: LoadedModel):
        self.ctx = lm.model.disable_adapter() if hasattr(lm.model, "disable_adapter") else None

    def __enter__(self) -> None:
        if self.ctx is not None:
            self.ctx.__enter__()

    def __exit__(self, *exc: Any) -> None:
        if self.ctx is not None:
            self.ctx.__exit__(*exc)


class merged_adapter:
    """Context manager: fold a PEFT LoRA adapter into the base weights while generating.

    Unmerged, every adapted module pays for two extra low-rank matmuls (and their dispatch) at every
    decoding step; merged, the adapter costs nothing. The gain is modest for a rank-8 LoRA on 9 of 24
    blocks: 28.3 s -> 27.3 s (1.04x) for 16 prompts x 64 tokens on 2 CPU cores
    (``bench/run.py generation_adapter``), more for larger ranks or LoRA on every block. On exit the
    adapter is unmerged again, so :class:`base_model` (adapter off) and training see the weights
    they expect. Only fp32 weights are merged: in bf16/fp16 the low-rank update would be rounded into
    the base weights (and lose part of its effect), so there the adapter stays unmerged.
    Entering :class:`base_model` inside this context would unmerge silently (correct, but slow):
    callers merge only when nothing inside needs the adapter off (see ``lasa.generate``).
    """

    def __init__(self, lm: LoadedModel, enabled: bool = True):
        model = lm.model
        self.model = (
            model
            if enabled
            and hasattr(model, "merge_adapter")
            and getattr(model, "peft_type", None) is not None
            and next(model.parameters()).dtype == torch.float32
            else None
        )

    @property
    def active(self) -> bool:
        return self.model is not None

    def __enter__(self) -> bool:
        if self.model is not None:
            self.model.merge_adapter()
        return self.active

    def __exit__(self, *exc: Any) -> None:
        if self.model is not None:
            self.model.unmerge_adapter()
