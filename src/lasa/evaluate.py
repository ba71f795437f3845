"""Evaluation: MultiJail ASR per language and tier, over-refusal (XSTest) and utility.

One variant per call (base; base + SSI gate; an adapter; adapter + gate), written to
``RUN/eval/<variant>/``: per-sample ``completions*.jsonl`` (resumable: an interrupted run
generates only what is missing), ``judgements_<judge>.jsonl`` per judge (swap judges without
re-generating) and ``results.json`` (config, versions, seeds, ASR per judge with the invalid rate,
judge agreement, over-refusal, utility, timings).

What the verdicts mean (ASR with intervals, agreement, over-refusal, gate rates) is
:mod:`lasa.asr`; the utility task table is :mod:`lasa.utility.runner`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lasa import distributed
from lasa.asr import agreement, asr_metrics, gate_stats, over_refusal, over_refusal_by_language
from lasa.config import EvaluateConfig, GenerateConfig
from lasa.data import MULTIJAIL_N, load_multijail
from lasa.errors import LasaError
from lasa.generate import Gate, GenerationSettings, generate
from lasa.models import LoadedModel
from lasa.results import EvaluateResult, GenerateResult
from lasa.runs import (
    RunDir,
    SampleWriter,
    exclusive,
    files_digest,
    fingerprint,
    package_versions,
    read_json_object,
    write_json,
)

logger = logging.getLogger(__name__)


# -- variants --------------------------------------------------------------------------------


def resolve_adapter(spec: str | None, run_dir: str) -> Path | None:
    """A PEFT adapter directory, or a method name (lasa / kto / sft) trained into this run; a full
    fine-tune that ``lasa align --no-lora`` saved there is taken as well (its record names its base)."""
    if not spec:
        return None
    path = Path(spec)
    as_method = not path.exists() and "/" not in spec and "\\" not in spec  # a method name, not a path
    if as_method:
        path = RunDir(run_dir).adapter(spec)
    from lasa.models import is_full_checkpoint

    if is_full_checkpoint(path):  # `lasa align --no-lora`: a whole model, a variant of its base
        return path
    if not (path / "adapter_config.json").is_file():
        how = f"train one with `lasa align --method {spec}`" if as_method else "train one with `lasa align`"
        raise LasaError(f"--adapter {spec}: no PEFT adapter at {path}; {how} or pass an adapter directory")
    conf = read_json_object(path / "adapter_config.json")  # checked here, before the model loads
    if "peft_type" not in conf:
        raise LasaError(
            f"--adapter {spec}: {path / 'adapter_config.json'} is not a PEFT adapter config (no peft_type); "
            "retrain it with `lasa align`"
        )
    return path


def resolve_ssi(spec: str | None, run_dir: str) -> Path:
    """Where ``--ssi`` points: a directory or ``ssi.json`` as typed, or, like ``--adapter``'s method
    names, the ``--out-name`` of an SSI trained into this run (``--ssi ssi_l20`` is RUN/ssi_l20);
    without it, the run's own ``ssi/``."""
    if not spec:
        return Path(run_dir)
    path = Path(spec)
    if not path.exists() and "/" not in spec and "\\" not in spec and (Path(run_dir) / spec).exists():
        return RunDir(run_dir).ssi(spec)
    return path


def variant_name(cfg: GenerateConfig) -> str:
    if cfg.variant:
        return cfg.variant
    base = Path(cfg.adapter).name if cfg.adapter and Path(cfg.adapter).exists() else (cfg.adapter or "base")
    if base == "adapter":  # RUN/align/<method>/adapter → <method>
        base = Path(cfg.adapter).parent.name
    return base + ("+gate" if cfg.gate else "")


def twin_dir(cfg: GenerateConfig) -> Path:
    """``RUN/eval/<variant without +gate>``: the same model and adapter, ungated."""
    name = variant_name(cfg)
    plain = (
        name[: -len("+gate")]
        if name.endswith("+gate")
        else variant_name(replace(cfg, gate=False, variant=None))
    )
    return RunDir(cfg.run_dir).eval(plain)


