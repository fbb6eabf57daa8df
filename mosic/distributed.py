"""torch.distributed helpers: no-ops in a single process."""

from __future__ import annotations

import atexit
import os
from datetime import timedelta

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes (returns a new tensor; the input is left untouched)."""
    return _all_reduce(tensor, "SUM")


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Maximum over processes (returns a new tensor)."""
    return _all_reduce(tensor, "MAX")


def _all_reduce(tensor: torch.Tensor, op: str) -> torch.Tensor:
    if not is_distributed():
        return tensor
    out = tensor.clone()
    dist.all_reduce(out, op=getattr(dist.ReduceOp, op))
    return out


def init_from_environment(device: torch.device) -> bool:
    """Initialise the default process group when launched by torchrun.

    Reads ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` (set by torchrun); uses NCCL on CUDA
    and gloo on CPU. Returns True when running distributed.
    """
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    # A process group left alive at interpreter exit lets gloo's worker threads be torn
    # down by static destructors ("terminate called without an active exception",
    # SIGABRT) after a run that finished: destroy it first.
    atexit.register(shutdown, wait=False)
    return True


def shutdown(wait: bool = True) -> None:
    """Tear down the default process group (no-op when there is none).

    ``wait`` first waits for every process (a barrier), so no rank leaves while another
    still talks to it; the exit hook passes False, since a rank that crashed never comes.
    """
    if not is_distributed():
        return
    if wait:
        dist.barrier()
    dist.destroy_process_group()


def all_gather_object(obj):
    """[obj of rank 0, obj of rank 1, ...] (picklable objects; [obj] in one process)."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def average_gradients(params: list[torch.Tensor]) -> None:
    """Average ``.grad`` over processes in place, in one flat all-reduce per dtype
    (what DDP does, for steps that bypass it). Missing gradients count as zeros."""
    if not is_distributed():
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in params:
        by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    world = world_size()
    for grads in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every process (as DDP does at wrap time)."""
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src)
