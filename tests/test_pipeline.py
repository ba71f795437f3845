"""`lasa run` end to end on a tiny model: every stage, the report, resume and --force."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lasa.cli import main
from tiny import DEVICE

PRESET = {
    "seed": 0,
    "locate": {"n_queries": 6, "langs": ["en", "zh", "sw"], "n_bootstrap": 20, "plots": False},
    "interpret": {"cap": 8, "eval_n_harmful": 4, "eval_n_benign": 4, "epochs": 2},
    "align": {
        "n_safety": 4,
        "n_general": 2,
        "max_steps": 1,
        "warmup_steps": 0,
        "batch_size": 2,
        "lora_layers": "all",
    },
    "evaluate": {
        "n": "2",
        "langs": ["en", "zh", "sw"],
        "xstest_n": 4,
        "max_new_tokens": 4,
        "batch_size": 8,
        "judges": ["lexicon"],
        "default_judge": "lexicon",
        "utility": ["xcopa", "mmlu"],
        "xcopa_n": 2,
        "mmlu_n": 2,
    },
}


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(PRESET))
    return path


def run(preset, tiny, run_dir, *extra):
    return main(
        [
            "run",
            "--config",
            str(preset),
            "--model",
            str(tiny),
            "--run-dir",
            str(run_dir),
            "--device",
            DEVICE,
            *extra,
        ]
    )


def test_pipeline_end_to_end_then_resume_then_force(preset, tiny_qwen, tmp_path, capsys, monkeypatch):
    rd = tmp_path / "run"
    assert run(preset, tiny_qwen, rd) == 0
    out = capsys.readouterr().out
    for v in ("base", "base+gate", "kto", "lasa+gate"):
        res = json.loads((rd / "eval" / v / "results.json").read_text())
        assert set(res["asr"]["lexicon"]["per_language"]) == {"en", "zh", "sw"}
        assert set(res["utility"]) == {"xcopa", "mmlu"}
    assert json.loads((rd / "eval" / "lasa+gate" / "results.json").read_text())["variant_info"]["gate"]
    report = (rd / "report.md").read_text()
    for section in (
        "semantic bottleneck",
        "transfer across languages",
        "Alignment",
        "attack success rate",
        "Over-refusal and utility",
        "Resolved configuration",
    ):
        assert section in report
    assert "eval/<variant>/results.json" in report and (rd / "report" / "asr.png").is_file()
    # the report's numbers are the artefacts' numbers: every variant's average ASR with its interval
    avg_row = next(line for line in report.splitlines() if line.startswith("| average |"))
    summary = [line for line in out.splitlines() if line.strip().startswith(("base", "kto", "lasa"))]
    for v in ("base", "base+gate", "kto", "lasa+gate"):
        a = json.loads((rd / "eval" / v / "results.json").read_text())["asr"]["lexicon"]
        iv = a["intervals"]["average"]
        assert iv["rate"] == pytest.approx(a["average"])  # 2 prompts in every language: pooled = mean
        cell = f"{100 * a['average']:.1f} [{100 * iv['low']:.1f}, {100 * iv['high']:.1f}]"
        assert cell in avg_row  # the report's table
        # the terminal summary after `lasa run` renders the same cell from the same table helper
        assert any(line.split()[0] == v and cell in line for line in summary), (v, cell, summary)
    assert (
        "1 prompt = 50.0 points" in report
    )  # 2 prompts per language: the table says what one prompt is worth
    # variants compared prompt by prompt: each against base, and the gated adapter against base+gate
    lines = report.splitlines()
    vs_base = lines.index(next(line for line in lines if "| ΔASR vs base [95% CI] |" in line))
    assert [line.split("|")[1].strip() for line in lines[vs_base + 2 : vs_base + 5]] == [
        "base+gate",
        "kto",
        "lasa+gate",
    ]
    assert all(
        line.rstrip().endswith("| 6 (2) |") for line in lines[vs_base + 2 : vs_base + 5]
    )  # 6 responses: 2 prompts x 3 langs
    assert "layer_scores.png" not in report  # plots: false wrote none; no broken link
    vs_gate = lines.index(next(line for line in lines if "| ΔASR vs base+gate [95% CI] |" in line))
    assert lines[vs_gate + 2].startswith("| lasa+gate |")
    html_page = (rd / "report.html").read_text()
    assert "**" not in html_page and "<details>" in html_page
    assert (rd / "report.html").read_text().count("data:image/png;base64") >= 2
    assert "ASR % [95% interval] by tier" in out
    state = json.loads((rd / "pipeline.json").read_text())
    assert [s["status"] for s in state["_last_run"]["stages"]] == ["ran"] * 8

    # resume: nothing changed, nothing runs (a stage that ran would call these)
    import lasa.evaluate
    import lasa.locate

    def boom(*a, **k):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(lasa.locate, "run_locate", boom)
    monkeypatch.setattr(lasa.evaluate, "run_evaluate", boom)
    assert run(preset, tiny_qwen, rd) == 0
    state = json.loads((rd / "pipeline.json").read_text())
    assert {s["status"] for s in state["_last_run"]["stages"]} == {"skipped"}

    # --force redoes exactly that stage
    monkeypatch.undo()
    assert run(preset, tiny_qwen, rd, "--force", "evaluate:kto") == 0
    state = json.loads((rd / "pipeline.json").read_text())
    ran = [s["stage"] for s in state["_last_run"]["stages"] if s["status"] == "ran"]
    assert ran == ["evaluate:kto"]

    # a stage redone by hand with other settings changes its output: it and what reads it run again
    # (here the KTO adapter's summary stands in for `lasa align --method kto ...` run by hand)
    marker = rd / "align" / "kto" / "summary.json"
    before = marker.read_bytes()
    weights = (rd / "align" / "kto" / "adapter" / "adapter_model.safetensors").read_bytes()
    marker.write_text(json.dumps(json.loads(before) | {"by_hand": True}))
    assert run(preset, tiny_qwen, rd) == 0
    state = json.loads((rd / "pipeline.json").read_text())
    ran = [s["stage"] for s in state["_last_run"]["stages"] if s["status"] == "ran"]
    # the redo retrains the same adapter (same rows and seed): evaluate:kto runs again only if what it
    # read changed, and the summary's wall-clock seconds do not count as a change
    same = (rd / "align" / "kto" / "adapter" / "adapter_model.safetensors").read_bytes() == weights
    assert ran == ["align:kto"] + ([] if same else ["evaluate:kto"])
    assert state["evaluate:kto"]["inputs"]["align:kto"] == state["align:kto"]["output"]
    assert state["align:kto"]["digest"] == 2 and state["align:kto"]["model_weights"]
    assert json.loads((rd / "align" / "kto" / "adapter" / "lasa_adapter.json").read_text()) == {
        "method": "kto"
    }

    # a copied (or moved) run directory resumes: the inputs keys do not depend on where it lives
    import shutil

    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(rd, moved)
    assert run(preset, tiny_qwen, moved) == 0
    state = json.loads((moved / "pipeline.json").read_text())
    assert {s["status"] for s in state["_last_run"]["stages"]} == {"skipped"}

    # with kto behind the gate too, the report pairs the gated LASA adapter against it (kto's files
    # stand in for kto+gate here: the table's plumbing, not its numbers, is under test)
    shutil.copytree(moved / "eval" / "kto", moved / "eval" / "kto+gate")
    res = json.loads((moved / "eval" / "kto+gate" / "results.json").read_text())
    res["variant"] = "kto+gate"
    (moved / "eval" / "kto+gate" / "results.json").write_text(json.dumps(res))
    assert main(["report", "--run-dir", str(moved)]) == 0
    lines = (moved / "report.md").read_text().splitlines()
    vs_kto_gate = lines.index(next(line for line in lines if "| ΔASR vs kto+gate [95% CI] |" in line))
    assert lines[vs_kto_gate + 2].startswith("| lasa+gate |") and lines[vs_kto_gate + 3] == ""
    assert "did not answer the same prompts" not in "\n".join(lines)
    assert "Paired by prompt (every variant answered the same prompts)" in "\n".join(lines)
    # `lasa report` on its own keeps the last run's stage times; nothing was retrained by hand
    timings = lines.index("## Timings")
    assert any(line.startswith("| locate | skipped |") for line in lines[timings:])
    assert "Warning" not in "\n".join(lines)

    # a hand-run variant on fewer prompts: the table would compare unlike sets, so the report says so
    kto = moved / "eval" / "kto" / "completions.jsonl"
    kto.write_text("".join(kto.read_text().splitlines(keepends=True)[:-2]))
    assert main(["report", "--run-dir", str(moved)]) == 0
    report = (moved / "report.md").read_text()
    assert "the variants did not answer the same prompts" in report and "kto 4" in report
    assert "Paired by prompt (on the prompts both sides answered)" in report  # not "every variant ..."

    # an adapter retrained by hand after the evaluation: its variants' rows describe the old one
    weights = next((moved / "align" / "lasa" / "adapter").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes() + b" ")
    assert main(["report", "--run-dir", str(moved)]) == 0
    report = (moved / "report.md").read_text()
    assert "`lasa+gate` was generated with another adapter" in report

    # a variant whose results.json is gone (interrupted before judging) is named, not dropped silently
    (moved / "eval" / "kto" / "results.json").unlink()
    assert main(["report", "--run-dir", str(moved)]) == 0
    assert "`kto`: completions but no results.json" in (moved / "report.md").read_text()
    # an unreadable config.yaml costs the per-stage breakdown, not the report or its timings
    (moved / "config.yaml").write_text("stages: [1, 2")
    assert main(["report", "--run-dir", str(moved)]) == 0
    assert "| locate | skipped |" in (moved / "report.md").read_text()
    # an adapter whose training was interrupted (or deleted) since its variant was evaluated
    weights.unlink()
    assert main(["report", "--run-dir", str(moved)]) == 0
    assert "`lasa+gate`'s adapter" in (moved / "report.md").read_text()

    # a variant whose verdicts were deleted leaves the paired comparisons with a word, not silently
    (moved / "eval" / "base+gate" / "judgements_lexicon.jsonl").unlink()
    assert main(["report", "--run-dir", str(moved)]) == 0
    assert (
        "`base+gate`: results.json but no completions.jsonl or verdict file"
        in (moved / "report.md").read_text()
    )
    # valid JSON of another shape: the variant is named
    (moved / "eval" / "base+gate" / "results.json").write_text('{"variant": "base+gate"}')
    capsys.readouterr()
    assert main(["report", "--run-dir", str(moved)]) == 2
    assert "eval/base+gate/results.json is not an evaluation's results" in capsys.readouterr().err


def test_interrupted_run_resumes_without_redoing_finished_stages(preset, tiny_qwen, tmp_path, monkeypatch):
    rd = tmp_path / "run"
    import lasa.align

    real = lasa.align.run_align

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(lasa.align, "run_align", crash)
    assert run(preset, tiny_qwen, rd) == 130
    state = json.loads((rd / "pipeline.json").read_text())
    assert set(state) == {"locate", "interpret"}
    monkeypatch.setattr(lasa.align, "run_align", real)
    assert run(preset, tiny_qwen, rd) == 0
    state = json.loads((rd / "pipeline.json").read_text())
    statuses = {s["stage"]: s["status"] for s in state["_last_run"]["stages"]}
    assert statuses["locate"] == statuses["interpret"] == "skipped"
    assert statuses["align:lasa"] == "ran"


def test_changed_setting_reruns_only_downstream(preset, tiny_qwen, tmp_path):
    rd = tmp_path / "run"
    assert run(preset, tiny_qwen, rd, "--variants", "base", "base+gate") == 0
    changed = dict(PRESET, interpret=dict(PRESET["interpret"], epochs=3))
    p2 = tmp_path / "changed.yaml"
    p2.write_text(yaml.safe_dump(changed))
    assert run(p2, tiny_qwen, rd, "--variants", "base", "base+gate") == 0
    statuses = {
        s["stage"]: s["status"] for s in json.loads((rd / "pipeline.json").read_text())["_last_run"]["stages"]
    }
    assert statuses == {
        "locate": "skipped",
        "interpret": "ran",
        "evaluate:base": "skipped",
        "evaluate:base+gate": "ran",
    }


def test_new_judge_weights_rejudge_without_generating_again(preset, tiny_qwen, tmp_path, monkeypatch):
    """A lasa update that ships other judge weights must not leave the old verdicts in place."""
    import lasa.judges

    rd = tmp_path / "run"
    assert run(preset, tiny_qwen, rd, "--variants", "base") == 0
    completions = rd / "eval" / "base" / "completions.jsonl"
    before = completions.read_bytes()
    real = lasa.judges.judges_fingerprint
    assert run(preset, tiny_qwen, rd, "--variants", "base") == 0  # nothing changed: skipped
    state = json.loads((rd / "pipeline.json").read_text())
    assert {s["stage"]: s["status"] for s in state["_last_run"]["stages"]}["evaluate:base"] == "skipped"
    monkeypatch.setattr(
        lasa.judges, "judges_fingerprint", lambda names: {n: v + "-new" for n, v in real(names).items()}
    )
    import lasa.generate

    def no_generation(*a, **k):
        raise AssertionError("a resumed evaluation generated again")

    monkeypatch.setattr(lasa.generate, "_generate_batch", no_generation)
    assert run(preset, tiny_qwen, rd, "--variants", "base") == 0
    state = json.loads((rd / "pipeline.json").read_text())
    statuses = {s["stage"]: s["status"] for s in state["_last_run"]["stages"]}
    assert statuses["evaluate:base"] == "ran"
    assert statuses["locate"] == statuses["interpret"] == "skipped"
    assert completions.read_bytes() == before


def test_unknown_force_and_variant_are_one_line(capsys, preset, tiny_qwen, tmp_path):
    assert run(preset, tiny_qwen, tmp_path / "r", "--force", "nonsense") == 2
    assert "--force nonsense: no such stage" in capsys.readouterr().err
    assert run(preset, tiny_qwen, tmp_path / "r", "--variants", "base", "bogus") == 2
    assert "unknown variant(s) bogus" in capsys.readouterr().err


def _ran(rd):
    state = json.loads((rd / "pipeline.json").read_text())
    return [s["stage"] for s in state["_last_run"]["stages"] if s["status"] == "ran"]


def test_run_redoes_what_a_missing_file_or_new_weights_need_and_nothing_a_same_result_does(
    preset, tiny_qwen, tmp_path
):
    """A deleted SSI once left every stage "up to date"; new weights under the same --model path
    were not noticed; and a stage redone with the same result (only its timings differ) retrained
    everything after it."""
    import shutil

    from lasa.runs import files_digest

    model = tmp_path / "model"
    shutil.copytree(tiny_qwen, model)
    rd = tmp_path / "run"
    variants = ("--variants", "base", "base+gate")
    assert run(preset, model, rd, *variants) == 0

    (rd / "ssi" / "ssi.safetensors").unlink()
    assert run(preset, model, rd, *variants) == 0
    assert _ran(rd)[0] == "interpret" and (rd / "ssi" / "ssi.safetensors").is_file()
    assert "evaluate:base" not in _ran(rd)  # it does not read the SSI

    # the same bottleneck, other seconds: nothing downstream is redone
    assert run(preset, model, rd, *variants, "--force", "locate") == 0
    assert _ran(rd) == ["locate"]

    # pipeline.json entries written before this check (marker bytes, no weights) still resume
    state = json.loads((rd / "pipeline.json").read_text())
    markers = {"locate": rd / "locate" / "bottleneck.json", "interpret": rd / "ssi" / "metrics.json"}
    markers |= {f"evaluate:{v}": rd / "eval" / v / "results.json" for v in ("base", "base+gate")}
    for name, entry in state.items():
        if name in markers:
            for k in ("digest", "model_weights"):
                entry.pop(k)
            entry["output"] = files_digest([markers[name]])
            entry["inputs"] = {n: files_digest([markers[n]]) for n in entry["inputs"]}
    (rd / "pipeline.json").write_text(json.dumps(state))
    assert run(preset, model, rd, *variants) == 0
    assert _ran(rd) == []
    # ... and take the weights' signature from here on, so a later change of weights is seen
    state = json.loads((rd / "pipeline.json").read_text())
    assert all(state[name].get("model_weights") for name in markers)

    # new weights at the same path: every stage again (the legacy entries above are now rewritten)
    assert run(preset, model, rd, *variants, "--force", "all") == 0
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes())  # same path, a new file (as a re-conversion writes it)
    assert run(preset, model, rd, *variants) == 0
    assert _ran(rd) == ["locate", "interpret", "evaluate:base", "evaluate:base+gate"]

    # the report: a gated variant whose SSI is gone says so; a variant without completions is not
    # "another base model" (its config's path once met the others' weights signature)
    for f in (rd / "eval" / "base").glob("completions*.jsonl"):
        f.unlink()
    (rd / "ssi" / "ssi.safetensors").unlink()
    assert main(["report", "--run-dir", str(rd)]) == 0
    report = (rd / "report.md").read_text()
    assert "`base+gate`'s SSI" in report and "is gone or incomplete" in report
    assert "different base models" not in report


def test_result_digests_ignore_timings_and_where_the_run_lives(tmp_path):
    """A retrained adapter's summary records its path as typed (``runs/quick/...`` or a copy's
    absolute path) and wall seconds: neither is a result. A marker JSON cannot re-encode (a lone
    surrogate escape) is digested by its bytes instead of crashing the run."""
    from lasa.pipeline import Stage, _result_digest

    def digest(marker: str) -> str:
        (tmp_path / "summary.json").write_text(marker)
        return _result_digest(Stage("align:kto", None, tmp_path / "summary.json", [], lambda: None))

    a = digest(
        json.dumps({"training": {"adapter": "runs/quick/align/kto/adapter", "seconds": 1.0}, "loss": 0.5})
    )
    b = digest(
        json.dumps({"training": {"adapter": "/tmp/copy/run/align/kto/adapter", "seconds": 2.0}, "loss": 0.5})
    )
    c = digest(
        json.dumps({"training": {"adapter": "runs/quick/align/kto/adapter", "seconds": 1.0}, "loss": 0.6})
    )
    assert a == b != c
    assert digest('{"layer": "\\ud800"}')  # no UnicodeEncodeError


def test_an_edited_data_file_retrains_and_a_bad_one_fails_before_locate(tiny_qwen, tmp_path):
    """The align stage was keyed on --data's path only, so `lasa run` skipped retraining after the
    file changed; and a bad row (here a MultiJail prompt) surfaced only at align, after locate."""
    from lasa.config import RunConfig
    from lasa.data import load_multijail
    from lasa.errors import LasaError
    from lasa.pipeline import build_stages

    data = tmp_path / "rows.jsonl"
    data.write_text(
        json.dumps({"prompt": "How do I pick a lock?", "chosen": "I can't.", "rejected": "Sure."}) + "\n"
    )
    cfg = tmp_path / "data.yaml"
    cfg.write_text(yaml.safe_dump(dict(PRESET, align=dict(PRESET["align"], data=str(data)))))
    run_cfg = RunConfig(model=str(tiny_qwen), run_dir=str(tmp_path / "run"), variants=["kto"], device=DEVICE)

    def align_key() -> dict:
        return next(s for s in build_stages(run_cfg, str(cfg)) if s.name == "align:kto").extra_key

    first = align_key()
    assert first and first == align_key()
    with open(data, "a") as f:
        f.write(
            json.dumps({"prompt": "How do I bake bread?", "completion": "Knead it.", "label": True}) + "\n"
        )
    assert align_key() != first
    mj = load_multijail(["en"]).texts["en"][0]
    with open(data, "a") as f:
        f.write(json.dumps({"prompt": mj, "completion": "No.", "label": True}) + "\n")
    with pytest.raises(LasaError, match="line 3: the prompt is .*MultiJail"):
        build_stages(run_cfg, str(cfg))
    assert not (tmp_path / "run" / "locate").exists()


def test_run_adopts_stages_run_by_hand_with_the_same_settings(preset, tiny_qwen, tmp_path):
    """`lasa locate` and `lasa interpret` run by hand, then `lasa run` on the same directory: the
    run redid both (no pipeline.json entry), though their outputs were what it would compute."""
    rd = tmp_path / "run"
    common = ["--config", str(preset), "--model", str(tiny_qwen), "--run-dir", str(rd), "--device", DEVICE]
    assert main(["locate", *common]) == 0
    assert main(["interpret", *common]) == 0
    bottleneck = (rd / "locate" / "bottleneck.json").read_bytes()
    assert run(preset, tiny_qwen, rd, "--variants", "base") == 0
    state = json.loads((rd / "pipeline.json").read_text())
    statuses = {s["stage"]: s["status"] for s in state["_last_run"]["stages"]}
    assert statuses == {"locate": "adopted", "interpret": "adopted", "evaluate:base": "ran"}
    assert (
        state["locate"]["adopted"] is True and "adopted" not in state["evaluate:base"]
    )  # bench e2e reads it
    assert (rd / "locate" / "bottleneck.json").read_bytes() == bottleneck
    assert run(preset, tiny_qwen, rd, "--variants", "base") == 0  # then keyed like any other stage
    assert _ran(rd) == []

    # other settings by hand (a smaller locate): redone, and what reads it is redone after it
    other = tmp_path / "other"
    assert main(["locate", *common[:5], str(other), "--device", DEVICE, "--n-queries", "5"]) == 0
    assert main(["interpret", *common[:5], str(other), "--device", DEVICE]) == 0
    assert run(preset, tiny_qwen, other, "--variants", "base") == 0
    assert _ran(other) == ["locate", "interpret", "evaluate:base"]

    # locate redone by hand (with the run's settings) after interpret: the SSI may sit at the old
    # layer, so locate is adopted and interpret redone
    third = tmp_path / "third"
    assert main(["locate", *common[:5], str(third), "--device", DEVICE, "--n-queries", "5"]) == 0
    assert main(["interpret", *common[:5], str(third), "--device", DEVICE]) == 0
    doc = yaml.safe_load((third / "config.yaml").read_text())
    doc["stages"]["interpret"]["recorded_at"] = "2000-01-01T00:00:00+0000"  # clearly before locate
    (third / "config.yaml").write_text(yaml.safe_dump(doc))
    assert main(["locate", *common[:5], str(third), "--device", DEVICE]) == 0
    assert run(preset, tiny_qwen, third, "--variants", "base") == 0
    statuses = {
        s["stage"]: s["status"]
        for s in json.loads((third / "pipeline.json").read_text())["_last_run"]["stages"]
    }
    assert statuses == {"locate": "adopted", "interpret": "ran", "evaluate:base": "ran"}

    # a hand run on other weights under the same --model (recorded signature differs): redone
    fourth = tmp_path / "fourth"
    assert main(["locate", *common[:5], str(fourth), "--device", DEVICE]) == 0
    doc = yaml.safe_load((fourth / "config.yaml").read_text())
    assert doc["stages"]["locate"]["model_weights"]
    doc["stages"]["locate"]["model_weights"] = "weights replaced since"
    (fourth / "config.yaml").write_text(yaml.safe_dump(doc))
    assert run(preset, tiny_qwen, fourth, "--variants", "base") == 0
    assert _ran(fourth)[0] == "locate"


def test_a_hand_run_killed_before_it_recorded_is_not_adopted(preset, tiny_qwen, tmp_path, monkeypatch):
    """A reliability pass: `lasa locate --n-queries 5` by hand, killed after its new bottleneck.json
    and before RUN/config.yaml said so, left the previous run's entry (the preset's settings) beside
    it; `lasa run` adopted the 5-query locate as its own. The entry now carries its marker's digest."""
    import lasa.runs

    rd = tmp_path / "run"
    common = ["--config", str(preset), "--model", str(tiny_qwen), "--run-dir", str(rd), "--device", DEVICE]
    assert main(["locate", *common]) == 0  # the preset's settings, recorded

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(lasa.runs.RunDir, "record", killed)
    assert main(["locate", *common, "--n-queries", "5"]) == 130
    monkeypatch.undo()
    assert json.loads((rd / "locate" / "bottleneck.json").read_text())["n"]["queries"] == 5
    assert run(preset, tiny_qwen, rd, "--variants", "base") == 0
    assert _ran(rd)[0] == "locate"  # redone with the preset's settings, not adopted
    assert json.loads((rd / "locate" / "bottleneck.json").read_text())["n"]["queries"] != 5


