"""Space-time k-means pseudo masks read out through cross-frame affinity.

The self-supervised mask-embedding objective of Li et al., "Unified Mask Embedding and
Correspondence Learning for Self-Supervised Video Segmentation" (section 3.1),
adapted to mosic's student / EMA-teacher pair. Every training step:

**Step 1, space-time clustering** (no grad, per clip). Every teacher token i of the
clip's T frames gets the vector

    x_i = [ normalize(f_i) ; position_weight * pe(t_i, y_i, x_i) ]          (D + P)

where f_i is the teacher backbone's raw patch feature and pe a 3D sinusoidal position
code (:func:`sinusoidal_position_encoding_3d`, normalised per axis, see below).
``batched_kmeans`` partitions the T*h*w vectors of each clip into M clusters (paper's
eq. 4; k-means++ seeding from a fixed-seed generator, ``kmeans_iterations`` Lloyd
steps). Clusters holding more than ``max_cluster_fraction`` of the clip's tokens
(typically background: sky, grass) are abandoned: their tokens get label -1 and take
no part. The result is a (B, T, h, w) map of pseudo labels l in {-1, 0, ..., M-1}.

**Step 2, mask-embedded prediction** (the paper's eqs. 6, 8 and 10). The student's
frame-0 tokens q query the teacher's tokens r of the reference frames (default every
frame 1..T-1, or the last ``num_reference_frames``), both through a projection head
(the student's ``self.head`` for q, the teacher objective's EMA head for r), each
output L2-normalised:

    A[q, r]    = softmax_r( <g_s(q), g_t(r)> / temperature )                   (eq. 6)
    Y_hat[q]   = sum_{r: l_r >= 0} A[q, r] onehot(l_r) / sum_{r: l_r >= 0} A[q, r]  (eq. 8)
    loss       = mean_q  -log max(Y_hat[q, l_q], eps)                          (eq. 10)

The renormalisation over the kept references makes Y_hat a distribution over the
M clusters (references with label -1 contribute nothing; a clip with no kept
reference gives Y_hat = 0 and is guarded). The mean runs over the frame-0 tokens q
that (a) have a kept label l_q >= 0, (b) were not dropped by the student's token mask
and (c) whose cluster has at least one kept token in the reference frames: without
(c) Y_hat[q, l_q] is 0 whatever A is, so the token would add the constant -log(eps)
and no gradient. The mean is over the global batch: ``loss = sum / all_reduce_sum(count)
* world_size()``, so DDP's gradient averaging gives the gradient of the global loss.

**What differs from the paper.**

* No frame-mask encoder V and no mask decoder D: the prediction is the warped coarse
  mask of eq. 8 itself (the paper's D refines it). The only learnable parts are the
  student backbone and ``self.head``, so the objective trains the backbone's
  correspondence, which is what post-pretraining is after.
* Pseudo masks are recomputed at every step from the EMA teacher's tokens of the very
  clip being trained on, instead of re-clustering the dataset every 10 epochs with the
  encoder being trained. The EMA teacher plays the role of the slowly changing encoder.
* The query is always frame 0 (the student runs on frame 0 only, as in MoSiC) and the
  references are teacher frames; the paper samples 3 frames and uses N=2 references.
* Clustering runs on token (patch) features, not pixels; the 40% rule counts tokens.
* Position code: the paper only says "3D sinusoidal position encoding". Here each axis
  (t, y, x) gets P/3 channels, sin/cos pairs at frequencies f_k = 10000^(-k/n)
  (k = 0..n-1, n = P/6, the usual transformer ladder), of the coordinate normalised to
  [0, 1] (t / (T-1), y / (h-1), x / (w-1)) times the scale pi. With the largest
  frequency 1 the angle never exceeds pi, so along each axis the code distance grows
  monotonically with the coordinate distance (no wrap-around: the two ends of an axis
  are the farthest apart). Each axis' code is then divided by the code distance
  between the two ends of the axis, so that with ``position_weight = 1`` crossing the
  whole clip along one axis costs a squared distance of 1, as much as two unit
  features 60 degrees apart, independently of P and of the token grid.

**Why the raw teacher features are clustered** (and not the teacher head's outputs):
the paper clusters the embedding of the encoder E it trains; here that is the
backbone, whose (pretrained) features are meaningful from the first step, whereas the
projection head starts random and is what the student is trained through; clustering
its outputs would feed the loss' own moving target back into the labels.

Shapes: teacher tokens (B, T, h, w, D); student tokens of frame 0 (B, h, w, D); pseudo
labels (B, T, h, w); affinity (B, h*w, N*h*w) for N reference frames.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from .. import distributed as dist
from .base import Objective, ObjectiveInputs, ObjectiveOutput, register_objective
from .catalog import CARDS
from .head import ProjectionHead

#: guard inside the log; Y_hat[q, l] is at least about exp(-2 / temperature) / R for
#: unit vectors, far above this for any sensible temperature, so it only catches 0
_LOG_EPS = 1e-30
#: frequency ladder of the position code (the transformer's 10000)
_POSITION_BASE = 10000.0


def sinusoidal_position_encoding_3d(
    t: int,
    h: int,
    w: int,
    dim: int,
    scale: float = math.pi,
    base: float = _POSITION_BASE,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(t, h, w, dim) sin/cos code of every (frame, row, column) of a t x h x w grid.

    The channels are split in three equal parts (time, rows, columns); each part holds
    n = dim / 6 (sin, cos) pairs ``sin(c * scale * f_k), cos(c * scale * f_k)`` with
    ``f_k = base ** (-k / n)``, k = 0..n-1, where c is the coordinate normalised to
    [0, 1] (``i / (size - 1)``; 0 on an axis of size 1). With ``scale = pi`` (default)
    the angles stay in [0, pi], so distinct positions get distinct codes and, along
    each axis, the code distance grows with the coordinate distance. Values are in
    [-1, 1]; the code is not normalised (see ``SpaceTimeKMeansObjective.position_codes``).

    Args:
        t, h, w: grid size (frames, token rows, token columns).
        dim: number of channels, a positive multiple of 6.
        scale: angle of coordinate 1 at the largest frequency.
        base: ratio spanned by the frequency ladder.
    """
    if dim <= 0 or dim % 6:
        raise ValueError(f"dim (position_dim) must be a positive multiple of 6, got {dim}")
    if min(t, h, w) < 1:
        raise ValueError(f"the grid must have t, h, w >= 1, got ({t}, {h}, {w})")
    n = dim // 6
    freqs = base ** (-torch.arange(n, dtype=torch.float32, device=device) / n)  # (n,)

    def axis(size: int) -> torch.Tensor:  # (size, 2n)
        coords = torch.arange(size, dtype=torch.float32, device=device) / max(size - 1, 1)
        angles = coords[:, None] * scale * freqs[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)

    ct, cy, cx = axis(t), axis(h), axis(w)
    return torch.cat(
        [
            ct[:, None, None, :].expand(t, h, w, 2 * n),
            cy[None, :, None, :].expand(t, h, w, 2 * n),
            cx[None, None, :, :].expand(t, h, w, 2 * n),
        ],
        dim=-1,
    )


