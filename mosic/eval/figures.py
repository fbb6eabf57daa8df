"""Qualitative figures (PNG): label maps over images, cluster maps over video frames.

Drawn with Pillow only. A figure is a grid of panels, each an image with a label map
blended over it and a caption; labels use a fixed palette (:func:`palette`), and
:data:`~mosic.data.segmentation.IGNORE_INDEX` pixels stay uncoloured.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..data.segmentation import IGNORE_INDEX


def palette(num_colors: int = 256, seed: int = 0) -> np.ndarray:
    """(num_colors, 3) uint8 distinct colours: black for 0 (background), then golden-ratio hues."""
    import colorsys

    colours = np.zeros((num_colors, 3), dtype=np.uint8)
    rng = np.random.default_rng(seed)
    for i in range(1, num_colors):
        hue = (i * 0.618034) % 1.0
        sat, val = 0.65 + 0.35 * rng.random(), 0.75 + 0.25 * rng.random()
        colours[i] = np.round(np.array(colorsys.hsv_to_rgb(hue, sat, val)) * 255)
    return colours


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """(H, W, 3) uint8 image with an (h, w) int label map blended over it (nearest-upsampled)."""
    h, w = image.shape[:2]
    labels = np.asarray(labels)
    if labels.shape != (h, w):
        labels = np.asarray(Image.fromarray(labels.astype(np.int32)).resize((w, h), Image.NEAREST))
    colours = palette(max(256, int(labels.max()) + 1))
    tint = colours[np.clip(labels, 0, None)]
    mixed = (1 - alpha) * image.astype(np.float32) + alpha * tint.astype(np.float32)
    mixed[labels == IGNORE_INDEX] = image[labels == IGNORE_INDEX]
    return mixed.round().clip(0, 255).astype(np.uint8)


def panel_grid(
    panels: Sequence[Sequence[np.ndarray]],
    captions: Sequence[Sequence[str]] | None = None,
    scale: int = 1,
    pad: int = 4,
    caption_height: int = 14,
) -> Image.Image:
    """Rows of (H, W, 3) uint8 panels (all one size) -> one RGB image with captions above panels."""
    rows = [list(r) for r in panels]
    if not rows or not rows[0]:
        raise ValueError("a figure needs at least one panel")
    h, w = rows[0][0].shape[:2]
    h, w = h * scale, w * scale
    ncols = max(len(r) for r in rows)
    cap = caption_height if captions is not None else 0
    canvas = Image.new("RGB", (pad + ncols * (w + pad), pad + len(rows) * (h + cap + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, row in enumerate(rows):
        for j, panel in enumerate(row):
            x, y = pad + j * (w + pad), pad + i * (h + cap + pad)
            if captions is not None and j < len(captions[i]):
                draw.text((x, y), str(captions[i][j]), fill="black")
            tile = Image.fromarray(np.ascontiguousarray(panel)).resize((w, h), Image.NEAREST)
            canvas.paste(tile, (x, y + cap))
    return canvas


def save_segmentation_figure(
    images: Sequence[np.ndarray],
    predictions: Sequence[np.ndarray],
    targets: Sequence[np.ndarray] | None,
    path: str | Path,
    title: str = "prediction",
    scale: int = 2,
) -> Path:
    """One row per image: the image, the prediction over it, the ground truth over it."""
    rows, captions = [], []
    for k, (image, pred) in enumerate(zip(images, predictions)):
        row = [image, overlay(image, pred)]
        cap = [f"image {k}", title]
        if targets is not None:
            row.append(overlay(image, targets[k]))
            cap.append("ground truth")
        rows.append(row)
        captions.append(cap)
    return _save(panel_grid(rows, captions, scale=scale), path)


def save_video_clusters_figure(
    frames: np.ndarray,
    cluster_maps: np.ndarray,
    path: str | Path,
    masks: np.ndarray | None = None,
    title: str = "clusters",
    scale: int = 2,
) -> Path:
    """Frames (T, H, W, 3) in a row, the cluster maps (T, h, w) over them below, and the
    ground-truth masks (T, H, W) over them in a third row when given."""
    rows = [list(frames), [overlay(f, c) for f, c in zip(frames, cluster_maps)]]
    captions = [[f"frame {t}" for t in range(len(frames))], [title] * len(frames)]
    if masks is not None:
        rows.append([overlay(f, m) for f, m in zip(frames, masks)])
        captions.append(["ground truth"] * len(frames))
    return _save(panel_grid(rows, captions, scale=scale), path)


def _save(figure: Image.Image, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.save(path)
    return path
