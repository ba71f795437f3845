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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lasa.config import LocateConfig
from lasa.data import ParallelTable, load_multijail, load_sib200
from lasa.errors import LasaError
from lasa.models import validate_layer
from lasa.runs import (
    RunDir,
    atomic_path,
    fingerprint,
    read_json,
    read_jsonl,
    save_figure,
    staged_artefacts,
    write_json,
    write_jsonl,
)

logger = logging.getLogger(__name__)

#: Where the authors found the bottleneck, as a fraction of depth, on seven 8B-32B models.
PAPER_BAND = (0.43, 0.68)
RULE = "argmax_l [silhouette_cos(query) - silhouette_cos(language)]"


@dataclass
class Bottleneck:
    """``RUN/locate/bottleneck.json``: the chosen layer and how it was chosen."""

    layer: int
    num_layers: int
    depth_fraction: float
    score: float
    score_ci: list[float]
    rule: str
    data: dict
    pooling: str
    chat_template: bool
    n: dict
    model: str
    index_convention: str
    layers_within_ci: list[int]
    in_paper_band: bool
    paper_band: list[float]

    @classmethod
    def load(cls, run_dir: str | Path) -> Bottleneck:
        rd = RunDir(run_dir)
        doc = rd.load(rd.bottleneck, "lasa locate")
        return cls(**{k: doc[k] for k in cls.__dataclass_fields__ if k in doc})


# -- points ----------------------------------------------------------------------------------


def build_points(cfg: LocateConfig) -> tuple[ParallelTable, list[dict]]:
    """The parallel table and one record per (query, language) point, in language-major order."""
    langs = cfg.langs
    if cfg.source == "multijail":
        table = load_multijail(langs).sample(cfg.n_queries, cfg.seed)
    elif cfg.source == "sib200":
        table = load_sib200(langs).sample(cfg.n_queries, cfg.seed)
    else:
        n_mj = cfg.n_queries // 2
        mj = load_multijail(langs).sample(n_mj, cfg.seed)
        sib = load_sib200(langs).sample(cfg.n_queries - n_mj, cfg.seed)
        table = ParallelTable(
            source="mixed",
            ids=[f"multijail:{i}" for i in mj.ids] + [f"sib200:{i}" for i in sib.ids],
            texts={lang: mj.texts[lang] + sib.texts[lang] for lang in langs},
        )
    if table.source != "mixed":
        table = ParallelTable(
            source=table.source, ids=[f"{table.source}:{i}" for i in table.ids], texts=table.texts
        )
    points = [
        {
            "point": li * len(table) + qi,
            "query": qi,
            "query_id": qid,
            "lang": lang,
            "text": table.texts[lang][qi],
        }
        for li, lang in enumerate(langs)
        for qi, qid in enumerate(table.ids)
    ]
    return table, points


# -- scores ----------------------------------------------------------------------------------


def _silhouette_samples(dist: np.ndarray, labels: np.ndarray) -> np.ndarray:
    from sklearn.metrics import silhouette_samples

    return silhouette_samples(dist, labels, metric="precomputed")


