"""``lasa run``: the paper's whole experiment on one run directory, resumable stage by stage.

locate → interpret → align (lasa and the kto baseline) → evaluate four variants (base; base +
SSI gate, no training; the KTO baseline; LASA = adapter + gate) → report.

Each stage is skipped when its final artefact and the files it hands on (the SSI's, an adapter's
weights) exist, its *inputs key* (its resolved config plus the keys of the stages it reads)
matches the one recorded in ``RUN/pipeline.json``, the model's weight files are the ones it ran
on, and what it read and wrote is what was recorded when it ran (a digest of each stage's marker
without its wall-clock timings, and of the files it hands on); change a setting and exactly the
stages downstream of it run again. ``--force STAGE`` redoes one stage,
and what reads it runs again when its output changed; a stage rerun by hand (``lasa interpret
--layer 10``) counts as changed output too. An interrupted run resumes: finished stages are
skipped and generation resumes per sample.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lasa.config import (
    VARIANTS,
    AlignConfig,
    EvaluateConfig,
    InterpretConfig,
    LocateConfig,
    RunConfig,
    StageConfig,
)
from lasa.config.registry import ADAPTER_METHOD_FILE
from lasa.errors import LasaError
from lasa.runs import (
    RunDir,
    exclusive,
    files_digest,
    fingerprint,
    make_dirs,
    read_json_object,
    sha256_file,
    write_json,
)

logger = logging.getLogger(__name__)

#: What each evaluation variant means, as overrides of the evaluate config.


@dataclass
class Stage:
    name: str
    config: StageConfig
    artefact: Path  # written last by the stage: its presence means the stage finished
    needs: list[str]
    run: Callable[[], Any]
    #: What else its output depends on beyond its config (an evaluate stage: the judges' weights)
    extra_key: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: Outputs besides the marker that what reads the stage needs (the SSI's and adapter's weights):
    #: one missing means the stage is unfinished, whatever its marker says
    files: list[Path] = dataclasses.field(default_factory=list)
    #: Settings the stage does not read: keyed at their defaults (a change to one redoes nothing)
    unused: frozenset[str] = frozenset()

    @property
    def out_dir(self) -> Path:
        return self.artefact.parent


#: What `lasa run` gives every stage from its own settings (top level of the preset, or flags).
_SHARED_KEYS = ("model", "run_dir", "seed", "device", "dtype")


def _shared(run: RunConfig) -> dict[str, Any]:
    return {k: getattr(run, k) for k in _SHARED_KEYS}


#: Keys a stage's own command takes that ``lasa run`` sets itself per stage: in a preset they would
#: be ignored without a word (``align: {method: sft}`` still trained lasa and kto).
_RUN_SETS = {
    "align": [("method", "the methods its --variants need (kto, sft, lasa)")],
    "evaluate": [
        ("variant", "each of --variants in turn (run: {variants: [...]} in the preset)"),
        # `gate: false` was overridden by every +gate variant without a word (and `gate: true` /
        # `adapter:` refused only for the variants they contradict): each variant's name sets them
        ("gate", "each variant's own (the +gate variants gate with this run's SSI, the others do not)"),
        ("adapter", "each variant's own (RUN/align/<method>/adapter, trained by the run)"),
        # a gated variant gates with the SSI this run trained (interpret.out_name says which)
        ("ssi", "the SSI this run trains (RUN/<interpret.out_name>; set interpret.out_name to pick one)"),
    ],
}
#: Preset sections other commands read and `lasa run` does not: said once, not ignored silently.
_NOT_RUN_SECTIONS = {
    "generate": "its evaluate stage generates with the evaluate: section's settings",
    "judge_check": "it is `lasa judge-check`'s",
    "report": "the run's report follows run.variants",
}


def _check_run_keys(config_path: str) -> None:
    from lasa.config.base import load_yaml_doc

    doc = load_yaml_doc(config_path)
    for section, why in _NOT_RUN_SECTIONS.items():
        if doc.get(section):
            logger.warning(
                "%s: `lasa run` does not read the %s: section (%s); its keys have no effect here",
                config_path,
                section,
                why,
            )
    for section in ("locate", "interpret", "align", "evaluate"):
        body = doc.get(section)
        shared = [k for k in _SHARED_KEYS if isinstance(body, dict) and k in body]
        if shared:  # the run's value would win without a word
            key = shared[0]
            raise LasaError(
                f"{config_path}: {section}.{key} is set for the whole run by `lasa run`; move it to the "
                f"top level (`{key}: ...`) or pass --{key.replace('_', '-')}"
            )
    for section, key, what in ((s, k, w) for s, keys in _RUN_SETS.items() for k, w in keys):
        body = doc.get(section)
        if key in doc:  # top-level keys apply to every stage that has them: these, to none here
            raise LasaError(
                f"{config_path}: {key} is not used by `lasa run`, which sets it to {what}; remove it "
                f"(it is for `lasa {section}` alone)"
            )
        if isinstance(body, dict) and key in body:
            raise LasaError(
                f"{config_path}: {section}.{key} is not used by `lasa run`, which sets it to {what}; remove it "
                f"(it is for `lasa {section}` alone)"
            )


def build_stages(run: RunConfig, config_path: str | None) -> list[Stage]:
    from lasa.align import run_align
    from lasa.evaluate import run_evaluate
    from lasa.interpret import run_interpret
    from lasa.judges import judges_fingerprint
    from lasa.locate import run_locate

    shared = _shared(run)
    rd = RunDir(run.run_dir)
    models: dict[str, Any] = {}
    if config_path:
        _check_run_keys(config_path)

    def base_lm() -> Any:  # loaded once and shared by the stages that need the untouched base model
        if "base" not in models:
            from lasa.models import load_model

            models["base"] = load_model(run.model, run.device, run.dtype)
        return models["base"]

    stages: list[Stage] = []
    loc = LocateConfig.from_yaml(config_path, **shared)
    stages.append(Stage("locate", loc, rd.bottleneck, [], lambda: run_locate(loc, base_lm())))
    interp = InterpretConfig.from_yaml(config_path, **shared)
    stages.append(
        Stage(
            "interpret",
            interp,
            rd.ssi_metrics(interp.out_name),
            ["locate"],
            lambda: run_interpret(interp, base_lm()),
            files=[rd.ssi(interp.out_name) / "ssi.safetensors", rd.ssi(interp.out_name) / "ssi.json"],
        )
    )
    from lasa.models import checkpoint_weight_files

    methods = sorted({VARIANTS[v].get("adapter") for v in run.variants} - {None})
    gated_adapters = [v for v in run.variants if VARIANTS[v].get("adapter") and VARIANTS[v].get("gate")]
    for method in methods:
        acfg = AlignConfig.from_yaml(config_path, **shared, method=method)
        gated = [v for v in run.variants if VARIANTS[v].get("adapter") == method and VARIANTS[v].get("gate")]
        if not acfg.lora and acfg.lora_layers == "all" and gated:
            raise LasaError(
                f"align.lora false with lora_layers all trains the blocks the SSI reads, so {', '.join(gated)} "
                "could not be gated exactly; set align.lora_layers: above_bottleneck (freezes blocks up to L*) "
                "or drop the gated variant"
            )
        if not acfg.lora and gated:  # both layers given: known before any stage
            _check_frozen_covers_ssi(acfg.bottleneck_layer, interp.layer, gated)
        if acfg.data:  # a bad line, a MultiJail prompt: before locate's and interpret's hours
            from lasa.data.rows import load_user_rows

            load_user_rows(acfg.data)
        if not acfg.data:  # a row count the vendored data cannot fill, before locate's and interpret's hours
            from lasa.data.rows import check_row_counts

            check_row_counts(acfg.train_langs, acfg.n_safety, acfg.n_general, acfg.seed, acfg.n_hard_negative)
        # training wraps the model with LoRA in place, so it gets a fresh copy (3 s to load)
        stages.append(
            Stage(
                f"align:{method}",
                acfg,
                rd.align_summary(method),
                ["locate"],
                (lambda acfg=acfg: run_align(acfg))
                if acfg.lora or not gated_adapters
                # the located bottleneck is known once locate has run: checked before any training
                else (lambda acfg=acfg: _align_full(acfg, interp.layer, rd, gated_adapters)),
                # a --data file is keyed by its bytes, not its path: an edited file retrains
                extra_key={"data_sha256": sha256_file(Path(acfg.data))} if acfg.data else {},
                unused=acfg.unused_settings(),
                files=[
                    rd.adapter(method) / "adapter_model.safetensors",
                    rd.adapter(method) / "adapter_config.json",
                ]
                if acfg.lora
                else [  # a full fine-tune: its record and its weights (one file, or the shards an index names)
                    rd.adapter(method) / "config.json",
                    rd.adapter(method) / ADAPTER_METHOD_FILE,
                    *checkpoint_weight_files(rd.adapter(method)),
                ],
            )
        )
    for variant in run.variants:
        over = VARIANTS[variant]
        if over.get("gate"):  # gate with the SSI this run trained
            over = over | {"ssi": str(rd.ssi(interp.out_name))}
        ecfg = EvaluateConfig.from_yaml(config_path, **shared, variant=variant, **over)
        needs = (["interpret"] if over.get("gate") else []) + (
            [f"align:{over['adapter']}"] if over.get("adapter") else []
        )
        uses_base = not over.get("adapter")
        stages.append(
            Stage(
                f"evaluate:{variant}",
                ecfg,
                rd.results(variant),
                needs,
                lambda ecfg=ecfg, uses_base=uses_base: run_evaluate(ecfg, base_lm() if uses_base else None),
                # a lasa update that ships other judge weights re-judges (generation resumes: nothing
                # is generated again), instead of keeping verdicts the new judge would not give
                {"judges": judges_fingerprint(ecfg.judges)},
            )
        )
    return stages


def _model_key(spec: str) -> str:
    """One spelling per embedded model (``default``, ``qwen2.5-coder-0.5b`` and
    ``Qwen2.5-Coder-0.5B-Instruct`` are the same weights: a run resumed under another spelling
    redid every stage). The default model keeps the key ``default``, so existing runs keep theirs."""
    from lasa.default_model import DEFAULT_MODEL, embedded_name

    name = embedded_name(spec)
    if name is None:
        return spec
    return "default" if name == DEFAULT_MODEL else name


def _portable(
    config: Any,
    run_dir: str,
    unused: frozenset[str] = frozenset(),
    normalise: bool = True,
    numerics: bool = True,
) -> dict[str, Any]:
    """A stage config as its inputs key sees it: without the run directory, and with paths inside
    it written relative to it, so a run directory that is moved or copied still resumes. Settings
    in ``unused`` are keyed at their defaults (not dropped: a run keyed before keeps its key), an
    embedded model under one name (:func:`_model_key`), and ``device`` / ``dtype`` as what they
    resolve to here (``--device auto`` on a CPU machine is ``cpu``, ``--dtype auto`` there
    ``float32``: spelling the same numerics another way retrained both adapters). ``normalise=False``
    gives the key as lasa wrote it before those rules, ``numerics=False`` before the last one (a run
    keyed then is still recognised)."""
    root = str(Path(run_dir)).rstrip("/") + "/"
    # an option added after runs were keyed says so in its metadata: at its default it is left out,
    # so adding it does not redo every existing run's stage
    quiet = {
        f.name
        for f in dataclasses.fields(config)
        if f.metadata.get("key_omits_default") and getattr(config, f.name) == f.default
    }
    defaults = {f.name: f for f in dataclasses.fields(config)}
    out: dict[str, Any] = {}
    for k, v in dataclasses.asdict(config).items():
        if k == "run_dir" or k in quiet:
            continue
        if normalise and k in unused and defaults[k].default is not dataclasses.MISSING:
            v = defaults[k].default
        if normalise and k == "model" and isinstance(v, str):
            v = _model_key(v)
        if normalise and numerics and k in ("device", "dtype") and hasattr(config, "device"):
            v = _numerics(config.device, getattr(config, "dtype", "auto"))[0 if k == "device" else 1]
        if isinstance(v, str) and v.startswith(root):
            v = "RUN/" + v[len(root) :]
        out[k] = v
    return out


def _numerics(device: str, dtype: str) -> tuple[str, str]:
    """(device type, dtype) that ``device`` / ``dtype`` resolve to on this machine."""
    from lasa.models import resolve_device, resolve_dtype

    dev = resolve_device(device)
    return dev.type, str(resolve_dtype(dtype, dev)).removeprefix("torch.")


def _comparable(cfg: dict[str, Any], run_dir: Any) -> dict[str, Any]:
    """A recorded (JSON-typed) stage config without its run directory, paths inside it relative."""
    root = str(Path(str(run_dir or ""))).rstrip("/") + "/"
    return {
        k: ("RUN/" + v[len(root) :] if isinstance(v, str) and v.startswith(root) else v)
        for k, v in cfg.items()
        if k != "run_dir"
    }


def _record_name(st: Stage) -> str:
    """The name a stage's own command records it under in ``RUN/config.yaml``."""
    return getattr(st.config, "record_name", st.name)


