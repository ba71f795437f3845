"""The Safety Semantic Interpreter (SSI): a small MLP on the bottleneck state, as an artefact.

The SSI reads the last-token state of the *raw* user prompt at the bottleneck layer of the
*frozen base model* and predicts p(harmful). This module is the SSI itself — the network, its
metadata, persistence, model checks and scoring — used by the gate at inference; training it and
measuring its transfer is the interpret stage (``lasa.interpret``).

Architecture (saved with the weights, unlike the release, whose trainer and loader disagreed):
standardise → Linear(d→h) → LayerNorm → GELU → Dropout → Linear(h→1), h = d_model by default.
The standardisation (train-set mean/std per feature, stored as buffers) is ours: Qwen states
carry a few channels hundreds of times larger than the rest, which otherwise dominate the MLP.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from torch import nn

from lasa.errors import LasaError
from lasa.models import LoadedModel, base_model, fingerprints_match
from lasa.runs import atomic_path, read_json_object, sha256_file, write_json

logger = logging.getLogger(__name__)

INDEX_CONVENTION = (
    "layer l = output of decoder block l = transformers hidden_states[l] (1..L; 0 = embeddings); "
    "last non-padding token of the prompt (raw text, or the chat template's user turn plus the assistant "
    "header when chat_template is true; with pooling user_last, the last token of the user's own text "
    "inside that template)"
)


class SafetySemanticInterpreter(nn.Module):
    """standardise → Linear(d→h) → LayerNorm → GELU → Dropout → Linear(h→1); returns logits."""

    def __init__(self, d_model: int, hidden: int | None = None, dropout: float = 0.1):
        super().__init__()
        hidden = hidden or d_model
        self.register_buffer("mean", torch.zeros(d_model))
        self.register_buffer("std", torch.ones(d_model))
        self.net = nn.Sequential(
            nn.Linear(d_model, hidden),
            nn.LayerNorm(hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.standardise(x)).squeeze(-1)

    def fit_scaler(self, x: torch.Tensor) -> None:
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0).clamp(min=1e-4))


class SSIEnsemble(nn.Module):
    """Several SSIs trained on different train / validation splits (seeds), read as one: the mean of
    the members' decision margins ``logit_k(x) - logit(t_k)``, where ``t_k`` is member k's own
    validated threshold. A member's threshold maps to margin 0, so the ensemble flags at logit 0
    (p 0.5) and no new threshold is fitted.

    Why: on the quick preset's pool one SSI's XSTest safe-prompt FPR ranged 0.12-0.58 over 15 seeds
    (the split decides ~120 validation rows, and the balanced-accuracy threshold and the head move
    with it), while ensembles of 5 ranged 0.23-0.32 (``scripts/ssi_ensemble.py``): the gate a user
    gets stops hinging on one seed. ``standardise`` (which the language calibration's LID head
    reads) uses a scaler fitted on the whole pool."""

    def __init__(self, d_model: int, hidden: int | None, dropout: float, n_members: int):
        super().__init__()
        self.members = nn.ModuleList(
            SafetySemanticInterpreter(d_model, hidden, dropout) for _ in range(n_members)
        )
        self.register_buffer("threshold_logits", torch.zeros(n_members))
        self.register_buffer("mean", torch.zeros(d_model))
        self.register_buffer("std", torch.ones(d_model))

    @classmethod
    def of(cls, members: Sequence[SafetySemanticInterpreter], thresholds: Sequence[float], x: torch.Tensor):
        """The ensemble of trained ``members`` with their validated ``thresholds``; ``x``: the pool's
        states, for the shared scaler."""
        first = members[0]
        d_model, hidden = first.net[0].in_features, first.net[0].out_features
        out = cls(d_model, hidden, float(first.net[3].p), len(members))
        for mine, theirs in zip(out.members, members, strict=True):
            mine.load_state_dict(theirs.state_dict())
        t = torch.tensor([min(max(float(v), 1e-6), 1 - 1e-6) for v in thresholds])
        out.threshold_logits.copy_(torch.log(t / (1 - t)))
        out.mean.copy_(x.mean(0))
        out.std.copy_(x.std(0).clamp(min=1e-4))
        return out.eval()

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) - t for m, t in zip(self.members, self.threshold_logits)]).mean(0)


def state_max_length(meta: dict) -> int:
    """The prompt truncation (last tokens kept) the SSI's states were extracted with: scoring must
    use the same, or a long prompt's state differs from the ones the threshold was calibrated on.
    SSIs saved before it was recorded were all extracted at interpret's default, 256."""
    return int(meta.get("max_length", 256))


