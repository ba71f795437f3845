"""The layer sweep: the same SSI recipe at every few layers, does the located bottleneck transfer
best? Plus the label-free transfer criterion (FLORES language spread) and its layer choice."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from lasa.config import InterpretConfig
from lasa.interpret.metrics import macro
from lasa.interpret.train import Split, fit_and_evaluate
from lasa.runs import save_figure, write_json
from lasa.ssi import SSI


def language_spread(ssi: SSI, x: torch.Tensor, split: Split) -> float | None:
    """A label-free transfer criterion: how much the SSI's median logit on parallel benign FLORES
    sentences differs across languages (standard deviation of the per-language medians), in units
    of the SSI's own harmful-vs-benign separation on seen-language validation (the medians' gap).
    The same sentences in every language, so a language-invariant read-out scores 0."""
    if not split.calibration:
        return None
    with torch.inference_mode():
        cal = ssi.module(x[split.calibration]).numpy()
        val = ssi.module(x[split.val]).numpy()
    langs = np.array(split.calibration_langs)
    medians = [float(np.median(cal[langs == g])) for g in dict.fromkeys(split.calibration_langs)]
    y = split.y_val.numpy().astype(bool)
    gap = float(np.median(val[y]) - np.median(val[~y]))
    return float(np.std(medians) / gap) if gap > 0 else None


def run_sweep(
    states: dict[int, torch.Tensor],
    layers: list[int],
    split: Split,
    cfg: InterpretConfig,
    train_langs: list[str],
    bottleneck: int,
    out: Path,
    question_form: list[str] | None = None,
) -> list[dict]:
    """The same SSI recipe at every sweep layer: does the located bottleneck transfer best?

    ``question_form`` are the unseen languages whose benign set has the same form as MultiJail
    (the fallback languages' AUROC is inflated by form, so they get their own curve)."""
    from tqdm.auto import tqdm

    sweep = []
    seeds = [cfg.seed + k for k in range(cfg.sweep_seeds)]
    for layer in tqdm(layers, desc="interpret: layer sweep", leave=False):
        runs = [fit_and_evaluate(states[layer], layer, split, replace(cfg, seed=s)) for s in seeds]
        langs = list(runs[0]["per_language"])
        unseen = [g for g in langs if g not in train_langs]
        seen = [g for g in langs if g in train_langs]
        # per-language AUROC averaged over seeds; the spread is that of the unseen macro mean
        table = {g: {"auroc": float(np.mean([r["per_language"][g]["auroc"] for r in runs]))} for g in langs}
        unseen_means = [macro(r["per_language"], unseen).get("auroc") for r in runs] if unseen else []
        worst = min(unseen, key=lambda g: table[g]["auroc"]) if unseen else None
        qf = [g for g in question_form or [] if g in table]
        spreads = [language_spread(r["ssi"], states[layer], split) for r in runs]
        sweep.append(
            {
                "layer": layer,
                "threshold": runs[0]["threshold"],
                "seeds": seeds,
                "unseen_auroc_mean": float(np.mean(unseen_means)) if unseen else None,
                "unseen_auroc_std": float(np.std(unseen_means)) if unseen else None,
                "unseen_auroc_per_seed": [float(x) for x in unseen_means],
                "unseen_auroc_worst": table[worst]["auroc"] if worst else None,
                "unseen_worst_language": worst,
                "seen_auroc_mean": float(np.nanmean([table[g]["auroc"] for g in seen])) if seen else None,
                "unseen_question_form_auroc_mean": (
                    float(np.nanmean([table[g]["auroc"] for g in qf])) if qf else None
                ),
                "per_language_auroc": {g: table[g]["auroc"] for g in langs},
                "val_balanced_accuracy": float(np.mean([r["val_balanced_accuracy"] for r in runs])),
                "flores_language_spread": float(np.mean(spreads)) if None not in spreads else None,
            }
        )
    transfer = transfer_layer(sweep)
    write_json(
        out / "layer_sweep.json",
        {
            "bottleneck": bottleneck,
            "train_languages": train_langs,
            "question_form_unseen": question_form,
            "transfer_layer": transfer,
            "layers": sweep,
        },
    )
    plot_sweep(sweep, bottleneck, out / "layer_sweep.png", cfg)
    return sweep


def transfer_layer(sweep: list[dict], tolerance: float = 0.02) -> dict | None:
    """The layer chosen for transfer without unseen-language labels: the smallest FLORES language
    spread among layers whose seen-language validation balanced accuracy is within ``tolerance``
    of the best. Reported beside the bottleneck (which stays the default: the paper's setting)."""
    rows = [r for r in sweep if r.get("flores_language_spread") is not None]
    if not rows:
        return None
    best = max(r["val_balanced_accuracy"] for r in rows)
    ok = [r for r in rows if r["val_balanced_accuracy"] >= best - tolerance]
    pick = min(ok, key=lambda r: r["flores_language_spread"])
    ranked = sorted(rows, key=lambda r: r["flores_language_spread"])
    return {
        "layer": pick["layer"],
        "rule": f"min FLORES language spread among layers with seen validation balanced accuracy >= best - {tolerance}",
        "flores_language_spread": pick["flores_language_spread"],
        "unseen_auroc_mean": pick["unseen_auroc_mean"],  # uses labels: reported, never used to choose
        "spread_vs_unseen_auroc_spearman": _spearman(
            [r["flores_language_spread"] for r in ranked], [r["unseen_auroc_mean"] or 0.0 for r in ranked]
        ),
    }


def _spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    if len(a) < 3:
        return None
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def plot_sweep(sweep: list[dict], bottleneck: int, path: Path, cfg: InterpretConfig) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [r["layer"] for r in sweep]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    ax.plot(layers, [r["seen_auroc_mean"] for r in sweep], "o-", ms=4, label="seen languages (mean)")
    unseen_mean = np.array([r["unseen_auroc_mean"] for r in sweep])
    n_seeds = len(sweep[0].get("seeds", [0])) if sweep else 1
    ax.plot(layers, unseen_mean, "s-", ms=4, label=f"unseen languages (mean; {n_seeds} seed(s))")
    if n_seeds > 1:
        spread = np.array([r.get("unseen_auroc_std") or 0.0 for r in sweep])
        ax.fill_between(
            layers, unseen_mean - spread, unseen_mean + spread, alpha=0.2, label="± 1 sd over seeds"
        )
    if sweep and sweep[0].get("unseen_question_form_auroc_mean") is not None:
        ax.plot(
            layers,
            [r["unseen_question_form_auroc_mean"] for r in sweep],
            "d-",
            ms=4,
            label="unseen, question-form benign set (mean)",
        )
    ax.plot(layers, [r["unseen_auroc_worst"] for r in sweep], "v--", ms=4, label="unseen languages (worst)")
    ax.axvline(bottleneck, color="crimson", ls="--", lw=1.2, label=f"located bottleneck (layer {bottleneck})")
    best = max(sweep, key=lambda r: r["unseen_auroc_mean"])
    ax.scatter(
        [best["layer"]],
        [best["unseen_auroc_mean"]],
        s=120,
        facecolors="none",
        edgecolors="k",
        label=f"best unseen mean (layer {best['layer']})",
    )
    ax.axhline(0.5, color="0.6", lw=0.8)
    ax.set_xlabel("layer the SSI reads (hidden_states index)")
    ax.set_ylabel("AUROC, MultiJail vs benign")
    ax.set_title(
        f"{cfg.model}: SSI trained on {'+'.join(cfg.train_langs)}, evaluated per language", fontsize=10
    )
    ax.set_ylim(min(0.4, min(r["unseen_auroc_worst"] for r in sweep) - 0.05), 1.01)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path)
