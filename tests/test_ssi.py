from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lasa.cli import main
from lasa.config import InterpretConfig
from lasa.data.safety import (
    evaluation_prompts,
    mgsm,
    overlaps_multijail,
    training_prompts,
    validate_train_langs,
    xquad,
    xstest,
)
from lasa.errors import LasaError
from lasa.interpret.calibrate import calibrate_threshold
from lasa.interpret.train import group_split, train_ssi
from lasa.models import load_model
from lasa.ssi import SSI, SafetySemanticInterpreter
from tiny import DEVICE


def blobs(n=200, d=16, seed=0, shift=2.0):
    g = torch.Generator().manual_seed(seed)
    y = (torch.arange(n) % 2).float()
    x = torch.randn(n, d, generator=g) + shift * y[:, None] * torch.linspace(1, 0, d)
    x[:, 0] *= 300.0  # a "massive activation" channel: the scaler must cope with it
    return x, y


def cfg(**kw):
    base = {"model": "unused", "epochs": 30, "patience": 5, "seed": 0}
    return InterpretConfig(**(base | kw))


def test_ssi_learns_separable_data_and_calibrates():
    x, y = blobs()
    xv, yv = blobs(seed=1)
    _module, log, threshold, bacc = train_ssi(x, y, xv, yv, cfg())
    assert bacc > 0.95 and 0.3 <= threshold <= 0.7
    assert log[-1]["val_auroc"] > 0.98
    assert len(log) <= 30


def test_a_validation_split_without_both_classes_or_finite_states_is_one_line():
    x, y = blobs()
    xv, yv = blobs(seed=1)
    with pytest.raises(LasaError, match="validation split has 0 prompts.*raise --cap"):
        train_ssi(x, y, xv[:0], yv[:0], cfg())
    with pytest.raises(LasaError, match="not both classes"):
        train_ssi(x, y, xv[yv == 1], yv[yv == 1], cfg())
    xv[0, 3] = float("inf")
    with pytest.raises(LasaError, match="input states hold inf or nan.*--dtype float32"):
        train_ssi(x, y, xv, yv, cfg())


