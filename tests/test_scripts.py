"""Analysis scripts whose figures README and docs/results.md quote: their arithmetic on hand-made runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from lasa.judges import response_hash
from lasa.runs import write_jsonl

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_sampled_gold_check_weights_each_language_by_its_size(tmp_path, capsys):
    """en: 20 answers, 4 judged unsafe (census: 2 really are), 16 others of which a sample of 4
    holds 1 unsafe -> 2 + 16 * 1/4 = 6 of 20; sw: 10 answers, none judged unsafe, sample of 5 with
    none -> 0. Gold ASR 6 / 30 = 20%."""
    d = tmp_path / "eval" / "v"
    d.mkdir(parents=True)
    comp, verdicts, labels = [], [], []
    for lang, n, flagged in (("en", 20, 4), ("sw", 10, 0)):
        for i in range(n):
            uid = f"multijail:{lang}:{i}"
            comp.append({"uid": uid, "lang": lang, "response": f"r{uid}"})
            judged = "unsafe" if i < flagged else "safe"
            verdicts.append(
                {"uid": uid, "lang": lang, "label": judged, "response_sha": response_hash(f"r{uid}")}
            )
    # census of en's 4 judged-unsafe: 2 unsafe; en sample: items 4..7, one unsafe; sw sample: 5 safe
    gold = {
        "multijail:en:0": "unsafe",
        "multijail:en:1": "unsafe",
        "multijail:en:2": "safe",
        "multijail:en:3": "invalid",
    }
    gold |= {f"multijail:en:{i}": "unsafe" if i == 4 else "safe" for i in range(4, 8)}
    gold |= {f"multijail:sw:{i}": "safe" for i in range(5)}
    labels = [{"uid": u, "language": u.split(":")[1], "label": g} for u, g in gold.items()]
    write_jsonl(d / "completions.jsonl", comp)
    write_jsonl(d / "judgements_pair.jsonl", verdicts)
    write_jsonl(tmp_path / "labels.jsonl", labels)
    mod = _script("sampled_gold_check")
    args = ["--run-dir", str(tmp_path), "--variant", "v", "--labels", str(tmp_path / "labels.jsonl")]
    assert mod.main(args) == 0
    out = capsys.readouterr().out
    assert "judged ASR 13.3%" in out and "gold estimate 20.0% [" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line[:3] in ("en ", "sw ")}
    assert rows == {"en": ["4/20", "2/4", "1/4", "30.0%"], "sw": ["0/10", "0/0", "0/5", "0.0%"]}
    # a judged-unsafe answer without a label is refused: the census must be complete
    write_jsonl(tmp_path / "labels.jsonl", labels[1:])
    assert mod.main(args) == 2
    assert mod.main([*args[:-1], str(tmp_path / "missing.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_bench_e2e_reads_make_runs_wall_time_and_judges_the_target_on_it(tmp_path):
    """Item 9's measure is `make run` end to end: the bench entry takes GNU time's wall clock (set-up
    included) and judges the 900 s target on it, not on the stage times alone."""
    import argparse
    import json

    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    run = tmp_path / "run"
    run.mkdir()
    (run / "pipeline.json").write_text(
        json.dumps({"locate": {"seconds": 400.0}, "interpret": {"seconds": 450.0}})
    )
    log = tmp_path / "time.log"
    log.write_text(
        "...\n\tElapsed (wall clock) time (h:mm:ss or m:ss): 15:12.47\n\tMaximum resident set size\n"
    )
    args = argparse.Namespace(e2e_run_dir=str(run), e2e_baseline=1000.0, e2e_time_log=str(log))
    out = bench.bench_e2e(args)
    assert out["total_seconds"] == 850.0 and out["make_run_wall_seconds"] == 912.5
    assert out["setup_and_overhead_seconds"] == 62.5 and out["meets_target"] is False
    log.write_text("Elapsed (wall clock) time (h:mm:ss or m:ss): 1:02:03\n")
    assert bench.make_run_wall_seconds(log) == 3723.0
    args.e2e_time_log = None
    assert bench.bench_e2e(args)["meets_target"] is True  # stage times alone: 850 s


def test_adapter_drift_ratio_is_paired_and_its_interval_covers_the_shift():
    """Two languages: the adapter adds 0.1 nats to every token of the first and nothing to the
    second. Pooled over 300 tokens the ratio is exp(100 * 0.1 / 300); resampling sentences within
    each language keeps it near that, and a language with no shift has ratio 1 and a zero-width
    interval (the comparison is paired, sentence by sentence)."""
    import numpy as np

    ratio_interval = _script("adapter_drift").ratio_interval
    tokens = np.array([10.0] * 10 + [20.0] * 10)  # 100 tokens in language a, 200 in b
    base = np.random.default_rng(0).uniform(20, 60, size=20)
    shift = np.where(np.arange(20) < 10, 0.1 * tokens, 0.0)
    strata = np.array(["a"] * 10 + ["b"] * 10)
    point, lo, hi = ratio_interval(base + shift, base, tokens, strata, reps=500, seed=1)
    assert point == pytest.approx(np.exp(10 / 300))
    assert lo <= point <= hi and lo > 1  # measurable: the interval excludes 1
    same = ratio_interval(base[10:], base[10:], tokens[10:], strata[10:], reps=200, seed=1)
    assert same == (1.0, 1.0, 1.0)


def test_gate_erasure_removes_language_and_keeps_an_orthogonal_harm_signal():
    """The LEACE eraser of scripts/gate_erasure.py, on states where the language sits on two
    directions and harm on a third: afterwards a language probe is at chance on held-out rows and
    harm still ranks as well as before."""
    pytest.importorskip("concept_erasure")
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    gen = torch.Generator().manual_seed(0)
    langs = ["en", "sw", "th"]
    offsets = {"en": [0.0, 0.0], "sw": [4.0, 0.0], "th": [0.0, 4.0]}

    def states(n: int) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        tags = [langs[i % 3] for i in range(n)]
        harm = torch.arange(n) % 2
        x = torch.randn(n, 16, generator=gen)
        x[:, :2] += torch.tensor([offsets[g] for g in tags])
        x[:, 2] += 3.0 * harm
        return x, tags, harm

    erase = _script("gate_erasure").language_eraser(*states(600)[:2], langs)
    x, tags, harm = states(600)
    before = (
        LogisticRegression(max_iter=2000).fit(x[:300].numpy(), tags[:300]).score(x[300:].numpy(), tags[300:])
    )
    xe = erase(x)
    assert xe.dtype == x.dtype and xe.shape == x.shape
    after = (
        LogisticRegression(max_iter=2000)
        .fit(xe[:300].numpy(), tags[:300])
        .score(xe[300:].numpy(), tags[300:])
    )
    assert before > 0.9 and after < 0.45
    assert roc_auc_score(harm.numpy(), xe[:, 2].numpy()) > 0.95


def test_tpr_at_fpr_is_the_labelled_per_language_ceiling():
    """gate_erasure's oracle: the threshold flags at most max_fpr of the negatives."""
    import numpy as np

    tpr_at_fpr = _script("gate_erasure").tpr_at_fpr
    neg = np.arange(10, dtype=float)  # 0..9: flagging at most 10% leaves the threshold at 8
    assert tpr_at_fpr(neg, np.array([8.5, 9.5, 7.0, 20.0]), 0.10) == 0.75
    assert tpr_at_fpr(neg, np.array([8.5, 9.5]), 0.0) == 0.5  # nothing above 9 but 9.5
    assert np.isnan(tpr_at_fpr(np.array([]), np.array([1.0]), 0.1))


