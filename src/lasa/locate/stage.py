"""Stage 1 — locate the semantic bottleneck.

The same N meanings are written in K languages. At every layer we ask whether the pooled states
cluster by meaning (query id) or by language, with cosine silhouettes; the bottleneck is
``argmax_l S_sem(l) - S_lang(l)`` (the LASA rule). Ten queries, as in the official release, make
that argmax noisy, so lasa uses ~100 queries, reports a bootstrap band over queries and two
independent views of the same question (baseline-adjusted translation cosine and xx→pivot
retrieval), and shows the whole curve: on small models the difference can be negative at every
layer and the argmax is then only the *least language-bound* layer.

Artefacts (a contract, read by later stages): ``RUN/locate/layer_scores.json``,
``bottleneck.json``, ``layer_scores.png``, ``tsne.png``, and the cached pooled states
(``states.safetensors`` + ``points.jsonl``) so re-scoring or re-plotting never re-runs the model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lasa.config import LocateConfig
from lasa.data import ParallelTable
from lasa.locate.bottleneck import PAPER_BAND, RULE, Bottleneck
from lasa.locate.plots import default_tsne_layers, plot_layer_scores, plot_tsne
from lasa.locate.scores import build_points, choose_bottleneck, score_layers
from lasa.models import validate_layer
from lasa.runs import (
    RunDir,
    atomic_path,
    fingerprint,
    read_json,
    staged_artefacts,
    write_json,
    write_jsonl,
)

logger = logging.getLogger(__name__)


def _save_states(path: Path, states: torch.Tensor, key: str) -> None:
    from safetensors.torch import save_file

    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file({"states": states.contiguous()}, str(tmp), metadata={"cache_key": key})


def _load_states(path: Path, key: str) -> torch.Tensor | None:
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("cache_key") != key:
                return None
            return f.get_tensor("states")
    except Exception:  # a corrupt cache is just a cache miss
        logger.warning("ignoring unreadable cache %s", path)
        return None


def run_locate(cfg: LocateConfig, lm: Any = None) -> Bottleneck:
    """Run stage 1 on ``cfg`` and write its artefacts; returns the chosen bottleneck.

    ``lm`` (a :class:`lasa.models.LoadedModel`) may be passed to reuse an already-loaded model;
    it is not loaded at all when the cached states are still valid.
    """
    from lasa.config.base import expect_config

    expect_config(cfg, LocateConfig, "run_locate")
    from lasa.models import check_given_model

    check_given_model(lm, cfg.model, "run_locate")
    t0 = time.time()
    run = RunDir(cfg.run_dir)
    table, points = build_points(cfg)  # bad input fails here, before any directory exists
    if cfg.tsne_layers:  # from the model's config (milliseconds), not after a load of a minute or more
        from lasa.models import num_layers_of

        n_layers = lm.num_layers if lm is not None else num_layers_of(cfg.model)
        for t in cfg.tsne_layers:
            validate_layer(int(t), n_layers, "--tsne-layers")
    with run.stage_dir("locate") as out:
        return _locate(cfg, lm, run, out, table, points, t0)


def _locate(
    cfg: LocateConfig, lm: Any, run: RunDir, out: Path, table: ParallelTable, points: list[dict], t0: float
) -> Bottleneck:
    from lasa.hidden import extract_states
    from lasa.models import resolve_device, resolve_dtype, weights_signature

    device = resolve_device(cfg.device)
    key = fingerprint(
        {
            "model": cfg.model,
            "weights": weights_signature(cfg.model),  # the same name over other weights is a miss
            "numerics": [device.type, str(resolve_dtype(cfg.dtype, device))],  # known before loading
            "texts": [p["text"] for p in points],
            "pooling": cfg.pooling,
            "chat_template": cfg.chat_template,
            "max_length": cfg.max_length,
        }
    )
    states_path = out / "states.safetensors"
    states = None if cfg.force else _load_states(states_path, key)
    timings: dict[str, float] = {}
    if states is None:
        if lm is None:
            from lasa.models import load_model

            lm = load_model(cfg.model, cfg.device, cfg.dtype)
        for t in cfg.tsne_layers:  # fail before the expensive part
            validate_layer(int(t), lm.num_layers, "--tsne-layers")
        t1 = time.time()
        states = extract_states(
            lm,
            [p["text"] for p in points],
            layers=None,
            pooling=cfg.pooling,
            batch_size=cfg.batch_size,
            max_length=cfg.max_length,
            chat_template=cfg.chat_template,
            desc="locate: hidden states",
        )
        timings["extract_seconds"] = round(time.time() - t1, 2)
        model_info = {
            "spec": cfg.model,
            "path": lm.path,
            "class": type(lm.model).__name__,
            "layers_path": lm.layers_path,
            "fingerprint": lm.fingerprint,
        }
        write_jsonl(out / "points.jsonl", points)
        _save_states(states_path, states, key)
        # keyed like the states: a kill between the two files must not give the next run's
        # bottleneck.json another model's provenance
        write_json(out / "model.json", model_info | {"states_key": key})
    else:
        logger.info("locate: reusing cached states %s (pass --force to recompute)", states_path)
        doc = read_json(out / "model.json") if (out / "model.json").is_file() else {}
        model_info = (
            {k: v for k, v in doc.items() if k != "states_key"}
            if isinstance(doc, dict) and doc.get("states_key") == key
            else {"spec": cfg.model}  # not recorded with these states: only what is known for sure
        )

    query = np.array([p["query"] for p in points])
    lang = np.array([p["lang"] for p in points])
    pivot_lang = "en" if "en" in cfg.langs else cfg.langs[0]
    t1 = time.time()
    rows = score_layers(states, query, lang, pivot=pivot_lang, n_bootstrap=cfg.n_bootstrap, seed=cfg.seed)
    timings["score_seconds"] = round(time.time() - t1, 2)
    layer, within = choose_bottleneck(rows)
    num_layers = states.shape[1]
    best = rows[layer - 1]
    depth = layer / num_layers
    bn = Bottleneck(
        layer=layer,
        num_layers=num_layers,
        depth_fraction=round(depth, 4),
        score=best["score"],
        score_ci=best["score_ci"],
        rule=RULE,
        data={
            "source": cfg.source,
            "languages": cfg.langs,
            "query_ids": table.ids,
            "seed": cfg.seed,
            "chat_template": cfg.chat_template,
        },
        pooling=cfg.pooling,
        chat_template=cfg.chat_template,
        n={
            "queries": len(table),
            "languages": len(cfg.langs),
            "points": len(points),
            "bootstrap": cfg.n_bootstrap,
        },
        model=cfg.model,
        model_weights=weights_signature(cfg.model),
        index_convention="layer l = output of decoder block l = transformers hidden_states[l] (1..L; 0 = embeddings; "
        "the last layer is read before the final norm)",
        layers_within_ci=within,
        in_paper_band=PAPER_BAND[0] <= depth <= PAPER_BAND[1],
        paper_band=list(PAPER_BAND),
    )
    # the four artefacts change together or not at all (an interrupted re-run leaves the old set)
    with staged_artefacts(out, "bottleneck.json", owns=("layer_scores.png", "tsne.png")) as stage:
        write_json(stage / "layer_scores.json", rows)
        if cfg.plots:
            t1 = time.time()
            title = (
                f"{cfg.model}: {len(table)} queries x {len(cfg.langs)} languages ({cfg.source}, "
                f"{cfg.pooling}-token pooling)"
            )
            plot_layer_scores(rows, bn, stage / "layer_scores.png", title)
            tsne_layers = [validate_layer(int(x), num_layers, "--tsne-layers") for x in cfg.tsne_layers]
            plot_tsne(
                states,
                points,
                tsne_layers or default_tsne_layers(num_layers, layer),
                layer,
                stage / "tsne.png",
                seed=cfg.seed,
            )
            timings["plot_seconds"] = round(time.time() - t1, 2)
        timings["total_seconds"] = round(time.time() - t0, 2)
        doc = asdict(bn) | {"model_info": model_info, "timings": timings}
        write_json(stage / "bottleneck.json", doc)  # the marker: moved in last
    run.record(
        "locate",
        cfg,
        {"timings": timings, "model_weights": weights_signature(cfg.model)},
        marker=out / "bottleneck.json",
    )
    logger.info(
        "locate: bottleneck = layer %d of %d (depth %.0f%%), score %.3f [%.3f, %.3f]; %d layer(s) within CI",
        layer,
        num_layers,
        100 * depth,
        best["score"],
        *best["score_ci"],
        len(within),
    )
    return bn
