from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lasa.cli import main
from lasa.errors import LasaError

LAYER_KEYS = {
    "layer",
    "silhouette_semantic",
    "silhouette_language",
    "score",
    "score_ci",
    "adjusted_cosine",
    "retrieval_accuracy",
}


def run_cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def small_locate(model, run_dir, *extra):
    return [
        "locate",
        "--model",
        model,
        "--run-dir",
        run_dir,
        "--n-queries",
        8,
        "--langs",
        "en",
        "zh",
        "sw",
        "--n-bootstrap",
        50,
        *extra,
    ]


def test_locate_end_to_end_writes_the_artefact_contract(capsys, tiny_qwen, tmp_path):
    run = tmp_path / "run"
    rc, out, err = run_cli(capsys, *small_locate(tiny_qwen, run))
    assert rc == 0, err
    assert "bottleneck: layer" in out
    loc = run / "locate"
    rows = json.loads((loc / "layer_scores.json").read_text())
    assert [r["layer"] for r in rows] == [1, 2, 3, 4]
    assert all(set(r) >= LAYER_KEYS for r in rows)
    assert all(r["score"] == pytest.approx(r["silhouette_semantic"] - r["silhouette_language"]) for r in rows)
    bn = json.loads((loc / "bottleneck.json").read_text())
    assert bn["layer"] == max(rows, key=lambda r: r["score"])["layer"]
    assert bn["num_layers"] == 4 and bn["depth_fraction"] == bn["layer"] / 4
    assert {"rule", "data", "pooling", "n"} <= set(bn)
    assert bn["n"] == {"queries": 8, "languages": 3, "points": 24, "bootstrap": 50}
    for f in ("layer_scores.png", "tsne.png", "states.safetensors", "points.jsonl"):
        assert (loc / f).stat().st_size > 0, f
    assert (loc / "layer_scores.png").read_bytes()[:4] == b"\x89PNG"
    rec = yaml.safe_load((run / "config.yaml").read_text())["stages"]["locate"]
    assert rec["config"]["n_queries"] == 8 and rec["seed"] == 42
    assert rec["versions"]["torch"] and "git_commit" in rec
    assert not list(loc.glob("*.tmp")) and not list(loc.glob(".*"))


def test_rerun_reuses_cached_states(capsys, tiny_qwen, tmp_path, monkeypatch):
    run = tmp_path / "run"
    assert run_cli(capsys, *small_locate(tiny_qwen, run, "--no-plots"))[0] == 0
    import lasa.hidden

    def boom(*a, **k):
        raise AssertionError("the model ran again")

    monkeypatch.setattr(lasa.hidden, "extract_states", boom)
    rc, _, err = run_cli(capsys, *small_locate(tiny_qwen, run, "--no-plots", "--n-bootstrap", 20))
    assert rc == 0, err
    with pytest.raises(AssertionError, match="ran again"):
        main([str(a) for a in small_locate(tiny_qwen, run, "--no-plots", "--force")])


def test_yaml_then_flags(capsys, tiny_llama, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "model": str(tiny_llama),
                "run_dir": str(tmp_path / "r"),
                "seed": 7,
                "locate": {
                    "n_queries": 6,
                    "langs": ["en", "jw"],
                    "source": "sib200",
                    "plots": False,
                    "pooling": "mean",
                },
                "interpret": {"anything": 1},  # another stage's section is ignored
            }
        )
    )
    rc, _, err = run_cli(capsys, "locate", "--config", cfg, "--n-queries", 10, "--n-bootstrap", 10)
    assert rc == 0, err
    rec = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["stages"]["locate"]["config"]
    assert rec["n_queries"] == 10 and rec["seed"] == 7 and rec["langs"] == ["en", "jv"]
    assert rec["source"] == "sib200" and rec["pooling"] == "mean"


