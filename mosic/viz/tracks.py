"""Point tracks drawn over video frames: trails, visible and occluded points.

Each point keeps one colour through the clip, picked from its query position (frame 0)
by a 2-D colormap over the image: the hue runs red to violet mostly top to bottom and a
little left to right, so neighbouring grid points differ and rows read as bands.

Markers (after the trails, so they stay on top):

* visible: a filled disc in the point's colour with a 1 px black rim;
* occluded (``visible`` False): a ring in the point's colour, its inside left as the
  frame is (hollow), so occlusion reads at a glance.

A trail joins the point's positions over the last ``trail`` frames, newest segment
opaque, older ones fading out; segments with an occluded end are not drawn.

Coordinates are (x, y) pixels with pixel centres on integers (the mosic convention).
"""

from __future__ import annotations

import colorsys

import numpy as np

from ..checks import nonnegative_int
from .writers import as_frames


def point_colors(xy0, height: int, width: int) -> np.ndarray:
    """(N, 3) uint8 colours of points whose query positions are ``xy0`` (N, 2) (x, y) pixels."""
    xy0 = np.asarray(xy0, dtype=np.float64).reshape(-1, 2)
    xn = np.clip(np.nan_to_num((xy0[:, 0] + 0.5) / max(width, 1), nan=0.5), 0.0, 1.0)
    yn = np.clip(np.nan_to_num((xy0[:, 1] + 0.5) / max(height, 1), nan=0.5), 0.0, 1.0)
    hues = 0.85 * (0.8 * yn + 0.2 * xn)
    out = np.array([colorsys.hsv_to_rgb(h, 0.9, 1.0) for h in hues]).reshape(-1, 3)
    return np.round(out * 255).astype(np.uint8)


def _track_arrays(tracks, visible, clip: int) -> tuple[np.ndarray, np.ndarray]:
    """(T, N, 2) float64 xy and (T, N) bool visible from a Tracks or arrays/tensors."""
    from ..tracks import Tracks

    if isinstance(tracks, Tracks):
        if visible is not None:
            raise ValueError("draw_tracks: pass visible only with an xy array, a Tracks carries its own")
        if not 0 <= clip < tracks.xy.shape[0]:
            raise ValueError(f"draw_tracks: clip {clip} out of range for Tracks of batch size {tracks.xy.shape[0]}")
        xy, visible = tracks.xy[clip], tracks.visible[clip]
    else:
        xy = tracks
    xy = np.asarray(xy.detach().float().cpu().numpy() if hasattr(xy, "detach") else xy, dtype=np.float64)
    if xy.ndim == 4 and xy.shape[0] == 1:
        xy = xy[0]
    if xy.ndim != 3 or xy.shape[-1] != 2:
        raise ValueError(f"draw_tracks: xy must be (T, N, 2) (x, y) pixels, got shape {xy.shape}")
    if visible is None:
        vis = np.isfinite(xy).all(-1)
    else:
        vis = np.asarray(visible.detach().cpu().numpy() if hasattr(visible, "detach") else visible).astype(bool)
        if vis.ndim == 3 and vis.shape[0] == 1:
            vis = vis[0]
        if vis.shape != xy.shape[:2]:
            raise ValueError(f"draw_tracks: visible must be (T, N) = {xy.shape[:2]}, got {vis.shape}")
    return xy, vis


def draw_tracks(
    frames,
    tracks,
    visible=None,
    *,
    trail: int = 8,
    point_radius: int | None = None,
    line_width: int | None = None,
    colors=None,
    scale: int = 1,
    clip: int = 0,
) -> np.ndarray:
    """Frames with the tracks drawn over them.

    Args:
        frames: (T, H, W, 3) uint8 RGB.
        tracks: a :class:`~mosic.trackers.Tracks` (clip ``clip`` of its batch is drawn),
            or xy (T, N, 2) (x, y) pixels of ``frames`` (array or tensor).
        visible: (T, N) bool with an xy array (default: every finite position is visible).
        trail: frames of history drawn behind each point (0: none).
        point_radius: marker radius in output pixels (default: about 1.2 % of the shorter
            side, at least 2).
        line_width: trail width in output pixels (default: about half the radius).
        colors: (N, 3) uint8 colours (default: :func:`point_colors` of the frame-0 positions).
        scale: integer upscaling of the frames before drawing (crisp markers on small clips).
    Returns:
        (T, H * scale, W * scale, 3) uint8.
    """
    from PIL import Image, ImageDraw

    from .writers import upscale

    frames = as_frames(frames)
    xy, vis = _track_arrays(tracks, visible, clip)
    t, h, w, _ = frames.shape
    if xy.shape[0] != t:
        raise ValueError(f"draw_tracks: the tracks have {xy.shape[0]} frames, the video has {t}")
    nonnegative_int(trail, "draw_tracks: trail")
    n = xy.shape[1]
    if colors is None:
        first = np.where(np.isfinite(xy).all(-1).any(0), np.argmax(np.isfinite(xy).all(-1), axis=0), 0)
        colors = point_colors(xy[first, np.arange(n)], h, w)
    colors = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    if len(colors) != n:
        raise ValueError(f"draw_tracks: colors must be (N={n}, 3), got {colors.shape}")
    out = upscale(frames, scale).copy()
    H, W = out.shape[1:3]
    r = int(point_radius) if point_radius is not None else max(2, round(0.012 * min(H, W)))
    if r < 1:
        raise ValueError(f"draw_tracks: point_radius must be >= 1, got {point_radius}")
    lw = int(line_width) if line_width is not None else max(1, round(r / 2))
    pix = (xy + 0.5) * scale - 0.5  # positions in output pixels
    finite = np.isfinite(pix).all(-1)
    ok = vis & finite
    cols = [tuple(int(v) for v in c) for c in colors]
    for ti in range(t):
        image = Image.fromarray(out[ti])
        if trail > 0 and ti > 0:
            layer = Image.new("RGBA", (W, H), (0, 0, 0, 0))
            draw = ImageDraw.Draw(layer)
            first = max(1, ti - trail + 1)
            for s in range(first, ti + 1):  # oldest first: newer segments overwrite
                alpha = round(255 * (0.25 + 0.75 * (s - first + 1) / (ti - first + 1)))
                both = ok[s - 1] & ok[s] & (np.abs(pix[s] - pix[s - 1]).max(-1) >= 0.5)  # still points: no trail
                for j in np.nonzero(both)[0]:
                    draw.line([tuple(pix[s - 1, j]), tuple(pix[s, j])], fill=(*cols[j], alpha), width=lw)
            image = Image.alpha_composite(image.convert("RGBA"), layer).convert("RGB")
        draw = ImageDraw.Draw(image)
        for j in np.nonzero(finite[ti])[0]:
            cx, cy = np.round(pix[ti, j])
            box = [cx - r, cy - r, cx + r, cy + r]
            if vis[ti, j]:
                draw.ellipse(box, fill=cols[j], outline=(0, 0, 0) if r >= 2 else None)
            else:
                draw.ellipse(box, outline=cols[j], width=max(1, r // 2 if r >= 4 else 1))
        out[ti] = np.asarray(image)
    return out
