"""Batched chat generation, optionally SSI-gated, with per-sample records.

The gate is what LASA adds at inference: the SSI reads the prompt's bottleneck state, and for
the prompts it flags the conditioning text is placed at the start of the assistant turn before
the model continues. lasa does this inside one generation call:

1. one prefill fills the KV cache of the left-padded batch (run in sub-batches of similar length,
   whose caches are put side by side: see ``_prefill``); a hook on decoder block L* captures the
   last prompt token's state as it goes by (an SSI trained on chat-templated
   prompts reads exactly this state; one trained on raw prompts gets a truncated pass over the
   raw text instead, layers 1..L* only);
2. for the flagged rows, the conditioning tokens are pushed through the cache in one chunk, whose
   last position gives them their first token (an unflagged row has its own from the prefill);
   unflagged rows receive masked "holes" in that chunk (attention mask 0, no position advance),
   so their continuation is bit-identical to ungated generation (a sliding-window cache would
   count the holes as window slots: there the flagged rows are generated apart instead);
3. greedy decoding (or ``model.generate`` when sampling) continues all rows from that cache, one
   token already generated in each: a gated batch decodes no more steps than an ungated one.

No second pass over the prompt and no second model load. Left padding is handled by the
attention mask and mask-derived position ids, so batched and batch-1 outputs agree.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lasa.conditioning import CONDITIONING_TEXT, chat_prefix, conditioning_prefix, conditioning_token_ids
from lasa.errors import LasaError
from lasa.hidden import (
    format_prompts,
    length_batches,
    pad_batch,
    pool,
    position_ids_from_mask,
    text_list,
    user_span,
)
from lasa.models import LoadedModel, base_model, merged_adapter
from lasa.ssi import state_max_length

logger = logging.getLogger(__name__)


@dataclass
class GenerationSettings:
    max_new_tokens: int = 128
    batch_size: int = 16
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    min_new_tokens: int = 0  # benchmarks force equal lengths with this
    # the prefill runs in sub-batches of at most this many rows, split by length (see _prefill)
    prefill_batch_size: int = 16
    seed: int = 0  # sampling only: the RNG seed a run starts from (greedy decoding ignores it)

    def __post_init__(self) -> None:
        # the Python API builds these directly: max_new_tokens=0 or -1 answered every prompt with
        # an empty response (judged invalid) without a word, a negative temperature failed in HF
        for name in ("max_new_tokens", "batch_size", "prefill_batch_size", "min_new_tokens", "seed"):
            value = getattr(self, name)
            low = 0 if name in ("min_new_tokens", "seed") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise LasaError(f"GenerationSettings: {name} must be an integer >= {low}, got {value!r}")
        if self.do_sample and not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise LasaError(
                f"GenerationSettings: sampling needs temperature > 0 and 0 < top_p <= 1, got "
                f"{self.temperature!r} and {self.top_p!r}"
            )

    def hf_kwargs(self, tokenizer: Any, model: Any = None) -> dict:
        """``generate`` keywords that decode exactly these settings. A checkpoint's generation
        config may add a repetition penalty or a top-k (Qwen2.5 instruct models ship both); they
        are switched off, so every model is decoded the same way and the gate's first token, which
        lasa picks from the prefill itself (:func:`first_token`), follows the same rule as the rest
        of the answer."""
        kw: dict[str, Any] = {
            "do_sample": self.do_sample,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": _stop_ids(tokenizer, model),
            "repetition_penalty": 1.0,
            "no_repeat_ngram_size": 0,
        }
        if self.do_sample:
            kw.update(temperature=self.temperature, top_p=self.top_p, top_k=0)
        else:  # silence "generation flags are not valid" warnings from checkpoints that ship sampling defaults
            kw.update(temperature=None, top_p=None, top_k=None)
        if self.min_new_tokens:
            kw["min_new_tokens"] = self.min_new_tokens
        return kw

    def to_dict(self) -> dict:
        return {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "temperature": self.temperature if self.do_sample else 0.0,
            "top_p": self.top_p if self.do_sample else 1.0,
        } | (
            # "sampler": rows drawn from one stream per process before it; per-row streams since
            {"seed": self.seed, "sampler": "per_row"} if self.do_sample else {}
        )  # greedy rows stay keyed as before


def row_generators(seed: int, prompts: Sequence[str], device: Any = "cpu") -> list[torch.Generator]:
    """One random stream per prompt, seeded from ``seed`` and the prompt's text.

    Why: with one stream per process a row's draws depended on which rows shared its process and
    batch, and on what was drawn before it: a sampled run resumed after an interruption, or split
    over another number of processes, drew other answers for the same ``--seed``. A row's own
    stream makes its answer a function of (seed, prompt, model) alone."""
    import hashlib

    gens = []
    for text in prompts:
        digest = hashlib.sha256(f"{seed}\0{text}".encode()).digest()
        gens.append(torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "big") >> 1))
    return gens


def first_token(
    logits: torch.Tensor, settings: GenerationSettings, gens: Sequence[torch.Generator] | None = None
) -> torch.Tensor:
    """The next token from last-position ``logits`` (batch × vocab) by ``settings``' rule: argmax,
    or a draw after the same temperature and top-p warpers ``generate`` applies (from row ``i``'s
    own stream ``gens[i]`` when given, :func:`row_generators`)."""
    if not settings.do_sample:
        return logits.argmax(-1)
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    scores = logits.float()
    if settings.temperature != 1.0:
        scores = TemperatureLogitsWarper(settings.temperature)(None, scores)
    if settings.top_p < 1.0:
        scores = TopPLogitsWarper(settings.top_p)(None, scores)
    probs = torch.softmax(scores, -1)
    if gens is None:
        return torch.multinomial(probs, 1)[:, 0]
    # one uniform draw per row from its own stream, then one batched inverse-CDF lookup; u in (0, 1]
    # scaled by each row's total mass, so a token top-p zeroed (a flat step of the CDF) is never hit
    u = 1.0 - torch.stack([torch.rand((), generator=g, device=probs.device) for g in gens])
    cdf = probs.cumsum(-1)
    return torch.searchsorted(cdf, (u * cdf[:, -1])[:, None])[:, 0]


def _stop_ids(tokenizer: Any, model: Any = None) -> list[int]:
    """The eos id, every common end-of-turn token the vocabulary has, and the end-of-turn ids of
    ``model``'s generation config (a checkpoint may end its turn with a token only that config
    names, such as Llama 3.1's ``<|eom_id|>``; decoding past it would judge a made-up next turn).

    Looked up token by token with a round trip (a missing token maps to None or to unk), never via
    ``get_vocab()``: that builds a dict of the whole vocabulary (0.14 s for Qwen's 151k tokens), and
    this runs once per decoded response, where it once cost more than a GPU's decoding itself.
    """
    ids = {tokenizer.eos_token_id}
    for tok in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<end_of_turn>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid >= 0 and tokenizer.convert_ids_to_tokens(tid) == tok:
            ids.add(tid)
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= {eos} if isinstance(eos, int) else set(eos or ())
    return sorted(int(i) for i in ids if i is not None)


# -- the gate --------------------------------------------------------------------------------


@dataclass
class Gate:
    """An SSI plus how its input state is obtained during generation."""

    ssi: Any  # lasa.ssi.SSI
    conditioning_text: str = CONDITIONING_TEXT
    conditioning_ids: list[int] = field(default_factory=list)
    #: Opt-in memo of raw-prompt scores by prompt text (None: every batch runs its scoring pass).
    #: A raw-prompt SSI reads the *base* model's state at L*, so within one run every gated variant
    #: gets the same score for the same prompt: ``lasa evaluate`` fills it from the SSI's own
    #: ``scores.json`` (``lasa interpret`` scores every prompt it extracted) and the run's
    #: ``RUN/eval/ssi_scores.json``, so a gated variant skips the pass for prompts scored before
    #: (and flags exactly what an earlier one flagged). Chat-format SSIs read the prefill instead.
    known_scores: dict[str, float] | None = None

    def __post_init__(self) -> None:
        if self.ssi is None or isinstance(self.ssi, str | Path):  # failed later on .check_model
            raise LasaError(
                f"Gate takes a loaded SSI, got {self.ssi!r}; use Gate(lasa.SSI.load(RUN_DIR)) (or ConstantSSI())"
            )

    @property
    def layer(self) -> int:
        return self.ssi.layer

    def prepare(self, lm: LoadedModel) -> None:
        """Check that the SSI was trained on ``lm`` and tokenise the conditioning text once."""
        self.ssi.check_model(lm)
        if not self.conditioning_ids:  # as they follow the assistant header in a training row
            self.conditioning_ids = conditioning_token_ids(lm.tokenizer, self.conditioning_text)

    @property
    def from_prefill(self) -> bool:
        """True when the SSI was trained on chat-templated prompts: its state is read off the prefill."""
        return bool(self.ssi.meta.get("chat_template"))

    @property
    def pooling(self) -> str:
        return str(self.ssi.meta.get("pooling", "last"))


class ConstantSSI:
    """Stands in for an SSI that flags every prompt (``flag=True``) or none.

    ``Gate(ConstantSSI())`` generates every response after the conditioning text by exactly the
    mechanism the SSI gate uses at inference (conditioning tokens pushed through the cache after
    the prefill), which is how on-policy alignment rows get the model's own conditioned answers.
    """

    layer = 1
    threshold = 0.5

    def __init__(self, flag: bool = True):
        self.flag = flag
        # reads no state, so no prompt is too long for it (never the truncated pass of a real SSI)
        self.meta = {"chat_template": True, "layer": 1, "threshold": 0.5, "max_length": 1 << 30}

    @property
    def digest(self) -> str:
        return f"constant-{self.flag}"

    def check_model(self, lm: LoadedModel, layer: int | None = None) -> None:
        """Any model: there is nothing trained to mismatch."""

    def predict_proba(self, states: Any) -> np.ndarray:
        return np.full(len(states), 1.0 if self.flag else 0.0)

    def flags(self, probs: np.ndarray) -> np.ndarray:
        return np.asarray(probs) > self.threshold


def adapter_layers(model: Any) -> list[int]:
    """1-based indices of decoder blocks that carry PEFT adapter weights (empty without adapters).

    ``model``: a :class:`LoadedModel` (its decoder blocks are the ones the loader found) or a bare
    (PEFT-wrapped) model, whose blocks are found the same way."""
    from lasa.models import find_decoder_layers

    layers = model.layers if isinstance(model, LoadedModel) else find_decoder_layers(model)[1]
    return [i + 1 for i, block in enumerate(layers) if any("lora_" in n for n, _ in block.named_parameters())]


def _gate_needs_base_pass(lm: LoadedModel, gate: Gate) -> bool:
    """The prefill of an adapted model shows base-model states at L* only if no adapter sits at or below L*."""
    touched = adapter_layers(lm)
    return bool(touched) and min(touched) <= gate.layer


# -- generation ------------------------------------------------------------------------------


@functools.cache
def _cache_kw() -> str:
    """The keyword for a KV cache in ``generate`` and in a model's ``forward``: ``cache`` from
    transformers 5.24 on (where ``past_key_values`` warns and is to go in 5.40; in ``generate`` it
    arrives through ``**kwargs``, so the signature cannot tell), ``past_key_values`` before."""
    import transformers
    from packaging.version import Version

    return "cache" if Version(transformers.__version__).release >= (5, 24) else "past_key_values"


def _forward_flagged_rows(
    model: Any, cache: Any, flagged: torch.Tensor, chunk: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor | None:
    """Push the conditioning chunk through the KV cache for the flagged rows only; return their
    next-token logits after it (one row per flagged row).

    The unflagged rows of the batch get zero keys and values at the chunk's positions, which their
    attention mask hides (as the masked holes of a full-batch chunk would be): the gate then costs
    the conditioning tokens of the rows it flags, not of every row (the flagged rows' cache is copied
    once, which costs memory in proportion to them). Returns None, leaving the cache untouched,
    where there is nothing to save (every row flagged) or the cache's layers are not plain
    :class:`~transformers.DynamicCache` layers (e.g. sliding-window ones that keep only the last
    window): the caller then forwards the chunk for the whole batch."""
    from transformers import DynamicCache

    rows = flagged.nonzero()[:, 0]
    layers = getattr(cache, "layers", None)
    if len(rows) == len(flagged) or not _plain_layers(cache):
        return None
    k = chunk.shape[1]
    sub = DynamicCache(config=model.config)
    for i, layer in enumerate(layers):
        sub.update(layer.keys[rows], layer.values[rows], i)
    sub_mask = mask[rows]
    logits = model(
        input_ids=chunk[rows],
        attention_mask=sub_mask,
        position_ids=position_ids_from_mask(sub_mask)[:, -k:],
        use_cache=True,
        **{_cache_kw(): sub},
        logits_to_keep=1,
    ).logits[:, -1]
    for i, (layer, part) in enumerate(zip(layers, sub.layers)):
        keys = layer.keys.new_zeros((*layer.keys.shape[:2], k, layer.keys.shape[3]))
        values = layer.values.new_zeros((*layer.values.shape[:2], k, layer.values.shape[3]))
        keys[rows], values[rows] = part.keys[:, :, -k:], part.values[:, :, -k:]
        cache.update(keys, values, i)
    return logits


def _plain_layers(cache: Any) -> bool:
    """True when every layer of ``cache`` is a plain :class:`~transformers.DynamicCache` layer (full
    keys and values, nothing dropped), the only kind whose rows can be moved between caches."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(x).__name__ == "DynamicLayer" for x in layers)


def _common_prefix(seqs: list[list[int]]) -> int:
    """Length of the token prefix every sequence starts with (the chat template's system turn)."""
    first, n = seqs[0], min(len(q) for q in seqs)
    for p in range(n):
        if any(q[p] != first[p] for q in seqs[1:]):
            return p
    return n


#: A shared prefix shorter than this is prefilled with each row (a separate call costs more).
MIN_SHARED_PREFIX = 8


def _prefill(
    lm: LoadedModel,
    seqs: list[list[int]],
    ids: torch.Tensor,
    mask: torch.Tensor,
    capture: Any = None,
    group_size: int = 16,
) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fill a KV cache for the left-padded batch ``ids`` / ``mask``; returns it, the last
    position's logits (batch × vocab), and the ids and mask that describe the cache's layout (the
    caller continues from these). ``capture``, a :class:`_Capture` registered as a hook on block
    L*, is told which sub-batch (mask, rows) is running, so it pools each row's state.

    Why not one forward over the padded batch: multilingual prompts differ in token count by up to
    10x, and a decoding batch pads every row to its longest. On the quick preset's 104 evaluation
    prompts (two batches of 52) the padded prefill computes 17,472 positions for 7,220 real tokens;
    splitting it took a variant's generation from 117 s to 74 s on 2 CPU cores. Here the batch is prefilled in
    sub-batches of similar length (:func:`~lasa.hidden.forward_batches`) and their caches are put
    side by side, left-padded with zero keys and values that the batch's attention mask hides — the
    same masked holes as the gate's conditioning chunk. Each row's keys and values are those of
    its own tokens at its own positions (positions come from the mask), so decoding continues as
    from a padded prefill, up to float rounding of the differently shaped matrix products.

    **A prefix every row shares** (the chat template's system turn: 24 of the quick preset's 69
    tokens per prompt on the default model) is computed once and its keys and values are given to
    every row, which then prefills only its own tokens: the cache reads [shared prefix][holes][row's
    tokens]. Its keys and values depend on the prefix alone (causal attention), so this too changes
    only float rounding. A prefill-reading gate pools the row's own positions: counted from the end
    (``last``, ``user_last``) nothing changes, ``user_mean`` shares at most the template's head and
    counts from what is left of it, ``mean`` (which needs every position) shares nothing."""
    from transformers import DynamicCache

    from lasa.hidden import forward_batches

    model, dev, pad = lm.model, lm.device, lm.tokenizer.pad_token_id
    shared = _common_prefix(seqs) if len(seqs) > 1 else 0
    if capture is not None:  # the gate pools from the row's end (last, user_last) or after the head
        if capture.pooling == "mean":
            shared = 0
        elif capture.pooling == "user_mean":
            shared = min(shared, capture.head)
        elif capture.pooling == "user_last":  # rows that start alike: each keeps its last user token
            shared = min(shared, min(len(q) for q in seqs) - capture.offset - 1)
    if shared < MIN_SHARED_PREFIX or shared >= min(len(q) for q in seqs):  # every row keeps a token
        shared = 0
    prefix = None
    if shared:
        prefix = DynamicCache(config=model.config)
        model(
            input_ids=torch.as_tensor([seqs[0][:shared]], device=dev),
            use_cache=True,
            **{_cache_kw(): prefix},
            logits_to_keep=1,
        )
        if not _plain_layers(prefix):
            shared, prefix = 0, None
    if capture is not None:  # after the fallback above, which shares nothing
        capture.shared = shared
    rest = [q[shared:] for q in seqs]
    groups = forward_batches([len(q) for q in rest], group_size)

    def run(g_ids: torch.Tensor, g_mask: torch.Tensor, rows: list[int]) -> tuple[Any, torch.Tensor]:
        cache = DynamicCache(config=model.config)
        if capture is not None:  # the states it pools are this call's positions: the row's own tokens
            capture.current = (g_mask, rows)
        if prefix is not None:
            for i, layer in enumerate(prefix.layers):
                cache.update(
                    layer.keys.expand(len(rows), -1, -1, -1), layer.values.expand(len(rows), -1, -1, -1), i
                )
            g_mask = torch.cat([g_mask.new_ones((len(rows), shared)), g_mask], 1)
        out = model(
            input_ids=g_ids,
            attention_mask=g_mask,
            position_ids=position_ids_from_mask(g_mask)[:, -g_ids.shape[1] :],
            use_cache=True,
            **{_cache_kw(): cache},
            logits_to_keep=1,
        )
        return cache, out.logits[:, -1]

    if shared:
        ids, mask = pad_batch(rest, pad, "left")
        ids, mask = ids.to(dev), mask.to(dev)
        head = torch.as_tensor(seqs[0][:shared], device=dev).expand(len(seqs), -1)
        ids, mask = torch.cat([head, ids], 1), torch.cat([mask.new_ones((len(seqs), shared)), mask], 1)
    if len(groups) == 1:
        cache, logits = run(ids[:, shared:], mask[:, shared:], list(range(len(seqs))))
        return cache, logits, ids, mask
    parts = []
    for g in groups:
        g_ids, g_mask = pad_batch([rest[i] for i in g], pad, "left")
        cache, logits = run(g_ids.to(dev), g_mask.to(dev), g)
        if not _plain_layers(cache):  # e.g. sliding-window layers: prefill the padded batch instead
            cache, logits = run(ids[:, shared:], mask[:, shared:], list(range(len(seqs))))
            return cache, logits, ids, mask
        parts.append((g, cache, logits))
    n, width = ids.shape
    last = parts[0][2].new_empty((n, parts[0][2].shape[-1]))
    cache = DynamicCache(config=model.config)
    for i in range(len(parts[0][1].layers)):
        first = parts[0][1].layers[i]
        keys = first.keys.new_zeros((n, first.keys.shape[1], width, first.keys.shape[3]))
        values = first.values.new_zeros((n, first.values.shape[1], width, first.values.shape[3]))
        if prefix is not None:
            keys[:, :, :shared] = prefix.layers[i].keys
            values[:, :, :shared] = prefix.layers[i].values
        for g, part, _ in parts:
            rows = torch.as_tensor(g, device=dev)
            k = part.layers[i].keys.shape[2] - shared  # this group's own positions
            keys[rows, :, width - k :] = part.layers[i].keys[:, :, shared:]
            values[rows, :, width - k :] = part.layers[i].values[:, :, shared:]
        cache.update(keys, values, i)
    for g, _, logits in parts:
        last[torch.as_tensor(g, device=dev)] = logits
    return cache, last, ids, mask


class _Capture:
    """Forward hook on decoder block L*: pools the prefill's states there (the SSI's input) into
    ``state``, row by row, whichever sub-batch of :func:`_prefill` is running."""

    def __init__(self, n: int, pooling: str, offset: int, head: int):
        self.pooling, self.offset, self.head = pooling, offset, head
        self.state: torch.Tensor | None = None
        self.n = n
        self.current: tuple[torch.Tensor, list[int]] | None = None
        self.shared = 0  # leading template tokens _prefill computed once for all rows, not in `current`

    def __call__(self, _m: Any, _a: Any, output: Any) -> None:
        if self.current is None:  # the shared prefix's own pass: no row's state is read there
            return
        hidden = output[0] if isinstance(output, tuple) else output
        mask, rows = self.current
        head = self.head - self.shared if self.pooling == "user_mean" else self.head
        pooled = pool(hidden, mask, self.pooling, self.offset, head).float().cpu()  # type: ignore[arg-type]
        if self.state is None:
            self.state = pooled.new_zeros((self.n, pooled.shape[-1]))
        self.state[torch.as_tensor(rows)] = pooled


def _greedy_decode(
    model: Any,
    cache: Any,
    ids: torch.Tensor,
    mask: torch.Tensor,
    budget: int,
    stop_ids: list[int],
    pad_id: int,
    min_new_tokens: int = 0,
    settings: GenerationSettings | None = None,
    gens: Sequence[torch.Generator] | None = None,
) -> torch.Tensor:
    """Greedy decoding of ``budget`` tokens after ``ids`` (whose last token is not yet in ``cache``;
    with sampling ``settings``, a draw from each row's own stream ``gens`` instead of the argmax)
    that drops finished rows from the batch: ``generate`` keeps computing every row until the
    longest is done, and on the quick preset about a third of the decoding slots belong to answers
    that already ended (a refusal stops after a dozen tokens, a loop runs to the limit). Returns
    the new tokens (rows × steps run), pad after a row's stop token, as ``generate`` returns them.

    A row's tokens do not depend on the others (its own attention mask and positions), so dropping
    rows changes only the shape of the matrix products, i.e. float rounding: the same caveat and
    the same check as the length-split prefill (tests compare with ``generate``). Rows are dropped
    once an eighth of the batch has finished: each drop copies the KV cache."""
    n, dev = ids.shape[0], ids.device
    out = torch.full((n, budget), pad_id, dtype=torch.long, device=dev)
    rows = torch.arange(n, device=dev)  # the batch row of each row still decoding
    stops = torch.as_tensor(stop_ids, dtype=torch.long, device=dev)
    done = torch.isin(ids[:, -1], stops)  # a row whose first token (from the prefill) is a stop
    if bool(done.all()):
        return out[:, :0]
    cur, steps = ids[:, -1:], 0
    for step in range(budget):
        logits = model(
            input_ids=cur,
            attention_mask=mask,
            position_ids=position_ids_from_mask(mask)[:, -1:],
            use_cache=True,
            **{_cache_kw(): cache},
            logits_to_keep=1,
        ).logits[:, -1]
        if step < min_new_tokens:
            logits[:, stops] = float("-inf")
        if settings is not None and settings.do_sample:
            pick = first_token(logits, settings, [gens[int(r)] for r in rows] if gens is not None else None)
        else:
            pick = logits.argmax(-1)
        nxt = torch.where(done, pad_id, pick)
        out[rows, step] = nxt
        steps = step + 1
        done = done | torch.isin(nxt, stops)
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype, device=dev)], 1)
        cur = nxt[:, None]
        if int(done.sum()) >= max(1, len(rows) // 8):
            keep = (~done).nonzero()[:, 0]
            cache.batch_select_indices(keep)
            mask, cur, rows, done = mask[keep], cur[keep], rows[keep], done[keep]
    return out[:, :steps]


@torch.inference_mode()
def _generate_batch(
    lm: LoadedModel, seqs: list[list[int]], raw: list[str], settings: GenerationSettings, gate: Gate | None
) -> list[dict]:
    tok, model, dev = lm.tokenizer, lm.model, lm.device
    ids, mask = pad_batch(seqs, tok.pad_token_id, "left")
    ids, mask = ids.to(dev), mask.to(dev)
    hf = settings.hf_kwargs(tok, model)
    stops = hf["eos_token_id"]
    n = len(seqs)

    # 1. SSI scores: from this prefill (chat-format SSI, no adapter below L*) or a truncated base pass
    read_prefill = (
        gate is not None
        and gate.from_prefill
        and gate.pooling != "mean"
        and not _gate_needs_base_pass(lm, gate)
        # the SSI read the last `max_length` tokens of each prompt; a longer one's prefill state
        # differs (the model saw its start), so that batch takes the truncated pass instead
        and max(len(q) for q in seqs) <= state_max_length(gate.ssi.meta)
    )
    memo = gate.known_scores if gate is not None and not read_prefill else None
    known = np.array([memo[p] for p in raw]) if memo is not None and all(p in memo for p in raw) else None
    if gate is not None and not read_prefill and known is None:
        from lasa.hidden import extract_states

        # the adapter off only where it changes the state at L* (an adapter above L* cannot): this
        # keeps a merged adapter merged (entering base_model would unmerge it, see merged_adapter)
        with base_model(lm) if _gate_needs_base_pass(lm, gate) else contextlib.nullcontext():
            states = extract_states(
                lm,
                raw,
                layers=[gate.layer],
                pooling=gate.pooling,  # type: ignore[arg-type]
                chat_template=gate.from_prefill,
                batch_size=n,
                max_length=state_max_length(gate.ssi.meta),
                progress=False,
            )[:, 0]
    capture = None
    if read_prefill:
        assert gate is not None
        # the prefill is left-padded; `pool` finds the user's tokens (user_last / user_mean) from the mask
        offset, head = user_span(tok, gate.pooling, gate.from_prefill)
        capture = _Capture(n, gate.pooling, offset, head)
    handle = lm.layers[gate.layer - 1].register_forward_hook(capture) if capture is not None else None
    try:
        cache, last_logits, ids, mask = _prefill(
            lm, seqs, ids, mask, capture, group_size=settings.prefill_batch_size
        )
    finally:
        if handle is not None:
            handle.remove()
    if settings.min_new_tokens:  # as generate's min_new_tokens does for the tokens after this one
        last_logits[:, stops] = float("-inf")
    gens = row_generators(settings.seed, raw, dev) if settings.do_sample else None
    first = first_token(last_logits, settings, gens)
    if gate is None:
        scores = None
        flagged = torch.zeros(n, dtype=torch.bool, device=dev)
    else:
        if known is not None:
            scores = known
        else:
            scores = gate.ssi.predict_proba(capture.state if capture is not None else states)
            if capture is None and gate.known_scores is not None:
                gate.known_scores.update(zip(raw, map(float, scores)))
        flagged = torch.as_tensor(gate.ssi.flags(scores), device=dev)

    # 2. conditioning tokens for flagged rows, masked holes for the others; the chunk's last position
    #    gives a flagged row its first token, so every row enters decoding with one token generated
    cond = torch.as_tensor(gate.conditioning_ids if gate is not None else [], dtype=torch.long, device=dev)
    apart: dict[int, dict] = {}
    if len(cond) and bool(flagged.any()) and not bool(flagged.all()) and not _plain_layers(cache):
        # a sliding-window (or other non-plain) cache counts the unflagged rows' masked holes as
        # window slots, pushing their own prompt out of the window: they would no longer match
        # ungated generation. So here the unflagged rows decode from this cache with no chunk, and
        # the flagged ones are generated apart, from prompt + conditioning tokens (their decode in
        # this batch is thrown away: the price of exactness on these models only)
        assert gate is not None
        idx = flagged.nonzero()[:, 0].tolist()
        cond_ids = [int(t) for t in cond]
        sub = _generate_batch(lm, [seqs[i] + cond_ids for i in idx], [raw[i] for i in idx], settings, None)
        apart = dict(zip(idx, sub))
        flagged_rows, flagged = flagged, torch.zeros_like(flagged)
    if bool(flagged.any()) and len(cond) > 0:
        k = len(cond)
        chunk = torch.full((n, k), tok.pad_token_id, dtype=torch.long, device=dev)
        chunk[flagged] = cond
        chunk_mask = flagged[:, None].long().expand(n, k)
        mask = torch.cat([mask, chunk_mask], 1)
        cond_logits = _forward_flagged_rows(model, cache, flagged, chunk, mask)
        if cond_logits is None:
            cond_logits = model(
                input_ids=chunk,
                attention_mask=mask,
                position_ids=position_ids_from_mask(mask)[:, -k:],
                use_cache=True,
                **{_cache_kw(): cache},
                logits_to_keep=1,
            ).logits[flagged, -1]
        if settings.min_new_tokens:
            cond_logits[:, stops] = float("-inf")
        first = first.clone()
        first[flagged] = first_token(
            cond_logits, settings, [gens[i] for i in flagged.nonzero()[:, 0].tolist()] if gens else None
        )
        ids = torch.cat([ids, chunk], 1)
    # 3. decoding continues from every row's first token
    ids = torch.cat([ids, first[:, None]], 1)
    mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=dev)], 1)
    budget = settings.max_new_tokens - 1
    rest_min = max(0, settings.min_new_tokens - 1)  # the first token already counts toward the minimum
    if budget > 0 and _plain_layers(cache):
        new = _greedy_decode(
            model, cache, ids, mask, budget, stops, tok.pad_token_id, rest_min, settings=settings, gens=gens
        )
    elif budget > 0:  # e.g. sliding-window caches; sampling there draws from the process's stream
        hf.pop("min_new_tokens", None)  # counted from the first token, which is decoded already
        if rest_min:
            hf["min_new_tokens"] = min(rest_min, budget)
        gen = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=budget, **{_cache_kw(): cache}, **hf
        )
        new = gen[:, ids.shape[1] :]
    else:
        new = torch.zeros((n, 0), dtype=torch.long, device=dev)
    if apart:
        flagged = flagged_rows
    rows = []
    for i in range(n):
        toks = apart[i]["tokens"] if i in apart else [int(first[i]), *new[i].tolist()]
        rows.append(
            {
                "tokens": toks[: settings.max_new_tokens],
                "ssi_score": None if scores is None else float(scores[i]),
                "gated": bool(flagged[i]),
            }
        )
    return rows


def _decode(tok: Any, tokens: list[int], model: Any = None) -> tuple[str, str, int]:
    stops = set(_stop_ids(tok, model))
    cut = next((i for i, t in enumerate(tokens) if t in stops), None)
    finish = "stop" if cut is not None else "length"
    tokens = tokens[:cut] if cut is not None else tokens
    tokens = [t for t in tokens if t != tok.pad_token_id]
    return tok.decode(tokens, skip_special_tokens=True).strip(), finish, len(tokens)


def generate(
    lm: LoadedModel,
    prompts: Sequence[str],
    settings: GenerationSettings | None = None,
    gate: Gate | None = None,
    progress: bool = True,
    desc: str = "generate",
) -> Iterator[tuple[list[int], list[dict]]]:
    """Yield ``(indices, records)`` batch by batch (longest prompts first; records follow ``indices``).

    Each record has ``response``, ``finish`` (stop / length), ``n_tokens``, ``ssi_score`` and
    ``gated``. Streaming lets callers persist each batch, so an interrupted run resumes.
    """
    from tqdm.auto import tqdm

    prompts = text_list(prompts, "generate", lm)
    settings = settings or GenerationSettings()
    if not isinstance(settings, GenerationSettings):
        raise LasaError(f"generate takes GenerationSettings(...), got {type(settings).__name__}")
    if gate is not None and not isinstance(gate, Gate):  # an SSI given as the gate failed on .prepare
        raise LasaError(
            f"generate's gate must be a lasa.Gate, got {type(gate).__name__}; wrap an SSI: Gate(ssi)"
        )
    if gate is not None:
        gate.prepare(lm)
    seqs = format_prompts(lm.tokenizer, list(prompts), chat_template=True)
    batches = length_batches([len(q) for q in seqs], settings.batch_size)
    # an fp32 LoRA adapter is folded into the weights while generating (1.04x on the quick preset's),
    # unless the gate needs the adapter switched off below L*, which would unmerge it every batch
    with merged_adapter(lm, enabled=gate is None or not _gate_needs_base_pass(lm, gate)):
        for idx in tqdm(batches, desc=desc, disable=not progress, unit="batch"):
            rows = _generate_batch(lm, [seqs[i] for i in idx], [prompts[i] for i in idx], settings, gate)
            out = []
            for r in rows:
                text, finish, n_tok = _decode(lm.tokenizer, r.pop("tokens"), lm.model)
                out.append({"response": text, "finish": finish, "n_tokens": n_tok, **r})
            yield idx, out


def generate_all(
    lm: LoadedModel,
    prompts: Sequence[str],
    settings: GenerationSettings | None = None,
    gate: Gate | None = None,
    progress: bool = True,
) -> list[dict]:
    """Non-streaming convenience wrapper: records in prompt order."""
    prompts = text_list(prompts, "generate_all", lm)
    out: list[dict | None] = [None] * len(prompts)
    for idx, rows in generate(lm, prompts, settings, gate, progress):
        for i, r in zip(idx, rows):
            out[i] = r
    return [r for r in out if r is not None]


def timed_generation(
    lm: LoadedModel, prompts: Sequence[str], settings: GenerationSettings, gate: Gate | None = None
) -> tuple[list[dict], float]:
    t0 = time.perf_counter()
    rows = generate_all(lm, prompts, settings, gate, progress=False)
    return rows, time.perf_counter() - t0


__all__ = [
    "CONDITIONING_TEXT",
    "ConstantSSI",
    "Gate",
    "GenerationSettings",
    "adapter_layers",
    "generate",
    "generate_all",
    "generate_vllm",
]


# -- optional vLLM backend (GPU users) -------------------------------------------------------


def generate_vllm(
    lm: LoadedModel,
    prompts: Sequence[str],
    settings: GenerationSettings,
    gate: Gate | None = None,
    adapter: str | None = None,
    engine_kwargs: dict | None = None,
) -> list[dict]:
    """Generation in vLLM (``pip install -e '.[vllm]'``), records shaped like :func:`generate`'s.

    The SSI scores come first, from a batched HF pass truncated at the bottleneck (``lm`` is the
    base model; only layers 1..L* run), then the HF weights are released and vLLM generates with
    the adapter as a LoRA; flagged prompts carry the conditioning text at the start of the
    assistant turn, exactly as in training.
    """
    try:
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest
    except ImportError:
        raise LasaError("--backend vllm needs vLLM: pip install -e '.[vllm]' (GPU only)") from None
    scores = gate.ssi.score(lm, prompts, progress=True) if gate is not None else None
    flags = gate.ssi.flags(scores) if gate is not None else np.zeros(len(prompts), dtype=bool)
    texts = [
        chat_prefix(lm.tokenizer, p) + (conditioning_prefix(gate.conditioning_text) if f else "")
        for p, f in zip(prompts, flags)
    ]
    path, tokenizer = lm.path, lm.tokenizer
    stops = _stop_ids(tokenizer, lm.model)
    lm.model.to("cpu")  # free accelerator memory for the engine
    kwargs = {"model": path, "enable_lora": adapter is not None, "seed": settings.seed} | (
        engine_kwargs or {}
    )
    if adapter is not None:
        import json as _json

        kwargs.setdefault(
            "max_lora_rank", int(_json.loads((Path(adapter) / "adapter_config.json").read_text())["r"])
        )
    engine = LLM(**kwargs)
    params = SamplingParams(
        max_tokens=settings.max_new_tokens,
        temperature=settings.temperature if settings.do_sample else 0.0,
        top_p=settings.top_p if settings.do_sample else 1.0,
        stop_token_ids=stops,
    )
    lora = LoRARequest("lasa-adapter", 1, str(adapter)) if adapter is not None else None
    outputs = engine.generate(texts, params, lora_request=lora)
    rows = []
    for i, out in enumerate(outputs):
        o = out.outputs[0]
        rows.append(
            {
                "response": o.text.strip(),
                "finish": "stop" if o.finish_reason == "stop" else "length",
                "n_tokens": len(o.token_ids),
                "ssi_score": float(scores[i]) if scores is not None else None,
                "gated": bool(flags[i]),
            }
        )
    return rows