def load_variant(cfg: GenerateConfig, lm: LoadedModel | None = None) -> tuple[LoadedModel, Gate | None, dict]:
    from lasa.models import is_full_checkpoint, load_adapter, load_model

    adapter = resolve_adapter(cfg.adapter, cfg.run_dir)
    gate = None
    info: dict[str, Any] = {"adapter": str(adapter) if adapter else None, "gate": cfg.gate}
    if cfg.gate:
        from lasa.ssi import SSI

        ssi = SSI.load(resolve_ssi(cfg.ssi, cfg.run_dir))
        if cfg.gate_threshold is not None:
            ssi = ssi.with_threshold(cfg.gate_threshold)
        gate = Gate(ssi, conditioning_text=cfg.conditioning_text)
        info.update(
            ssi_layer=ssi.layer,
            ssi_threshold=ssi.threshold,
            ssi_chat_template=bool(ssi.meta.get("chat_template")),
            conditioning_text=cfg.conditioning_text,
        )
    if gate is not None and adapter:
        from lasa.conditioning import check_adapter_conditioning

        check_adapter_conditioning(adapter, cfg.conditioning_text)  # before the model load
    full = is_full_checkpoint(adapter)
    if full:  # a full fine-tune: its own weights, evaluated as a variant of the base it records
        from lasa.models import check_full_checkpoint_gate, load_full_checkpoint, read_full_record

        rec = read_full_record(adapter)  # a one-line error for an incomplete record
        base = rec["base_model"]
        # results.json's config names --model; what ran is the checkpoint, a fine-tune of this base
        info["full_fine_tune"] = {"base_model": base, "frozen_blocks": rec["frozen_blocks"]}
        if base != cfg.model:
            logger.warning("%s was fine-tuned from %s, not --model %s", adapter, base, cfg.model)
        if gate is not None:
            check_full_checkpoint_gate(adapter, gate.ssi)  # before the load
        if lm is None or lm.path != str(adapter):
            lm = load_full_checkpoint(adapter, cfg.device, cfg.dtype)
        return lm, gate, info
    if adapter and lm is None:
        from lasa.models import check_adapter_fits

        check_adapter_fits(adapter, cfg.model)  # another base model's adapter: before the load
    if gate is not None and lm is None:
        gate.ssi.check_config(cfg.model)  # another architecture's SSI: before the load too
    lm = lm or load_model(cfg.model, cfg.device, cfg.dtype)
    if adapter and cfg.backend == "hf":  # vLLM applies the adapter as a LoRA itself
        lm = load_adapter(lm, adapter)
    if gate is not None:
        gate.ssi.check_model(lm)
    return lm, gate, info


# -- generation ------------------------------------------------------------------------------


def multijail_samples(langs: Sequence[str], n: int | None) -> list[dict]:
    mj = load_multijail(langs).head(n)
    return [
        {"uid": f"multijail:{lang}:{i}", "task": "multijail", "id": i, "lang": lang, "prompt": t}
        for lang in langs
        for i, t in zip(mj.ids, mj.texts[lang])
    ]


def _spread(k: int, total: int) -> list[int]:
    """``k`` indices spread evenly over ``range(total)``."""
    return [int(i * total / k) for i in range(k)] if k else []


def _xstest_subset(rows: list[dict], n: int) -> list[dict]:
    """``n`` XSTest rows that keep its safe / unsafe mix (250 / 200) and spread over its prompt
    types (the file is ordered by type). Every k-th row does both when k >= 2 and the mix comes out
    within a prompt or two of the target, and is kept then (the quick preset's 24 and the 40 / 100 of
    earlier runs select the same prompts as before); otherwise (10 gave 3 safe, 250 and 300 the
    first rows, 125 / 175 safe) each label's rows are spread over separately."""
    step = len(rows) // n
    picked = rows[::step][:n] if step >= 2 else []
    safe = [i for i, r in enumerate(rows) if r["label"] == "safe"]
    unsafe = [i for i, r in enumerate(rows) if r["label"] != "safe"]
    want = round(n * len(safe) / len(rows))
    if picked and abs(sum(r["label"] == "safe" for r in picked) - want) <= 1 + 0.02 * n:
        return picked
    chosen = {safe[i] for i in _spread(want, len(safe))} | {unsafe[i] for i in _spread(n - want, len(unsafe))}
    return [rows[i] for i in sorted(chosen)]


