"""The log-likelihood engine shared by the utility tasks, and their input checks.

Conventions (tokenisation, padding, ``logits_to_keep``): see the package docstring."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from lasa.errors import LasaError
from lasa.hidden import format_prompts, forward_batches, pad_batch, position_ids_from_mask
from lasa.models import LoadedModel

logger = logging.getLogger(__name__)

# -- input checks ----------------------------------------------------------------------------


def task_languages(task: str, langs: Iterable[str] | str | None, supported: Sequence[str]) -> list[str]:
    """Validate language codes for one task (``None`` or "all" = every supported language)."""
    if langs is None:
        return list(supported)
    if isinstance(langs, str):
        langs = [langs]
    flat = [c.strip().lower() for item in langs for c in str(item).replace(",", " ").split()]
    if not flat or flat == ["all"]:
        return list(supported)
    out: list[str] = []
    for code in flat:
        if code not in supported:
            raise LasaError(f"{task} has no {code!r}; choose from {' '.join(supported)}")
        if code not in out:
            out.append(code)
    return out


def _check_n(task: str, n: int | None, available: int, unit: str) -> int:
    if n is None:
        return available
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise LasaError(f"{task}: the number of items must be a positive integer, got {n!r}")
    if n > available:
        raise LasaError(f"{task} has {available} {unit}; asked for {n}")
    return n


# -- log-likelihood --------------------------------------------------------------------------


def _encode_pairs(
    tokenizer: Any, contexts: Sequence[str], continuations: Sequence[str]
) -> list[tuple[list[int], list[int]]]:
    pairs = []
    for i, (ctx, cont) in enumerate(zip(contexts, continuations)):
        stripped = ctx.rstrip()
        cont = ctx[len(stripped) :] + cont  # trailing whitespace belongs to the continuation
        ctx_ids = list(tokenizer(stripped, add_special_tokens=True)["input_ids"])
        cont_ids = list(tokenizer(cont, add_special_tokens=False)["input_ids"]) if cont else []
        if not ctx_ids:
            raise LasaError(f"context {i} is empty after tokenisation; a continuation needs text to follow")
        pairs.append((ctx_ids, cont_ids))
    return pairs


@torch.inference_mode()
def loglikelihood(
    lm: LoadedModel,
    contexts: list[str],
    continuations: list[str],
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "log-likelihood",
) -> list[float]:
    """``log P(continuation | context)`` summed over the continuation's tokens, one float per pair.

    Tokenisation: separately, then concatenated (see the module docstring). An empty continuation
    scores 0.0. Contexts are never truncated: a silently shortened context would change the score.
    """
    from tqdm.auto import tqdm

    if len(contexts) != len(continuations):
        raise LasaError(f"{len(contexts)} contexts but {len(continuations)} continuations; pass one per item")
    if batch_size < 1:
        raise LasaError(f"batch size must be at least 1, got {batch_size}")
    pairs = _encode_pairs(lm.tokenizer, contexts, continuations)
    out = [0.0] * len(pairs)
    todo = [i for i, (_, cont) in enumerate(pairs) if cont]
    batches = forward_batches([len(c) + len(x) for c, x in pairs], batch_size, items=todo)
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    device = lm.device
    for idx in tqdm(batches, desc=desc, disable=not progress, unit="batch", leave=False):
        seqs = [pairs[i][0] + pairs[i][1] for i in idx]
        cont_lens = torch.tensor([len(pairs[i][1]) for i in idx])
        ids, mask = pad_batch(seqs, pad_id, "left")
        keep = int(cont_lens.max()) + 1
        logits = lm.model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=position_ids_from_mask(mask).to(device),
            use_cache=False,
            logits_to_keep=keep,
        ).logits[:, -keep:-1]  # (B, K-1, V): the predictions for the last K-1 tokens
        targets = ids[:, -(keep - 1) :].to(logits.device)
        # only the positions that predict a continuation token of their row count
        col = torch.arange(keep - 1)
        scored = (col[None, :] >= (keep - 1 - cont_lens)[:, None]).to(logits.device)
        logits = logits.float()
        token_lp = logits.gather(-1, targets[..., None])[..., 0] - torch.logsumexp(logits, -1)
        sums = torch.where(scored, token_lp, 0.0).sum(-1).cpu()  # where, not *: 0 * nan at padding is nan
        for i, value in zip(idx, sums.tolist()):
            out[i] = float(value)
    return out


@torch.inference_mode()
def _next_token_logprobs(
    lm: LoadedModel,
    prompts: Sequence[str],
    token_ids: Sequence[int],
    batch_size: int,
    progress: bool,
    desc: str,
) -> torch.Tensor:
    """``(len(prompts), len(token_ids))`` log-probabilities of single tokens right after each prompt."""
    from tqdm.auto import tqdm

    seqs = format_prompts(lm.tokenizer, list(prompts), chat_template=False)
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    batches = forward_batches([len(q) for q in seqs], batch_size)
    out = torch.zeros((len(seqs), len(token_ids)))
    wanted = torch.as_tensor(list(token_ids))
    for idx in tqdm(batches, desc=desc, disable=not progress, unit="batch", leave=False):
        ids, mask = pad_batch([seqs[i] for i in idx], pad_id, "left")
        logits = (
            lm.model(
                input_ids=ids.to(lm.device),
                attention_mask=mask.to(lm.device),
                position_ids=position_ids_from_mask(mask).to(lm.device),
                use_cache=False,
                logits_to_keep=1,
            )
            .logits[:, -1]
            .float()
        )
        out[torch.as_tensor(idx)] = logits.log_softmax(-1)[:, wanted.to(logits.device)].cpu()
    return out


def choice_logprobs(
    lm: LoadedModel,
    prompts: Sequence[str],
    choices: Sequence[str],
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "choices",
) -> torch.Tensor:
    """``(len(prompts), len(choices))`` log P(choice | prompt), the same choices for every prompt.

    When every choice is a single token this is one forward pass per prompt reading the last
    position; otherwise (e.g. a tokenizer without a " B" token) it falls back to
    :func:`loglikelihood`, which gives the same numbers for single tokens, only slower.
    """
    encoded = [lm.tokenizer(c, add_special_tokens=False)["input_ids"] for c in choices]
    single = all(len(e) == 1 for e in encoded) and len({e[0] for e in encoded}) == len(encoded)
    if single and not any(p != p.rstrip() for p in prompts):  # loglikelihood moves trailing spaces
        return _next_token_logprobs(lm, prompts, [e[0] for e in encoded], batch_size, progress, desc)
    logger.info("choices %s are not single tokens here; scoring them as continuations", list(choices))
    flat = loglikelihood(
        lm,
        [p for p in prompts for _ in choices],
        [c for _ in prompts for c in choices],
        batch_size=batch_size,
        progress=progress,
        desc=desc,
    )
    return torch.tensor(flat).reshape(len(prompts), len(choices))
