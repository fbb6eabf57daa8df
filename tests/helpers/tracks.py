"""Random tracks for tests of objectives and learners."""

from __future__ import annotations

import torch

from mosic.tracks import Tracks


def random_tracks(g: torch.Generator, b: int, t: int, n: int, size: int) -> Tracks:
    """Random walks from random frame-0 points (some leave the image), ~30% invisible
    entries, including on frame 0 (those points take no part)."""
    start = torch.rand(b, 1, n, 2, generator=g) * (size - 1)
    steps = torch.randn(b, t - 1, n, 2, generator=g) * (size / 6)
    xy = torch.cat([start, start + steps.cumsum(1)], 1)
    visible = torch.rand(b, t, n, generator=g) > 0.3
    return Tracks(xy, visible)
