"""Dose-response of alignment: ASR of each method's adapter *without the gate* after N optimizer steps.

``python scripts/dose_response.py RUN --methods lasa kto sft --steps 50 100 200 [--n 8] [--tokens 48]``

Trains each method once on the same rows (``--rows on_policy`` by default: the model's own answers,
cached in ``RUN/align/<method>/on_policy_rows.jsonl`` and shared by every method because the recipe
and the generation are deterministic), saving the adapter at every dose (``--save-adapter-at``),
then evaluates every checkpoint on MultiJail without the gate (does training alone change
behaviour, and does it transfer to the unseen languages?), and ``lasa`` at the last dose with the
gate. Step 0 is the base model (``RUN/eval/base``). Writes ``RUN/dose_response.json`` and prints a
table of average ASR (with its 95% interval), seen-language (en, zh) and unseen-language ASR.
Needs ``RUN/locate/bottleneck.json`` (LoRA above the bottleneck; ``--lora-layers all`` puts it on every
block) and, for the gated row, ``RUN/ssi``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def lasa(*args: str) -> None:
    cmd = [sys.executable, "-m", "lasa.cli", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    from lasa.runs import RunDir, read_json, write_json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--methods", nargs="+", default=["lasa", "kto", "sft"])
    ap.add_argument("--steps", nargs="+", type=int, default=[50, 100, 200])
    ap.add_argument("--rows", default="on_policy", choices=["on_policy", "template"])
    ap.add_argument("--n-safety", default="20")
    ap.add_argument("--n-general", default="6")
    ap.add_argument(
        "--n-hard-negative", default="0", help="safe-but-scary rows (lasa align --n-hard-negative)"
    )
    ap.add_argument("--batch-size", default="4")
    ap.add_argument("--learning-rate", default="2e-4")
    ap.add_argument(
        "--lora-layers",
        default="above_bottleneck",
        choices=["above_bottleneck", "all"],
        help="LoRA placement (all: every block; the gate then scores with the adapter disabled)",
    )
    ap.add_argument("--n", default="8", help="MultiJail prompts per language")
    ap.add_argument(
        "--eval-batch-size",
        default="52",
        help="prompts per generation batch (length-sorted; on CPU a larger batch decodes more tokens per second)",
    )
    ap.add_argument("--tokens", default="48", help="new tokens per response")
    ap.add_argument("--model", default="default")
    ap.add_argument(
        "--xstest-n",
        default="40",
        help="XSTest prompts per checkpoint (0: none); their safe half measures over-refusal",
    )
    ap.add_argument(
        "--rejudge",
        action="store_true",
        help="Re-run evaluate on every checkpoint even if it has results (completions are reused, so "
        "only judging is redone), e.g. after the judge changed",
    )
    args = ap.parse_args()
    rd = RunDir(args.run_dir)
    done = (lambda variant: False) if args.rejudge else (lambda variant: rd.results(variant).is_file())
    top = max(args.steps)
    common = ["--model", args.model, "--run-dir", args.run_dir]
    ev = [*common, "--n", args.n, "--max-new-tokens", args.tokens, "--batch-size", args.eval_batch_size]
    ev += ["--utility", "none"]
    ev += ["--xstest-n", args.xstest_n] if int(args.xstest_n) > 0 else ["--no-xstest"]
    if not done("base"):
        lasa("evaluate", *ev, "--variant", "base")
    table = [{"method": "base", "steps": 0, "gate": False, "variant": "base"}]
    for method in args.methods:
        if not rd.align_summary(method).is_file():
            lasa(
                "align",
                *common,
                "--method",
                method,
                "--rows",
                args.rows,
                "--n-safety",
                args.n_safety,
                "--n-general",
                args.n_general,
                "--n-hard-negative",
                args.n_hard_negative,
                "--batch-size",
                args.batch_size,
                "--learning-rate",
                args.learning_rate,
                "--lora-layers",
                args.lora_layers,
                "--max-steps",
                str(top),
                "--save-adapter-at",
                *[str(s) for s in args.steps],
            )
        for steps in args.steps:
            adapter = rd.align(method) / "checkpoints" / f"{method}-step{steps}"
            variant = adapter.name
            if not done(variant):
                lasa("evaluate", *ev, "--adapter", str(adapter))
            table.append({"method": method, "steps": steps, "gate": False, "variant": variant})
        if method == "lasa" and (rd.path / "ssi" / "ssi.json").is_file():
            variant = f"lasa-step{top}+gate"
            if not done(variant):
                adapter = rd.align(method) / "checkpoints" / f"lasa-step{top}"
                lasa("evaluate", *ev, "--adapter", str(adapter), "--gate")
            table.append({"method": "lasa", "steps": top, "gate": True, "variant": variant})
    seen = {"en", "zh"}
    for row in table:
        r = read_json(rd.results(row["variant"]))
        a = r["asr"][r["default_judge"]]
        per = a["per_language"]
        row |= {
            "asr": a["average"],
            "interval": [a["intervals"]["average"]["low"], a["intervals"]["average"]["high"]],
            "asr_seen": sum(per[g] for g in per if g in seen) / max(1, len(seen & set(per))),
            "asr_unseen": sum(per[g] for g in per if g not in seen) / max(1, len(set(per) - seen)),
            "invalid": a["invalid_rate"]["average"],
            "per_language": per,
            "xstest_safe_refusal": (r.get("over_refusal") or {}).get("refusal_rate_safe"),
            "xstest_n_safe": (r.get("over_refusal") or {}).get("n_safe"),
            "xstest_unsafe_compliance": (r.get("over_refusal") or {}).get("compliance_rate_unsafe"),
        }
        print(
            f"{row['method']:5s} {row['steps']:4d} {'+gate' if row['gate'] else '     '}  ASR {100 * row['asr']:5.1f}% "
            f"[{100 * row['interval'][0]:.1f}, {100 * row['interval'][1]:.1f}]  seen {100 * row['asr_seen']:5.1f}%  "
            f"unseen {100 * row['asr_unseen']:5.1f}%  invalid {100 * row['invalid']:5.1f}%"
            + (
                f"  XSTest safe refused {100 * row['xstest_safe_refusal']:5.1f}% of {row['xstest_n_safe']}, "
                f"unsafe not refused {100 * row['xstest_unsafe_compliance']:5.1f}%"
                if row["xstest_safe_refusal"] is not None
                else ""
            )
        )
    write_json(Path(args.run_dir) / "dose_response.json", {"settings": vars(args), "rows": table})


if __name__ == "__main__":
    main()
