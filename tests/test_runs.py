"""Atomic artefact writes: a failed write leaves the old file and no temporary behind."""

import os
import stat

import pytest

from lasa.runs import atomic_path, read_json, write_json


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("{half")
        raise RuntimeError("interrupted")
    assert read_json(target) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_written_file_mode_follows_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_json(tmp_path / "x.json", {"b": 2})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0600


def test_the_run_dir_layout_is_named_once_and_markers_load_with_a_fix(tmp_path):
    from lasa.errors import LasaError
    from lasa.runs import RunDir, write_json

    rd = RunDir(tmp_path)
    assert rd.bottleneck == tmp_path / "locate" / "bottleneck.json"
    assert rd.ssi_metrics("ssi_chat") == tmp_path / "ssi_chat" / "metrics.json"
    assert rd.adapter("lasa") == tmp_path / "align" / "lasa" / "adapter"
    assert rd.results("lasa+gate") == tmp_path / "eval" / "lasa+gate" / "results.json"
    assert rd.evaluated_variants() == [] and rd.aligned_methods() == []
    with pytest.raises(LasaError, match=r"run `lasa evaluate --run-dir .*` first"):
        rd.load(rd.results("base"), "lasa evaluate")
    write_json(rd.results("kto"), {"variant": "kto"})
    rd.eval("base").mkdir(parents=True)  # unfinished: no marker
    assert rd.evaluated_variants() == ["kto"] and rd.load(rd.results("kto"), "x") == {"variant": "kto"}


def test_strict_json_writes_what_other_tools_can_read(tmp_path):
    """judge-check --out used to write bare NaN (a kappa over one class), which jq and JavaScript
    reject; strict_json turns non-finite floats into null, everything else unchanged."""
    import json
    import math

    from lasa.runs import strict_json, write_json

    obj = {"kappa": math.nan, "per_language": {"bn": [1.0, math.inf, -math.inf]}, "n": 3, "label": "safe"}
    text = write_json(tmp_path / "x.json", strict_json(obj)).read_text()

    def refuse(name):
        raise ValueError(name)

    assert json.loads(text, parse_constant=refuse) == {
        "kappa": None,
        "per_language": {"bn": [1.0, None, None]},
        "n": 3,
        "label": "safe",
    }


def test_large_files_are_hashed_once_per_version(tmp_path, monkeypatch):
    """A full fine-tune's weights are read by the stage digest, every completion record and the
    report: hashed once per (path, size, mtime), and again as soon as the file changes."""
    import hashlib
    import os

    from lasa import runs

    runs._sha256_memo.cache_clear()
    monkeypatch.setattr(runs, "_HASH_MEMO_BYTES", 1)  # everything counts as large here
    reads = []
    original = runs._sha256_read
    monkeypatch.setattr(runs, "_sha256_read", lambda p, chunk=1 << 22: reads.append(p) or original(p, chunk))
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"a" * 100)
    first = runs.sha256_file(f)
    assert runs.sha256_file(f) == first == hashlib.sha256(b"a" * 100).hexdigest() and len(reads) == 1
    f.write_bytes(b"b" * 100)  # same size, new bytes, a later mtime
    st = os.stat(f)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert runs.sha256_file(f) == hashlib.sha256(b"b" * 100).hexdigest() and len(reads) == 2
    monkeypatch.setattr(runs, "_HASH_MEMO_BYTES", 1 << 30)  # small files are always read
    runs.sha256_file(f), runs.sha256_file(f)
    assert len(reads) == 4


def test_a_hand_copied_stage_folder_is_skipped_not_fatal(tmp_path, caplog):
    """``eval/kto copy/`` (a file manager's copy) or ``eval/kté/`` ended `lasa report` in an error
    about a --variant nobody gave; such folders are skipped with a warning naming them."""
    from lasa.report import build_report
    from lasa.runs import RunDir, write_json

    for name in ("kto copy", "kté"):
        write_json(tmp_path / "eval" / name / "results.json", {})
    write_json(tmp_path / "align" / "kto copy" / "summary.json", {})
    rd = RunDir(tmp_path)
    with caplog.at_level("WARNING"):
        assert rd.evaluated_variants() == [] and rd.aligned_methods() == []
    assert "kto copy: skipped" in caplog.text
    out = build_report(tmp_path)
    assert "kto copy" not in (tmp_path / "report.md").read_text() and out["html"]
