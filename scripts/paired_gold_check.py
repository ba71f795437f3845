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

The labelling itself, in two more steps of the same script (RUBRIC.md's protocol):

    # 1. the discordant responses of both variants, shuffled, blind to variant and verdict
    python scripts/paired_gold_check.py --run-dir runs/c100_128 --a sft --b base --export labels/sft_base
    #    -> labels/sft_base/items.jsonl (for the annotators) and key.jsonl (kept from them)
    # 2. two independent passes ({"item", "label", "note"} per line) and, for every item they
    #    disagree on, an adjudication ({"item", "label", "reason"}) -> the labels file above, with kappa
    python scripts/paired_gold_check.py --run-dir runs/c100_128 --a sft --b base \
        --assemble labels/sft_base --labels src/lasa/data/judge_labels/paired_c100_128_sft_base.jsonl
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
from collections import Counter
from pathlib import Path

from lasa.errors import LasaError
from lasa.runs import read_jsonl, write_jsonl
from lasa.stats import paired_difference


def _verdicts(run_dir: Path, variant: str, judge: str) -> dict[str, bool]:
    path = run_dir / "eval" / variant / f"judgements_{judge}.jsonl"
    if not path.is_file():
        raise LasaError(
            f"{path} not found; evaluate {variant} in {run_dir} first (scripts/compare_variants.sh)"
        )
    return {r["uid"]: r["label"] == "unsafe" for r in read_jsonl(path)}


LABELS = ("safe", "unsafe", "invalid")


def _discordant(judged: dict[str, dict[str, bool]], a: str, b: str) -> list[str]:
    return [u for u in sorted(judged[a]) if u in judged[b] and judged[a][u] != judged[b][u]]


def _completions(run_dir: Path, variant: str) -> dict[str, dict]:
    path = run_dir / "eval" / variant / "completions.jsonl"
    if not path.is_file():
        raise LasaError(f"{path} not found; evaluate {variant} in {run_dir} first")
    return {r["uid"]: r for r in read_jsonl(path)}


#: what annotators write into an export folder (``--assemble`` reads them)
PASS_FILES = ("pass_a.jsonl", "pass_b.jsonl", "adjudication.jsonl")


def export(run_dir: Path, a: str, b: str, judge: str, out: Path, seed: int) -> int:
    """Write the discordant responses of both variants for blind labelling: ``items.jsonl`` shows
    the annotators the request and the response only (shuffled with ``seed``; no variant, no
    verdict); ``key.jsonl`` maps each item back to its variant, prompt and the judge's verdict."""
    from lasa.data import load_multijail

    labelled = [n for n in PASS_FILES if (out / n).exists()]
    if labelled:  # a new shuffle would renumber the items under labels already written
        raise LasaError(
            f"{out / labelled[0]} exists: those labels belong to this folder's items; export into a new folder"
        )
    judged = {v: _verdicts(run_dir, v, judge) for v in (a, b)}
    labels = {
        v: {r["uid"]: r["label"] for r in read_jsonl(run_dir / "eval" / v / f"judgements_{judge}.jsonl")}
        for v in (a, b)
    }
    done = {v: _completions(run_dir, v) for v in (a, b)}
    mj = load_multijail(["en"])
    en = dict(zip(mj.ids, mj.texts["en"]))
    pairs = [(v, u) for u in _discordant(judged, a, b) for v in (a, b)]
    if not pairs:
        raise LasaError(
            f"the {judge} judge's verdicts for {a} and {b} agree on every prompt: nothing to label"
        )
    random.Random(seed).shuffle(pairs)
    items, key = [], []
    for i, (v, u) in enumerate(pairs):
        row = done[v][u]
        item = f"item{i:04d}"
        items.append(
            {
                "item": item,
                "language": row["lang"],
                "prompt": row["prompt"],
                "prompt_en": en.get(str(row["id"]), ""),
                "response": row["response"],
            }
        )
        key.append(
            {
                "item": item,
                "variant": v,
                "uid": u,
                "pair_judged": labels[v][u],
                "max_new_tokens": int(row.get("generation", {}).get("max_new_tokens", 0)),
            }
        )
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "items.jsonl", items)
    write_jsonl(out / "key.jsonl", key)
    print(
        f"{len(pairs) // 2} discordant prompts -> {len(items)} items in {out}/items.jsonl (key: {out}/key.jsonl)"
    )
    return 0


def _shape(r: object) -> str:
    return f"keys {sorted(r)[:6]}" if isinstance(r, dict) else f"a {type(r).__name__} row"


def _label_row(r: object) -> bool:
    return isinstance(r, dict) and str(r.get("id", "")).count(":") >= 2 and r.get("label") in LABELS


def _pass(path: Path, items: set[str], what: str) -> dict[str, dict]:
    if not path.is_file():
        raise LasaError(f"{path} not found; write the {what} there ({{'item', 'label', ...}} per line)")
    rows = {r["item"]: r for r in read_jsonl(path)}
    bad = [i for i, r in rows.items() if r.get("label") not in LABELS]
    if bad:
        raise LasaError(f"{path}: item {bad[0]} has label {rows[bad[0]].get('label')!r}; use one of {LABELS}")
    missing = sorted(items - set(rows))
    if missing:
        raise LasaError(f"{path}: {len(missing)} items have no label (e.g. {missing[0]}); finish the {what}")
    return rows


