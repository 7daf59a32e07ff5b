"""One KD round of a run: resume checkpoints (``train.resume``) around ``train.distill.distill``, in
this process or spread over ``--nproc`` processes (torch.distributed, gloo, DDP)."""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import io
import json
import os
import socket
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from edgecompress import errors
from edgecompress.config import DistillConfig, RunConfig
from edgecompress.data.dataset import Dataset
from edgecompress.errors import EdgeCompressError
from edgecompress.models.loading import ModelSpec, build
from edgecompress.models.pruned import apply_record, structural_record
from edgecompress.runtime.outputs import OutputInfo
from edgecompress.train import distributed, resume
from edgecompress.train.distill import DistillResult, distill


def run_kd(cfg: RunConfig, lm: Any, splits: Any, student: nn.Module, teacher: nn.Module, dcfg: DistillConfig,
           step: int, log: Callable[[str], None], device: str = "cpu") -> DistillResult:  # fmt: skip
    """Distils ``student`` in place on ``device``; prune step ``step`` (1-based) of the schedule. Under
    torchrun (a process group is up) this rank trains its shard and every rank's weights are hashed."""
    launch = distributed.from_env()
    ck = None
    if cfg.out is not None:  # without --out nobody could name the run to resume
        key = resume.run_key(cfg.to_dict(), lm.weights_sha256, structural_record(teacher, student), step)
        ck = resume.KdCheckpoint(resume.resume_dir(Path(cfg.out)) / f"kd-{step}.ckpt", key, resume=cfg.resume,
                                 every=dcfg.checkpoint_every, log=log, enabled=launch is None or launch.leader)  # fmt: skip
    seed = cfg.seed + step - 1
    if cfg.nproc < 2:
        desc = "distill" if launch is None else f"distill [rank {launch.rank}]"
        dr = distill(student, teacher, splits.train, dcfg, val=splits.val, seed=seed, checkpoint=ck, desc=desc,
                     device=device, workers=cfg.data.workers, log=log if launch is None or launch.leader else None,
                     outputs=tuple(lm.outputs))
        if launch is not None:
            hashes = distributed.state_hashes(student)
            distributed.settle()
            dr = dataclasses.replace(dr, nproc=launch.world, rank_state_sha256=hashes)
        return dr
    return _distill_ddp(cfg.nproc, lm, splits, student, teacher, dcfg, seed, ck, log, cfg.data.workers)


def _distill_ddp(nproc: int, lm: Any, splits: Any, student: nn.Module, teacher: nn.Module, dcfg: DistillConfig,
                 seed: int, ck: Any, log: Callable[[str], None], workers: int = 0) -> DistillResult:  # fmt: skip
    """KD over ``nproc`` processes (torch.multiprocessing.spawn, gloo, DistributedDataParallel).

    The workers rebuild teacher and student from the model spec + pruning record + weights (as
    ``load_pruned`` does: nothing pickled but tensors), train their DistributedSampler shard,
    and rank 0 hands the weights back through a file; the other ranks write nothing."""
    import torch.multiprocessing as mp

    with socket.socket() as sock:  # a free port for the rendezvous on this machine
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    def shared(a):  # arrays in shared memory; image files (data.folders.ImageFiles) as they are: a file list
        return a if a is None or not isinstance(a, np.ndarray) else torch.from_numpy(a).share_memory_()

    payload = {
        "spec": lm.spec.to_dict(), "record": structural_record(teacher, student),
        "student": {k: v.detach().clone() for k, v in student.state_dict().items()},
        "teacher": {k: v.detach().clone() for k, v in teacher.state_dict().items()},
        "data": {name: (shared(d.x), shared(d.y), d.source) for name, d in (("train", splits.train), ("val", splits.val))},
        "cfg": dcfg, "seed": seed, "workers": workers, "outputs": [o.to_dict() for o in lm.outputs],
        "threads": max(1, torch.get_num_threads() // nproc),
        "ck": None if ck is None else (str(ck.path), ck.key, ck.resume, ck.every),
    }  # fmt: skip
    log(f"distilling on {nproc} processes (torch.distributed, gloo, DistributedDataParallel)")
    with tempfile.TemporaryDirectory(prefix="edgecompress-ddp-") as tmp:
        try:
            mp.spawn(_worker, args=(nproc, port, payload, tmp), nprocs=nproc, join=True)
        except mp.ProcessRaisedException:
            for f in sorted(Path(tmp).glob("error-*.json")):  # a bad-input error in a worker: the same error here
                e = json.loads(f.read_text())
                raise getattr(errors, e["type"], errors.BadInput)(e["message"]) from None
            raise
        out = torch.load(Path(tmp) / "result.pt", map_location="cpu", weights_only=True)
    student.load_state_dict(out["state_dict"])
    return DistillResult(**out["result"])


def _worker(rank: int, world: int, port: int, payload: dict[str, Any], tmp: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(payload["threads"])
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # gloo even where CUDA exists: the training loop (edgecompress.train) runs on the CPU
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(minutes=30))
    try:
        spec = ModelSpec.from_dict(payload["spec"])
        student = apply_record(build(spec), payload["record"], payload["student"])
        teacher = build(spec)
        teacher.load_state_dict(payload["teacher"])
        teacher.eval()
        d = {k: Dataset(x.numpy() if isinstance(x, torch.Tensor) else x, None if y is None else y.numpy(), src)
             for k, (x, y, src) in payload["data"].items()}
        ck = None
        if payload["ck"] is not None:
            path, key, do_resume, every = payload["ck"]
            ck = resume.KdCheckpoint(Path(path), key, resume=do_resume, every=every, enabled=rank == 0,
                              log=(lambda m: print(f"edgecompress: {m}", flush=True)) if rank == 0 else None)  # fmt: skip
        dr = distill(student, teacher, d["train"], payload["cfg"], val=d["val"], seed=payload["seed"],
                     checkpoint=ck, desc=f"distill [rank {rank}]", workers=payload["workers"],
                     outputs=tuple(OutputInfo.from_dict(o) for o in payload["outputs"]))  # fmt: skip
        buf = io.BytesIO()
        torch.save({k: v.contiguous() for k, v in sorted(student.state_dict().items())}, buf)
        hashes: list[Any] = [None] * world
        dist.all_gather_object(hashes, hashlib.sha256(buf.getvalue()).hexdigest())
        if rank == 0:
            result = dataclasses.asdict(dr) | {"nproc": world, "rank_state_sha256": hashes}
            torch.save({"state_dict": student.state_dict(), "result": result}, Path(tmp) / "result.pt")
        # tear down together, with DDP's reducer and its gloo work freed while the group is alive: a
        # rank that left first, or a DDP object collected after destroy_process_group, aborted
        # (SIGABRT, "terminate called without an active exception") in about 1 of 15 loaded runs
        del student, teacher, dr
        gc.collect()
        dist.barrier()
    except EdgeCompressError as e:
        (Path(tmp) / f"error-{rank}.json").write_text(json.dumps({"type": type(e).__name__, "message": str(e)}))
        raise
    finally:
        dist.destroy_process_group()
