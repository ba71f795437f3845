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


#: README's module map, bottom to top: a module may import from its own layer or the ones above it
#: in this list, never from a later one.
LAYERS = [
    [
        "lasa.errors",
        "lasa.stats",
        "lasa.distributed",
        "lasa.conditioning",
        "lasa.data",
        "lasa.data.safety",
        "lasa.data.rows",
    ],
    ["lasa.config"],
    ["lasa.runs", "lasa.tables"],
    ["lasa.default_model", "lasa.models", "lasa.hidden", "lasa.ssi", "lasa.generate"],
    ["lasa.judges", "lasa.judge_check", "lasa.asr"],
    [
        "lasa.locate",
        "lasa.interpret",
        "lasa.align",
        "lasa.utility",
        "lasa.evaluate",
        "lasa.report",
        "lasa.results",
        "lasa.on_policy",
    ],
    ["lasa.pipeline", "lasa.cli", "lasa"],
]


def test_no_upward_import():
    sys.path.insert(0, str(ROOT / "scripts"))
    import check_imports

    edges = check_imports.graph(top_level_only=False)
    layer = {}
    for i, mods in enumerate(LAYERS):
        for m in mods:
            layer[m] = i
    for m in edges:  # judges/* sit with their package
        layer.setdefault(m, layer.get(m.rsplit(".", 1)[0], -1))
    assert all(layer[m] >= 0 for m in edges), [m for m in edges if layer[m] < 0]
    upward = [(a, b) for a, bs in edges.items() for b in bs if layer[b] > layer[a]]
    assert upward == []


def test_every_lasa_name_the_benchmarks_and_scripts_import_exists():
    """bench/ and scripts/ import lasa lazily inside functions, so a renamed or moved name breaks
    them only when that benchmark runs (make bench's extraction failed on ``build_points`` after it
    moved to lasa.locate.scores). Every ``from lasa.x import y`` there must resolve."""
    import ast
    import importlib

    missing = []
    for path in sorted([*ROOT.joinpath("bench").glob("*.py"), *ROOT.joinpath("scripts").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lasa":
                mod = importlib.import_module(node.module)
                for alias in node.names:
                    if not hasattr(mod, alias.name):
                        try:
                            importlib.import_module(f"{node.module}.{alias.name}")
                        except ImportError:
                            missing.append(f"{path.name}: from {node.module} import {alias.name}")
    assert missing == []