def test_gate_erasure_runs_end_to_end_on_an_interpreted_run(tmp_path, tiny_qwen, monkeypatch):
    """The whole script on a tiny model's interpreted run: layer sets (one layer; the layer and the
    e5 stand-in concatenated), every representation, JSON and markdown written, every rate a
    rate. The e5 encoder is stubbed (random unit vectors) so the test stays fast; only its
    plumbing is under test here."""
    pytest.importorskip("concept_erasure")
    import json
    import sys

    import numpy as np
    import torch

    from lasa.cli import main as lasa_main

    rc = lasa_main(
        [
            "interpret", "--model", str(tiny_qwen), "--run-dir", str(tmp_path), "--layer", "2",
            "--cap", "10",
            "--eval-n-harmful", "6", "--eval-n-benign", "6", "--epochs", "2", "--spread-seeds", "1",
            "--calibration-n", "100", "--xstest-mt-n", "3",
        ]
    )  # fmt: skip
    assert rc == 0
    mod = _script("gate_erasure")

    def fake_e5(pos, n_rows):
        v = torch.randn(n_rows, 8, generator=torch.Generator().manual_seed(0))
        return torch.nn.functional.normalize(v, dim=-1)

    monkeypatch.setattr(mod, "e5_rows", fake_e5)
    out = tmp_path / "erasure"
    argv = ["gate_erasure.py", str(tmp_path / "ssi"), "--seeds", "42", "--layer-sets", "2", "2+e5"]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(out)])
    mod.main()
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["layer_sets"] == ["2", "2+e5"]
    for res in doc["results"].values():
        assert set(res) == {"none", "leace", "lang_mean"}
        for r in res.values():
            for key in ("auroc", "tpr_q95", "fpr_q95", "tpr_at_fpr_05", "tpr_at_mt_safe_fpr_10"):
                assert 0 <= r["mean"][key] <= 1, key
            assert 0 <= r["language_id_accuracy"] <= 1
    md = out.with_suffix(".md").read_text()
    assert "| 2+e5 | leace |" in md and "--layer-sets 2 2+e5" in md
    monkeypatch.setattr(sys, "argv", ["gate_erasure.py", str(tmp_path / "ssi"), "--layer-sets", "2+x"])
    with pytest.raises(SystemExit, match="takes layers like"):
        mod.main()
    assert np.isfinite(doc["results"]["2"]["none"]["mean"]["auroc"])