class LanguageCalibration:
    """Per-language score offsets, fitted without a harm label in any language.

    A language-ID head (multinomial logistic regression on the SSI's standardised input state,
    fitted on FLORES sentences) tells which language a prompt is in, and each unseen language's
    offset raises its effective threshold to the ``1 - benign_fpr`` quantile (q95 by default) of
    the SSI's logit on that language's benign FLORES sentences, where that quantile lies above the
    global threshold (``lasa.interpret.calibrate.fit_language_calibration``): a language whose
    benign text already scores high needs more evidence before it is flagged. An offset never
    lowers a threshold. Scoring subtracts the LID-weighted offset from the SSI's logit, so no
    language label is needed at inference; the training languages keep offset 0, so the threshold
    calibrated on their validation split is untouched.
    """

    def __init__(
        self, languages: Sequence[str], weight: torch.Tensor, bias: torch.Tensor, offsets: torch.Tensor
    ):
        self.languages = list(languages)
        self.weight, self.bias, self.offsets = weight.float(), bias.float(), offsets.float()

    def language_probs(self, z: torch.Tensor) -> torch.Tensor:
        """p(language) for standardised states ``z``."""
        return torch.softmax(z @ self.weight.T + self.bias, dim=-1)

    def shift(self, z: torch.Tensor) -> torch.Tensor:
        """The logit offset to subtract, per row of standardised states ``z``."""
        return self.language_probs(z) @ self.offsets

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight, "bias": self.bias, "offsets": self.offsets}