def test_a_hand_run_ssi_is_looked_up_under_its_own_name():
    from lasa.config import InterpretConfig, LocateConfig
    from lasa.pipeline import Stage, _record_name

    def stage(name, cfg):
        return Stage(name=name, config=cfg, artefact=Path("x"), needs=[], run=lambda: None)

    assert _record_name(stage("interpret", InterpretConfig(run_dir="r"))) == "interpret"
    assert (
        _record_name(stage("interpret", InterpretConfig(run_dir="r", out_name="ssi_b"))) == "interpret:ssi_b"
    )
    assert _record_name(stage("locate", LocateConfig(run_dir="r"))) == "locate"


def test_an_embedded_model_keys_a_stage_under_any_of_its_names(tmp_path):
    """`lasa run --model qwen2.5-coder-0.5b` on a run made with `--model default` redid every
    stage: the same weights under another spelling."""
    from lasa.config import LocateConfig
    from lasa.pipeline import _portable

    run_dir = str(tmp_path / "r")
    keys = {
        json.dumps(_portable(LocateConfig(model=m, run_dir=run_dir), run_dir), sort_keys=True)
        for m in ("default", "qwen2.5-coder-0.5b", "Qwen2.5-Coder-0.5B-Instruct")
    }
    assert len(keys) == 1 and '"model": "default"' in keys.pop()
    other = _portable(LocateConfig(model="qwen2.5-coder-1.5b", run_dir=run_dir), run_dir)
    assert other["model"] == "qwen2.5-coder-1.5b"
    assert _portable(LocateConfig(model="some/hub-id", run_dir=run_dir), run_dir)["model"] == "some/hub-id"


