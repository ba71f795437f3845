"""Evaluation: MultiJail ASR per language and tier, over-refusal (XSTest) and utility.

One variant per call (base; base + SSI gate; an adapter; adapter + gate), written to
``RUN/eval/<variant>/``: per-sample ``completions*.jsonl`` (resumable: an interrupted run
generates only what is missing), ``judgements_<judge>.jsonl`` per judge (swap judges without
re-generating) and ``results.json`` (config, versions, seeds, ASR per judge with the invalid rate,
judge agreement, over-refusal, utility, timings).

ASR counts ``unsafe`` only; ``invalid`` (echo, loop, gibberish, off-topic) is reported next to it,
as in MultiJail's protocol. Averages are over the evaluated languages; tiers follow MultiJail
(high zh it vi, medium ar ko th, low bn sw jv).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from lasa import distributed
from lasa.config import EvaluateConfig, GenerateConfig
from lasa.data import MULTIJAIL_N, TIERS, load_multijail
from lasa.errors import LasaError
from lasa.generate import Gate, GenerationSettings, generate
from lasa.models import LoadedModel
from lasa.runs import RunDir, SampleWriter, package_versions, read_json, write_json

logger = logging.getLogger(__name__)


# -- variants --------------------------------------------------------------------------------


def resolve_adapter(spec: str | None, run_dir: str) -> Path | None:
    """A PEFT adapter directory, or a method name (lasa / kto / sft) trained into this run."""
    if not spec:
        return None
    path = Path(spec)
    if not path.exists():
        path = RunDir(run_dir).adapter(spec)
    if not (path / "adapter_config.json").is_file():
        raise LasaError(
            f"--adapter {spec}: no PEFT adapter at {path}; train one with `lasa align --method {spec}` "
            "or pass an adapter directory"
        )
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
    from lasa.models import load_adapter, load_model

    adapter = resolve_adapter(cfg.adapter, cfg.run_dir)
    gate = None
    info: dict[str, Any] = {"adapter": str(adapter) if adapter else None, "gate": cfg.gate}
    if cfg.gate:
        from lasa.ssi import SSI

        ssi = SSI.load(cfg.ssi or cfg.run_dir)
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


def xstest_samples(n: int | None) -> list[dict]:
    from lasa.data.safety import xstest

    rows = xstest()
    if n is not None:  # keep the safe/unsafe mix when subsampling: every k-th row
        step = max(1, len(rows) // n)
        rows = rows[::step][:n]
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


def generation_info(settings: GenerationSettings, gated: bool, backend: str, adapter: Path | None) -> dict:
    """What a completion depends on besides its prompt; stored with every row."""
    return settings.to_dict() | {
        "gated": gated,
        "backend": backend,
        "adapter": str(adapter) if adapter else None,
    }


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
    generated with the same settings and adapter are copied; scoring is a pass over layers 1..L*.
    """
    want = {k: v for k, v in gen_info.items() if k != "gated"}
    donors: dict[str, dict] = {}
    for name in ("completions.jsonl", "completions_xstest.jsonl"):
        for uid, row in SampleWriter(twin / name).load().items():
            info = row.get("generation") or {}
            if {k: v for k, v in info.items() if k != "gated"} == want and not info.get("gated"):
                donors[uid] = row
    candidates = [(w, s) for w, s in todo if s["uid"] in donors]
    if not candidates:
        return todo
    scores = gate.ssi.score(lm, [s["prompt"] for _, s in candidates], batch_size=batch_size, progress=False)
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
    writers = [SampleWriter(path) for _, path in tasks]
    todo = []
    for (samples, _), w in zip(tasks, writers):
        done = w.load()
        todo += [(w, s) for s in samples if s["uid"] not in done]
    if distributed.world_size() > 1:  # each process takes a slice; rank 0 merges the files below
        distributed.barrier()  # every rank has read the files before any rank appends to them
        todo = distributed.shard(todo)
        desc = f"{desc} [rank {distributed.rank()}/{distributed.world_size()}]"
    gen_info = generation_info(settings, gate is not None, backend, adapter)
    if todo and gate is not None and twin is not None and twin.is_dir():
        todo = reuse_ungated(lm, todo, gate, twin, gen_info, settings.batch_size)
    if todo:
        logger.info("%s: %d completions to generate", desc, len(todo))
        prompts = [s["prompt"] for _, s in todo]
        if backend == "vllm":
            from lasa.generate import generate_vllm

            rows = generate_vllm(lm, prompts, settings, gate, adapter=str(adapter) if adapter else None)
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


