from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # any hub lookup fails fast instead of hanging
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tiny


@pytest.fixture(scope="session")
def tokenizer():
    return tiny.build_tokenizer()


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory, tokenizer) -> Path:
    return tiny.save_tiny(tmp_path_factory.mktemp("tiny-qwen2"), "qwen2", tokenizer)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, tokenizer) -> Path:
    return tiny.save_tiny(tmp_path_factory.mktemp("tiny-llama"), "llama", tokenizer)


@pytest.fixture(scope="session", autouse=True)
def _test_dtype():
    """``LASA_TEST_DTYPE=float32`` with ``LASA_TEST_DEVICE=cuda``: the GPU run without bf16 rounding, so
    an exact-equality test that fails there is a device bug, not precision (scripts/gpu_check.sh).
    Session-scoped: module-scoped model fixtures load before any function-scoped patch would apply."""
    forced = os.environ.get("LASA_TEST_DTYPE")
    if not forced:
        yield
        return
    import lasa.models

    original = lasa.models.resolve_dtype
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            lasa.models,
            "resolve_dtype",
            lambda dtype, device: original(forced if dtype == "auto" else dtype, device),
        )
        yield


@pytest.fixture(autouse=True)
def _isolated_cache(request, tmp_path, monkeypatch):
    """Unit tests never touch the user's real model cache; slow real-model tests use it."""
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv("LASA_CACHE", str(tmp_path / "lasa-cache"))