def test_help_shows_every_field_with_its_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["locate", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        "--model",
        "--run-dir",
        "--config",
        "--n-queries",
        "--pooling",
        "--chat-template",
        "--langs",
    ):
        assert flag in out
    assert "attention-sink" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--langs", "en", "xx"], "unknown language code 'xx'; valid codes: en zh it vi ar ko th bn sw jv"),
        (["--langs", "en"], "at least two languages"),
        (["--n-queries", "2"], "--n-queries must be >= 4"),
        (["--n-queries", "400", "--source", "multijail"], "multijail has 315 parallel rows"),
        (["--tsne-layers", "9"], "--tsne-layers 9 is out of range; this model has layers 1..4"),
        (["--languages", "en", "xx"], "unrecognized arguments: --languages en xx"),
    ],
)
def test_bad_input_is_one_line(capsys, tiny_qwen, tmp_path, args, message):
    argv = ["locate", "--model", tiny_qwen, "--run-dir", tmp_path / "r", "--n-bootstrap", 5, "--n-queries", 6]
    rc, _, err = run_cli(capsys, *argv, *args)
    assert rc == 2
    assert message in err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1, err
    assert not (tmp_path / "r" / "locate" / "bottleneck.json").exists()


def test_missing_model_and_config(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "locate", "--model", tmp_path / "nope", "--run-dir", tmp_path / "r")
    assert rc == 2 and "model path not found" in err and len(err.strip().splitlines()) == 1
    rc, _, err = run_cli(capsys, "locate", "--config", tmp_path / "missing.yaml")
    assert rc == 2 and "config file not found" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("locate:\n  n_querys: 5\n")
    rc, _, err = run_cli(capsys, "locate", "--config", bad)
    assert rc == 2 and "unknown key locate.n_querys" in err


def test_console_script_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "lasa.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "locate" in out.stdout and "models" in out.stdout


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize(
    "preset",
    sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml") if p.parent.name != "accelerate"),
)
def test_shipped_presets_parse_for_every_stage(preset, monkeypatch):
    from lasa.config import STAGE_CONFIGS

    # the paper presets judge with an endpoint; without one they fail fast (tested elsewhere)
    monkeypatch.setenv("LASA_JUDGE_URL", "http://localhost:1/v1")
    monkeypatch.setenv("LASA_JUDGE_MODEL", "judge")
    # and generate with vLLM, which a config refuses to name when it is not installed (a GPU extra)
    import types

    monkeypatch.setitem(sys.modules, "vllm", sys.modules.get("vllm") or types.ModuleType("vllm"))
    for cls in STAGE_CONFIGS.values():
        cfg = cls.from_yaml(CONFIGS / preset)
        assert cfg.run_dir.startswith("runs/")


def test_report_on_an_empty_run_dir_is_an_error(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    rc, _, err = run_cli(capsys, "report", "--run-dir", tmp_path / "empty")
    assert rc == 2 and "holds no lasa artefacts" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "empty" / "report.md").exists()


@pytest.mark.parametrize(("line", "kind"), [('["a"]', "list"), ("42", "int"), ('"s"', "str")])
def test_judge_check_rejects_lines_that_are_not_objects(capsys, tmp_path, line, kind):
    f = tmp_path / "labels.jsonl"
    f.write_text(line + "\n")
    rc, _, err = run_cli(capsys, "judge-check", "--labels", f, "--judges", "lexicon")
    assert rc == 2 and "labels.jsonl:1: expected a JSON object" in err and kind in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["evaluate", "--utility", "xcopa", "hellaswag"],
            "unknown utility task(s) hellaswag; choose from mgsm, xcopa, mmlu",
        ),
        (["evaluate", "--utility", "none", "mgsm"], "'none' means no utility task and cannot be combined"),
        (["evaluate", "--utility", "drift", "drift"], "--utility names drift twice"),
        (
            ["evaluate", "--variant", "base", "--gate"],
            "--variant base is no adapter, no gate, but the settings ask for",
        ),
        (["evaluate", "--judges", "pair", "guard"], "unknown judge(s) guard; choose from pair"),
        (["evaluate", "--judges", "llm", "--default-judge", "llm"], "the llm judge needs --judge-model"),
        (
            ["evaluate", "--judges", "pair", "--default-judge", "lexicon"],
            "--default-judge lexicon must be one of",
        ),
        (["interpret", "--layer", "999"], "--layer 999 is out of range"),
        (["interpret", "--pooling", "user_last"], "--pooling user_last reads the user's turn"),
        # a reliability pass (this round): each of these ran, or failed, after the model load
        (["evaluate", "--adapter", ""], "--adapter is empty"),  # `--adapter "$UNSET"`: the base as `base`
        (["evaluate", "--variant", "x", "--gate", "--ssi", " "], "--ssi is empty"),
        (["interpret", "--max-length", "-5"], "--max-length must be >= 2, got -5"),
        (["interpret", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["locate", "--n-bootstrap", "1000000000"], "--n-bootstrap must be <= 100000"),
        (["align", "--max-length", "0"], "--max-length must be >= 2, got 0"),
    ],
)
def test_bad_stage_input_fails_before_any_model_is_loaded(
    capsys, monkeypatch, tiny_qwen, tmp_path, argv, message
):
    import lasa.models

    def no_load(*a, **k):
        raise AssertionError("a model was loaded before the input was validated")

    monkeypatch.setattr(lasa.models, "load_model", no_load)
    monkeypatch.delenv("LASA_JUDGE_URL", raising=False)
    rc, _, err = run_cli(capsys, *argv, "--model", tiny_qwen, "--run-dir", tmp_path / "r")
    assert rc == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "r" / "ssi").exists() and not (tmp_path / "r" / "eval").exists()