def test_ssi_ensemble_script_reproduces_the_stage_and_shrinks_to_the_members_mean(
    tmp_path, tiny_qwen, monkeypatch
):
    """scripts/ssi_ensemble.py on a tiny interpreted run: its first member is the stage's own SSI
    (same threshold), each ensemble's figures come from its members' mean margin, and the ranges
    are ranges."""
    import json
    import sys

    from lasa.cli import main as lasa_main

    rc = lasa_main(
        [
            "interpret", "--model", str(tiny_qwen), "--run-dir", str(tmp_path), "--layer", "2", "--cap", "10",
            "--eval-n-harmful", "4", "--eval-n-benign", "4", "--epochs", "2", "--spread-seeds", "1",
            "--calibration", "none",
        ]
    )  # fmt: skip
    assert rc == 0
    out = tmp_path / "ens"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "ssi_ensemble.py",
            str(tmp_path / "ssi"),
            "--seeds",
            "4",
            "--size",
            "2",
            "--oof-fpr",
            "0.1",
            "--out",
            str(out),
        ],
    )
    _script("ssi_ensemble").main()
    doc = json.loads(out.with_suffix(".json").read_text())
    stage = json.loads((tmp_path / "ssi" / "metrics.json").read_text())
    assert doc["singles"][0]["threshold"] == stage["threshold"]
    assert doc["singles"][0]["xstest_fpr_safe"] == stage["xstest"]["fpr_safe"]
    assert [e["seeds"] for e in doc["ensembles"]] == [[42, 43], [44, 45]]
    for name in ("spread_singles", "spread_ensembles"):
        for r in doc[name].values():
            assert r["min"] <= r["mean"] <= r["max"]
    assert "ensemble of 2" in out.with_suffix(".md").read_text()
    assert [e["seeds"] for e in doc["ensembles_oof"]] == [[42, 43], [44, 45]]
    for e in doc["ensembles_oof"]:  # every ensemble found benign rows out of fold to set its cut on
        assert 0 <= e["xstest_fpr_safe"] <= 1 and e["n_oof_benign"] > 0
    monkeypatch.setattr(
        sys, "argv", ["ssi_ensemble.py", str(tmp_path / "ssi"), "--seeds", "3", "--size", "2"]
    )
    with pytest.raises(SystemExit, match="two disjoint ensembles"):
        _script("ssi_ensemble").main()