def test_training_is_deterministic_under_a_seed():
    x, y = blobs()
    xv, yv = blobs(seed=1)
    a = train_ssi(x, y, xv, yv, cfg(seed=3))[0].state_dict()
    b = train_ssi(x, y, xv, yv, cfg(seed=3))[0].state_dict()
    c = train_ssi(x, y, xv, yv, cfg(seed=4))[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_threshold_is_the_validation_optimum():
    labels = np.array([1] * 50 + [0] * 50)
    probs = np.concatenate([np.linspace(0.62, 0.9, 50), np.linspace(0.1, 0.58, 50)])
    t, bacc = calibrate_threshold(probs, labels)
    assert bacc == 1.0 and 0.58 <= t < 0.62
    # a threshold outside the grid's optimum region is never chosen over a better one
    probs2 = np.concatenate([np.linspace(0.35, 0.9, 50), np.linspace(0.0, 0.33, 50)])
    t2, _ = calibrate_threshold(probs2, labels)
    assert 0.33 <= t2 < 0.35


def test_architecture_matches_the_paper():
    m = SafetySemanticInterpreter(8)
    kinds = [type(layer).__name__ for layer in m.net]
    assert kinds == ["Linear", "LayerNorm", "GELU", "Dropout", "Linear"]
    assert m.net[0].out_features == 8 and m.net[-1].out_features == 1
    assert SafetySemanticInterpreter(8, hidden=3).net[0].out_features == 3


def test_group_split_keeps_translations_together():
    pool, _ = training_prompts(["en", "zh"], cap=50, seed=0)
    tr, va = group_split(pool, 0.2, seed=0)
    assert set(tr).isdisjoint(va) and len(tr) + len(va) == len(pool)
    ids_tr = {pool[i].id for i in tr}
    assert not ids_tr & {pool[i].id for i in va}
    assert 0.1 < len(va) / len(pool) < 0.3


def test_training_data_recipe():
    pool, summary = training_prompts(["en", "zh"], cap=100, seed=0)
    assert {p.lang for p in pool} == {"en", "zh"}
    assert not any(p.source == "multijail" for p in pool)
    assert not any(overlaps_multijail(p.text) for p in pool[::7])
    cells = {}
    for p in pool:
        key = (p.lang, p.label, p.form, p.source == "hard_negatives")
        cells[key] = cells.get(key, 0) + 1
    assert max(cells.values()) <= 100
    # lasa's hard negatives are benign rows of their own cell in both languages, never XSTest
    hard = [p for p in pool if p.source == "hard_negatives"]
    assert {p.lang for p in hard} == {"en", "zh"} and all(p.label == 0 for p in hard) and len(hard) >= 400
    assert not {p.text for p in hard} & {r["prompt"] for r in xstest()}
    no_hard, _ = training_prompts(["en", "zh"], cap=100, seed=0, with_hard_negatives=False)
    assert len(no_hard) == len(pool) - len(hard)
    # both classes have questions and statements in both languages (form balance)
    for lang in ("en", "zh"):
        for label in (0, 1):
            assert cells.get((lang, label, "question", False), 0) >= 50
            assert cells.get((lang, label, "statement", False), 0) >= 50
    assert summary["removed"]  # near-duplicates of MultiJail were found and dropped
    with pytest.raises(LasaError, match="--train-langs ko: no harmful training data"):
        validate_train_langs(["en", "ko"])


def test_evaluation_sets_are_disjoint_from_training_halves():
    assert not {p.text for p in xquad("zh", "train")} & {p.text for p in xquad("zh", "eval")}
    assert not {p.text for p in mgsm("sw", "train")} & {p.text for p in mgsm("sw", "eval")}
    ev, src = evaluation_prompts(n_harmful=10, n_benign=10)
    assert (
        src["it"].startswith("flores") and src["ko"].startswith("flores") and src["jv"].startswith("flores")
    )
    assert src["vi"] == "xquad" and src["sw"] == "mgsm"
    harmful_ids = {lang: [p.id for p in ev if p.lang == lang and p.label] for lang in ("en", "jv")}
    assert harmful_ids["en"] == harmful_ids["jv"] == [f"multijail:{i}" for i in range(10)]


def test_the_states_cache_is_missed_when_the_weights_under_the_same_path_change(
    tiny_qwen, tmp_path, monkeypatch
):
    """Replacing a checkpoint in place (same --model path) must not train the SSI on the old
    weights' cached states, nor give its scores.json the new model's key."""
    import shutil

    import lasa.hidden
    from tiny import build_model

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_qwen, model_dir)
    extracted: list[int] = []
    real = lasa.hidden.extract_states
    monkeypatch.setattr(
        lasa.hidden,
        "extract_states",
        lambda lm, texts, *a, **k: extracted.append(len(texts)) or real(lm, texts, *a, **k),
    )
    argv = ["interpret", "--model", str(model_dir), "--run-dir", str(tmp_path / "run"), "--layer", "2"]
    argv += [
        "--cap",
        "10",
        "--eval-n-harmful",
        "4",
        "--eval-n-benign",
        "4",
        "--epochs",
        "2",
        "--calibration",
        "none",
    ]
    assert main(argv) == 0
    first = sum(extracted)
    assert main(argv) == 0
    assert sum(extracted) == first  # the same weights: every state came from the cache
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    build_model("qwen2", vocab, seed=7).save_pretrained(model_dir)  # other weights, same path
    assert main(argv) == 0
    assert sum(extracted) == 2 * first


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory, tiny_qwen):
    run = tmp_path_factory.mktemp("run")
    rc = main(
        [
            "interpret",
            "--model",
            str(tiny_qwen),
            "--run-dir",
            str(run),
            "--layer",
            "2",
            "--sweep",
            "--sweep-every",
            "2",
            "--sweep-seeds",
            "2",
            "--cap",
            "20",
            "--eval-n-harmful",
            "8",
            "--eval-n-benign",
            "8",
            "--epochs",
            "3",
        ]
    )
    assert rc == 0
    return run


