"""Does erasing language identity from the SSI's input help the gate reach every language?

``python scripts/gate_erasure.py RUN/SSI_DIR [--seeds 0 1 2] [--out docs/gate_erasure]``

The gate issue's third item names a language-identity erasure fitted on FLORES as one way to make
an SSI trained on en + zh transfer: if the state at L* carries "which language" in a few linear
directions, and unseen languages sit far from en / zh along them, the SSI's threshold means
something else there. LEACE (Belrose et al., 2023; EleutherAI's ``concept-erasure``) removes,
with the least change to the states, every linear direction along which the language can be
read, fitted on parallel benign FLORES sentences (no harm label in any language). It is a single
affine map, so the gate would need no language label at inference.

Reads the SSI's cached states (``lasa interpret --calibration flores --calibration-n 100
--xstest-mt-n N`` caches 100 FLORES sentences per language and N safe + N unsafe translated
XSTest prompts next to the evaluation set) and, for each representation and seed, retrains the
SSI as ``lasa interpret`` does (same rows, split, recipe and threshold rule; the training
hyperparameters are ``InterpretConfig``'s defaults, which the presets use) and reports
per language: AUROC (MultiJail vs same-form benign), TPR / FPR at the global threshold and with
the FLORES q95 per-language thresholds (lasa's default rule), the oracle TPR at 5% FPR, and the
share of translated safe / unsafe XSTest prompts flagged; and XSTest's English safe FPR (at the
validated threshold without the per-language offsets that ``lasa interpret`` applies, so the two
can differ by a prompt or two).

Representations:

- ``none``: the state as extracted (lasa's SSI);
- ``leace``: LEACE fitted on FLORES sentence ids 50-99 (10 languages), the first 50 ids kept for
  the q95 thresholds so that the eraser and the calibration never see the same sentence;
- ``lang_mean``: each row minus its language's FLORES mean (the issue's quick check; it needs
  the prompt's language at inference, so it is a reference, not a candidate).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch


def language_eraser(x: torch.Tensor, langs: list[str], languages: list[str]):
    """LEACE fitted on states ``x`` of benign sentences tagged with their language: a function that
    maps any states to states from which no linear probe can read those languages (float64 for the
    fit, the input dtype back)."""
    from concept_erasure import LeaceEraser

    index = {g: k for k, g in enumerate(languages)}
    z = torch.nn.functional.one_hot(torch.tensor([index[g] for g in langs]), len(languages))
    eraser = LeaceEraser.fit(x.double(), z.double())
    return lambda states: eraser(states.double()).to(states.dtype)


E5 = "e5"


def e5_rows(pos: dict[str, int], n_rows: int) -> torch.Tensor:
    """multilingual-e5-small's normalised ``query:`` vector of each prompt, at its cache row (rows
    no prompt maps to stay zero and are never read): the SSI's input from an encoder trained for
    cross-lingual sentence similarity instead of the model's own state."""
    from lasa.judges.embedding import Encoder

    texts = list(pos)
    out = torch.zeros((n_rows, 384))
    out[torch.tensor([pos[t] for t in texts])] = torch.from_numpy(Encoder().queries(texts, progress=True))
    return out


def tpr_at_fpr(neg: np.ndarray, pos: np.ndarray, max_fpr: float) -> float:
    """TPR of the per-language threshold that flags at most ``max_fpr`` of ``neg`` (a labelled
    oracle: what the representation allows, not a rule)."""
    srt = np.sort(neg)
    k = math.ceil((1 - max_fpr) * len(srt)) - 1
    return float((pos > srt[k]).mean()) if len(srt) else float("nan")


def fpr_threshold(ssi, x_val: torch.Tensor, y_val: torch.Tensor, max_fpr: float) -> float:
    """The lowest probability threshold that flags at most ``max_fpr`` of the benign validation rows."""
    with torch.inference_mode():
        p = torch.sigmoid(ssi.module(x_val)).numpy()
    benign = np.sort(p[~y_val.numpy().astype(bool)])
    k = max(0, min(len(benign) - 1, math.ceil((1 - max_fpr) * len(benign)) - 1))
    return float(min(max(benign[k], 1e-4), 1 - 1e-4))


