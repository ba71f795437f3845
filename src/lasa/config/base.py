"""The fields every stage shares and the parser that fills a stage config from YAML and flags
(precedence: dataclass default < ``--config`` YAML < flag; see :mod:`lasa.config`)."""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml

from lasa.errors import LasaError

T = TypeVar("T", bound="StageConfig")


class _ConfigType(type):
    """Builds a stage config refusing an unknown field in one line, with the near miss: the Python
    API builds configs directly (``InterpretConfig(threshhold=0.5)``), where the dataclass's own
    ``TypeError`` named the bad key but not the field meant, as the YAML and flag parsers do."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        import dataclasses

        if dataclasses.is_dataclass(cls):
            names = {f.name for f in dataclasses.fields(cls) if f.init}
            unknown = [k for k in kwargs if k not in names]
            if unknown:
                stage = getattr(cls, "stage", "")
                raise LasaError(
                    f"{cls.__name__}: unknown field {unknown[0]!r}{_did_you_mean(unknown[0], names)}"
                    + (f"; see `lasa {stage} --help` for the fields" if stage and stage != "stage" else "")
                )
        return super().__call__(*args, **kwargs)


@dataclass
class StageConfig(metaclass=_ConfigType):
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
        # the Python API builds configs directly: its values get the YAML path's type checks
        hints = _type_hints(type(self))
        for f in config_fields(type(self)):
            flag = "--" + f.name.replace("_", "-")
            setattr(self, f.name, coerce_value(hints[f.name], getattr(self, f.name), flag))
        if not 0 <= self.seed < 2**32:  # numpy's RandomState (sklearn) takes nothing larger
            raise LasaError(f"--seed must be in 0..{2**32 - 1}, got {self.seed}")
        self.run_dir = expand_run_dir(self.run_dir)
        check_run_dir(self.run_dir)
        if not _DEVICE.fullmatch(str(self.device)):  # availability is checked where a model loads
            raise LasaError(f"unknown --device {self.device!r}; use auto, cpu, cuda, cuda:N, mps or xpu")
        check_bounds(self)

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


def expand_run_dir(run_dir: Any) -> Any:
    """``~/runs/x`` as the home directory's: a shell does not expand it in a preset (``run_dir:
    ~/x``) or after ``=`` (``--run-dir=~/x``), and a literal ``./~`` folder invites ``rm -rf ~``."""
    if isinstance(run_dir, str) and run_dir.startswith("~"):
        return str(Path(run_dir).expanduser())
    return run_dir


def check_run_dir(run_dir: str) -> None:
    """A one-line error for a run directory that cannot be one: empty (it would silently mean the
    current directory, where a forced rerun deletes ./locate, ./eval, ...) or an existing file."""
    if not isinstance(run_dir, str) or not run_dir.strip():
        raise LasaError("--run-dir is empty; name the run directory (e.g. --run-dir runs/quick)")
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise LasaError(f"--run-dir {run_dir} is a file, not a directory; choose another path")
    # before any work, not when the first artefact is written after minutes of it
    existing = next((q for q in [path, *path.absolute().parents] if q.exists()), None)
    if existing is not None and not writable_dir(existing):
        what = (
            "cannot write in it"
            if existing == path
            else f"cannot create it ({existing} is not a writable folder)"
        )
        raise LasaError(f"--run-dir {run_dir}: {what}; choose another path")


def writable_dir(path: Path) -> bool:
    """Whether a file can be created in the folder ``path``, by trying (a probe file, removed at once):
    ``os.access`` says yes to root for a read-only mount, ``/proc`` or an immutable folder."""
    import tempfile

    if not path.is_dir():
        return False
    try:
        with tempfile.TemporaryFile(dir=path):
            return True
    except OSError:
        return False


def nonempty_langs(langs: list[str]) -> list[str]:
    """``langs`` unless it names nothing (``--langs ''``, ``langs: []``), which used to mean all ten
    languages silently; ``all`` says that on purpose."""
    if not any(str(x).strip(" ,") for x in langs):
        raise LasaError("--langs names no language; give ISO codes (en zh ...) or 'all'")
    return langs


def expect_config(cfg: Any, cls: type, fn: str) -> None:
    """A stage function given another stage's config (or a dict) fails here in one line, not with
    an AttributeError deep inside, possibly after minutes of work."""
    if not isinstance(cfg, cls):
        raise LasaError(
            f"{fn} takes {cls.__name__}, got {type(cfg).__name__}; build one with "
            f"{cls.__name__}(...) or {cls.__name__}.from_yaml(FILE, ...)"
        )


#: Names a run directory (or its eval/ folder) already uses for a stage or a file: a folder named
#: after one would overwrite it, or be deleted with it by a forced rerun.
RESERVED_NAMES = frozenset(
    {
        "locate",
        "eval",
        "align",
        "report",
        "config.yaml",
        "pipeline.json",
        "report.md",
        "report.html",
        "drift_reference.safetensors",
        "ssi_scores.json",
    }
)
_DEVICE = re.compile(r"auto|cpu|mps|(cuda|xpu)(:\d+)?")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_+\-][A-Za-z0-9_+.\-]*")


def safe_name(name: str, what: str) -> str:
    """``name`` if it is one plain folder name inside a run directory, else a one-line error: names
    become paths (``RUN/eval/<variant>``, ``RUN/<out_name>``) that a forced rerun deletes, so a
    ``..``, a separator, an absolute path or another stage's folder must never reach them; and they
    head report tables, where a ``|`` or a space breaks the markdown. ASCII letters, digits and
    ``. - _ +`` only (no leading dot)."""
    if not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name):
        raise LasaError(f"{what} {name!r}: use a plain folder name (letters, digits, . - _ +), no path")
    if name in RESERVED_NAMES:
        raise LasaError(f"{what} {name!r}: the run directory already uses that name; choose another")
    return name


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def config_fields(cls: type[StageConfig]) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


#: Field metadata for lasa itself, never for argparse (``key_omits_default``: see lasa.pipeline._portable).
_NOT_ARGPARSE = ("key_omits_default",)

_BOUNDS = {
    "ge": (">=", lambda x, b: x >= b),
    "gt": (">", lambda x, b: x > b),
    "le": ("<=", lambda x, b: x <= b),
    "lt": ("<", lambda x, b: x < b),
}


def check_bounds(cfg: Any) -> None:
    """Every number of ``cfg`` (and of its list fields) finite and within the bounds its field
    declares in ``metadata`` (``ge`` / ``gt`` / ``le`` / ``lt``): a bad value is one line naming the
    flag, when the config is built — before any model loads."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name, None)
        for x in value if isinstance(value, list) else [value]:
            if isinstance(x, bool) or not isinstance(x, int | float):
                continue
            flag = "--" + f.name.replace("_", "-")
            if isinstance(x, float) and not math.isfinite(x):
                raise LasaError(f"{flag} must be a finite number, got {x}")
            for key, (sign, ok) in _BOUNDS.items():
                if key in f.metadata and not ok(x, f.metadata[key]):
                    raise LasaError(f"{flag} must be {sign} {f.metadata[key]}, got {x}")