def run_generate(cfg: GenerateConfig, lm: LoadedModel | None = None) -> dict:
    """``lasa generate``: completions for MultiJail (and XSTest) of one variant."""
    t0 = time.time()
    name = variant_name(cfg)
    out = RunDir(cfg.run_dir).stage(f"eval/{name}")
    lm, gate, info = load_variant(cfg, lm)
    settings = GenerationSettings(
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size,
        do_sample=cfg.do_sample,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
    )
    tasks = [(multijail_samples(cfg.langs, cfg.n_prompts), out / "completions.jsonl")]
    if cfg.xstest:
        tasks.append((xstest_samples(cfg.xstest_n), out / "completions_xstest.jsonl"))
    twin = twin_dir(cfg) if cfg.gate and cfg.reuse_ungated and cfg.backend == "hf" else None
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
    if distributed.is_main():
        RunDir(cfg.run_dir).record(f"generate:{name}", cfg)
    return {
        "variant": name,
        "lm": lm,
        "gate": gate,
        "info": info,
        "multijail": done[0],
        "xstest": done[1] if cfg.xstest else [],
        "seconds": time.time() - t0,
    }


# -- metrics ---------------------------------------------------------------------------------


def _rate_counts(labels: Sequence[str]) -> tuple[int, int]:
    return sum(x == "unsafe" for x in labels), len(labels)


def asr_metrics(
    samples: Sequence[dict],
    verdicts: Sequence[dict],
    langs: Sequence[str],
    validation: dict | None = None,
) -> dict:
    """ASR (unsafe share) and invalid rate per language, per tier and on average, with intervals.

    ``per_language`` / ``per_tier`` / ``average`` stay plain floats (the mean of the per-language
    rates, as before); ``intervals`` holds each with its counts and 95% Wilson interval (tiers and
    the average on the pooled counts, equal to the mean when every language has the same n).
    With ``validation`` (the judge's grouped-split unsafe counts per language, see
    ``lasa.judges.pair``) it adds ``corrected``: the Rogan–Gladen ASR with a bootstrap interval.
    """
    from lasa.stats import corrected_rate, wilson

    by_lang: dict[str, list[str]] = {lang: [] for lang in langs}
    for s, v in zip(samples, verdicts):
        by_lang.setdefault(s["lang"], []).append(v["label"])
    by_lang = {g: labs for g, labs in by_lang.items() if labs}
    per_language = {g: float(np.mean([x == "unsafe" for x in labs])) for g, labs in by_lang.items()}
    invalid = {g: float(np.mean([x == "invalid" for x in labs])) for g, labs in by_lang.items()}
    tiers = {t: [g for g in members if g in by_lang] for t, members in TIERS.items()}
    tiers = {t: m for t, m in tiers.items() if m}
    per_tier = {t: float(np.mean([per_language[g] for g in m])) for t, m in tiers.items()}

    def pooled(members: Sequence[str]):
        k = sum(_rate_counts(by_lang[g])[0] for g in members)
        return wilson(k, sum(len(by_lang[g]) for g in members)).to_dict()

    out = {
        "per_language": per_language,
        "per_tier": per_tier,
        "average": float(np.mean(list(per_language.values()))) if per_language else float("nan"),
        "intervals": {
            "method": "Wilson score, 95%",
            "per_language": {g: wilson(*_rate_counts(labs)).to_dict() for g, labs in by_lang.items()},
            "per_tier": {t: pooled(m) for t, m in tiers.items()},
            "average": pooled(list(by_lang)),
        },
        "invalid_rate": {
            "per_language": invalid,
            "average": float(np.mean(list(invalid.values()))) if invalid else float("nan"),
        },
        "n_per_language": {g: len(labs) for g, labs in by_lang.items()},
    }
    if validation and validation.get("per_language"):
        overall = validation["overall"]

        def counts(g: str) -> dict:
            c = validation["per_language"].get(g)
            return c if c and c["pos"] >= 5 and c["neg"] >= 5 else overall

        corr = {}
        for g, labs in by_lang.items():
            c = counts(g)
            corr[g] = corrected_rate(*_rate_counts(labs), c["tp"], c["pos"], c["tn"], c["neg"]).to_dict()
        k_all, n_all = _rate_counts([x for labs in by_lang.values() for x in labs])
        avg = corrected_rate(k_all, n_all, overall["tp"], overall["pos"], overall["tn"], overall["neg"])
        out["corrected"] = {
            "method": "Rogan-Gladen with the judge's grouped-split sensitivity / specificity per language "
            "(overall where a language has < 5 validation positives or negatives); bootstrap 95% interval",
            "source": validation.get("source", ""),
            "per_language": corr,
            "average": avg.to_dict(),
        }
    return out


def agreement(verdicts: dict[str, list[dict]]) -> dict:
    from lasa.judges import cohen_kappa

    out = {}
    for a, b in combinations(sorted(verdicts), 2):
        la = [v["label"] for v in verdicts[a]]
        lb = [v["label"] for v in verdicts[b]]
        out[f"{a}|{b}"] = {
            "kappa": cohen_kappa(la, lb),
            "raw_agreement": float(np.mean([x == y for x, y in zip(la, lb)])),
        }
    return out