def xstest_samples(n: int | None) -> list[dict]:
    from lasa.data.safety import xstest

    rows = xstest()
    if n is not None and n < len(rows):
        rows = _xstest_subset(rows, n)
    return [
        {
            "uid": f"xstest:{r['id']}",
            "task": "xstest",
            "id": r["id"],
            "lang": "en",
            "prompt": r["prompt"],
            "xstest_label": r["label"],
            "xstest_type": r["type"],
        }
        for r in rows
    ]


def xstest_mt_samples(langs: Sequence[str], n: int) -> list[dict]:
    """The translated XSTest (:func:`lasa.data.safety.xstest_translated`) as generation samples."""
    from lasa.data.safety import xstest_translated

    return [
        {
            "uid": f"xstest_mt:{r['lang']}:{r['id']}",
            "task": "xstest_mt",
            "id": r["id"],
            "lang": r["lang"],
            "prompt": r["prompt"],
            "xstest_label": r["label"],
            "xstest_type": r["type"],
        }
        for r in xstest_translated(langs, n)
    ]


def generation_info(
    settings: GenerationSettings,
    gate: Gate | None,
    backend: str,
    adapter: Path | None,
    lm: LoadedModel | None = None,
) -> dict:
    """What a completion depends on besides its prompt; stored with every row.

    Besides the decoding settings it records the identity of what generated the row: the model
    (its resolved path and dtype), the adapter's weights (a hash, so a retrained adapter at the
    same path counts as new) and the gate's SSI (:attr:`lasa.ssi.SSI.digest`, with the
    conditioning text). :func:`generate_samples` regenerates a stored row whose record differs."""
    info = settings.to_dict() | {
        "gated": gate is not None,
        "backend": backend,
        "adapter": str(adapter) if adapter else None,
        "adapter_digest": _adapter_digest(adapter),
        "gate_digest": (
            fingerprint({"ssi": gate.ssi.digest, "conditioning_text": gate.conditioning_text})
            if gate is not None
            else None
        ),
    }
    if lm is not None:
        # a full fine-tune is a variant of its base model (its own weights are ``adapter_digest``)
        from lasa.models import full_checkpoint_base, weights_signature

        base = full_checkpoint_base(lm.full_checkpoint) if lm.full_checkpoint else None
        info |= {
            "model": base or lm.path,
            # the weights' identity: the same path can hold other weights, other paths the same
            "model_weights": weights_signature(base or lm.spec),
            "dtype": str(next(lm.model.parameters()).dtype).removeprefix("torch."),
            # transformers 5 keeps the template in chat_template.jinja, outside the weights'
            # signature: an edited template changes every prompt, so it is part of the record
            "chat_template": fingerprint({"template": getattr(lm.tokenizer, "chat_template", None)}),
        }
    return info


#: generation-record keys that only a gated row has (an ungated twin's row can still be copied)
_GATE_KEYS = ("gated", "gate_digest")
#: recorded for the reader, not compared: the adapter's identity is ``adapter_digest``, so a run
#: directory that is moved or copied (its adapters' paths change) resumes instead of regenerating
_RECORD_ONLY = ("adapter",)


def _adapter_digest(adapter: Path | None) -> str | None:
    if adapter is None:
        return None
    files = [
        p
        for p in Path(adapter).iterdir()
        if p.suffix in {".safetensors", ".bin"} or p.name == "adapter_config.json"
    ]
    return files_digest(files)


def _record_differs(info: dict, want: dict) -> set[str]:
    """Keys whose stored value differs from ``want``. A key an older lasa did not record is not
    compared, the record-only keys never are, and the model's path only where the record lacks
    its weights' signature (rows written before it was recorded)."""
    skip = set(_RECORD_ONLY) | ({"model"} if "model_weights" in info else set())
    return {k for k, v in want.items() if k in info and k not in skip and info[k] != v}