def score_layers(
    states: torch.Tensor | np.ndarray,
    query: np.ndarray,
    lang: np.ndarray,
    pivot: str | None = None,
    n_bootstrap: int = 1000,
    seed: int = 42,
) -> list[dict]:
    """Per-layer geometry of ``states`` (points x layers x d); ``query``/``lang`` label each point.

    The 95% interval of ``score`` is a percentile bootstrap over *queries*: per-point silhouettes
    are computed once on all points, averaged per query, and queries are resampled with
    replacement (re-computing silhouettes on a resample would put duplicate clusters at distance 0).
    Retrieval: for each point of a non-pivot language, is its nearest pivot-language point
    (by cosine) its own translation?
    """
    x = torch.nn.functional.normalize(torch.as_tensor(states, dtype=torch.float32), dim=-1)
    query, lang = np.asarray(query), np.asarray(lang)
    queries, qpos = np.unique(query, return_inverse=True)
    langs = list(dict.fromkeys(lang.tolist()))
    if len(queries) < 2 or len(langs) < 2:
        raise LasaError("scoring needs at least two queries and two languages")
    pivot = langs[0] if pivot is None else pivot
    same_q = qpos[:, None] == qpos[None, :]
    same_l = lang[:, None] == lang[None, :]
    pair, nonpair = same_q & ~same_l, ~same_q & ~same_l
    counts = np.bincount(qpos, minlength=len(queries))
    boot = np.random.default_rng(seed).integers(0, len(queries), size=(n_bootstrap, len(queries)))
    pivot_rows = np.flatnonzero(lang == pivot)
    rows = []
    for li in range(x.shape[1]):
        xl = x[:, li]
        cos = (xl @ xl.T).numpy().astype(np.float64)
        dist = np.clip(1.0 - cos, 0.0, 2.0)
        np.fill_diagonal(dist, 0.0)
        s_sem = _silhouette_samples(dist, qpos)
        s_lang = _silhouette_samples(dist, lang)
        diff = s_sem - s_lang
        per_query = np.bincount(qpos, weights=diff, minlength=len(queries)) / counts
        if n_bootstrap:
            lo, hi = np.percentile(per_query[boot].mean(axis=1), [2.5, 97.5])
        else:
            lo = hi = float(diff.mean())
        retrieval = {}
        for lv in langs:
            if lv == pivot:
                continue
            src = np.flatnonzero(lang == lv)
            nearest = pivot_rows[cos[np.ix_(src, pivot_rows)].argmax(axis=1)]
            retrieval[str(lv)] = float((qpos[nearest] == qpos[src]).mean())
        rows.append(
            {
                "layer": li + 1,
                "silhouette_semantic": float(s_sem.mean()),
                "silhouette_language": float(s_lang.mean()),
                "score": float(diff.mean()),
                "score_ci": [float(lo), float(hi)],
                "adjusted_cosine": float(cos[pair].mean() - cos[nonpair].mean()),
                "pair_cosine": float(cos[pair].mean()),
                "retrieval_accuracy": float(np.mean(list(retrieval.values()))) if retrieval else float("nan"),
                "retrieval_per_language": retrieval,
                "retrieval_pivot": str(pivot),
            }
        )
    return rows


def choose_bottleneck(rows: list[dict]) -> tuple[int, list[int]]:
    """argmax of the score, and every layer whose score lies inside the winner's 95% interval
    (if that list is long, the curve is flat and the choice is fragile: say so)."""
    best = max(rows, key=lambda r: r["score"])
    lo = best["score_ci"][0]
    within = [r["layer"] for r in rows if r["score"] >= lo]
    return best["layer"], within


# -- plots -----------------------------------------------------------------------------------


