"""Generate responses for the judge-labelling corpus (``data/judge_labels/``), reproducibly.

Usage::

    python scripts/make_judge_corpus.py OUT_DIR --run NAME --model default \
        [--adapter DIR] [--ssi DIR --gate] --max-new-tokens 256 --per-language 10 --seed 11

Each call is one *generation run* (one model, one variant, one length) over a seeded random
sample of MultiJail ids per language (the same ids in every language, so runs are parallel);
``--exclude-first N`` leaves out the first N ids, which ``lasa run``'s presets evaluate, so the
corpus does not only hold the prompts the quick run sees. Rows go to ``OUT_DIR/<run>.jsonl`` with
their provenance (model, variant, length, id) for grouped validation by run, model and language;
an interrupted call resumes from what it wrote.
"""

from __future__ import annotations

import argparse
import logging
import random
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--run", required=True, help="Name of this generation run (the file name).")
    ap.add_argument("--model", default="default")
    ap.add_argument("--adapter", default=None, help="A PEFT adapter directory.")
    ap.add_argument("--ssi", default=None, help="An SSI directory (with --gate).")
    ap.add_argument("--gate", action="store_true")
    ap.add_argument("--variant", default=None, help="Label for the variant (default from the flags).")
    ap.add_argument("--langs", nargs="+", default=["all"])
    ap.add_argument("--per-language", type=int, default=10)
    ap.add_argument("--exclude-first", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=20)
    ap.add_argument("--temperature", type=float, default=0.0, help="> 0: sample (top-p 0.95) instead of greedy")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from lasa.data import load_multijail, normalize_languages
    from lasa.generate import Gate, GenerationSettings, SampleWriter, generate
    from lasa.models import load_adapter, load_model

    langs = normalize_languages(args.langs)
    mj = load_multijail(sorted(set(langs) | {"en"}))
    pool = list(range(args.exclude_first, len(mj.ids)))
    picked = sorted(random.Random(args.seed).sample(pool, args.per_language))
    variant = args.variant or (("adapter" if args.adapter else "base") + ("+gate" if args.gate else ""))
    rows = [
        {
            "uid": f"{args.run}:{lang}:{mj.ids[i]}",
            "run": args.run,
            "model": args.model,
            "variant": variant,
            "max_new_tokens": args.max_new_tokens,
            "temperature": args.temperature,
            "language": lang,
            "mj_id": str(mj.ids[i]),
            "prompt": mj.texts[lang][i],
            "prompt_en": mj.texts["en"][i],
        }
        for lang in langs
        for i in picked
    ]
    writer = SampleWriter(Path(args.out_dir) / f"{args.run}.jsonl")
    done = writer.load()
    todo = [r for r in rows if r["uid"] not in done]
    if todo:
        lm = load_model(args.model, device="auto", dtype="auto")
        if args.adapter:
            lm = load_adapter(lm, args.adapter)
        gate = None
        if args.gate:
            from lasa.ssi import SSI

            gate = Gate(SSI.load(args.ssi))
        settings = GenerationSettings(
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            do_sample=args.temperature > 0,
            temperature=args.temperature or 1.0,
            top_p=0.95 if args.temperature > 0 else 1.0,
        )
        if args.temperature > 0:
            import torch

            torch.manual_seed(args.seed)
        for idx, recs in generate(lm, [r["prompt"] for r in todo], settings, gate, desc=args.run):
            writer.append([todo[i] | rec for i, rec in zip(idx, recs)])
    out = writer.finish([r["uid"] for r in rows])
    logging.info("%s: %d rows in %s", args.run, len(out), writer.path)


if __name__ == "__main__":
    main()