def _recorded_time(entry: dict) -> float | None:
    """When a ``RUN/config.yaml`` entry was recorded (seconds since the epoch), if it says."""
    import datetime as dt

    try:
        return dt.datetime.strptime(str(entry.get("recorded_at")), "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        return None


def _ran_by_hand(st: Stage, rd: Path, run_dir: str, weights: str, by_name: dict[str, Stage]) -> bool:
    """Whether ``st`` was run by its own command (``lasa locate`` …) in this run directory with the
    settings `lasa run` would give it, on the same weights, after the upstream results it read, so
    its finished output is adopted instead of redone.

    Only stages whose key is their config and upstream results (no ``extra_key``: evaluate's judge
    weights and align's ``--data`` bytes are not in ``RUN/config.yaml``; evaluate resumes from its
    completions and verdicts anyway). ``RUN/config.yaml`` holds what each stage ran with; an
    option it lacks (recorded by an older lasa) must be at its default here. The stage must have
    recorded the model's weight signature (lasa records it since adoption exists) and be recorded
    no earlier than every upstream stage: ``lasa locate`` rerun by hand after ``lasa interpret``
    may have moved the layer the SSI was trained at, so the SSI is redone, not adopted. The entry
    must describe the marker on disk (its digest): a hand run killed after writing its marker and
    before recording left the previous run's entry, whose settings the new output does not have."""
    if st.extra_key or not st.artefact.is_file() or any(not p.is_file() for p in st.files):
        return False
    try:
        doc = yaml.safe_load((rd / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    stages = doc.get("stages") if isinstance(doc, dict) else None
    if not isinstance(stages, dict):
        return False
    entry = stages.get(_record_name(st))
    recorded = entry.get("config") if isinstance(entry, dict) else None
    if not isinstance(recorded, dict) or entry.get("model_weights") != weights:
        return False
    if entry.get("marker_digest") != files_digest([st.artefact]):  # the entry is another run's
        return False
    when = _recorded_time(entry)
    for n in st.needs:
        up = stages.get(_record_name(by_name[n]))
        up_when = _recorded_time(up) if isinstance(up, dict) else None
        if when is None or up_when is None or up_when > when:
            return False
    mine = json.loads(json.dumps(dataclasses.asdict(st.config), default=str))
    theirs = _comparable(recorded, recorded.get("run_dir"))
    mine = _comparable(mine, run_dir)
    for side in (mine, theirs):  # one embedded model under any of its names
        if isinstance(side.get("model"), str):
            side["model"] = _model_key(side["model"])
    defaults = {
        f.name: json.loads(json.dumps(f.default, default=str))
        for f in dataclasses.fields(st.config)
        if f.default is not dataclasses.MISSING
    }
    return all(
        theirs[k] == v if k in theirs else (k in defaults and defaults[k] == v) for k, v in mine.items()
    ) and set(theirs) <= set(mine)


def _digest(path: Path) -> str | None:
    """The first way ``pipeline.json`` recorded a stage's output: the marker file's bytes (its
    wall-clock timings included). Entries without ``"digest": 2`` are compared this way."""
    return files_digest([path]) if path.is_file() else None


#: Keys of a marker file that say how long it took, not what it computed.
def _volatile(key: str) -> bool:
    return key in ("timings", "seconds", "seconds_per_step") or key.endswith("_seconds")


#: Stage folders: a recorded path into one is compared from there on (``runs/quick/align/kto/adapter``
#: and ``/copy/of/run/align/kto/adapter`` are the same adapter of the same run).
_STAGE_PARTS = ("locate", "ssi", "align", "eval")


def _without_timings(value: Any) -> Any:
    """A marker's content as a result: no wall-clock timings, no run directory, and paths into the
    run directory from its stage folder on (a copied or differently spelled run is the same run)."""
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if not _volatile(str(k)) and k != "run_dir"}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    if isinstance(value, str) and "/" in value:
        parts = Path(value).parts
        for i, part in enumerate(parts[:-1]):
            if part in _STAGE_PARTS and i > 0:
                return "/".join(parts[i:])
    return value


def _result_digest(st: Stage) -> str | None:
    """What a stage computed: its marker's content without wall-clock timings, and the bytes of the
    files it hands on (an SSI's, an adapter's weights). A stage redone with the same result reads
    as unchanged, so what reads it is not redone (retraining the SSI and both adapters because
    ``bottleneck.json`` recorded another number of seconds was most of a ``make run``)."""
    import json

    from lasa.runs import sha256_file

    if not st.artefact.is_file():
        return None
    files = [(p.name, sha256_file(p) if p.is_file() else None) for p in st.files]
    try:
        marker: Any = _without_timings(json.loads(st.artefact.read_text(encoding="utf-8")))
        return fingerprint({"marker": marker, "files": files})
    except (OSError, ValueError):  # unreadable, not JSON, or text JSON cannot encode (a lone surrogate)
        return fingerprint({"marker": sha256_file(st.artefact), "files": files})


def _matches(pattern: str, name: str) -> bool:
    return pattern in ("all", name) or name.startswith(pattern + ":")


def run_pipeline(run: RunConfig, config_path: str | None) -> dict:
    from lasa.config.base import expect_config

    expect_config(run, RunConfig, "run_pipeline")
    t0 = time.time()
    rd = Path(run.run_dir)
    stages = build_stages(run, config_path)
    names = {s.name for s in stages}
    for f in run.force:
        if f != "report" and not any(_matches(f, n) for n in names):
            raise LasaError(
                f"--force {f}: no such stage; stages are {', '.join(s.name for s in stages)}, report, all"
            )
    from lasa.models import resolve_model_path

    resolve_model_path(run.model)  # a missing model is named before the run directory exists
    from lasa.judges.llm import preflight

    for s in stages:  # an llm judge's endpoint is reachable before hours of stages lead up to it
        if hasattr(s.config, "judge_url"):
            preflight(s.config.judges, s.config.judge_url, s.config.judge_model)
            break
    created = not rd.exists()
    make_dirs(rd)  # only once the request is known to be valid
    try:
        with exclusive(rd, "this run directory"):  # a second `lasa run` on it would redo and race
            return _run_stages(run, stages, rd, t0)
    except BaseException:
        if created:  # a run that failed or was stopped before writing anything leaves no empty folder
            with contextlib.suppress(OSError):
                rd.rmdir()
        raise


def _what(moved: str) -> str:
    return moved if moved.startswith("the weights") or moved.endswith(" itself") else f"the output of {moved}"


def _state_is_sound(state: dict) -> bool:
    """Every stage entry of ``pipeline.json`` a mapping whose fields have the types written here."""
    kinds = {
        "key": str,
        "seconds": (int, float),
        "finished_at": str,
        "inputs": dict,
        "output": str,
        "digest": int,
        "model_weights": str,
    }
    for name, entry in state.items():
        if name == "_last_run":
            if not isinstance(entry, dict) or not isinstance(entry.get("stages", []), list):
                return False
            continue
        if not isinstance(entry, dict):
            return False
        if any(k in entry and not isinstance(entry[k], t) for k, t in kinds.items()):
            return False
    return True


def _run_stages(run: RunConfig, stages: list[Stage], rd: Path, t0: float) -> dict:
    from lasa.models import weights_signature
    from lasa.report import build_report

    by_name = {s.name: s for s in stages}
    # the model's weight files (names, sizes, times): new weights under the same --model redo the run
    weights = weights_signature(run.model)
    state_path = rd / "pipeline.json"
    state: dict[str, Any] = {}
    if state_path.is_file():
        try:
            state = read_json_object(state_path)
        except LasaError:
            raise LasaError(
                f"{state_path} is damaged; delete it (every stage then runs again) and rerun"
            ) from None
        if not _state_is_sound(state):  # valid JSON of the wrong shape (a hand edit, another tool)
            raise LasaError(f"{state_path} is damaged (an entry of the wrong shape); delete it and rerun")
    keys: dict[str, str] = {}
    spelled: dict[str, str] = {}  # the keys of runs written before device / dtype were keyed resolved
    legacy: dict[str, str] = {}  # the keys of runs written before keys became portable
    prior: dict[str, str] = {}  # ... and before model names and unused settings were normalised
    summary = []
    ran: set[str] = set()
    for st in stages:
        keys[st.name] = fingerprint(
            {"config": _portable(st.config, run.run_dir, st.unused), "needs": [keys[n] for n in st.needs]}
            | ({"extra": st.extra_key} if st.extra_key else {})
        )
        spelled[st.name] = fingerprint(
            {
                "config": _portable(st.config, run.run_dir, st.unused, numerics=False),
                "needs": [spelled[n] for n in st.needs],
            }
            | ({"extra": st.extra_key} if st.extra_key else {})
        )
        prior[st.name] = fingerprint(
            {
                "config": _portable(st.config, run.run_dir, normalise=False),
                "needs": [prior[n] for n in st.needs],
            }
            | ({"extra": st.extra_key} if st.extra_key else {})
        )
        legacy[st.name] = fingerprint(
            {"config": dataclasses.asdict(st.config), "needs": [legacy[n] for n in st.needs]}
            | ({"extra": st.extra_key} if st.extra_key else {})
        )
        forced = any(_matches(f, st.name) for f in run.force)
        prev = state.get(st.name, {})
        # an entry compares what it recorded the way it recorded it (older runs: the marker's bytes)
        digest = _result_digest if prev.get("digest") == 2 else (lambda t: _digest(t.artefact))
        inputs = {n: digest(by_name[n]) for n in st.needs}
        missing = [p for p in st.files if not p.is_file()]
        current = (
            prev.get("key") in (keys[st.name], spelled[st.name], prior[st.name], legacy[st.name])
            and st.artefact.is_file()
        )
        # what it read, and what it wrote, as they were when it ran (older runs did not record them)
        old = prev.get("inputs") or {}
        moved = [n for n in st.needs if n in old and old[n] != inputs[n]]
        if "output" in prev and prev["output"] != digest(st):
            moved.append(f"{st.name} itself")
        if "model_weights" in prev and prev["model_weights"] != weights:
            moved.append(f"the weights of {run.model}")
        hand = (
            not prev
            and not forced
            and not any(n in ran for n in st.needs)  # an upstream stage redone now: its input moved
            and _ran_by_hand(st, rd, run.run_dir, weights, by_name)
        )
        if hand:
            logger.info(
                "run: %s was run by its own command with these settings (adopted, not redone)", st.name
            )
            summary.append({"stage": st.name, "status": "adopted", "seconds": None})
            state[st.name] = {
                "key": keys[st.name],
                "seconds": 0.0,
                "adopted": True,  # run by its own command: its time is not this run's (bench e2e)
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "digest": 2,
                "inputs": {n: _result_digest(by_name[n]) for n in st.needs},
                "output": _result_digest(st),
                "model_weights": weights,
            }
            write_json(state_path, state)
            continue
        if current and missing:
            logger.info(
                "run: %s: %s is missing; running it again",
                st.name,
                ", ".join(str(p.relative_to(rd)) for p in missing),
            )
        elif current and not forced and not moved:
            logger.info("run: %s is up to date (skipped)", st.name)
            summary.append({"stage": st.name, "status": "skipped", "seconds": prev.get("seconds")})
            if "model_weights" not in prev:  # an entry of an older lasa: watch the weights from now on
                state[st.name] = prev | {"model_weights": weights}
            # recognised under an older key: kept under today's, so any spelling of it matches next time
            state[st.name] = state[st.name] | {"key": keys[st.name]}
            continue
        elif current and not forced:
            logger.info("run: %s: %s changed since it ran", st.name, ", ".join(_what(m) for m in moved))
        if forced:  # a real redo: nothing of the previous attempt is reused
            from lasa.runs import remove_tree

            remove_tree(st.out_dir, inside=rd)
        logger.info("run: %s ...", st.name)
        t1 = time.time()
        ran.add(st.name)
        st.run()
        seconds = round(time.time() - t1, 1)
        state[st.name] = {
            "key": keys[st.name],
            "seconds": seconds,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "digest": 2,
            "inputs": {n: _result_digest(by_name[n]) for n in st.needs},
            "output": _result_digest(st),
            "model_weights": weights,
        }
        write_json(state_path, state)  # after every stage: an interruption loses at most the stage in flight
        summary.append({"stage": st.name, "status": "ran", "seconds": seconds})
    report = build_report(run.run_dir, variants=run.variants, pipeline=summary)
    total = round(time.time() - t0, 1)
    state["_last_run"] = {"seconds": total, "stages": summary}
    write_json(state_path, state)
    return {"stages": summary, "report": report, "seconds": total}


def _located(rd: RunDir) -> int | None:
    """The layer `lasa locate` chose in this run (None before it has run)."""
    if not rd.bottleneck.is_file():
        return None
    from lasa.locate import Bottleneck

    return Bottleneck.load(rd.path).layer


def _align_full(acfg: AlignConfig, ssi_layer: int | None, rd: RunDir, gated: list[str]) -> Any:
    """A full fine-tune's align stage: the frozen blocks checked against the SSI's layer once
    `locate` has run (either may be the located bottleneck), then the training."""
    from lasa.align import run_align

    _check_frozen_covers_ssi(acfg.bottleneck_layer or _located(rd), ssi_layer or _located(rd), gated)
    return run_align(acfg)


def _check_frozen_covers_ssi(frozen: int | None, ssi_layer: int | None, gated: list[str]) -> None:
    """A full fine-tune freezes blocks 1..``frozen``; a gated variant of it is exact only when the SSI
    reads one of them. Refused before the training (its hours) instead of at the gated evaluation."""
    if frozen is None or ssi_layer is None or ssi_layer <= frozen:
        return
    raise LasaError(
        f"align.lora false freezes blocks 1..{frozen}, but the SSI reads layer {ssi_layer}: {', '.join(gated)} "
        f"could not be gated exactly; set align.bottleneck_layer to {ssi_layer} or more, interpret.layer to "
        f"{frozen} or less, or drop the gated variant"
    )
