"""Full fine-tuning (`align.lora: false`, the paper presets' recipe) through `lasa run` on a tiny model.

It used to train for hours and then fail at `evaluate:kto` ("no PEFT adapter"), and it trained the
blocks the SSI reads (the release's flaw 3). Now the blocks up to L* are frozen, the checkpoint is
evaluated as a variant of its base (gated exactly, drift measured against the base loaded beside it),
and the run resumes like a LoRA run."""

from __future__ import annotations

import json
from copy import deepcopy
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lasa.cli import main
from lasa.errors import LasaError
from test_pipeline import PRESET
from tiny import DEVICE

FULL = deepcopy(PRESET)
FULL["align"] = {
    **PRESET["align"],
    "lora": False,
    "lora_layers": "above_bottleneck",
    "bottleneck_layer": 2,  # of the tiny model's 4 (this small locate finds the last one)
    "learning_rate": 1e-3,
}
FULL["interpret"] = {**PRESET["interpret"], "layer": 2}  # the SSI reads a frozen block
FULL["evaluate"] = {**PRESET["evaluate"], "utility": ["drift"], "drift_n": 2}


def _run(cfg: dict, tiny, rd, tmp_path) -> int:
    path = tmp_path / "full.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return main(
        ["run", "--config", str(path), "--model", str(tiny), "--run-dir", str(rd), "--device", DEVICE]
    )


def _weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(next(folder.glob("*.safetensors"))))


def test_full_fine_tune_freezes_up_to_the_bottleneck_and_is_evaluated_as_a_variant(tiny_qwen, tmp_path):
    rd = tmp_path / "run"
    assert _run(FULL, tiny_qwen, rd, tmp_path) == 0
    state = json.loads((rd / "pipeline.json").read_text())
    assert [s["status"] for s in state["_last_run"]["stages"]] == ["ran"] * 8

    layer = FULL["align"]["bottleneck_layer"]
    base = _weights(tiny_qwen)
    for method in ("kto", "lasa"):
        ckpt = rd / "align" / method / "adapter"
        record = json.loads((ckpt / "lasa_adapter.json").read_text())
        assert record["method"] == method and record["full_model"] and record["frozen_blocks"] == layer
        assert (ckpt / "tokenizer_config.json").is_file()  # a directory transformers loads as a model
        tuned = _weights(ckpt)
        below = [k for k in tuned if k.startswith(tuple(f"model.layers.{i}." for i in range(layer)))]
        above = [k for k in tuned if k.startswith(f"model.layers.{layer}.")]
        assert below and above
        # what the SSI reads is the base model's, exactly: embeddings and blocks 1..L* untouched
        for k in [*below, "model.embed_tokens.weight"]:
            assert torch.equal(tuned[k], base[k]), k
        assert any(not torch.equal(tuned[k], base[k]) for k in above)  # and training did move the rest

    # drift compares the checkpoint with its base, loaded beside it: the base side is the base
    # variant's own perplexity, and the KL is measured (it used to read 0 "by definition")
    base_drift = json.loads((rd / "eval" / "base" / "utility.json").read_text())["drift"]["per_language"]
    kto = json.loads((rd / "eval" / "kto" / "utility.json").read_text())["drift"]
    assert kto["full_fine_tune"] and kto["adapter"]
    for lang, row in kto["per_language"].items():
        assert row["ppl_base"] == pytest.approx(base_drift[lang]["ppl"], rel=1e-4)
        assert row["token_kl"] > 0 and row["ppl"] != pytest.approx(row["ppl_base"], rel=1e-9)
    # the gated checkpoint was gated (its first block above L* moved, the SSI's input did not)
    info = json.loads((rd / "eval" / "lasa+gate" / "results.json").read_text())["variant_info"]
    assert info["gate"] and info["adapter"].endswith("lasa/adapter")
    assert info["full_fine_tune"] == {"base_model": str(tiny_qwen), "frozen_blocks": layer}
    row = json.loads((rd / "eval" / "kto" / "completions.jsonl").read_text().splitlines()[0])
    base_row = json.loads((rd / "eval" / "base" / "completions.jsonl").read_text().splitlines()[0])
    assert row["generation"]["model_weights"] == base_row["generation"]["model_weights"]  # one base model
    report = (rd / "report.md").read_text()
    assert "gone or incomplete" not in report and "different base models" not in report

    # resume: nothing to redo
    assert _run(FULL, tiny_qwen, rd, tmp_path) == 0
    state = json.loads((rd / "pipeline.json").read_text())
    assert [s["status"] for s in state["_last_run"]["stages"]] == ["skipped"] * 8
    # a deleted checkpoint is retrained; the same seed gives the same result, so nothing after it reruns
    (rd / "align" / "kto" / "adapter" / "model.safetensors").unlink()  # its weights
    assert _run(FULL, tiny_qwen, rd, tmp_path) == 0
    ran = {
        s["stage"]
        for s in json.loads((rd / "pipeline.json").read_text())["_last_run"]["stages"]
        if s["status"] == "ran"
    }
    assert ran == {"align:kto"}


