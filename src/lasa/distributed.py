"""Multi-process runs: which process am I, and wait for the others.

``accelerate launch``, ``torchrun`` and DeepSpeed all describe a process by the same environment
variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), so lasa reads those instead of building an
``Accelerator`` of its own: training gets its process group from TRL/accelerate, and generation
(which needs only a barrier) opens a CPU ``gloo`` group on first use. With one process every
function here is a no-op, so single-process code paths stay exactly as they were.

On a machine without GPUs, ``accelerate launch --multi_gpu --num_processes 2 …`` starts two CPU
processes (``--cpu`` alone starts one, since accelerate's CPU launcher needs MPI for more).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def world_size() -> int:
    """Number of processes in this launch (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    """This process's global rank (0 without a launcher)."""
    return int(os.environ.get("RANK", "0") or 0)


def local_rank() -> int:
    """This process's rank on its machine: the GPU it should use."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def is_main() -> bool:
    """True in the one process that writes run-level artefacts."""
    return rank() == 0


def barrier() -> None:
    """Wait for every process (no-op with one). Uses the launcher's process group if one is open,
    else opens a CPU ``gloo`` group from the launcher's environment (a barrier needs no GPU)."""
    if world_size() == 1:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", rank=rank(), world_size=world_size())
    dist.barrier()


def shard(items: Sequence[T], index: int | None = None, count: int | None = None) -> list[T]:
    """This process's share of ``items``: every ``count``-th item from ``index`` (round robin, so
    length-sorted work stays balanced across processes)."""
    index = rank() if index is None else index
    count = world_size() if count is None else count
    return list(items[index::count])
