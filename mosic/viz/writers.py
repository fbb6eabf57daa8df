"""Frames to files: MP4 (PyAV, libx264), looping GIF (Pillow), PNG (one frame or a contact sheet).

Frames are (T, H, W, 3) uint8 RGB arrays (or tensors) throughout :mod:`mosic.viz`.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..checks import positive_int

#: file suffixes :func:`write_video` understands
SUFFIXES = (".mp4", ".gif", ".png")


def as_frames(frames, what: str = "frames") -> np.ndarray:
    """(T, H, W, 3) uint8 numpy array from an array, a tensor or a list of (H, W, 3) frames."""
    if hasattr(frames, "detach"):  # a torch tensor
        frames = frames.detach().cpu().numpy()
    elif not isinstance(frames, np.ndarray):
        try:
            frames = np.stack([np.asarray(f) for f in frames])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{what} must be (T, H, W, 3) uint8 RGB or a list of (H, W, 3) frames of one size ({exc})") from None
    frames = np.asarray(frames)
    if frames.ndim == 3 and frames.shape[-1] == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or 0 in frames.shape:
        raise ValueError(f"{what} must be (T, H, W, 3) uint8 RGB, got shape {frames.shape} {frames.dtype}")
    return np.ascontiguousarray(frames)


def upscale(frames, scale: int) -> np.ndarray:
    """(T, H, W, 3) -> (T, H * scale, W * scale, 3), nearest neighbour (crisp pixels)."""
    frames = as_frames(frames)
    positive_int(scale, "scale")
    if scale == 1:
        return frames
    return np.ascontiguousarray(frames.repeat(scale, axis=1).repeat(scale, axis=2))


def pick_frames(num_frames: int, count: int | None) -> list[int]:
    """``count`` evenly spaced indices in [0, num_frames), first and last included (all when None)."""
    if count is None or count >= num_frames:
        return list(range(num_frames))
    if count < 1:
        raise ValueError(f"the number of frames to show must be >= 1, got {count}")
    return sorted({int(round(i)) for i in np.linspace(0, num_frames - 1, count)})


def contact_sheet(frames, columns: int | None = None, pad: int = 2, background: int = 255) -> np.ndarray:
    """Frames tiled row by row into one (H', W', 3) uint8 image with ``pad`` pixels between tiles.

    ``columns`` defaults to all frames in one row up to 4 frames, else ceil(sqrt(T)).
    """
    frames = as_frames(frames)
    t, h, w, _ = frames.shape
    if columns is None:
        columns = t if t <= 4 else math.ceil(math.sqrt(t))
    positive_int(columns, "columns")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    columns = min(columns, t)
    rows = math.ceil(t / columns)
    sheet = np.full((rows * h + (rows - 1) * pad, columns * w + (columns - 1) * pad, 3), background, dtype=np.uint8)
    for i, frame in enumerate(frames):
        r, c = divmod(i, columns)
        sheet[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = frame
    return sheet


def write_video(
    frames,
    path: str | Path,
    fps: float = 8.0,
    *,
    sheet_frames: int | None = None,
    columns: int | None = None,
    crf: int = 18,
) -> Path:
    """Write frames to ``path``; the suffix picks the format.

    * ``.mp4``: H.264 (libx264, yuv420p) through PyAV; odd widths or heights are padded
      by one pixel (repeating the edge), as yuv420p needs even sizes.
    * ``.gif``: an endlessly looping animation (Pillow), ``1000 / fps`` ms per frame
      (Pillow merges identical consecutive frames into one shown as long).
    * ``.png``: one frame as is, several as a contact sheet (:func:`contact_sheet`);
      ``sheet_frames`` keeps that many evenly spaced frames, ``columns`` sets the layout.

    Returns the path written (parent folders are created).
    """
    frames = as_frames(frames)
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"cannot write {path}: choose an output ending in {', '.join(SUFFIXES)}")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".png":
        from PIL import Image

        keep = pick_frames(len(frames), sheet_frames)
        image = frames[0] if len(keep) == 1 else contact_sheet(frames[keep], columns)
        Image.fromarray(image).save(path, optimize=True)
    elif suffix == ".gif":
        from PIL import Image

        images = [Image.fromarray(f) for f in frames]
        images[0].save(
            path, save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)), loop=0, optimize=False
        )
    else:
        _write_mp4(frames, path, fps, crf)
    return path


def _write_mp4(frames: np.ndarray, path: Path, fps: float, crf: int) -> None:
    import av

    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        h, w = h + h % 2, w + w % 2
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(int(crf))}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush
            container.mux(packet)