def stale_rows(done: dict[str, dict], want: dict) -> tuple[set[str], set[str], int]:
    """Rows of ``done`` whose stored generation record differs from ``want`` (to regenerate), the
    keys they differ in, and how many rows lack a key that ``want`` has: rows written by an older
    lasa, which did not record the model / adapter / SSI identity, are compared on what they did
    record and reused."""
    stale: set[str] = set()
    keys: set[str] = set()
    legacy = 0
    for uid, row in done.items():
        info = row.get("generation") or {}
        diff = _record_differs(info, want)
        # rows without the weights' signature are still compared on the model's path: not legacy
        legacy += any(k not in info for k in want if not (k == "model_weights" and "model" in info))
        if diff:
            stale.add(uid)
            keys |= diff
    return stale, keys, legacy


def reuse_ungated(
    lm: LoadedModel,
    todo: list[tuple[SampleWriter, dict]],
    gate: Gate,
    twin: Path,
    gen_info: dict,
    batch_size: int,
) -> list[tuple[SampleWriter, dict]]:
    """Copy the ungated twin's completion for every prompt the SSI does not flag; return the rest.

    The gate leaves an unflagged row untouched (``_generate_batch`` generates it exactly as the
    ungated model would), so regenerating it only re-measures the same thing. Only rows the twin
    generated with the same settings, model and adapter are copied; scoring is a pass over layers
    1..L*.
    """
    want = {k: v for k, v in gen_info.items() if k not in _GATE_KEYS + _RECORD_ONLY}
    donors: dict[str, dict] = {}
    for name in ("completions.jsonl", "completions_xstest.jsonl", "completions_xstest_mt.jsonl"):
        for uid, row in SampleWriter(twin / name).load().items():
            info = row.get("generation") or {}
            # as in stale_rows, a key an older lasa did not record is not compared
            if not _record_differs(info, want) and not info.get("gated"):
                donors[uid] = row
    candidates = [
        (w, s) for w, s in todo if s["uid"] in donors and donors[s["uid"]].get("prompt") == s["prompt"]
    ]
    if not candidates:
        return todo
    known = gate.known_scores if gate.known_scores is not None else {}
    fresh = list(dict.fromkeys(s["prompt"] for _, s in candidates if s["prompt"] not in known))
    if fresh:
        scored = gate.ssi.score(lm, fresh, batch_size=batch_size, progress=False)
        known = known | dict(zip(fresh, map(float, scored)))
        if gate.known_scores is not None:
            gate.known_scores.update(known)
    scores = np.array([known[s["prompt"]] for _, s in candidates])
    flags = gate.ssi.flags(scores)
    reused = 0
    for (w, s), p, flag in zip(candidates, scores, flags):
        if flag:
            continue
        d = donors[s["uid"]]
        w.append(
            [
                s
                | {k: d[k] for k in ("response", "finish", "n_tokens")}
                | {"ssi_score": float(p), "gated": False, "generation": gen_info, "copied_from": twin.name}
            ]
        )
        reused += 1
    logger.info("%d unflagged completions copied from %s (identical by construction)", reused, twin)
    copied = {s["uid"] for (_, s), flag in zip(candidates, flags) if not flag}
    return [(w, s) for w, s in todo if s["uid"] not in copied]


#: Raw-prompt SSI scores of this run's gated variants (:attr:`lasa.generate.Gate.known_scores`);
#: the SSI's own ``scores.json`` (every prompt ``lasa interpret`` extracted) is read first.
SCORES_FILE = "ssi_scores.json"


def load_known_scores(path: Path, lm: LoadedModel, gate: Gate) -> None:
    """Give a raw-prompt gate the scores its SSI's interpret stage and this run's earlier gated
    variants computed (``Gate.known_scores``); a chat-format gate reads the prefill instead."""
    from lasa.ssi import SCORES_FILE as SSI_SCORES
    from lasa.ssi import read_scores, scores_key

    if gate.from_prefill:
        return
    key = scores_key(gate.ssi, lm)
    source = getattr(gate.ssi, "source", None)
    gate.known_scores = read_scores(Path(source) / SSI_SCORES, key) if source else {}
    gate.known_scores.update(read_scores(path, key))