def test_judge_check_says_when_labels_are_the_judges_training_rows(tmp_path, monkeypatch, caplog):
    """Labels the shipped heads trained on give in-sample agreement; judge-check says so."""
    import json

    import lasa.judge_check
    from lasa.judges.corpus import corpus_rows

    def stub_judge_samples(judge, rows):
        return [{"label": "safe", "reason": ""} for _ in rows]

    monkeypatch.setattr(lasa.judge_check, "get_judge", lambda name, **k: None)
    monkeypatch.setattr(lasa.judge_check, "judge_samples", stub_judge_samples)
    known = corpus_rows()[0]
    f = tmp_path / "labels.jsonl"
    f.write_text(
        json.dumps({k: known[k] for k in ("prompt", "response", "language", "label")})
        + "\n"
        + json.dumps({"prompt": "a request", "response": "an answer", "language": "en", "label": "safe"})
        + "\n"
    )
    rep = lasa.judge_check.check_judges(f, ["pair", "lexicon"])
    assert rep["in_training_corpus"] == 1 and "1 of the 2 labelled responses" in caplog.text
    caplog.clear()
    assert "in_training_corpus" not in lasa.judge_check.check_judges(f, ["lexicon"])
    assert "in-sample" not in caplog.text


def test_judge_check_help_names_the_key_variable(capsys):
    with pytest.raises(SystemExit):
        main(["judge-check", "--help"])
    assert "$LASA_JUDGE_API_KEY" in capsys.readouterr().out


def test_variant_names_expand_to_their_settings():
    from lasa.config import VARIANTS, GenerateConfig
    from lasa.errors import LasaError

    cfg = GenerateConfig(variant="lasa+gate")
    assert cfg.adapter == "lasa" and cfg.gate is True
    assert GenerateConfig(variant="base").adapter is None and not GenerateConfig(variant="base").gate
    assert GenerateConfig(variant="mine", adapter="/x/adapter").adapter == "/x/adapter"  # custom names pass
    with pytest.raises(
        LasaError,
        match="--variant kto is the kto adapter, no gate, but the settings ask for the lasa adapter",
    ):
        GenerateConfig(variant="kto", adapter="lasa")
    assert {"base", "base+gate", "kto", "sft", "lasa", "lasa+gate"} <= set(VARIANTS)


