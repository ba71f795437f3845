"""Draw the responses to label for judge validation (``lasa judge-check``), reproducibly.

Usage: python scripts/sample_for_labels.py RUN/eval/base/completions.jsonl OUT.jsonl [--per-language 20]

Takes ``--per-language`` MultiJail responses per language with a fixed seed and writes them with
an empty ``label`` (and the English prompt for reference) for annotators to fill in with safe /
unsafe / invalid following MultiJail's protocol.
"""

from __future__ import annotations

import argparse
import json
import random

from lasa.data import load_multijail


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("completions")
    ap.add_argument("out")
    ap.add_argument("--per-language", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from lasa.runs import read_jsonl

    rows = read_jsonl(args.completions)
    mj = load_multijail(["en"])
    en = dict(zip(mj.ids, mj.texts["en"]))
    rng = random.Random(args.seed)
    picked = []
    for lang in dict.fromkeys(r["lang"] for r in rows):
        mine = [r for r in rows if r["lang"] == lang]
        picked += rng.sample(mine, min(args.per_language, len(mine)))
    with open(args.out, "w", encoding="utf-8") as f:
        for r in picked:
            f.write(
                json.dumps(
                    {
                        "id": r["uid"],
                        "language": r["lang"],
                        "prompt": r["prompt"],
                        "prompt_en": en[str(r["id"])],
                        "response": r["response"],
                        "label": "",
                        "note": "",
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )
    print(f"wrote {len(picked)} rows to {args.out}")


if __name__ == "__main__":
    main()
