"""What one training step feeds the student, the teacher and the objective."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch

from ..config import ConfigError
from ..data.clips import ClipMeta
from ..data.transforms import ViewTransform
from ..tracks import Tracks


@dataclass(frozen=True)
class StepInputs:
    """One step's batch of B clips, ready for the networks.

    Attributes:
        images: (B, T, 3, H, W) normalised frames; the teacher reads all T.
        tracks: the clips' tracks, (x, y) pixels of ``images``.
        student_frames: the clip frames the student runs on (MoSiC: ``(0,)``).
        student_images: (B, S, 3, H, W) = ``images[:, student_frames]``.
        token_mask: (B, S, h, w) bool on the CPU, True = drop the patch token; or None.
        views: one view transform per clip when the objective asks for a student view.
        view_images: (B, 3, H, W), the views applied to frame 0; None without views.
    """

    images: torch.Tensor
    tracks: Tracks
    student_frames: tuple[int, ...]
    student_images: torch.Tensor
    token_mask: torch.Tensor | None = None
    views: list[ViewTransform] | None = None
    view_images: torch.Tensor | None = None

    def micro_batch(self, chunk: slice) -> "StepInputs":
        """The student's inputs of the clips ``chunk`` (images, mask, views); the tracks and
        the teacher's frames stay whole (the objective scores the whole batch)."""
        return replace(
            self,
            student_images=self.student_images[chunk],
            token_mask=None if self.token_mask is None else self.token_mask[chunk],
            view_images=None if self.view_images is None else self.view_images[chunk],
        )


def token_masks(metas: Sequence[ClipMeta], frames: int, h: int, w: int, ratio: float) -> torch.Tensor | None:
    """(B, S, h, w) bool, True = drop; one random mask per clip from its sample seed,
    shared by its S student frames (the paper masks all frames alike). None at ratio 0."""
    count = int(round(ratio * h * w))
    if count == 0:
        return None
    masks = torch.zeros(len(metas), h * w, dtype=torch.bool)
    for i, meta in enumerate(metas):
        generator = torch.Generator().manual_seed(meta.sample_seed ^ 0x5EED)
        masks[i, torch.randperm(h * w, generator=generator)[:count]] = True
    return masks.view(len(metas), 1, h, w).expand(-1, frames, -1, -1)


def micro_batches(batch: int, k: int) -> list[slice]:
    """``k`` contiguous slices of a batch of ``batch`` clips (sizes differ by at most one)."""
    if k > batch:
        raise ConfigError(f"train.accumulation_steps={k} exceeds the {batch} clips each process gets per step")
    bounds = [round(i * batch / k) for i in range(k + 1)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
