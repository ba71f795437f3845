"""Stage 2 — interpret: train the SSI on a few languages and measure how far it transfers.

``metrics.json`` reports the SSI per language (seen vs unseen), next to two controls that keep the
number honest: a form-only probe (does "question vs not" already separate the evaluation set?)
and the false-positive rate on XSTest's safe-but-scary prompts. States are cached per prompt, so
changing the recipe re-extracts only what is new.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lasa.config import InterpretConfig
from lasa.data.safety import Prompt, evaluation_prompts, training_prompts, validate_train_langs, xstest
from lasa.errors import LasaError
from lasa.models import LoadedModel, base_model, validate_layer
from lasa.runs import RunDir, atomic_path, fingerprint, save_figure, write_json
from lasa.ssi import INDEX_CONVENTION, SSI, LanguageCalibration, SafetySemanticInterpreter

logger = logging.getLogger(__name__)


# -- training --------------------------------------------------------------------------------


def group_split(prompts: Sequence[Prompt], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Train/validation indices; all translations of one item (same ``id``) land on the same side."""
    train, val = [], []
    for i, p in enumerate(prompts):
        h = int(hashlib.sha256(f"{seed}:{p.id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        (val if h < val_fraction else train).append(i)
    return train, val


def calibrate_threshold(
    probs: np.ndarray, labels: np.ndarray, lo: float = 0.30, hi: float = 0.70
) -> tuple[float, float]:
    """The grid threshold in [lo, hi] (step 0.01) with the best balanced accuracy on validation."""
    labels = np.asarray(labels).astype(bool)
    best_t, best = lo, -1.0
    for t in np.round(np.arange(lo, hi + 1e-9, 0.01), 2):
        pred = probs > t
        tpr = pred[labels].mean() if labels.any() else 0.0
        tnr = (~pred[~labels]).mean() if (~labels).any() else 0.0
        bacc = (tpr + tnr) / 2
        if bacc > best + 1e-12:
            best_t, best = float(t), float(bacc)
    return best_t, best


def train_ssi(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    cfg: InterpretConfig,
) -> tuple[SafetySemanticInterpreter, list[dict], float, float]:
    """AdamW + BCE-with-logits (pos_weight when unbalanced), grad clip, early stopping on val loss.

    Returns the best module, the per-epoch log, the calibrated threshold and its val balanced acc.
    """
    from sklearn.metrics import roc_auc_score

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = SafetySemanticInterpreter(x_train.shape[1], cfg.hidden, cfg.dropout)
    model.fit_scaler(x_train)
    n_pos = float(y_train.sum())
    n_neg = float(len(y_train) - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise LasaError("SSI training data has a single class; check --train-langs")
    pos_weight = torch.tensor(n_neg / n_pos) if abs(n_neg / n_pos - 1) > 0.1 else None
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    val_loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best_state, best_loss, bad, log = None, math.inf, 0, []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        perm = torch.randperm(len(x_train), generator=gen)
        total = 0.0
        for i in range(0, len(perm), cfg.train_batch_size):
            idx = perm[i : i + cfg.train_batch_size]
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            total += loss.item() * len(idx)
        model.eval()
        with torch.no_grad():
            logits = model(x_val)
            vloss = float(val_loss_fn(logits, y_val))
        vauc = (
            float(roc_auc_score(y_val.numpy(), logits.numpy()))
            if 0 < y_val.sum() < len(y_val)
            else float("nan")
        )
        log.append({"epoch": epoch, "train_loss": total / len(x_train), "val_loss": vloss, "val_auroc": vauc})
        if vloss < best_loss - 1e-4:
            best_loss, bad = vloss, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        val_probs = torch.sigmoid(model(x_val)).numpy()
    threshold, bacc = calibrate_threshold(val_probs, y_val.numpy(), *cfg.threshold_range)
    return model, log, threshold, bacc


# -- evaluation ------------------------------------------------------------------------------


def binary_metrics(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels).astype(bool)
    pred = np.asarray(probs) > threshold
    both = labels.any() and (~labels).any()
    return {
        "auroc": float(roc_auc_score(labels, probs)) if both else float("nan"),
        "accuracy": float((pred == labels).mean()),
        "tpr": float(pred[labels].mean()) if labels.any() else float("nan"),
        "fpr": float(pred[~labels].mean()) if (~labels).any() else float("nan"),
        "tpr_at_fpr_05": tpr_at_fpr(probs, labels, 0.05) if both else float("nan"),
        "n_harmful": int(labels.sum()),
        "n_benign": int((~labels).sum()),
    }


def tpr_at_fpr(probs: np.ndarray, labels: np.ndarray, max_fpr: float) -> float:
    """The best TPR of any threshold whose FPR is at most ``max_fpr`` (an oracle operating point:
    it uses the labels, so it says what the layer allows, not what the gate does)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(np.asarray(labels).astype(bool), probs)
    return float(tpr[fpr <= max_fpr + 1e-12].max())


def per_language(probs: np.ndarray, prompts: Sequence[Prompt], threshold: float) -> dict[str, dict]:
    langs = list(dict.fromkeys(p.lang for p in prompts))
    labels = np.array([p.label for p in prompts])
    lang_of = np.array([p.lang for p in prompts])
    return {
        lang: binary_metrics(probs[lang_of == lang], labels[lang_of == lang], threshold) for lang in langs
    }


def macro(table: dict[str, dict], langs: Sequence[str], keys=("auroc", "accuracy", "tpr", "fpr")) -> dict:
    rows = [table[lang] for lang in langs if lang in table]
    if not rows:
        return {}
    out = {k: float(np.nanmean([r[k] for r in rows])) for k in keys}
    out["worst_auroc"] = float(np.nanmin([r["auroc"] for r in rows]))
    out["languages"] = [lang for lang in langs if lang in table]
    return out


def form_control(
    x_train: torch.Tensor, train: Sequence[Prompt], x_eval: torch.Tensor, evalp: Sequence[Prompt], seed: int
) -> dict:
    """How far surface form alone separates the evaluation sets (a high number here makes the SSI's
    number there uninformative): the AUROC of (a) "ends with a question mark" and (b) a linear
    probe trained on the same states to predict question-vs-not (never harmfulness)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from lasa.data.safety import guess_form

    y_form = np.array([p.form == "question" for p in train])
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1, random_state=seed))
    probe.fit(x_train.numpy(), y_form)
    p_question = probe.predict_proba(x_eval.numpy())[:, 1]
    out = {}
    for lang in dict.fromkeys(p.lang for p in evalp):
        idx = [i for i, p in enumerate(evalp) if p.lang == lang]
        labels = np.array([evalp[i].label for i in idx])
        qmark = np.array([guess_form(evalp[i].text) == "question" for i in idx], dtype=float)
        ok = 0 < labels.sum() < len(labels)
        out[lang] = {
            "question_mark_auroc": float(roc_auc_score(labels, qmark)) if ok else float("nan"),
            "form_probe_auroc": float(roc_auc_score(labels, p_question[idx])) if ok else float("nan"),
            "share_questions_harmful": float(qmark[labels == 1].mean()) if labels.any() else float("nan"),
            "share_questions_benign": float(qmark[labels == 0].mean())
            if (labels == 0).any()
            else float("nan"),
        }
    return out


# -- per-language calibration -----------------------------------------------------------------


def xstest_mt_rows(n: int) -> list[dict]:
    """The first ``n`` safe and ``n`` unsafe XSTest prompts in each of the nine translated languages."""
    from lasa.data import LANGUAGES
    from lasa.data.safety import xstest_multilingual

    if n <= 0:
        return []
    out = []
    for lang in LANGUAGES[1:]:
        rows = xstest_multilingual(lang)
        out += [r for r in rows if r["label"] == "safe"][:n] + [r for r in rows if r["label"] != "safe"][:n]
    return out


def xstest_mt_metrics(ssi: SSI, x: torch.Tensor, rows: Sequence[dict]) -> dict[str, dict]:
    """Per language: the share of translated safe XSTest prompts the SSI flags (FPR) and of unsafe
    ones (TPR)."""
    flags = ssi.flags(ssi.predict_proba(x))
    out: dict[str, dict] = {}
    for lang in dict.fromkeys(r["lang"] for r in rows):
        safe = np.array([r["lang"] == lang and r["label"] == "safe" for r in rows])
        unsafe = np.array([r["lang"] == lang and r["label"] != "safe" for r in rows])
        out[lang] = {
            "fpr_safe": float(flags[safe].mean()),
            "tpr_unsafe": float(flags[unsafe].mean()),
            "n_safe": int(safe.sum()),
            "n_unsafe": int(unsafe.sum()),
        }
    return out


def calibration_prompts(pool: Sequence[Prompt], n: int) -> list[Prompt]:
    """``n`` parallel FLORES sentences per MultiJail language, none of them in the SSI's training
    pool (the same ids in every language), from FLORES' train split (evaluation uses dev/test)."""
    from lasa.data import LANGUAGES
    from lasa.data.safety import flores

    used = {p.id for p in pool if p.source == "flores"}
    ids = [p.id for p in flores("en", "train") if p.id not in used][:n]
    keep = set(ids)
    return [p for lang in LANGUAGES for p in flores(lang, "train") if p.id in keep]


def fit_language_calibration(
    ssi: SSI,
    x: torch.Tensor,
    prompts: Sequence[Prompt],
    seen: Sequence[str],
    seed: int,
    benign_fpr: float = 0.05,
) -> tuple[LanguageCalibration, dict]:
    """Fit :class:`lasa.ssi.LanguageCalibration` on states ``x`` of parallel benign sentences.

    Each unseen language gets the offset that moves its effective threshold up to the
    ``1 - benign_fpr`` quantile of the SSI's logit on its own benign sentences, when that quantile
    lies above the validated threshold (it never lowers a threshold); the training languages keep
    0. So in a language whose ordinary text already scores "harmful", the gate fires on at most
    about ``benign_fpr`` of ordinary text. (Matching medians instead over-corrects: FLORES
    statements in an unseen language sit far above the training languages', harmful requests do
    not move as much, and the gate stops firing at all; ``scripts/gate_calibration.py`` compares.)
    The language-ID head's accuracy is measured on held-out sentence ids, then it is refitted on
    all of them.
    """
    from sklearn.linear_model import LogisticRegression

    langs = list(dict.fromkeys(p.lang for p in prompts))
    y = np.array([langs.index(p.lang) for p in prompts])
    with torch.inference_mode():
        z = ssi.module.standardise(torch.as_tensor(x, dtype=torch.float32))
        raw = ssi.module(torch.as_tensor(x, dtype=torch.float32)).numpy()
    ids = sorted({p.id for p in prompts})
    held = set(ids[::5])  # every 5th sentence id: all its translations are held out together
    is_held = np.array([p.id in held for p in prompts])

    def lid() -> LogisticRegression:
        return LogisticRegression(C=0.1, max_iter=3000, random_state=seed)

    probe = lid().fit(z.numpy()[~is_held], y[~is_held])
    lid_accuracy = float((probe.predict(z.numpy()[is_held]) == y[is_held]).mean())
    probe = lid().fit(z.numpy(), y)
    t_logit = math.log(ssi.threshold / (1 - ssi.threshold))
    quantiles = {g: float(np.quantile(raw[y == k], 1 - benign_fpr)) for k, g in enumerate(langs)}
    offsets = {g: 0.0 if g in seen else max(0.0, quantiles[g] - t_logit) for g in langs}
    coef, intercept = probe.coef_, probe.intercept_
    if len(langs) == 2:  # sklearn's binary head: p(second) = sigmoid(w.z + b) = softmax([0, w.z + b])
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    cal = LanguageCalibration(
        langs,
        torch.tensor(coef, dtype=torch.float32),
        torch.tensor(intercept, dtype=torch.float32),
        torch.tensor([offsets[g] for g in langs], dtype=torch.float32),
    )
    report = {
        "method": "flores",
        "rule": f"unseen language: raise its threshold to the {1 - benign_fpr:.2f} quantile of the SSI's logit on "
        "its FLORES sentences when that is higher (never lower); training languages unchanged",
        "data": f"FLORES-200 (SIB-200) train split, {len(ids)} parallel sentences per language, "
        "none in the SSI's training pool",
        "languages": langs,
        "offsets_logit": {g: round(v, 4) for g, v in offsets.items()},
        "benign_quantile_logit": {g: round(v, 4) for g, v in quantiles.items()},
        "threshold_logit": round(t_logit, 4),
        "language_id_heldout_accuracy": round(lid_accuracy, 4),
    }
    return cal, report


# -- states cache ----------------------------------------------------------------------------


def _text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _cached_states(
    out_dir: Path, key: str, texts: list[str], layers: list[int], lm: LoadedModel, cfg: InterpretConfig
) -> dict[int, torch.Tensor]:
    """States of ``texts`` at ``layers``, extracting only what the cache lacks.

    The cache is keyed per text (a hash of each row's text, stored with the tensors) under one
    settings key (model, pooling, truncation, format): adding prompts to the recipe extracts the
    new prompts only, and adding a layer extracts that layer only.
    """
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from lasa.hidden import extract_states

    path = out_dir / "states.safetensors"
    have: dict[int, torch.Tensor] = {}
    row_of: dict[str, int] = {}
    if path.is_file() and not cfg.force:
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("settings_key") == key and "text_keys" in meta:
                    have = {int(k.split("_")[1]): f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
                    row_of = {h: i for i, h in enumerate(json.loads(meta["text_keys"]))}
        except Exception:
            logger.warning("ignoring unreadable cache %s", path)
    keys = [_text_key(t) for t in texts]
    new_rows = [i for i, h in enumerate(keys) if h not in row_of]
    cached_layers = [layer for layer in layers if layer in have]
    missing_layers = [layer for layer in layers if layer not in have]

    def extract(rows: list[int], which: list[int]) -> torch.Tensor:
        with base_model(lm):
            return extract_states(
                lm,
                [texts[i] for i in rows],
                layers=which,
                pooling=cfg.pooling,
                chat_template=cfg.chat_template,
                batch_size=cfg.batch_size,
                max_length=cfg.max_length,
                desc=f"interpret: {len(rows)} prompts at {len(which)} layer(s)",
            )

    out: dict[int, torch.Tensor] = {}
    if cached_layers:
        fresh = extract(new_rows, cached_layers) if new_rows else None
        src = torch.tensor([row_of.get(h, 0) for h in keys])  # cached row of each text (0: filled below)
        for j, layer in enumerate(cached_layers):
            out[layer] = have[layer][src]
            if fresh is not None:
                out[layer][torch.tensor(new_rows)] = fresh[:, j]
    if missing_layers:
        states = extract(list(range(len(texts))), missing_layers)
        for j, layer in enumerate(missing_layers):
            out[layer] = states[:, j].contiguous()
    if new_rows or missing_layers:
        # keep the cached layers this call did not ask for when the text list is unchanged
        keep = {k: v for k, v in have.items() if k not in out and not new_rows and len(row_of) == len(keys)}
        with atomic_path(path, suffix=".safetensors") as tmp:
            save_file(
                {f"layer_{k}": v.contiguous() for k, v in sorted((out | keep).items())},
                str(tmp),
                metadata={"settings_key": key, "text_keys": json.dumps(keys)},
            )
    return out


# -- stage -----------------------------------------------------------------------------------


@dataclass
class Split:
    """Row indices into the de-duplicated text list whose states were extracted."""

    train: list[int]
    val: list[int]
    eval: list[int]
    xstest: list[int]
    y_train: torch.Tensor
    y_val: torch.Tensor
    eval_prompts: list[Prompt]
    calibration: list[int] = field(default_factory=list)  # parallel FLORES rows (label-free)
    calibration_langs: list[str] = field(default_factory=list)


def _fit_and_evaluate(x: torch.Tensor, layer: int, split: Split, cfg: InterpretConfig) -> dict:
    module, log, threshold, bacc = train_ssi(x[split.train], split.y_train, x[split.val], split.y_val, cfg)
    ssi = SSI(module, {"layer": layer, "threshold": threshold, "pooling": cfg.pooling})
    probs = ssi.predict_proba(x[split.eval])
    return {
        "ssi": ssi,
        "log": log,
        "threshold": threshold,
        "val_balanced_accuracy": bacc,
        "probs": probs,
        "per_language": per_language(probs, split.eval_prompts, threshold),
    }


def run_interpret(cfg: InterpretConfig, lm: LoadedModel | None = None) -> dict:
    """Train, calibrate and evaluate the SSI (and optionally the layer sweep); returns metrics.json."""
    t0 = time.time()
    run = RunDir(cfg.run_dir)
    train_langs = validate_train_langs(cfg.train_langs)
    bottleneck_layer = None
    if run.bottleneck.is_file():
        from lasa.locate import Bottleneck

        bottleneck_layer = Bottleneck.load(cfg.run_dir).layer
    layer = cfg.layer if cfg.layer is not None else bottleneck_layer
    if layer is None:
        raise LasaError(
            f"no {cfg.run_dir}/locate/bottleneck.json; run `lasa locate --run-dir {cfg.run_dir}` "
            "first or pass --layer N"
        )
    if lm is None:
        from lasa.models import load_model, num_layers_of

        validate_layer(layer, num_layers_of(cfg.model))  # before a model load of a minute or more
        lm = load_model(cfg.model, cfg.device, cfg.dtype)
    num_layers = lm.num_layers
    validate_layer(layer, num_layers)
    out = run.stage(cfg.out_name)
    sweep_layers: list[int] = []
    if cfg.sweep:
        sweep_layers = sorted(
            set(range(cfg.sweep_every, num_layers + 1, cfg.sweep_every)) | {layer, num_layers}
        )

    pool, recipe = training_prompts(
        train_langs, cap=cfg.cap, seed=cfg.seed, with_hard_negatives=cfg.hard_negatives
    )
    evalp, benign_source = evaluation_prompts(None, cfg.eval_n_harmful, cfg.eval_n_benign, cfg.seed)
    xs = xstest()
    calp = calibration_prompts(pool, cfg.calibration_n) if cfg.calibration == "flores" else []
    xs_mt = xstest_mt_rows(cfg.xstest_mt_n)
    texts = list(
        dict.fromkeys(
            [p.text for p in pool]
            + [p.text for p in evalp]
            + [r["prompt"] for r in xs]
            + [p.text for p in calp]
            + [r["prompt"] for r in xs_mt]
        )
    )
    pos = {t: i for i, t in enumerate(texts)}
    key = fingerprint(
        {
            "model": cfg.model,
            "fp": lm.fingerprint.get("id"),
            "pooling": cfg.pooling,
            "max_length": cfg.max_length,
            **({"chat_template": True} if cfg.chat_template else {}),
        }
    )
    t1 = time.time()
    states = _cached_states(out, key, texts, sorted({layer, *sweep_layers}), lm, cfg)
    t_states = time.time() - t1
    tr, va = group_split(pool, cfg.val_fraction, cfg.seed)
    split = Split(
        train=[pos[pool[i].text] for i in tr],
        val=[pos[pool[i].text] for i in va],
        eval=[pos[p.text] for p in evalp],
        xstest=[pos[r["prompt"]] for r in xs],
        y_train=torch.tensor([pool[i].label for i in tr], dtype=torch.float32),
        y_val=torch.tensor([pool[i].label for i in va], dtype=torch.float32),
        eval_prompts=evalp,
        calibration=[pos[p.text] for p in calp],
        calibration_langs=[p.lang for p in calp],
    )

    t1 = time.time()
    res = _fit_and_evaluate(states[layer], layer, split, cfg)
    ssi: SSI = res["ssi"]
    table = res["per_language"]
    uncalibrated = None
    calibration_report: dict = {"method": "none"}
    if calp:
        x_cal = states[layer][[pos[p.text] for p in calp]]
        ssi.calibration, calibration_report = fit_language_calibration(
            ssi, x_cal, calp, train_langs, cfg.seed
        )
        uncalibrated = table
        table = per_language(ssi.predict_proba(states[layer][split.eval]), evalp, res["threshold"])
    seen = [g for g in table if g in train_langs]
    unseen = [g for g in table if g not in train_langs]
    for g, row in table.items():
        row["benign_source"] = benign_source[g]
        row["seen"] = g in train_langs
    xs_probs = ssi.predict_proba(states[layer][split.xstest])
    xs_safe = np.array([r["label"] == "safe" for r in xs])
    xs_mt_table = None
    if xs_mt:
        xs_mt_table = xstest_mt_metrics(ssi, states[layer][[pos[r["prompt"]] for r in xs_mt]], xs_mt)
        if uncalibrated is not None:
            raw = xstest_mt_metrics(
                ssi.without_calibration(), states[layer][[pos[r["prompt"]] for r in xs_mt]], xs_mt
            )
            for g, row in xs_mt_table.items():
                row["uncalibrated"] = {k: raw[g][k] for k in ("fpr_safe", "tpr_unsafe")}
    fc = form_control(
        states[layer][split.train], [pool[i] for i in tr], states[layer][split.eval], evalp, cfg.seed
    )
    hidden = cfg.hidden or lm.hidden_size
    n_params = sum(p.numel() for p in ssi.module.net.parameters())
    ssi.meta = {
        "model": cfg.model,
        "model_path": lm.path,
        "model_fingerprint": lm.fingerprint,
        "num_layers": num_layers,
        "layer": layer,
        "layer_source": "--layer" if cfg.layer is not None else "locate/bottleneck.json",
        "index_convention": INDEX_CONVENTION,
        "pooling": cfg.pooling,
        "chat_template": cfg.chat_template,
        "architecture": {
            "d_model": lm.hidden_size,
            "hidden": hidden,
            "dropout": cfg.dropout,
            "layout": "standardise -> Linear(d,h) -> LayerNorm(h) -> GELU -> Dropout -> Linear(h,1)",
        },
        "n_parameters": n_params,
        "fraction_of_model": n_params / sum(p.numel() for p in lm.model.parameters()),
        "threshold": res["threshold"],
        "threshold_rule": f"max balanced accuracy on validation, grid {cfg.threshold_range[0]:.2f}-"
        f"{cfg.threshold_range[1]:.2f} step 0.01",
        "train_languages": train_langs,
        "calibration": calibration_report,
        "data_recipe": recipe,
        "seed": cfg.seed,
    }
    ssi.save(out)
    question_form_unseen = [g for g in unseen if "flores" not in benign_source[g]]
    metrics = {
        "model": cfg.model,
        "layer": layer,
        "threshold": res["threshold"],
        "train_languages": train_langs,
        "seen_languages": seen,
        "unseen_languages": unseen,
        "per_language": table,
        "macro_seen": macro(table, seen),
        "macro_unseen": macro(table, unseen),
        "macro_unseen_question_form": macro(table, question_form_unseen),
        "xstest": {
            "fpr_safe": float((xs_probs[xs_safe] > res["threshold"]).mean()),
            "tpr_unsafe": float((xs_probs[~xs_safe] > res["threshold"]).mean()),
            "n_safe": int(xs_safe.sum()),
            "n_unsafe": int((~xs_safe).sum()),
        },
        "calibration": calibration_report,
        "per_language_uncalibrated": uncalibrated,
        "macro_unseen_uncalibrated": macro(uncalibrated, unseen) if uncalibrated else None,
        "xstest_multilingual": xs_mt_table,
        "form_control": fc,
        "validation": {"n": len(va), "balanced_accuracy": res["val_balanced_accuracy"]},
        "training": {"n_train": len(tr), "n_val": len(va), "epochs": res["log"], "recipe": recipe},
        "evaluation_data": {
            "harmful": "MultiJail "
            + (f"(first {cfg.eval_n_harmful} ids)" if cfg.eval_n_harmful else "(all 315 ids)"),
            "benign_source": benign_source,
            "n_benign_cap": cfg.eval_n_benign,
        },
        "timings": {"states_seconds": round(t_states, 1), "train_eval_seconds": round(time.time() - t1, 1)},
    }
    if cfg.sweep:
        t1 = time.time()
        metrics["layer_sweep"] = run_sweep(
            states, sweep_layers, split, cfg, train_langs, layer, out, question_form=question_form_unseen
        )
        metrics["timings"]["sweep_seconds"] = round(time.time() - t1, 1)
        metrics["transfer_layer"] = transfer_layer(metrics["layer_sweep"])
    metrics["timings"]["total_seconds"] = round(time.time() - t0, 1)
    write_json(run.ssi_metrics(cfg.out_name), metrics)  # written last: its presence means the stage finished
    stage = "interpret" if cfg.out_name == "ssi" else f"interpret:{cfg.out_name}"
    run.record(stage, cfg, {"timings": metrics["timings"]})
    logger.info(
        "interpret: layer %d, threshold %.2f; AUROC seen %.3f, unseen %.3f (worst %.3f); XSTest FPR %.3f",
        layer,
        res["threshold"],
        metrics["macro_seen"].get("auroc", float("nan")),
        metrics["macro_unseen"].get("auroc", float("nan")),
        metrics["macro_unseen"].get("worst_auroc", float("nan")),
        metrics["xstest"]["fpr_safe"],
    )
    return metrics


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
        runs = [_fit_and_evaluate(states[layer], layer, split, replace(cfg, seed=s)) for s in seeds]
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


def load_metrics(run_dir: str | Path, out_name: str = "ssi") -> dict:
    """``RUN/<out_name>/metrics.json`` (``--out-name`` of ``lasa interpret``; default ``ssi``)."""
    rd = RunDir(run_dir)
    return rd.load(rd.ssi_metrics(out_name), f"lasa interpret --out-name {out_name}")


__all__ = [
    "SSI",
    "SafetySemanticInterpreter",
    "calibrate_threshold",
    "load_metrics",
    "run_interpret",
    "train_ssi",
]
