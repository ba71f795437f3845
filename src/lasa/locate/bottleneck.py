"""The locate stage's artefacts: ``bottleneck.json`` as a typed :class:`Bottleneck`, and the
loaders of ``layer_scores.json`` and the cached points."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from lasa.errors import LasaError
from lasa.runs import (
    RunDir,
    read_json,
    read_jsonl,
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
    #: :func:`lasa.models.weights_signature` of the located model (None: located by an older lasa)
    model_weights: str | None = None

    @classmethod
    def load(cls, run_dir: str | Path) -> Bottleneck:
        rd = RunDir(run_dir)
        doc = rd.load(rd.bottleneck, "lasa locate")
        missing = [k for k in cls.__dataclass_fields__ if k not in doc and k != "model_weights"]
        if missing or not isinstance(doc.get("layer"), int):
            raise LasaError(
                f"{rd.bottleneck} is damaged (missing or bad {', '.join(missing) or 'layer'}); "
                f"rerun `lasa locate --run-dir {run_dir} --force`"
            )
        return cls(**{k: doc[k] for k in cls.__dataclass_fields__ if k in doc})

    def layer_for(self, model: str, run_dir: str | Path, flag: str = "--layer") -> int:
        """The located layer, if it was located on ``model``: another model's bottleneck (a run
        directory reused with a new ``--model``) is a layer of the wrong network."""
        from lasa.models import canonical_spec, weights_signature

        if canonical_spec(self.model) != canonical_spec(model):
            raise LasaError(
                f"{RunDir(run_dir).bottleneck} was located on {self.model}, not {model}; run "
                f"`lasa locate --model {model} --run-dir {run_dir} --force`, or pass {flag} N"
            )
        # new weights under the same path (a retrained or re-converted checkpoint): `lasa run` sees
        # them, and a hand-run stage must too
        if self.model_weights is not None and self.model_weights != weights_signature(model):
            raise LasaError(
                f"{RunDir(run_dir).bottleneck} was located on other weights at {model} (they changed "
                f"since); run `lasa locate --model {model} --run-dir {run_dir} --force`, or pass {flag} N"
            )
        return self.layer


def load_layer_scores(run_dir: str | Path) -> list[dict]:
    path = RunDir(run_dir).locate / "layer_scores.json"
    if not path.is_file():
        raise LasaError(f"{path} not found; run `lasa locate --run-dir {run_dir}` first")
    rows = read_json(path)
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "layer" in r for r in rows):
        # a hand-edited or foreign file came back as whatever it held ({}, null, a dict of strings)
        raise LasaError(f"{path} is damaged (not a list of per-layer rows); rerun `lasa locate --force`")
    return rows


def load_points(run_dir: str | Path) -> list[dict]:
    return read_jsonl(RunDir(run_dir).locate / "points.jsonl")
