"""EMA teacher update over the trainable parameters only."""

from __future__ import annotations

import math
from typing import Sequence

import torch


@torch.no_grad()
def ema_update_(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor], momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, fused with ``_foreach_lerp_``."""
    if teacher:
        torch._foreach_lerp_(list(teacher), list(student), 1.0 - momentum)


def ema_momentum(base: float, step: int, total_steps: int, schedule: str = "constant") -> float:
    """Momentum at ``step``: constant, or cosine from ``base`` to 1 (as in DINO)."""
    if schedule == "constant" or total_steps <= 1:
        return base
    progress = min(step / (total_steps - 1), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0
