"""Self-supervised dense correspondence: the short- and long-term losses of mask-embedding VOS.

The paper (mask-embedding correspondence for VOS, section 3.2, eqs. 11-15) trains one
encoder E with two contrastive matching terms, each made non-trivial by
transformation equivariance, ``E(Phi(I)) = Phi(E(I))`` for a random crop/resize/flip Phi:

* short-term appearance consistency (eq. 12), adjacent frames t, t+1: the pixel
  features of ``X'_t = E(Phi(I_t))`` must match those of ``X_{t+1} = Phi(E(I_{t+1}))``
  position by position, against every other position of the view;
* long-term semantic dependency (eqs. 14-15), distant frames (``|t - t'| >= 5``): each
  pixel of one frame must match its most similar pixel ``o_k`` of the other one,
  where ``o_k`` is found on the equivariant (transformed) features.

In mosic the gradient flows only through the student; the teacher (the EMA copy of
backbone and objective, passed as ``teacher``) supplies targets without grad. The
mapping used here (frame 0 plays the paper's t):

* Phi: one random crop-resize-flip per clip (:meth:`CorrespondenceObjective.sample_views`,
  drawn from the clip's sample seed); the trainer runs the student on
  ``apply_views(frame 0, Phi)`` only (``student_frames = ()``, ``student_view = True``).
* Student prediction ``X'_0 = E_student(Phi(I_0))``: ``inputs.student_view_tokens``
  through the student's projection head (L2-normalised).
* Short-term (eq. 12), frames 0 and 1: target ``X_1 = Phi(E_teacher(I_1))`` =
  ``warp_tokens(teacher frame 1, Phi)`` through the teacher's head. For each view patch
  k the logits are ``<x_1^k, x'_0^l> / temperature`` over the view patches l of the
  same clip, and the positive is l = k.
* Long-term (eqs. 14-15), frames 0 and t' = T - 1 (used when ``T - 1 >= long_term_gap``;
  the gap counts clip frames, i.e. ``frame_stride`` source frames each): the pseudo
  label of view patch k is ``o_k = argmax_o <Phi(E_teacher(I_0))^k, E_teacher(I_t')^o>``
  (the teacher's equivariant frame-0 feature matched into frame t'); the prediction
  is ``<x'_0^k, E_teacher(I_t')^l> / temperature`` over the h*w positions l of frame
  t' (teacher features through the teacher's head), trained with cross-entropy
  towards ``o_k``. The paper finds ``o_k`` with ``E(Phi(.))`` and predicts with
  ``Phi(E(.))``; here the two roles are swapped so that the label comes from the
  teacher and the gradient goes through the student's view; under equivariance both
  are the same feature.

The paper's inner products are plain cosine similarities (``temperature=1`` is the
literal equation). Cosines lie in [-1, 1], so at temperature 1 the softmax over a few
hundred positions stays almost uniform (the best probability of the positive among
256 patches is under 3%): the default 0.1 is the MoSiC objective's temperature (the
config field is shared) and in the range of contrastive correspondence learners.

Loss: ``short_weight * L_short + long_weight * L_long``, each term the mean
cross-entropy over the view patches of the global batch. The defaults 0.1 and 0.5 are
the paper's lambda1, lambda2 of eq. 16 (where the segmentation loss has weight 1), so
the objective is the paper's correspondence part as trained; AdamW is invariant to a
global loss scale, so alone only their 1:5 ratio matters, and composed with a
weight-1 objective (e.g. MoSiC's) it reproduces eq. 16.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .. import distributed as dist
from ..checks import is_int, positive_int
from ..data.transforms import ViewTransform, random_resized_crop, warp_tokens
from .base import Objective, ObjectiveInputs, ObjectiveOutput, register_objective
from .catalog import CARDS
from .head import ProjectionHead

#: mixed with each clip's sample seed, so Phi is independent of the clip's crop and mask
_VIEW_SALT = 0xC0AA


@register_objective("correspondence", card=CARDS["correspondence"])
class CorrespondenceObjective(Objective):
    """Short-term (eq. 12) and long-term (eq. 15) equivariant correspondence losses.

    Args:
        embed_dim: backbone feature dimension D.
        projection_dim: output dimension of the projection head (256).
        head_hidden_dims: hidden widths of the projection MLP ((2048, 2048)).
        temperature: softmax temperature of the cosine affinities (0.1; 1 is the
            paper's equations taken literally, see the module docstring).
        short_weight: lambda1 of the paper's eq. 16 (0.1).
        long_weight: lambda2 of the paper's eq. 16 (0.5). Either weight may be 0 (the
            paper's Table 4a single-term ablations), not both.
        long_term_gap: least clip-frame distance of the long-term pair (5 in the paper);
            clips with fewer than ``long_term_gap + 1`` frames get no long-term term.
        view_scale: area interval of the random crop Phi.
        view_flip_probability: probability that Phi also flips left-right.
    """

    name = "correspondence"
    student_frames: tuple[int, ...] = ()
    uses_tracks = False
    student_view = True

    def __init__(
        self,
        embed_dim: int,
        projection_dim: int = 256,
        head_hidden_dims: Sequence[int] = (2048, 2048),
        temperature: float = 0.1,
        short_weight: float = 0.1,
        long_weight: float = 0.5,
        long_term_gap: int = 5,
        view_scale: Sequence[float] = (0.5, 1.0),
        view_flip_probability: float = 0.5,
    ):
        super().__init__()
        for name, value in (("embed_dim", embed_dim), ("projection_dim", projection_dim), ("long_term_gap", long_term_gap)):
            positive_int(value, name, what="a positive integer")
        hidden = tuple(head_hidden_dims)
        if not all(is_int(v) and v >= 1 for v in hidden):
            raise ValueError(f"head_hidden_dims must be positive integers, got {head_hidden_dims!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        for name, value in (("short_weight", short_weight), ("long_weight", long_weight)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if short_weight == 0 and long_weight == 0:
            raise ValueError("short_weight and long_weight are both 0: the objective would have no loss")
        scale = tuple(float(s) for s in view_scale)
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"view_scale must be (low, high) with 0 < low <= high <= 1, got {view_scale!r}")
        if not 0 <= view_flip_probability <= 1:
            raise ValueError(f"view_flip_probability must be in [0, 1], got {view_flip_probability!r}")
        self.head = ProjectionHead(embed_dim, hidden, projection_dim)
        self.temperature = float(temperature)
        self.short_weight = float(short_weight)
        self.long_weight = float(long_weight)
        self.long_term_gap = int(long_term_gap)
        self.view_scale = scale
        self.view_flip_probability = float(view_flip_probability)
        self._warned_short_clip = False

    def sample_views(self, seeds: Sequence[int], height: int, width: int) -> list[ViewTransform]:
        return [
            random_resized_crop(
                np.random.default_rng([int(seed), _VIEW_SALT]),
                height,
                width,
                (height, width),
                scale=self.view_scale,
                flip_probability=self.view_flip_probability,
            )
            for seed in seeds
        ]

    def long_term_frame(self, num_frames: int) -> int | None:
        """The clip frame t' paired with frame 0 for the long-term term (the last one),
        or None when the clip is shorter than ``long_term_gap + 1`` frames."""
        t = num_frames - 1
        return t if t >= self.long_term_gap else None

    def forward(self, inputs: ObjectiveInputs, teacher: "CorrespondenceObjective") -> ObjectiveOutput:
        views, student_tokens = inputs.views, inputs.student_view_tokens
        if views is None or student_tokens is None:
            raise ValueError(
                "the correspondence objective needs inputs.views and inputs.student_view_tokens "
                "(the student's tokens of Phi(frame 0)); the trainer provides them when "
                "objective.student_view is True"
            )
        teacher_tokens = inputs.teacher_tokens
        if teacher_tokens.ndim != 5:
            raise ValueError(f"teacher_tokens must be (B, T, h, w, D), got {tuple(teacher_tokens.shape)}")
        b, t = teacher_tokens.shape[:2]
        if t < 2:
            raise ValueError(f"the correspondence objective needs clips of at least 2 frames, got T={t}")
        if len(views) != b or student_tokens.ndim != 4 or student_tokens.shape[0] != b:
            raise ValueError(
                f"expected {b} views and (B={b}, h, w, D) student view tokens, got {len(views)} views "
                f"and {tuple(student_tokens.shape)}"
            )
        long_frame = self.long_term_frame(t)
        if long_frame is None and self.long_weight > 0 and not self._warned_short_clip:
            warnings.warn(
                f"clips of {t} frames have no frame pair {self.long_term_gap} apart (long_term_gap): "
                "the long-term correspondence term is skipped (reported as 0)",
                stacklevel=2,
            )
            self._warned_short_clip = True
        patch_size = inputs.patch_size

        with torch.no_grad():
            # warped in fp32: warp_tokens samples at grid coordinates in the tokens' dtype
            target_short = teacher.head(warp_tokens(teacher_tokens[:, 1].float(), views, patch_size)).flatten(1, 2)
            if long_frame is not None:
                anchor = teacher.head(warp_tokens(teacher_tokens[:, 0].float(), views, patch_size)).flatten(1, 2)
                keys = teacher.head(teacher_tokens[:, long_frame]).flatten(1, 2)
        prediction = self.head(student_tokens).flatten(1, 2)  # (B, N, P), N view patches
        n = prediction.shape[1]
        if target_short.shape[1] != n:
            raise ValueError(
                f"the student view has {n} patches but the views' out_size gives {target_short.shape[1]}"
            )

        with torch.autocast(device_type=prediction.device.type, enabled=False):
            prediction = prediction.float()
            positives = torch.arange(n, device=prediction.device).expand(b, n)
            short_logits = torch.einsum("bkp,blp->bkl", target_short.float(), prediction) / self.temperature
            short_nll = F.cross_entropy(short_logits.flatten(0, 1), positives.flatten(), reduction="none")
            short_sum = short_nll.sum()
            if long_frame is not None:
                with torch.no_grad():
                    labels = torch.einsum("bkp,blp->bkl", anchor.float(), keys.float()).argmax(-1)  # o_k
                long_logits = torch.einsum("bkp,blp->bkl", prediction, keys.float()) / self.temperature
                long_nll = F.cross_entropy(long_logits.flatten(0, 1), labels.flatten(), reduction="none")
                long_sum = long_nll.sum()
            else:
                long_sum = prediction.new_zeros(())

            count = prediction.new_tensor(float(b * n))
            global_count = dist.all_reduce_sum(count).clamp_min(1.0)
            loss_sum = self.short_weight * short_sum + self.long_weight * long_sum
            loss = loss_sum / global_count * dist.world_size()

        with torch.no_grad():
            short_correct = (short_logits.argmax(-1) == positives).float().sum()
            if long_frame is not None:
                long_correct = (long_logits.argmax(-1) == labels).float().sum()
            else:
                long_correct = short_correct.new_zeros(())
            stats = dist.all_reduce_sum(
                torch.stack([short_sum.detach(), long_sum.detach(), short_correct, long_correct])
            ) / global_count
            metrics = {
                "loss": self.short_weight * stats[0] + self.long_weight * stats[1],
                "short_term": stats[0],
                "long_term": stats[1],
                "short_term_accuracy": stats[2],
                "long_term_accuracy": stats[3],
            }
        return ObjectiveOutput(loss=loss, metrics=metrics)
