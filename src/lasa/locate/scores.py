"""Per-layer scores: the parallel points, cosine silhouettes by meaning and by language with a
bootstrap band over queries, the two independent views, and the bottleneck rule."""

from __future__ import annotations

import logging

import numpy as np
import torch

from lasa.config import LocateConfig
from lasa.data import ParallelTable, load_multijail, load_sib200
from lasa.errors import LasaError

logger = logging.getLogger(__name__)


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
