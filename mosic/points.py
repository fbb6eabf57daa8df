"""Reading patch features at (x, y) pixel positions without upsampling feature maps."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F


def pixels_to_grid(xy: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(x, y) pixels (centre of pixel j at x=j) -> grid_sample coordinates in [-1, 1].

    Matches ``align_corners=False``: the image extent [-0.5, W - 0.5] maps to [-1, 1].
    """
    scale = torch.tensor([2.0 / width, 2.0 / height], device=xy.device, dtype=torch.float32)
    return (xy.float() + 0.5) * scale - 1.0


def sample_at_points(
    tokens: torch.Tensor,
    xy: torch.Tensor,
    patch_size: int,
    mode: Literal["bilinear", "nearest"] = "bilinear",
) -> torch.Tensor:
    """Features of a (B, h, w, D) patch grid at pixel positions.

    Args:
        tokens: (B, h, w, D) patch tokens of images of size (h * patch_size, w * patch_size).
        xy: (B, N, 2) (x, y) pixels of those images.
        mode: "bilinear" between patch centres (teacher) or "nearest" patch (student).
    Returns:
        (B, N, D) float32 (positions are never rounded to a low-precision dtype).
        Points outside the image read the nearest border patch.
    """
    b, h, w, d = tokens.shape
    if xy.shape[0] != b or xy.shape[-1] != 2 or xy.ndim != 3:
        raise ValueError(f"xy must be (B={b}, N, 2), got {tuple(xy.shape)}")
    # fp32 positions and features: a bf16 grid would round positions to ~1/128 of the image
    grid = pixels_to_grid(xy, h * patch_size, w * patch_size).unsqueeze(2)  # (B, N, 1, 2)
    out = F.grid_sample(
        tokens.float().permute(0, 3, 1, 2), grid, mode=mode, padding_mode="border", align_corners=False
    )  # (B, D, N, 1)
    return out.squeeze(-1).transpose(1, 2)
