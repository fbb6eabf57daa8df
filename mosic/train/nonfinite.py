"""Watching for non-finite steps without making the host wait for the GPU."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch


class NonFiniteLossError(FloatingPointError):
    """Too many training steps in a row had a non-finite loss or gradient."""


class NonFiniteGuard:
    """Counts steps whose update was skipped for a non-finite loss or gradient.

    ``push(step, flag)`` takes the step's 0-dim flag tensor (1 = skipped). A CUDA flag is
    copied to pinned memory without blocking and read one step later, when the GPU has
    long finished it; a CPU flag is read at once. Each skipped step warns once; ``limit``
    skipped steps in a row raise :class:`NonFiniteLossError`, naming the run's last
    checkpoint (which a skipped step never changes).
    """

    def __init__(self, limit: int, run_dir: Path | None = None):
        self.limit = limit
        self.run_dir = run_dir
        self.in_a_row = 0
        self.skipped: list[int] = []
        self._pending: tuple[int, torch.Tensor, torch.cuda.Event | None] | None = None

    def push(self, step: int, flag: torch.Tensor) -> None:
        if flag.device.type == "cuda":
            host = torch.empty((), dtype=flag.dtype, pin_memory=True)
            host.copy_(flag.detach(), non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            previous, self._pending = self._pending, (step, host, event)
            if previous is not None:
                self._check(*previous)
        else:
            self._check(step, flag, None)

    def flush(self) -> None:
        """Read the last pending flag (call at the end of a run)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._check(*pending)

    def _check(self, step: int, flag: torch.Tensor, event) -> None:
        if event is not None:
            event.synchronize()
        if not bool(flag):
            self.in_a_row = 0
            return
        self.in_a_row += 1
        self.skipped.append(step)
        warnings.warn(
            f"step {step}: the loss or a gradient is not finite; the update was skipped "
            f"({self.in_a_row} in a row, the run stops at {self.limit})",
            RuntimeWarning,
            stacklevel=3,
        )
        if self.in_a_row >= self.limit:
            where = ""
            if self.run_dir is not None and (self.run_dir / "checkpoints" / "latest").is_file():
                latest = (self.run_dir / "checkpoints" / "latest").read_text().strip()
                where = f"; the last checkpoint, {self.run_dir / 'checkpoints' / latest}, is unchanged"
            raise NonFiniteLossError(
                f"{self.in_a_row} steps in a row (up to step {step}) had a non-finite loss or gradient{where}. "
                "Lower the learning rates, set optim.grad_clip, or check the data; "
                "train.max_nonfinite_steps sets how many are tolerated"
            )
