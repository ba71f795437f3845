"""Stage 2 — interpret: train the SSI on a few languages and measure how far it transfers.

- :mod:`~lasa.interpret.stage`: ``lasa interpret`` (states cache, fit, calibrate, measure, write);
- :mod:`~lasa.interpret.train`: the split and the training loop;
- :mod:`~lasa.interpret.calibrate`: the validated threshold and per-language offsets;
- :mod:`~lasa.interpret.metrics`: per-language metrics, the form control, translated XSTest;
- :mod:`~lasa.interpret.sweep`: the layer sweep and the label-free transfer layer.

The SSI artefact itself (network, calibration, checks, scoring) is :mod:`lasa.ssi`.
"""

from lasa.interpret.stage import load_metrics, run_interpret

__all__ = ["load_metrics", "run_interpret"]