def test_full_fine_tune_of_every_block_with_a_gated_variant_is_refused_before_any_stage(
    tiny_qwen, tmp_path, capsys
):
    cfg = deepcopy(FULL)
    cfg["align"]["lora_layers"] = "all"
    rd = tmp_path / "run"
    assert _run(cfg, tiny_qwen, rd, tmp_path) == 2
    assert "could not be gated exactly" in capsys.readouterr().err
    assert not (rd / "locate").exists()


def test_full_fine_tune_freezing_below_the_ssi_layer_is_refused_before_training(tiny_qwen, tmp_path, capsys):
    cfg = deepcopy(FULL)
    cfg["interpret"] = {**PRESET["interpret"], "layer": 3}  # both given: refused before any stage
    rd = tmp_path / "run"
    assert _run(cfg, tiny_qwen, rd, tmp_path) == 2
    assert "set align.bottleneck_layer to 3 or more" in capsys.readouterr().err
    assert not (rd / "locate").exists()
    # the SSI at the located layer (unknown before locate): refused once locate has run, before training
    cfg["interpret"] = dict(PRESET["interpret"])
    cfg["align"] = {**FULL["align"], "bottleneck_layer": 1}
    assert _run(cfg, tiny_qwen, rd, tmp_path) == 2
    located = json.loads((rd / "locate" / "bottleneck.json").read_text())["layer"]
    assert located > 1 and f"the SSI reads layer {located}" in capsys.readouterr().err
    assert not (rd / "align").exists()


def test_gating_a_full_fine_tune_checks_its_record(tmp_path):
    from lasa.models import check_full_checkpoint_gate, is_full_checkpoint

    fp = {"id": "abc", "weight_sample": [0.1, 0.2]}
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "lasa_adapter.json").write_text(
        json.dumps(
            {
                "method": "lasa",
                "full_model": True,
                "base_model": "m",
                "base_path": "m",
                "base_fingerprint": fp,
                "frozen_blocks": 3,
            }
        )
    )
    assert is_full_checkpoint(tmp_path) and not is_full_checkpoint(tmp_path / "missing")
    ssi = SimpleNamespace(meta={"model_fingerprint": fp, "model": "m"}, layer=3)
    check_full_checkpoint_gate(tmp_path, ssi)  # the SSI's layer was frozen: exact
    with pytest.raises(LasaError, match="trained block 4 and up"):
        check_full_checkpoint_gate(tmp_path, SimpleNamespace(meta=ssi.meta, layer=4))
    other = {"model_fingerprint": {"id": "xyz", "weight_sample": [0.1, 0.2]}, "model": "other"}
    with pytest.raises(LasaError, match="SSI of its base model"):
        check_full_checkpoint_gate(tmp_path, SimpleNamespace(meta=other, layer=2))


def test_no_lora_on_every_block_warns_and_the_default_placement_does_not(caplog):
    from lasa.config import AlignConfig

    with caplog.at_level("WARNING"):
        AlignConfig(run_dir="r", lora=False)
    assert not caplog.records
    with caplog.at_level("WARNING"):
        AlignConfig(run_dir="r", lora=False, lora_layers="all")
    assert "refuse to gate" in caplog.text


