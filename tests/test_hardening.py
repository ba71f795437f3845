"""The second reliability pass (issue 15's standard): every input below once gave a traceback, a
late error, a stray folder or, worst, a deletion outside the run directory. Each must now be one
line that names the fix, before any model loads, leaving nothing behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

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
        (["align", "--gradient-accumulation-steps", "0"], "--gradient-accumulation-steps must be >= 1"),
        (["align", "--lora-dropout", "2"], "--lora-dropout must be < 1"),
        (["align", "--learning-rate", "nan"], "--learning-rate must be a finite number"),
        (["interpret", "--lr", "nan"], "--lr must be a finite number"),
        (["interpret", "--dropout", "1.5"], "--dropout must be < 1"),
        (["interpret", "--train-batch-size", "0"], "--train-batch-size must be >= 1"),
        (["generate", "--top-p", "5"], "--top-p must be <= 1"),
        (["generate", "--do-sample", "--temperature", "0"], "--temperature must be > 0"),
        (["evaluate", "--mgsm-n", "0"], "--mgsm-n must be >= 1"),
        (["locate", "--seed", "99999999999999999999"], "--seed must be in 0..4294967295"),
        (["locate", "--tsne-layers", "-5"], "--tsne-layers must be >= 1"),
        (["generate", "--adapter", "no/such/adapter"], "--adapter no/such/adapter: no PEFT adapter"),
        (["evaluate", "--judges", "lexicon", "lexicon"], "--judges lists a judge twice"),
    ],
)
def test_bad_values_fail_in_one_line_before_the_model_and_leave_no_folder(
    capsys, no_model_load, tiny_qwen, tmp_path, argv, message
):
    rc, _, err = run_cli(capsys, *argv, "--model", tiny_qwen, "--run-dir", tmp_path / "r")
    assert rc == 2 and message in err and one_line(err), err
    assert not (tmp_path / "r").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lasa-cache"] or not list(tmp_path.iterdir())


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


@pytest.mark.parametrize(
    ("relpath", "content", "message"),
    [
        ("locate/bottleneck.json", '{"layer": 1', "bottleneck.json is not valid UTF-8 JSON"),
        ("locate/bottleneck.json", "[]", "bottleneck.json lacks what the report reads"),
        ("eval/base/results.json", "{}", "results.json (or its judgements) lacks what the report reads"),
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