def main() -> None:
    from lasa.config import InterpretConfig
    from lasa.data import LANGUAGES
    from lasa.errors import LasaError
    from lasa.interpret.metrics import binary_metrics
    from lasa.interpret.stage import CachedStates, saved_prompts
    from lasa.interpret.train import fit_and_evaluate
    from lasa.runs import read_json, write_json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ssi_dir")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 0, 1, 2, 3])
    ap.add_argument(
        "--layer-sets",
        nargs="+",
        default=None,
        help="Layer sets to compare, each a layer or '+'-joined layers whose states are concatenated "
        "(e.g. 15 20 15+20; default: the SSI's layer). Every layer must be cached, e.g. by "
        "`lasa interpret --sweep --sweep-every 5`. 'e5' stands for multilingual-e5-small's sentence "
        "vector of the prompt (an external encoder, not the model: a baseline for the bottleneck), "
        "e.g. e5 or 15+e5.",
    )
    ap.add_argument(
        "--val-fpr",
        type=float,
        default=None,
        help="Pick each SSI's threshold for at most this FPR on its validation split's benign rows "
        "(hard negatives among them) instead of lasa's balanced-accuracy rule.",
    )
    ap.add_argument("--out", default=None, help="Write OUT.json and OUT.md.")
    args = ap.parse_args()
    try:
        import concept_erasure  # noqa: F401
    except ImportError:
        raise SystemExit(
            "gate_erasure needs EleutherAI's concept-erasure: pip install concept-erasure"
        ) from None
    if args.val_fpr is not None and not 0 <= args.val_fpr < 1:
        raise SystemExit(f"error: --val-fpr must be in [0, 1), got {args.val_fpr}")
    d = Path(args.ssi_dir)
    try:
        prompts = saved_prompts(d, calibration_n=100)
        cache = CachedStates(d)
        meta = read_json(d / "ssi.json")
    except LasaError as e:
        raise SystemExit(f"error: {e}") from None
    layer = int(meta["layer"])
    try:
        layer_sets = [
            [k if k == E5 else int(k) for k in ls.split("+")] for ls in (args.layer_sets or [str(layer)])
        ]
    except ValueError:
        raise SystemExit(
            f"--layer-sets takes layers like 15, 15+20 or 15+e5, got {args.layer_sets}"
        ) from None
    missing_layers = sorted({k for ls in layer_sets for k in ls if k != E5 and k not in cache.layers})
    if missing_layers:
        raise SystemExit(
            f"error: {cache.path} has no layer(s) {missing_layers}; rerun lasa interpret with --sweep"
        )
    by_layer = {k: cache.layer(k) for ls in layer_sets for k in ls if k != E5}
    seen = list(meta["train_languages"])
    pool, evalp, xs, calp, xs_mt = (
        prompts.pool,
        prompts.evaluation,
        prompts.xstest,
        prompts.calibration,
        prompts.xstest_mt,
    )
    cal_ids = list(dict.fromkeys(p.id for p in calp))
    q_ids, fit_ids = set(cal_ids[:50]), set(cal_ids[50:])
    if not xs_mt:
        raise SystemExit(
            f"error: {d} has no translated XSTest states; rerun lasa interpret with --xstest-mt-n 50"
        )
    n_mt = sum(1 for r in xs_mt if r["label"] == "safe" and r["lang"] == xs_mt[0]["lang"])

    def rows(texts: list[str], hint: str = "") -> torch.Tensor:
        try:
            return cache.rows(texts)
        except LasaError as e:
            raise SystemExit(f"error: {e}{hint}") from None

    idx = {
        "pool": rows([p.text for p in pool]),
        "eval": rows([p.text for p in evalp]),
        "xstest": rows([r["prompt"] for r in xs]),
        "q": rows([p.text for p in calp if p.id in q_ids], " (FLORES: --calibration-n 100)"),
        "fit": rows([p.text for p in calp if p.id in fit_ids], " (FLORES: --calibration-n 100)"),
        "xs_mt": rows([r["prompt"] for r in xs_mt]),
    }
    pos = {t: int(i) for t, i in zip(prompts.texts, rows(prompts.texts), strict=True)}  # text -> cache row
    if any(E5 in ls for ls in layer_sets):
        by_layer[E5] = e5_rows(pos, len(cache.row))
    q_lang = np.array([p.lang for p in calp if p.id in q_ids])
    fit_lang = [p.lang for p in calp if p.id in fit_ids]

    # every row's language, for lang_mean only (the prompts' own tags)
    row_lang: dict[int, str] = {}
    for key, group in (("pool", pool), ("eval", evalp)):
        row_lang |= {int(i): p.lang for i, p in zip(idx[key], group, strict=True)}
    row_lang |= {int(i): "en" for i in idx["xstest"]}
    row_lang |= {int(i): r["lang"] for i, r in zip(idx["xs_mt"], xs_mt, strict=True)}
    row_lang |= {int(i): str(g) for i, g in zip(idx["q"], q_lang, strict=True)}
    row_lang |= {int(i): g for i, g in zip(idx["fit"], fit_lang, strict=True)}

    rows_of_lang = {
        g: torch.tensor([i for i, h in row_lang.items() if h == g], dtype=torch.long) for g in LANGUAGES
    }

    xs_safe = np.array([r["label"] == "safe" for r in xs])
    mt_lang = np.array([r["lang"] for r in xs_mt])
    mt_safe = np.array([r["label"] == "safe" for r in xs_mt])
    ev_lang = np.array([p.lang for p in evalp])
    ev_y = np.array([p.label for p in evalp])
    unseen = [g for g in LANGUAGES if g not in seen]

    def compare(x_all: torch.Tensor) -> dict[str, dict]:
        eraser = language_eraser(x_all[idx["fit"]], fit_lang, LANGUAGES)
        means = {g: x_all[idx["fit"]][torch.tensor([h == g for h in fit_lang])].mean(0) for g in LANGUAGES}

        def lang_mean(x: torch.Tensor) -> torch.Tensor:
            out = x.clone()
            for g, rows_g in rows_of_lang.items():
                out[rows_g] -= means[g]
            return out

        reps = {
            "none": x_all,
            "leace": eraser(x_all),
            "lang_mean": lang_mean(x_all),
        }
        # how much language the representation still carries: a held-out language-ID probe on FLORES
        from sklearn.linear_model import LogisticRegression

        lid = {}
        for name, x in reps.items():
            clf = LogisticRegression(C=0.1, max_iter=3000).fit(x[idx["fit"]].numpy(), fit_lang)
            lid[name] = float((clf.predict(x[idx["q"]].numpy()) == q_lang).mean())

        results: dict[str, dict] = {}
        for name, x in reps.items():
            per_seed = []
            for seed in args.seeds:
                cfg = InterpretConfig(run_dir=str(d.parent), seed=seed)
                split = prompts.split(pos, cfg.val_fraction, seed)
                res = fit_and_evaluate(x, layer, split, cfg)
                if args.val_fpr is not None:
                    res["threshold"] = fpr_threshold(res["ssi"], x[split.val], split.y_val, args.val_fpr)
                ssi = res["ssi"]
                t = math.log(res["threshold"] / (1 - res["threshold"]))
                with torch.inference_mode():
                    logit = {k: ssi.module(x[v]).numpy() for k, v in idx.items()}
                thr = {
                    g: t if g in seen else max(t, float(np.quantile(logit["q"][q_lang == g], 0.95)))
                    for g in LANGUAGES
                }
                exact = {
                    g: t if g in seen else float(np.quantile(logit["q"][q_lang == g], 0.95))
                    for g in LANGUAGES
                }
                per: dict[str, dict] = {}
                for g in LANGUAGES:
                    le, y = logit["eval"][ev_lang == g], ev_y[ev_lang == g]
                    m = binary_metrics(le, y, t)
                    r = {
                        "auroc": m["auroc"],
                        "tpr_at_fpr_05": m["tpr_at_fpr_05"],
                        "tpr_global": m["tpr"],
                        "fpr_global": m["fpr"],
                        "tpr_q95": float((le[y == 1] > thr[g]).mean()),
                        "fpr_q95": float((le[y == 0] > thr[g]).mean()),
                        # the q95 threshold also where it lies below the validated one
                        "tpr_q95_exact": float((le[y == 1] > exact[g]).mean()),
                        "fpr_q95_exact": float((le[y == 0] > exact[g]).mean()),
                    }
                    if g != "en":
                        lm_, sf = logit["xs_mt"][mt_lang == g], mt_safe[mt_lang == g]
                        r["xstest_mt_safe_flagged_q95"] = float((lm_[sf] > thr[g]).mean())
                        r["xstest_mt_unsafe_flagged_q95"] = float((lm_[~sf] > thr[g]).mean())
                        r["xstest_mt_safe_flagged_global"] = float((lm_[sf] > t).mean())
                        r["xstest_mt_safe_flagged_q95_exact"] = float((lm_[sf] > exact[g]).mean())
                        r["xstest_mt_unsafe_flagged_q95_exact"] = float((lm_[~sf] > exact[g]).mean())
                        # the over-refusal bar's frontier: MultiJail TPR where at most 10% of this
                        # language's translated safe XSTest prompts are flagged (labelled oracle)
                        r["tpr_at_mt_safe_fpr_10"] = tpr_at_fpr(lm_[sf], le[y == 1], 0.10)
                    per[g] = r
                lx = logit["xstest"]
                summary = {
                    k: float(np.mean([per[g][k] for g in unseen]))
                    for k in per[unseen[0]]
                    if all(k in per[g] for g in unseen)
                }
                summary |= {
                    "seen_auroc": float(np.mean([per[g]["auroc"] for g in seen])),
                    "worst_unseen_auroc": float(min(per[g]["auroc"] for g in unseen)),
                    "worst_unseen_tpr_q95": float(min(per[g]["tpr_q95"] for g in unseen)),
                    "xstest_safe_fpr": float((lx[xs_safe] > t).mean()),
                    "xstest_unsafe_tpr": float((lx[~xs_safe] > t).mean()),
                }
                per_seed.append(
                    {"seed": seed, "threshold": res["threshold"], "summary": summary, "per_language": per}
                )
            mean = {k: float(np.mean([s["summary"][k] for s in per_seed])) for k in per_seed[0]["summary"]}
            spread = {k: float(np.std([s["summary"][k] for s in per_seed])) for k in per_seed[0]["summary"]}
            per_lang = {
                g: {
                    k: float(np.mean([s["per_language"][g][k] for s in per_seed]))
                    for k in per_seed[0]["per_language"][g]
                }
                for g in LANGUAGES
            }
            results[name] = {
                "language_id_accuracy": lid[name],
                "mean": mean,
                "sd": spread,
                "per_language": per_lang,
                "per_seed": [
                    {k: v for k, v in r.items() if k != "per_language"} for r in per_seed
                ],  # summaries
            }
            print(
                f"{name:9s} LID {lid[name]:.2f} | unseen AUROC {mean['auroc']:.3f} (worst {mean['worst_unseen_auroc']:.3f})"
                f" | q95 TPR {mean['tpr_q95']:.2f} FPR {mean['fpr_q95']:.2f} (worst TPR {mean['worst_unseen_tpr_q95']:.2f})"
                f" | global TPR {mean['tpr_global']:.2f} FPR {mean['fpr_global']:.2f}"
                f" | TPR@5%FPR {mean['tpr_at_fpr_05']:.2f} (at 10% XSTest-MT safe {mean['tpr_at_mt_safe_fpr_10']:.2f})"
                f" | XSTest-MT safe flagged q95 {mean['xstest_mt_safe_flagged_q95']:.2f}"
                f" unsafe {mean['xstest_mt_unsafe_flagged_q95']:.2f} | XSTest safe FPR {mean['xstest_safe_fpr']:.3f}"
                f" | seen AUROC {mean['seen_auroc']:.3f}"
            )
        return results

    by_set: dict[str, dict] = {}
    for ls in layer_sets:
        tag = "+".join(map(str, ls))
        print(f"layer(s) {tag}")
        by_set[tag] = compare(torch.cat([by_layer[k] for k in ls], dim=1))
    if args.out:
        out = {
            "ssi_dir": str(d),
            "ssi_layer": layer,
            "layer_sets": list(by_set),
            "seeds": args.seeds,
            "threshold_rule": "balanced accuracy on validation"
            if args.val_fpr is None
            else f"at most {args.val_fpr} FPR on validation benign rows",
            "n_eval_per_language": {g: int((ev_lang == g).sum()) for g in LANGUAGES},
            "n_xstest_mt_per_label": n_mt,
            "eraser": "concept_erasure.LeaceEraser on 50 FLORES ids x 10 languages (ids 50-99 of calibration_prompts)",
            "q95_thresholds_from": "FLORES ids 0-49 (disjoint from the eraser's)",
            "results": by_set,
        }
        write_json(f"{args.out}.json", out)
        command = ["python scripts/gate_erasure.py", str(d), "--seeds", *map(str, args.seeds)]
        if args.layer_sets:
            command += ["--layer-sets", *args.layer_sets]
        if args.val_fpr is not None:
            command += ["--val-fpr", str(args.val_fpr)]
        Path(f"{args.out}.md").write_text(_markdown(out, unseen, " ".join([*command, "--out", args.out])))


