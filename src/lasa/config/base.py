"""The fields every stage shares and the parser that fills a stage config from YAML and flags
(precedence: dataclass default < ``--config`` YAML < flag; see :mod:`lasa.config`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml

from lasa.errors import LasaError

T = TypeVar("T", bound="StageConfig")


@dataclass
class StageConfig:
    """Fields every stage shares."""

    model: str = field(
        default="default",
        metadata={
            "help": "Model to use: an HF hub id or local directory, a .gguf file, or an embedded model name "
            "('default' = qwen2.5-coder-0.5b, or qwen2.5-coder-1.5b). See `lasa models list`."
        },
    )
    run_dir: str = field(
        default="runs/default",
        metadata={"help": "Run directory; each stage writes its artefacts to RUN_DIR/<stage>/."},
    )
    seed: int = field(default=42, metadata={"help": "Random seed for every sampling step of the stage."})
    device: str = field(
        default="auto",
        metadata={"help": "Torch device: 'auto' (cuda, then mps, then cpu), 'cpu', 'cuda:0', ..."},
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(
        default="auto",
        metadata={
            "help": "Model weights dtype; 'auto' = float32 on CPU (bf16 is slower there), bfloat16 on GPU."
        },
    )

    #: Stage name: the YAML section and the key in RUN/config.yaml.
    stage: ClassVar[str] = "stage"

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise LasaError(f"--seed must be >= 0, got {self.seed}")

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_yaml(cls: type[T], path: str | Path | None = None, **overrides: Any) -> T:
        """Python-API twin of ``--config FILE --key value``: YAML values, then keyword overrides."""
        values = load_yaml_for(cls, path) if path else {}
        unknown = set(overrides) - {f.name for f in config_fields(cls)}
        if unknown:
            raise LasaError(f"{cls.__name__} has no field(s) {', '.join(sorted(unknown))}")
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in config_fields(type(self))}


def config_fields(cls: type[StageConfig]) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def load_yaml_for(cls: type[StageConfig], path: str | Path) -> dict[str, Any]:
    """The keys of a (possibly multi-stage) YAML file that apply to the stage ``cls``."""
    path = Path(path)
    if not path.is_file():
        raise LasaError(f"config file not found: {path}")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise LasaError(f"{path}:{where} is not valid YAML; fix the file") from None
    if not isinstance(doc, dict):
        raise LasaError(f"{path} must hold a YAML mapping of config keys")
    from lasa.config import STAGE_CONFIGS, STAGE_SECTIONS  # the registry of every stage's config

    known = {f.name for f in config_fields(cls)}
    all_stage_names = set(STAGE_CONFIGS) | set(STAGE_SECTIONS)
    all_known = {f.name for c in STAGE_CONFIGS.values() for f in config_fields(c)}
    stage = cls.stage
    values: dict[str, Any] = {}
    for key, value in doc.items():
        if key in all_stage_names:
            continue
        if key in known:
            values[key] = value
        elif key not in all_known:
            raise LasaError(f"{path}: unknown key {key!r}; see `lasa <stage> --help` for the valid keys")
    section = doc.get(stage) or {}
    if not isinstance(section, dict):
        raise LasaError(f"{path}: section {stage!r} must be a mapping")
    for key, value in section.items():
        if key not in known:
            raise LasaError(
                f"{path}: unknown key {stage}.{key}; see `lasa {stage} --help` for the valid keys"
            )
        values[key] = value
    return values


def _tidy_help(parser: Any) -> None:
    """Show each flag once, in dash style (``--run-dir``; ``--run_dir`` is still accepted), and give
    the ``--no-X`` switches HfArgumentParser adds their own help instead of the positive flag's."""
    for action in parser._actions:
        opts = action.option_strings
        if not opts:
            continue
        dashed = [o for o in opts if "_" not in o.lstrip("-")] or [opts[0].replace("_", "-")]
        action.option_strings = dashed  # parsing still knows every alias (parser._option_string_actions)
        long = next((o for o in dashed if o.startswith("--no-")), None)
        if long and action.const is False:
            positive = long.removeprefix("--no-")
            action.help = f"Turn --{positive} off."


def parse_stage_args(cls: type[T], argv: Sequence[str], prog: str, description: str | None = None) -> T:
    """Parse ``--config FILE`` and flags into ``cls`` (flags win), with a one-line error on bad input."""
    from trl import TrlParser

    parser = TrlParser(dataclass_types=[cls], prog=prog, description=description, allow_abbrev=False)
    parser.add_argument(
        "--config",
        metavar="FILE.yaml",
        help="YAML file with any of the keys below (top-level, or under a section named after the stage); "
        "flags override it.",
    )
    _tidy_help(parser)
    argv = list(argv)
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise LasaError("--config needs a file path")
        parser.set_defaults_with_config(**load_yaml_for(cls, argv[i + 1]))
        del argv[i : i + 2]
    try:
        cfg, *_, unknown = parser.parse_args_into_dataclasses(
            args=argv, look_for_args_file=False, return_remaining_strings=True
        )
    except TypeError as err:  # dataclass __init__ rejecting a YAML value of the wrong shape
        raise LasaError(str(err)) from None
    if unknown:  # HfArgumentParser would raise a ValueError with a traceback
        raise LasaError(f"unrecognized arguments: {' '.join(unknown)} (see `{prog} --help`)")
    return cfg