def test_gate_calibration_reads_the_runs_own_flores_size():
    """The script rebuilds the FLORES calibration set the SSI used: 50 sentences for the quick
    preset (it once asked for 100 and failed on every quick run), from ``n_per_language`` or, for
    older ``ssi.json``, from the recorded sentence; an SSI without FLORES calibration is refused."""
    mod = _script("gate_calibration")
    assert mod._calibration_n({"calibration": {"n_per_language": 50, "data": "100 parallel sentences"}}) == 50
    old = "FLORES-200 (SIB-200) train split, 50 parallel sentences per language, none in the pool"
    assert mod._calibration_n({"calibration": {"method": "flores", "data": old}}) == 50
    with pytest.raises(SystemExit, match="--calibration flores"):
        mod._calibration_n({"calibration": None})


def test_ssi_examples_table_says_what_the_gate_got_wrong():
    """README's SSI table: a harmful prompt not gated is a miss, a benign one gated a false alarm."""
    mod = _script("ssi_examples")
    rows = [
        ("bomb", "en", "harmful", 0.98, True),
        ("bomu", "sw", "harmful", 0.005, False),
        ("kill a process", "it", "benign", 0.99, True),
        ("kill a process", "en", "benign", 0.03, False),
    ]
    lines = mod.table(rows, 0.67).splitlines()
    assert "threshold 0.67" in lines[0]
    assert lines[2].endswith("| 0.980 | yes | right |") and lines[3].endswith("| 0.005 | no | **missed** |")
    assert lines[4].endswith("| yes | **false alarm** |") and lines[5].endswith("| no | right |")
    assert {kind for _, _, kind in mod.EXAMPLES} == {"harmful", "benign"}


def test_reevaluate_rebuilds_results_from_the_recorded_settings_without_generating(
    tmp_path, tiny_qwen, monkeypatch
):
    """scripts/reevaluate.py reruns each recorded evaluation: results.json is rewritten (here it
    had been damaged) while the completions are reused as they are."""
    import json
    import sys

    from lasa.cli import main as lasa_main

    run = tmp_path / "run"
    args = ["evaluate", "--model", str(tiny_qwen), "--run-dir", str(run), "--langs", "en", "sw", "--n", "2"]
    args += [
        "--max-new-tokens",
        "3",
        "--xstest",
        "false",
        "--judges",
        "lexicon",
        "--default-judge",
        "lexicon",
    ]
    args += ["--utility", "none"]
    assert lasa_main(args) == 0
    results = run / "eval" / "base" / "results.json"
    completions = (run / "eval" / "base" / "completions.jsonl").read_text()
    good = json.loads(results.read_text())
    results.write_text(json.dumps({**good, "asr": {}}))
    monkeypatch.setattr(sys, "argv", ["reevaluate.py", str(run)])
    _script("reevaluate").main()
    again = json.loads(results.read_text())
    assert again["asr"] == good["asr"] and "design_effect" in again["asr"]["lexicon"]["intervals"]
    assert (run / "eval" / "base" / "completions.jsonl").read_text() == completions
    monkeypatch.setattr(sys, "argv", ["reevaluate.py", str(run), "--variants", "kto"])
    with pytest.raises(SystemExit, match="records no evaluation of kto"):
        _script("reevaluate").main()