def save_known_scores(path: Path, lm: LoadedModel, gate: Gate) -> None:
    """Keep what this variant scored beyond its SSI's own ``scores.json`` for the next gated variant."""
    from lasa.ssi import SCORES_FILE as SSI_SCORES
    from lasa.ssi import read_scores, scores_key, write_scores

    if not gate.known_scores or not distributed.is_main():
        return
    key = scores_key(gate.ssi, lm)
    source = getattr(gate.ssi, "source", None)
    interpreted = read_scores(Path(source) / SSI_SCORES, key) if source else {}
    new = {p: v for p, v in gate.known_scores.items() if p not in interpreted}
    if new:
        write_scores(path, key, read_scores(path, key) | new)


def generate_samples(
    lm: LoadedModel,
    tasks: list[tuple[list[dict], Path]],
    settings: GenerationSettings,
    gate: Gate | None,
    desc: str,
    backend: str = "hf",
    adapter: Path | None = None,
    twin: Path | None = None,
) -> list[list[dict]]:
    """For each (samples, completions file): generate what the file does not hold yet, then return
    every sample with its response. All tasks share one vLLM engine when ``backend == 'vllm'``.
    With a gate and the directory of the ungated ``twin`` variant, unflagged rows are copied."""
    writers = [SampleWriter(path, keep_unrequested=True) for _, path in tasks]
    gen_info = generation_info(settings, gate, backend, adapter, lm)
    if settings.do_sample:  # each row draws from its own stream (generate.row_generators); this seeds
        torch.manual_seed(settings.seed)  # what still draws from the process's: vLLM, sliding windows
    todo = []
    for (samples, path), w in zip(tasks, writers):
        done = w.load()
        stale, keys, legacy = stale_rows(
            {s["uid"]: done[s["uid"]] for s in samples if s["uid"] in done}, gen_info
        )
        # a data fix can change the text behind a uid: the stored answer is to another prompt
        moved = {
            s["uid"]
            for s in samples
            if s["uid"] in done and done[s["uid"]].get("prompt", s["prompt"]) != s["prompt"]
        }
        if moved - stale:
            stale |= moved
            keys.add("prompt text")
        if stale:
            logger.warning(
                "%s: %d completions were generated with a different %s; regenerating them",
                path,
                len(stale),
                ", ".join(sorted(keys)),
            )
        if legacy:
            logger.warning(
                "%s: %d completions predate lasa's record of the model / adapter / SSI they came from and "
                "are reused as they are; delete the file to regenerate them",
                path,
                legacy,
            )
        todo += [(w, s) for s in samples if s["uid"] not in done or s["uid"] in stale]
    if distributed.world_size() == 1:
        for w in writers:
            w.consolidate()
    # partial files of an interrupted earlier run go into the final file first, so that a row
    # regenerated now overrides its stale copy whatever rank's file held it (SampleWriter.consolidate)
    if distributed.world_size() > 1:  # each process takes a slice; rank 0 merges the files below
        distributed.barrier()  # every rank has read the files before any rank changes them
        if distributed.is_main():
            for w in writers:
                w.consolidate()
        distributed.barrier()
        todo = distributed.shard(todo)
        desc = f"{desc} [rank {distributed.rank()}/{distributed.world_size()}]"
    if todo and gate is not None and twin is not None and twin.is_dir():
        todo = reuse_ungated(lm, todo, gate, twin, gen_info, settings.batch_size)
    if todo:
        logger.info("%s: %d completions to generate", desc, len(todo))
        prompts = [s["prompt"] for _, s in todo]
        if backend == "vllm":
            from lasa.generate import generate_vllm

            lora = str(adapter) if adapter and lm.full_checkpoint is None else None  # a full model is lm
            rows = generate_vllm(lm, prompts, settings, gate, adapter=lora)
            for (w, s), r in zip(todo, rows):
                w.append([s | r | {"generation": gen_info}])
        else:
            for idx, rows in generate(lm, prompts, settings, gate, desc=desc):
                for i, r in zip(idx, rows):
                    todo[i][0].append([todo[i][1] | r | {"generation": gen_info}])
    if distributed.world_size() > 1:
        distributed.barrier()  # every slice is on disk
        if not distributed.is_main():
            return [[] for _ in tasks]
    return [w.finish(order=[s["uid"] for s in samples]) for (samples, _), w in zip(tasks, writers)]