class SSI:
    """A trained SSI with its metadata; load with ``SSI.load(run_dir)``, score with ``ssi.score(lm, prompts)``."""

    def __init__(
        self,
        module: SafetySemanticInterpreter | SSIEnsemble,
        meta: dict,
        calibration: LanguageCalibration | None = None,
    ):
        self.module = module.eval()
        self.meta = meta
        self.calibration = calibration
        self.source: Path | None = None  # the directory it was loaded from

    def without_calibration(self) -> SSI:
        """The same SSI scoring every language on the one validated scale (no per-language offsets)."""
        return SSI(self.module, self.meta)

    @property
    def layer(self) -> int:
        return int(self.meta["layer"])

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"])

    def with_threshold(self, threshold: float) -> SSI:
        """The same SSI flagging above ``threshold`` (the saved one stays as calibrated)."""
        if not 0 < threshold < 1:
            raise LasaError(f"--gate-threshold must be in (0, 1), got {threshold}")
        calibrated = self.meta.get("calibrated_threshold", self.meta["threshold"])
        return SSI(
            self.module,
            self.meta | {"threshold": float(threshold), "calibrated_threshold": calibrated},
            self.calibration,
        )

    @property
    def digest(self) -> str:
        """Identity of what the gate decides with: the weights, the language calibration and the
        settings that turn a state into a flag (layer, pooling, prompt format, threshold). Stored
        with every gated completion, so a retrained SSI or a new threshold regenerates them."""
        import hashlib

        h = hashlib.sha256()
        tensors = dict(self.module.state_dict())
        if self.calibration is not None:
            tensors |= {f"calibration.{k}": v for k, v in self.calibration.tensors().items()}
        for name in sorted(tensors):
            h.update(name.encode())
            h.update(tensors[name].detach().float().cpu().contiguous().numpy().tobytes())
        settings = {k: self.meta.get(k) for k in ("layer", "pooling", "chat_template", "threshold")}
        settings["max_length"] = state_max_length(self.meta)
        h.update(json.dumps(settings, sort_keys=True).encode())
        return h.hexdigest()[:16]

    # -- persistence ---------------------------------------------------------------------
    def save(self, out_dir: str | Path) -> None:
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        with atomic_path(out_dir / "ssi.safetensors", suffix=".safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in self.module.state_dict().items()}, str(tmp))
        cal_path = out_dir / "calibration.safetensors"
        if self.calibration is not None:
            with atomic_path(cal_path, suffix=".safetensors") as tmp:
                tensors = {k: v.contiguous() for k, v in self.calibration.tensors().items()}
                save_file(tensors, str(tmp), metadata={"languages": " ".join(self.calibration.languages)})
        elif cal_path.exists():
            cal_path.unlink()
        # the weights' hash ties ssi.json to them: an interrupted re-run that replaced the weights
        # but not ssi.json (another layer, seed or threshold, same shapes) must not load as one SSI
        self.meta["weights_sha256"] = sha256_file(out_dir / "ssi.safetensors")
        write_json(out_dir / "ssi.json", self.meta)  # written last

    @classmethod
    def load(cls, path: str | Path) -> SSI:
        """``path``: a run directory, its ``ssi/`` folder, or an ``ssi.json`` file."""
        from safetensors.torch import load_file

        path = Path(path)
        if path.is_file():
            if path.name != "ssi.json":
                raise LasaError(f"--ssi {path}: give a run directory, its ssi/ folder or an ssi.json file")
            path = path.parent
        if not (path / "ssi.json").is_file() and (path / "ssi" / "ssi.json").is_file():
            path = path / "ssi"
        if not (path / "ssi.json").is_file() or not (path / "ssi.safetensors").is_file():
            raise LasaError(
                f"no trained SSI in {path}; run `lasa interpret --run-dir ...` first (--ssi takes a "
                "directory, an ssi.json, or the --out-name of an SSI in the run directory)"
            )
        try:
            meta = read_json_object(path / "ssi.json")
            arch = meta["architecture"]
            module: nn.Module = (
                SSIEnsemble(arch["d_model"], arch["hidden"], arch["dropout"], int(arch["ensemble"]))
                if int(arch.get("ensemble", 1)) > 1
                else SafetySemanticInterpreter(arch["d_model"], arch["hidden"], arch["dropout"])
            )
            want = meta.get("weights_sha256")  # absent in SSIs saved before it was recorded
            if want is not None and want != sha256_file(path / "ssi.safetensors"):
                raise LasaError(
                    f"{path}/ssi.json does not describe its ssi.safetensors (the weights of another "
                    "interpret run: an interrupted rerun?); rerun `lasa interpret`"
                )
            module.load_state_dict(load_file(str(path / "ssi.safetensors")))
            calibration = None
            if (meta.get("calibration") or {}).get("method", "none") != "none":
                from safetensors import safe_open

                cal_path = path / "calibration.safetensors"
                if not cal_path.is_file():
                    raise LasaError(
                        f"{path}/ssi.json names a language calibration but {cal_path.name} is missing; "
                        "rerun `lasa interpret`"
                    )
                with safe_open(str(cal_path), framework="pt") as f:
                    langs = (f.metadata() or {})["languages"].split()
                    t = {k: f.get_tensor(k) for k in ("weight", "bias", "offsets")}
                calibration = LanguageCalibration(langs, t["weight"], t["bias"], t["offsets"])
        except LasaError:
            raise
        except (
            KeyError,
            TypeError,
            ValueError,
            AttributeError,
            RuntimeError,
            OSError,
            SafetensorError,
        ) as err:
            # a hand-edited or truncated ssi.json, or a damaged ssi.safetensors
            raise LasaError(
                f"the SSI in {path} is damaged ({type(err).__name__}: {err}); rerun `lasa interpret`"
            ) from None
        ssi = cls(module, meta, calibration)
        ssi.source = path
        return ssi

    # -- inference -----------------------------------------------------------------------
    def check_config(self, spec: str) -> None:
        """:meth:`check_model`'s shape test from ``spec``'s config alone (milliseconds): an SSI of
        another architecture is refused before a model load of a minute, not after it."""
        from lasa.models import load_config, resolve_model_path, text_config

        c = text_config(load_config(resolve_model_path(spec), spec))
        have = {"layers": int(c.num_hidden_layers), "width": int(c.hidden_size)}
        want = {
            "layers": self.meta.get("num_layers"),
            "width": (self.meta.get("architecture") or {}).get("d_model"),
        }
        if any(want[k] is not None and int(want[k]) != have[k] for k in have):
            raise LasaError(
                f"this SSI was trained on {self.meta.get('model')!r} ({want['layers']} layers of width "
                f"{want['width']}); {spec} has {have['layers']} of width {have['width']}; retrain with "
                f"`lasa interpret --model {spec}`"
            )

    def check_model(self, lm: LoadedModel, layer: int | None = None) -> None:
        """Refuse a model other than the one the SSI was trained on, or a different layer. A full
        fine-tune lasa trained passes when its base is the SSI's model and training froze the
        blocks up to the SSI's layer (its state there is then the base's)."""
        fp = self.meta.get("model_fingerprint") or {}
        if lm.full_checkpoint is not None:
            from lasa.models import check_full_checkpoint_gate

            check_full_checkpoint_gate(lm.path, self)
        elif not fingerprints_match(fp, lm.fingerprint):
            how = (
                f"the same architecture (fingerprint {fp.get('id')}) with other weights"
                if fp.get("id") == lm.fingerprint.get("id")
                else f"fingerprint {lm.fingerprint.get('id')}, the SSI's {fp.get('id')}"
            )
            raise LasaError(
                f"this SSI was trained on {self.meta.get('model')!r}, but the model given is {lm.spec!r} "
                f"({how}); retrain with `lasa interpret --model {lm.spec}`"
            )
        if layer is not None and int(layer) != self.layer:
            raise LasaError(f"this SSI reads layer {self.layer}; layer {layer} was requested")
        if int(self.meta.get("num_layers", lm.num_layers)) != lm.num_layers:
            raise LasaError(
                f"this SSI was trained on a {self.meta['num_layers']}-layer model; this one has "
                f"{lm.num_layers}"
            )

    @torch.inference_mode()
    def logits(self, states: torch.Tensor | np.ndarray) -> torch.Tensor:
        """The SSI's logit per state, after the per-language offset when it has a calibration."""
        x = torch.as_tensor(states, dtype=torch.float32)
        out = self.module(x)
        if self.calibration is not None:
            out = out - self.calibration.shift(self.module.standardise(x))
        return out

    def predict_proba(self, states: torch.Tensor | np.ndarray) -> np.ndarray:
        return torch.sigmoid(self.logits(states)).numpy()

    def score(
        self, lm: LoadedModel, prompts: Sequence[str], batch_size: int = 16, progress: bool = True
    ) -> np.ndarray:
        """p(harmful) per prompt, from the base model's bottleneck state (PEFT adapters disabled)."""
        from lasa.hidden import extract_states, text_list

        prompts = text_list(prompts, "SSI.score", lm)
        self.check_model(lm)
        with base_model(lm):
            states = extract_states(
                lm,
                list(prompts),
                layers=[self.layer],
                pooling=self.meta.get("pooling", "last"),
                chat_template=bool(self.meta.get("chat_template")),
                batch_size=batch_size,
                max_length=state_max_length(self.meta),
                progress=progress,
                desc="ssi: scoring",
            )
        return self.predict_proba(states[:, 0])

    def flags(self, probs: np.ndarray) -> np.ndarray:
        return np.asarray(probs) > self.threshold


#: Per-prompt p(harmful) kept beside an SSI (``RUN/ssi/scores.json``: ``lasa interpret`` scores every
#: prompt it extracted) and by a run's gated variants (``RUN/eval/ssi_scores.json``): a raw-prompt
#: SSI reads the base model's state, so a later gate can take a prompt's score instead of a pass.
SCORES_FILE = "scores.json"


def scores_key(ssi: Any, lm: LoadedModel) -> str:
    """What a raw-prompt score depends on: the SSI (:attr:`SSI.digest`) and the base model's
    weights, dtype and device."""
    from lasa.models import numerics_identity
    from lasa.runs import fingerprint

    return fingerprint({"ssi": ssi.digest, **numerics_identity(lm)})


def read_scores(path: Path, key: str) -> dict[str, float]:
    """The scores kept in ``path`` under ``key`` (empty when absent, unreadable or another key)."""
    if not path.is_file():
        return {}
    try:
        kept = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        logger.warning("ignoring unreadable %s", path)
        return {}
    if not isinstance(kept, dict) or kept.get("key") != key or not isinstance(kept.get("scores"), dict):
        return {}  # another key, or not what write_scores writes: scored afresh
    try:
        return {str(k): float(v) for k, v in kept["scores"].items()}
    except (TypeError, ValueError):
        logger.warning("ignoring damaged %s", path)
        return {}


def write_scores(path: Path, key: str, scores: dict[str, float]) -> None:
    write_json(path, {"key": key, "scores": scores})
