"""Which refusal detector to trust for XSTest over-refusal? Held out by model on XSTest's labels.

Usage::

    python scripts/refusal_detector.py

XSTest v2 ships 2,250 human-labelled completions of five models (``data/xstest``). The e5 refusal
classifier is refitted without each model and scored on it (leave-one-model-out); the refusal
phrases of :mod:`lasa.judges.lexicon` need no fitting. Prints recall, false-alarm rate and κ of the
classifier, the phrases (all, and without the disclaimer / harm-lecture ones), and either (the
last is what :func:`lasa.judges.lexicon.refusal_flag` uses).
"""

from __future__ import annotations

import numpy as np


def main() -> None:
    import argparse

    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help, and no stray args
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import cohen_kappa_score

    from lasa.judges.embedding import Encoder, xstest_completions
    from lasa.judges.lexicon import is_refusal

    rows = xstest_completions()
    models = np.array([r["model"] for r in rows])
    x = Encoder().passages([r["completion"] for r in rows], progress=True)
    y = np.array([bool(r["refusal"]) for r in rows])
    p = np.zeros(len(rows))
    for m in dict.fromkeys(models):
        te = models == m
        clf = LogisticRegression(C=4.0, max_iter=5000, class_weight="balanced").fit(x[~te], y[~te])
        p[te] = clf.predict_proba(x[te])[:, 1]
    phrase = np.array([is_refusal(r["completion"], "en", r["prompt"]) is not None for r in rows])
    strict = np.array(
        [is_refusal(r["completion"], "en", r["prompt"], disclaimers=False) is not None for r in rows]
    )
    print(f"{len(rows)} completions, {y.sum()} refusals, models held out one at a time\n")
    print("| detector | κ | recall | false alarms | recall per held-out model |")
    print("|---|---|---|---|---|")
    for name, pred in (
        ("e5 classifier", p >= 0.5),
        ("refusal phrases", phrase),
        ("refusal phrases without disclaimers / lectures", strict),
        ("either", (p >= 0.5) | phrase),
        ("either, without disclaimers / lectures (default)", (p >= 0.5) | strict),
    ):
        per = ", ".join(f"{m} {pred[(models == m) & y].mean():.2f}" for m in dict.fromkeys(models))
        print(
            f"| {name} | {cohen_kappa_score(y, pred):.3f} | {pred[y].mean():.3f} | {pred[~y].mean():.3f} | {per} |"
        )


if __name__ == "__main__":
    main()
