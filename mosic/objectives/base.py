"""Objective interface: student/teacher patch tokens + tracks -> loss and metrics."""

from __future__ import annotations

from abc import ABC, abstractmethod
import dataclasses
import numbers
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from ..checks import positive_int
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

    Construction checks that the shapes agree (B and T between the tokens and the tracks,
    h, w, D between student and teacher, the mask, the frames) and raises ValueError naming
    the field; only shapes and dtypes are read, so it never synchronises with a GPU.
    """

    student_tokens: torch.Tensor
    teacher_tokens: torch.Tensor
    tracks: Tracks
    patch_size: int
    student_token_mask: torch.Tensor | None = None
    student_frames: tuple[int, ...] = (0,)
    views: list[ViewTransform] | None = None
    student_view_tokens: torch.Tensor | None = None

    def __post_init__(self) -> None:
        _check_inputs(self)

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


def _describe(x: object) -> str:
    return f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__


def _check_inputs(inputs: ObjectiveInputs) -> None:
    """Shapes, dtypes and batch/frame counts agree (cheap: no values are read, no host syncs)."""
    where = "ObjectiveInputs"
    teacher, student, tracks = inputs.teacher_tokens, inputs.student_tokens, inputs.tracks
    if not isinstance(teacher, torch.Tensor) or teacher.ndim != 5 or not teacher.is_floating_point():
        raise ValueError(f"{where}: teacher_tokens must be (B, T, h, w, D) float, got {_describe(teacher)}")
    b, t, h, w, d = teacher.shape
    if not isinstance(student, torch.Tensor) or student.ndim != 5 or not student.is_floating_point():
        raise ValueError(f"{where}: student_tokens must be (B, S, h, w, D) float, got {_describe(student)}")
    if student.shape[0] != b or tuple(student.shape[2:]) != (h, w, d):
        raise ValueError(
            f"{where}: student_tokens must be (B, S, h, w, D) = ({b}, S, {h}, {w}, {d}) like teacher_tokens "
            f"{tuple(teacher.shape)}, got {tuple(student.shape)}"
        )
    if not isinstance(tracks, Tracks):
        raise TypeError(f"{where}: tracks must be mosic.Tracks (xy (B, T, N, 2), visible (B, T, N)), got {type(tracks).__name__}")
    if tuple(tracks.xy.shape[:2]) != (b, t) or not tracks.xy.is_floating_point():
        raise ValueError(
            f"{where}: tracks.xy must be (B, T, N, 2) = ({b}, {t}, N, 2) float pixels, B and T as in teacher_tokens "
            f"{tuple(teacher.shape)}, got {_describe(tracks.xy)}"
        )
    size = inputs.patch_size
    positive_int(size, f"{where}: patch_size", what="an int > 0 (pixels per patch side)")
    frames = inputs.student_frames
    if not isinstance(frames, (tuple, list)) or not all(isinstance(f, numbers.Integral) and 0 <= f < t for f in frames):
        raise ValueError(f"{where}: student_frames must be a tuple of clip frame indices in [0, T={t}), got {frames!r}")
    if student.shape[1] < len(frames):
        raise ValueError(
            f"{where}: student_tokens holds {student.shape[1]} frames but student_frames lists {len(frames)} ({frames})"
        )
    mask = inputs.student_token_mask
    if mask is not None and (
        not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != tuple(student.shape[:4])
    ):
        raise ValueError(
            f"{where}: student_token_mask must be None or (B, S, h, w) = {tuple(student.shape[:4])} bool, got {_describe(mask)}"
        )
    if inputs.views is not None and len(inputs.views) != b:
        raise ValueError(f"{where}: views must be None or one ViewTransform per clip (B={b}), got {len(inputs.views)}")
    view = inputs.student_view_tokens
    if view is not None and (
        not isinstance(view, torch.Tensor) or view.ndim != 4 or view.shape[0] != b or view.shape[-1] != d
        or not view.is_floating_point()
    ):
        raise ValueError(f"{where}: student_view_tokens must be None or (B={b}, h', w', D={d}) float, got {_describe(view)}")


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
    #: the registry name: ``OBJECTIVES.create(name)`` stamps it (the canonical name, also when
    #: created through an alias); a subclass sets the class default for direct construction
    name: str = "objective"

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
