"""Drift: how far an adapter moved the model's next-token distributions, in every language.

On a 0.5B model zero-shot MMLU reads a letter bias and XCOPA sits near chance, so "utility
unchanged" there cannot fail. Drift measures can: they compare the adapted model with its own
base (adapters disabled) on the same tokens, so any change the adapter makes shows up, and a
small one is a measured small one, not a floor effect.

- **FLORES perplexity** per language (teacher-forced on FLORES-200 dev/test sentences, raw text):
  the adapter's language modelling in each of the ten languages, next to the base's.
- **Token KL** per language: mean over those tokens of KL(adapter ‖ base) of the next-token
  distribution, in nats.
- **First-token KL** per language on benign chat prompts (the SSI's benign evaluation questions):
  KL of the first assistant token's distribution — where a needless refusal would begin.

A variant without an adapter has KL 0 by definition (only its perplexity is computed). The SSI
gate does not apply (no assistant turn is generated), so a gated variant takes these numbers from
its ungated twin.

**The base side is computed once per run.** Every adapter variant compares itself with the same
base on the same tokens, so that base pass is kept (:class:`BaseReference`: the state below the
adapters' first block and the base's final states) in ``RUN/eval/drift_reference.safetensors``:
the base variant keeps its own FLORES pass (its perplexity needs it anyway; the split comes from
the run's adapter configs, :func:`run_adapter_split`), the first adapter variant adds the chats,
and every adapter variant with the same split runs only the adapted blocks: on the 0.5B (LoRA
above L* = 15 of 24) 9 block passes per token instead of 33. The numbers are the same (tests).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lasa.data import LANGUAGES
from lasa.hidden import format_prompts, forward_batches, pad_batch, position_ids_from_mask
from lasa.models import LoadedModel, base_model

logger = logging.getLogger(__name__)


def _has_adapter(lm: LoadedModel) -> bool:
    return hasattr(lm.model, "peft_config")


def _forward(
    lm: LoadedModel,
    ids: torch.Tensor,
    mask: torch.Tensor,
    keep: int | None = None,
    embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    kw: dict = {"logits_to_keep": keep} if keep else {}
    kw |= {"inputs_embeds": embeds} if embeds is not None else {"input_ids": ids.to(lm.device)}
    out = lm.model(
        attention_mask=mask.to(lm.device),
        position_ids=position_ids_from_mask(mask).to(lm.device),
        use_cache=False,
        **kw,
    )
    return out.logits.float().log_softmax(-1)


#: Model families whose decoder rescales ``inputs_embeds`` (by sqrt(d)): a pass that feeds a block's
#: output back in as ``inputs_embeds`` would be scaled twice, so nothing is shared for them.
_SCALED_EMBEDDINGS = ("gemma", "gemma2", "gemma3", "gemma3_text")


def shared_blocks(lm: LoadedModel) -> int:
    """How many leading decoder blocks compute the same states with the adapter on and off.

    With LoRA above the bottleneck (the default placement) the blocks up to L* carry no adapter,
    so the base pass can start from the adapted pass's state there instead of recomputing it: on
    the 0.5B (L* = 15 of 24) that is 15 of the 48 block passes drift needs. 0 when an adapter
    touches the first block, or when the blocks differ by type (sliding-window layers are indexed
    by position, so a shortened block list would give them the wrong mask)."""
    from lasa.generate import adapter_layers

    touched = adapter_layers(lm)
    return min(touched) - 1 if touched and can_restart(lm) else 0


def can_restart(lm: LoadedModel) -> bool:
    """Whether a pass can start at a block's output (:class:`_from_block`) on this model."""
    from lasa.models import text_config

    cfg = text_config(lm.model.config)
    if getattr(cfg, "model_type", "") in _SCALED_EMBEDDINGS:
        return False
    return len(set(getattr(cfg, "layer_types", None) or ["uniform"])) == 1


class _from_block:
    """Context manager: the decoder runs blocks ``k..`` only, taking the state after block ``k``
    as its input embeddings (the rotary embeddings and the causal mask are rebuilt the same way
    from the positions and the attention mask)."""

    def __init__(self, lm: LoadedModel, k: int):
        parent, _, name = lm.layers_path.rpartition(".")
        self.parent = lm.model.get_submodule(parent) if parent else lm.model
        self.name, self.full, self.k = name, getattr(self.parent, name), k

    def __enter__(self) -> None:
        setattr(self.parent, self.name, torch.nn.ModuleList(list(self.full)[self.k :]))

    def __exit__(self, *exc: Any) -> None:
        setattr(self.parent, self.name, self.full)


#: The base side of drift kept in ``RUN/eval/`` for the next adapter variant (:class:`BaseReference`).
REFERENCE_FILE = "drift_reference.safetensors"