def assemble(run_dir: Path, folder: Path, out: Path, run_name: str, model: str) -> int:
    """Join ``pass_a.jsonl``, ``pass_b.jsonl`` and ``adjudication.jsonl`` of ``folder`` with its key
    into the shipped labels format (one row per response, both passes, the adjudicated label)."""
    from lasa.judges import cohen_kappa

    for name in ("key.jsonl", "items.jsonl"):
        if not (folder / name).is_file():
            raise LasaError(
                f"{folder / name} not found; --assemble reads the folder --export wrote (export into it first)"
            )
    key = {r["item"]: r for r in read_jsonl(folder / "key.jsonl")}
    items = {r["item"]: r for r in read_jsonl(folder / "items.jsonl")}
    pa = _pass(folder / PASS_FILES[0], set(key), "first pass")
    pb = _pass(folder / PASS_FILES[1], set(key), "second pass")
    split = sorted(i for i in key if pa[i]["label"] != pb[i]["label"])
    adj = _pass(folder / PASS_FILES[2], set(split), "adjudication") if split else {}
    kappa = cohen_kappa([pa[i]["label"] for i in sorted(key)], [pb[i]["label"] for i in sorted(key)])
    rows = []
    for i in sorted(key, key=lambda i: (key[i]["variant"], key[i]["uid"])):
        k, it = key[i], items[i]
        rows.append(
            {
                "id": f"{run_name}:{k['variant']}:{k['uid']}",
                "run": f"{run_name}-{k['variant']}-{k['max_new_tokens']}",
                "model": model,
                "variant": k["variant"],
                "max_new_tokens": k["max_new_tokens"],
                "temperature": 0.0,
                "language": it["language"],
                "prompt": it["prompt"],
                "prompt_en": it["prompt_en"],
                "response": it["response"],
                "label": adj[i]["label"] if i in split else pa[i]["label"],
                "label_a": pa[i]["label"],
                "label_b": pb[i]["label"],
                "note_a": pa[i].get("note", ""),
                "note_b": pb[i].get("note", ""),
                "adjudication": adj[i].get("reason", "") if i in split else "",
                "pair_judged": k["pair_judged"],
            }
        )
    write_jsonl(out, rows)
    print(
        f"{len(rows)} labels -> {out}; passes agree on {len(rows) - len(split)} (kappa {kappa:.3f}), {len(split)} adjudicated"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/c100")
    parser.add_argument("--labels", default="src/lasa/data/judge_labels/paired_c100_lasa_kto.jsonl")
    parser.add_argument("--a", default="lasa")
    parser.add_argument("--b", default="kto")
    parser.add_argument("--judge", default="pair")
    parser.add_argument("--seen", nargs="*", default=["en", "zh"], help="the training languages")
    parser.add_argument("--export", type=Path, help="write the discordant items to label into this folder")
    parser.add_argument(
        "--assemble", type=Path, help="join this folder's two passes + adjudication into --labels"
    )
    parser.add_argument("--seed", type=int, default=0, help="--export: the shuffle's seed")
    parser.add_argument(
        "--run-name", help="--assemble: the label ids' prefix (default: the run directory's name)"
    )
    parser.add_argument("--model", default="qwen2.5-coder-0.5b", help="--assemble: the model that answered")
    args = parser.parse_args(argv)
    run_dir, labels = Path(args.run_dir), Path(args.labels)
    if args.export:
        return export(run_dir, args.a, args.b, args.judge, args.export, args.seed)
    if args.assemble:
        return assemble(run_dir, args.assemble, labels, args.run_name or run_dir.name, args.model)
    if not labels.is_file():
        raise LasaError(
            f"--labels {labels} not found; the shipped ones are src/lasa/data/judge_labels/paired_c100_*.jsonl"
        )
    judged = {v: _verdicts(run_dir, v, args.judge) for v in (args.a, args.b)}
    rows = read_jsonl(labels)
    bad = [r for r in rows if not _label_row(r)][:1]
    if bad or not rows:  # an items.jsonl, a completions file, a pass file: KeyError 'id'
        raise LasaError(
            f"--labels {labels} is not a labels file (rows with 'id' RUN:VARIANT:UID and 'label', as "
            f"--assemble writes{'; it is empty' if not rows else f'; got {_shape(bad[0])}'})"
        )
    gold = {tuple(r["id"].split(":", 2)[1:]): r["label"] == "unsafe" for r in rows}  # (variant, uid)
    uids = sorted(set(judged[args.a]) & set(judged[args.b]))
    only = len(set(judged[args.a]) ^ set(judged[args.b]))
    if only:  # other --n / --langs: paired on the prompts both answered (a KeyError before)
        logging.getLogger("paired_gold_check").warning(
            "%d prompts were answered by only one of %s and %s; paired on the %d both answered",
            only,
            args.a,
            args.b,
            len(uids),
        )
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
        if not keep:  # e.g. a run evaluated in the seen languages only: no unseen prompts (was 1/0)
            print(f"{name:22s} no prompts in this run")
            continue
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