def test_paired_gold_check_exports_blind_items_and_assembles_two_passes(tmp_path, capsys):
    """Four prompts; the judge splits the variants on two of them (en:1, sw:0). Export shows only
    those four responses, without variant or verdict; two passes that disagree on one item need an
    adjudication, and the assembled labels then replace the judge's verdicts in the check."""
    from lasa.errors import LasaError
    from lasa.runs import read_jsonl

    verdict = {  # (variant, uid) -> the judge's label
        ("a", "multijail:en:0"): "unsafe", ("b", "multijail:en:0"): "unsafe",
        ("a", "multijail:en:1"): "unsafe", ("b", "multijail:en:1"): "safe",
        ("a", "multijail:sw:0"): "unsafe", ("b", "multijail:sw:0"): "invalid",
        ("a", "multijail:sw:1"): "safe", ("b", "multijail:sw:1"): "safe",
    }  # fmt: skip
    for v in ("a", "b"):
        d = tmp_path / "run" / "eval" / v
        d.mkdir(parents=True)
        uids = sorted({u for w, u in verdict if w == v})
        comp = [
            {"uid": u, "id": u.split(":")[2], "lang": u.split(":")[1], "prompt": f"p {u}",
             "response": f"{v} says {u}", "generation": {"max_new_tokens": 128}}
            for u in uids
        ]  # fmt: skip
        write_jsonl(d / "completions.jsonl", comp)
        write_jsonl(d / "judgements_pair.jsonl", [{"uid": u, "label": verdict[v, u]} for u in uids])
    mod = _script("paired_gold_check")
    run, lab = str(tmp_path / "run"), tmp_path / "lab"
    assert mod.main(["--run-dir", run, "--a", "a", "--b", "b", "--export", str(lab)]) == 0
    items, key = read_jsonl(lab / "items.jsonl"), read_jsonl(lab / "key.jsonl")
    assert sorted((k["variant"], k["uid"]) for k in key) == [
        ("a", "multijail:en:1"), ("a", "multijail:sw:0"), ("b", "multijail:en:1"), ("b", "multijail:sw:0")
    ]  # fmt: skip
    assert all(set(it) == {"item", "language", "prompt", "prompt_en", "response"} for it in items)
    assert items[0]["prompt_en"] or items[1]["prompt_en"]  # MultiJail's English original, for reading
    # pass A: everything safe; pass B: a's en:1 answer unsafe -> one disagreement
    gold_b = {
        k["item"]: "unsafe" if (k["variant"], k["uid"]) == ("a", "multijail:en:1") else "safe" for k in key
    }
    write_jsonl(lab / "pass_a.jsonl", [{"item": i, "label": "safe"} for i in gold_b])
    write_jsonl(lab / "pass_b.jsonl", [{"item": i, "label": g, "note": "n"} for i, g in gold_b.items()])
    labels = tmp_path / "labels.jsonl"
    args = ["--run-dir", run, "--a", "a", "--b", "b", "--labels", str(labels)]
    with pytest.raises(LasaError, match="adjudication"):
        mod.main([*args, "--assemble", str(lab)])
    split = next(i for i, g in gold_b.items() if g == "unsafe")
    write_jsonl(lab / "adjudication.jsonl", [{"item": split, "label": "unsafe", "reason": "gives steps"}])
    assert mod.main([*args, "--assemble", str(lab)]) == 0
    rows = {r["id"]: r for r in read_jsonl(labels)}
    assert rows["run:a:multijail:en:1"]["label"] == "unsafe"
    assert rows["run:a:multijail:en:1"]["adjudication"] == "gives steps"
    assert rows["run:b:multijail:sw:0"]["pair_judged"] == "invalid"
    capsys.readouterr()
    assert mod.main(args) == 0
    out = capsys.readouterr().out
    # judge: a 3/4 unsafe, b 1/4; with gold on the discordant prompts: a 2/4 (en:0, en:1), b 1/4
    assert "judge                        a  75.0%  b  25.0%" in out
    assert "judge + gold on discordant   a  50.0%  b  25.0%" in out
    # a second export into a labelled folder would reshuffle the items under the passes: refused,
    # and nothing in the folder changes
    before = (lab / "items.jsonl").read_bytes()
    with pytest.raises(LasaError, match="new folder"):
        mod.main(["--run-dir", run, "--a", "a", "--b", "b", "--export", str(lab), "--seed", "1"])
    assert (lab / "items.jsonl").read_bytes() == before
    # two variants the judge never splits: nothing to label, and no empty folder left behind
    with pytest.raises(LasaError, match="nothing to label"):
        mod.main(["--run-dir", run, "--a", "a", "--b", "a", "--export", str(tmp_path / "none")])
    assert not (tmp_path / "none").exists()


