"""How an SSI is measured: binary metrics per language (AUROC, TPR/FPR at the operating point, the
oracle TPR at 5% FPR), macro means over seen / unseen languages, the surface-form control, and the
flag rates on the translated XSTest prompts."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lasa.data.safety import Prompt
from lasa.ssi import SSI


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
