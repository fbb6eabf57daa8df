"""A small corpus of awkward and broken video inputs, written with PyAV, numpy and Pillow.

:func:`write_corpus` fills a folder with one file or frame folder per :class:`Case` of
:data:`CASES` in about a second. Each case says what reading it must give: frames
(``expect="decode"``, with the RGB colour frame k must have) or a
:class:`~mosic.errors.VideoReadError` whose reason matches ``reason``.

Every decodable video shows a solid colour per frame, ``colour(k)``, so a read can be
checked to return the right frames. Used by the bad-video tests (tests/data/)
and tests/data/test_check.py.
"""

from __future__ import annotations

import fractions
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import av
import numpy as np
from PIL import Image

W, H, FPS = 64, 48, 10
GOOD_FRAMES = 24
X264 = {"crf": "0", "preset": "ultrafast", "x264-params": "keyint=6:min-keyint=6:scenecut=0"}


def colour(k: int) -> np.ndarray:
    """(3,) uint8 RGB colour of frame k (k < 24): every channel changes per frame."""
    return np.array((10 + 9 * k, 40 + 7 * k, 230 - 8 * k), np.uint8)


def gray_level(k: int) -> int:
    return 20 + 9 * k


def solid(value, width: int = W, height: int = H) -> np.ndarray:
    value = np.asarray(value)
    return np.broadcast_to(value, (height, width, *value.shape)).copy()


# ----------------------------------------------------------------------------- writers


def write_video(
    path: Path,
    frames: list[np.ndarray],
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    in_format: str = "rgb24",
    options: dict | None = None,
    container_options: dict | None = None,
    pts_ms: list[int] | None = None,
) -> Path:
    """Encode ``frames`` (numpy arrays of ``in_format``); ``pts_ms`` sets each frame's time."""
    height, width = frames[0].shape[:2]
    container = av.open(str(path), "w", options=container_options or {})
    stream = container.add_stream(codec, rate=FPS)
    stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
    stream.options = dict(X264 if codec == "libx264" and options is None else options or {})
    if pts_ms is not None:
        stream.time_base = stream.codec_context.time_base = fractions.Fraction(1, 1000)
    for k, array in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(array, format=in_format)
        if pts_ms is not None:
            frame.pts, frame.time_base = pts_ms[k], fractions.Fraction(1, 1000)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def colour_frames(n: int, width: int = W, height: int = H) -> list[np.ndarray]:
    return [solid(colour(k % GOOD_FRAMES), width, height) for k in range(n)]