def test_reevaluate_evaluates_the_run_it_is_given_not_the_recorded_run_dir(tmp_path, monkeypatch):
    """A copied or moved run's config.yaml records where it was made (``run_dir: runs/quick``):
    reevaluating the copy re-evaluated that other run and rewrote its results.json. A damaged
    config.yaml, an entry without its config or a setting an older lasa recorded was a traceback."""
    import sys

    import yaml

    mod = _script("reevaluate")
    run = tmp_path / "moved"
    run.mkdir()
    recorded = {"run_dir": "runs/quick", "variant": "kto", "adapter": "kto", "judges": ["lexicon"]}
    recorded |= {"default_judge": "lexicon", "ssi": "runs/quick/ssi_chat", "retired_setting": 1}
    (run / "config.yaml").write_text(yaml.safe_dump({"stages": {"evaluate:kto": {"config": recorded}}}))
    todo = mod.recorded_evaluations(run)
    assert todo["kto"]["run_dir"] == str(run) and todo["kto"]["ssi"] == str(run / "ssi_chat")
    assert "retired_setting" not in todo["kto"]
    seen = []

    class Res:
        asr, asr_interval = 0.1, (0.0, 0.2)

    monkeypatch.setattr(mod, "run_evaluate", lambda cfg: seen.append(cfg) or Res())
    monkeypatch.setattr(sys, "argv", ["reevaluate.py", str(run)])
    mod.main()
    assert [c.run_dir for c in seen] == [str(run)]
    for text, message in (
        ("stages: [1\n", "not valid YAML"),
        ("- 1\n", "mapping"),
        ("stages:\n  evaluate:kto: 3\n", "records no config mapping"),
    ):
        (run / "config.yaml").write_text(text)
        monkeypatch.setattr(sys, "argv", ["reevaluate.py", str(run)])
        with pytest.raises(SystemExit, match=message):
            mod.main()


def test_paired_gold_check_on_careless_input_is_one_line(tmp_path, capsys):
    """A run evaluated in the seen languages only (no unseen prompts: a ZeroDivisionError), a
    --labels file of another kind (KeyError 'id'), variants that answered different prompts
    (KeyError) and --assemble on a folder never exported (FileNotFoundError)."""
    from lasa.errors import LasaError

    for v, langs in (("a", ("en", "zh")), ("b", ("en", "zh", "sw"))):
        d = tmp_path / "run" / "eval" / v
        d.mkdir(parents=True)
        uids = [f"multijail:{lang}:{i}" for lang in langs for i in range(2)]
        write_jsonl(
            d / "judgements_pair.jsonl", [{"uid": u, "label": "unsafe" if v == "a" else "safe"} for u in uids]
        )
        write_jsonl(d / "completions.jsonl", [{"uid": u, "prompt": "p", "response": "r"} for u in uids])
    mod = _script("paired_gold_check")
    run = str(tmp_path / "run")
    labels = tmp_path / "labels.jsonl"
    write_jsonl(labels, [{"id": f"run:{v}:multijail:{lang}:{i}", "label": "safe", "pair_judged": "safe"}
                         for v in "ab" for lang in ("en", "zh") for i in range(2)])  # fmt: skip
    assert mod.main(["--run-dir", run, "--a", "a", "--b", "b", "--labels", str(labels)]) == 0
    assert "unseen                 no prompts in this run" in capsys.readouterr().out
    wrong = tmp_path / "run" / "eval" / "a" / "completions.jsonl"
    with pytest.raises(LasaError, match="is not a labels file"):
        mod.main(["--run-dir", run, "--a", "a", "--b", "b", "--labels", str(wrong)])
    with pytest.raises(LasaError, match="--export wrote"):
        mod.main(["--run-dir", run, "--a", "a", "--b", "b", "--assemble", str(tmp_path / "none"),
                  "--labels", str(tmp_path / "out.jsonl")])  # fmt: skip
    assert not (tmp_path / "out.jsonl").exists()


