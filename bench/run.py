"""lasa benchmarks: ``python bench/run.py [NAME ...] [--model default] [--repeats 3]``.

Each benchmark measures lasa's path against the plain library call it replaces, on the same
inputs in the same process, and reports medians over ``--repeats`` runs and their ratio. Results
go to ``bench/results/<name>.json``; ``bench/RESULTS.md`` is regenerated from every result file,
with the machine and versions it was measured on. Performance targets live here, not in tests.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lasa.errors import LasaError

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
logger = logging.getLogger("bench")


def _sync() -> None:
    if torch.cuda.is_available():  # CUDA work is asynchronous: time what ran, not what was queued
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    fn()  # warm-up (allocator, kernels, lazy imports)
    out = []
    for _ in range(repeats):
        _sync()
        t0 = time.perf_counter()
        fn()
        _sync()
        out.append(time.perf_counter() - t0)
    return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    from lasa.runs import package_versions

    return {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": package_versions(),
    }


# -- benchmarks ------------------------------------------------------------------------------


def bench_extraction(args: argparse.Namespace) -> dict:
    """Hidden-state extraction (all layers, last-token pooling) vs a bare batched forward."""
    from lasa.config import LocateConfig
    from lasa.hidden import extract_states, format_prompts, length_batches, pad_batch, position_ids_from_mask
    from lasa.locate.scores import build_points
    from lasa.models import load_model

    lm = load_model(args.model, device=args.device)
    _, points = build_points(LocateConfig(model=args.model, n_queries=max(4, args.n_prompts // 10), seed=0))
    texts = [p["text"] for p in points][: args.n_prompts]
    seqs = format_prompts(lm.tokenizer, texts, chat_template=False)
    n_tokens = sum(len(s) for s in seqs)
    bs = args.batch_size
    batches = [
        pad_batch([seqs[i] for i in idx], lm.tokenizer.pad_token_id, "left")
        for idx in length_batches([len(q) for q in seqs], bs)
    ]
    dev = lm.device

    @torch.inference_mode()
    def bare(base_only: bool) -> None:
        module = lm.model.get_decoder() if base_only else lm.model
        for ids, mask in batches:
            module(
                input_ids=ids.to(dev),
                attention_mask=mask.to(dev),
                position_ids=position_ids_from_mask(mask).to(dev),
                use_cache=False,
            )

    def lasa_path() -> None:
        extract_states(lm, texts, layers=None, batch_size=bs, progress=False)

    t_lasa = timed(lasa_path, args.repeats)
    t_bare = timed(lambda: bare(False), args.repeats)
    t_base = timed(lambda: bare(True), args.repeats)
    med = {k: statistics.median(v) for k, v in {"lasa": t_lasa, "bare": t_bare, "base": t_base}.items()}
    return {
        "what": f"{len(texts)} locate prompts ({n_tokens} tokens), batch {bs}, all {lm.num_layers} layers pooled",
        "model": args.model,
        "seconds": {
            "lasa_extract_states": t_lasa,
            "bare_model_forward": t_bare,
            "bare_decoder_forward": t_base,
        },
        "tokens_per_s": {k: n_tokens / v for k, v in med.items()},
        "ratio_vs_model_forward": med["bare"] / med["lasa"],
        "ratio_vs_decoder_forward": med["base"] / med["lasa"],
        "target": "lasa throughput >= 0.8x a bare batched model(**batch) forward",
    }


def _bench_prompts(n: int) -> list[str]:
    """``n`` MultiJail prompts cycling through the ten languages (a realistic length mix)."""
    from lasa.data import load_multijail

    mj = load_multijail()
    return [mj.texts[lang][i] for i, lang in zip(range(n), [g for _ in range(n) for g in mj.languages])][:n]


def bench_generation(args: argparse.Namespace) -> dict:
    """Batched vs batch-1 generation, and SSI-gated vs plain generation, at a fixed response length."""
    from lasa.generate import Gate, GenerationSettings, generate_all
    from lasa.models import load_model
    from lasa.ssi import SSI

    lm = load_model(args.model, device=args.device)
    prompts = _bench_prompts(args.gen_prompts)
    n_new = args.new_tokens
    fixed = GenerationSettings(max_new_tokens=n_new, min_new_tokens=n_new, batch_size=len(prompts))
    one = GenerationSettings(max_new_tokens=n_new, min_new_tokens=n_new, batch_size=1)
    # plain and every gated variant take turns within each repeat, so a machine that speeds up or
    # slows down during the benchmark moves all of them alike; each ratio is the median of the
    # per-repeat ratios (paired), not a ratio of medians taken minutes apart
    runs: dict[str, Callable[[], object]] = {
        "batched": lambda: generate_all(lm, prompts, fixed, progress=False)
    }
    tags: dict[str, tuple[str, list[int]]] = {}
    if not args.ssi:
        logger.warning(
            "generation: no --ssi given, so the gated rows (hardening target <= 1.05x) are left out; "
            "pass --ssi RUN/ssi (`make bench` passes the run directory's after `make run`)"
        )
    for name in args.ssi:
        ssi = SSI.load(name)
        tag = (
            ("user" if ssi.meta.get("pooling") == "user_last" else "chat")
            if ssi.meta.get("chat_template")
            else "raw"
        )
        flagged: list[int] = []
        gate = Gate(ssi)

        def gated(gate=gate, flagged=flagged):
            rows = generate_all(lm, prompts, fixed, gate, progress=False)
            flagged.append(sum(r["gated"] for r in rows))

        runs[f"gated_{tag}_ssi"] = gated
        tags[f"gated_{tag}_ssi"] = (tag, flagged)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeats):
        for key, fn in runs.items():
            times[key] += timed(fn, 1)
    t_batched = times["batched"]
    out = {
        "what": f"{len(prompts)} MultiJail prompts (10 languages), {n_new} new tokens each (forced), greedy; "
        "plain and gated runs interleaved",
        "model": args.model,
        "seconds": dict(times),
        "tokens_per_s": {"batched": len(prompts) * n_new / statistics.median(t_batched)},
        "target": "gated <= 1.05x plain generation time on the same prompts",
    }
    if not args.skip_batch1:
        t_single = timed(lambda: generate_all(lm, prompts, one, progress=False), 1)
        out["seconds"]["batch1_loop"] = t_single
        out["tokens_per_s"]["batch1_loop"] = len(prompts) * n_new / statistics.median(t_single)
        out["batched_speedup"] = out["tokens_per_s"]["batched"] / out["tokens_per_s"]["batch1_loop"]
    for key, (tag, flagged) in tags.items():
        out[f"{key}_ratio_vs_plain"] = statistics.median(
            g / b for g, b in zip(times[key], t_batched, strict=True)
        )
        out[f"{key}_flagged"] = f"{flagged[-1]}/{len(prompts)}"
        out[f"{key}_source"] = {
            "chat": "state read off the prefill (assistant header)",
            "user": "state read off the prefill (the user's last token)",
        }.get(tag, "extra pass over the raw prompt, layers 1..L* only")
    return out


def bench_kto_step(args: argparse.Namespace) -> dict:
    """Seconds per KTO step, LoRA on every block vs only above the bottleneck, on the same rows."""
    import tempfile

    from lasa.align import run_align
    from lasa.config import AlignConfig
    from lasa.runs import read_jsonl

    out: dict = {
        "what": f"TRL KTOTrainer + PEFT LoRA (r 8, all linear modules), batch {args.kto_batch}, "
        f"{args.kto_steps} steps on the same {args.kto_batch * args.kto_steps} lasa rows; median of the "
        "per-step times after the first",
        "model": args.model,
        "seconds_per_step": {},
    }
    import lasa.align as align

    shared_prefix = align._shared_prefix
    losses: dict[str, list[float]] = {}
    # "above_bottleneck_recompute": the same placement with the reference passes recomputing the
    # frozen blocks below the adapter (align.SharedFrozenPrefix off): what the sharing saves
    for name, placement, share in (
        ("all", "all", True),
        ("above_bottleneck_recompute", "above_bottleneck", False),
        ("above_bottleneck", "above_bottleneck", True),
    ):
        align._shared_prefix = shared_prefix if share else (lambda *a: None)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                cfg = AlignConfig(
                    model=args.model,
                    run_dir=tmp,
                    method="lasa",
                    n_safety=args.kto_batch * args.kto_steps,
                    n_general=0,
                    max_steps=args.kto_steps,
                    batch_size=args.kto_batch,
                    lora_layers=placement,
                    bottleneck_layer=args.bottleneck,
                    device=args.device,
                )
                s = run_align(cfg).summary
                log = [r for r in read_jsonl(f"{tmp}/align/lasa/train_log.jsonl") if "loss" in r]
        finally:
            align._shared_prefix = shared_prefix
        steps = [b["time"] - a["time"] for a, b in itertools.pairwise(log)]
        out["seconds_per_step"][name] = statistics.median(steps)
        out[f"trainable_parameters_{placement}"] = s["training"]["trainable_parameters"]
        losses[name] = [r["loss"] for r in log]
    out["speedup_above_bottleneck"] = (
        out["seconds_per_step"]["all"] / out["seconds_per_step"]["above_bottleneck"]
    )
    out["speedup_shared_frozen_prefix"] = (
        out["seconds_per_step"]["above_bottleneck_recompute"] / out["seconds_per_step"]["above_bottleneck"]
    )
    out["same_losses_with_shared_prefix"] = losses["above_bottleneck"] == losses["above_bottleneck_recompute"]
    out["bottleneck_layer"] = args.bottleneck
    out["repeats"] = 1  # one training run per placement; the median is over its steps
    return out


def bench_e2e(args: argparse.Namespace) -> dict:
    """End-to-end wall time of `lasa run` (read from a finished run's pipeline.json)."""
    from lasa.runs import read_json

    path = Path(args.e2e_run_dir) / "pipeline.json"
    if not path.is_file():
        raise SystemExit(f"{path} not found: run `make run` (or lasa run --run-dir {args.e2e_run_dir}) first")
    state = read_json(path)
    stages = {
        k: v.get("seconds") if isinstance(v, dict) else None
        for k, v in (state.items() if isinstance(state, dict) else [])
        if not k.startswith("_")
    }
    bad = [k for k, s in stages.items() if isinstance(s, bool) or not isinstance(s, int | float)]
    if bad or not stages:  # a foreign or hand-edited file: a KeyError / AttributeError traceback before
        raise SystemExit(
            f"{path} records no stage times ({'no stages' if not stages else 'none for ' + bad[0]}); "
            f"rerun `lasa run --run-dir {args.e2e_run_dir}`"
        )
    adopted = [k for k, v in state.items() if isinstance(v, dict) and v.get("adopted")]
    if adopted:  # recorded as 0 s: the total would leave out the stages run by their own commands
        raise SystemExit(
            f"{path}: {', '.join(adopted)} ran by their own commands and were adopted by `lasa run`, "
            f"which did not time them; time a fresh `make run` (or `lasa run` in an empty run dir)"
        )
    total = sum(stages.values())
    out = {
        "what": f"`lasa run` stage times from {path} (each stage's last run)",
        "model": "see run config",
        "target": "quick preset <= 900 s on 2 cores",
        "seconds_per_stage": stages,
        "total_seconds": round(total, 1),
        "baseline_seconds": args.e2e_baseline,
        "ratio_vs_baseline": round(total / args.e2e_baseline, 3),
        "meets_target": total <= 900,
        "repeats": 1,
    }
    if args.e2e_time_log:
        wall = make_run_wall_seconds(Path(args.e2e_time_log))
        out["what"] += f"; `make run` end to end (set-up included) from {args.e2e_time_log}"
        out["target"] = "`make run` end to end <= 900 s on 2 cores"
        out |= {
            "make_run_wall_seconds": round(wall, 1),
            "setup_and_overhead_seconds": round(wall - total, 1),
            "meets_target": wall <= 900,
        }
    return out


def make_run_wall_seconds(log: Path) -> float:
    """The wall time GNU time (``/usr/bin/time -v make run``) wrote to ``log``."""
    import re

    if not log.is_file():
        raise SystemExit(f"{log} not found: write it with `/usr/bin/time -v make run 2> {log}`")
    m = re.search(
        r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", log.read_text()
    )
    if m is None:
        raise SystemExit(f"{log} has no 'Elapsed (wall clock) time' line of `/usr/bin/time -v`")
    h, mnt, sec = (float(x) if x else 0.0 for x in m.groups())
    return 3600 * h + 60 * mnt + sec


def bench_judge(args: argparse.Namespace) -> dict:
    """The default judge on ``--judge-n`` labelled corpus responses, from a cold start (no verdict cache)."""
    from lasa.judges import DEFAULT_JUDGE, JudgeItem, get_judge
    from lasa.judges.corpus import corpus_rows

    rows = corpus_rows()
    rows = (rows * (args.judge_n // max(1, len(rows)) + 1))[: args.judge_n]
    items = [JudgeItem(r["prompt"], r["response"], r["language"]) for r in rows]
    t0 = time.perf_counter()
    judge = get_judge(DEFAULT_JUDGE)
    load_s = time.perf_counter() - t0
    secs = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        judge.judge(items)
        secs.append(time.perf_counter() - t0)
    per_1000 = statistics.median(secs) * 1000 / len(items)
    return {
        "what": f"`{DEFAULT_JUDGE}` judge on {len(items)} responses of lasa's labelled corpus (all 10 languages)",
        "model": DEFAULT_JUDGE,
        "target": "<= 300 s per 1,000 responses on 2 cores",
        "n_responses": len(items),
        "load_seconds": round(load_s, 1),
        "seconds_per_1000": round(per_1000, 1),
        "responses_per_s": round(len(items) / statistics.median(secs), 2),
        "meets_target": per_1000 <= 300,
        "seconds": {"judge": secs},
    }


def bench_generation_adapter(args: argparse.Namespace) -> dict:
    """A LoRA adapter's generation, unmerged (a low-rank detour in every adapted module at every
    step) vs merged into the weights for the duration, as lasa.generate does for fp32 weights."""
    import lasa.generate
    from lasa.generate import GenerationSettings, generate_all
    from lasa.models import load_adapter, load_model, merged_adapter

    if not Path(args.adapter, "adapter_config.json").is_file():
        raise SystemExit(
            f"generation_adapter: no adapter at {args.adapter}; run `make run` or pass --adapter"
        )
    lm = load_adapter(load_model(args.model, device=args.device), args.adapter)
    prompts = _bench_prompts(args.gen_prompts)
    n_new = args.new_tokens
    fixed = GenerationSettings(max_new_tokens=n_new, min_new_tokens=n_new, batch_size=len(prompts))
    t_merged = timed(lambda: generate_all(lm, prompts, fixed, progress=False), args.repeats)
    real = lasa.generate.merged_adapter
    lasa.generate.merged_adapter = lambda lm_, enabled=True: merged_adapter(lm_, False)
    try:
        t_unmerged = timed(lambda: generate_all(lm, prompts, fixed, progress=False), args.repeats)
    finally:
        lasa.generate.merged_adapter = real
    return {
        "what": f"{len(prompts)} MultiJail prompts, {n_new} new tokens each (forced), greedy, adapter "
        f"{args.adapter}",
        "model": args.model,
        "seconds": {"unmerged": t_unmerged, "merged": t_merged},
        "speedup_merged": statistics.median(t_unmerged) / statistics.median(t_merged),
        "target": "adapter variants generate at the base model's speed",
    }


def bench_generation_long(args: argparse.Namespace) -> dict:
    """``generation`` at ``--long-tokens`` new tokens (the full preset's 256 by default): a raw-prompt
    gate's extra pass is a fixed cost per prompt, so its ratio depends on the response length."""
    out = bench_generation(
        argparse.Namespace(**{**vars(args), "new_tokens": args.long_tokens, "skip_batch1": True})
    )
    out["what"] += " (the full preset's response length)"
    return out


BENCHMARKS: dict[str, Callable[[argparse.Namespace], dict]] = {
    "judge": bench_judge,
    "extraction": bench_extraction,
    "generation": bench_generation,
    "generation_long": bench_generation_long,
    "generation_adapter": bench_generation_adapter,
    "kto_step": bench_kto_step,
    "e2e": bench_e2e,
}


# -- report ----------------------------------------------------------------------------------


def _fmt(x: object) -> str:
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def render(results: dict[str, dict]) -> str:
    lines = [
        "# Benchmark results",
        "",
        "Generated by `python bench/run.py` (or `make bench`); medians over repeats, ratios from the same run.",
        "",
    ]
    for name, res in sorted(results.items()):
        lines += [
            f"## {name}",
            "",
            res.get("what", ""),
            "",
            f"- measured {res['measured_at']} on {res['machine']['cores']} cores "
            f"({res['machine']['cpu']}{', ' + res['machine']['cuda'] if res['machine']['cuda'] else ''}), "
            f"torch {res['machine']['versions'].get('torch')}, transformers "
            f"{res['machine']['versions'].get('transformers')}",
            f"- model: `{res.get('model')}`, repeats: {res['repeats']}",
        ]
        if "target" in res:
            lines.append(f"- target: {res['target']}")
        lines.append("")
        lines += ["| measure | value |", "|---|---|"]
        for key, val in res.items():
            if key in {"what", "machine", "measured_at", "model", "repeats", "target", "seconds"} or (
                name == "e2e" and key == "repeats"
            ):
                continue
            if isinstance(val, dict):
                for k2, v2 in val.items():
                    lines.append(f"| {key}.{k2} | {_fmt(v2)} |")
            else:
                lines.append(f"| {key} | {_fmt(val)} |")
        if "seconds" in res:
            for k2, v2 in res["seconds"].items():
                lines.append(f"| seconds.{k2} (median of {len(v2)}) | {statistics.median(v2):.3g} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "names", nargs="*", default=list(BENCHMARKS), help=f"benchmarks: {', '.join(BENCHMARKS)}"
    )
    parser.add_argument("--model", default="default")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--n-prompts", type=int, default=320, help="extraction: prompts")
    parser.add_argument("--gen-prompts", type=int, default=16, help="generation: prompts (one batch)")
    parser.add_argument("--new-tokens", type=int, default=64, help="generation: forced new tokens per prompt")
    parser.add_argument(
        "--long-tokens", type=int, default=256, help="generation_long: forced new tokens per prompt"
    )
    parser.add_argument(
        "--adapter",
        default="runs/quick/align/lasa/adapter",
        help="generation_adapter: a PEFT adapter directory (default: the one `make run` trains)",
    )
    parser.add_argument(
        "--skip-batch1",
        action="store_true",
        help="generation: skip the batch-1 loop (slow for a large model)",
    )
    parser.add_argument(
        "--ssi", nargs="*", default=[], help="generation: SSI run dirs / ssi dirs to gate with"
    )
    parser.add_argument("--kto-batch", type=int, default=4, help="kto_step: per-device batch")
    parser.add_argument("--kto-steps", type=int, default=6, help="kto_step: optimizer steps per placement")
    parser.add_argument("--bottleneck", type=int, default=15, help="kto_step: bottleneck layer (1-based)")
    parser.add_argument(
        "--e2e-run-dir", default="runs/quick", help="e2e: run directory of a finished `lasa run`"
    )
    parser.add_argument(
        "--e2e-time-log",
        default=None,
        help="e2e: the log of `/usr/bin/time -v make run` (the end-to-end wall time, set-up included)",
    )
    parser.add_argument(
        "--e2e-baseline",
        type=float,
        default=1253.0,
        help="e2e: seconds of the run to compare with (default: the quick preset before this round's judge and "
        "gate work, 1,253 s, README of commit 3c3c857)",
    )
    parser.add_argument("--judge-n", type=int, default=1000, help="judge: responses to judge")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run benchmarks in this process (default: one subprocess each, so peak memory is per benchmark)",
    )
    parser.add_argument(
        "--tag",
        default="",
        help="suffix for the result files (bench/results/<name>-<tag>.json), e.g. h200 for a GPU run, so "
        "results from another machine sit beside this one's instead of replacing them",
    )
    parser.add_argument(
        "--render", action="store_true", help="only regenerate bench/RESULTS.md from bench/results/*.json"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    RESULTS.mkdir(exist_ok=True)
    if args.render:
        args.names = []
    for name in args.names:
        if name not in BENCHMARKS:
            parser.error(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    for flag in ("repeats", "batch_size", "n_prompts", "gen_prompts", "new_tokens", "long_tokens", "kto_batch",
                 "kto_steps", "judge_n"):  # fmt: skip
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    for name in args.names:
        if not args.in_process:  # a child process per benchmark: its peak RSS is its own
            rest = [a for a in (argv if argv is not None else sys.argv[1:]) if a not in args.names]
            child = subprocess.run([sys.executable, __file__, name, "--in-process", "--child", *rest])
            if child.returncode:  # the child has said why; no second traceback from here
                return child.returncode
            continue
        logger.info("running %s", name)
        try:
            res = BENCHMARKS[name](args)
        except LasaError as err:  # a missing model, a damaged artefact: one line, as lasa's CLI says it
            raise SystemExit(f"{name}: error: {err}") from None
        res.update(
            measured_at=time.strftime("%Y-%m-%d %H:%M"),
            machine=machine(),
            repeats=res.pop("repeats", args.repeats),  # e2e reads one finished run
            peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        )
        (RESULTS / f"{name}{'-' + args.tag if args.tag else ''}.json").write_text(
            json.dumps(res, indent=2) + "\n"
        )
        logger.info(
            "%s: %s", name, json.dumps({k: v for k, v in res.items() if "ratio" in k or "speedup" in k})
        )
    if args.child:
        return 0
    results = {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}
    (HERE / "RESULTS.md").write_text(render(results))
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
