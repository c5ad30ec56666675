"""Data-parallel training with ``torch.distributed`` under ``torchrun``.

``torchrun`` starts one process per device and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` in each; :func:`process_group` reads them, picks the process's device (``auto``: CUDA device
``LOCAL_RANK`` when CUDA is available, else the CPU, as :func:`dfcore.device.resolve_device`) and opens the
process group on it (backend ``nccl`` on CUDA, ``gloo`` on the CPU). Without ``torchrun`` (``WORLD_SIZE`` unset or
1) every function here is the single-process identity: :func:`wrap` returns the module itself, :func:`shard`
the whole batch, :func:`global_mean` the value given.

Under a process group of world size W > 1 each rank evaluates a contiguous shard of B / W samples of the same
global minibatch of B; :func:`wrap` puts the module in ``DistributedDataParallel``, whose backward averages the
gradients of the shard means over the ranks, which is the gradient of the mean over the global batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from dfcore.device import resolve_device

__all__ = [
    "Launch",
    "launch",
    "local_device",
    "init",
    "destroy",
    "process_group",
    "is_active",
    "rank",
    "world_size",
    "is_main",
    "barrier",
    "shard",
    "wrap",
    "global_mean",
]


@dataclass(frozen=True)
class Launch:
    """The ranks that ``torchrun`` gave this process: global ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def launch() -> Launch:
    """``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` of the environment (0, 1, 0 where unset)."""
    env = os.environ
    return Launch(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def local_device(name: str | torch.device = "auto") -> torch.device:
    """The device of this process: :func:`~dfcore.device.resolve_device` of ``name``, where ``auto`` and a bare
    ``cuda`` mean CUDA device ``LOCAL_RANK`` under ``torchrun``."""
    device = resolve_device(name)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", launch().local_rank)
    return device


def init(device: str | torch.device = "auto") -> torch.device:
    """Open the default process group for the ``torchrun`` environment when its world size exceeds 1 and none is
    open (backend ``nccl`` for a CUDA device, ``gloo`` otherwise); returns this process's device
    (:func:`local_device`). A single process opens nothing."""
    where = local_device(device)
    ranks = launch()
    if ranks.world_size > 1 and not dist.is_initialized():
        if where.type == "cuda":
            torch.cuda.set_device(where)
        backend = "nccl" if where.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=ranks.rank, world_size=ranks.world_size)
    return where


def destroy() -> None:
    """Close the default process group if one is open."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def process_group(device: str | torch.device = "auto") -> Iterator[torch.device]:
    """:func:`init` on entry (yielding the device), :func:`destroy` on exit, also after an error."""
    try:
        yield init(device)
    finally:
        destroy()


def is_active() -> bool:
    """Whether a process group of world size > 1 is open."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank in the open process group (0 without one)."""
    return dist.get_rank() if is_active() else 0


def world_size() -> int:
    """The number of processes of the open process group (1 without one)."""
    return dist.get_world_size() if is_active() else 1


def is_main() -> bool:
    """Whether this process is rank 0, the one that writes files and prints."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank of the open process group (nothing without one)."""
    if is_active():
        dist.barrier()


def shard(batch_size: int) -> slice:
    """This rank's contiguous slice of a global minibatch of ``batch_size`` samples: ``batch_size / W`` of them
    from ``rank * batch_size / W``. ValueError when ``batch_size`` is not a multiple of the world size W."""
    size = world_size()
    if batch_size % size:
        raise ValueError(
            f"batch_size {batch_size} is not divisible by the world size {size}: each of the {size} processes "
            "takes an equal shard of the global minibatch; choose a multiple of the number of processes"
        )
    per = batch_size // size
    return slice(rank() * per, (rank() + 1) * per)


def wrap(module: nn.Module) -> nn.Module:
    """``module`` in ``DistributedDataParallel`` under an open process group (gradients averaged over the ranks in
    the backward pass; the parameters of rank 0 broadcast to all at the start), else ``module`` itself."""
    if not is_active():
        return module
    param = next(module.parameters())
    device_ids = [param.device] if param.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def global_mean(value: Tensor, count: int) -> Tensor:
    """The mean over the global batch from each rank's mean ``value`` over its ``count`` samples:
    :math:`\\sum_r n_r v_r / \\sum_r n_r` (float64, detached), the same on every rank; ``value`` itself (detached)
    in a single process."""
    if not is_active():
        return value.detach()
    weighted = value.detach().to(torch.float64) * count
    pair = torch.stack([weighted, torch.tensor(float(count), dtype=torch.float64, device=value.device)])
    dist.all_reduce(pair)
    return pair[0] / pair[1]
