"""Where a run executes: one process, or one of several started by ``torchrun``.

    platform = pxprune.platform.from_environment()
    mask = pxprune.prune(model, "px", my_shard, sparsity=0.98, reduce=platform.all_reduce_)

The rest of the library never imports ``torch.distributed``: criteria only receive a reduction
(``reduce(tensor, op="sum")``, in place), which :meth:`Platform.all_reduce_` is. :data:`SINGLE`, the
single-process platform, makes every collective an identity.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
_OPS = ("sum", "max")


@dataclasses.dataclass(frozen=True)
class Platform:
    """One process of a run: its ``rank`` among ``world_size``, its ``local_rank`` on its machine and
    its ``device``. ``distributed`` is True when the collectives go through ``torch.distributed``
    (initialised by :func:`from_environment`); otherwise each is an identity."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    distributed: bool = False

    @property
    def is_primary(self) -> bool:
        """Rank 0: the process that writes files and logs."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index or 0])
            else:
                dist.barrier()

    def all_reduce_(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Reduce ``tensor`` in place across processes (``op``: "sum" or "max"); returns it. This is
        the ``reduce=`` that ``pxprune.score`` and ``pxprune.prune`` take."""
        if op not in _OPS:
            raise ValueError(f"op must be one of {', '.join(_OPS)}, got {op!r}")
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return tensor

    def broadcast_(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Overwrite ``tensor`` in place with rank ``src``'s; returns it."""
        if self.distributed:
            import torch.distributed as dist

            dist.broadcast(tensor, src=src)
        return tensor

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every process's ``obj`` (picklable), in rank order."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


SINGLE = Platform()
"""The single-process platform: rank 0 of 1 on the CPU; every collective is an identity."""


def _device(device: str | torch.device, local_rank: int) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:  # one GPU per process: the local one
        return torch.device("cuda", local_rank)
    return dev


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher that sets RANK,
    WORLD_SIZE and LOCAL_RANK)."""
    return all(k in os.environ for k in _ENV)


def close(platform: Platform) -> None:
    """End the process group :func:`from_environment` started (nothing for one process)."""
    if platform.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def from_environment(device: str | torch.device = "auto", *, init_method: str | None = None) -> Platform:
    """The platform of this process. Under ``torchrun`` (RANK, WORLD_SIZE and LOCAL_RANK set) it
    initialises ``torch.distributed`` (nccl on CUDA, gloo on the CPU; ``init_method`` defaults to
    torchrun's ``env://``) unless already done, and selects the local GPU; otherwise it returns
    the single-process platform on ``device`` ("auto": the GPU if there is one)."""
    if not launched():
        dev = _device(device, 0)
        return SINGLE if dev == SINGLE.device else dataclasses.replace(SINGLE, device=dev)
    import torch.distributed as dist

    try:
        rank, world, local = (int(os.environ[k]) for k in _ENV)
    except ValueError:
        raise ValueError(
            f"RANK, WORLD_SIZE and LOCAL_RANK must be integers, got "
            f"{', '.join(repr(os.environ[k]) for k in _ENV)}: start the script with torchrun"
        ) from None
    dev = _device(device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if dev.type == "cuda" else "gloo",
            init_method=init_method,
            rank=rank,
            world_size=world,
        )
    return Platform(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local,
                    device=dev, distributed=True)
