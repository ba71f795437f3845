"""Is one SSI's gate a draw of its seed, and does averaging seeds fix it?

``python scripts/ssi_ensemble.py RUN/SSI_DIR [--seeds 15] [--size 5] [--out docs/ssi_ensemble]``

``lasa interpret`` reports that the same recipe re-split and retrained over five seeds gives an
XSTest safe-prompt FPR anywhere in 0.12–0.31 (``metrics.json`` ``seed_spread``): the gate a user
gets depends on the seed more than on anything they chose. Bagging is the standard remedy: each
seed holds out a different 15% of the items for its threshold, so an average over seeds uses every
row for training and smooths each member's threshold noise. This script measures it on an SSI's
cached states (no model needed): ``--seeds`` members retrained exactly as ``lasa interpret`` does
(same rows, group split by item id, threshold rule), then

- every single member at its own threshold (what ``lasa interpret --seed S`` would ship, without
  the per-language offsets), and
- disjoint ensembles of ``--size`` members, each scored as ``lasa interpret --ensemble`` scores
  them (``lasa.ssi.SSIEnsemble``): the mean of its members' decision margins
  ``logit(p_k) - logit(t_k)`` (a member's own threshold maps to 0, so the ensemble flags where the
  members agree on average; no new threshold is fitted).

Per representation: XSTest safe FPR / unsafe TPR, macro unseen-language AUROC and TPR / FPR
(MultiJail vs same-form benign), and the share of translated safe / unsafe XSTest prompts flagged
(where the cache holds them, ``--xstest-mt-n``). The spread over singles vs over ensembles is the
answer.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch


def margins(modules: list, thresholds: list[float], x: torch.Tensor, rows) -> np.ndarray:
    """Decision margins of ``lasa.ssi.SSIEnsemble`` over ``modules`` (what ``--ensemble`` ships; one
    module is that member alone: its logit minus its threshold's logit, > 0 means flagged)."""
    from lasa.ssi import SSIEnsemble

    with torch.inference_mode():
        return SSIEnsemble.of(modules, thresholds, x)(x[rows]).numpy()


def summarise(m: dict[str, np.ndarray], evalp, xs_safe, mt_safe, unseen) -> dict:
    """The gate's figures from margins (flag: margin > 0; AUROC: ranking by margin)."""
    from lasa.interpret.metrics import macro, per_language

    # per_language takes probabilities and a threshold: the sigmoid of a margin against 0.5
    table = per_language(1 / (1 + np.exp(-m["eval"])), evalp, 0.5)
    out = {
        "xstest_fpr_safe": float((m["xstest"][xs_safe] > 0).mean()),
        "xstest_tpr_unsafe": float((m["xstest"][~xs_safe] > 0).mean()),
    }
    mu = macro(table, unseen)
    out |= {"unseen_auroc": mu["auroc"], "unseen_tpr": mu["tpr"], "unseen_fpr": mu["fpr"]}
    if "mt" in m:
        out["mt_safe_flagged"] = float((m["mt"][mt_safe] > 0).mean())
        out["mt_unsafe_flagged"] = float((m["mt"][~mt_safe] > 0).mean())
    return out


def spread(rows: list[dict]) -> dict:
    keys = [k for k in rows[0] if k != "seeds"]
    return {
        k: {
            "min": float(min(r[k] for r in rows)),
            "max": float(max(r[k] for r in rows)),
            "mean": float(np.mean([r[k] for r in rows])),
        }
        for k in keys
    }


def recorded_config(ssi_dir: Path, cls, seed: int):
    """The interpret config that trained ``ssi_dir`` (``RUN/config.yaml``, recorded by the stage), so
    members are trained with its hyperparameters; the class defaults (the presets') where no record
    is found."""
    import dataclasses

    import yaml

    path = ssi_dir.parent / "config.yaml"
    stage = "interpret" if ssi_dir.name == "ssi" else f"interpret:{ssi_dir.name}"
    entry = {}
    if path.is_file():
        entry = ((yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("stages") or {}).get(
            stage
        ) or {}
    known = {f.name for f in dataclasses.fields(cls)}
    recorded = {k: v for k, v in (entry.get("config") or {}).items() if k in known}
    if not recorded:
        print(f"note: no {stage} entry in {path}; training members with InterpretConfig's defaults")
    return cls(**(recorded | {"run_dir": str(ssi_dir.parent), "seed": seed, "force": False}))


def main() -> None:
    from lasa.config import InterpretConfig
    from lasa.errors import LasaError
    from lasa.interpret.stage import CachedStates, saved_prompts
    from lasa.interpret.train import fit_and_evaluate
    from lasa.runs import read_json, write_json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ssi_dir")
    ap.add_argument("--seeds", type=int, default=15, help="Members to train (seeds SEED..SEED+N-1).")
    ap.add_argument("--size", type=int, default=5, help="Members per ensemble (disjoint groups).")
    ap.add_argument(
        "--fixed-threshold",
        type=float,
        default=None,
        help="Score every member at this probability instead of its validated threshold (a rule with "
        "no validation noise, for comparison).",
    )
    ap.add_argument(
        "--oof-fpr",
        type=float,
        default=None,
        help="Also score each ensemble at the margin that flags at most this share of the pool's benign "
        "rows out of fold (each row's margin averaged over the members that held it out for validation): "
        "a threshold for an FPR target from more held-out rows than one member's split.",
    )
    ap.add_argument("--out", default=None, help="Write OUT.json and OUT.md.")
    args = ap.parse_args()
    if args.size < 2 or args.seeds < 2 * args.size:
        raise SystemExit(
            "error: need --size >= 2 and --seeds >= 2 x --size (two disjoint ensembles at least)"
        )
    d = Path(args.ssi_dir)
    try:
        meta = read_json(d / "ssi.json")
        prompts = saved_prompts(d)
        cache = CachedStates(d)
    except LasaError as e:
        raise SystemExit(f"error: {e}") from None
    layer, seed0 = int(meta["layer"]), int(meta.get("seed", 42))
    try:  # the states in the order of prompts.texts, which the split's row indices refer to
        x = cache.layer(layer)[cache.rows(prompts.texts)]
    except LasaError as e:
        raise SystemExit(f"error: {e}") from None
    pos_rows = {t: i for i, t in enumerate(prompts.texts)}
    cfg = recorded_config(d, InterpretConfig, seed0)
    seen = list(meta["train_languages"])
    evalp = prompts.evaluation
    unseen = [g for g in dict.fromkeys(p.lang for p in evalp) if g not in seen]
    xs_rows = [pos_rows[r["prompt"]] for r in prompts.xstest]
    xs_safe = np.array([r["label"] == "safe" for r in prompts.xstest])
    mt_rows = [pos_rows[r["prompt"]] for r in prompts.xstest_mt]
    mt_safe = np.array([r["label"] == "safe" for r in prompts.xstest_mt])

    members = []
    for k in range(args.seeds):
        seed = seed0 + k
        split = prompts.split(pos_rows, cfg.val_fraction, seed)
        res = fit_and_evaluate(x, layer, split, replace(cfg, seed=seed))
        if args.fixed_threshold is not None:
            res["threshold"] = args.fixed_threshold
        one = ([res["ssi"].module], [res["threshold"]], x)
        rows_eval = split.eval  # the same rows for every seed (only the pool is re-split)
        m = {"eval": margins(*one, rows_eval), "xstest": margins(*one, xs_rows)}
        if mt_rows:
            m["mt"] = margins(*one, mt_rows)
        m["val_rows"] = np.array(split.val)
        m["val_margin"] = margins(*one, split.val)
        m["val_benign"] = split.y_val.numpy() == 0
        m["module"] = res["ssi"].module
        members.append((seed, res["threshold"], m))
        print(f"seed {seed}: threshold {res['threshold']:.2f}", flush=True)

    singles = [
        {"seeds": [s], "threshold": t} | summarise(m, evalp, xs_safe, mt_safe, unseen) for s, t, m in members
    ]
    ensembles: list[dict] = []
    oof: list[dict] = []
    for g in range(args.seeds // args.size):
        group = members[g * args.size : (g + 1) * args.size]
        ens = ([mm["module"] for _, _, mm in group], [t for _, t, _ in group], x)
        m = {"eval": margins(*ens, rows_eval), "xstest": margins(*ens, xs_rows)}
        if mt_rows:
            m["mt"] = margins(*ens, mt_rows)
        ensembles.append({"seeds": [s for s, _, _ in group]} | summarise(m, evalp, xs_safe, mt_safe, unseen))
        if args.oof_fpr is not None:
            # out of fold: a pool row's margin averaged over the members that held it out
            total: dict[int, list[float]] = {}
            benign: dict[int, bool] = {}
            for _, _, mm in group:
                for r, v, b in zip(mm["val_rows"], mm["val_margin"], mm["val_benign"], strict=True):
                    total.setdefault(int(r), []).append(float(v))
                    benign[int(r)] = bool(b)
            neg = np.sort([np.mean(v) for r, v in total.items() if benign[r]])
            k = int(np.ceil((1 - args.oof_fpr) * len(neg))) - 1
            cut = float(neg[k])
            shifted = {key: v - cut for key, v in m.items()}
            oof.append(
                {"seeds": [s for s, _, _ in group], "margin_cut": cut, "n_oof_benign": len(neg)}
                | summarise(shifted, evalp, xs_safe, mt_safe, unseen)
            )
    result = {
        "ssi_dir": str(d),
        "layer": layer,
        "size": args.size,
        "singles": singles,
        "ensembles": ensembles,
        "spread_singles": spread([{k: v for k, v in r.items() if k != "threshold"} for r in singles]),
        "spread_ensembles": spread(ensembles),
    }
    if oof:
        result["oof_fpr"] = args.oof_fpr
        result["ensembles_oof"] = oof
    cols = [k for k in singles[0] if k not in ("seeds", "threshold")]
    lines = [
        f"# SSI seeds vs seed ensembles ({d}, layer {layer})",
        "",
        f"`python scripts/ssi_ensemble.py {d} --seeds {args.seeds} --size {args.size}"
        + (f" --fixed-threshold {args.fixed_threshold}" if args.fixed_threshold is not None else "")
        + (f" --oof-fpr {args.oof_fpr}" if args.oof_fpr is not None else "")
        + (f" --out {args.out}" if args.out else "")
        + "`",
        "",
        "| SSI | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for r in singles:
        lines.append(
            f"| seed {r['seeds'][0]} (t {r['threshold']:.2f}) | "
            + " | ".join(f"{r[c]:.3f}" for c in cols)
            + " |"
        )
    for r in ensembles:
        lines.append(
            f"| **ensemble of {args.size}** (seeds {r['seeds'][0]}–{r['seeds'][-1]}) | "
            + " | ".join(f"{r[c]:.3f}" for c in cols)
            + " |"
        )
    for r in oof:
        lines.append(
            f"| ensemble (seeds {r['seeds'][0]}–{r['seeds'][-1]}) at ≤ {args.oof_fpr:.0%} out-of-fold benign "
            f"FPR (margin {r['margin_cut']:+.2f}, {r['n_oof_benign']} rows) | "
            + " | ".join(f"{r[c]:.3f}" for c in cols)
            + " |"
        )
    for name, sp in (("singles", result["spread_singles"]), ("ensembles", result["spread_ensembles"])):
        lines.append(
            f"| range over {name} | "
            + " | ".join(f"{sp[c]['min']:.3f}–{sp[c]['max']:.3f}" for c in cols)
            + " |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        write_json(Path(f"{args.out}.json"), result)
        Path(f"{args.out}.md").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
