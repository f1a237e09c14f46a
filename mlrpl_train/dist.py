"""Distributed helpers (torchrun environment); everything degrades to one process."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the process group torchrun set up (nccl on GPU, gloo on CPU); one process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world=world, local_rank=local)


def gather_objects(obj, info: DistInfo) -> list:
    if info.world == 1:
        return [obj]
    out = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier()


def all_reduce_sum(tensors: list[torch.Tensor], info: DistInfo, device: torch.device) -> list[torch.Tensor]:
    """Sum CPU tensors over all ranks (through `device`: NCCL reduces on the GPU); returned on the CPU."""
    if info.world == 1:
        return tensors
    out = []
    for t in tensors:
        x = t.to(device)
        dist.all_reduce(x)
        out.append(x.cpu())
    return out


def broadcast_flag(flag: bool, info: DistInfo) -> bool:
    """True on every rank if it is true on any (a NaN on one rank stops all)."""
    if info.world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def shutdown(info: DistInfo) -> None:
    if info.world > 1 and dist.is_initialized():
        dist.destroy_process_group()
