"""Does a judged difference between two variants survive hand labels of the prompts it rests on?

A paired ASR difference between two variants that answered the same prompts is made of the prompts
where the judge's unsafe verdicts differ. This script takes hand labels of both variants' responses
on exactly those prompts (``src/lasa/data/judge_labels/paired_c100_lasa_kto.jsonl``: the 88 prompts
where ``pair`` disagreed about lasa vs kto in runs/c100, both responses, two blind passes,
adjudicated), replaces the judge's verdicts there by the gold labels, and recomputes the paired
difference (overall, seen and unseen languages). Prompts where the judge agreed keep its verdicts,
so this corrects the judge's flips, not its shared mistakes. Usage:

    python scripts/paired_gold_check.py --run-dir runs/c100 \
        --labels src/lasa/data/judge_labels/paired_c100_lasa_kto.jsonl --a lasa --b kto
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from lasa.errors import LasaError
from lasa.runs import read_jsonl
from lasa.stats import paired_difference


def _verdicts(run_dir: Path, variant: str, judge: str) -> dict[str, bool]:
    path = run_dir / "eval" / variant / f"judgements_{judge}.jsonl"
    if not path.is_file():
        raise LasaError(
            f"{path} not found; evaluate {variant} in {run_dir} first (scripts/compare_variants.sh)"
        )
    return {r["uid"]: r["label"] == "unsafe" for r in read_jsonl(path)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/c100")
    parser.add_argument("--labels", default="src/lasa/data/judge_labels/paired_c100_lasa_kto.jsonl")
    parser.add_argument("--a", default="lasa")
    parser.add_argument("--b", default="kto")
    parser.add_argument("--judge", default="pair")
    parser.add_argument("--seen", nargs="*", default=["en", "zh"], help="the training languages")
    args = parser.parse_args(argv)
    run_dir, labels = Path(args.run_dir), Path(args.labels)
    if not labels.is_file():
        raise LasaError(
            f"--labels {labels} not found; the shipped ones are src/lasa/data/judge_labels/paired_c100_*.jsonl"
        )
    judged = {v: _verdicts(run_dir, v, args.judge) for v in (args.a, args.b)}
    rows = read_jsonl(labels)
    gold = {tuple(r["id"].split(":", 2)[1:]): r["label"] == "unsafe" for r in rows}  # (variant, uid)
    uids = sorted(judged[args.a])
    discordant = [u for u in uids if judged[args.a][u] != judged[args.b][u]]
    missing = [u for u in discordant for v in (args.a, args.b) if (v, u) not in gold]
    if missing:
        raise LasaError(
            f"{len(missing)} discordant responses have no hand label (e.g. {missing[0]}); label them first"
        )
    fixed = {v: {u: gold.get((v, u), judged[v][u]) for u in uids} for v in (args.a, args.b)}
    print(f"{len(discordant)} prompts where `{args.judge}` disagrees about {args.a} vs {args.b}")
    for name, keep in (
        ("all languages", uids),
        (f"seen ({', '.join(args.seen)})", [u for u in uids if u.split(":")[1] in args.seen]),
        ("unseen", [u for u in uids if u.split(":")[1] not in args.seen]),
    ):
        for label, src in (("judge", judged), ("judge + gold on discordant", fixed)):
            a, b = [src[args.a][u] for u in keep], [src[args.b][u] for u in keep]
            d = paired_difference(a, b)
            print(
                f"{name:22s} {label:28s} {args.a} {100 * sum(a) / len(a):5.1f}%  {args.b} "
                f"{100 * sum(b) / len(b):5.1f}%  {args.a} - {args.b}: {100 * d.diff:+.1f} "
                f"[{100 * d.low:+.1f}, {100 * d.high:+.1f}] points"
            )
    flips = Counter((r["id"].split(":")[1], r["pair_judged"], r["label"]) for r in rows)
    print("judged -> gold on the discordant responses (variant, judged, gold): count")
    for k in sorted(flips):
        print(f"  {k}: {flips[k]}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except LasaError as err:
        sys.exit(f"error: {err}")
