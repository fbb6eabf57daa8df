"""Reading patch features at (x, y) pixel positions without upsampling feature maps."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from .checks import positive_int


def pixels_to_grid(xy: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(x, y) pixels (centre of pixel j at x=j) -> grid_sample coordinates in [-1, 1].

    Matches ``align_corners=False``: the image extent [-0.5, W - 0.5] maps to [-1, 1].
    """
    xy = xy.float() + 0.5  # Python-float scales: no host-to-device copy
    return torch.stack([xy[..., 0] * (2.0 / width) - 1.0, xy[..., 1] * (2.0 / height) - 1.0], dim=-1)


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
        patch_size: pixels per patch side, an int > 0.
        mode: "bilinear" between patch centres, at the exact position (the paper's
            teacher read), or "nearest": the position is first rounded to the nearest
            pixel (``torch.round``, halves to even), then that pixel's patch is read;
            this equals upsampling the map with ``F.interpolate(mode="nearest")`` and
            indexing ``[round(y), round(x)]``, what the authors' code does (x and y the right way round) for the student
            and, in ``train.sh``, for the teacher (tested in ``tests/test_points.py``).
    Returns:
        (B, N, D) float32 (positions are never rounded to a low-precision dtype).
        Points outside the image read the nearest border patch (positions are clamped
        into the image); a point at a patch centre reads that patch's token exactly.
    Raises:
        TypeError, ValueError: malformed arguments; the message names the argument and
            the expected form (shape and dtype checks only: no host synchronisation).
    """
    _check_inputs(tokens, xy, patch_size, mode)
    b, h, w, d = tokens.shape
    if mode == "nearest":  # the pixel the authors' `.round().long()` indexes: no ties at patch borders
        xy = xy.float().round()
    # fp32 positions and features: a bf16 grid would round positions to ~1/128 of the image
    grid = pixels_to_grid(xy, h * patch_size, w * patch_size).unsqueeze(2)  # (B, N, 1, 2)
    out = F.grid_sample(
        tokens.float().permute(0, 3, 1, 2), grid, mode=mode, padding_mode="border", align_corners=False
    )  # (B, D, N, 1)
    return out.squeeze(-1).transpose(1, 2)


_MODES = ("bilinear", "nearest")


def _describe(x: object) -> str:
    return f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__


def _check_inputs(tokens: object, xy: object, patch_size: object, mode: object) -> None:
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 4 or not tokens.is_floating_point():
        kind = ValueError if isinstance(tokens, torch.Tensor) else TypeError
        raise kind(f"sample_at_points: tokens must be a (B, h, w, D) float patch grid, got {_describe(tokens)}")
    b, h, w, _ = tokens.shape
    if h < 1 or w < 1:
        raise ValueError(f"sample_at_points: tokens must be a (B, h, w, D) grid with h, w >= 1, got {tuple(tokens.shape)}")
    if not isinstance(xy, torch.Tensor) or xy.ndim != 3 or xy.shape[-1] != 2 or xy.shape[0] != b or not xy.is_floating_point():
        kind = ValueError if isinstance(xy, torch.Tensor) else TypeError
        raise kind(f"sample_at_points: xy must be (B={b}, N, 2) float pixels (x, y), got {_describe(xy)}")
    if xy.device != tokens.device:
        raise ValueError(f"sample_at_points: xy must be on the device of tokens ({tokens.device}), got {xy.device}")
    positive_int(patch_size, "sample_at_points: patch_size", what="an int > 0 (pixels per patch side)", type_error=True)
    if mode not in _MODES:
        raise ValueError(f"sample_at_points: mode must be 'bilinear' or 'nearest', got {mode!r}")