def plot_layer_scores(rows: list[dict], bottleneck: Bottleneck, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [r["layer"] for r in rows]
    n = bottleneck.num_layers
    fig, axes = plt.subplots(3, 1, figsize=(7.5, 9), sharex=True)
    band = (PAPER_BAND[0] * n, PAPER_BAND[1] * n)
    for i, ax in enumerate(axes):
        ax.axvspan(
            *band, color="0.92", zorder=0, label="paper's bottleneck band (43–68% depth)" if i == 0 else None
        )
        ax.axvline(
            bottleneck.layer,
            color="crimson",
            ls="--",
            lw=1.2,
            label=f"bottleneck: layer {bottleneck.layer}" if i == 0 else None,
        )
        ax.grid(alpha=0.3)
    ax = axes[0]
    ax.plot(layers, [r["silhouette_semantic"] for r in rows], "o-", ms=3, label="S_sem (by meaning)")
    ax.plot(layers, [r["silhouette_language"] for r in rows], "s-", ms=3, label="S_lang (by language)")
    ax.set_ylabel("cosine silhouette")
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title, fontsize=10)
    ax = axes[1]
    score = np.array([r["score"] for r in rows])
    ci = np.array([r["score_ci"] for r in rows])
    ax.fill_between(
        layers, ci[:, 0], ci[:, 1], alpha=0.3, color="tab:green", label="95% bootstrap CI (queries)"
    )
    ax.plot(layers, score, "o-", ms=3, color="tab:green", label="S_sem − S_lang")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_ylabel("score")
    ax.legend(fontsize=8, loc="best")
    ax = axes[2]
    ax.plot(
        layers,
        [r["adjusted_cosine"] for r in rows],
        "o-",
        ms=3,
        color="tab:purple",
        label="adjusted cosine (pairs − non-pairs)",
    )
    ax.plot(
        layers,
        [r["retrieval_accuracy"] for r in rows],
        "^-",
        ms=3,
        color="tab:orange",
        label="xx→pivot retrieval accuracy",
    )
    ax.set_ylabel("cross-lingual alignment")
    ax.set_xlabel("layer (hidden_states index; 0 = embeddings)")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_tsne(
    states: torch.Tensor,
    points: list[dict],
    layers: list[int],
    bottleneck: int,
    path: Path,
    seed: int = 42,
    n_highlight: int = 10,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    langs = sorted({p["lang"] for p in points}, key=[p["lang"] for p in points].index)
    lang_idx = np.array([langs.index(p["lang"]) for p in points])
    query = np.array([p["query"] for p in points])
    highlight = np.unique(query)[:: max(1, len(np.unique(query)) // n_highlight)][:n_highlight]
    fig, axes = plt.subplots(len(layers), 2, figsize=(10, 4.2 * len(layers)), squeeze=False)
    cmap_l = plt.get_cmap("tab10")
    cmap_q = plt.get_cmap("tab10")
    for row, layer in enumerate(layers):
        x = torch.nn.functional.normalize(states[:, layer - 1].float(), dim=-1).numpy()
        perplexity = min(30.0, max(2.0, (len(x) - 1) / 3.0))
        emb = TSNE(
            n_components=2, perplexity=perplexity, random_state=seed, init="pca", metric="cosine"
        ).fit_transform(x)
        tag = " (bottleneck)" if layer == bottleneck else ""
        ax = axes[row, 0]
        for i, lang in enumerate(langs):
            m = lang_idx == i
            ax.scatter(emb[m, 0], emb[m, 1], s=6, color=cmap_l(i % 10), label=lang)
        ax.set_title(f"layer {layer}{tag}: coloured by language", fontsize=9)
        ax.legend(fontsize=7, markerscale=2, ncol=2)
        ax = axes[row, 1]
        ax.scatter(emb[:, 0], emb[:, 1], s=4, color="0.85")
        for i, q in enumerate(highlight):
            m = query == q
            ax.scatter(emb[m, 0], emb[m, 1], s=14, color=cmap_q(i % 10))
        ax.set_title(f"layer {layer}{tag}: {len(highlight)} queries coloured, others grey", fontsize=9)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return save_figure(fig, path)


def default_tsne_layers(num_layers: int, bottleneck: int) -> list[int]:
    early = max(1, round(num_layers * 0.15))
    return sorted({early, bottleneck, num_layers})


# -- cache -----------------------------------------------------------------------------------


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


# -- stage -----------------------------------------------------------------------------------


def run_locate(cfg: LocateConfig, lm: Any = None) -> Bottleneck:
    """Run stage 1 on ``cfg`` and write its artefacts; returns the chosen bottleneck.

    ``lm`` (a :class:`lasa.models.LoadedModel`) may be passed to reuse an already-loaded model;
    it is not loaded at all when the cached states are still valid.
    """
    t0 = time.time()
    run = RunDir(cfg.run_dir)
    table, points = build_points(cfg)  # bad input fails here, before any directory exists
    with run.stage_dir("locate") as out:
        return _locate(cfg, lm, run, out, table, points, t0)


def _locate(
    cfg: LocateConfig, lm: Any, run: RunDir, out: Path, table: ParallelTable, points: list[dict], t0: float
) -> Bottleneck:
    from lasa.hidden import extract_states

    key = fingerprint(
        {
            "model": cfg.model,
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
        write_jsonl(out / "points.jsonl", points)
        _save_states(states_path, states, key)
        model_info = {
            "spec": cfg.model,
            "path": lm.path,
            "class": type(lm.model).__name__,
            "layers_path": lm.layers_path,
            "fingerprint": lm.fingerprint,
        }
        write_json(out / "model.json", model_info)
    else:
        logger.info("locate: reusing cached states %s (pass --force to recompute)", states_path)
        model_info = read_json(out / "model.json") if (out / "model.json").is_file() else {"spec": cfg.model}

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
        index_convention="layer l = output of decoder block l = transformers hidden_states[l] (1..L; 0 = embeddings; "
        "the last layer is read before the final norm)",
        layers_within_ci=within,
        in_paper_band=PAPER_BAND[0] <= depth <= PAPER_BAND[1],
        paper_band=list(PAPER_BAND),
    )
    # the four artefacts change together or not at all (an interrupted re-run leaves the old set)
    with staged_artefacts(out, "bottleneck.json") as stage:
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
    run.record("locate", cfg, {"timings": timings})
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


def load_layer_scores(run_dir: str | Path) -> list[dict]:
    path = RunDir(run_dir).locate / "layer_scores.json"
    if not path.is_file():
        raise LasaError(f"{path} not found; run `lasa locate --run-dir {run_dir}` first")
    return read_json(path)


def load_points(run_dir: str | Path) -> list[dict]:
    return read_jsonl(RunDir(run_dir).locate / "points.jsonl")