def _type_error(where: str, want: str, value: Any) -> LasaError:
    return LasaError(f"{where}: expected {want}, got {value!r}")


def coerce_value(hint: Any, value: Any, where: str) -> Any:
    """A YAML value made to fit the field's type, or a one-line error naming the key. YAML has its
    own types (``4.7`` where an int belongs, ``true`` where a number belongs, ``2e-4`` read as a
    string, ``variants: base`` where a list belongs), and argparse does not convert defaults."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce_value(inner[0], value, where)
    if origin is typing.Literal:
        if value not in args:
            raise _type_error(where, "one of " + ", ".join(map(str, args)), value)
        return value
    if origin is list:
        item = args[0] if args else Any
        items = value if isinstance(value, list) else [value]  # `force: locate` means [locate]
        if item is str:  # `judges: pair, lexicon` is two judges, as `langs: en, zh` is two languages
            items = split_words(items)
        return [coerce_value(item, v, where) for v in items]
    if hint is bool:
        if not isinstance(value, bool):
            raise _type_error(where, "true or false", value)
        return value
    if hint in (int, float):
        want = "an integer" if hint is int else "a number"
        if isinstance(value, str):  # PyYAML reads 2e-4 (no dot) as a string
            try:
                return hint(value.strip())
            except ValueError:
                raise _type_error(where, want, value) from None
        if hint is int and isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int if hint is int else int | float):
            raise _type_error(where, want, value)
        return value  # an int stays an int: run keys hash the config, and `epochs: 1` keyed runs so
    if hint is str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise _type_error(where, "a string", value)
        return str(value)
    return value


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a key given twice in one mapping (PyYAML keeps the last one
    without a word, so ``cap: 50`` … ``cap: 500`` further down would silently win)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: keys written here override it
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in seen:
                    raise LasaError(
                        f"key {key!r} is given twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1}); "
                        "keep one"
                    )
                seen[key] = key_node.start_mark.line
            except TypeError:  # an unhashable key: the constructor below says so
                pass
        return super().construct_mapping(node, deep=deep)


def load_yaml_doc(path: str | Path) -> dict[str, Any]:
    """A config file as a mapping, or a one-line error naming the file (and line) at fault."""
    path = Path(path)
    if path.is_dir():
        raise LasaError(f"--config {path} is a directory; give a YAML file (e.g. configs/quick.yaml)")
    if not path.is_file():
        raise LasaError(f"config file not found: {path}")
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}  # a SafeLoader
    except UnicodeDecodeError:
        raise LasaError(f"{path} is not UTF-8 text; save the config as UTF-8 YAML") from None
    except LasaError as err:
        raise LasaError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise LasaError(f"{path}:{where} is not valid YAML; fix the file") from None
    if not isinstance(doc, dict):
        raise LasaError(f"{path} must hold a YAML mapping of config keys")
    return doc


def _did_you_mean(key: Any, names: set[str]) -> str:
    """`` (did you mean 'run_dir'?)`` for a near miss (``run-dir``, ``n_querys``), else ''."""
    import difflib

    want = str(key).replace("-", "_").lower()
    close = [want] if want in names else difflib.get_close_matches(want, sorted(names), n=1, cutoff=0.8)
    return f" (did you mean {close[0]!r}?)" if close else ""


def load_yaml_for(cls: type[StageConfig], path: str | Path) -> dict[str, Any]:
    """The keys of a (possibly multi-stage) YAML file that apply to the stage ``cls``."""
    doc = load_yaml_doc(path)
    from lasa.config import STAGE_CONFIGS, STAGE_SECTIONS  # the registry of every stage's config

    known = {f.name for f in config_fields(cls)}
    hints = _type_hints(cls)
    all_stage_names = set(STAGE_CONFIGS) | set(STAGE_SECTIONS)
    all_known = {f.name for c in STAGE_CONFIGS.values() for f in config_fields(c)}
    stage = cls.stage
    values: dict[str, Any] = {}
    for key, value in doc.items():
        if key in all_stage_names:
            continue
        if key in known:
            values[key] = coerce_value(hints[key], value, f"{path}: {key}")
        elif key not in all_known:
            raise LasaError(
                f"{path}: unknown key {key!r}{_did_you_mean(key, all_known | all_stage_names)}; see `lasa "
                "<stage> --help` for the valid keys"
            )
    section = doc.get(stage)
    if section is None:  # absent, or `locate:` with nothing under it
        section = {}
    if not isinstance(section, dict):  # `locate: []` or `locate: 0` was ignored without a word
        raise LasaError(f"{path}: section {stage!r} must be a mapping of its keys, got {section!r}")
    for key, value in section.items():
        if key not in known:
            raise LasaError(
                f"{path}: unknown key {stage}.{key}{_did_you_mean(key, known)}; see `lasa {stage} --help` "
                "for the valid keys"
            )
        values[key] = coerce_value(hints[key], value, f"{path}: {stage}.{key}")
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


def _stage_parser(cls: type[T], prog: str, description: str | None) -> Any:
    """TRL's parser, keeping lasa's bounds (``ge`` / ``gt`` / ``le`` / ``lt`` in a field's metadata,
    read by :func:`check_bounds`) and its other metadata out of argparse, which would reject them
    as keywords."""
    import copy

    from trl import TrlParser

    class StageParser(TrlParser):
        @staticmethod
        def _parse_dataclass_field(parser: Any, field: dataclasses.Field) -> None:
            if any(k in field.metadata for k in (*_BOUNDS, *_NOT_ARGPARSE)):
                field = copy.copy(field)
                field.metadata = types.MappingProxyType(
                    {k: v for k, v in field.metadata.items() if k not in _BOUNDS and k not in _NOT_ARGPARSE}
                )
            TrlParser._parse_dataclass_field(parser, field)

    return StageParser(dataclass_types=[cls], prog=prog, description=description, allow_abbrev=False)


def split_words(items: Sequence[Any]) -> list[Any]:
    """Text items split at commas (``["pair,lexicon"]`` → ``["pair", "lexicon"]``); others kept."""
    out: list[Any] = []
    for x in items:
        if isinstance(x, str) and "," in x:
            out += [w.strip() for w in x.split(",") if w.strip()]
        else:
            out.append(x)
    return out


def _split_list_flags(cls: type, argv: list[str]) -> list[str]:
    """``--judges pair,lexicon`` (or ``--judges=pair,lexicon``) as ``--judges pair lexicon``: the
    values of every ``list[str]`` flag are split at commas, as ``--langs`` always was."""
    hints = _type_hints(cls)
    flags = {
        "--" + f.name.replace("_", "-")
        for f in config_fields(cls)
        if typing.get_origin(hints[f.name]) is list
        or any(typing.get_origin(a) is list for a in typing.get_args(hints[f.name]))
    }
    flags |= {"--" + f.name for f in config_fields(cls) if "--" + f.name.replace("_", "-") in flags}
    out: list[str] = []
    in_list = False
    for arg in argv:
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            in_list = name in flags
            if in_list and eq:
                out += [name, *split_words([value])] if value.strip(" ,") else [arg]
                in_list = True
                continue
            out.append(arg)
        elif in_list:
            out += split_words([arg]) or [arg]
        else:
            out.append(arg)
    return out


def split_config_flag(argv: Sequence[str]) -> list[str]:
    """``--config=FILE`` as ``--config FILE``: argparse takes both spellings, and the joined one
    would otherwise reach a namespace nobody reads (the preset silently not loaded)."""
    out: list[str] = []
    for arg in argv:
        out += ["--config", arg.split("=", 1)[1]] if arg.startswith("--config=") else [arg]
    return out


def parse_stage_args(cls: type[T], argv: Sequence[str], prog: str, description: str | None = None) -> T:
    """Parse ``--config FILE`` and flags into ``cls`` (flags win), with a one-line error on bad input."""
    parser = _stage_parser(cls, prog, description)
    parser.add_argument(
        "--config",
        metavar="FILE.yaml",
        help="YAML file with any of the keys below (top-level, or under a section named after the stage); "
        "flags override it.",
    )
    _tidy_help(parser)
    argv = split_config_flag(argv)
    if argv.count("--config") > 1:
        raise LasaError("--config given twice; merge the files into one (flags override it)")
    preset: dict[str, Any] = {}
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv) or not argv[i + 1].strip():
            raise LasaError("--config needs a file path")
        preset = load_yaml_for(cls, argv[i + 1])
        parser.set_defaults_with_config(**preset)
        del argv[i : i + 2]
    argv = _split_list_flags(cls, argv)
    try:
        cfg, *_, unknown = parser.parse_args_into_dataclasses(
            args=argv, look_for_args_file=False, return_remaining_strings=True
        )
    except TypeError as err:  # dataclass __init__ rejecting a YAML value of the wrong shape
        raise LasaError(str(err)) from None
    if unknown:  # HfArgumentParser would raise a ValueError with a traceback
        raise LasaError(f"unrecognized arguments: {' '.join(unknown)} (see `{prog} --help`)")
    check = getattr(cls, "check_flags", None)
    if check is not None:  # what only the command line and the preset show (a value given explicitly)
        check(cfg, argv, preset)
    warn_unused_flags(cfg, argv)
    return cfg


def warn_unused_flags(cfg: Any, argv: Sequence[str]) -> None:
    """One warning per flag given on the command line that this configuration does not read (the
    config's ``unused_settings()``: ``--beta`` with ``--method sft``, ``--on-policy-judge`` without
    ``--rows on_policy``): a setting that silently does nothing reads as one that was tried. A
    preset's keys are not warned about: one align section serves every method of a run."""
    unused = getattr(cfg, "unused_settings", None)
    if unused is None:
        return
    given = {a.split("=", 1)[0][2:].replace("-", "_") for a in argv if a.startswith("--")}
    for name in sorted(given & set(unused())):
        logging.getLogger("lasa").warning(
            "--%s has no effect with these settings (%s); drop it", name.replace("_", "-"), _unused_why(cfg)
        )


def _unused_why(cfg: Any) -> str:
    def flag(k: str, v: Any) -> str:
        name = k.replace("_", "-")
        return (f"--{name}" if v else f"--no-{name}") if isinstance(v, bool) else f"--{name} {v}"

    keys = ("action", "method", "rows", "sweep", "calibration", "plots", "xstest")
    return ", ".join(flag(k, getattr(cfg, k)) for k in keys if hasattr(cfg, k))


def explicit_false(argv: Sequence[str], flag: str) -> bool:
    """Whether ``argv`` sets the boolean ``flag`` to false explicitly (``--gate false``, ``--gate=0``):
    a config cannot tell that from the default."""
    falsy = {"false", "no", "0", "f", "n"}
    for i, arg in enumerate(argv):
        if arg.startswith(flag + "=") and arg.split("=", 1)[1].lower() in falsy:
            return True
        if arg == flag and i + 1 < len(argv) and argv[i + 1].lower() in falsy:
            return True
    return False
