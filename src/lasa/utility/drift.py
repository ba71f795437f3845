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
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
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


def shared_blocks(lm: LoadedModel) -> int:
    """How many leading decoder blocks compute the same states with the adapter on and off.

    With LoRA above the bottleneck (the default placement) the blocks up to L* carry no adapter,
    so the base pass can start from the adapted pass's state there instead of recomputing it: on
    the 0.5B (L* = 15 of 24) that is 15 of the 48 block passes drift needs. 0 when an adapter
    touches the first block, or when the blocks differ by type (sliding-window layers are indexed
    by position, so a shortened block list would give them the wrong mask)."""
    from lasa.generate import adapter_layers
    from lasa.models import text_config

    touched = adapter_layers(lm)
    if not touched:
        return 0
    kinds = set(getattr(text_config(lm.model.config), "layer_types", None) or ["uniform"])
    return min(touched) - 1 if len(kinds) == 1 else 0


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


def paired_log_probs(
    lm: LoadedModel, ids: torch.Tensor, mask: torch.Tensor, keep: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token log-probabilities under the adapted model and under its base (adapter disabled),
    the base pass reusing the blocks the two share (:func:`shared_blocks`)."""
    k = shared_blocks(lm)
    if k == 0:
        lp = _forward(lm, ids, mask, keep)
        with base_model(lm):
            return lp, _forward(lm, ids, mask, keep)
    state: dict[str, torch.Tensor] = {}

    def grab(_mod: Any, _inp: Any, out: Any) -> None:
        state["h"] = out[0] if isinstance(out, tuple) else out

    hook = lm.layers[k - 1].register_forward_hook(grab)
    try:
        lp = _forward(lm, ids, mask, keep)
    finally:
        hook.remove()
    with base_model(lm), _from_block(lm, k):
        lb = _forward(lm, ids, mask, keep, embeds=state["h"])
    return lp, lb


@torch.inference_mode()
def token_drift(
    lm: LoadedModel, texts: Sequence[str], batch_size: int = 8, progress: bool = True, desc: str = "drift"
) -> dict:
    """Teacher-forced NLL per token under the model as loaded (adapter on) and, when it has an
    adapter, under its base, plus the mean per-token KL(adapter ‖ base). Right-padded batches;
    every real next-token position counts once."""
    from tqdm.auto import tqdm

    tok = lm.tokenizer
    seqs = [list(tok(t, add_special_tokens=True)["input_ids"])[:256] for t in texts]
    seqs = [s for s in seqs if len(s) >= 2]
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    batches = forward_batches([len(q) for q in seqs], batch_size)
    adapter = _has_adapter(lm)
    nll, nll_base, kl, n = 0.0, 0.0, 0.0, 0
    for idx in tqdm(batches, desc=desc, disable=not progress, unit="batch", leave=False):
        ids, mask = pad_batch([seqs[i] for i in idx], pad_id, "left")
        if adapter:
            lp, lb = (x[:, :-1] for x in paired_log_probs(lm, ids, mask))
        else:
            lp = _forward(lm, ids, mask)[:, :-1]
        target = ids[:, 1:].to(lp.device)
        real = (mask[:, 1:].bool() & mask[:, :-1].bool()).to(lp.device)
        nll -= float(lp.gather(-1, target[..., None])[..., 0][real].sum())
        n += int(real.sum())
        if adapter:
            nll_base -= float(lb.gather(-1, target[..., None])[..., 0][real].sum())
            kl += float((lp.exp() * (lp - lb)).sum(-1)[real].sum())
    n = max(n, 1)
    out = {"ppl": float(np.exp(nll / n)), "tokens": n}
    out["ppl_base"] = float(np.exp(nll_base / n)) if adapter else out["ppl"]
    out["token_kl"] = kl / n if adapter else 0.0
    return out


@torch.inference_mode()
def first_token_kl(lm: LoadedModel, prompts: Sequence[str], batch_size: int = 8) -> float:
    """Mean KL(adapter ‖ base) of the first assistant token's distribution on chat prompts."""
    if not _has_adapter(lm) or not prompts:
        return 0.0
    seqs = format_prompts(lm.tokenizer, list(prompts), chat_template=True)
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    total = 0.0
    for idx in forward_batches([len(s) for s in seqs], batch_size):
        ids, mask = pad_batch([seqs[i] for i in idx], pad_id, "left")
        lp, lb = (x[:, -1] for x in paired_log_probs(lm, ids, mask, keep=1))
        total += float((lp.exp() * (lp - lb)).sum(-1).sum())
    return total / len(seqs)


def eval_drift(
    lm: LoadedModel,
    langs: Sequence[str] | None = None,
    n: int = 50,
    batch_size: int = 8,
    progress: bool = True,
) -> dict:
    """Per language: FLORES perplexity (adapter and base), token KL and first-token KL; means."""
    from lasa.data.safety import evaluation_prompts, flores

    langs = list(langs or LANGUAGES)
    benign, _ = evaluation_prompts(langs, n_harmful=1, n_benign=n)
    per: dict[str, dict] = {}
    for lang in langs:
        texts = [p.text for p in flores(lang, "eval")][:n]
        row = token_drift(lm, texts, batch_size, progress, desc=f"drift {lang}")
        row["first_token_kl"] = first_token_kl(
            lm, [p.text for p in benign if p.lang == lang and p.label == 0][:n], batch_size
        )
        per[lang] = row
    mean = {
        k: float(np.mean([r[k] for r in per.values()]))
        for k in ("ppl", "ppl_base", "token_kl", "first_token_kl")
    }
    worst = max(per, key=lambda g: per[g]["ppl"] / per[g]["ppl_base"])
    return {
        "per_language": per,
        "mean": mean,
        "ppl_ratio_worst": {"lang": worst, "ratio": per[worst]["ppl"] / per[worst]["ppl_base"]},
        "adapter": _has_adapter(lm),
        "n_per_language": n,
    }
