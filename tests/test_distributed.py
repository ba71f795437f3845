"""Several processes: `accelerate launch` of align and generate on two CPU processes, and the
pieces they rest on (rank-sharded per-sample files, a full last batch)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lasa import distributed
from lasa.data.rows import fill_last_batch
from lasa.runs import SampleWriter


def accelerate_launch(args: list[str], port: int, timeout: int = 600) -> subprocess.CompletedProcess:
    """Two CPU processes under accelerate's torchrun launcher (``--multi_gpu`` is the launcher's
    name for it; on a machine without GPUs each process runs on the CPU)."""
    exe = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [exe, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port)]
    cmd += ["-m", "lasa.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def test_shard_is_round_robin_and_covers_everything():
    items = list(range(11))
    parts = [distributed.shard(items, r, 3) for r in range(3)]
    assert parts[0] == [0, 3, 6, 9] and sorted(x for p in parts for x in p) == items
    assert distributed.shard(items) == items  # one process: everything


def test_sample_writer_merges_the_files_of_an_interrupted_two_process_run(tmp_path, monkeypatch):
    path = tmp_path / "completions.jsonl"
    monkeypatch.setenv("WORLD_SIZE", "2")
    for r, uids in ((0, "ac"), (1, "bd")):
        monkeypatch.setenv("RANK", str(r))
        w = SampleWriter(path)
        assert w.partial.name == f"completions.rank{r}.partial.jsonl"
        w.append([{"uid": u} for u in uids])
    with open(tmp_path / "completions.rank1.partial.jsonl", "a") as f:
        f.write('{"uid": "e"')  # rank 1 killed mid-write
    monkeypatch.setenv("WORLD_SIZE", "1")  # resumed with one process: it sees both ranks' rows
    monkeypatch.setenv("RANK", "0")
    w = SampleWriter(path)
    assert set(w.load()) == {"a", "b", "c", "d"}
    w.append([{"uid": "e"}])
    assert [r["uid"] for r in w.finish(order=list("abcde"))] == list("abcde")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["completions.jsonl"]


def test_fill_last_batch_completes_it_with_other_prompts():
    rows = [{"pid": p} for p in [1, 2, 3, 4, 1, 5]]  # last batch of 4: [1, 5]
    out = fill_last_batch(rows, 4)
    assert len(out) == 8 and out[:6] == rows
    assert [r["pid"] for r in out[4:]] == [1, 5, 2, 3] and all(r.get("filler") for r in out[6:])
    assert fill_last_batch(rows[:4], 4) == rows[:4]


def test_align_under_accelerate_with_two_processes(tmp_path, tiny_qwen):
    run = tmp_path / "run"
    args = ["align", "--model", str(tiny_qwen), "--run-dir", str(run), "--method", "lasa"]
    args += ["--n-safety", "6", "--n-general", "3", "--batch-size", "4", "--max-steps", "2"]
    args += ["--bottleneck-layer", "2", "--device", "cpu"]
    proc = accelerate_launch(args, port=29561)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = run / "align" / "lasa"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["training"]["processes"] == 2 and summary["training"]["steps"] == 2
    batches = summary["rows"]["device_batches"]
    assert batches["processes"] == 2 and min(batches["per_process"]) >= 2
    assert batches["with_repeated_prompt"] == 0  # no device batch holds two rows of one prompt
    # one adapter, written once (rank 0), and nothing half-written next to it
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter",
        "loss.png",
        "rows.jsonl",
        "summary.json",
        "train_log.jsonl",
    ]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    # saved through the trainer on every rank (ZeRO-3 / FSDP gather there): whole tensors, no pickled args
    from safetensors.torch import load_file

    weights = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert weights and all(t.numel() > 0 for t in weights.values())
    assert any(float(t.abs().sum()) > 0 for k, t in weights.items() if "lora_B" in k)  # trained, not the init
    assert not (out / "adapter" / "training_args.bin").exists()
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len([r for r in log if "loss" in r]) == 2  # one log line per step, not one per process


@pytest.mark.parametrize(
    ("decoding", "port"), [([], 29562), (["--do-sample", "--temperature", "1.5", "--seed", "7"], 29572)]
)
def test_generate_sharded_over_two_processes_matches_one_process(tmp_path, tiny_qwen, decoding, port):
    """Greedy and sampled alike: a sampled row draws from its own stream (seed, prompt), so the
    shards, and a sharded rerun of the rows an interrupted run lacks, draw what one process draws."""
    common = ["generate", "--model", str(tiny_qwen), "--langs", "en", "sw", "--n", "5", *decoding]
    common += ["--xstest-n", "3", "--max-new-tokens", "6", "--batch-size", "2", "--device", "cpu"]
    one = tmp_path / "one"
    proc = subprocess.run(
        [sys.executable, "-m", "lasa.cli", *common, "--run-dir", str(one)],
        capture_output=True,
        text=True,
        env=os.environ | {"HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = tmp_path / "two"
    proc = accelerate_launch([*common, "--run-dir", str(two)], port=port)
    assert proc.returncode == 0, proc.stderr[-3000:]

    def rows(run: Path, name: str) -> dict[str, str]:
        lines = (run / "eval" / "base" / name).read_text().splitlines()
        return {(r := json.loads(line))["uid"]: r["response"] for line in lines}

    for name in ("completions.jsonl", "completions_xstest.jsonl"):
        assert rows(two, name) == rows(one, name) and len(rows(one, name)) in (10, 3)
    assert not list((two / "eval" / "base").glob("*.partial.jsonl"))  # merged by rank 0

    # resumable per sample: drop rows, and a sharded rerun generates only those
    path = two / "eval" / "base" / "completions.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:4]) + "\n")
    proc = accelerate_launch([*common, "--run-dir", str(two)], port=port + 1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert rows(two, "completions.jsonl") == rows(one, "completions.jsonl")
    assert "6 completions to generate" not in proc.stderr  # split: 3 per rank
    assert "3 completions to generate" in proc.stderr
