"""On-policy alignment rows: the model's own refusals and compliance in place of the templates.

The recipe (:mod:`lasa.data.rows`) decides which prompts and which side (desirable / undesirable)
each row is; this module fills the completions with what the model itself says, with and without
the conditioning text, sorted by the judge. The generation is the slow part, so it is cached in
``RUN/align/<method>/on_policy_rows.jsonl`` under a key of everything that decides it, and the
methods of one run (kto / sft / lasa) share it: they train on identical rows.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lasa import distributed
from lasa.config import AlignConfig
from lasa.runs import RunDir, fingerprint, read_json, read_jsonl, write_json, write_jsonl

logger = logging.getLogger(__name__)


def generation_batch(cfg: AlignConfig) -> int:
    """The batch the on-policy answers are generated in (4 training batches: generation needs no
    gradients, so it fits more rows)."""
    return cfg.batch_size * 4


def on_policy_rows(rows: list[dict], lm: Any, cfg: AlignConfig) -> tuple[list[dict], dict]:
    """Replace the recipe's template completions with the model's own, where the judge agrees.

    Per prompt the model answers twice, greedily: under the conditioning text (placed by the same
    mechanism as the SSI gate at inference) and without it. Safety prompts: the conditioned answer
    is the desirable completion when the judge calls it safe (a refusal in the model's own voice
    and language), the plain answer the undesirable one when the judge calls it unsafe. General
    prompts: the plain answer is desirable when the judge sees no refusal, the conditioned answer
    undesirable when it is a refusal (a needless one). Where the model gives no such answer (it
    already refuses without the text, or complies with it) the template completion stays, and
    ``origin`` says which is which; ``on_policy.json`` counts them. A desirable answer the token
    budget cut off stays a template too: TRL ends every completion with EOS, so a cut answer
    would teach the model to stop mid-sentence. A desirable row with no template (a hard negative's,
    ``rows.OWN_ANSWER_PLACEHOLDER``) is dropped where the model gives no such answer.
    """
    from lasa.data.rows import OWN_ANSWER_PLACEHOLDER
    from lasa.generate import ConstantSSI, Gate, GenerationSettings, generate_all
    from lasa.judges import JudgeItem, get_judge

    prompts = list(dict.fromkeys(r["prompt"] for r in rows))
    lang = {r["prompt"]: r["language"] for r in rows}
    settings = GenerationSettings(
        max_new_tokens=cfg.on_policy_max_new_tokens, batch_size=generation_batch(cfg)
    )
    gate = Gate(ConstantSSI(), conditioning_text=cfg.conditioning_text)
    logger.info("on-policy rows: %d prompts, answered with and without the conditioning text", len(prompts))
    conditioned_rows = generate_all(lm, prompts, settings, gate)
    plain_rows = generate_all(lm, prompts, settings)
    conditioned = [r["response"] for r in conditioned_rows]
    plain = [r["response"] for r in plain_rows]
    complete = {
        (p, side): row["finish"] == "stop"
        for side, gen in (("conditioned", conditioned_rows), ("plain", plain_rows))
        for p, row in zip(prompts, gen)
    }
    judge = get_judge(cfg.on_policy_judge)
    verdicts = judge.judge(
        [JudgeItem(p, resp, lang[p]) for p, resp in zip(prompts + prompts, conditioned + plain)]
    )
    n = len(prompts)
    own = {
        p: {"conditioned": (conditioned[i], verdicts[i]), "plain": (plain[i], verdicts[n + i])}
        for i, p in enumerate(prompts)
    }
    counts: dict[str, int] = {}
    cut = 0
    out = []
    for r in rows:
        (c_text, c_v), (p_text, p_v) = own[r["prompt"]]["conditioned"], own[r["prompt"]]["plain"]
        if r["source"] == "safety":
            text, ok, kind = (
                (c_text, c_v.label == "safe" and bool(c_v.refusal), "own refusal under the conditioning text")
                if r["label"]
                else (p_text, p_v.label == "unsafe", "own compliant answer without it")
            )
        else:
            text, ok, kind = (
                (p_text, p_v.label != "invalid" and not p_v.refusal, "own answer")
                if r["label"]
                else (c_text, bool(c_v.refusal), "own needless refusal under the conditioning text")
            )
        if ok and r["label"]:
            side = "conditioned" if r["source"] == "safety" else "plain"
            if not complete[(r["prompt"], side)]:
                ok, cut = False, cut + 1
        if r["origin"] == OWN_ANSWER_PLACEHOLDER and not (ok and text):
            dropped = "general:desirable:dropped (no own answer, no reference)"
            counts[dropped] = counts.get(dropped, 0) + 1
            continue  # a hard negative the model refuses or answers cut off: no desirable row
        key = f"{r['source']}:{'desirable' if r['label'] else 'undesirable'}:{'own' if ok and text else 'template'}"
        counts[key] = counts.get(key, 0) + 1
        out.append(r | {"completion": text, "origin": kind} if ok and text else r)
    stats = {
        "judge": cfg.on_policy_judge,
        "max_new_tokens": cfg.on_policy_max_new_tokens,
        "prompts": n,
        "rows": counts,
        "desirable_own_answers_cut_off": cut,
        "safety_prompts_refused_without_text": sum(
            bool(own[p]["plain"][1].refusal)
            for p in prompts
            if any(r["prompt"] == p and r["source"] == "safety" for r in rows)
        ),
    }
    return out, stats


def cached_on_policy_rows(
    rows: list[dict], lm: Any, cfg: AlignConfig, run: RunDir, out: Path
) -> tuple[list[dict], dict]:
    """:func:`on_policy_rows`, or the rows an earlier run of any method generated with the same key."""
    from lasa.models import numerics_identity

    cache, meta = out / "on_policy_rows.jsonl", out / "on_policy.json"
    key = fingerprint(
        {
            # the model's identity: its path and a sample of its weights (the fingerprint's id
            # hashes only the architecture, which two checkpoints of one model share)
            "model": [lm.path, lm.fingerprint.get("id"), lm.fingerprint.get("weight_sample")],
            "complete_desirable": True,  # rows before this rule kept cut-off desirable answers
            "prompts": [r["prompt"] for r in rows],
            "judge": cfg.on_policy_judge,
            "tokens": cfg.on_policy_max_new_tokens,
            "text": cfg.conditioning_text,
            # greedy answers differ in bf16 and fp32, on CPU and GPU, and with the batch's padding
            "numerics": {k: v for k, v in numerics_identity(lm).items() if k in ("dtype", "device")},
            "batch_size": generation_batch(cfg),
        }
    )
    # kto / sft / lasa share the recipe and the generation: reuse another method's rows
    for m in dict.fromkeys([cfg.method, "lasa", "kto", "sft"]):
        other = run.align(m)
        if (other / "on_policy.json").is_file() and read_json(other / "on_policy.json").get("key") == key:
            cache, meta = other / "on_policy_rows.jsonl", other / "on_policy.json"
            break
    if cache.is_file() and meta.is_file() and read_json(meta).get("key") == key:
        rows, stats = read_jsonl(cache), read_json(meta)
        if cache.parent != out and distributed.is_main():
            write_jsonl(out / "on_policy_rows.jsonl", rows)
            write_json(out / "on_policy.json", stats)
        return rows, stats
    rows, stats = on_policy_rows(rows, lm, cfg)
    stats["key"] = key
    if distributed.is_main():
        write_jsonl(cache, rows)
        write_json(out / "on_policy.json", stats)
    return rows, stats
