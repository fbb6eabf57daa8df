"""A backbone plus an objective's head(s): the student, or its EMA copy, the teacher."""

from __future__ import annotations

import torch
from torch import nn

from .backbones.base import Backbone
from .objectives.base import Objective, ObjectiveInputs, ObjectiveOutput
from .trackers.base import Tracks
from .data.transforms import ViewTransform


class Learner(nn.Module):
    """``backbone`` and ``objective``; :meth:`forward` is the student's half of a step."""

    def __init__(self, backbone: Backbone, objective: Objective):
        super().__init__()
        self.backbone = backbone
        self.objective = objective

    def tokens(self, images: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, F, 3, H, W) normalised frames -> (B, F, h, w, D) patch tokens."""
        b, f = images.shape[:2]
        if f == 0:  # objectives with student_frames = () (e.g. view-only): no backbone call
            p = self.backbone.patch_size
            shape = (b, 0, images.shape[-2] // p, images.shape[-1] // p, self.backbone.embed_dim)
            return images.new_zeros(shape)
        mask = None if token_mask is None else token_mask.flatten(0, 1)
        tokens = self.backbone.patch_tokens(images.flatten(0, 1), mask)
        return tokens.unflatten(0, (b, f))

    def forward(
        self,
        student_images: torch.Tensor,
        token_mask: torch.Tensor | None,
        teacher_tokens: torch.Tensor,
        tracks: Tracks,
        teacher_objective: Objective,
        student_frames: tuple[int, ...] = (0,),
        view_images: torch.Tensor | None = None,
        views: list[ViewTransform] | None = None,
    ) -> ObjectiveOutput:
        """Run the student on ``student_images`` (B, S, 3, H, W), the clip frames
        ``student_frames``, and on ``view_images`` (B, 3, H, W) = Phi(frame 0) when the
        objective asks for a view; then score the objective."""
        view_tokens = None
        if view_images is not None:
            view_tokens = self.backbone.patch_tokens(view_images)
        inputs = ObjectiveInputs(
            student_tokens=self.tokens(student_images, token_mask),
            teacher_tokens=teacher_tokens,
            tracks=tracks,
            patch_size=self.backbone.patch_size,
            student_token_mask=token_mask,
            student_frames=tuple(student_frames),
            views=views,
            student_view_tokens=view_tokens,
        )
        return self.objective(inputs, teacher=teacher_objective)
