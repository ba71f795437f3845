"""Run directories: atomic artefacts, provenance, and "is this stage already done?".

A run directory is the unit of reproducibility: every stage writes its artefacts under
``RUN/<stage>/`` and records the resolved config, package versions, seed and git commit in
``RUN/config.yaml``. Every file is written through a temporary name and ``os.replace`` so that an
interrupted stage never leaves a half-written artefact that a later stage would trust.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, is_dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from lasa.config.base import safe_name
from lasa.errors import LasaError

logger = logging.getLogger(__name__)

#: stage folders already warned about by RunDir._finished (a report lists the variants several times)
_SKIP_WARNED: set[Path] = set()

TRACKED_PACKAGES = (
    "lasa",
    "torch",
    "transformers",
    "peft",
    "trl",
    "accelerate",
    "datasets",
    "safetensors",
    "scikit-learn",
    "numpy",
    "gguf",
)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    tmp_path = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        # mkstemp creates 0600; artefacts should get the mode any other file would (shared run dirs)
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_current_umask())
        os.replace(tmp_path, path)
    except OSError as err:  # a full disk or an unwritable folder: name the artefact, not its temp file
        if err.filename is None or tmp_path is None or str(err.filename) in (str(tmp_path), str(path.parent)):
            err.filename = str(path)
        raise
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _json_default(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return obj.tolist()
    if isinstance(obj, set | tuple):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n")


def strict_json(obj: Any) -> Any:
    """``obj`` with every NaN / infinite float as None: Python writes them as bare ``NaN``, which
    strict JSON readers (jq, JavaScript, most other languages) reject. For files meant for other
    tools (``judge-check --out``); lasa's own artefacts keep NaN, which lasa reads back."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict_json(v) for v in obj]
    return obj


def _corrupt(path: str | Path, what: str) -> LasaError:
    return LasaError(
        f"{path} is not {what} (truncated or corrupt?); delete it and rerun the step that writes it"
    )


def read_json(path: str | Path) -> Any:
    """A JSON file's content; a damaged file is a one-line :class:`LasaError` naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _corrupt(path, "valid UTF-8 JSON") from None


def read_json_object(path: str | Path) -> dict[str, Any]:
    """:func:`read_json` for files that must hold a JSON object (every stage marker)."""
    doc = read_json(path)
    if not isinstance(doc, dict):
        raise _corrupt(path, "a JSON object")
    return doc


def write_jsonl(path: str | Path, rows: Iterator[Mapping[str, Any]] | list[Mapping[str, Any]]) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=_json_default) + "\n")
    return Path(path)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _corrupt(path, "valid UTF-8 JSON lines") from None


def save_figure(fig: Any, path: str | Path, dpi: int = 130) -> Path:
    """Save a matplotlib figure atomically and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path, suffix=path.suffix) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    """Commit of the lasa checkout in use (None for an installed wheel); '+dirty' if modified."""
    src = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=src,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "") if sha else None