def test_a_setting_kto_does_not_read_does_not_retrain_it(preset, tiny_qwen, tmp_path):
    """Changing LASA's conditioning (ρ, the conditioning text) in a preset retrained the KTO
    baseline too, which reads neither; a setting KTO reads (β) still retrains it."""
    rd = tmp_path / "run"
    assert run(preset, tiny_qwen, rd, "--variants", "kto") == 0
    changed = dict(PRESET, align=dict(PRESET["align"], rho_safety=0.9, conditioning_text="Refuse this."))
    p2 = tmp_path / "conditioning.yaml"
    p2.write_text(yaml.safe_dump(changed))
    assert run(p2, tiny_qwen, rd, "--variants", "kto") == 0
    assert _ran(rd) == []
    p3 = tmp_path / "beta.yaml"
    p3.write_text(yaml.safe_dump(dict(changed, align=dict(changed["align"], beta=0.2))))
    assert run(p3, tiny_qwen, rd, "--variants", "kto") == 0
    assert _ran(rd) == ["align:kto", "evaluate:kto"]


def test_a_run_keyed_by_the_previous_lasa_is_not_redone(preset, tiny_qwen, tmp_path, monkeypatch):
    """Keys now normalise model names and unused settings; a run keyed before that (a KTO stage with
    a non-default ρ, which the new key reads at its default) must still be recognised, not redone."""
    import lasa.pipeline as pl

    changed = dict(PRESET, align=dict(PRESET["align"], rho_safety=0.9))
    p2 = tmp_path / "rho.yaml"
    p2.write_text(yaml.safe_dump(changed))
    rd = tmp_path / "run"
    real = pl._portable

    def previous(config, run_dir, unused=frozenset(), normalise=True, **_):  # how an older release keyed
        return real(config, run_dir, unused, normalise=False)

    monkeypatch.setattr(pl, "_portable", previous)
    assert run(p2, tiny_qwen, rd, "--variants", "kto") == 0
    monkeypatch.undo()
    assert run(p2, tiny_qwen, rd, "--variants", "kto") == 0
    assert _ran(rd) == []