def batched_kmeans(
    x: torch.Tensor,
    num_clusters: int,
    iterations: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means of every row-set of a batch at once: (B, N, D) -> (B, N) labels, (B, M, D) centres.

    k-means++ seeding (the first centre uniform, each next one drawn with probability
    proportional to the squared distance to the nearest chosen centre) from
    ``generator``, then exactly ``iterations`` Lloyd steps (assign each point to its
    nearest centre, move each centre to the mean of its points); a centre that loses
    all its points keeps its old position. Runs in fp32 whatever the autocast state.
    Ties go to the lowest cluster index.

    Why torch and not faiss: this runs inside every training step on the training
    device, on all clips of the batch at once as one batched tensor program, with no
    host round trip (no early-stopping test, no copy to numpy), so it costs a few
    batched matmuls per iteration and needs no CPU/GPU transfer or extra dependency.
    faiss, which clusters one big set on the host or in its own GPU memory, is what
    the evaluation code uses for its offline clusterings.

    Args:
        x: (B, N, D) points; each of the B sets is clustered independently.
        num_clusters: M, at most N.
        iterations: Lloyd steps (0: the k-means++ seeds' assignment).
        generator: a torch.Generator on ``x``'s device (None: the global RNG).
    Returns:
        (B, N) int64 cluster index of every point and (B, M, D) fp32 centres.
    """
    if x.ndim != 3:
        raise ValueError(f"x must be (B, N, D), got {tuple(x.shape)}")
    b, n, _ = x.shape
    if not 1 <= num_clusters <= n:
        raise ValueError(f"num_clusters must be in [1, N={n}], got {num_clusters}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.float()
        rows = torch.arange(b, device=x.device)
        sq_norms = (x * x).sum(-1)  # (B, N)

        def sq_dist_to(c: torch.Tensor) -> torch.Tensor:  # c (B, K, D) -> (B, N, K)
            d2 = sq_norms[:, :, None] - 2 * torch.bmm(x, c.transpose(1, 2)) + (c * c).sum(-1)[:, None, :]
            return d2.clamp_min(0.0)

        first = torch.randint(n, (b,), generator=generator, device=x.device)
        chosen = [x[rows, first]]  # each (B, D)
        nearest = sq_dist_to(chosen[0][:, None])[..., 0]  # (B, N)
        for _ in range(1, num_clusters):
            # all points on the chosen centres: draw uniformly (the duplicate then stays empty)
            weights = torch.where(nearest.sum(-1, keepdim=True) > 0, nearest, torch.ones_like(nearest))
            pick = torch.multinomial(weights, 1, generator=generator)[:, 0]
            chosen.append(x[rows, pick])
            nearest = torch.minimum(nearest, sq_dist_to(chosen[-1][:, None])[..., 0])
        centres = torch.stack(chosen, dim=1)  # (B, M, D)

        assign = sq_dist_to(centres).argmin(-1)
        for _ in range(iterations):
            onehot = F.one_hot(assign, num_clusters).to(x.dtype)  # (B, N, M)
            counts = onehot.sum(1)  # (B, M)
            sums = torch.bmm(onehot.transpose(1, 2), x)  # (B, M, D)
            centres = torch.where(counts[..., None] > 0, sums / counts.clamp_min(1.0)[..., None], centres)
            assign = sq_dist_to(centres).argmin(-1)
    return assign, centres


@register_objective("spacetime-kmeans", card=CARDS["spacetime-kmeans"])
class SpaceTimeKMeansObjective(Objective):
    """Space-time k-means pseudo masks of the teacher, predicted from the student's
    frame 0 through its affinity to the teacher's reference frames (module docstring).

    Args:
        embed_dim: backbone feature dimension D.
        num_clusters: M clusters per clip (paper: 5, their Table 4c).
        kmeans_iterations: Lloyd steps per step (paper: 100 EM steps).
        max_cluster_fraction: clusters with more than this fraction of the clip's tokens
            are abandoned (label -1; paper: 0.4). 1 keeps every cluster.
        position_weight: weight of the per-axis normalised position code next to the
            unit-norm features (0: features only).
        position_dim: channels P of the position code, a multiple of 6 (default: 48,
            or the largest multiple of 6 not above ``embed_dim`` when that is smaller, at least 6).
        temperature: softmax temperature of the affinity (0.1).
        projection_dim: output dimension of the projection head, as in MoSiCObjective.
        head_hidden_dims: hidden widths of the projection head, as in MoSiCObjective.
        num_reference_frames: None: every frame 1..T-1 is a reference; N: the last N.
        seed: seed of the k-means++ generator (the clustering is a deterministic
            function of the teacher tokens).
    """

    name = "spacetime-kmeans"
    student_frames = (0,)
    uses_tracks = False

    def __init__(
        self,
        embed_dim: int,
        num_clusters: int = 5,
        kmeans_iterations: int = 100,
        max_cluster_fraction: float = 0.4,
        position_weight: float = 1.0,
        position_dim: int | None = None,
        temperature: float = 0.1,
        projection_dim: int = 256,
        head_hidden_dims: Sequence[int] = (2048, 2048),
        num_reference_frames: int | None = None,
        seed: int = 0,
    ):
        super().__init__()
        if num_clusters < 2:
            raise ValueError(f"num_clusters must be >= 2, got {num_clusters}")
        if kmeans_iterations < 0:
            raise ValueError(f"kmeans_iterations must be >= 0, got {kmeans_iterations}")
        if not 0 < max_cluster_fraction <= 1:
            raise ValueError(f"max_cluster_fraction must be in (0, 1], got {max_cluster_fraction}")
        if position_weight < 0:
            raise ValueError(f"position_weight must be >= 0, got {position_weight}")
        if position_dim is None:
            position_dim = min(48, max(6, embed_dim // 6 * 6))
        if position_dim <= 0 or position_dim % 6:
            raise ValueError(f"position_dim must be a positive multiple of 6, got {position_dim}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if num_reference_frames is not None and num_reference_frames < 1:
            raise ValueError(f"num_reference_frames must be None or >= 1, got {num_reference_frames}")
        self.head = ProjectionHead(embed_dim, head_hidden_dims, projection_dim)
        self.num_clusters = num_clusters
        self.kmeans_iterations = kmeans_iterations
        self.max_cluster_fraction = max_cluster_fraction
        self.position_weight = position_weight
        self.position_dim = position_dim
        self.temperature = temperature
        self.num_reference_frames = num_reference_frames
        self.seed = seed

    # ---- step 1: pseudo labels ----------------------------------------------------------
    def position_codes(self, t: int, h: int, w: int, device: torch.device | str | None = None) -> torch.Tensor:
        """(t*h*w, P) position codes appended to the features: each axis' part of
        :func:`sinusoidal_position_encoding_3d` divided by the code distance between the
        axis' two ends, times ``position_weight``."""
        pe = sinusoidal_position_encoding_3d(t, h, w, self.position_dim, device=device)
        n = self.position_dim // 6
        freqs = _POSITION_BASE ** (-torch.arange(n, dtype=torch.float32, device=device) / n)
        end_to_end = (4 * torch.sin(math.pi * freqs / 2) ** 2).sum().sqrt()  # per axis
        return pe.reshape(t * h * w, self.position_dim) * (self.position_weight / end_to_end)

    @torch.no_grad()
    def pseudo_labels(self, teacher_tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, h, w, D) teacher tokens -> (B, T, h, w) int64 space-time cluster labels,
        -1 on the tokens of abandoned (over-size) clusters. The forward pass calls this
        (override or monkeypatch it to inject labels)."""
        b, t, h, w, d = teacher_tokens.shape
        n = t * h * w
        if n < self.num_clusters:
            raise ValueError(f"num_clusters={self.num_clusters} exceeds the clip's {n} tokens")
        device = teacher_tokens.device
        with torch.autocast(device_type=device.type, enabled=False):
            features = F.normalize(teacher_tokens.float().reshape(b, n, d), dim=-1)
            position = self.position_codes(t, h, w, device).expand(b, n, self.position_dim)
            points = torch.cat([features, position], dim=-1)
            generator = torch.Generator(device=device).manual_seed(self.seed)
            assign, _ = batched_kmeans(points, self.num_clusters, self.kmeans_iterations, generator)
            counts = F.one_hot(assign, self.num_clusters).sum(1)  # (B, M)
            too_big = counts > self.max_cluster_fraction * n
            labels = torch.where(too_big.gather(1, assign), torch.full_like(assign, -1), assign)
        return labels.view(b, t, h, w)

    # ---- step 2: the loss ---------------------------------------------------------------
    def reference_frames(self, num_frames: int) -> range:
        """The clip frames whose teacher tokens (and labels) the frame-0 query reads."""
        if num_frames < 2:
            raise ValueError(
                f"the spacetime-kmeans objective needs clips of T >= 2 frames (frame 0 queries "
                f"frames 1..T-1), got T={num_frames}"
            )
        n = self.num_reference_frames
        if n is None:
            return range(1, num_frames)
        if n > num_frames - 1:
            raise ValueError(
                f"num_reference_frames={n} needs clips of at least {n + 1} frames, got T={num_frames}"
            )
        return range(num_frames - n, num_frames)

    def forward(self, inputs: ObjectiveInputs, teacher: "SpaceTimeKMeansObjective") -> ObjectiveOutput:
        teacher_tokens = inputs.teacher_tokens
        b, t, h, w, _ = teacher_tokens.shape
        refs = self.reference_frames(t)
        student_tokens, student_mask = inputs.student_frame(0)

        with torch.no_grad():
            labels = self.pseudo_labels(teacher_tokens)  # (B, T, h, w)
            ref_z = teacher.head(teacher_tokens[:, refs.start : refs.stop]).reshape(b, len(refs) * h * w, -1)
        query_z = self.head(student_tokens).reshape(b, h * w, -1)
        query_labels = labels[:, 0].reshape(b, h * w)
        ref_labels = labels[:, refs.start : refs.stop].reshape(b, -1)
        m = self.num_clusters

        with torch.autocast(device_type=query_z.device.type, enabled=False):
            logits = torch.bmm(query_z.float(), ref_z.float().transpose(1, 2)) / self.temperature  # (B, Q, R)
            kept_ref = (ref_labels >= 0)[:, None, :]  # (B, 1, R)
            logits = logits.masked_fill(~kept_ref, float("-inf"))
            shift = logits.detach().amax(-1, keepdim=True)
            shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
            weights_ref = (logits - shift).exp()  # softmax numerators over the kept references
            ref_onehot = F.one_hot(ref_labels.clamp_min(0), m).float() * kept_ref.transpose(1, 2)  # (B, R, M)
            mass = torch.bmm(weights_ref, ref_onehot)  # (B, Q, M)
            y_hat = mass / mass.sum(-1, keepdim=True).clamp_min(torch.finfo(mass.dtype).tiny)
            target = query_labels.clamp_min(0)
            p_target = y_hat.gather(-1, target[..., None])[..., 0]  # (B, Q)
            nll = -p_target.clamp_min(_LOG_EPS).log()

            present = ref_onehot.sum(1) > 0  # (B, M): the cluster has a kept reference token
            used = (query_labels >= 0) & present.gather(1, target)
            if student_mask is not None:
                used = used & ~student_mask.reshape(b, h * w)
            weights = used.float()
            loss_sum = (nll * weights).sum()
            global_count = dist.all_reduce_sum(weights.sum().detach()).clamp_min(1.0)
            loss = loss_sum / global_count * dist.world_size()

        with torch.no_grad():
            agree = ((y_hat.argmax(-1) == query_labels).float() * weights).sum()
            flat = labels.reshape(b, -1)
            clip_counts = (F.one_hot(flat.clamp_min(0), m) * (flat >= 0)[..., None]).sum(1)  # (B, M)
            kept_clusters = (clip_counts > 0).sum().float()
            ignored = (flat < 0).sum().float()
            stats = dist.all_reduce_sum(
                torch.stack(
                    [
                        loss_sum.detach(),
                        agree,
                        weights.sum(),
                        kept_clusters,
                        agree.new_tensor(float(b)),
                        ignored,
                        agree.new_tensor(float(flat.numel())),
                    ]
                )
            )
            metrics = {
                "loss": stats[0] / global_count,
                "clusters_kept": stats[3] / stats[4].clamp_min(1.0),
                "ignored_fraction": stats[5] / stats[6].clamp_min(1.0),
                "agreement": stats[1] / stats[2].clamp_min(1.0),
            }
        return ObjectiveOutput(loss=loss, metrics=metrics)