def _head_log_probs(lm: LoadedModel, final: torch.Tensor) -> torch.Tensor:
    """The base model's next-token log-probabilities from its final (normed) states."""
    with base_model(lm):
        return lm.model.get_output_embeddings()(final).float().log_softmax(-1)


class BaseReference:
    """The base model's side of :func:`paired_log_probs`, kept per batch for the next adapter variant.

    For each batch: the state after the last block the adapter leaves alone (where an adapted pass
    can start) and the base's final states (the input of the LM head, so the base log-probs cost one
    head multiplication). Stored in one safetensors file whose metadata key covers what the numbers
    depend on (the checkpoint's files and weights, dtype, the split block, the batch size and the
    texts); a different key starts an empty reference. Before the first batch is kept, the head
    recomputed from the kept states must give exactly the base pass's log-probs — a model that
    post-processes its logits (soft-capping) fails that, and nothing is kept for it."""

    def __init__(self, path: Path | None, key: str, split: int = 0):
        self.path, self.key, self.split = path, key, split
        self.tensors: dict[str, torch.Tensor] = {}
        self.added = 0
        self.enabled = True
        self.hits = 0
        if path is not None and path.is_file():
            from safetensors import safe_open

            try:
                with safe_open(str(path), framework="pt") as f:
                    if (f.metadata() or {}).get("key") == key:
                        # cloned into torch's own (aligned) memory: the head's kernels round
                        # differently on a buffer with another alignment
                        self.tensors = {k: f.get_tensor(k).clone() for k in f.keys()}  # noqa: SIM118
            except Exception:  # a damaged file is recomputed, never trusted
                logger.warning("drift: ignoring unreadable %s", path)

    def get(self, name: str, count: bool = True) -> tuple[torch.Tensor, torch.Tensor] | None:
        if f"{name}/k" not in self.tensors:
            return None
        self.hits += count
        return self.tensors[f"{name}/k"], self.tensors[f"{name}/final"]

    def put(
        self, lm: LoadedModel, name: str, state: torch.Tensor, final: torch.Tensor, lb: torch.Tensor
    ) -> None:
        if not self.enabled or self.path is None:
            return
        if self.added == 0 and not torch.equal(_head_log_probs(lm, final), lb):
            logger.info("drift: this model's logits are not its head's output; base states not kept")
            self.enabled = False
            return
        self.tensors[f"{name}/k"] = state.detach().cpu().contiguous()
        self.tensors[f"{name}/final"] = final.detach().cpu().contiguous()
        self.added += 1

    def save(self) -> None:
        if self.path is None or not self.enabled or not self.added:
            return
        from safetensors.torch import save_file

        from lasa.runs import atomic_path

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path, suffix=".safetensors") as tmp:
            save_file(self.tensors, str(tmp), metadata={"key": self.key})


def reference_key(lm: LoadedModel, k: int, batch_size: int, texts: Any) -> str:
    """What the base states of :class:`BaseReference` depend on (``texts``: any JSON-able record of
    the texts, in the order they are batched)."""
    from lasa.models import numerics_identity
    from lasa.runs import fingerprint

    return fingerprint({**numerics_identity(lm), "split": k, "batch_size": batch_size, "texts": texts})