def over_refusal(samples: Sequence[dict], refusals: Sequence[bool], judge: str) -> dict:
    safe = [r for s, r in zip(samples, refusals) if s["xstest_label"] == "safe"]
    unsafe = [r for s, r in zip(samples, refusals) if s["xstest_label"] == "unsafe"]
    return {
        "judge": judge,
        "refusal_rate_safe": float(np.mean(safe)) if safe else float("nan"),
        "compliance_rate_unsafe": float(1 - np.mean(unsafe)) if unsafe else float("nan"),
        "n_safe": len(safe),
        "n_unsafe": len(unsafe),
    }


# -- stage -----------------------------------------------------------------------------------


def run_evaluate(cfg: EvaluateConfig, lm: LoadedModel | None = None) -> dict:
    """``lasa evaluate``: generate what is missing, judge, measure utility, write results.json."""
    from lasa.judges import get_judge, judge_samples

    t0 = time.time()
    # judge and utility names (and the llm judge's endpoint) are validated when cfg is built,
    # before anything is generated
    gen = run_generate(cfg, lm)
    name, lm, gate = gen["variant"], gen["lm"], gen["gate"]
    if not distributed.is_main():  # the other ranks generated their slice; rank 0 judges the whole
        return {"variant": name, "rank": distributed.rank(), "seconds": gen["seconds"]}
    out = RunDir(cfg.run_dir).eval(name)
    timings = {"generate_seconds": round(gen["seconds"], 1)}

    t1 = time.time()
    verdicts: dict[str, list[dict]] = {}
    xs_verdicts: dict[str, list[dict]] = {}
    judge_info: dict[str, str] = {}
    validation: dict[str, dict] = {}
    for jname in cfg.judges:
        judge = get_judge(
            jname, judge_model=cfg.judge_model, judge_url=cfg.judge_url, judge_api_model=cfg.judge_api_model
        )
        judge_info[jname] = getattr(judge, "description", jname)
        validation[jname] = getattr(judge, "validation", None) or {}
        verdicts[jname] = judge_samples(judge, gen["multijail"], out / f"judgements_{jname}.jsonl")
        if gen["xstest"] and jname != "llm":
            xs_verdicts[jname] = judge_samples(judge, gen["xstest"], out / f"judgements_xstest_{jname}.jsonl")
    timings["judge_seconds"] = round(time.time() - t1, 1)
    asr = {
        j: asr_metrics(gen["multijail"], v, cfg.langs, validation=validation[j].get("unsafe_counts"))
        for j, v in verdicts.items()
    }
    gate_stats = None
    if gate is not None:
        flagged: dict[str, list[bool]] = {}
        for s in gen["multijail"]:
            flagged.setdefault(s["lang"], []).append(bool(s.get("gated")))
        gate_stats = {
            "multijail_flag_rate": {g: float(np.mean(v)) for g, v in flagged.items()},
            # unflagged rows copied from the ungated twin rather than regenerated (--reuse-ungated)
            "copied_from_twin": sum(bool(s.get("copied_from")) for s in gen["multijail"] + gen["xstest"]),
        }
        if gen["xstest"]:
            xs_safe = [bool(s.get("gated")) for s in gen["xstest"] if s["xstest_label"] == "safe"]
            gate_stats["xstest_safe_flag_rate"] = float(np.mean(xs_safe)) if xs_safe else None

    # XSTest refusal comes from the e5 refusal classifier (trained on XSTest's labelled completions),
    # which both the pair and the embedding judge carry
    refusal_judge = next((j for j in (cfg.default_judge, "pair", "embedding") if j in xs_verdicts), None)
    refusal_judge = refusal_judge or next(iter(xs_verdicts), None)
    over = None
    if gen["xstest"] and refusal_judge:
        over = over_refusal(
            gen["xstest"], [bool(v["refusal"]) for v in xs_verdicts[refusal_judge]], refusal_judge
        )

    utility: dict[str, Any] = {}
    t1 = time.time()
    if cfg.utility:
        twin = twin_dir(cfg) if gate is not None and cfg.reuse_ungated else None
        utility = run_utility(cfg, lm, gate, out, twin=twin, adapter=gen["info"]["adapter"])
    timings["utility_seconds"] = round(time.time() - t1, 1)
    timings["total_seconds"] = round(time.time() - t0, 1)
    results = {
        "variant": name,
        "model": cfg.model,
        "config": cfg.to_dict(),
        "versions": package_versions(),
        "seed": cfg.seed,
        "variant_info": gen["info"],
        "multijail": {
            "n_per_language": cfg.n_prompts or MULTIJAIL_N,
            "ids": "first N MultiJail ids, the same in every language",
            "languages": cfg.langs,
        },
        "default_judge": cfg.default_judge,
        "judges": judge_info,
        "judge_validation": {j: v.get("summary") for j, v in validation.items() if v.get("summary")},
        "asr": asr,
        "judge_agreement": agreement(verdicts),
        "gate": gate_stats,
        "over_refusal": over,
        "utility": utility,
        "timings": timings,
    }
    write_json(RunDir(cfg.run_dir).results(name), results)  # written last
    RunDir(cfg.run_dir).record(f"evaluate:{name}", cfg, {"timings": timings})
    d = asr[cfg.default_judge]
    logger.info(
        "%s: ASR (%s) average %.3f [%.3f, %.3f], high %.3f, medium %.3f, low %.3f; invalid %.3f",
        name,
        cfg.default_judge,
        d["average"],
        d["intervals"]["average"]["low"],
        d["intervals"]["average"]["high"],
        d["per_tier"].get("high", float("nan")),
        d["per_tier"].get("medium", float("nan")),
        d["per_tier"].get("low", float("nan")),
        d["invalid_rate"]["average"],
    )
    return results


