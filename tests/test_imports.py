"""The house has layers: no import cycle among lasa's modules (scripts/check_imports.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_import_cycle_in_src_lasa():
    sys.path.insert(0, str(ROOT / "scripts"))
    import check_imports

    edges = check_imports.graph(top_level_only=False)
    assert "lasa.config" in edges and edges["lasa.pipeline"]  # the graph was read, not empty
    assert check_imports.cycles(edges) == []
    assert "lasa.pipeline" not in edges["lasa.config"]  # the bottom of the house never imports its top


def test_the_checker_finds_a_cycle():
    sys.path.insert(0, str(ROOT / "scripts"))
    import check_imports

    assert check_imports.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_import_lasa_stays_light():
    code = "import sys, lasa; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_the_public_api_resolves_every_name():
    import lasa

    for name in lasa._LAZY:
        assert getattr(lasa, name) is not None, name
    assert lasa.wilson(0, 8).high > 0.3 and "run_evaluate" in dir(lasa)
