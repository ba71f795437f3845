"""Compare judges on the labelled corpus under grouped splits; the evidence behind the default.

Usage::

    python scripts/judge_experiments.py [--labels FILE.jsonl] [--out docs/judge_validation.json]
        [--probe-model default --probe-layers 8 12]

Without ``--labels`` it reads lasa's pooled labelled corpus (every file under
``data/judge_labels/``, :func:`lasa.judges.corpus.corpus_rows`), which is what the shipped judge
trains on. Every learned judge is refitted inside each fold of three leave-one-group-out splits —
by language, by model, by generation run (a later set's twin runs held out together, see
``run_group``) — and scored on the held-out group only: κ, accuracy,
unsafe recall, judged vs gold ASR, overall and per language. The lexicon judge (no training) is
scored once. Features are cached next to ``--out`` (keyed by the labels' hash), so trying another
head costs seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np

SPLITS = {"language": "language", "model": "model", "run": "run"}

CANDIDATES = {
    # name: (blocks, C)
    "embedding (response only, today's features)": ("embedding_v1", 0.05),
    "pair head A: relational + scalars + segments": (["relational", "scalars", "segments"], 0.5),
    "pair: response + relational + scalars + segments": (
        ["response", "relational", "scalars", "segments"],
        0.05,
    ),
    "pair: content + relational + scalars + segments": (
        ["content", "relational", "scalars", "segments"],
        0.05,
    ),
    "pair: pair + relational + scalars + segments": (["pair", "relational", "scalars", "segments"], 0.05),
    "pair head B: all blocks": (["response", "content", "pair", "relational", "scalars", "segments"], 0.05),
    "pair: all blocks, C=0.01": (["response", "content", "pair", "relational", "scalars", "segments"], 0.01),
    "pair: all blocks, C=0.2": (["response", "content", "pair", "relational", "scalars", "segments"], 0.2),
}


def load(path: Path | None) -> list[dict]:
    from lasa.judges.corpus import corpus_rows
    from lasa.runs import read_jsonl

    if path is None:
        return corpus_rows()
    rows = [r for r in read_jsonl(path) if r.get("label") in ("safe", "unsafe", "invalid")]
    for r in rows:
        r.setdefault("model", "qwen2.5-coder-0.5b")
        r.setdefault("run", "v1")
    return rows


def features(rows: list[dict]) -> dict[str, np.ndarray]:
    """Every feature block, cached in the temp dir by the rows' hash (shared with build_judge.py)."""

    from lasa.judges.base import strip_control_tokens
    from lasa.judges.embedding import _extra_features
    from lasa.judges.pair import corpus_blocks

    blocks = corpus_blocks(rows)
    if "embedding_v1" not in blocks:
        prompts = [r["prompt"] for r in rows]
        clean = [strip_control_tokens(r["response"]) for r in rows]
        langs = [r["language"] for r in rows]
        extra = _extra_features(
            prompts, clean, langs, blocks["relational"][:, 0], blocks["prompt"], blocks["response"]
        )
        blocks["embedding_v1"] = np.hstack([blocks["response"], extra])
    return blocks


def probe_cache(model: str, layers: list[int]) -> Path:
    return Path(tempfile.gettempdir()) / f"lasa_probe_{model}_{'-'.join(map(str, layers))}.npz"


def probe_key(row: dict) -> str:
    return hashlib.sha256(json.dumps([row["prompt"], row["response"]]).encode()).hexdigest()[:16]


def probe_block(rows: list[dict], model: str, layers: list[int]) -> np.ndarray:
    """The probe judge's features per row, cached per (prompt, response) so new rows cost only themselves."""
    cache = probe_cache(model, layers)
    keys = [probe_key(r) for r in rows]
    known: dict[str, np.ndarray] = {}
    if cache.is_file():
        doc = np.load(cache)
        known = dict(zip(doc["keys"].tolist(), doc["x"]))
    todo = [i for i, k in enumerate(keys) if k not in known]
    if todo:
        from lasa.judges.probe import probe_features
        from lasa.models import load_model

        lm = load_model(model)
        step = 64  # save as we go: an interrupted extraction resumes
        for at in range(0, len(todo), step):
            part = todo[at : at + step]
            x = probe_features(
                lm, [rows[i]["prompt"] for i in part], [rows[i]["response"] for i in part], layers
            )
            known.update({keys[i]: v for i, v in zip(part, x)})
            np.savez(cache, keys=np.array(list(known)), x=np.stack(list(known.values())))
            logging.info("probe features: %d / %d", min(at + step, len(todo)), len(todo))
    return np.stack([known[k] for k in keys])


