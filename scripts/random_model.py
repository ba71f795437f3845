"""Write a randomly initialised model directory from a ``config.json`` and a tokenizer.

For timing on a machine that cannot download the real weights (an offline GPU box): the model's
outputs are meaningless, but its speed is the architecture's, so a generation or gate benchmark on
it says what a user of that model will wait. ``bench/configs/`` holds the configs of the models
the GPU figures of docs/development.md name. Usage:

    python scripts/random_model.py --config bench/configs/qwen2.5-7b-instruct.json \
        --tokenizer ~/.cache/lasa/models/qwen2.5-coder-0.5b --out /tmp/qwen7b-random
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

logger = logging.getLogger("random_model")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a model's config.json")
    parser.add_argument("--tokenizer", required=True, help="a directory with that model family's tokenizer")
    parser.add_argument("--out", required=True, help="directory to write (weights, config, tokenizer)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = Path(args.out)
    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        logger.info("%s already holds a model; reusing it", out)
        return 0
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    cfg = AutoConfig.for_model(**json.loads(Path(args.config).read_text()))
    if len(tok) > cfg.vocab_size:
        parser.error(f"the tokenizer has {len(tok)} tokens but the config's vocab_size is {cfg.vocab_size}")
    torch.manual_seed(args.seed)
    t0 = time.time()
    with torch.device(args.device):  # initialise where it will run: a 7B model inits in seconds on a GPU
        model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, args.dtype))
    n = sum(p.numel() for p in model.parameters())
    logger.info("initialised %.2fB parameters on %s in %.1f s", n / 1e9, args.device, time.time() - t0)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    logger.info("wrote %s in %.1f s", out, time.time() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