@pytest.mark.skipif(DEVICE != "cpu", reason="the spellings compared are a CPU machine's")
def test_the_same_numerics_spelled_another_way_redo_nothing(preset, tiny_qwen, tmp_path, monkeypatch):
    """`--device auto` and `--device cpu` (or `--dtype auto` and `float32`) on a CPU machine are the
    same computation; the stage keys compared the spellings, so switching reran every stage and
    trained both adapters again. A run keyed by the spelling (before this rule) is still recognised."""
    import lasa.pipeline as pl
    from lasa.config import LocateConfig

    rd = tmp_path / "run"
    a = pl._portable(LocateConfig(run_dir=str(rd), device="auto"), str(rd))
    b = pl._portable(LocateConfig(run_dir=str(rd), device="cpu", dtype="float32"), str(rd))
    assert a == b and (a["device"], a["dtype"]) == ("cpu", "float32")
    assert pl._portable(LocateConfig(run_dir=str(rd), dtype="bfloat16"), str(rd))["dtype"] == "bfloat16"

    real = pl._portable

    def spelled(config, run_dir, unused=frozenset(), normalise=True, numerics=True):
        return real(config, run_dir, unused, normalise, numerics=False)

    monkeypatch.setattr(pl, "_portable", spelled)
    assert run(preset, tiny_qwen, rd, "--variants", "kto") == 0  # keyed as `--device cpu`, spelled
    monkeypatch.undo()
    assert run(preset, tiny_qwen, rd, "--variants", "kto") == 0
    assert _ran(rd) == []
    argv = [
        "run",
        "--config",
        str(preset),
        "--model",
        str(tiny_qwen),
        "--run-dir",
        str(rd),
        "--variants",
        "kto",
    ]
    assert main([*argv, "--device", "auto", "--dtype", "float32"]) == 0
    assert _ran(rd) == []
    assert main([*argv, "--device", "cpu", "--dtype", "bfloat16"]) == 0  # other numerics: redone
    assert "locate" in _ran(rd)


def test_unused_align_settings_by_method():
    from lasa.config import AlignConfig

    kto = AlignConfig(run_dir="r", method="kto").unused_settings()
    assert {"rho_safety", "rho_general", "conditioning_text", "on_policy_judge"} <= kto and "beta" not in kto
    assert "beta" in AlignConfig(run_dir="r", method="sft").unused_settings()
    lasa = AlignConfig(run_dir="r", method="lasa").unused_settings()
    assert "rho_safety" not in lasa and "conditioning_text" not in lasa
    on_policy = AlignConfig(run_dir="r", method="kto", rows="on_policy").unused_settings()
    assert "conditioning_text" not in on_policy and "on_policy_judge" not in on_policy


def test_a_run_stopped_before_it_wrote_anything_leaves_no_run_directory(
    preset, tiny_qwen, tmp_path, monkeypatch
):
    """The stage commands removed a run directory they created and left empty; `lasa run` did not."""
    import lasa.hidden

    def stopped(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(lasa.hidden, "extract_states", stopped)
    rd = tmp_path / "new-run"
    assert run(preset, tiny_qwen, rd) == 130
    assert not rd.exists(), sorted(str(p.relative_to(rd)) for p in rd.rglob("*"))
