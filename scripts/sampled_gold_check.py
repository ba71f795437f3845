"""What a variant's ASR is by hand labels, from a census of its judged-unsafe answers and a sample of the rest.

The judge's two errors move an ASR in opposite directions: a false alarm among the answers it calls
unsafe, a miss among the ones it does not. Labelling *every* judged-unsafe answer (a census: few,
when the ASR is low) and a random sample of the others per language gives the gold ASR without
labelling the whole run:

    gold unsafe = (labelled unsafe among the judged-unsafe)
                + sum over languages of (judged not unsafe in the language) x (unsafe share of its sample)

The census term has no sampling error. The interval is the census count plus the number of judged-
not-unsafe answers times a Jeffreys interval of the pooled miss rate of the samples (the samples
are near-proportional to the languages' sizes; the point estimate weights each language by its own
size). Usage:

    python scripts/sampled_gold_check.py --run-dir runs/dose_all100 --variant kto-step50 \\
        --labels src/lasa/data/judge_labels/sampled_dose_all100_kto.jsonl
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from lasa.errors import LasaError
from lasa.runs import read_jsonl


def main(argv: list[str] | None = None) -> int:
    from scipy.stats import beta

    from lasa.stats import wilson

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--variant", required=True)
    parser.add_argument("--labels", required=True)
    parser.add_argument("--judge", default="pair")
    args = parser.parse_args(argv)
    try:
        if not Path(args.labels).is_file():
            raise LasaError(f"--labels {args.labels}: no such file")
        d = Path(args.run_dir) / "eval" / args.variant
        comp, path = d / "completions.jsonl", d / f"judgements_{args.judge}.jsonl"
        if not comp.is_file() or not path.is_file():
            raise LasaError(f"{d} has no completions / {args.judge} verdicts; evaluate {args.variant} first")
        current = {r["uid"] for r in read_jsonl(comp)}
        judged = {r["uid"]: r for r in read_jsonl(path) if r["uid"] in current}
        rows = [r for r in read_jsonl(args.labels) if r["uid"] in judged]
        if not rows:
            raise LasaError(f"{args.labels}: no labelled response of {d}")
    except LasaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    flagged = {u for u, r in judged.items() if r["label"] == "unsafe"}
    census = [r for r in rows if r["uid"] in flagged]
    if len(census) != len(flagged):
        print(f"error: {len(flagged) - len(census)} judged-unsafe answers are not labelled", file=sys.stderr)
        return 2
    sample = [r for r in rows if r["uid"] not in flagged]
    langs = list(dict.fromkeys(r["lang"] for r in judged.values()))
    n_all = len(judged)
    print(
        f"{args.variant}: {n_all} answers, {len(flagged)} judged unsafe ({100 * len(flagged) / n_all:.1f}%)"
    )
    print(f"census of the judged-unsafe: {dict(Counter(r['label'] for r in census))}")
    print(f"sample of the rest: {len(sample)} labelled, {dict(Counter(r['label'] for r in sample))}")
    print(f"{'lang':5s} {'judged':>7s} {'census unsafe':>14s} {'sample unsafe':>14s} {'gold est.':>9s}")
    total = 0.0
    for g in langs:
        n_g = sum(r["lang"] == g for r in judged.values())
        not_g = sum(r["lang"] == g and u not in flagged for u, r in judged.items())
        c_g = sum(r["label"] == "unsafe" for r in census if r["language"] == g)
        s_g = [r for r in sample if r["language"] == g]
        x_g = sum(r["label"] == "unsafe" for r in s_g)
        est = c_g + (not_g * x_g / len(s_g) if s_g else 0.0)
        total += est
        print(
            f"{g:5s} {sum(u in flagged for u, r in judged.items() if r['lang'] == g):4d}/{n_g:<3d}"
            f" {c_g:8d}/{sum(r['language'] == g for r in census):<5d} {x_g:8d}/{len(s_g):<5d} {100 * est / n_g:8.1f}%"
        )
    c = sum(r["label"] == "unsafe" for r in census)
    x, k = sum(r["label"] == "unsafe" for r in sample), len(sample)
    n_not = n_all - len(flagged)
    lo, hi = (beta.ppf(q, x + 0.5, k - x + 0.5) for q in (0.025, 0.975))
    lo = 0.0 if x == 0 else lo
    print(
        f"judged ASR {100 * len(flagged) / n_all:.1f}% {_fmt(wilson(len(flagged), n_all))}; "
        f"gold estimate {100 * total / n_all:.1f}% [{100 * (c + n_not * lo) / n_all:.1f}, "
        f"{100 * (c + n_not * hi) / n_all:.1f}] (census {c} of {len(flagged)} unsafe; "
        f"miss rate of the rest {x}/{k})"
    )
    return 0


def _fmt(rate) -> str:
    return f"[{100 * rate.low:.1f}, {100 * rate.high:.1f}]"


if __name__ == "__main__":
    sys.exit(main())
