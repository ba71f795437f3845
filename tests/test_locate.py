from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lasa.locate import choose_bottleneck, score_layers


def planted(n_q=12, langs=("en", "zh", "sw", "jv"), n_layers=6, d=48, semantic_layer=4, seed=0):
    """Points whose layer ``semantic_layer`` clusters by meaning and every other layer by language."""
    rng = np.random.default_rng(seed)
    q_centre = rng.normal(size=(n_q, d))
    l_centre = rng.normal(size=(len(langs), d))
    states = np.zeros((n_q * len(langs), n_layers, d))
    query = np.repeat(np.arange(n_q)[None, :], len(langs), 0).ravel()
    lang = np.repeat(np.array(langs), n_q)
    for layer in range(n_layers):
        for i, (q, lg) in enumerate(zip(query, lang)):
            li = langs.index(lg)
            if layer + 1 == semantic_layer:
                v = 3 * q_centre[q] + 0.5 * l_centre[li]
            else:
                v = 3 * l_centre[li] + 0.5 * q_centre[q]
            states[i, layer] = v + 0.3 * rng.normal(size=d)
    return torch.tensor(states, dtype=torch.float32), query, lang


def test_planted_semantic_layer_is_found():
    states, query, lang = planted(semantic_layer=4)
    rows = score_layers(states, query, lang, pivot="en", n_bootstrap=200, seed=0)
    assert [r["layer"] for r in rows] == [1, 2, 3, 4, 5, 6]
    layer, within = choose_bottleneck(rows)
    assert layer == 4 and within == [4]
    best = rows[3]
    assert best["silhouette_semantic"] > 0.5 > best["silhouette_language"]
    assert best["score_ci"][0] <= best["score"] <= best["score_ci"][1]
    assert best["retrieval_accuracy"] == 1.0
    assert best["adjusted_cosine"] > max(r["adjusted_cosine"] for r in rows if r["layer"] != 4)
    assert set(best["retrieval_per_language"]) == {"zh", "sw", "jv"}
    # language-bound layers: translations are not retrieved, and the score is negative
    assert all(r["score"] < 0 for r in rows if r["layer"] != 4)


def test_scores_do_not_depend_on_point_order():
    states, query, lang = planted(semantic_layer=2, seed=3)
    perm = np.random.default_rng(0).permutation(len(query))
    a = score_layers(states, query, lang, n_bootstrap=0)
    b = score_layers(states[perm], query[perm], lang[perm], n_bootstrap=0)
    for ra, rb in zip(a, b):
        assert ra["score"] == pytest.approx(rb["score"], abs=1e-9)
        assert ra["adjusted_cosine"] == pytest.approx(rb["adjusted_cosine"], abs=1e-9)


def test_bootstrap_interval_narrows_with_more_queries():
    def width(n_q):
        states, query, lang = planted(n_q=n_q, semantic_layer=1, seed=1)
        r = score_layers(states[:, :1], query, lang, n_bootstrap=300, seed=0)[0]
        return r["score_ci"][1] - r["score_ci"][0]

    assert width(40) < width(6)


def test_flat_curve_reports_many_layers_within_ci():
    rows = [
        {"layer": i, "score": s, "score_ci": [s - 0.1, s + 0.1]}
        for i, s in enumerate([0.0, 0.05, 0.02, -0.5], 1)
    ]
    layer, within = choose_bottleneck(rows)
    assert layer == 2 and within == [1, 2, 3]


def _locate_cfg(tiny_qwen, run_dir, **kw):
    from lasa.config import LocateConfig

    base = dict(model=str(tiny_qwen), run_dir=str(run_dir), n_queries=6, n_bootstrap=5, langs=["en", "sw"])
    return LocateConfig(**(base | kw))