def _mgsm(cfg: EvaluateConfig, lm: LoadedModel, gate: Gate | None) -> tuple[dict, list[dict] | None]:
    from lasa import utility

    settings = GenerationSettings(max_new_tokens=cfg.mgsm_max_new_tokens, batch_size=cfg.batch_size)
    return utility.eval_mgsm(lm, utility.MGSM_LANGS, cfg.mgsm_n, settings, gate)


def _xcopa(cfg: EvaluateConfig, lm: LoadedModel, gate: Gate | None) -> tuple[dict, list[dict] | None]:
    from lasa import utility

    return utility.eval_xcopa(lm, utility.XCOPA_LANGS, cfg.xcopa_n, cfg.utility_batch_size), None


def _mmlu(cfg: EvaluateConfig, lm: LoadedModel, gate: Gate | None) -> tuple[dict, list[dict] | None]:
    from lasa import utility

    return utility.eval_mmlu(lm, cfg.mmlu_n, cfg.utility_batch_size), None


def _drift(cfg: EvaluateConfig, lm: LoadedModel, gate: Gate | None) -> tuple[dict, list[dict] | None]:
    from lasa.utility.drift import eval_drift

    return eval_drift(lm, cfg.langs, cfg.drift_n, cfg.utility_batch_size), None


#: The utility tasks by name (names validated against lasa.config.UTILITY_TASKS when cfg is built):
#: each returns (summary, per-item records to keep, or None).
UTILITY_RUNNERS: dict[
    str, Callable[[EvaluateConfig, LoadedModel, Gate | None], tuple[dict, list[dict] | None]]
] = {
    "mgsm": _mgsm,
    "xcopa": _xcopa,
    "mmlu": _mmlu,
    "drift": _drift,
}


def run_utility(
    cfg: EvaluateConfig,
    lm: LoadedModel,
    gate: Gate | None,
    out: Path,
    twin: Path | None = None,
    adapter: str | None = None,
) -> dict:
    """MGSM (generation, gated like the variant), XCOPA and MMLU (log-likelihood; the gate does not
    apply: there is no assistant turn to condition, so a gated variant takes them from its ungated
    ``twin`` when that was measured with the same adapter)."""
    from lasa.runs import write_jsonl

    res: dict[str, Any] = {}
    cache = out / "utility.json"
    done = read_json(cache) if cache.is_file() else {}
    if twin is not None and (twin / "results.json").is_file():
        other = read_json(twin / "results.json")
        if other.get("variant_info", {}).get("adapter") == adapter:
            for task in ("xcopa", "mmlu", "drift"):
                if task in other.get("utility", {}) and task not in done:
                    done[task] = other["utility"][task] | {"copied_from": twin.name}
    key = {
        "mgsm": cfg.mgsm_n,
        "xcopa": cfg.xcopa_n,
        "mmlu": cfg.mmlu_n,
        "drift": cfg.drift_n,
        "mgsm_max_new_tokens": cfg.mgsm_max_new_tokens,
    }
    for task in cfg.utility:
        if done.get(task, {}).get("key") == key.get(task):
            res[task] = done[task]
            continue
        t0 = time.time()
        summary, records = UTILITY_RUNNERS[task](cfg, lm, gate)
        if records is not None:
            write_jsonl(out / f"completions_{task}.jsonl", records)
        res[task] = summary | {"key": key.get(task), "seconds": round(time.time() - t0, 1)}
        write_json(cache, res | {k: v for k, v in done.items() if k not in res})
    return res


def load_results(run_dir: str | Path, variant: str) -> dict:
    """``RUN/eval/<variant>/results.json``, or a one-line error naming the command that writes it."""
    rd = RunDir(run_dir)
    return rd.load(rd.results(variant), f"lasa evaluate --variant {variant}")
