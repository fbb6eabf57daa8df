"""Host-to-device copies that never make the host wait for the GPU."""

from __future__ import annotations

import torch


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
