"""Pooled hidden states at chosen layers, in batched forward passes that stop at the last layer needed.

Index convention (used everywhere in lasa and stored with every artefact): layer ``l`` in
``1..num_layers`` is the residual stream *after* decoder block ``l``, i.e. ``hidden_states[l]``
of transformers (0 would be the embeddings). One deliberate difference: transformers applies the
final norm to its last entry, ``hidden_states[L]``; lasa reads every layer, the last included,
as the block output, so that all layers are on the same footing and a truncated pass (which never
reaches the final norm) gives the same numbers as a full one.

States are captured by forward hooks on the decoder blocks and pooled inside the hook, so memory
is O(batch x layers x d), the ``lm_head`` never runs, and blocks above the highest requested layer
are skipped by stopping the forward pass from the hook. Pooling reads the attention mask, so
results do not depend on batch size or on left vs right padding (position ids are derived from
the mask for the same reason).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

from lasa.errors import LasaError
from lasa.models import LoadedModel, validate_layer

logger = logging.getLogger(__name__)

Pooling = Literal["last", "mean", "user_last", "user_mean"]


class _StopForward(Exception):
    """Raised from the hook on the highest requested layer: nothing above it needs to run."""


def text_list(texts: Any, what: str, lm: Any = None) -> list[str]:
    """``texts`` as a list of strings, or a one-line error naming ``what`` took them: one string
    (``ssi.score(lm, "How do I ...")``) is a sequence of characters, and was scored or answered one
    character at a time without a word. ``lm``, when given, must be a loaded model, not its name."""
    from pathlib import PurePath

    if isinstance(lm, str | PurePath):
        raise LasaError(
            f"{what} takes a loaded model, got the name {str(lm)!r}; use lasa.load_model({str(lm)!r})"
        )
    if isinstance(texts, str | bytes):
        raise LasaError(
            f"{what} takes a list of prompts, got one string; wrap it in a list: [{texts[:40]!r}]"
        )
    out = list(texts)
    bad = [x for x in out if not isinstance(x, str)][:1]
    if bad:
        raise LasaError(f"{what} takes prompts as strings, got a {type(bad[0]).__name__} ({bad[0]!r:.60})")
    return out


def format_prompts(tokenizer: Any, texts: Sequence[str], chat_template: bool) -> list[list[int]]:
    """Token ids of each prompt: raw text (with the tokenizer's own special tokens, e.g. Llama's BOS)
    or a single user turn in the chat template followed by the generation prompt."""
    if not chat_template:
        return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=True)["input_ids"]]
    if getattr(tokenizer, "chat_template", None) is None:
        # ``lasa generate`` / ``evaluate`` always format as chat and have no --chat-template flag: the
        # message named that flag only, and no fix (lasa.conditioning.chat_prefix names one)
        raise LasaError(
            "this model's tokenizer has no chat template (generation, and locate / interpret with "
            "--chat-template, need one): pass an instruct / chat checkpoint (or add a chat_template to its "
            "tokenizer_config.json)"
        )
    out = []
    for text in texts:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
        )
        if hasattr(ids, "keys"):  # transformers >= 5 returns a BatchEncoding
            ids = ids["input_ids"]
        out.append(list(ids))
    return out


def _chat_edges(tokenizer: Any) -> tuple[int, int]:
    """(head, tail): tokens the chat template puts before the user's text (system turn + user
    header) and after it (end of turn + assistant header), read as the common head and tail of two
    templated one-turn chats whose texts differ at both ends. Cached on the tokenizer."""
    cached = getattr(tokenizer, "_lasa_chat_edges", None)
    if cached is not None:
        return cached
    a, b = format_prompts(tokenizer, ["A hello there A", "B hello there B"], chat_template=True)
    n = min(len(a), len(b))
    head = next((k for k in range(n) if a[k] != b[k]), n)
    tail = next((k for k in range(n) if a[-1 - k] != b[-1 - k]), n)
    with contextlib.suppress(AttributeError):  # slots-only tokenizers just recompute
        tokenizer._lasa_chat_edges = (head, tail)
    return head, tail


def chat_suffix_length(tokenizer: Any) -> int:
    """Tokens the chat template puts after the user's text (end of turn + assistant header).

    The ``user_last`` pooling reads the last token of the user's own message inside the chat
    prefill: the state generation computes anyway, so a gate reading it costs no extra pass, yet
    (unlike the assistant header's last token) it is still a token of the prompt.
    """
    return _chat_edges(tokenizer)[1]


def chat_prefix_length(tokenizer: Any) -> int:
    """Tokens the chat template puts before the user's text (system turn + user header)."""
    return _chat_edges(tokenizer)[0]


def user_span(tokenizer: Any, pooling: str, chat_template: bool) -> tuple[int, int]:
    """(offset, head) for :func:`pool`: the template tokens after and before the user's text for
    the ``user_*`` poolings, (0, 0) otherwise; those poolings need the chat template."""
    if pooling not in ("user_last", "user_mean"):
        return 0, 0
    if not chat_template:
        raise LasaError(
            f"pooling {pooling} reads the user's turn inside the chat template; add --chat-template"
        )
    head, tail = _chat_edges(tokenizer)
    return tail, head if pooling == "user_mean" else 0


def _longest_first(lengths: Sequence[int], batch_size: int, items: Sequence[int] | None) -> list[int]:
    if batch_size < 1:
        raise LasaError(f"batch size must be at least 1, got {batch_size}")
    return sorted(range(len(lengths)) if items is None else items, key=lambda i: -lengths[i])


def length_batches(
    lengths: Sequence[int], batch_size: int, items: Sequence[int] | None = None
) -> list[list[int]]:
    """Indices grouped into batches of ``batch_size``, longest first: batched generation pads
    within a batch of similar lengths, and the longest batch runs first, so an out-of-memory error
    shows at once rather than at the end. Forward-only passes use :func:`forward_batches`."""
    order = _longest_first(lengths, batch_size, items)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


#: What one forward call costs beyond its tokens, in token-equivalents: on 2 CPU cores reading the
#: 0.5B model's weights once takes about as long as pushing ~64 tokens through it.
CALL_COST = 64


def forward_batches(
    lengths: Sequence[int], batch_size: int, items: Sequence[int] | None = None, call_cost: int = CALL_COST
) -> list[list[int]]:
    """Like :func:`length_batches` (longest first, at most ``batch_size`` per batch) for passes with
    no decoding loop (hidden states, log-likelihoods, drift), split to minimise padded tokens plus
    ``call_cost`` per call: an exact dynamic programme over the length-sorted order.

    Why: multilingual prompts differ in token count by 10x (a Bengali prompt the 0.5B's tokenizer
    reads as 542 tokens beside an English one of 40), and a fixed-count batch pads every row to its
    longest — on the drift utility's prompts, 20,680 padded tokens for 13,401 real ones; this split
    pads 14,708. Generation keeps :func:`length_batches`: there every extra batch repeats the whole
    decoding loop, which costs far more than padding the prefill."""
    order = _longest_first(lengths, batch_size, items)
    n = len(order)
    # best[j]: the least cost of batching order[:j]; a batch order[s:j] costs (j - s) * its first
    # (longest) length + call_cost
    best = [0.0] + [float("inf")] * n
    start = [0] * (n + 1)
    for j in range(1, n + 1):
        for s in range(max(0, j - batch_size), j):
            cost = best[s] + (j - s) * lengths[order[s]] + call_cost
            if cost <= best[j]:  # on a tie the later start: full batches first, the short one last
                best[j], start[j] = cost, s
    batches, j = [], n
    while j > 0:
        batches.append(order[start[j] : j])
        j = start[j]
    return batches[::-1]


def pad_batch(
    seqs: Sequence[Sequence[int]], pad_id: int, side: Literal["left", "right"] = "left"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to a rectangle; returns ``(input_ids, attention_mask)``."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        t = torch.as_tensor(s, dtype=torch.long)
        if side == "left":
            ids[i, width - len(s) :] = t
            mask[i, width - len(s) :] = 1
        else:
            ids[i, : len(s)] = t
            mask[i, : len(s)] = 1
    return ids, mask


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... over real tokens only, so a left-padded prompt sees the same positions as alone."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def pool(
    hidden: torch.Tensor, mask: torch.Tensor, pooling: Pooling, offset: int = 0, head: int | torch.Tensor = 0
) -> torch.Tensor:
    """(B, T, d) → (B, d): last real token (``offset`` tokens before it for ``user_last``), the
    mean over real tokens after the first one, or (``user_mean``) the mean over the user's own
    tokens inside a chat prefill (``head`` template tokens before them, ``offset`` after)."""
    mask = mask.to(hidden.device)
    if pooling in ("last", "user_last", "user_mean"):
        # first and last real token, whichever side the padding is on
        pos = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        last = torch.where(mask.bool(), pos, torch.full_like(pos, -1)).max(dim=1).values
        if pooling == "user_mean":  # `head`: one count for the batch, or one per row
            lo = mask.long().argmax(dim=1) + torch.as_tensor(head, device=mask.device)
            hi = torch.maximum(last - offset, lo)  # an empty message: its one position
            keep = ((pos >= lo[:, None]) & (pos <= hi[:, None])).to(hidden.dtype).unsqueeze(-1)
            return (hidden * keep).sum(1) / keep.sum(1)
        last = (last - (offset if pooling == "user_last" else 0)).clamp(min=0)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if pooling == "mean":
        # drop the first real token: Qwen-style models park huge "attention sink" activations there
        first = mask.long().argmax(dim=1)
        keep = mask.clone().float()
        keep[torch.arange(mask.shape[0], device=mask.device), first] = 0.0
        empty = keep.sum(1) == 0
        if empty.any():  # one-token prompts: fall back to that token
            keep[empty] = mask[empty].float()
        keep = keep.to(hidden.dtype).unsqueeze(-1)
        return (hidden * keep).sum(1) / keep.sum(1)
    raise LasaError(f"unknown pooling {pooling!r}; use last, mean, user_last or user_mean")


def _block_output(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple | list) else output


@torch.inference_mode()
def extract_states(
    lm: LoadedModel,
    texts: Sequence[str],
    layers: Sequence[int] | None = None,
    pooling: Pooling = "last",
    batch_size: int = 16,
    max_length: int = 512,
    chat_template: bool = False,
    padding_side: Literal["left", "right"] = "left",
    progress: bool = True,
    desc: str = "hidden states",
    checkpoint: Callable[[list[int], torch.Tensor], None] | None = None,
    checkpoint_seconds: float = 60.0,
) -> torch.Tensor:
    """Pooled states ``(len(texts), len(layers), d)`` in float32 on the CPU.

    ``layers`` are 1-based block indices (default: all). Prompts are batched in order of length to
    minimise padding; longer prompts keep their *end* (the last token is what the probe reads).
    ``checkpoint(done, states)``, when given, is called about every ``checkpoint_seconds`` with the
    indices done so far and their states, so a caller can save progress that an interruption keeps
    (the batches, and so the states, are the same as without it).
    """
    from tqdm.auto import tqdm

    n_layers = lm.num_layers
    layers = (
        list(range(1, n_layers + 1)) if layers is None else [validate_layer(int(x), n_layers) for x in layers]
    )
    if not layers:
        raise LasaError("no layers requested")
    if not texts:
        return torch.zeros((0, len(layers), lm.hidden_size))
    tok = lm.tokenizer
    offset, head = user_span(tok, pooling, chat_template)
    full = format_prompts(tok, texts, chat_template)
    seqs = [s[-max_length:] for s in full]
    # a prompt cut to its last `max_length` tokens lost (part of) the template's head: user_mean
    # then skips only what is left of the head, not the user's own first tokens
    heads = [max(0, head - (len(f) - len(s))) for f, s in zip(full, seqs)]
    if any(len(s) == 0 for s in seqs):
        bad = next(i for i, s in enumerate(seqs) if len(s) == 0)
        raise LasaError(f"prompt {bad} is empty after tokenisation; remove empty prompts from the input")
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    top = max(layers)
    slot = {layer: j for j, layer in enumerate(layers)}
    out = torch.zeros((len(seqs), len(layers), lm.hidden_size), dtype=torch.float32)
    current: dict[str, torch.Tensor] = {}
    captured: dict[int, torch.Tensor] = {}

    def make_hook(layer: int):
        def hook(_module, _args, output):
            captured[layer] = (
                pool(_block_output(output), current["mask"], pooling, offset, current["head"]).float().cpu()
            )
            if layer == top:
                raise _StopForward

        return hook

    handles = [lm.layers[layer - 1].register_forward_hook(make_hook(layer)) for layer in layers]
    device = lm.device
    done: list[int] = []
    last_save = time.monotonic()
    try:
        batches = forward_batches([len(q) for q in seqs], batch_size)
        for idx in tqdm(batches, desc=desc, disable=not progress, unit="batch", leave=False):
            if checkpoint is not None and done and time.monotonic() - last_save > checkpoint_seconds:
                checkpoint(list(done), out[torch.as_tensor(done)])
                last_save = time.monotonic()
            ids, mask = pad_batch([seqs[i] for i in idx], pad_id, padding_side)
            current["mask"] = mask
            current["head"] = torch.as_tensor([heads[i] for i in idx])
            captured.clear()
            with contextlib.suppress(_StopForward):
                lm.model(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    position_ids=position_ids_from_mask(mask).to(device),
                    use_cache=False,
                )
            rows = torch.as_tensor(idx)
            for layer, states in captured.items():
                out[rows, slot[layer]] = states
            done += list(idx)
    finally:
        for h in handles:
            h.remove()
    return out


def count_tokens(
    lm: LoadedModel, texts: Sequence[str], chat_template: bool = False, max_length: int = 512
) -> int:
    return sum(min(len(s), max_length) for s in format_prompts(lm.tokenizer, texts, chat_template))
