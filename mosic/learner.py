"""A backbone plus an objective's head(s): the student, or its EMA copy, the teacher."""

from __future__ import annotations

import torch
from torch import nn

from .backbones.base import Backbone
from .device import to_device
from .objectives.base import Objective, ObjectiveInputs, ObjectiveOutput
from .tracks import Tracks
from .data.transforms import ViewTransform


class Learner(nn.Module):
    """``backbone`` and ``objective``; :meth:`forward` is the student's half of a step."""

    def __init__(self, backbone: Backbone, objective: Objective):
        super().__init__()
        self.backbone = backbone
        self.objective = objective

    def tokens(self, images: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, F, 3, H, W) normalised frames -> (B, F, h, w, D) patch tokens.

        ``token_mask`` is (B, F, h, w) bool (True = drop), on any device (the trainer
        keeps it on the CPU so the backbone's token count check needs no GPU sync).
        """
        b, f = images.shape[:2]
        if f == 0:  # objectives with student_frames = () (e.g. view-only): no backbone call
            p = self.backbone.patch_size
            shape = (b, 0, images.shape[-2] // p, images.shape[-1] // p, self.backbone.embed_dim)
            return images.new_zeros(shape)
        mask = None if token_mask is None else token_mask.flatten(0, 1)
        tokens = self.backbone(images.flatten(0, 1), mask)  # __call__: in-place torch.compile applies
        return tokens.unflatten(0, (b, f))

    def student_tokens(
        self, images: torch.Tensor, token_mask: torch.Tensor | None, view_images: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The student's backbone half: (B, S, h, w, D) tokens of ``images`` (B, S, 3, H, W)
        and, when given, (B, h, w, D) tokens of ``view_images`` (B, 3, H, W)."""
        view_tokens = None if view_images is None else self.backbone(view_images)
        return self.tokens(images, token_mask), view_tokens

    def score(
        self,
        student_tokens: torch.Tensor,
        view_tokens: torch.Tensor | None,
        token_mask: torch.Tensor | None,
        teacher_tokens: torch.Tensor,
        tracks: Tracks,
        teacher_objective: Objective,
        student_frames: tuple[int, ...] = (0,),
        views: list[ViewTransform] | None = None,
    ) -> ObjectiveOutput:
        """The objective's half: student and teacher tokens + tracks -> loss and metrics."""
        if token_mask is not None:
            token_mask = to_device(token_mask, student_tokens.device)
        inputs = ObjectiveInputs(
            student_tokens=student_tokens,
            teacher_tokens=teacher_tokens,
            tracks=tracks,
            patch_size=self.backbone.patch_size,
            student_token_mask=token_mask,
            student_frames=tuple(student_frames),
            views=views,
            student_view_tokens=view_tokens,
        )
        return self.objective(inputs, teacher=teacher_objective)

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
        tokens, view_tokens = self.student_tokens(student_images, token_mask, view_images)
        return self.score(
            tokens, view_tokens, token_mask, teacher_tokens, tracks, teacher_objective, student_frames, views
        )
