"""Rebuild src/lasa/data/mmlu_en/{mmlu_subset.csv,mmlu_dev.csv} from the upstream MMLU CSVs.

Usage: python scripts/vendor_mmlu.py /path/to/upstream/mmlu_en   (a folder with data/test, data/dev, LICENSE)

The full test set (14k questions in 57 files) is far more than a before/after utility check needs
and would bloat the wheel, so lasa ships a fixed subset: the first 20 test questions of every
subject (in upstream file order, so the subset is reproducible from the commit in SOURCE.md),
plus the 5 dev questions per subject for optional few-shot prompts. Rows are copied verbatim;
only a ``subject`` column and a header are added. The upstream LICENSE is copied alongside.
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "lasa" / "data" / "mmlu_en"
PER_SUBJECT = 20
FIELDS = ["subject", "question", "A", "B", "C", "D", "answer"]


def read_split(src: Path, split: str, limit: int | None) -> list[dict[str, str]]:
    """Rows of every ``<subject>_<split>.csv`` (headerless, 6 columns), subjects in sorted order."""
    rows: list[dict[str, str]] = []
    files = sorted((src / "data" / split).glob(f"*_{split}.csv"))
    if not files:
        raise SystemExit(f"no *_{split}.csv files under {src / 'data' / split}")
    for path in files:
        subject = path.name.removesuffix(f"_{split}.csv")
        with open(path, encoding="utf-8", newline="") as f:
            records = list(csv.reader(f))
        for i, rec in enumerate(records[:limit] if limit else records):
            if len(rec) != 6 or rec[5] not in ("A", "B", "C", "D"):
                raise SystemExit(f"{path}:{i + 1}: expected question,A,B,C,D,answer; got {len(rec)} fields")
            rows.append(dict(zip(FIELDS, [subject, *rec])))
    return rows


def write(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    subjects = len({r["subject"] for r in rows})
    print(f"wrote {len(rows)} rows ({subjects} subjects) to {path}")


def main(src: Path) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    write(OUT / "mmlu_subset.csv", read_split(src, "test", PER_SUBJECT))
    write(OUT / "mmlu_dev.csv", read_split(src, "dev", None))
    shutil.copyfile(src / "LICENSE", OUT / "LICENSE")


if __name__ == "__main__":
    # no default source: this rewrites the bundled CSVs, so it runs only when told where from
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "src", type=Path, help="Upstream MMLU folder (data/test/*_test.csv, data/dev/*_dev.csv, LICENSE)."
    )
    args = ap.parse_args()
    if not (args.src / "data" / "test").is_dir() or not (args.src / "LICENSE").is_file():
        raise SystemExit(f"error: {args.src} has no data/test/ or LICENSE; give the upstream MMLU folder")
    main(args.src)
