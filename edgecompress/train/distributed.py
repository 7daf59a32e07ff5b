"""Launching under ``torchrun``: the rendezvous comes from the environment (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT), gloo on the CPU and NCCL on GPUs.

Every rank loads the inputs and prunes; rank 0's pruned structure and weights are then broadcast
(``broadcast_student``), so every rank trains the same network whatever the pruning did on the
others. Distillation is DistributedDataParallel over DistributedSampler shards (``train.loop``
detects the process group). After it, only rank 0 goes on (INT8, evaluation, latency) and writes
artifacts; the other ranks stop. ``--nproc`` stays the one-machine shortcut (``train.ddp``).
"""

from __future__ import annotations

import gc
import hashlib
import io
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.nn as nn

from edgecompress.errors import BadInput
from edgecompress.models.loading import ModelSpec, build
from edgecompress.models.pruned import apply_record, structural_record


@dataclass(frozen=True)
class Launch:
    rank: int
    world: int
    local_rank: int

    @property
    def leader(self) -> bool:
        return self.rank == 0


def from_env() -> Launch | None:
    """The torchrun launch this process belongs to, or None (a plain process, or a world of 1)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise BadInput("RANK/WORLD_SIZE/LOCAL_RANK in the environment are not integers; launch with torchrun") from None
    return Launch(rank, world, local) if world > 1 else None


def init(launch: Launch, device: torch.device) -> torch.device:
    """Joins the process group (env:// rendezvous); returns this rank's device (cuda:LOCAL_RANK on GPUs)."""
    import torch.distributed as dist

    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        raise BadInput("WORLD_SIZE > 1 but MASTER_ADDR/MASTER_PORT are not set; launch with torchrun")
    if device.type == "cuda":
        device = torch.device("cuda", launch.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=30))
    return device


def broadcast_student(teacher: nn.Module, student: nn.Module, spec: ModelSpec) -> nn.Module:
    """Rank 0's pruned student on every rank: its structural record and weights, broadcast."""
    import torch.distributed as dist

    box: list[Any] = [None]
    if dist.get_rank() == 0:
        box[0] = {"record": structural_record(teacher, student),
                  "state": {k: v.detach().cpu() for k, v in student.state_dict().items()}}
    dist.broadcast_object_list(box, src=0)
    if dist.get_rank() == 0:
        return student
    return apply_record(build(spec), box[0]["record"], box[0]["state"])


def state_hashes(model: nn.Module) -> list[str]:
    """sha256 of every rank's state_dict (all ranks call it): equal when the ranks agree."""
    import torch.distributed as dist

    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in sorted(model.state_dict().items())}, buf)
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, hashlib.sha256(buf.getvalue()).hexdigest())
    return out


def settle() -> None:
    """Every rank waits here with DDP's reducer freed first (see train.ddp._worker's teardown)."""
    import torch.distributed as dist

    gc.collect()
    dist.barrier()


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