def write_png16(path: Path, array: np.ndarray) -> Path:
    """A 16-bit PNG of a (H, W) gray or (H, W, 3) RGB uint16 array (Pillow cannot write RGB48)."""
    height, width = array.shape[:2]
    colour_type = 2 if array.ndim == 3 else 0
    raw = array.astype(">u2").reshape(height, -1).tobytes()
    stride = len(raw) // height
    rows = b"".join(b"\x00" + raw[i * stride : (i + 1) * stride] for i in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


def write_frame_folder(folder: Path, images: list[Image.Image], ext: str = "png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k, image in enumerate(images):
        image.save(folder / f"{k:05d}.{ext}", **({"quality": 98} if ext == "jpg" else {}))
    return folder


# ----------------------------------------------------------------------------- cases


@dataclass
class Case:
    """One corpus entry.

    Attributes:
        name: file or folder name inside the corpus folder.
        kind: "file" (a VideoFileSource) or "frames" (a FrameFolderSource).
        write: writes the case; gets the corpus folder and the already written cases.
        expect: "decode" or "error" (a VideoReadError).
        frames: frame count when it decodes.
        size: (W, H) when it decodes.
        expected_rgb: k -> (3,) RGB value of frame k, when it decodes.
        reason: regular expression the VideoReadError reason must match.
        decord_reason: the same for backend="decord", when it words it differently.
        tolerance: max abs pixel error of a decoded frame.
        decord_may_fail: decord builds may refuse this pixel format (then with a VideoReadError).
    """

    name: str
    kind: str
    write: Callable[[Path], Path]
    expect: str = "decode"
    frames: int = GOOD_FRAMES
    size: tuple[int, int] = (W, H)
    expected_rgb: Callable[[int], np.ndarray] | None = colour
    reason: str = ""
    decord_reason: str | None = None
    tolerance: int = 6
    decord_may_fail: bool = False


def _good(root: Path) -> Path:
    return write_video(root / "good.mp4", colour_frames(GOOD_FRAMES))


def _truncated(root: Path) -> Path:
    data = (root / "good.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    return root / "truncated.mp4"


def _truncated_faststart(root: Path) -> Path:
    """An interrupted download of a web video: the index (moov) first, the frames cut off."""
    full = write_video(root / "_faststart.mp4", colour_frames(120), container_options={"movflags": "+faststart"})
    data = full.read_bytes()
    full.unlink()
    (root / "truncated_faststart.mp4").write_bytes(data[: len(data) * 4 // 10])
    return root / "truncated_faststart.mp4"


def _corrupt(root: Path) -> Path:
    data = bytearray((root / "good.mp4").read_bytes())
    rng = np.random.default_rng(0)
    third = len(data) // 3
    data[third : 2 * third] = rng.integers(0, 256, third, dtype=np.uint8).tobytes()
    (root / "corrupt.mp4").write_bytes(bytes(data))
    return root / "corrupt.mp4"


def _empty(root: Path) -> Path:
    (root / "empty.mp4").write_bytes(b"")
    return root / "empty.mp4"


def _text(root: Path) -> Path:
    (root / "text.mp4").write_text("this is not a video, just a text file named .mp4\n" * 20)
    return root / "text.mp4"


def _html(root: Path) -> Path:
    (root / "html.mp4").write_text("<!DOCTYPE html>\n<html><body>403 Forbidden</body></html>\n")
    return root / "html.mp4"


def _random(root: Path) -> Path:
    (root / "random.mp4").write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    return root / "random.mp4"


def _audio_only(root: Path) -> Path:
    container = av.open(str(root / "audio_only.mp4"), "w")
    stream = container.add_stream("aac", rate=8000)
    samples = np.zeros((1, 1024), np.float32)
    for k in range(8):
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 8000, 1024 * k
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return root / "audio_only.mp4"


def _short(root: Path) -> Path:
    return write_video(root / "short.mp4", colour_frames(5))


def _one_frame(root: Path) -> Path:
    return write_video(root / "one_frame.mp4", colour_frames(1))


def _gray_video(root: Path) -> Path:
    frames = [solid(np.uint8(gray_level(k))) for k in range(GOOD_FRAMES)]
    return write_video(root / "gray8.mkv", frames, "ffv1", "gray", in_format="gray")


def _gray16_video(root: Path) -> Path:
    frames = [solid(np.uint16(gray_level(k) * 257)) for k in range(GOOD_FRAMES)]
    return write_video(root / "gray16.mkv", frames, "ffv1", "gray16le", in_format="gray16le")


def _rgba_video(root: Path) -> Path:
    frames = [solid(np.append(colour(k), np.uint8(70 + k))) for k in range(GOOD_FRAMES)]
    return write_video(root / "rgba_png.mov", frames, "png", "rgba", in_format="rgba")


def _rgba_ffv1(root: Path) -> Path:
    frames = [solid(np.append(colour(k), np.uint8(70 + k))) for k in range(GOOD_FRAMES)]
    return write_video(root / "rgba_ffv1.mkv", frames, "ffv1", "bgra", in_format="rgba")


def _rgb48_video(root: Path) -> Path:
    frames = [solid(colour(k).astype(np.uint16) * 257) for k in range(GOOD_FRAMES)]
    return write_video(root / "rgb48_png.mov", frames, "png", "rgb48be", in_format="rgb48le")


def _odd_video(root: Path) -> Path:
    return write_video(root / "odd_33x17.mkv", colour_frames(GOOD_FRAMES, 33, 17), "ffv1", "yuv444p")


def _odd_vp8(root: Path) -> Path:
    return write_video(
        root / "odd_33x17.webm", colour_frames(GOOD_FRAMES, 33, 17), "libvpx", "yuv420p", options={"crf": "4", "b": "0"}
    )


def _huge(root: Path) -> Path:
    return write_video(root / "huge_4096x2160.mp4", colour_frames(3, 4096, 2160))


def _vfr(root: Path) -> Path:
    steps = [40, 10, 200, 33, 1, 90]
    pts = np.concatenate([[0], np.cumsum([steps[k % len(steps)] for k in range(GOOD_FRAMES - 1)])]).tolist()
    return write_video(root / "vfr.mp4", colour_frames(GOOD_FRAMES), pts_ms=pts)


def _frames_gray(root: Path) -> Path:
    return write_frame_folder(root / "frames_gray", [Image.fromarray(solid(np.uint8(gray_level(k)))) for k in range(12)])


def _frames_rgba(root: Path) -> Path:
    images = [Image.fromarray(solid(np.append(colour(k), np.uint8(60 + k)))) for k in range(12)]
    return write_frame_folder(root / "frames_rgba", images)


def _frames_la(root: Path) -> Path:
    images = [Image.fromarray(solid(np.array([gray_level(k), 90], np.uint8))) for k in range(12)]
    return write_frame_folder(root / "frames_la", images)


def _frames_palette(root: Path) -> Path:
    images = [Image.fromarray(solid(colour(k))).convert("P", palette=Image.Palette.ADAPTIVE) for k in range(12)]
    return write_frame_folder(root / "frames_palette", images)


def _frames_cmyk(root: Path) -> Path:
    images = [Image.fromarray(solid(colour(k))).convert("CMYK") for k in range(12)]
    return write_frame_folder(root / "frames_cmyk", images, ext="jpg")


def _frames_16bit(root: Path) -> Path:
    images = [Image.fromarray(solid(np.uint16(gray_level(k) * 257))) for k in range(12)]
    assert images[0].mode.startswith("I;16")
    return write_frame_folder(root / "frames_gray16", images)


def _frames_rgb48(root: Path) -> Path:
    folder = root / "frames_rgb48"
    folder.mkdir()
    for k in range(12):
        write_png16(folder / f"{k:05d}.png", solid(colour(k).astype(np.uint16) * 257))
    return folder


def _frames_odd(root: Path) -> Path:
    return write_frame_folder(root / "frames_odd", [Image.fromarray(a) for a in colour_frames(12, 33, 17)], "jpg")


def _frames_corrupt(root: Path) -> Path:
    folder = write_frame_folder(root / "frames_corrupt", [Image.fromarray(a) for a in colour_frames(12)], "jpg")
    data = (folder / "00000.jpg").read_bytes()
    (folder / "00000.jpg").write_bytes(data[: len(data) // 3])  # a truncated JPEG
    (folder / "00006.jpg").write_bytes(b"not a jpeg")
    return folder


def _frames_unreadable(root: Path) -> Path:
    folder = write_frame_folder(root / "frames_unreadable", [Image.fromarray(a) for a in colour_frames(12)], "jpg")
    os.chmod(folder / "00000.jpg", 0)
    return folder


def _frames_empty(root: Path) -> Path:
    (root / "frames_empty").mkdir()
    (root / "frames_empty" / "notes.txt").write_text("no frames here")
    return root / "frames_empty"


def _frames_mixed_sizes(root: Path) -> Path:
    images = [Image.fromarray(a) for a in colour_frames(12)]
    images[5] = Image.fromarray(solid(colour(5), 32, 24))
    return write_frame_folder(root / "frames_mixed_sizes", images, "jpg")


def _rgb_of_gray(k: int) -> np.ndarray:
    return np.full(3, gray_level(k), np.uint8)


TOO_SHORT = "too short"  # reason of videos that decode but are shorter than a clip

CASES: list[Case] = [
    Case("good.mp4", "file", _good),
    Case("truncated.mp4", "file", _truncated, "error", reason=r"truncated or corrupt"),
    Case("truncated_faststart.mp4", "file", _truncated_faststart, "error",
         reason=r"truncated or corrupt: decoding stopped at frame \d+ of 120",
         decord_reason=r"truncated or corrupt: the file ends inside its 'mdat' box"),
    Case("corrupt.mp4", "file", _corrupt, "error", reason=r"truncated or corrupt"),
    Case("empty.mp4", "file", _empty, "error", reason=r"^empty file"),
    Case("text.mp4", "file", _text, "error", reason=r"^not a video file"),
    Case("html.mp4", "file", _html, "error", reason=r"^not a video file \(an HTML/XML page, often a failed download\)"),
    Case("random.mp4", "file", _random, "error", reason=r"^not a video file"),
    Case("audio_only.mp4", "file", _audio_only, "error", reason=r"no video stream"),
    Case("short.mp4", "file", _short, frames=5),
    Case("one_frame.mp4", "file", _one_frame, frames=1),
    Case("gray8.mkv", "file", _gray_video, expected_rgb=_rgb_of_gray, tolerance=2),
    Case("gray16.mkv", "file", _gray16_video, expected_rgb=_rgb_of_gray, tolerance=2, decord_may_fail=True),
    Case("rgba_png.mov", "file", _rgba_video, tolerance=2, decord_may_fail=True),
    Case("rgba_ffv1.mkv", "file", _rgba_ffv1, tolerance=2, decord_may_fail=True),
    Case("rgb48_png.mov", "file", _rgb48_video, tolerance=2, decord_may_fail=True),
    Case("odd_33x17.mkv", "file", _odd_video, size=(33, 17), tolerance=3),
    Case("odd_33x17.webm", "file", _odd_vp8, size=(33, 17), tolerance=12),
    Case("huge_4096x2160.mp4", "file", _huge, frames=3, size=(4096, 2160)),
    Case("vfr.mp4", "file", _vfr),
    Case("frames_gray", "frames", _frames_gray, frames=12, expected_rgb=_rgb_of_gray, tolerance=0),
    Case("frames_rgba", "frames", _frames_rgba, frames=12, tolerance=0),
    Case("frames_la", "frames", _frames_la, frames=12, expected_rgb=_rgb_of_gray, tolerance=0),
    Case("frames_palette", "frames", _frames_palette, frames=12, tolerance=12),
    Case("frames_cmyk", "frames", _frames_cmyk, frames=12, tolerance=8),
    Case("frames_gray16", "frames", _frames_16bit, frames=12, expected_rgb=_rgb_of_gray, tolerance=1),
    Case("frames_rgb48", "frames", _frames_rgb48, frames=12, tolerance=1),
    Case("frames_odd", "frames", _frames_odd, frames=12, size=(33, 17), tolerance=10),
    Case("frames_corrupt", "frames", _frames_corrupt, "error", frames=12, reason=r"00000\.jpg.*truncated"),
    Case("frames_unreadable", "frames", _frames_unreadable, "error", frames=12, reason=r"00000\.jpg.*permission denied"),
    Case("frames_empty", "frames", _frames_empty, "error", reason=r"no \.jpg/\.jpeg/\.png frames"),
    Case("frames_mixed_sizes", "frames", _frames_mixed_sizes, "error", frames=12, reason=r"00005\.jpg is 32x24"),
]
CASE_BY_NAME = {case.name: case for case in CASES}
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0  # chmod 000 does not stop root from reading


def write_corpus(root: Path, names: list[str] | None = None) -> dict[str, Path]:
    """Write the cases ``names`` (default: all) into ``root``; {name: path}."""
    root.mkdir(parents=True, exist_ok=True)
    wanted = set(names or CASE_BY_NAME)
    if wanted & {"truncated.mp4", "corrupt.mp4"}:
        wanted.add("good.mp4")
    return {case.name: case.write(root) for case in CASES if case.name in wanted}
