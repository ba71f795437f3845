"""lasa: multilingual LLM safety alignment at the semantic bottleneck.

Stages mirror the LASA paper (arXiv 2604.12710): ``locate`` the semantic bottleneck layer,
``interpret`` it with a small safety probe (the SSI), ``align`` with semantic-conditioned KTO and
``evaluate`` attack success across ten languages. Each stage is a plain function over
(config, run directory) that the ``lasa`` CLI merely calls; they, their configs and the artefact
loaders are importable from here::

    import lasa
    lasa.run_locate(lasa.LocateConfig(model="default", run_dir="runs/x"))
    ssi = lasa.SSI.load("runs/x")

Names load on first use, so ``import lasa`` stays fast (no torch, no transformers).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from lasa.errors import LasaError

#: public name -> "module:attribute", imported on first access
_LAZY: dict[str, str] = {
    # stages
    "run_locate": "lasa.locate:run_locate",
    "run_interpret": "lasa.interpret:run_interpret",
    "run_align": "lasa.align:run_align",
    "run_generate": "lasa.evaluate:run_generate",
    "run_evaluate": "lasa.evaluate:run_evaluate",
    "run_pipeline": "lasa.pipeline:run_pipeline",
    "build_report": "lasa.report:build_report",
    "check_judges": "lasa.judge_check:check_judges",
    # configs
    "LocateConfig": "lasa.config:LocateConfig",
    "InterpretConfig": "lasa.config:InterpretConfig",
    "AlignConfig": "lasa.config:AlignConfig",
    "GenerateConfig": "lasa.config:GenerateConfig",
    "EvaluateConfig": "lasa.config:EvaluateConfig",
    "RunConfig": "lasa.config:RunConfig",
    "VARIANTS": "lasa.config:VARIANTS",
    # artefacts and building blocks
    "Bottleneck": "lasa.locate:Bottleneck",
    "load_layer_scores": "lasa.locate:load_layer_scores",
    "SSI": "lasa.ssi:SSI",
    "load_metrics": "lasa.interpret:load_metrics",
    "load_results": "lasa.evaluate:load_results",
    "load_model": "lasa.models:load_model",
    "load_adapter": "lasa.models:load_adapter",
    "Gate": "lasa.generate:Gate",
    "GenerationSettings": "lasa.generate:GenerationSettings",
    "generate_all": "lasa.generate:generate_all",
    "get_judge": "lasa.judges:get_judge",
    "JudgeItem": "lasa.judges:JudgeItem",
    "DEFAULT_JUDGE": "lasa.judges:DEFAULT_JUDGE",
    "CONDITIONING_TEXT": "lasa.conditioning:CONDITIONING_TEXT",
    "wilson": "lasa.stats:wilson",
    # what the stage functions return
    "InterpretResult": "lasa.results:InterpretResult",
    "AlignResult": "lasa.results:AlignResult",
    "GenerateResult": "lasa.results:GenerateResult",
    "EvaluateResult": "lasa.results:EvaluateResult",
}

__all__ = ["LasaError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'lasa' has no attribute {name!r}")
    import importlib

    module, attr = target.split(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