def test_an_interrupted_rerun_leaves_the_previous_artefacts_together(tiny_qwen, tmp_path, monkeypatch):
    import lasa.locate as loc

    loc.run_locate(_locate_cfg(tiny_qwen, tmp_path))
    out = tmp_path / "locate"
    before = {f: (out / f).read_bytes() for f in ("bottleneck.json", "layer_scores.json", "layer_scores.png")}

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(loc.stage, "plot_tsne", killed)  # after layer_scores.json/.png were (re)written
    with pytest.raises(KeyboardInterrupt):
        loc.run_locate(_locate_cfg(tiny_qwen, tmp_path, n_bootstrap=7, seed=1))
    for f, blob in before.items():
        assert (out / f).read_bytes() == blob, f"{f} changed without its marker"
    assert not list(out.glob(".staging-*"))


def test_a_failed_locate_leaves_no_stage_directory(tiny_qwen, tmp_path, monkeypatch):
    import lasa.locate as loc
    import lasa.locate.stage
    import lasa.models

    def broken(*a, **k):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(lasa.models, "load_model", broken)
    with pytest.raises(RuntimeError):
        loc.run_locate(_locate_cfg(tiny_qwen, tmp_path / "run"))
    assert not (tmp_path / "run" / "locate").exists()


def test_the_states_cache_is_missed_when_the_weights_under_the_same_path_change(
    tiny_qwen, tmp_path, monkeypatch
):
    """The cache key holds the checkpoint's weight files (names, sizes, times), not just --model:
    re-converting or replacing a model in place must not reuse states of the old weights."""
    import shutil

    import lasa.hidden
    import lasa.locate as loc
    from tiny import build_model

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_qwen, model_dir)
    calls = []
    real = lasa.hidden.extract_states
    monkeypatch.setattr(lasa.hidden, "extract_states", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = _locate_cfg(model_dir, tmp_path / "run")
    loc.run_locate(cfg)
    loc.run_locate(cfg)
    assert len(calls) == 1  # the second run reused the states
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    build_model("qwen2", vocab, seed=7).save_pretrained(model_dir)  # other weights, same path
    loc.run_locate(cfg)
    assert len(calls) == 2


def test_a_model_passed_to_a_stage_function_must_be_the_configs(tiny_qwen, tiny_llama, tmp_path):
    """``run_locate(LocateConfig(run_dir=...), lm)`` with the config's model left at another one
    cached the passed model's states under the config's model and credited its bottleneck to it (a
    later run without ``lm`` reused them): refused in one line, before any folder exists."""
    import lasa.locate as loc
    from lasa.config import EvaluateConfig, InterpretConfig
    from lasa.errors import LasaError
    from lasa.evaluate import run_evaluate
    from lasa.interpret import run_interpret
    from lasa.models import load_model

    lm = load_model(str(tiny_qwen), device="cpu")
    run = tmp_path / "run"
    with pytest.raises(LasaError, match="is not the config's model"):
        loc.run_locate(_locate_cfg(tiny_llama, run), lm)
    assert not run.exists()
    with pytest.raises(LasaError, match="is not the config's model"):
        run_interpret(InterpretConfig(model=str(tiny_llama), run_dir=str(run), layer=1), lm)
    with pytest.raises(LasaError, match="is not the config's model"):
        run_evaluate(
            EvaluateConfig(
                model=str(tiny_llama), run_dir=str(run), judges=["lexicon"], default_judge="lexicon"
            ),
            lm,
        )
    assert not run.exists()
    bn = loc.run_locate(_locate_cfg(str(tiny_qwen) + "/", run), lm)  # the same model, spelt otherwise
    assert bn.num_layers == lm.num_layers


def test_load_layer_scores_refuses_a_file_that_is_not_per_layer_rows(tmp_path):
    from lasa.errors import LasaError
    from lasa.locate import load_layer_scores
    from lasa.runs import write_json

    for content in ({}, None, {"layer": "x"}, [1, 2]):
        write_json(tmp_path / "locate" / "layer_scores.json", content)
        with pytest.raises(LasaError, match="damaged"):
            load_layer_scores(tmp_path)