def run_generate(cfg: GenerateConfig, lm: LoadedModel | None = None) -> GenerateResult:
    """``lasa generate``: completions for MultiJail (and XSTest) of one variant."""
    from lasa.config.base import expect_config

    expect_config(cfg, GenerateConfig, "run_generate")
    from lasa.models import check_given_model

    check_given_model(lm, cfg.model, "run_generate")
    if cfg.gate_threshold is not None and not cfg.gate:
        logger.warning("--gate-threshold %s has no effect without --gate", cfg.gate_threshold)
    t0 = time.time()
    rd = RunDir(cfg.run_dir)
    resolve_adapter(cfg.adapter, cfg.run_dir)  # a missing adapter is named as such, not as a variant
    name = variant_name(cfg)
    rd.eval(name)  # a plain folder name: checked before anything is created
    with rd.stage_dir(f"eval/{name}") as out, exclusive(out, f"the variant {name}"):
        # a failure before the first sample leaves no folder; a second process on the same variant
        # is refused (two writers of one partial file lose each other's samples)
        return _generate_into(cfg, lm, name, out, t0)


def _completions_digest(out: Path) -> str:
    return files_digest(sorted(out.glob("completions*.jsonl")))


def _held(results: Path) -> list[Path]:
    return sorted(results.parent.glob(".results.held.*.json"))


def _hold_results(results: Path, out: Path) -> None:
    """Move ``results.json`` aside while generation may change the completions it was computed from.

    Generation replaces the completions files one after another; a kill between two of them left the
    old results.json (the stage's marker: ``lasa run`` skips a stage that has it) beside answers made
    with other settings. Aside, its name keeps the completions digest it was computed from, so
    :func:`_release_results` puts it back exactly when nothing changed, in this run or the next."""
    _release_results(results, out)  # an interrupted generation's marker first
    if results.is_file():
        results.replace(results.with_name(f".results.held.{_completions_digest(out)[:16]}.json"))


def _release_results(results: Path, out: Path) -> None:
    """Put a held ``results.json`` back if the completions are still those it counted; else drop it
    (``lasa evaluate`` writes it again)."""
    now = _completions_digest(out)[:16]
    for held in _held(results):
        if held.name == f".results.held.{now}.json" and not results.exists():
            held.replace(results)
        else:
            held.unlink()
            logger.info(
                "generate: %s changed; its results.json is removed until `lasa evaluate` reruns", out.name
            )


def _generate_into(
    cfg: GenerateConfig, lm: LoadedModel | None, name: str, out: Path, t0: float
) -> GenerateResult:
    lm, gate, info = load_variant(cfg, lm)
    settings = GenerationSettings(
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size,
        do_sample=cfg.do_sample,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        seed=cfg.seed,
    )
    tasks = [(multijail_samples(cfg.langs, cfg.n_prompts), out / "completions.jsonl")]
    if cfg.xstest:
        tasks.append((xstest_samples(cfg.xstest_n), out / "completions_xstest.jsonl"))
    mt = xstest_mt_samples(cfg.langs, cfg.xstest_mt_n)
    if mt:
        tasks.append((mt, out / "completions_xstest_mt.jsonl"))
    twin = twin_dir(cfg) if cfg.gate and cfg.reuse_ungated and cfg.backend == "hf" else None
    scores_path = RunDir(cfg.run_dir).path / "eval" / SCORES_FILE
    if gate is not None and cfg.backend == "hf":
        load_known_scores(scores_path, lm, gate)
    results = RunDir(cfg.run_dir).results(name)
    if distributed.is_main():
        _hold_results(results, out)
    try:
        done = generate_samples(
            lm,
            tasks,
            settings,
            gate,
            name,
            backend=cfg.backend,
            adapter=resolve_adapter(cfg.adapter, cfg.run_dir),
            twin=twin,
        )
    finally:  # its verdicts and ASR count the completions as they were: back only if unchanged
        if distributed.is_main():
            _release_results(results, out)
    if gate is not None:
        save_known_scores(scores_path, lm, gate)
    if distributed.is_main():
        RunDir(cfg.run_dir).record(f"generate:{name}", cfg)
    return GenerateResult(
        variant=name,
        path=out,
        info=info,
        multijail=done[0],
        xstest=done[1] if cfg.xstest else [],
        xstest_mt=done[-1] if mt else [],
        seconds=time.time() - t0,
        lm=lm,
        gate=gate,
    )