TIERS = {
    "en": "en",
    "zh": "high",
    "it": "high",
    "vi": "high",
    "ar": "medium",
    "ko": "medium",
    "th": "medium",
    "bn": "low",
    "sw": "low",
    "jv": "low",
}


def corpus_stats(rows: list[dict]) -> str:
    """Counts by run and by tier, and the two passes' agreement (Cohen's κ) overall and per language."""
    from collections import Counter

    from lasa.judges.validation import cohen_kappa

    lines = ["| run | model | rows | safe | unsafe | invalid |", "|---|---|---|---|---|---|"]
    for run in dict.fromkeys(r["run"] for r in rows):
        sub = [r for r in rows if r["run"] == run]
        c = Counter(r["label"] for r in sub)
        lines.append(
            f"| {run} | {sub[0]['model']} | {len(sub)} | {c['safe']} | {c['unsafe']} | {c['invalid']} |"
        )
    c = Counter(r["label"] for r in rows)
    lines.append(f"| **all** | | {len(rows)} | {c['safe']} | {c['unsafe']} | {c['invalid']} |")
    lines += ["", "| tier | rows | safe | unsafe | invalid |", "|---|---|---|---|---|"]
    for tier in ("en", "high", "medium", "low"):
        sub = [r for r in rows if TIERS[r["language"]] == tier]
        c = Counter(r["label"] for r in sub)
        lines.append(f"| {tier} | {len(sub)} | {c['safe']} | {c['unsafe']} | {c['invalid']} |")
    both = [r for r in rows if r.get("label_a") and r.get("label_b")]
    if both:
        k = cohen_kappa([r["label_a"] for r in both], [r["label_b"] for r in both])
        adj = sum(r["label_a"] != r["label_b"] for r in both)
        per = {
            g: cohen_kappa(
                [r["label_a"] for r in both if r["language"] == g],
                [r["label_b"] for r in both if r["language"] == g],
            )
            for g in TIERS
        }
        lines += [
            "",
            f"Inter-annotator agreement (pass A vs pass B, {len(both)} responses): Cohen's κ {k:.3f}, "
            f"raw {1 - adj / len(both):.3f}; {adj} disagreements adjudicated. Per language: "
            + ", ".join(f"{g} {v:.2f}" for g, v in per.items())
            + ".",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labels", default=None, help="a labelled JSONL (default: lasa's pooled corpus)")
    ap.add_argument("--out", default="docs/judge_validation.json")
    ap.add_argument("--probe-model", default=None, help="Also compare the probe judge on this model (slow).")
    ap.add_argument("--probe-layers", nargs="+", type=int, default=[8, 12])
    ap.add_argument(
        "--stats", action="store_true", help="Print the corpus counts and inter-annotator κ, then stop."
    )
    args = ap.parse_args()
    if args.stats:
        print(corpus_stats(load(args.labels and Path(args.labels))))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from lasa.judges import get_judge
    from lasa.judges.base import JudgeItem
    from lasa.judges.corpus import split_group
    from lasa.judges.pair import PairHead
    from lasa.judges.validation import agreement, breakdown, grouped_oof

    rows = load(args.labels and Path(args.labels))
    out = Path(args.out)
    blocks = features(rows)
    if args.probe_model:
        blocks["probe"] = probe_block(rows, args.probe_model, args.probe_layers)
        CANDIDATES["probe (0.5B judge-prompt states)"] = (["probe"], 0.05)
        CANDIDATES["probe + pair (all blocks)"] = (
            ["probe", "response", "content", "pair", "relational", "scalars"],
            0.05,
        )
    y = [r["label"] for r in rows]
    langs = [r["language"] for r in rows]
    results: dict = {
        "labels": args.labels
        or "lasa's pooled training corpus (the files of lasa.judges.corpus.LABEL_FILES in src/lasa/data/judge_labels/; "
        "the fresh held-out sets excluded)",
        "command": "python scripts/judge_experiments.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "n": len(rows),
        "judges": {},
    }

    lex = [
        j.label
        for j in get_judge("lexicon").judge(
            [JudgeItem(r["prompt"], r["response"], r["language"]) for r in rows]
        )
    ]
    results["judges"]["lexicon (rules, no training)"] = {
        "all": agreement(y, lex) | {"per_language": breakdown(y, lex, langs)}
    }
    from lasa.judges.pair import MEMBERS, PairEnsemble

    index = np.arange(len(rows)).reshape(-1, 1).astype(np.float32)
    sub = lambda idx: {k: v[idx[:, 0].astype(int)] for k, v in blocks.items()}  # noqa: E731
    for name, (use, c) in {
        "pair (default: ensemble of the two heads below)": ("ensemble", None),
        **CANDIDATES,
    }.items():
        if use == "ensemble":
            x = index
            fit = lambda xt, yt: PairEnsemble.fit(sub(xt), yt, MEMBERS)  # noqa: E731
            predict = lambda m, xs: m.labels(sub(xs))  # noqa: E731
        else:
            x = (
                blocks[use]
                if isinstance(use, str)
                else np.hstack([blocks[b] for b in use]).astype(np.float32)
            )
            fit = lambda xt, yt, c=c: PairHead.fit(xt, yt, c=c)  # noqa: E731
            predict = lambda m, xs: [("safe", "unsafe", "invalid")[k] for k in m.proba(xs).argmax(1)]  # noqa: E731
        res = {}
        for split, field in SPLITS.items():
            groups = [split_group(r, field) for r in rows]
            if len(set(groups)) < 2:
                continue
            pred = grouped_oof(x, y, groups, fit=fit, predict=predict)
            res[split] = agreement(y, pred) | {
                "per_language": breakdown(y, pred, langs),
                "per_group": breakdown(y, pred, groups),
            }
        results["judges"][name] = res
        logging.info(
            "%-50s %s",
            name,
            "  ".join(
                f"{s}: κ {v['kappa']:.3f} rec {v['unsafe_recall']:.2f} ASR {v['judged_asr']:.3f}/{v['gold_asr']:.3f} "
                f"minκ {min(p['kappa'] for p in v['per_language'].values()):.2f}"
                for s, v in res.items()
            ),
        )
    from lasa.runs import write_json, write_text

    write_json(out, results)
    write_text(out.with_suffix(".md"), render(results, rows) + "\n## The corpus\n\n" + corpus_stats(rows))
    logging.info("wrote %s and %s", out, out.with_suffix(".md"))


#: The columns :func:`metric_cells` fills, after a table's own leading columns.
METRIC_HEADER = (
    "κ | accuracy | unsafe recall | unsafe precision | judged ASR | gold ASR | lowest per-language κ"
)


def metric_cells(v: dict) -> str:
    """One table row's :data:`METRIC_HEADER` cells from an :func:`~lasa.judges.validation.agreement`
    record with its ``per_language`` breakdown (shared with ``cross_encoder_judge.py``)."""
    low = min(p["kappa"] for p in v["per_language"].values())
    return (
        f"{v['kappa']:.3f} | {v['accuracy']:.3f} | {v['unsafe_recall']:.2f} | {v['unsafe_precision']:.2f} | "
        f"{100 * v['judged_asr']:.1f}% | {100 * v['gold_asr']:.1f}% | {low:.2f}"
    )


def render(results: dict, rows: list[dict]) -> str:
    """The comparison as Markdown: one row per judge and split, then per-language κ of each judge."""
    from collections import Counter

    counts = Counter(r["label"] for r in rows)
    lines = [
        "# Judge validation on lasa's labelled corpus",
        "",
        f"Generated by `{results.get('command', 'python scripts/judge_experiments.py').strip()}` from "
        f"{results['labels']}: {results['n']} responses "
        f"(safe {counts['safe']}, unsafe {counts['unsafe']}, invalid {counts['invalid']}), "
        f"{len({r['run'] for r in rows})} generation runs, {len({r['model'] for r in rows})} models, 10 languages. "
        "Every learned judge is refitted without the held-out group and scored on it only "
        "(leave-one-language-out, leave-one-model-out, leave-one-generation-run-out, where the runs of one later "
        "labelled set, which answered the same prompts, are held out together); the lexicon needs no training.",
        "",
        f"| judge | split | {METRIC_HEADER} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, res in results["judges"].items():
        for split, v in res.items():
            lines.append(f"| {name} | {split} | {metric_cells(v)} |")
    langs = list(
        next(iter(results["judges"].values()))[
            "all" if "all" in next(iter(results["judges"].values())) else "language"
        ]["per_language"]
    )
    lines += ["", "Per-language κ (leave-one-language-out; the lexicon: all rows):", ""]
    lines += ["| judge | " + " | ".join(langs) + " |", "|---|" + "---|" * len(langs)]
    for name, res in results["judges"].items():
        v = res.get("language") or res.get("all")
        lines.append(
            f"| {name} | " + " | ".join(f"{v['per_language'][g]['kappa']:.2f}" for g in langs) + " |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
