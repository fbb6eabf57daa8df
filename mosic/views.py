"""Random crop-and-flip views of frames, and the same transform applied to feature maps.

A :class:`ViewTransform` Phi maps a source frame (H, W) to a view of the same size: it
crops the box (x0, y0, x1, y1) and resizes it to (H, W), then optionally flips it
horizontally. Box corners are in edge coordinates (the image spans [0, W] x [0, H]);
point coordinates are mosic's (x, y) pixels (pixel centre j at x = j).

``apply`` gives Phi(I) for images (torchvision's ``roi_align``: bilinear, averaging
several samples per output pixel when the box is larger than the view); ``to_source``
maps view pixels back into the source frame; ``warp_tokens`` gives Phi(E(I)) for a
patch-token map by reading it at the source positions of the view's patch centres, so
that an equivariant encoder has ``E(Phi(I)) == Phi(E(I))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torchvision.ops import roi_align

from .points import sample_at_points


@dataclass
class ViewTransform:
    """A batch of crop-resize-flip transforms, one per clip.

    Attributes:
        boxes: (B, 4) float (x0, y0, x1, y1) crop boxes in edge coordinates of the source.
        flip: (B,) bool, flip the view horizontally after cropping.
        height, width: size of the source frames and of the views, in pixels.
    """

    boxes: torch.Tensor
    flip: torch.Tensor
    height: int
    width: int

    def __post_init__(self) -> None:
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"boxes must be (B, 4) (x0, y0, x1, y1), got {tuple(self.boxes.shape)}")
        if self.flip.shape != self.boxes.shape[:1]:
            raise ValueError(f"flip must be (B,) = ({self.boxes.shape[0]},), got {tuple(self.flip.shape)}")

    @classmethod
    def identity(cls, batch: int, height: int, width: int) -> "ViewTransform":
        boxes = torch.tensor([[0.0, 0.0, float(width), float(height)]]).repeat(batch, 1)
        return cls(boxes, torch.zeros(batch, dtype=torch.bool), height, width)

    @classmethod
    def random(
        cls,
        seeds: Sequence[int],
        height: int,
        width: int,
        scale: tuple[float, float] = (0.5, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_probability: float = 0.5,
    ) -> "ViewTransform":
        """One random crop (area fraction in ``scale``, aspect ratio in ``ratio``) and
        flip per seed: a deterministic function of the seed (exact resume)."""
        boxes, flips = [], []
        for seed in seeds:
            rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x71E3])
            area = height * width
            for _ in range(10):
                target = area * rng.uniform(*scale)
                aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
                w = math.sqrt(target * aspect)
                h = math.sqrt(target / aspect)
                if w <= width and h <= height:
                    break
            else:
                w, h = float(width), float(height)
            x0 = rng.uniform(0, width - w)
            y0 = rng.uniform(0, height - h)
            boxes.append([x0, y0, x0 + w, y0 + h])
            flips.append(bool(rng.random() < flip_probability))
        return cls(torch.tensor(boxes, dtype=torch.float32), torch.tensor(flips), height, width)

    def to(self, device: torch.device | str) -> "ViewTransform":
        return ViewTransform(self.boxes.to(device), self.flip.to(device), self.height, self.width)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """Phi(I): (B, C, H, W) float images -> (B, C, H, W) views."""
        b, _, h, w = images.shape
        if (h, w) != (self.height, self.width) or b != self.boxes.shape[0]:
            raise ValueError(
                f"images must be (B={self.boxes.shape[0]}, C, {self.height}, {self.width}), got {tuple(images.shape)}"
            )
        rois = torch.cat([torch.arange(b, device=images.device, dtype=torch.float32)[:, None], self.boxes.to(images.device)], 1)
        views = roi_align(images.float(), rois, (h, w), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        views = torch.where(self.flip.to(images.device)[:, None, None, None], views.flip(-1), views)
        return views.to(images.dtype)

    def to_source(self, xy: torch.Tensor) -> torch.Tensor:
        """(B, N, 2) (x, y) pixels of the view -> the same points in the source frame."""
        boxes = self.boxes.to(xy.device, torch.float32)
        x, y = xy[..., 0].float(), xy[..., 1].float()
        x = torch.where(self.flip.to(xy.device)[:, None], self.width - 1 - x, x)
        sx = (boxes[:, 2:3] - boxes[:, 0:1]) / self.width
        sy = (boxes[:, 3:4] - boxes[:, 1:2]) / self.height
        return torch.stack([boxes[:, 0:1] + (x + 0.5) * sx - 0.5, boxes[:, 1:2] + (y + 0.5) * sy - 0.5], -1)

    def patch_centres(self, patch_size: int) -> torch.Tensor:
        """(B, h*w, 2) source positions of the view's patch centres, row-major."""
        h, w = self.height // patch_size, self.width // patch_size
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        centres = torch.stack([xs, ys], -1).reshape(-1, 2).float() * patch_size + (patch_size - 1) / 2
        return self.to_source(centres.to(self.boxes.device).expand(self.boxes.shape[0], -1, -1))

    def warp_tokens(self, tokens: torch.Tensor, patch_size: int) -> torch.Tensor:
        """Phi(E(I)): (B, h, w, D) patch tokens of source frames -> (B, h, w, D) tokens
        laid out like the view's patches (bilinear between source patch centres)."""
        b, h, w, d = tokens.shape
        points = self.patch_centres(patch_size).to(tokens.device)
        return sample_at_points(tokens, points, patch_size, "bilinear").view(b, h, w, d)
