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