def test_interpret_writes_the_artefact_contract(interpreted):
    ssi_dir = interpreted / "ssi"
    meta = json.loads((ssi_dir / "ssi.json").read_text())
    for key in (
        "model",
        "model_fingerprint",
        "layer",
        "index_convention",
        "pooling",
        "architecture",
        "threshold",
        "train_languages",
        "data_recipe",
    ):
        assert key in meta, key
    assert (
        meta["architecture"]["d_model"] == 32 and meta["architecture"]["hidden"] == 32 and meta["layer"] == 2
    )
    m = json.loads((ssi_dir / "metrics.json").read_text())
    assert set(m["per_language"]) == {"en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv"}
    for row in m["per_language"].values():
        assert {"auroc", "accuracy", "tpr", "fpr", "n_harmful", "n_benign"} <= set(row)
        assert row["n_harmful"] == 8
    assert m["macro_seen"]["languages"] == ["en", "zh"] and len(m["macro_unseen"]["languages"]) == 8
    xs = m["xstest"]
    assert xs["n_safe"] == 250 and xs["n_unsafe"] == 200
    # rates are counts over those prompts (k / 250, k / 200), not some other normalisation
    assert xs["fpr_safe"] * 250 == pytest.approx(round(xs["fpr_safe"] * 250))
    assert xs["tpr_unsafe"] * 200 == pytest.approx(round(xs["tpr_unsafe"] * 200))
    assert "form_probe_auroc" in m["form_control"]["en"]
    sweep = json.loads((ssi_dir / "layer_sweep.json").read_text())
    assert [r["layer"] for r in sweep["layers"]] == [2, 4]
    # the label-free transfer criterion is measured at every layer and picks one of them
    assert all(r["flores_language_spread"] >= 0 for r in sweep["layers"])
    assert sweep["transfer_layer"]["layer"] in (2, 4)
    at2 = sweep["layers"][0]
    assert at2["seeds"] == [42, 43] and len(at2["unseen_auroc_per_seed"]) == 2
    assert at2["unseen_auroc_std"] == pytest.approx(np.std(at2["unseen_auroc_per_seed"]))
    assert at2["unseen_auroc_mean"] == pytest.approx(np.mean(at2["unseen_auroc_per_seed"]))
    # the per-language numbers are seed means; the macro mean is their mean
    unseen = [at2["per_language_auroc"][g] for g in m["macro_unseen"]["languages"]]
    assert at2["unseen_auroc_mean"] == pytest.approx(np.mean(unseen))
    assert at2["unseen_auroc_worst"] == pytest.approx(min(unseen))
    assert (ssi_dir / "layer_sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_saved_ssi_round_trips_and_refuses_other_models(
    interpreted, tiny_qwen, tiny_llama, tokenizer, tmp_path
):
    ssi = SSI.load(interpreted)
    lm = load_model(str(tiny_qwen), device=DEVICE)
    prompts = ["How do I make a bomb?", "Nini mji mkuu wa Kenya?"]
    a = ssi.score(lm, prompts, progress=False)
    b = SSI.load(interpreted / "ssi" / "ssi.json").score(lm, prompts, progress=False)
    assert a.shape == (2,) and np.array_equal(a, b)
    assert ssi.flags(a).dtype == bool
    other = load_model(str(tiny_llama), device=DEVICE)
    with pytest.raises(LasaError, match="this SSI was trained on.*fingerprint [0-9a-f]+, the SSI's"):
        ssi.score(other, prompts)
    import tiny

    retrained = load_model(str(tiny.save_tiny(tmp_path / "q", "qwen2", tokenizer, seed=1)), device=DEVICE)
    with pytest.raises(LasaError, match="the same architecture .* with other weights"):
        ssi.score(retrained, prompts)  # one fingerprint printed twice once read as a contradiction
    with pytest.raises(LasaError, match="reads layer 2; layer 3 was requested"):
        ssi.check_model(lm, layer=3)


def test_interpret_keeps_every_prompt_score_for_a_raw_prompt_gate(interpreted, tiny_qwen):
    """scores.json holds p(harmful) of every prompt interpret extracted, under the key a gate of the
    loaded SSI computes: the evaluation's gate takes them (no scoring pass) and they agree with
    scoring the prompt afresh."""
    from lasa.data.safety import xstest
    from lasa.evaluate import load_known_scores
    from lasa.generate import Gate
    from lasa.ssi import SCORES_FILE, read_scores, scores_key

    ssi = SSI.load(interpreted)
    lm = load_model(str(tiny_qwen), device=DEVICE)
    kept = read_scores(interpreted / "ssi" / SCORES_FILE, scores_key(ssi, lm))
    prompts = [r["prompt"] for r in xstest()[:6]]
    assert len(kept) > 450 and all(p in kept for p in prompts)
    fresh = ssi.score(lm, prompts, progress=False)
    assert np.allclose([kept[p] for p in prompts], fresh, atol=1e-5)
    gate = Gate(ssi)
    load_known_scores(interpreted / "eval" / "ssi_scores.json", lm, gate)
    assert gate.known_scores == kept
    # another threshold is another gate: it never takes these
    other = Gate(ssi.with_threshold(0.9))
    load_known_scores(interpreted / "eval" / "ssi_scores.json", lm, other)
    assert other.known_scores == {}