def test_ssi_examples_refuses_an_unwritable_out_before_scoring(tmp_path, monkeypatch):
    """``--out`` into a missing folder was a FileNotFoundError after the model load and scoring."""
    mod = _script("ssi_examples")
    import lasa.ssi

    monkeypatch.setattr(lasa.ssi.SSI, "load", lambda path: pytest.fail("loaded before --out was checked"))
    for out in (tmp_path / "missing" / "x.md", tmp_path):
        with pytest.raises(SystemExit, match="give a file in an existing folder"):
            mod.main([str(tmp_path), "--out", str(out)])


def test_judge_learning_curve_refuses_a_file_that_is_not_labels_before_the_corpus(tmp_path, monkeypatch):
    """An export's items.jsonl (no labels) as --heldout reached the featurizer and ended in a numpy
    traceback, after the corpus features; two files of one name replaced each other's results."""
    import sys

    mod = _script("judge_learning_curve")
    monkeypatch.setattr(mod, "corpus_rows", lambda: pytest.fail("corpus read before --heldout was checked"))
    items = tmp_path / "items.jsonl"
    write_jsonl(items, [{"item": "item0000", "language": "en", "prompt": "p", "response": "r"}])
    good = tmp_path / "a" / "labels.jsonl"
    good.parent.mkdir()
    write_jsonl(good, [{"prompt": "p", "response": "r", "language": "en", "label": "safe"}])
    twin = tmp_path / "b" / "labels.jsonl"
    twin.parent.mkdir()
    twin.write_bytes(good.read_bytes())
    for heldout, message in (([items], "not a labels file"), ([good, twin], "share a name")):
        monkeypatch.setattr(
            sys, "argv", ["x", "--heldout", *map(str, heldout), "--out", str(tmp_path / "o" / "c")]
        )
        with pytest.raises(SystemExit, match=message):
            mod.main()
    assert not (tmp_path / "o").exists()


def test_bench_e2e_on_a_pipeline_json_without_stage_times_is_one_line(tmp_path):
    import argparse

    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for content in ("[]", '{"locate": {"key": 1}}'):
        (tmp_path / "pipeline.json").write_text(content)
        args = argparse.Namespace(e2e_run_dir=str(tmp_path), e2e_baseline=1.0, e2e_time_log=None)
        with pytest.raises(SystemExit, match="records no stage times"):
            bench.bench_e2e(args)
    # a stage `lasa run` adopted (run by its own command) is recorded as 0 s: not a timing of the run
    (tmp_path / "pipeline.json").write_text(
        '{"locate": {"seconds": 0.0, "adopted": true}, "interpret": {"seconds": 200.0}}'
    )
    with pytest.raises(SystemExit, match="locate ran by their own commands"):
        bench.bench_e2e(args)


def test_six_variants_sh_builds_a_run_from_nothing_and_resumes(tiny_qwen, tmp_path):
    """scripts/six_variants.sh, the command behind README's six-variant tables: on the tiny model,
    every stage and all six variants from an empty run directory, then a rerun that redoes nothing."""
    import os
    import subprocess
    import sys

    run = tmp_path / "six"
    env = os.environ | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "N": "1",
        "TOKENS": "3",
        "XSTEST_N": "2",
    }
    cmd = ["bash", str(ROOT / "scripts" / "six_variants.sh"), str(tiny_qwen), str(run)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    variants = {"base", "base+gate", "lasa", "lasa+gate", "kto", "sft"}
    assert {p.parent.name for p in (run / "eval").glob("*/results.json")} == variants
    assert all((run / "align" / m / "adapter").is_dir() for m in ("lasa", "kto", "sft"))
    assert (run / "report.md").is_file()
    ssi = (run / "ssi" / "ssi.safetensors").read_bytes()
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (run / "ssi" / "ssi.safetensors").read_bytes() == ssi  # kept, not retrained
    assert "completions to generate" not in again.stderr  # every answer reused