def test_a_variant_name_refuses_an_adapter_path_another_method_trained(tmp_path):
    """``--variant lasa --adapter RUN/align/kto/adapter`` stored KTO's answers as lasa's, and the
    report showed them as LASA: the path's summary.json names the method that trained it."""
    from lasa.config import GenerateConfig
    from lasa.errors import LasaError

    for method in ("kto", "lasa"):
        (tmp_path / method / "adapter").mkdir(parents=True)
        (tmp_path / method / "summary.json").write_text(json.dumps({"method": method}))
    kto = str(tmp_path / "kto" / "adapter")
    with pytest.raises(
        LasaError,
        match=r"--variant lasa\+gate is the lasa adapter behind the SSI gate, but the settings ask for the kto \(",
    ):
        GenerateConfig(variant="lasa+gate", adapter=kto)
    assert GenerateConfig(variant="lasa", adapter=str(tmp_path / "lasa" / "adapter")).adapter.endswith(
        "adapter"
    )
    assert GenerateConfig(variant="kto", adapter=str(tmp_path / "kto")).adapter == str(tmp_path / "kto")
    assert GenerateConfig(
        variant="lasa", adapter=str(tmp_path / "elsewhere")
    ).adapter  # not lasa's: the user's word


def test_help_shows_each_flag_once_in_dash_style(capsys, tiny_qwen, tmp_path):
    with pytest.raises(SystemExit):
        main(["locate", "--help"])
    out = capsys.readouterr().out
    assert "--run-dir" in out and "--run_dir" not in out and "--n_queries" not in out
    assert "--no-plots            Turn --plots off." in out
    # underscores are still accepted
    rc, _, err = run_cli(
        capsys, "locate", "--model", tiny_qwen, "--run_dir", tmp_path / "r", "--n_queries", 2
    )
    assert rc == 2 and "--n-queries must be >= 4" in err


def test_judge_check_unseen_only_scores_only_rows_the_judges_never_trained_on(tmp_path, monkeypatch, capsys):
    """--unseen-only drops the labelled corpus's rows before judging, and says so; a file holding
    nothing else is a one-line error before any judge loads."""
    import json

    import lasa.judge_check
    from lasa.judges.corpus import corpus_rows

    judged: list[int] = []

    def stub_judge_samples(judge, rows):
        judged.append(len(rows))
        return [{"label": "safe", "reason": ""} for _ in rows]

    monkeypatch.setattr(lasa.judge_check, "get_judge", lambda name, **k: None)
    monkeypatch.setattr(lasa.judge_check, "judge_samples", stub_judge_samples)
    known = [
        json.dumps({k: r[k] for k in ("prompt", "response", "language", "label")}) for r in corpus_rows()[:3]
    ]
    new = json.dumps({"prompt": "a request", "response": "an answer", "language": "en", "label": "safe"})
    f = tmp_path / "labels.jsonl"
    f.write_text("\n".join([*known, new]) + "\n")
    rep = lasa.judge_check.check_judges(f, ["pair", "lexicon"], unseen_only=True)
    assert rep["n"] == 1 and rep["dropped_in_training_corpus"] == 3 and judged == [1, 1]
    assert rep["in_training_corpus"] == 0
    assert lasa.judge_check.check_judges(f, ["pair"])["n"] == 4  # the default keeps every row

    only_known = tmp_path / "known.jsonl"
    only_known.write_text("\n".join(known) + "\n")
    judged.clear()
    rc, _, err = run_cli(capsys, "judge-check", "--labels", only_known, "--judges", "pair", "--unseen-only")
    assert rc == 2 and "all 3 labelled responses are in lasa's judge training corpus" in err, err
    assert "Traceback" not in err and judged == []


def test_a_run_dir_under_a_tilde_is_the_home_directorys(monkeypatch, tmp_path):
    """`run_dir: ~/x` in a preset (or `--run-dir=~/x`, which bash leaves alone) made a folder named
    `~` in the working directory, which a later `rm -rf ~` would turn into a disaster."""
    from lasa.config import EvaluateConfig, ReportConfig

    monkeypatch.setenv("HOME", str(tmp_path))
    assert EvaluateConfig(run_dir="~/runs/x").run_dir == str(tmp_path / "runs" / "x")
    (tmp_path / "r").mkdir()
    assert ReportConfig(run_dir="~/r").run_dir == str(tmp_path / "r")


def test_models_list_force_is_warned_about(capsys, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="lasa"):
        rc, _, _ = run_cli(capsys, "models", "list", "--force")
    assert rc == 0 and "--force has no effect with these settings (--action list)" in caplog.text