def paired_log_probs(
    lm: LoadedModel,
    ids: torch.Tensor,
    mask: torch.Tensor,
    keep: int | None = None,
    reference: BaseReference | None = None,
    name: str = "",
    base_lm: LoadedModel | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token log-probabilities under the adapted model and under its base (adapter disabled),
    the base pass reusing the blocks the two share (:func:`shared_blocks`). With a ``reference``
    that holds batch ``name`` the base pass is not run at all and the adapted pass starts at the
    shared state; without one, what this base pass computed is put there. ``base_lm``: the base
    as a model of its own (a full fine-tune has no adapter to disable), run on the same batch."""
    if base_lm is not None:
        return _forward(lm, ids, mask, keep), _forward(base_lm, ids, mask, keep)
    k = shared_blocks(lm)
    if k == 0:
        lp = _forward(lm, ids, mask, keep)
        with base_model(lm):
            return lp, _forward(lm, ids, mask, keep)
    hit = reference.get(name) if reference is not None else None
    if hit is not None:
        state, final = (x.to(lm.device) for x in hit)
        with _from_block(lm, k):
            lp = _forward(lm, ids, mask, keep, embeds=state)
        return lp, _head_log_probs(lm, final)
    grabbed: dict[str, torch.Tensor] = {}
    with _grabbing(lm, grabbed, block=k):
        lp = _forward(lm, ids, mask, keep)
    with _grabbing(lm, grabbed, head_input=True), base_model(lm), _from_block(lm, k):
        lb = _forward(lm, ids, mask, keep, embeds=grabbed["h"])
    if reference is not None:
        reference.put(lm, name, grabbed["h"], grabbed["final"], lb)
    return lp, lb


@contextlib.contextmanager
def _grabbing(
    lm: LoadedModel, into: dict[str, torch.Tensor], block: int = 0, head_input: bool = False
) -> Iterator[None]:
    """Keep, in ``into``, the output of decoder block ``block`` (1-based; ``"h"``) and / or the LM
    head's input (``"final"``) of the passes run inside."""

    def grab(_mod: Any, _inp: Any, out: Any) -> None:
        into["h"] = out[0] if isinstance(out, tuple) else out

    def grab_final(_mod: Any, args: Any) -> tuple:
        # a fresh copy, laid out as when it is read back: the head then multiplies the same layout
        # (a ``logits_to_keep`` slice is a strided view, which rounds differently)
        into["final"] = args[0].clone(memory_format=torch.contiguous_format)
        return (into["final"], *args[1:])

    hooks = [lm.layers[block - 1].register_forward_hook(grab)] if block else []
    if head_input:
        hooks.append(lm.model.get_output_embeddings().register_forward_pre_hook(grab_final))
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


@torch.inference_mode()
def token_drift(
    lm: LoadedModel,
    texts: Sequence[str],
    batch_size: int = 8,
    progress: bool = True,
    desc: str = "drift",
    reference: BaseReference | None = None,
    per_text: bool = False,
    base_lm: LoadedModel | None = None,
) -> dict:
    """Teacher-forced NLL per token under the model as loaded (adapter on) and, when it has an
    adapter, under its base, plus the mean per-token KL(adapter ‖ base). Right-padded batches;
    every real next-token position counts once. ``per_text``: also return each text's summed NLL
    (adapter, base) and token count under ``per_text``, in the order of ``texts`` (0 tokens for a
    text too short to predict), for paired intervals over texts."""
    from tqdm.auto import tqdm

    tok = lm.tokenizer
    seqs = [list(tok(t, add_special_tokens=True)["input_ids"])[:256] for t in texts]
    kept = [i for i, s in enumerate(seqs) if len(s) >= 2]  # a text of one token predicts nothing
    seqs = [seqs[i] for i in kept]
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    batches = forward_batches([len(q) for q in seqs], batch_size)
    adapter = _has_adapter(lm) or base_lm is not None
    nll, nll_base, kl, n = 0.0, 0.0, 0.0, 0
    rows: dict[str, list] = {
        "nll": [0.0] * len(texts),
        "nll_base": [0.0] * len(texts),
        "tokens": [0] * len(texts),
    }
    for b, idx in enumerate(tqdm(batches, desc=desc, disable=not progress, unit="batch", leave=False)):
        ids, mask = pad_batch([seqs[i] for i in idx], pad_id, "left")
        if adapter:
            lp, lb = (
                x[:, :-1]
                for x in paired_log_probs(
                    lm, ids, mask, reference=reference, name=f"{desc}/{b}", base_lm=base_lm
                )
            )
        elif reference is not None and reference.split and reference.get(f"{desc}/{b}", count=False) is None:
            # the base variant of a run with adapters: its own pass is the base side they compare with
            grabbed: dict[str, torch.Tensor] = {}
            with _grabbing(lm, grabbed, block=reference.split, head_input=True):
                full = _forward(lm, ids, mask)
            reference.put(lm, f"{desc}/{b}", grabbed["h"], grabbed["final"], full)
            lp = full[:, :-1]
        else:
            lp = _forward(lm, ids, mask)[:, :-1]
        target = ids[:, 1:].to(lp.device)
        real = (mask[:, 1:].bool() & mask[:, :-1].bool()).to(lp.device)
        own = -torch.where(real, lp.gather(-1, target[..., None])[..., 0], 0.0).sum(1)
        base = -torch.where(real, lb.gather(-1, target[..., None])[..., 0], 0.0).sum(1) if adapter else own
        nll += float(own.sum())
        n += int(real.sum())
        if adapter:
            nll_base += float(base.sum())
            kl += float((lp.exp() * (lp - lb)).sum(-1)[real].sum())
        if per_text:
            for j, i in enumerate(idx):
                t = kept[i]
                rows["nll"][t], rows["nll_base"][t] = float(own[j]), float(base[j])
                rows["tokens"][t] = int(real[j].sum())
    n = max(n, 1)
    out: dict = {"ppl": float(np.exp(nll / n)), "tokens": n}
    out["ppl_base"] = float(np.exp(nll_base / n)) if adapter else out["ppl"]
    out["token_kl"] = kl / n if adapter else 0.0
    if per_text:
        out["per_text"] = rows
    return out


@torch.inference_mode()
def first_token_kl(
    lm: LoadedModel,
    prompts: Sequence[str],
    batch_size: int = 8,
    reference: BaseReference | None = None,
    name: str = "first",
    base_lm: LoadedModel | None = None,
) -> float:
    """Mean KL(adapter ‖ base) of the first assistant token's distribution on chat prompts."""
    if not (_has_adapter(lm) or base_lm is not None) or not prompts:
        return 0.0
    seqs = format_prompts(lm.tokenizer, list(prompts), chat_template=True)
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    total = 0.0
    for b, idx in enumerate(forward_batches([len(s) for s in seqs], batch_size)):
        ids, mask = pad_batch([seqs[i] for i in idx], pad_id, "left")
        lp, lb = (
            x[:, -1]
            for x in paired_log_probs(
                lm, ids, mask, keep=1, reference=reference, name=f"{name}/{b}", base_lm=base_lm
            )
        )
        total += float((lp.exp() * (lp - lb)).sum(-1).sum())
    return total / len(seqs)


def eval_drift(
    lm: LoadedModel,
    langs: Sequence[str] | None = None,
    n: int = 50,
    batch_size: int = 8,
    progress: bool = True,
    reference_path: str | Path | None = None,
    base_split: int = 0,
    base_lm: LoadedModel | None = None,
) -> dict:
    """Per language: FLORES perplexity (adapter and base), token KL and first-token KL; means.

    ``reference_path``: where the base side of the comparison is kept for the next adapter variant
    (:class:`BaseReference`; ``lasa evaluate`` passes ``RUN/eval/drift_reference.safetensors``).
    ``base_split``: for a model without an adapter, how many leading blocks the run's adapters
    leave alone (:func:`run_adapter_split`): the base variant's own FLORES pass is then kept as the
    base side the adapter variants read, so the first of them runs FLORES through its adapted
    blocks only. ``base_lm``: the base model loaded on its own, for a full fine-tune ``lm`` (no
    adapter to disable; both models are held for the pass)."""
    from lasa.data.safety import evaluation_prompts, flores

    langs = list(langs or LANGUAGES)
    benign, _ = evaluation_prompts(langs, n_harmful=1, n_benign=n)
    texts = {lang: [p.text for p in flores(lang, "eval")][:n] for lang in langs}
    chats = {lang: [p.text for p in benign if p.lang == lang and p.label == 0][:n] for lang in langs}
    reference = None
    # the base variant keeps its pass for the adapter variants that split at ``base_split``
    base_keeps = base_split > 0 and not _has_adapter(lm) and base_lm is None and can_restart(lm)
    split = shared_blocks(lm) if _has_adapter(lm) else (base_split if base_keeps else 0)
    if reference_path is not None and split > 0:
        key = reference_key(lm, split, batch_size, {"langs": langs, "flores": texts, "chats": chats})
        reference = BaseReference(Path(reference_path), key, split)
    per: dict[str, dict] = {}
    for lang in langs:
        row = token_drift(
            lm, texts[lang], batch_size, progress, desc=f"drift {lang}", reference=reference, base_lm=base_lm
        )
        row["first_token_kl"] = first_token_kl(
            lm, chats[lang], batch_size, reference=reference, name=f"first {lang}", base_lm=base_lm
        )
        per[lang] = row
    if reference is not None:
        if reference.hits:
            logger.info("drift: base side read from %s (%d batches)", reference.path, reference.hits)
        reference.save()
    mean = {
        k: float(np.mean([r[k] for r in per.values()]))
        for k in ("ppl", "ppl_base", "token_kl", "first_token_kl")
    }
    worst = max(per, key=lambda g: per[g]["ppl"] / per[g]["ppl_base"])
    return {
        "per_language": per,
        "mean": mean,
        "ppl_ratio_worst": {"lang": worst, "ratio": per[worst]["ppl"] / per[worst]["ppl_base"]},
        "adapter": _has_adapter(lm) or base_lm is not None,
        **({"full_fine_tune": True} if base_lm is not None else {}),
        "n_per_language": n,
        "base_batches_read": reference.hits if reference is not None else 0,
        "base_batches_kept": reference.added if reference is not None else 0,
    }


def run_adapter_split(run_dir: str | Path) -> int:
    """How many leading decoder blocks every LoRA adapter under ``RUN/align/`` leaves alone (0 when
    there is none, when one adapts the first block, or when they disagree): where the adapter
    variants' drift will split, so that the base variant can keep its pass for them."""
    import json

    splits = set()
    for cfg_path in sorted(Path(run_dir, "align").glob("*/adapter/adapter_config.json")):
        try:
            layers = json.loads(cfg_path.read_text()).get("layers_to_transform")
        except (OSError, ValueError):
            return 0
        if isinstance(layers, int):
            layers = [layers]
        splits.add(min(layers) if layers else 0)
    return splits.pop() if len(splits) == 1 else 0
