"""Choosing the device, and host-to-device copies that never make the host wait for the GPU."""

from __future__ import annotations

import os

import torch


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None): CUDA when available, else the CPU. A plain ``"cuda"`` under
    torchrun means this process's GPU, ``cuda:LOCAL_RANK``; other names are taken as given."""
    if name is None or name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` on ``device``, copied asynchronously.

    A non-blocking copy from pageable host memory waits for the GPU stream all the same,
    so CPU tensors bound for CUDA are first put in page-locked memory.
    """
    device = torch.device(device)
    if tensor.device == device or (device.type == tensor.device.type and device.index is None):
        return tensor
    if tensor.device.type == "cpu" and device.type == "cuda" and not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)
