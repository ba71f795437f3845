"""Does the `pair` judge improve if its refusal-phrase features stop counting disclaimers? A held-out check.

The rubric calls a disclaimer before compliance unsafe ("This is illegal, but: 1. buy a pipe..."),
and :func:`lasa.judges.lexicon.refusal_flag` already ignores disclaimer and harm-lecture phrases
("As an AI language model", "illegal and unethical"). The `pair` head's scalar features
``lex_refusal`` / ``lex_refusal_early`` do not: a reliability pass found a one-line warning before a
bomb recipe turned `pair`'s verdict to safe in en, zh and it. This compares, on identical held-out
groups, the shipped recipe (``lasa.judges.pair.MEMBERS``) with the same recipe whose two refusal
features read the strict phrase list (``is_refusal(..., disclaimers=False)``) plus a third,
"a disclaimer or lecture phrase and no refusal": leave-one-run-group-out, leave-one-language-out
and leave-one-model-out on the pooled labels, then each fitted on all of them and scored on the two
fresh held-out sets (``HELD_OUT_FILES``), with a bootstrap interval of the κ difference over
MultiJail prompts. Features come from the e5 cache (minutes on a cold one).

    python scripts/judge_disclaimer_feature.py [--out docs/judge_disclaimer_feature.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from lasa.judges.corpus import HELD_OUT_FILES, LABEL_FILES, corpus_rows
from lasa.judges.features import FEATURE_NAMES
from lasa.judges.pair import MEMBERS, PairEnsemble, corpus_blocks
from lasa.judges.validation import agreement

STRICT = ("lex_refusal", "lex_refusal_early")


def strict_scalars(rows: list[dict], scalars: np.ndarray) -> np.ndarray:
    """``scalars`` with the two refusal-phrase columns read from the strict list, and a column for a
    disclaimer-only response appended."""
    from lasa.judges.base import strip_control_tokens
    from lasa.judges.lexicon import _normalise, is_refusal

    out = np.concatenate([scalars, np.zeros((len(rows), 1))], axis=1)
    i_ref, i_early = (FEATURE_NAMES.index(n) for n in STRICT)
    for k, r in enumerate(rows):
        response = strip_control_tokens(r["response"])
        lang = r.get("language") or r.get("lang")
        strict = is_refusal(response, lang, prompt=r["prompt"], disclaimers=False)
        loose = is_refusal(response, lang, prompt=r["prompt"])
        out[k, i_ref] = float(strict is not None)
        out[k, i_early] = float(strict is not None and _normalise(response).find(strict) < 120)
        out[k, -1] = float(loose is not None and strict is None)
    return out


def variant_members() -> tuple:
    return tuple((tuple("scalars_v" if b == "scalars" else b for b in blocks), c) for blocks, c in MEMBERS)


def summary(gold: list, pred: list) -> dict:
    a = agreement(gold, pred)
    return {
        k: round(float(a[k]), 4)
        for k in ("kappa", "unsafe_recall", "unsafe_precision", "judged_asr", "gold_asr")
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from build_probe_judge import kappa_gain
    from judge_more_labels import oof_labels

    rows = corpus_rows(LABEL_FILES)
    blocks = corpus_blocks(rows)
    blocks["scalars_v"] = strict_scalars(rows, blocks["scalars"])
    y = np.array([r["label"] for r in rows])
    recipes = {"shipped": MEMBERS, "strict refusal features": variant_members()}
    report: dict = {"n": len(rows), "held_out": {}, "fresh": {}}
    print(f"{len(rows)} labelled responses; disclaimer-only rows: {int(blocks['scalars_v'][:, -1].sum())}")
    for split in ("run_group", "language", "model"):
        groups = np.array([r.get(split) or "qwen2.5-coder-0.5b" for r in rows])
        report["held_out"][split] = {}
        for name, members in recipes.items():
            s = report["held_out"][split][name] = summary(
                list(y), list(oof_labels(blocks, y, groups, np.ones(len(y), bool), members))
            )
            print(
                f"held out by {split}, {name}: κ {s['kappa']:.3f}, unsafe recall {s['unsafe_recall']:.2f}, "
                f"precision {s['unsafe_precision']:.2f}, judged / gold ASR {100 * s['judged_asr']:.1f}% / "
                f"{100 * s['gold_asr']:.1f}%"
            )
    fresh = [r for f in HELD_OUT_FILES for r in corpus_rows((f,))]
    fb = corpus_blocks(fresh)
    fb["scalars_v"] = strict_scalars(fresh, fb["scalars"])
    gold = [r["label"] for r in fresh]
    preds = {}
    for name, members in recipes.items():
        preds[name] = list(PairEnsemble.fit(blocks, list(y), members).labels(fb))
        s = report["fresh"][name] = summary(gold, preds[name])
        print(
            f"fresh held-out sets ({len(fresh)}), {name}: κ {s['kappa']:.3f}, unsafe recall "
            f"{s['unsafe_recall']:.2f}, precision {s['unsafe_precision']:.2f}, judged / gold ASR "
            f"{100 * s['judged_asr']:.1f}% / {100 * s['gold_asr']:.1f}%"
        )
    clusters = [str(r.get("mj_id", r["prompt"])) for r in fresh]
    gain = report["fresh_gain"] = kappa_gain(
        gold, preds["strict refusal features"], preds["shipped"], clusters
    )
    print(
        f"κ(strict) − κ(shipped) on the fresh sets: {gain['difference']:+.3f} [{gain['ci95'][0]:+.3f}, "
        f"{gain['ci95'][1]:+.3f}] (95% bootstrap over {gain['clusters']} prompts)"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