# -- stage -----------------------------------------------------------------------------------


def _refusal_judge(cfg: EvaluateConfig, verdicts: dict[str, list[dict]]) -> str | None:
    """The judge whose refusal flag counts: the default, else pair / embedding, else any."""
    return next(
        (j for j in (cfg.default_judge, "pair", "embedding") if j in verdicts), next(iter(verdicts), None)
    )


def _judged(judge: Any, samples: list[dict], out: Path, name: str) -> list[dict]:
    """``judge_samples`` into ``out/name``, taking the other variants' verdicts on identical answers
    (same uid, same response: ``RUN/eval/*/name``) instead of judging them again."""
    from lasa.judges import judge_samples

    others = sorted(d / name for d in out.parent.iterdir() if d.is_dir() and d != out)
    return judge_samples(judge, samples, out / name, donors=others)


def run_evaluate(cfg: EvaluateConfig, lm: LoadedModel | None = None) -> EvaluateResult:
    """``lasa evaluate``: generate what is missing, judge, measure utility, write results.json."""
    from lasa.config.base import expect_config

    expect_config(cfg, EvaluateConfig, "run_evaluate")  # a GenerateConfig would generate, then fail
    from lasa.models import check_given_model

    check_given_model(lm, cfg.model, "run_evaluate")
    from lasa.judges.llm import preflight

    preflight(
        cfg.judges, cfg.judge_url, cfg.judge_model
    )  # an unreachable endpoint: before generation, results.json kept
    rd = RunDir(cfg.run_dir)
    resolve_adapter(cfg.adapter, cfg.run_dir)
    name = variant_name(cfg)
    rd.eval(name)
    # the variant is this process's from generation to results.json (run_generate re-enters the lock)
    with rd.stage_dir(f"eval/{name}") as out, exclusive(out, f"the variant {name}"):
        return _evaluate(cfg, lm)


