"""The core type: :class:`Tracks`, and the first-frame query grid.

Coordinates everywhere in mosic are (x, y) pixels: x to the right, y down, the centre
of pixel (row i, column j) at (x=j, y=i), so an image of width W spans [-0.5, W - 0.5].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .checks import positive_int


@dataclass
class Tracks:
    """Point tracks of a batch of clips.

    Attributes:
        xy: (B, T, N, 2) float, (x, y) pixels of the video the tracker was given.
        visible: (B, T, N) bool, the point is visible (not occluded, inside the frame).
    """

    xy: torch.Tensor
    visible: torch.Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.xy, torch.Tensor) or not isinstance(self.visible, torch.Tensor):
            raise TypeError(
                f"Tracks needs tensors: xy (B, T, N, 2) float and visible (B, T, N) bool, "
                f"got {type(self.xy).__name__} and {type(self.visible).__name__}"
            )
        if not self.xy.is_floating_point():
            raise ValueError(f"Tracks.xy must be float (x, y) pixels, got {self.xy.dtype}")
        if self.xy.ndim != 4 or self.xy.shape[-1] != 2:
            raise ValueError(f"Tracks.xy must be (B, T, N, 2), got {tuple(self.xy.shape)}")
        if self.visible.shape != self.xy.shape[:-1]:
            raise ValueError(
                f"Tracks.visible must be (B, T, N) = {tuple(self.xy.shape[:-1])}, "
                f"got {tuple(self.visible.shape)}"
            )
        if self.visible.dtype != torch.bool:
            self.visible = self.visible.bool()

    def to(self, device: torch.device | str) -> "Tracks":
        from .device import to_device

        return Tracks(to_device(self.xy, device), to_device(self.visible, device))

    def pin_memory(self) -> "Tracks":
        """Page-locked copy (DataLoader(pin_memory=True) calls this), for non-blocking transfers."""
        return Tracks(self.xy.pin_memory(), self.visible.pin_memory())

    def __getitem__(self, index) -> "Tracks":
        """Index the batch dimension, keeping it (``tracks[1:3]``)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return Tracks(self.xy[index], self.visible[index])

    @staticmethod
    def still(points: torch.Tensor, num_frames: int) -> "Tracks":
        """(B, N, 2) (x, y) pixels held still and visible in each of ``num_frames`` frames."""
        xy = points.unsqueeze(1).expand(-1, num_frames, -1, -1)
        return Tracks(xy, torch.ones(xy.shape[:-1], dtype=torch.bool, device=xy.device))

    @staticmethod
    def cat(parts: Sequence["Tracks"], dim: int = 0) -> "Tracks":
        """Concatenate along the batch (dim 0) or point (dim 2) axis."""
        vis_dim = dim if dim >= 0 else dim - 1
        return Tracks(torch.cat([p.xy for p in parts], dim), torch.cat([p.visible for p in parts], vis_dim))


def query_grid(height: int, width: int, grid_size: int, frame: int = 0) -> torch.Tensor:
    """The paper's G x G grid of queries on one frame, as (N=G*G, 3) rows (t, x, y).

    Points sit at the centres of a G x G tiling of the image, row-major (y outer,
    x inner); with a 224 px image, G=16 and patch 14 every point is a patch centre.
    """
    positive_int(grid_size, "query_grid: grid_size")
    if height < 1 or width < 1:
        raise ValueError(f"query_grid: height and width must be >= 1, got {height} x {width}")
    xs = (torch.arange(grid_size, dtype=torch.float32) + 0.5) * (width / grid_size) - 0.5
    ys = (torch.arange(grid_size, dtype=torch.float32) + 0.5) * (height / grid_size) - 0.5
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    t = torch.full_like(gx, float(frame))
    return torch.stack([t, gx, gy], dim=-1).reshape(-1, 3)
