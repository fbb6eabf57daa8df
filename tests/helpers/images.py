"""Pixel checks of rendered images, and frames to draw on."""

import numpy as np


def colour_count(image: np.ndarray) -> int:
    """The number of distinct RGB colours in an (..., 3) image."""
    return len(np.unique(image.reshape(-1, 3), axis=0))


def grey_frames(t=6, h=40, w=40):
    """(t, h, w, 3) uint8 mid-grey frames."""
    return np.full((t, h, w, 3), 128, dtype=np.uint8)