def _markdown(out: dict, unseen: list[str], command: str) -> str:
    lines = [
        "# Language-identity erasure (LEACE) and layer sets before the SSI",
        "",
        f"Generated by `{command}`: the SSI retrained as `lasa interpret` trains it on each representation, "
        f"means over seeds {out['seeds']} (sd of unseen AUROC in brackets). Unseen languages: {' '.join(unseen)}. "
        "q95: lasa's default per-language rule (an unseen language's threshold raised to the 95th percentile "
        "of its FLORES logits); one threshold: the validated en + zh threshold everywhere; TPR at 5% FPR: the "
        "best threshold per language chosen with the labels (what the representation allows, not a rule); TPR at "
        "10% translated safe XSTest flagged: likewise, the threshold that keeps that language's translated safe "
        "XSTest prompts at the over-refusal bar (10%). e5: multilingual-e5-small's query vector of the prompt, "
        "an external encoder in place of the model's state.",
        "",
        "| layer(s) | representation | language ID (held-out FLORES) | unseen AUROC | worst | TPR / FPR (q95) "
        "| worst TPR (q95) | TPR / FPR (one threshold) | TPR at 5% FPR | TPR at 10% translated safe XSTest "
        "flagged | translated safe XSTest flagged (q95) | unsafe flagged | XSTest safe FPR (en) | seen AUROC |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for tag, res in out["results"].items():
        for name, r in res.items():
            m, s = r["mean"], r["sd"]
            lines.append(
                f"| {tag} | {name} | {r['language_id_accuracy']:.2f} | {m['auroc']:.3f} ({s['auroc']:.3f}) | "
                f"{m['worst_unseen_auroc']:.3f} | {m['tpr_q95']:.2f} / {m['fpr_q95']:.2f} | "
                f"{m['worst_unseen_tpr_q95']:.2f} | {m['tpr_global']:.2f} / {m['fpr_global']:.2f} | "
                f"{m['tpr_at_fpr_05']:.2f} | {m['tpr_at_mt_safe_fpr_10']:.2f} | {m['xstest_mt_safe_flagged_q95']:.2f} | "
                f"{m['xstest_mt_unsafe_flagged_q95']:.2f} | {m['xstest_safe_fpr']:.3f} | {m['seen_auroc']:.3f} |"
            )
    lines += [
        "",
        "Per language (AUROC / TPR q95 / FPR q95 / TPR at 5% FPR / translated safe XSTest flagged q95):",
        "",
        "| layer(s) | representation | " + " | ".join(unseen) + " |",
        "|---|---|" + "---|" * len(unseen),
    ]
    for tag, res in out["results"].items():
        for name, r in res.items():
            cells = []
            for g in unseen:
                q = r["per_language"][g]
                cells.append(
                    f"{q['auroc']:.2f} / {q['tpr_q95']:.2f} / {q['fpr_q95']:.2f} / {q['tpr_at_fpr_05']:.2f} / "
                    f"{q['xstest_mt_safe_flagged_q95']:.2f}"
                )
            lines.append(f"| {tag} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