def test_intermediate_full_checkpoints_load_as_variants_too(tiny_qwen, tmp_path):
    from lasa.evaluate import resolve_adapter
    from lasa.models import load_full_checkpoint

    run = tmp_path / "run"
    args = ["align", "--model", str(tiny_qwen), "--run-dir", str(run), "--method", "kto", "--no-lora"]
    args += ["--n-safety", "4", "--n-general", "2", "--batch-size", "2", "--max-steps", "2"]
    args += ["--warmup-steps", "0", "--save-adapter-at", "1", "--bottleneck-layer", "2", "--device", DEVICE]
    assert main(args) == 0
    ckpt = run / "align" / "kto" / "checkpoints" / "kto-step1"
    assert resolve_adapter(str(ckpt), str(run)) == ckpt  # a full fine-tune, not "no PEFT adapter"
    lm = load_full_checkpoint(ckpt, DEVICE)
    assert lm.full_checkpoint["frozen_blocks"] == 2 and lm.full_checkpoint["base_model"] == str(tiny_qwen)


def test_a_full_checkpoint_keeps_its_base_wherever_it_is_loaded_from(tiny_qwen, tmp_path, monkeypatch):
    """A relative --model at training time, the checkpoint then evaluated from another directory: the
    base is found by its recorded absolute path and checked against its fingerprint; an incomplete
    record is one line; the Python API's load_model attaches the record."""
    import shutil

    from lasa.models import load_base_of, load_model

    work = tmp_path / "work"
    shutil.copytree(tiny_qwen, work / "tinyq")
    monkeypatch.chdir(work)
    run = work / "run"
    args = ["align", "--model", "./tinyq", "--run-dir", str(run), "--method", "kto", "--no-lora"]
    args += ["--n-safety", "4", "--n-general", "2", "--batch-size", "2", "--max-steps", "1"]
    args += ["--warmup-steps", "0", "--bottleneck-layer", "2", "--device", DEVICE]
    assert main(args) == 0
    ckpt = run / "align" / "kto" / "adapter"
    monkeypatch.chdir(tmp_path)  # ./tinyq means nothing here
    lm = load_model(str(ckpt), DEVICE)
    assert lm.full_checkpoint["base_path"] == str((work / "tinyq").resolve())
    assert load_base_of(lm, DEVICE).path == str((work / "tinyq").resolve())
    # another model under the recorded path is refused, not used as the drift's base
    state = load_file(str(work / "tinyq" / "model.safetensors"))
    for k in [k for k in state if k.startswith("model.layers.0.") and state[k].dim() == 2]:
        state[k] = state[k] + 1.0  # the fingerprint samples block 0's first matrix
    from safetensors.torch import save_file

    save_file(state, str(work / "tinyq" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(LasaError, match="is not the model .* was fine-tuned from"):
        load_base_of(lm, DEVICE)
    record = json.loads((ckpt / "lasa_adapter.json").read_text())
    del record["base_model"]
    (ckpt / "lasa_adapter.json").write_text(json.dumps(record))
    with pytest.raises(LasaError, match="lacks base_model"):
        load_model(str(ckpt), DEVICE)


def test_a_full_fine_tune_keeps_no_copy_of_the_model_and_trains_the_same(tiny_qwen, tmp_path, monkeypatch):
    """Full fine-tuning's KTO reference is the starting model: its log-probs are computed once
    before training instead of keeping TRL's frozen copy of the whole model for every step (a
    second 16 GB for an 8B model). Same losses and weights as with the copy."""
    import lasa.align as align
    from lasa.align import run_align
    from lasa.config import AlignConfig

    def train(name: str) -> tuple[dict, list[float], dict]:
        cfg = AlignConfig(
            model=str(tiny_qwen),
            run_dir=str(tmp_path / name),
            method="kto",
            lora=False,
            n_safety=4,
            n_general=2,
            max_steps=3,
            batch_size=4,
            learning_rate=1e-3,
            bottleneck_layer=2,
            device=DEVICE,
        )
        summary = run_align(cfg).summary
        out = tmp_path / name / "align" / "kto"
        log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        return summary, [r["loss"] for r in log if "loss" in r], _weights(out / "adapter")

    summary, losses, weights = train("precomputed")
    assert summary["training"]["reference_model"] == "log-probs precomputed before training"
    monkeypatch.setattr(align, "precompute_reference", lambda cfg: False)
    copy_summary, copy_losses, copy_weights = train("copy")
    assert copy_summary["training"]["reference_model"] == "a frozen copy of the model"
    assert len(losses) == 3 and losses == pytest.approx(copy_losses, abs=1e-5)
    for k, w in weights.items():
        assert torch.allclose(w, copy_weights[k], atol=1e-5), k
    assert any(not torch.equal(w, _weights(tiny_qwen)[k]) for k, w in weights.items())  # it trained
