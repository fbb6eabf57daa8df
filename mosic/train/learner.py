"""A backbone plus an objective's head(s): the student, or its EMA copy, the teacher."""

from __future__ import annotations

import torch
from torch import nn

from ..backbones.base import Backbone
from ..device import to_device
from ..objectives.base import Objective, ObjectiveInputs, ObjectiveOutput
from .inputs import StepInputs


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

    def student_tokens(self, inputs: StepInputs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The student's backbone half: (B, S, h, w, D) tokens of ``inputs.student_images``
        and, with a view, (B, h, w, D) tokens of ``inputs.view_images``."""
        view_tokens = None if inputs.view_images is None else self.backbone(inputs.view_images)
        return self.tokens(inputs.student_images, inputs.token_mask), view_tokens

    def score(
        self,
        student_tokens: torch.Tensor,
        view_tokens: torch.Tensor | None,
        inputs: StepInputs,
        teacher_tokens: torch.Tensor,
        teacher: Objective,
    ) -> ObjectiveOutput:
        """The objective's half: student and teacher tokens + tracks -> loss and metrics."""
        token_mask = inputs.token_mask
        if token_mask is not None:
            token_mask = to_device(token_mask, student_tokens.device)
        objective_inputs = ObjectiveInputs(
            student_tokens=student_tokens,
            teacher_tokens=teacher_tokens,
            tracks=inputs.tracks,
            patch_size=self.backbone.patch_size,
            student_token_mask=token_mask,
            student_frames=inputs.student_frames,
            views=inputs.views,
            student_view_tokens=view_tokens,
        )
        return self.objective(objective_inputs, teacher=teacher)

    def forward(self, inputs: StepInputs, teacher_tokens: torch.Tensor, teacher: Objective) -> ObjectiveOutput:
        """Run the student on ``inputs`` (its frames, and its view when the objective asks for
        one), then score the objective against ``teacher_tokens`` (B, T, h, w, D) and the
        ``teacher`` objective (its prototypes)."""
        tokens, view_tokens = self.student_tokens(inputs)
        return self.score(tokens, view_tokens, inputs, teacher_tokens, teacher)
