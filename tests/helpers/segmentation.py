"""Tiny fake segmentation datasets: 24x32 solid-colour images and label PNGs written in a
dataset's real layout."""

import numpy as np
from PIL import Image


H, W = 24, 32


TOL = 6  # JPEG error on a solid colour


def colour(k: int) -> np.ndarray:
    return np.array([20 + 37 * k % 200, 200 - 29 * k % 180, 60 + 53 * k % 190], np.uint8)


def write_jpg(path, k: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.broadcast_to(colour(k), (H, W, 3)).copy()).save(path, quality=95)


def write_png(path, values: np.ndarray, palette: bool = True) -> None:
    """A single-channel label PNG: palette ("P", as VOC/DAVIS/YTVOS) or grayscale ("L")."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(values.astype(np.uint8), mode="L")
    if palette:
        image = image.convert("P")
        image.putpalette([c for i in range(256) for c in (i, (7 * i) % 256, (13 * i) % 256)])
    image.save(path)
    back = np.array(Image.open(path))
    assert Image.open(path).mode == ("P" if palette else "L") and (back == values).all()


def label_map(values) -> np.ndarray:
    """(H, W) map with ``values`` in vertical bands (each value on at least one column)."""
    values = np.asarray(values)
    cols = np.arange(W) * len(values) // W
    return np.broadcast_to(values[cols], (H, W)).copy()


def assert_image(image: np.ndarray, k: int) -> None:
    assert image.shape == (H, W, 3) and image.dtype == np.uint8
    assert np.abs(image.astype(int) - colour(k).astype(int)).max() <= TOL


def write(path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