def test_interpret_bad_inputs_are_one_line(capsys, tiny_qwen, tmp_path):
    rc = main(["interpret", "--model", str(tiny_qwen), "--run-dir", str(tmp_path), "--layer", "9"])
    err = capsys.readouterr().err
    assert rc == 2 and "--layer 9 is out of range; this model has layers 1..4" in err
    rc = main(["interpret", "--model", str(tiny_qwen), "--run-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "run `lasa locate" in err
    rc = main(
        ["interpret", "--model", str(tiny_qwen), "--run-dir", str(tmp_path), "--train-langs", "en", "sw"]
    )
    assert rc == 2 and "no harmful training data outside MultiJail" in capsys.readouterr().err
    assert not (tmp_path / "ssi" / "metrics.json").exists()


def test_ssi_on_tiny_model_states_of_separable_prompts(tiny_qwen):
    """A random tiny model still encodes the last word; the SSI must pick that up well above chance."""
    from lasa.data import load_sib200
    from lasa.hidden import extract_states

    lm = load_model(str(tiny_qwen), device=DEVICE)
    sents = load_sib200(["en", "sw"]).texts
    texts = [
        s.rstrip(".") + end for col in sents.values() for s in col[:120] for end in (" weapon", " garden")
    ]
    y = torch.tensor([float(i % 2 == 0) for i in range(len(texts))])
    x = extract_states(lm, texts, layers=[2], progress=False)[:, 0]
    n = len(texts) // 2
    module, _, threshold, _ = train_ssi(x[:n], y[:n], x[n : n + 80], y[n : n + 80], cfg())
    ssi = SSI(module, {"layer": 2, "threshold": threshold})
    acc = float(((ssi.predict_proba(x[n + 80 :]) > threshold) == y[n + 80 :].bool().numpy()).mean())
    assert acc > 0.9


def test_with_threshold_changes_the_flags_not_the_saved_ssi():
    from lasa.errors import LasaError
    from lasa.ssi import SSI, SafetySemanticInterpreter

    ssi = SSI(SafetySemanticInterpreter(8, 4, 0.0), {"threshold": 0.5, "layer": 2})
    strict = ssi.with_threshold(0.9)
    probs = np.array([0.3, 0.6, 0.95])
    assert list(ssi.flags(probs)) == [False, True, True]
    assert list(strict.flags(probs)) == [False, False, True]
    assert ssi.threshold == 0.5 and strict.meta["calibrated_threshold"] == 0.5
    with pytest.raises(LasaError, match="must be in \\(0, 1\\)"):
        ssi.with_threshold(1.5)


def test_out_name_is_honoured_by_the_loaders_and_the_report(interpreted, tiny_qwen):
    from lasa.interpret import load_metrics
    from lasa.report import build_report
    from lasa.ssi import SSI

    rc = main(
        [
            "interpret", "--model", str(tiny_qwen), "--run-dir", str(interpreted), "--layer", "4",
            "--out-name", "ssi_l4", "--cap", "20", "--eval-n-harmful", "8", "--eval-n-benign", "8",
            "--epochs", "2",
        ]
    )  # fmt: skip
    assert rc == 0
    assert load_metrics(interpreted, "ssi_l4")["layer"] == 4 and load_metrics(interpreted)["layer"] == 2
    assert SSI.load(interpreted / "ssi_l4").layer == 4
    with pytest.raises(LasaError, match="--out-name nope"):
        load_metrics(interpreted, "nope")
    report = (interpreted / "report.md").read_text() if build_report(interpreted) else ""
    assert "(SSI, ssi_l4/)" in report and "ssi_l4/metrics.json" in report
    assert report.index("(SSI)") < report.index("(SSI, ssi_l4/)")  # the default SSI first


def test_a_retrained_ssi_never_shows_an_earlier_sweep(interpreted, tiny_qwen, tmp_path):
    """Retraining without --sweep left layer_sweep.png / .json of the earlier SSI in its folder,
    and the report showed them as this SSI's sweep."""
    import shutil

    from lasa.interpret import load_metrics
    from lasa.report import build_report

    run = tmp_path / "run"
    shutil.copytree(interpreted, run)
    assert (run / "ssi" / "layer_sweep.png").is_file()
    rc = main(
        [
            "interpret", "--model", str(tiny_qwen), "--run-dir", str(run), "--layer", "2", "--cap", "20",
            "--eval-n-harmful", "8", "--eval-n-benign", "8", "--epochs", "2", "--spread-seeds", "1",
        ]
    )  # fmt: skip
    assert rc == 0 and "layer_sweep" not in load_metrics(run)
    assert not (run / "ssi" / "layer_sweep.png").exists() and not (run / "ssi" / "layer_sweep.json").exists()
    # a folder written by an older lasa (figure kept, metrics without the sweep): not shown either
    shutil.copy(interpreted / "ssi" / "layer_sweep.png", run / "ssi" / "layer_sweep.png")
    shutil.copy(interpreted / "ssi" / "layer_sweep.json", run / "ssi" / "layer_sweep.json")
    build_report(run)
    report = (run / "report.md").read_text()
    assert "Layer sweep" not in report and "layer_sweep.png" not in report


def test_states_cache_extracts_only_new_prompts_and_layers(tiny_qwen, tmp_path, monkeypatch):
    import lasa.hidden
    from lasa.config import InterpretConfig
    from lasa.interpret.stage import _cached_states
    from lasa.models import load_model

    lm = load_model(str(tiny_qwen), device=DEVICE)
    cfg = InterpretConfig(model=str(tiny_qwen), run_dir=str(tmp_path))
    calls, real = [], lasa.hidden.extract_states

    def spy(lm, texts, **kw):
        calls.append((len(texts), tuple(kw["layers"])))
        return real(lm, texts, **kw)

    monkeypatch.setattr(lasa.hidden, "extract_states", spy)
    a = _cached_states(tmp_path, "k", ["one prompt", "two prompts"], [2], lm, cfg)
    b = _cached_states(tmp_path, "k", ["two prompts", "a third", "one prompt"], [2], lm, cfg)
    assert calls == [(2, (2,)), (1, (2,))]  # only the new prompt was run
    assert torch.equal(b[2][0], a[2][1]) and torch.equal(b[2][2], a[2][0])
    c = _cached_states(tmp_path, "k", ["two prompts", "a third", "one prompt"], [2, 3], lm, cfg)
    assert calls[-1] == (3, (3,)) and torch.equal(c[2], b[2])  # only the new layer was run
    _cached_states(tmp_path, "k", ["two prompts", "a third", "one prompt"], [2, 3], lm, cfg)
    assert len(calls) == 3  # everything cached
    # the same prompts in another order, a new layer: the kept layers follow the new order too
    d = _cached_states(tmp_path, "k", ["one prompt", "a third", "two prompts"], [4], lm, cfg)
    assert calls[-1] == (3, (4,))
    n = len(calls)
    e = _cached_states(tmp_path, "k", ["one prompt", "a third", "two prompts"], [2, 3, 4], lm, cfg)
    assert len(calls) == n and torch.equal(e[4], d[4])  # nothing new was run
    for layer in (2, 3):
        assert torch.equal(e[layer], c[layer][torch.tensor([2, 1, 0])])
    _cached_states(tmp_path, "other settings", ["one prompt"], [2], lm, cfg)
    assert calls[-1] == (1, (2,))  # other model / pooling / format: nothing reused


def _two_language_states(n: int = 200, seed: int = 0):
    """States where one direction is language (A or B) and another is harm; B's benign text
    scores higher on the harm direction (the per-language shift the calibration should remove)."""
    g = torch.Generator().manual_seed(seed)
    d = 16
    lang_dir, harm_dir = torch.zeros(d), torch.zeros(d)
    lang_dir[0], harm_dir[1] = 3.0, 1.0
    x = torch.randn(4 * n, d, generator=g) * 0.3
    lang = torch.tensor([0] * (2 * n) + [1] * (2 * n))
    harm = torch.tensor(([0] * n + [1] * n) * 2)
    x += lang[:, None] * lang_dir + harm[:, None] * harm_dir * 2 + lang[:, None] * harm_dir * 1.5
    return x, lang, harm


def test_language_calibration_removes_a_language_shift_without_harm_labels():
    from lasa.data.safety import Prompt
    from lasa.interpret.calibrate import fit_language_calibration

    x, lang, harm = _two_language_states()
    module = SafetySemanticInterpreter(x.shape[1], 8, 0.0)
    module.fit_scaler(x)
    with torch.no_grad():  # a fixed linear read-out of the harm direction
        module.net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 1))
        module.net[0].weight.zero_()
        module.net[0].weight[0, 1] = 2 * float(module.std[1])  # logit = 2 (x_harm - 1)
        module.net[0].bias.fill_(2 * (float(module.mean[1]) - 1.0))
    ssi = SSI(module, {"layer": 1, "threshold": 0.5})
    benign = (harm == 0).nonzero().squeeze(1)  # calibration sees benign text only, no harm label
    prompts = [
        Prompt("t", "en" if lang[i] == 0 else "sw", 0, "flores", "statement", f"f:{i % 200}") for i in benign
    ]
    cal, report = fit_language_calibration(ssi, x[benign], prompts, ["en"], seed=0)
    assert report["offsets_logit"]["en"] == 0.0 and report["offsets_logit"]["sw"] > 1.0
    assert report["language_id_heldout_accuracy"] > 0.95
    assert report["n_per_language"] == 200  # f:0..199 in each language: analyses rebuild the set from it
    raw = ssi.predict_proba(x)
    calibrated = SSI(module, ssi.meta, cal)
    fixed = calibrated.predict_proba(x)
    sw_benign = ((lang == 1) & (harm == 0)).numpy()
    sw_harm = ((lang == 1) & (harm == 1)).numpy()
    assert (raw[sw_benign] > 0.5).mean() > 0.9 and (fixed[sw_benign] > 0.5).mean() < 0.1  # false alarms go
    assert (fixed[sw_harm] > 0.5).mean() > 0.9  # and harm is still flagged
    en_benign, en_harm = ((lang == 0) & (harm == 0)).numpy(), ((lang == 0) & (harm == 1)).numpy()
    assert (
        np.median(np.abs(raw[en_benign] - fixed[en_benign])) < 0.02
    )  # the training language keeps its scale
    assert (fixed[en_benign] > 0.5).mean() < 0.05
    assert (fixed[en_harm] > 0.5).mean() > 0.9
    assert np.array_equal(calibrated.without_calibration().predict_proba(x), raw)


def test_a_calibrated_ssi_round_trips(tmp_path):
    from lasa.ssi import LanguageCalibration

    x, _, _ = _two_language_states(20)
    module = SafetySemanticInterpreter(x.shape[1], 8, 0.0)
    module.fit_scaler(x)
    arch = {"d_model": x.shape[1], "hidden": 8, "dropout": 0.0}
    cal = LanguageCalibration(
        ["en", "sw"], torch.randn(2, x.shape[1]), torch.zeros(2), torch.tensor([0.0, 2.0])
    )
    meta = {"layer": 1, "threshold": 0.5, "architecture": arch, "calibration": {"method": "flores"}}
    SSI(module, meta, cal).save(tmp_path)
    back = SSI.load(tmp_path)
    assert back.calibration is not None and back.calibration.languages == ["en", "sw"]
    assert np.allclose(back.predict_proba(x), SSI(module, meta, cal).predict_proba(x))
    assert np.allclose(back.with_threshold(0.7).predict_proba(x), back.predict_proba(x))
    (tmp_path / "calibration.safetensors").unlink()
    with pytest.raises(LasaError, match="calibration.safetensors is missing"):
        SSI.load(tmp_path)


def test_transfer_layer_is_the_least_language_spread_among_accurate_layers():
    from lasa.interpret.sweep import transfer_layer

    rows = [
        {
            "layer": 10,
            "val_balanced_accuracy": 0.95,
            "flores_language_spread": 0.9,
            "unseen_auroc_mean": 0.80,
        },
        {
            "layer": 15,
            "val_balanced_accuracy": 0.96,
            "flores_language_spread": 0.5,
            "unseen_auroc_mean": 0.85,
        },
        {
            "layer": 20,
            "val_balanced_accuracy": 0.95,
            "flores_language_spread": 0.3,
            "unseen_auroc_mean": 0.90,
        },
        {
            "layer": 24,
            "val_balanced_accuracy": 0.80,
            "flores_language_spread": 0.1,
            "unseen_auroc_mean": 0.70,
        },
    ]
    t = transfer_layer(rows)
    assert t["layer"] == 20  # 24 spreads least but is not accurate enough on the seen languages
    assert t["spread_vs_unseen_auroc_spearman"] == pytest.approx(0.2)
    assert transfer_layer([{**rows[0], "flores_language_spread": None}]) is None


def test_saved_prompts_and_cached_states_rebuild_what_interpret_extracted(interpreted):
    """Analyses re-score an SSI from its state cache without the model: the prompt sets rebuilt
    from ssi.json + metrics.json are exactly the stage's (every text has a cached row, in the
    cache's order), and asking for a prompt or a layer the stage never extracted is one line."""
    from lasa.config import InterpretConfig
    from lasa.errors import LasaError
    from lasa.interpret.stage import CachedStates, saved_prompts

    ssi_dir = interpreted / "ssi"
    prompts = saved_prompts(ssi_dir, calibration_n=InterpretConfig.calibration_n)
    cache = CachedStates(ssi_dir)
    assert len(prompts.texts) == len(cache.row)
    assert cache.rows(prompts.texts).tolist() == list(range(len(prompts.texts)))
    assert 2 in cache.layers
    assert cache.layer(2).shape[0] == len(prompts.texts)
    assert len({p.lang for p in prompts.evaluation}) == 10
    assert any(p.source == "hard_negatives" for p in prompts.pool)
    with pytest.raises(LasaError, match="1 prompts are not in"):
        cache.rows(["a prompt lasa interpret never saw"])
    with pytest.raises(LasaError, match="has no layer 99"):
        cache.layer(99)
    with pytest.raises(LasaError, match="run `lasa interpret`"):
        saved_prompts(interpreted / "no-such-ssi")


def test_interpret_reports_the_seed_spread_of_its_headline_figures(interpreted):
    """metrics.json's seed_spread: the saved SSI is the first seed (same threshold), every further
    seed re-splits and retrains, and min <= mean <= max for each figure."""
    from lasa.config import InterpretConfig

    m = json.loads((interpreted / "ssi" / "metrics.json").read_text())
    spread = m["seed_spread"]
    cfg = InterpretConfig(run_dir=str(interpreted))
    assert [r["seed"] for r in spread["per_seed"]] == [cfg.seed + k for k in range(cfg.spread_seeds)]
    assert spread["per_seed"][0]["threshold"] == m["threshold"]
    for key in ("threshold", "xstest_fpr_safe", "xstest_tpr_unsafe", "unseen_auroc", "seen_auroc"):
        assert spread["min"][key] <= spread["mean"][key] <= spread["max"][key]
        assert all(0 <= r[key] <= 1 for r in spread["per_seed"])
    assert m["timings"]["seed_spread_seconds"] >= 0


def test_interpret_without_a_seed_spread(tmp_path, tiny_qwen):
    """--spread-seeds 1 trains the one SSI and writes seed_spread null; 0 is refused in one line."""
    rc = main(
        [
            "interpret", "--model", str(tiny_qwen), "--run-dir", str(tmp_path), "--layer", "2",
            "--cap", "10", "--eval-n-harmful", "4", "--eval-n-benign", "4", "--epochs", "1",
            "--spread-seeds", "1", "--calibration", "none",
        ]
    )  # fmt: skip
    assert rc == 0
    assert json.loads((tmp_path / "ssi" / "metrics.json").read_text())["seed_spread"] is None
    assert main(["interpret", "--run-dir", str(tmp_path), "--layer", "2", "--spread-seeds", "0"]) != 0


def test_an_ensemble_flags_on_its_members_mean_margin_and_round_trips(tmp_path):
    """SSIEnsemble's logit is the mean of (member logit - logit(member threshold)): a member's own
    threshold is margin 0, so the ensemble flags at p 0.5; saved and loaded, it scores the same."""
    from lasa.ssi import SSIEnsemble

    torch.manual_seed(0)
    x = torch.randn(40, 6)
    members = [SafetySemanticInterpreter(6, 4, 0.0).eval() for _ in range(3)]
    thresholds = [0.3, 0.5, 0.7]
    ens = SSIEnsemble.of(members, thresholds, x)
    with torch.no_grad():
        want = torch.stack(
            [m(x) - float(np.log(t / (1 - t))) for m, t in zip(members, thresholds, strict=True)]
        ).mean(0)
        assert torch.allclose(ens(x), want, atol=1e-6)
    meta = {
        "layer": 2,
        "threshold": 0.5,
        "architecture": {"d_model": 6, "hidden": 4, "dropout": 0.0, "ensemble": 3},
    }
    ssi = SSI(ens, meta)
    flags = ssi.flags(ssi.predict_proba(x))
    assert np.array_equal(flags, want.numpy() > 0) and 0 < flags.sum() < len(x)
    ssi.save(tmp_path)
    back = SSI.load(tmp_path)
    assert isinstance(back.module, SSIEnsemble) and len(back.module.members) == 3
    assert np.allclose(back.predict_proba(x), ssi.predict_proba(x)) and back.digest == ssi.digest


def test_interpret_ensemble_saves_its_members_and_gates_with_them(tmp_path, tiny_qwen):
    """--ensemble 3: the members are seeds seed..seed+2 (the seed spread's first three fits, not
    refitted), ssi.json lists them, the saved SSI is the ensemble at threshold 0.5, and it loads."""
    from lasa.ssi import SSIEnsemble

    argv = [
        "interpret", "--model", str(tiny_qwen), "--run-dir", str(tmp_path), "--layer", "2",
        "--cap", "10", "--eval-n-harmful", "4", "--eval-n-benign", "4", "--epochs", "2",
        "--calibration", "none", "--spread-seeds", "4", "--ensemble", "3",
    ]  # fmt: skip
    assert main(argv) == 0
    meta = json.loads((tmp_path / "ssi" / "ssi.json").read_text())
    metrics = json.loads((tmp_path / "ssi" / "metrics.json").read_text())
    assert meta["threshold"] == 0.5 and meta["architecture"]["ensemble"] == 3
    assert [m["seed"] for m in meta["members"]] == [42, 43, 44]
    spread = {r["seed"]: r["threshold"] for r in metrics["seed_spread"]["per_seed"]}
    assert [m["threshold"] for m in meta["members"]] == [spread[s] for s in (42, 43, 44)]
    assert metrics["ensemble"]["size"] == 3
    ssi = SSI.load(tmp_path)
    assert isinstance(ssi.module, SSIEnsemble)
    assert main(["interpret", "--run-dir", str(tmp_path), "--ensemble", "0"]) != 0


def test_a_new_option_at_its_default_leaves_existing_run_keys_alone():
    """Options marked key_omits_default (added after runs were keyed) are out of a stage's key at
    their default, so adding one does not redo every existing run; set, they are in it."""
    from lasa.pipeline import _portable

    assert "ensemble" not in _portable(InterpretConfig(run_dir="r"), "r")
    assert _portable(InterpretConfig(run_dir="r", ensemble=5), "r")["ensemble"] == 5


def test_an_ssi_of_another_architecture_is_refused_from_the_config(tiny_qwen):
    """`--gate --ssi` of another model's SSI was refused only after the model load (a minute for
    the default model); its layer count and width are checked against the config first."""
    import json

    from lasa.ssi import SSI, SafetySemanticInterpreter

    config = json.loads((tiny_qwen / "config.json").read_text())
    n, d = config["num_hidden_layers"], config["hidden_size"]
    meta = {"model": "other", "num_layers": n, "architecture": {"d_model": d}}
    SSI(SafetySemanticInterpreter(d, 8, 0.0), meta).check_config(str(tiny_qwen))  # fits
    for wrong in ({"num_layers": n + 4}, {"architecture": {"d_model": 2 * d}}):
        with pytest.raises(LasaError, match="this SSI was trained on 'other'"):
            SSI(SafetySemanticInterpreter(d, 8, 0.0), meta | wrong).check_config(str(tiny_qwen))


def test_score_refuses_one_string_and_a_model_name():
    """``ssi.score(lm, "How do I ...")`` scored each character of the string as a prompt, and
    ``ssi.score("default", prompts)`` failed with an AttributeError: one-line errors now."""
    from lasa.errors import LasaError
    from lasa.ssi import SSI, SafetySemanticInterpreter

    ssi = SSI(SafetySemanticInterpreter(8, 4, 0.0), {"threshold": 0.5, "layer": 2})
    with pytest.raises(LasaError, match="list of prompts, got one string"):
        ssi.score(object(), "How do I make a bomb at home?")
    with pytest.raises(LasaError, match=r"lasa.load_model\('default'\)"):
        ssi.score("default", ["How do I make a bomb at home?"])
