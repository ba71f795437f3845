"""The locate figures: the layer-score curves and the t-SNE of chosen layers."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from lasa.locate.bottleneck import PAPER_BAND, Bottleneck
from lasa.runs import (
    save_figure,
)

logger = logging.getLogger(__name__)


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
