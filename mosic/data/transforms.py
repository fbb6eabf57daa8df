"""The crop/resize/flip that turns source frames into a training view, for frames and points.

The same :class:`ViewTransform` is applied to every frame of a clip and to the (x, y)
pixel coordinates of tracks, so tracks computed on source frames (a cache, ground
truth) land on the right view pixels. :func:`apply_views` and :func:`warp_tokens` apply
one transform per clip to a batch of float images and of patch-token maps, so that an
equivariant encoder E has ``E(apply_views(I)) == warp_tokens(E(I))`` (objectives with
a transformation-equivariance term use the pair).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from ..tracks import Tracks


@dataclass(frozen=True)
class ViewTransform:
    """Crop box ``[x0, x0 + width) x [y0, y0 + height)`` of source pixels, resized to
    ``out_size`` (H, W), then optionally flipped left-right."""

    x0: int
    y0: int
    width: int
    height: int
    out_size: tuple[int, int]
    flip: bool = False

    def __post_init__(self) -> None:
        out_h, out_w = self.out_size
        if self.width <= 0 or self.height <= 0 or out_h <= 0 or out_w <= 0:
            raise ValueError(
                f"ViewTransform: the crop box ({self.width} x {self.height}) and out_size {self.out_size} "
                "must have positive sides"
            )

    @staticmethod
    def identity(height: int, width: int) -> "ViewTransform":
        return ViewTransform(0, 0, width, height, (height, width))

    def points_to_view(self, xy: torch.Tensor | np.ndarray):
        """(..., 2) source (x, y) pixels -> view pixels."""
        out_h, out_w = self.out_size
        x = (xy[..., 0] + 0.5 - self.x0) * (out_w / self.width) - 0.5
        y = (xy[..., 1] + 0.5 - self.y0) * (out_h / self.height) - 0.5
        if self.flip:
            x = (out_w - 1) - x
        return _stack(x, y, xy)

    def points_to_source(self, xy: torch.Tensor | np.ndarray):
        """(..., 2) view (x, y) pixels -> source pixels (inverse of :meth:`points_to_view`)."""
        out_h, out_w = self.out_size
        x = (out_w - 1) - xy[..., 0] if self.flip else xy[..., 0]
        x = (x + 0.5) * (self.width / out_w) - 0.5 + self.x0
        y = (xy[..., 1] + 0.5) * (self.height / out_h) - 0.5 + self.y0
        return _stack(x, y, xy)

    def inside_view(self, xy: torch.Tensor | np.ndarray):
        """(..., 2) view pixels -> (...) bool, inside the view's extent."""
        out_h, out_w = self.out_size
        x, y = xy[..., 0], xy[..., 1]
        return (x >= -0.5) & (x <= out_w - 0.5) & (y >= -0.5) & (y <= out_h - 0.5)

    def apply_to_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """(T, 3, H, W) uint8 source frames -> (T, 3, out_h, out_w) uint8 view."""
        crop = frames[..., self.y0 : self.y0 + self.height, self.x0 : self.x0 + self.width]
        if (self.height, self.width) != tuple(self.out_size):
            crop = F.interpolate(crop.float(), size=self.out_size, mode="bilinear", align_corners=False, antialias=True)
            crop = crop.round_().clamp_(0, 255).to(torch.uint8)
        return crop.flip(-1) if self.flip else crop


def random_resized_crop(
    rng: np.random.Generator,
    height: int,
    width: int,
    out_size: tuple[int, int],
    scale: tuple[float, float] = (0.4, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_probability: float = 0.0,
) -> ViewTransform:
    """Sample a crop covering ``scale`` of the area with aspect ``ratio`` (as
    torchvision's RandomResizedCrop, but drawing from ``rng`` so a sample's view depends
    only on its seed); falls back to the largest centred crop of valid aspect."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    box = None
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            box = (int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h)
            break
    if box is None:
        in_ratio = width / height
        if in_ratio < ratio[0]:
            w, h = width, int(round(width / ratio[0]))
        elif in_ratio > ratio[1]:
            w, h = int(round(height * ratio[1])), height
        else:
            w, h = width, height
        box = ((width - w) // 2, (height - h) // 2, w, h)
    flip = bool(rng.random() < flip_probability)
    return ViewTransform(*box, out_size=tuple(out_size), flip=flip)


def apply_views(images: torch.Tensor, views: Sequence[ViewTransform]) -> torch.Tensor:
    """Phi(I) for a batch: (B, C, H, W) float images, one transform per image, -> (B, C, out_h, out_w).

    Bilinear (torchvision ``roi_align``, several samples averaged per output pixel when
    the crop is larger than the output), consistent with :meth:`ViewTransform.points_to_source`.
    """
    if images.ndim != 4 or images.shape[0] != len(views):
        raise ValueError(f"images must be (B={len(views)}, C, H, W), got {tuple(images.shape)}")
    sizes = {tuple(v.out_size) for v in views}
    if len(sizes) != 1:
        raise ValueError(f"all views of a batch need one out_size, got {sorted(sizes)}")
    boxes = torch.tensor(
        [[i, v.x0, v.y0, v.x0 + v.width, v.y0 + v.height] for i, v in enumerate(views)],
        dtype=torch.float32,
        device=images.device,
    )
    out = roi_align(images.float(), boxes, sizes.pop(), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    flip = torch.tensor([v.flip for v in views], device=images.device)
    return torch.where(flip[:, None, None, None], out.flip(-1), out).to(images.dtype)


def warp_tokens(tokens: torch.Tensor, views: Sequence[ViewTransform], patch_size: int) -> torch.Tensor:
    """Phi(E(I)): (B, h, w, D) patch tokens of the source images -> (B, h', w', D) tokens laid
    out like the patches of each view (h' = out_h // patch_size), read bilinearly between
    source patch centres at the source position of each view patch centre."""
    from ..points import sample_at_points

    b, _, _, d = tokens.shape
    out_h, out_w = views[0].out_size
    h, w = out_h // patch_size, out_w // patch_size
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    centres = torch.stack([xs, ys], -1).reshape(-1, 2).float() * patch_size + (patch_size - 1) / 2
    centres = centres.to(tokens.device)
    points = torch.stack([v.points_to_source(centres) for v in views])  # (B, h'*w', 2)
    return sample_at_points(tokens, points, patch_size, "bilinear").view(b, h, w, d)


def _stack(x, y, like):
    if isinstance(like, torch.Tensor):
        return torch.stack([x, y], dim=-1)
    return np.stack([x, y], axis=-1)


def tracks_in_view(tracks: Tracks, transform: ViewTransform) -> Tracks:
    """Map cached source-pixel tracks (1, T, N, ...) into a clip's view.

    A point is visible where it was visible, lies inside the view, and its frame-0
    position (the query the student sees) lies inside the view.
    """
    xy = transform.points_to_view(tracks.xy)
    inside = transform.inside_view(xy)
    visible = tracks.visible & inside & inside[:, :1]
    return Tracks(xy.float(), visible)