def test_a_bad_log_level_is_one_line_not_a_traceback(capsys, monkeypatch):
    monkeypatch.setenv("LASA_LOG_LEVEL", "verbose")
    rc, _, err = run_cli(capsys, "models", "list")
    assert rc == 0 and "LASA_LOG_LEVEL='verbose' is not a level" in err and "Traceback" not in err


def test_a_write_failure_is_one_line(capsys, tmp_path, monkeypatch):
    """`judge-check --out` into a folder that cannot hold it failed with a traceback after judging."""
    import json

    import lasa.judge_check

    monkeypatch.setattr(lasa.judge_check, "get_judge", lambda name, **k: None)
    monkeypatch.setattr(
        lasa.judge_check, "judge_samples", lambda judge, rows: [{"label": "safe", "reason": ""} for _ in rows]
    )
    f = tmp_path / "labels.jsonl"
    f.write_text(json.dumps({"prompt": "p", "response": "r", "language": "en", "label": "safe"}) + "\n")
    (tmp_path / "out.json").mkdir()  # the output path is a folder
    rc, _, err = run_cli(
        capsys, "judge-check", "--labels", f, "--judges", "lexicon", "--out", tmp_path / "out.json"
    )
    assert rc in (1, 2) and "error:" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_judge_check_leaves_unparsed_verdicts_out_of_the_agreement(tmp_path, monkeypatch):
    """An llm judge whose model never answers in the format got accuracy and kappa as if each
    unreadable answer were an `invalid` prediction; now they are counted apart, and a judge with no
    readable verdict at all is an error."""
    import json

    import lasa.judge_check
    from lasa.errors import LasaError
    from lasa.judges import UNPARSED

    rows = [("safe", "safe", ""), ("unsafe", "invalid", UNPARSED + ": blah"), ("unsafe", "unsafe", "")]
    f = tmp_path / "labels.jsonl"
    f.write_text(
        "".join(
            json.dumps({"prompt": f"p{i}", "response": f"r{i}", "language": "en", "label": g}) + "\n"
            for i, (g, _, _) in enumerate(rows)
        )
    )
    monkeypatch.setattr(lasa.judge_check, "get_judge", lambda name, **k: None)
    monkeypatch.setattr(
        lasa.judge_check, "judge_samples", lambda judge, rs: [{"label": p, "reason": r} for _, p, r in rows]
    )
    rep = lasa.judge_check.check_judges(f, ["lexicon"])
    overall = rep["judges"]["lexicon"]["overall"]
    assert overall["unjudged"] == 1 and overall["accuracy"] == 1.0
    assert rep["judges"]["lexicon"]["predictions"][1]["pred"] is None
    monkeypatch.setattr(
        lasa.judge_check,
        "judge_samples",
        lambda judge, rs: [{"label": "invalid", "reason": UNPARSED} for _ in rs],
    )
    with pytest.raises(LasaError, match="no readable verdict on any of the 3"):
        lasa.judge_check.check_judges(f, ["lexicon"])