def _evaluate(cfg: EvaluateConfig, lm: LoadedModel | None) -> EvaluateResult:
    from lasa.judges import get_judge, read_verdicts

    t0 = time.time()
    # judge and utility names (and the llm judge's endpoint) are validated when cfg is built, and the
    # variant's own verdict caches read here: a damaged one is named before anything is generated
    # (and before results.json is touched)
    own = RunDir(cfg.run_dir).eval(variant_name(cfg))
    for f in sorted(own.glob("judgements_*.jsonl")):  # every rank: none may wait for one that stopped
        read_verdicts(f)
    gen = run_generate(cfg, lm)
    name, lm, gate = gen.variant, gen.lm, gen.gate
    out = RunDir(cfg.run_dir).eval(name)
    if not distributed.is_main():  # the other ranks generated their slice; rank 0 judges the whole
        return EvaluateResult(name, out, {}, rank=distributed.rank())
    timings = {"generate_seconds": round(gen.seconds, 1)}
    # the marker goes before the judges and utility write anything: an evaluation interrupted after
    # changing them must read as unfinished, not as the previous results.json beside newer files
    RunDir(cfg.run_dir).results(name).unlink(missing_ok=True)

    t1 = time.time()
    verdicts: dict[str, list[dict]] = {}
    xs_verdicts: dict[str, list[dict]] = {}
    mt_verdicts: dict[str, list[dict]] = {}
    judge_info: dict[str, str] = {}
    judge_versions: dict[str, str] = {}
    validation: dict[str, dict] = {}
    for jname in cfg.judges:
        judge = get_judge(
            jname, judge_model=cfg.judge_model, judge_url=cfg.judge_url, judge_api_model=cfg.judge_api_model
        )
        judge_info[jname] = getattr(judge, "description", jname)
        judge_versions[jname] = str(getattr(judge, "version", ""))
        validation[jname] = getattr(judge, "validation", None) or {}
        verdicts[jname] = _judged(judge, gen.multijail, out, f"judgements_{jname}.jsonl")
        if jname == "llm" or not (gen.xstest or gen.xstest_mt):
            continue
        # over-refusal reads a refusal flag only: a judge whose flag is another judge's (probe's is
        # pair's) leaves XSTest to that one, under its own name, instead of a pass of its model
        rname = getattr(judge, "refusal_judge", None) or jname
        if rname in xs_verdicts or rname in mt_verdicts:
            continue
        rjudge = judge if rname == jname else get_judge(rname)
        if gen.xstest:
            xs_verdicts[rname] = _judged(rjudge, gen.xstest, out, f"judgements_xstest_{rname}.jsonl")
        if gen.xstest_mt:
            mt_verdicts[rname] = _judged(rjudge, gen.xstest_mt, out, f"judgements_xstest_mt_{rname}.jsonl")
    timings["judge_seconds"] = round(time.time() - t1, 1)
    asr = {
        j: asr_metrics(gen.multijail, v, cfg.langs, validation=validation[j].get("unsafe_counts"))
        for j, v in verdicts.items()
    }
    gate_info = gate_stats(gen.multijail, gen.xstest, gen.xstest_mt) if gate is not None else None

    # XSTest refusal comes from the e5 refusal classifier (trained on XSTest's labelled completions),
    # which both the pair and the embedding judge carry
    over = over_mt = None
    if gen.xstest and (j := _refusal_judge(cfg, xs_verdicts)):
        over = over_refusal(gen.xstest, [bool(v["refusal"]) for v in xs_verdicts[j]], j)
    if gen.xstest_mt and (j := _refusal_judge(cfg, mt_verdicts)):
        over_mt = over_refusal_by_language(gen.xstest_mt, [bool(v["refusal"]) for v in mt_verdicts[j]], j)

    utility: dict[str, Any] = {}
    t1 = time.time()
    if cfg.utility:
        twin = twin_dir(cfg) if gate is not None and cfg.reuse_ungated else None
        from lasa.utility.runner import run_utility

        utility = run_utility(cfg, lm, gate, out, twin=twin, info=gen.info)
    timings["utility_seconds"] = round(time.time() - t1, 1)
    timings["total_seconds"] = round(time.time() - t0, 1)
    results = {
        "variant": name,
        "model": cfg.model,
        "config": cfg.to_dict(),
        "versions": package_versions(),
        "seed": cfg.seed,
        "variant_info": gen.info,
        "multijail": {
            "n_per_language": cfg.n_prompts or MULTIJAIL_N,
            "ids": "first N MultiJail ids, the same in every language",
            "languages": cfg.langs,
        },
        "default_judge": cfg.default_judge,
        "judges": judge_info,
        "judge_versions": judge_versions,  # the report warns when variants' verdicts came from different ones
        "judge_validation": {j: v.get("summary") for j, v in validation.items() if v.get("summary")},
        "asr": asr,
        "judge_agreement": agreement(verdicts),
        "gate": gate_info,
        "over_refusal": over,
        "over_refusal_multilingual": over_mt,
        "utility": utility,
        "timings": timings,
    }
    write_json(RunDir(cfg.run_dir).results(name), results)  # written last
    RunDir(cfg.run_dir).record(f"evaluate:{name}", cfg, {"timings": timings})
    d = asr[cfg.default_judge]
    logger.info(
        "%s: ASR (%s) average %.3f [%.3f, %.3f] (design effect %.2f: the languages share their prompts), "
        "high %.3f, medium %.3f, low %.3f; invalid %.3f",
        name,
        cfg.default_judge,
        d["average"],
        d["intervals"]["average"]["low"],
        d["intervals"]["average"]["high"],
        d["intervals"].get("design_effect", {}).get("average", 1.0),
        d["per_tier"].get("high", float("nan")),
        d["per_tier"].get("medium", float("nan")),
        d["per_tier"].get("low", float("nan")),
        d["invalid_rate"]["average"],
    )
    return EvaluateResult(name, out, results)


def load_results(run_dir: str | Path, variant: str) -> dict:
    """``RUN/eval/<variant>/results.json``, or a one-line error naming the command that writes it."""
    rd = RunDir(run_dir)
    return rd.load(rd.results(variant), f"lasa evaluate --variant {variant}")
