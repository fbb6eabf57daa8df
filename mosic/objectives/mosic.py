"""The MoSiC objective: Sinkhorn clusters of the teacher, read along point tracks.

For every query point i and frame t where the point is visible, the target is the
teacher's Sinkhorn cluster of the feature at the point's tracked position in frame t
(``target="tracked"``, the default: the position the authors' code indexes the teacher's
assignment at), or the teacher's frame-0 cluster carried unchanged along the track
(``target="propagated"``, the paper's eq. 8 taken literally). ``target="still"`` is the no-motion baseline
(registered as ``mosic-still``, MoSiC's loss on a still clip; ``static`` is an alias): every track is held at its query point and counted visible
in every frame, so the target in frame t is the teacher's cluster at the query's pixel
in frame t, whatever moved there; the tracker's output is never read. The prediction is
the student's frame-0 score distribution at the query point (temperature 0.1); the loss
is the cross-entropy, averaged over the visible (point, frame) entries of the global batch.

The teacher's features at the (fractional) track positions are read bilinearly between
patch centres by default (``teacher_read="bilinear"``, the paper's section 3);
``teacher_read="nearest"`` reads the patch of the nearest pixel, which equals the authors'
``--teacher_feature_upsampling nearest`` of ``train.sh`` (nearest upsampling to the image,
then indexing the rounded position, with x and y the right way round; tested in
``tests/objectives/test_mosic.py``). The student's frame-0 read is always nearest.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F

from .. import distributed as dist
from ..checks import positive_float, positive_int
from ..points import sample_at_points
from ..sinkhorn import sinkhorn
from ..tracks import Tracks
from .base import OBJECTIVES, Objective, ObjectiveInputs, ObjectiveOutput, register_objective
from .catalog import CARDS
from .head import ProjectionHead, Prototypes


@register_objective("mosic", target="tracked", card=CARDS["mosic"])
@register_objective("mosic-propagated", target="propagated", card=CARDS["mosic-propagated"])
@register_objective("mosic-still", aliases=("static",), target="still", card=CARDS["mosic-still"])
class MoSiCObjective(Objective):
    """Motion-based Sinkhorn clustering.

    Args:
        embed_dim: backbone feature dimension D.
        num_prototypes: K (100 in the paper).
        projection_dim: head output and prototype dimension (256).
        head_hidden_dims: hidden widths of the projection MLP ((2048, 2048) in the paper).
        temperature: softmax temperature of the student scores (0.1).
        sinkhorn_epsilon: Sinkhorn-Knopp entropic regularisation (0.05).
        sinkhorn_iterations: Sinkhorn-Knopp iterations (10).
        loss_points: "visible" (paper) uses the entries where the point is visible;
            "all" also uses occluded ones (the paper's Table 6f ablation).
        mean_over_all: divide by the number of all entries instead of the used ones
            (the authors' code: visibility-weighted sum over every point).
        target: "tracked", "propagated" or "still" (see the module docstring).
        teacher_read: how the teacher's features are read at track positions:
            "bilinear" (the paper) or "nearest" (the authors' train.sh).
        head_init: "trunc_normal" (mosic: weights trunc_normal(std=0.02), zero biases)
            or "pytorch" (nn.Linear's default init, the authors' code).
    """

    student_frames = (0,)
    name = "mosic"

    def __init__(
        self,
        embed_dim: int,
        num_prototypes: int = 100,
        projection_dim: int = 256,
        head_hidden_dims: Sequence[int] = (2048, 2048),
        temperature: float = 0.1,
        sinkhorn_epsilon: float = 0.05,
        sinkhorn_iterations: int = 10,
        loss_points: Literal["visible", "all"] = "visible",
        mean_over_all: bool = False,
        target: Literal["tracked", "propagated", "still"] = "tracked",
        teacher_read: Literal["bilinear", "nearest"] = "bilinear",
        head_init: Literal["trunc_normal", "pytorch"] = "trunc_normal",
    ):
        super().__init__()
        if loss_points not in ("visible", "all"):
            raise ValueError(f"loss_points must be 'visible' or 'all', got {loss_points!r}")
        if target not in ("tracked", "propagated", "still"):
            raise ValueError(f"target must be 'tracked', 'propagated' or 'still', got {target!r}")
        if teacher_read not in ("bilinear", "nearest"):
            raise ValueError(f"teacher_read must be 'bilinear' or 'nearest', got {teacher_read!r}")
        positive_float(temperature, "temperature")
        positive_float(sinkhorn_epsilon, "sinkhorn_epsilon")
        positive_int(sinkhorn_iterations, "sinkhorn_iterations")
        self.head = ProjectionHead(embed_dim, head_hidden_dims, projection_dim, init=head_init)
        self.prototypes = Prototypes(num_prototypes, projection_dim)
        self.temperature = temperature
        self.sinkhorn_epsilon = sinkhorn_epsilon
        self.sinkhorn_iterations = sinkhorn_iterations
        self.loss_points = loss_points
        self.mean_over_all = mean_over_all
        self.target = target
        self.teacher_read = teacher_read
        #: "still" never reads the tracker's output: the trainer then runs no tracker
        self.uses_tracks = target != "still"
        self.name = OBJECTIVES.name_for(type(self), target=target) or self.name

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """(..., D) backbone features -> (..., K) cosine scores against the prototypes."""
        return self.prototypes(self.head(features))

    def after_optimizer_step(self) -> None:
        self.prototypes.normalize_()

    def teacher_targets(
        self, inputs: ObjectiveInputs, teacher: "MoSiCObjective", used: torch.Tensor
    ) -> torch.Tensor:
        """(B, T, N) int64 cluster targets from the teacher's Sinkhorn assignment at the
        positions of ``inputs.tracks`` (frame 0 only for "propagated")."""
        xy = inputs.tracks.xy
        b, t, n, _ = xy.shape
        with torch.no_grad():
            if self.target == "propagated":
                tokens, points, rows = inputs.teacher_tokens[:, 0], xy[:, 0], used[:, 0]
            else:
                tokens, points, rows = inputs.teacher_tokens.flatten(0, 1), xy.flatten(0, 1), used
            features = sample_at_points(tokens, points, inputs.patch_size, self.teacher_read)
            scores = teacher.scores(features)
            k = scores.shape[-1]
            assignment = sinkhorn(
                scores.reshape(-1, k), self.sinkhorn_epsilon, self.sinkhorn_iterations, rows.reshape(-1)
            )
            targets = assignment.argmax(dim=-1)
            if self.target == "propagated":
                return targets.view(b, 1, n).expand(b, t, n)
            return targets.view(b, t, n)

    def forward(self, inputs: ObjectiveInputs, teacher: "MoSiCObjective") -> ObjectiveOutput:
        if self.target == "still":
            inputs = inputs.replace(tracks=Tracks.still(inputs.tracks.xy[:, 0], inputs.tracks.xy.shape[1]))
        tracks = inputs.tracks
        b, t, n, _ = tracks.xy.shape
        student_tokens, student_mask = inputs.student_frame(0)
        source = tracks.visible[:, :1]  # (B, 1, N): the query is on frame 0
        if student_mask is not None:  # no prediction from dropped tokens
            dropped = sample_at_points(student_mask[..., None].float(), tracks.xy[:, 0], inputs.patch_size, "nearest")
            source = source & (dropped[..., 0] < 0.5).unsqueeze(1)
        used = source & tracks.visible if self.loss_points == "visible" else source.expand(b, t, n)

        targets = self.teacher_targets(inputs, teacher, used)

        student_features = sample_at_points(student_tokens, tracks.xy[:, 0], inputs.patch_size, "nearest")
        logits = self.scores(student_features).float() / self.temperature  # (B, N, K)
        log_probs = F.log_softmax(logits, dim=-1)
        nll = -torch.gather(log_probs.unsqueeze(1).expand(b, t, n, -1), 3, targets.unsqueeze(-1)).squeeze(-1)

        weights = used.float()
        loss_sum = (nll * weights).sum()
        count = weights.sum() if not self.mean_over_all else source.expand(b, t, n).float().sum()
        global_count = dist.all_reduce_sum(count.detach()).clamp_min(1.0)
        loss = loss_sum / global_count * dist.world_size()

        with torch.no_grad():
            agree = ((logits.argmax(-1).unsqueeze(1) == targets).float() * weights).sum()
            used_clusters = torch.zeros(logits.shape[-1], device=logits.device)
            used_clusters.index_add_(0, targets.flatten(), weights.flatten())  # no boolean indexing: no host sync
            stats = dist.all_reduce_sum(torch.stack([loss_sum.detach(), agree, weights.sum(), agree.new_tensor(weights.numel())]))
            used_clusters = dist.all_reduce_sum(used_clusters)
            metrics = {
                "loss": stats[0] / global_count,
                "agreement": stats[1] / stats[2].clamp_min(1.0),
                "visible_fraction": stats[2] / stats[3],
                "clusters_used": (used_clusters > 0).float().sum(),
            }
        return ObjectiveOutput(loss=loss, metrics=metrics)

