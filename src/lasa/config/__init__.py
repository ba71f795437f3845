"""One config dataclass per stage; the YAML file and the ``--flags`` are the same keys.

The fields carry their help text in ``metadata["help"]`` (the TRL/transformers convention), so the
same class documents the Python API, ``lasa <stage> --help`` and the YAML presets in ``configs/``.
Precedence: dataclass default < YAML file (``--config``) < command-line flag.

A YAML file may hold keys for several stages at once (a ``lasa run`` preset): top-level keys apply
to every stage that has a field of that name, and a mapping named after a stage applies to that
stage only::

    model: default
    run_dir: runs/qwen05b
    locate:
      n_queries: 100
"""

from lasa.config.base import StageConfig, config_fields, load_yaml_for, parse_stage_args
from lasa.config.evaluation import EvaluateConfig, GenerateConfig, JudgeCheckConfig, JudgeConfig
from lasa.config.registry import DEFAULT_JUDGE, JUDGES, UTILITY_TASKS, VARIANTS
from lasa.config.stages import (
    AlignConfig,
    InterpretConfig,
    LocateConfig,
    ModelsConfig,
    ReportConfig,
    RunConfig,
)

STAGE_CONFIGS: dict[str, type[StageConfig]] = {
    "locate": LocateConfig,
    "interpret": InterpretConfig,
    "align": AlignConfig,
    "generate": GenerateConfig,
    "evaluate": EvaluateConfig,
    "run": RunConfig,
}


#: Section names a YAML preset may hold (a stage ignores the others' sections).
STAGE_SECTIONS = ("locate", "interpret", "align", "generate", "evaluate", "report", "run", "judge_check")


__all__ = [
    "DEFAULT_JUDGE",
    "JUDGES",
    "STAGE_CONFIGS",
    "STAGE_SECTIONS",
    "UTILITY_TASKS",
    "VARIANTS",
    "AlignConfig",
    "EvaluateConfig",
    "GenerateConfig",
    "InterpretConfig",
    "JudgeCheckConfig",
    "JudgeConfig",
    "LocateConfig",
    "ModelsConfig",
    "ReportConfig",
    "RunConfig",
    "StageConfig",
    "config_fields",
    "load_yaml_for",
    "parse_stage_args",
]
