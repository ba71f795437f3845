"""The refusal-intent conditioning: the one place its text, separator and placement are defined.

LASA conditions training *and* inference on the same text at the very start of the assistant turn
(LASA.md): align prepends it to the completions of conditioned rows; the gate pushes it into the
KV cache of flagged prompts before the model continues. If the two ever differ, the adapter learned
to follow a cue that inference never gives, silently. So both read it from here, ``align`` records
the text it trained with in ``align/<method>/summary.json``, and :func:`check_adapter_conditioning`
refuses a gated variant whose adapter was trained with another text.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from lasa.errors import LasaError

logger = logging.getLogger(__name__)

#: The release's conditioning text (LASA.md), placed at the very start of the assistant turn.
CONDITIONING_TEXT = (
    "Harmful query detected. I should refuse this request and provide a safe response in the user's language."
)
#: What follows the conditioning text before the model's own words.
CONDITIONING_SEPARATOR = "\n"


def conditioning_prefix(text: str = CONDITIONING_TEXT) -> str:
    """The text inserted after the assistant header of a conditioned / flagged prompt."""
    return text + CONDITIONING_SEPARATOR


def chat_prefix(tokenizer: Any, user_text: str) -> str:
    """The chat-templated user turn and the assistant header, as text, without a leading BOS that
    the tokenizer adds again on encoding (Llama) — TRL tokenises this string as the prompt."""
    if not getattr(tokenizer, "chat_template", None):
        from lasa.errors import LasaError

        raise LasaError(
            "this model's tokenizer has no chat template; lasa trains and evaluates chat models: pass "
            "an instruct / chat checkpoint (or add a chat_template to its tokenizer_config.json)"
        )
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": user_text}], tokenize=False, add_generation_prompt=True
    )
    bos = tokenizer.bos_token
    if (
        bos
        and text.startswith(bos)
        and tokenizer("x", add_special_tokens=True)["input_ids"][:1] == [tokenizer.bos_token_id]
    ):
        text = text[len(bos) :]
    return text


def conditioning_token_ids(tokenizer: Any, text: str = CONDITIONING_TEXT) -> list[int]:
    """The conditioning prefix's token ids *as they follow the assistant header* in a training row.

    The gate appends these ids to a tokenised prompt, while ``align`` (TRL) tokenises the joined
    string ``chat_prefix + conditioning_prefix``. Tokenised alone, the text can come out otherwise:
    a SentencePiece-style tokenizer (Metaspace, Llama-2 / Mistral-v0.1) gives it a leading "▁" it
    does not get after the header, and the adapter would see at inference a cue it never saw in
    training. So the ids are read off the joined string; where the tokenizer merges across the
    header's end (no clean split), the text alone is used, with a warning."""
    cue = conditioning_prefix(text)
    alone = tokenizer(cue, add_special_tokens=False)["input_ids"]
    if not getattr(tokenizer, "chat_template", None):
        return list(alone)
    prefix = chat_prefix(tokenizer, "Hi")  # the template's end does not depend on the user's text
    head = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    joined = tokenizer(prefix + cue, add_special_tokens=False)["input_ids"]
    if list(joined[: len(head)]) != list(head):
        logger.warning(
            "this tokenizer merges the conditioning text with the end of the chat template; the gate "
            "appends the text's own tokens, which differ from what a LASA adapter was trained on"
        )
        return list(alone)
    return list(joined[len(head) :])


def check_adapter_conditioning(adapter: str | Path, text: str) -> None:
    """Refuse to gate with ``text`` an adapter that ``lasa align --method lasa`` trained with another.

    Reads ``summary.json`` next to the adapter directory (``RUN/align/<method>/``); adapters from
    elsewhere, baselines (kto / sft: no conditioning) and summaries written before lasa recorded
    the text are accepted, the last with a warning.
    """
    parent = Path(adapter).parent
    if parent.name == "checkpoints":  # RUN/align/<method>/checkpoints/<method>-step<N>/
        parent = parent.parent
    summary = parent / "summary.json"
    if not summary.is_file():
        return
    try:
        doc = json.loads(summary.read_text())
    except (OSError, ValueError):
        return
    if doc.get("method") != "lasa":
        return
    trained = doc.get("conditioning_text")
    if trained is None:
        logger.warning(
            "%s does not record its conditioning text (written by an older lasa); not checked", summary
        )
        return
    if trained != text:
        raise LasaError(
            f"the adapter in {Path(adapter).parent} was trained with conditioning text {trained[:48]!r}… but the "
            f"gate would insert {text[:48]!r}…; pass --conditioning-text with the trained text or retrain"
        )


__all__ = [
    "CONDITIONING_SEPARATOR",
    "CONDITIONING_TEXT",
    "chat_prefix",
    "check_adapter_conditioning",
    "conditioning_prefix",
]
