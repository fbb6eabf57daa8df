"""Objective interface: student/teacher patch tokens + tracks -> loss and metrics."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import nn

from ..registry import Registry
from ..trackers.base import Tracks


@dataclass
class ObjectiveInputs:
    """What the training step hands an objective.

    Attributes:
        student_tokens: (B, S, h, w, D) student patch tokens of the frames listed in
            ``Objective.student_frames`` (S of them), with grad.
        teacher_tokens: (B, T, h, w, D) teacher patch tokens of every frame, no grad.
        tracks: point tracks in the pixels of the clip the tokens came from
            (xy (B, T, N, 2), visible (B, T, N)); a point takes part only where it is
            visible on frame 0 (its query frame).
        patch_size: pixels per patch side.
        student_token_mask: optional (B, S, h, w) bool, True where the student's token
            was dropped (masking); points on dropped tokens give no student prediction.
    """

    student_tokens: torch.Tensor
    teacher_tokens: torch.Tensor
    tracks: Tracks
    patch_size: int
    student_token_mask: torch.Tensor | None = None


@dataclass
class ObjectiveOutput:
    """``loss`` is what to backpropagate (scaled so that DDP's gradient averaging gives
    the gradient of the global-batch loss); ``metrics`` are detached scalar tensors that
    already hold global values (``metrics["loss"]`` is the global-batch loss)."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class Objective(nn.Module, ABC):
    """A training objective that owns its learnable head(s).

    The trainer keeps an EMA copy of the objective next to the EMA teacher backbone
    and passes it as ``teacher``; gradients must reach only ``self`` (the student).
    """

    #: frames the student backbone must run on; the trainer runs it on nothing else
    student_frames: tuple[int, ...] = (0,)

    @abstractmethod
    def forward(self, inputs: ObjectiveInputs, teacher: "Objective") -> ObjectiveOutput: ...

    def after_optimizer_step(self) -> None:
        """Hook run on the student and the teacher after each update (e.g. re-normalise prototypes)."""


OBJECTIVES: Registry[Objective] = Registry("objective", "mosic.objectives")
register_objective = OBJECTIVES.register
