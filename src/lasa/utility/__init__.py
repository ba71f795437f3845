"""Did safety training cost the model its abilities? Small, fixed, before/after utility checks.

A safety adapter or gate that makes the model refuse more is only useful if it does not also make
it worse at everything else, in every language it was made safer in. lasa therefore measures the
same three things on the base and on the trained model, on the same items:

- **XCOPA** (it sw th vi zh): multilingual commonsense, scored by log-likelihood, so it needs no
  generation and no answer parsing, and it is cheap enough to run on a CPU;
- **MMLU** (English, a vendored 57 x 20 subset): knowledge retention, zero-shot, scored by the
  next-token log-probabilities of the four answer letters (one forward pass per question);
- **MGSM** (en zh th bn sw): multilingual reasoning through *generation*, optionally SSI-gated,
  because a gate that fires on benign maths problems is exactly the utility loss to catch. Only
  rows [100:] are used: rows [:100] may have trained the SSI (``MGSM_TRAIN_ROWS``).

The numbers are for comparing two checkpoints of one model under one setup; templates and data
versions differ from lm-eval-harness and the published MMLU, so they are not leaderboard numbers.

Log-likelihood conventions (:func:`loglikelihood`): the context and the continuation are tokenised
**separately and concatenated** (the context with the tokenizer's special tokens, e.g. Llama's BOS;
the continuation without). The boundary is then exact by construction, and the competing
continuations of one item are conditioned on identical context ids, which a joint tokenisation
does not guarantee (BPE merges across the boundary differ per continuation). Whitespace at the end
of the context is moved to the start of the continuation, so " because" / " A" stay one
space-prefixed token as in running text. Batches are left-padded, so every continuation ends in the
last column and only the last ``max continuation + 1`` positions go through the LM head
(``logits_to_keep``): with a 152k vocabulary, full-sequence logits would dominate memory.
Position ids come from the attention mask, so batched and one-at-a-time scores agree.
"""

from lasa.utility.engine import choice_logprobs, loglikelihood, task_languages
from lasa.utility.mgsm import (
    MGSM_INSTRUCTION,
    MGSM_LANGS,
    answers_match,
    eval_mgsm,
    extract_answer,
    mgsm_items,
    mgsm_prompt,
    normalize_digits,
    parse_number,
)
from lasa.utility.mmlu import MMLU_LETTERS, eval_mmlu, mmlu_prompt, mmlu_rows
from lasa.utility.xcopa import XCOPA_CONNECTORS, XCOPA_LANGS, eval_xcopa, xcopa_items, xcopa_pair

__all__ = [
    "MGSM_INSTRUCTION",
    "MGSM_LANGS",
    "MMLU_LETTERS",
    "XCOPA_CONNECTORS",
    "XCOPA_LANGS",
    "answers_match",
    "choice_logprobs",
    "eval_mgsm",
    "eval_mmlu",
    "eval_xcopa",
    "extract_answer",
    "loglikelihood",
    "mgsm_items",
    "mgsm_prompt",
    "mmlu_prompt",
    "mmlu_rows",
    "normalize_digits",
    "parse_number",
    "task_languages",
    "xcopa_items",
    "xcopa_pair",
]
