"""Objective interface: student/teacher patch tokens + tracks -> loss and metrics."""

from __future__ import annotations

from abc import ABC, abstractmethod
import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from ..registry import Registry
from ..trackers.base import Tracks
from ..data.transforms import ViewTransform


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
        student_frames: the clip frames that ``student_tokens`` holds, in order.
        views: for objectives with ``student_view = True``, the random crop/flip Phi
            of each clip (one :class:`mosic.data.transforms.ViewTransform` per clip) ...
        student_view_tokens: ... and the student's (B, h, w, D) tokens of Phi(frame 0)
            (no masking), with grad.
    """

    student_tokens: torch.Tensor
    teacher_tokens: torch.Tensor
    tracks: Tracks
    patch_size: int
    student_token_mask: torch.Tensor | None = None
    student_frames: tuple[int, ...] = (0,)
    views: list[ViewTransform] | None = None
    student_view_tokens: torch.Tensor | None = None

    def student_frame(self, t: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The student's (B, h, w, D) tokens of clip frame ``t`` and their (B, h, w) drop mask (or None)."""
        if t not in self.student_frames:
            raise KeyError(
                f"the student did not run on frame {t} (it ran on {self.student_frames}); "
                "list the frame in the objective's student_frames"
            )
        i = self.student_frames.index(t)
        mask = None if self.student_token_mask is None else self.student_token_mask[:, i]
        return self.student_tokens[:, i], mask

    def replace(self, **changes) -> "ObjectiveInputs":
        """A copy with some fields changed (e.g. other tracks)."""
        return dataclasses.replace(self, **changes)


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
    #: False: the objective never reads the tracks, so the trainer runs no tracker and
    #: passes static tracks (the query grid, visible everywhere)
    uses_tracks: bool = True
    #: True: the student also runs on a random crop/flip Phi of frame 0 (see ``sample_views``)
    student_view: bool = False

    @abstractmethod
    def forward(self, inputs: ObjectiveInputs, teacher: "Objective") -> ObjectiveOutput: ...

    def sample_views(self, seeds: Sequence[int], height: int, width: int) -> list[ViewTransform] | None:
        """The Phi of each clip, drawn from its sample seed (exact resume), when
        ``student_view`` is True; see :func:`mosic.data.transforms.random_resized_crop`."""
        return None

    def after_optimizer_step(self) -> None:
        """Hook run on the student and the teacher after each update (e.g. re-normalise prototypes)."""


OBJECTIVES: Registry[Objective] = Registry("objective", "mosic.objectives")
register_objective = OBJECTIVES.register
