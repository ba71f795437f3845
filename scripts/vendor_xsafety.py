"""Rebuild src/lasa/data/xsafety/xsafety_labelled.csv from the upstream long CSV and our labels.

Usage: python scripts/vendor_xsafety.py /path/to/shared/data/xsafety/xsafety_long.csv

XSafety (Wang et al. 2023) labels prompts only by category, and its categories mix harmful
requests with benign questions. lasa's maintainers labelled six categories item by item
(src/lasa/data/xsafety/labels/*.csv: harmful / benign / unclear, and the prompt's form) by reading
the Chinese original and its English translation; this script joins those labels with the
en/zh/ar/bn texts (rows with the same category and idx are translations of each other).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "lasa" / "data" / "xsafety"
LANGS = ("en", "zh", "ar", "bn")


def main(long_csv: str) -> None:
    texts: dict[tuple[str, int, str], str] = {}
    with open(long_csv, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if row["iso"] in LANGS:
                texts[(row["category"], int(row["idx"]), row["iso"])] = row["prompt"].strip()
    rows = []
    for path in sorted((OUT / "labels").glob("*.csv")):
        with open(path, encoding="utf-8", newline="") as f:
            for lab in csv.DictReader(f):
                key = (lab["category"], int(lab["idx"]))
                rows.append(
                    {
                        "category": key[0],
                        "idx": key[1],
                        "label": lab["label"],
                        "form": lab["form"],
                        **{lang: texts.get((*key, lang), "") for lang in LANGS},
                    }
                )
    with open(OUT / "xsafety_labelled.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["category", "idx", "label", "form", *LANGS])
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {len(rows)} rows to {OUT / 'xsafety_labelled.csv'}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("long_csv", help="Upstream XSafety long CSV (xsafety_long.csv).")
    args = ap.parse_args()
    if not Path(args.long_csv).is_file():
        raise SystemExit(f"error: no file {args.long_csv}")
    main(args.long_csv)