def fingerprint(obj: Any) -> str:
    """Stable short hash of a JSON-able object: the key that decides whether a cache is still valid."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=_json_default).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


#: Files at least this large are hashed once per process for a given (path, size, mtime): a full
#: fine-tune's weights (16 GB for an 8B model) are otherwise read again by `lasa run`'s stage
#: digest, each completion record and the report. Small files (markers, adapters) are always read:
#: one rewritten twice within the clock's tick at the same size would keep its mtime.
_HASH_MEMO_BYTES = 64 << 20


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file's bytes, read in chunks (model parts, adapters, stage markers)."""
    st = os.stat(path)
    if st.st_size >= _HASH_MEMO_BYTES:
        return _sha256_memo(str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    return _sha256_read(path, chunk)


def _sha256_read(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@functools.lru_cache(maxsize=1024)
def _sha256_memo(path: str, size: int, mtime_ns: int, inode: int) -> str:
    return _sha256_read(path)


def files_digest(paths: Iterator[Path] | list[Path]) -> str:
    """Stable short hash of files' names and bytes: the identity of weights a cache depends on."""
    return fingerprint([(p.name, sha256_file(p)) for p in sorted(Path(p) for p in paths)])


def make_dirs(path: Path) -> None:
    """``mkdir -p`` with a one-line error (a read-only place, a file on the way) instead of an OSError."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LasaError(f"cannot create {path} ({err.strerror or err}); choose another --run-dir") from None


class RunDir:
    """A run directory: ``RUN/config.yaml`` plus one sub-directory per stage.

    The layout is spelled here and nowhere else::

        RUN/config.yaml                      every stage's resolved config and provenance
        RUN/locate/bottleneck.json           stage 1's marker (+ layer_scores.json/.png, tsne.png)
        RUN/<ssi>/metrics.json               stage 2's marker (``ssi`` or ``--out-name``; + ssi.json)
        RUN/align/<method>/summary.json      stage 3's marker (+ adapter/, rows.jsonl, train_log.jsonl)
        RUN/eval/<variant>/results.json      evaluation's marker (+ completions*, judgements_*)
        RUN/eval/drift_reference.safetensors the base side of the drift utility, shared by adapter variants
        RUN/report.md, RUN/report.html

    Each stage writes its marker file last, so "the marker exists" means "the stage finished";
    :meth:`load` reads a marker with a one-line error naming the command that writes it.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- the layout ----------------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def locate(self) -> Path:
        return self.path / "locate"

    @property
    def bottleneck(self) -> Path:
        return self.locate / "bottleneck.json"

    def ssi(self, out_name: str = "ssi") -> Path:
        return self.path / safe_name(out_name, "--out-name")

    def ssi_metrics(self, out_name: str = "ssi") -> Path:
        return self.ssi(out_name) / "metrics.json"

    def align(self, method: str) -> Path:
        return self.path / "align" / safe_name(method, "--method")

    def align_summary(self, method: str) -> Path:
        return self.align(method) / "summary.json"

    def adapter(self, method: str) -> Path:
        return self.align(method) / "adapter"

    def eval(self, variant: str) -> Path:
        return self.path / "eval" / safe_name(variant, "--variant")

    def results(self, variant: str) -> Path:
        return self.eval(variant) / "results.json"

    def aligned_methods(self) -> list[str]:
        """Methods with a finished ``align`` stage, sorted."""
        return self._finished("align", "summary.json", "lasa align --method")

    def evaluated_variants(self) -> list[str]:
        """Variants with a finished evaluation, sorted."""
        return self._finished("eval", "results.json", "lasa evaluate --variant")

    def _finished(self, stage: str, marker: str, command: str) -> list[str]:
        """The folders of ``RUN/<stage>/`` holding ``marker``, sorted; one whose name lasa would never
        write (a hand copy such as ``kto copy``, ``kté``) is skipped with a warning, since every path
        built from it is refused: it used to end the whole report in an error naming a flag nobody gave."""
        names = []
        for p in sorted((self.path / stage).glob(f"*/{marker}")):
            try:
                names.append(safe_name(p.parent.name, command.rsplit(" ", 1)[-1]))
            except LasaError:
                if p.parent in _SKIP_WARNED:
                    continue
                _SKIP_WARNED.add(p.parent)
                logger.warning(
                    "%s: skipped (not a name `%s` writes: letters, digits, . - _ +); rename the folder "
                    "to count it",
                    p.parent,
                    command,
                )
        return names

    def load(self, marker: Path, command: str) -> dict:
        """Read a stage's JSON marker, or fail in one line naming ``command`` (what writes it)."""
        if not marker.is_file():
            raise LasaError(f"{marker} not found; run `{command} --run-dir {self.path}` first")
        try:
            return read_json_object(marker)
        except LasaError:
            raise LasaError(
                f"{marker} is damaged (not a JSON object); rerun `{command} --run-dir {self.path}`"
            ) from None

    def stage(self, name: str) -> Path:
        p = self.path / name
        make_dirs(p)
        return p

    @contextlib.contextmanager
    def stage_dir(self, name: str) -> Iterator[Path]:
        """:meth:`stage`, removing the directories it created if the block fails before writing
        anything into them — a failed stage leaves no empty ``RUN/<stage>/`` behind."""
        p = self.path / name
        created = [
            q for q in [p, *p.parents] if not q.exists() and (q == self.path or self.path in q.parents)
        ]
        make_dirs(p)
        try:
            # one writer per stage folder, and none while a `lasa run` holds the run directory (a
            # second `lasa align` of the same method deleted the first's live training log; a hand-run
            # stage beside `lasa run` raced it); stages of one run directory may run side by side
            with exclusive(self.path, "this run directory (`lasa run`)", shared=True), exclusive(p, name):
                yield p
        except BaseException:
            for q in created:  # deepest first
                with contextlib.suppress(OSError):
                    q.rmdir()  # only if empty
            raise

    def record(
        self, stage: str, config: Any, extra: Mapping[str, Any] | None = None, marker: Path | None = None
    ) -> Path:
        """Merge this stage's resolved config and provenance into ``RUN/config.yaml``. ``marker``: the
        stage's finished-marker file, whose digest the entry keeps, so the entry describes that
        marker only (a rerun killed between writing its marker and recording left the previous
        run's settings beside the new output, and `lasa run` adopted it as done with those)."""
        self.path.mkdir(parents=True, exist_ok=True)
        if marker is not None:
            extra = {**(extra or {}), "marker_digest": files_digest([Path(marker)])}
        # several stages (or processes) may finish at once: read-merge-write under a lock, or one of
        # them loses its provenance entry
        try:
            import fcntl
        except ImportError:  # Windows
            return self._record(stage, config, extra)
        with open(self.path / ".config.yaml.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return self._record(stage, config, extra)

    def _record(self, stage: str, config: Any, extra: Mapping[str, Any] | None) -> Path:
        path = self.path / "config.yaml"
        doc: dict[str, Any] = {}
        if path.exists():
            try:
                doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            except (yaml.YAMLError, OSError, UnicodeDecodeError):
                doc = None  # type: ignore[assignment]
            if not isinstance(doc, dict) or not isinstance(doc.get("stages", {}), dict):
                # the other stages' provenance is in there: set it aside, never overwrite it silently
                kept = path.with_name("config.yaml.damaged")
                with contextlib.suppress(OSError):
                    os.replace(path, kept)
                logger.warning(
                    "%s was unreadable or of the wrong shape; kept as %s, and a new one is started with %s",
                    path,
                    kept.name,
                    stage,
                )
                doc = {}
        cfg = asdict(config) if is_dataclass(config) else dict(config)
        cfg = json.loads(json.dumps(cfg, default=_json_default))  # plain YAML types only
        entry = {
            "config": cfg,
            "seed": cfg.get("seed"),
            "versions": package_versions(),
            "git_commit": git_commit(),
            "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if extra:
            entry.update(json.loads(json.dumps(dict(extra), default=_json_default)))
        doc.setdefault("stages", {})[stage] = entry
        write_text(path, yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
        return path


def _alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate it there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@contextlib.contextmanager
def staged_artefacts(out: Path, marker: str, owns: Sequence[str] = ()) -> Iterator[Path]:
    """Write a stage's artefacts into a staging folder; they replace the old ones together.

    On success the old ``marker`` (the file whose presence means "stage finished") is removed
    first, every other staged file moved in, and the new marker moved in last, so at no moment does
    ``out`` hold a marker next to artefacts of another run. On failure the staging folder is
    deleted and the previous artefacts stay as they were, consistent with their marker. ``owns``:
    the stage's optional artefacts (figures a ``--no-plots`` rerun does not draw); any of them this
    run did not stage is removed, so an old figure never sits beside new numbers.
    """
    for stale in out.glob(".staging-*"):  # left by a process that was killed (SIGKILL skips finally)
        pid = stale.name.removeprefix(".staging-")
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    staging = out / f".staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
        if not (staging / marker).is_file():
            raise RuntimeError(f"staged artefacts lack their marker {marker}")
        (out / marker).unlink(missing_ok=True)
        for name in owns:
            if not (staging / name).exists():
                (out / name).unlink(missing_ok=True)
        for f in sorted(staging.iterdir()):
            if f.name != marker:
                os.replace(f, out / f.name)
        os.replace(staging / marker, out / marker)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


_HELD: set[str] = set()  # directories this process holds (a nested exclusive() re-enters)


@contextlib.contextmanager
def exclusive(directory: str | Path, what: str, shared: bool = False) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``directory`` for the block (no lock file to leave behind; the
    kernel drops the lock when the process dies). A second lasa process writing the same thing gets a
    one-line error instead of interleaving its rows with this one's. Under a launcher only rank 0
    locks: its sibling ranks write their own slices of the same directory by design.

    ``shared``: a shared lock instead, which any number of processes hold together and an exclusive
    one excludes (every stage holds its run directory shared; `lasa run` holds it exclusively)."""
    from lasa import distributed

    try:
        import fcntl
    except ImportError:  # Windows: no flock; run one process per run directory there
        fcntl = None
    key = str(Path(directory).resolve())
    if fcntl is None or key in _HELD or (distributed.world_size() > 1 and not distributed.is_main()):
        yield  # unsupported, already held by this process (evaluate → generate), or a sibling rank
        return

    fd = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LasaError(
                f"another lasa process is writing {what} ({directory}); wait for it to finish or use "
                "another --run-dir"
            ) from None
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
    finally:
        os.close(fd)


def remove_tree(path: str | Path, inside: str | Path) -> None:
    """Delete ``path``, which must lie strictly inside the directory ``inside`` (a forced rerun
    deletes a stage's folder; a path outside its run directory is a bug or a hostile config)."""
    target, root = Path(path).resolve(), Path(inside).resolve()
    if root not in target.parents:
        raise LasaError(f"refusing to delete {path}: it is not inside the run directory {inside}")
    shutil.rmtree(target, ignore_errors=True)


# -- resumable per-sample files --------------------------------------------------------------


class SampleWriter:
    """Per-sample JSONL that survives interruption and several processes.

    Rows are appended (and fsynced) to ``*.partial.jsonl`` while running, or, under a launcher
    with several processes, to this rank's ``*.rank<N>.partial.jsonl``. ``load`` reads the final
    file and every partial file, whatever world size wrote them, dropping the torn last line of an
    interrupted run, so the next run generates only what is missing. ``finish`` (rank 0, after
    the others are done) merges everything into the final file and removes the partial files.
    """

    def __init__(self, path: Path, key: str = "uid", keep_unrequested: bool = False):
        from lasa import distributed

        self.path = Path(path)
        #: rows a ``finish(order)`` leaves out (a rerun asked for fewer prompts) go to ``kept_<name>``
        #: instead of being dropped, and ``load`` reads them back: a quick `--n 1` check on a
        #: finished variant must not delete hours of generation. None: dropped (verdict caches).
        self.kept = self.path.with_name(f"kept_{self.path.name}") if keep_unrequested else None
        suffix = (
            ".partial.jsonl" if distributed.world_size() == 1 else f".rank{distributed.rank()}.partial.jsonl"
        )
        self.partial = self.path.with_suffix(suffix)
        self.key = key

    def _partials(self) -> list[Path]:
        stem = self.path.with_suffix("").name
        found = set(self.path.parent.glob(f"{stem}.rank*.partial.jsonl"))
        found.add(self.path.with_suffix(".partial.jsonl"))
        return sorted(p for p in found if p.is_file())

    def load(self) -> dict[str, dict]:
        done: dict[str, dict] = {}
        kept = [self.kept] if self.kept is not None and self.kept.is_file() else []
        sources = kept + ([self.path] if self.path.is_file() else []) + self._partials()
        for src in sources:
            # bytes, decoded line by line: a run killed mid-write can cut a multi-byte character
            # (zh, th, bn answers), and that torn line stays mid-file once `append` ends it
            for line in src.read_bytes().split(b"\n"):
                try:
                    row = json.loads(line.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    continue  # the torn last line of an interrupted run
                if isinstance(row, dict) and self.key in row:
                    done[row[self.key]] = row
        return done

    def consolidate(self) -> None:
        """Fold the partial files of earlier, interrupted runs into the final file (atomically) and
        remove them, so that every partial file holds only this run's rows.

        Why: ``load`` lets a partial file override the final file, and partial files override each
        other in name order (``completions.partial`` < ``rank0`` < ``rank1``). A row regenerated
        this run (its settings changed) must win over the stale row an earlier run left in a
        partial file of another rank; once the earlier partials are folded in, it does. Call it
        once per run, before the first ``append`` (rank 0 only, between two barriers, with several
        processes)."""
        partials = self._partials()
        if not partials:
            return
        write_jsonl(self.path, list(self.load().values()))  # ``kept_`` rows too: ``finish`` splits them off
        for p in partials:
            p.unlink()

    def append(self, rows: list[dict]) -> None:
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        torn = False
        if self.partial.is_file() and self.partial.stat().st_size:
            with open(self.partial, "rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
        with open(self.partial, "a", encoding="utf-8") as f:
            if torn:  # end the torn line of an interrupted run so the next row stays parseable
                f.write("\n")
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def finish(self, order: list[str] | None = None) -> list[dict]:
        """Merge the final file and every partial file into the final file (atomically)."""
        rows = self.load()
        missing = [k for k in order or [] if k not in rows]
        if missing:  # never a silently shorter file: an ASR over a subset looks like a result
            raise LasaError(
                f"{self.path}: {len(missing)} of {len(order or [])} samples are missing (first: {missing[0]}); "
                "was another lasa process writing the same variant? Rerun to generate them"
            )
        ordered = [rows[k] for k in order] if order else list(rows.values())
        if self.kept is not None and order:
            wanted = set(order)
            extra = [row for k, row in rows.items() if k not in wanted]
            if extra:
                write_jsonl(self.kept, extra)
                logger.info(
                    "%s: %d completions this run did not ask for are kept in %s (a run that asks for them reuses them)",
                    self.path,
                    len(extra),
                    self.kept.name,
                )
            elif self.kept.is_file():
                self.kept.unlink()
        write_jsonl(self.path, ordered)
        for p in self._partials():
            p.unlink()
        return ordered