def test_an_ssi_split_without_both_classes_fails_before_the_model_loads(
    capsys, monkeypatch, tiny_qwen, tmp_path
):
    """`--cap 1` leaves validation sides with one class: that was found after the model load and
    the whole state extraction; the pool is data alone, so it is checked first."""
    import lasa.models

    def no_load(*a, **k):
        raise AssertionError("a model was loaded before the split was checked")

    monkeypatch.setattr(lasa.models, "load_model", no_load)
    rc, _, err = run_cli(
        capsys, "interpret", "--model", tiny_qwen, "--run-dir", tmp_path / "r", "--layer", "2", "--cap", "1"
    )
    assert rc == 2 and "not both classes; raise --cap or --val-fraction" in err, err
    assert not (tmp_path / "r" / "ssi").exists()


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["align", "--method", "sft", "--beta", "0.2", "--dry-run"], "--beta"),
        (["align", "--method", "kto", "--rho-safety", "0.5", "--dry-run"], "--rho-safety"),
        (["generate", "--no-xstest", "--xstest-n", "5"], "--xstest-n"),
        (["interpret", "--sweep-every", "3"], "--sweep-every"),
        (["interpret", "--calibration", "none", "--calibration-n", "20"], "--calibration-n"),
        (["locate", "--no-plots", "--tsne-layers", "2"], "--tsne-layers"),
    ],
)
def test_a_flag_these_settings_do_not_read_is_warned_about(argv, flag, caplog, tmp_path):
    """A setting that silently did nothing read as one that was tried (a reliability pass)."""
    import logging

    from lasa.config import AlignConfig, GenerateConfig, InterpretConfig, LocateConfig
    from lasa.config.base import parse_stage_args

    cls = {
        "align": AlignConfig,
        "generate": GenerateConfig,
        "interpret": InterpretConfig,
        "locate": LocateConfig,
    }[argv[0]]
    with caplog.at_level(logging.WARNING, logger="lasa"):
        parse_stage_args(cls, [*argv[1:], "--run-dir", str(tmp_path / "r")], prog="lasa")
    assert any(f"{flag} has no effect" in r.getMessage() for r in caplog.records), caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lasa"):  # the same flag where it is read: no word
        parse_stage_args(cls, ["--run-dir", str(tmp_path / "r")], prog="lasa")
    assert not [r for r in caplog.records if "has no effect" in r.getMessage()]


def test_presets_and_files_get_the_message_that_names_the_fix(tmp_path):
    """Near-miss keys name the key meant; a stage section that is not a mapping is refused (it was
    ignored); a directory given for a file says so (it was "file not found")."""
    from lasa.config import LocateConfig
    from lasa.config.base import load_yaml_for
    from lasa.judge_check import load_labels

    f = tmp_path / "p.yaml"
    f.write_text("run-dir: runs/x\n")
    with pytest.raises(LasaError, match=r"unknown key 'run-dir' \(did you mean 'run_dir'\?\)"):
        load_yaml_for(LocateConfig, f)
    f.write_text("locate:\n  n_querys: 5\n")
    with pytest.raises(LasaError, match=r"unknown key locate.n_querys \(did you mean 'n_queries'\?\)"):
        load_yaml_for(LocateConfig, f)
    for bad in ("[]", "0", '""'):
        f.write_text(f"locate: {bad}\n")
        with pytest.raises(LasaError, match="section 'locate' must be a mapping"):
            load_yaml_for(LocateConfig, f)
    f.write_text("locate:\n")  # empty: nothing to apply, fine
    assert load_yaml_for(LocateConfig, f) == {}
    with pytest.raises(LasaError, match="is a directory; give a YAML file"):
        load_yaml_for(LocateConfig, tmp_path)
    with pytest.raises(LasaError, match="is a directory; give a JSONL file"):
        load_labels(tmp_path)


def test_an_out_file_that_cannot_be_written_is_refused_before_judging(tmp_path):
    """`judge-check --out` into a folder no file can be made in (/proc; for root, os.access says yes)
    failed after judging, naming a temporary file."""
    from lasa.config import JudgeCheckConfig

    f = tmp_path / "labels.jsonl"
    f.write_text(json.dumps({"prompt": "p", "response": "r", "language": "en", "label": "safe"}) + "\n")
    if Path("/proc").is_dir():
        with pytest.raises(LasaError, match="cannot write in /proc"):
            JudgeCheckConfig(labels=str(f), judges=["lexicon"], out="/proc/x.json")
    JudgeCheckConfig(labels=str(f), judges=["lexicon"], out=str(tmp_path / "x.json"))  # fine


def test_a_config_built_in_python_refuses_an_unknown_field_with_the_near_miss():
    """The Python API builds configs directly; a typo'd field was Python's bare TypeError, without
    the near miss the YAML and flag parsers name."""
    import lasa

    with pytest.raises(
        LasaError, match=r"LocateConfig: unknown field 'n_querys' \(did you mean 'n_queries'\?\)"
    ):
        lasa.LocateConfig(n_querys=50)
    with pytest.raises(LasaError, match="see `lasa interpret --help`"):
        lasa.InterpretConfig(run_dir="runs/x", not_a_field=1)
    assert lasa.LocateConfig(n_queries=50, run_dir="runs/x").n_queries == 50
