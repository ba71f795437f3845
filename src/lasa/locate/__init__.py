"""Stage 1 — locate the semantic bottleneck (see :mod:`lasa.locate.stage`).

- :mod:`~lasa.locate.stage`: ``lasa locate`` (states cache, scoring, plots, artefacts written together);
- :mod:`~lasa.locate.scores`: the points, per-layer silhouettes with bootstrap bands, the rule;
- :mod:`~lasa.locate.plots`: layer-score curves and t-SNE;
- :mod:`~lasa.locate.bottleneck`: the artefacts, typed (:class:`Bottleneck`) and their loaders.
"""

from lasa.locate.bottleneck import PAPER_BAND, RULE, Bottleneck, load_layer_scores, load_points
from lasa.locate.scores import choose_bottleneck, score_layers
from lasa.locate.stage import run_locate

__all__ = [
    "PAPER_BAND",
    "RULE",
    "Bottleneck",
    "choose_bottleneck",
    "load_layer_scores",
    "load_points",
    "run_locate",
    "score_layers",
]
