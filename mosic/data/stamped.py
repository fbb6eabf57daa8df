"""Videos whose frames carry their own index: the decode-accuracy corpus.

Frame k of a stamped video shows k as a coarse binary code, each bit a block of the frame
drawn white (1) or black (0) beside its complement, so :func:`read_stamp` tells which frame
a decoder returned, after lossy compression, resizing, or both. The rest of the frame is a
moving texture, so encoders really predict across frames (B-frames, long GOPs).

:func:`write_decode_corpus` writes the encodings users meet (H.264 with B-frames and a long or
an open GOP, variable frame rate, MPEG-4 Part 2 in AVI, an AVI whose header over-reports its
frame count, a Matroska file whose first packets cannot be decoded). Tests and
``benchmarks/decode_accuracy.py`` use it; nothing here needs a download.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

#: bits of the stamp (frames 0 .. 2**BITS - 1)
BITS = 10
_COLS = 5  # blocks per row; each bit takes two cells: the bit, then its complement
_ROWS = 2 * BITS // _COLS
_BAND = 0.5  # the stamp fills the top half of the frame


def _cell(row: int, col: int, height: int, width: int, margin: float = 0.0) -> tuple[slice, slice]:
    """Pixel rows/cols of stamp cell (row, col); ``margin`` (a fraction of the cell) is left out
    on each side, so that reading ignores edges blurred by compression or resizing."""
    ch, cw = height * _BAND / _ROWS, width / _COLS
    y0, y1 = int(round((row + margin) * ch)), int(round((row + 1 - margin) * ch))
    x0, x1 = int(round((col + margin) * cw)), int(round((col + 1 - margin) * cw))
    return slice(y0, max(y1, y0 + 1)), slice(x0, max(x1, x0 + 1))


def stamped_frame(index: int, height: int = 96, width: int = 160) -> np.ndarray:
    """(H, W, 3) uint8 RGB frame ``index``: its stamp over the top half, a moving texture below."""
    if not 0 <= index < 2**BITS:
        raise ValueError(f"a stamped frame index must be in [0, {2**BITS}), got {index}")
    frame = np.empty((height, width, 3), np.uint8)
    ys, xs = np.mgrid[0:height, 0:width]
    texture = 128 + 60 * np.sin((xs + 3 * index) / 5.0) * np.cos((ys - 2 * index) / 7.0)
    frame[:] = texture[..., None].astype(np.uint8)
    frame[..., 1] = (frame[..., 1].astype(np.int32) + 40 * index) % 256
    band = int(round(height * _BAND))
    frame[:band] = 128
    for bit in range(BITS):
        value = (index >> bit) & 1
        for offset, shade in ((0, value), (1, 1 - value)):
            cell = 2 * bit + offset
            rows, cols = _cell(cell // _COLS, cell % _COLS, height, width)
            frame[rows, cols] = 235 if shade else 20
    return frame


def read_stamp(frame: np.ndarray) -> int:
    """The index stamped on a (H, W, 3) or (3, H, W) frame (uint8 RGB, any size); -1 when a bit
    and its complement disagree (not a stamped frame, or one damaged beyond reading)."""
    frame = np.asarray(frame)
    if frame.ndim == 3 and frame.shape[0] == 3 and frame.shape[-1] != 3:
        frame = frame.transpose(1, 2, 0)
    gray = frame.astype(np.float32).mean(-1)
    height, width = gray.shape
    index = 0
    for bit in range(BITS):
        levels = []
        for offset in (0, 1):
            cell = 2 * bit + offset
            rows, cols = _cell(cell // _COLS, cell % _COLS, height, width, margin=0.25)
            levels.append(float(gray[rows, cols].mean()))
        if abs(levels[0] - levels[1]) < 60:
            return -1
        index |= int(levels[0] > levels[1]) << bit
    return index


def read_stamps(frames: np.ndarray) -> list[int]:
    """The stamped index of each frame of a (T, H, W, 3) or (T, 3, H, W) stack."""
    return [read_stamp(f) for f in np.asarray(frames)]


def write_stamped_video(
    path: str | os.PathLike,
    num_frames: int,
    codec: str = "libx264",
    *,
    size: tuple[int, int] = (96, 160),
    rate: int = 25,
    options: dict[str, str] | None = None,
    pts: list[int] | None = None,
    time_base: tuple[int, int] | None = None,
    pix_fmt: str = "yuv420p",
) -> Path:
    """Write frames 0 .. num_frames - 1 with PyAV; the container follows the suffix.

    Args:
        size: (height, width) in pixels.
        options: encoder options, e.g. ``{"x264-params": "keyint=120:bframes=3"}``.
        pts: presentation timestamp of each frame in ``time_base`` units (variable frame rate).
    """
    import av
    from fractions import Fraction

    path = Path(path)
    height, width = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if options:
            stream.options = dict(options)
        if time_base is not None:
            stream.codec_context.time_base = Fraction(*time_base)
            stream.time_base = Fraction(*time_base)
        for k in range(num_frames):
            frame = av.VideoFrame.from_ndarray(stamped_frame(k, height, width), format="rgb24")
            if pts is not None:
                frame.pts = pts[k]
                frame.time_base = Fraction(*time_base) if time_base else Fraction(1, rate)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _overreport_avi_frames(path: Path, factor: int = 2) -> None:
    """Multiply the frame counts an AVI's headers state (avih dwTotalFrames, strh dwLength)."""
    data = bytearray(path.read_bytes())
    avih = data.find(b"avih")
    total = avih + 8 + 16  # dwMicroSecPerFrame, dwMaxBytesPerSec, dwPaddingGranularity, dwFlags
    count = int.from_bytes(data[total : total + 4], "little")
    data[total : total + 4] = (count * factor).to_bytes(4, "little")
    strh = data.find(b"strh")
    length = strh + 8 + 32  # fccType, fccHandler, dwFlags, wPriority+wLanguage, dwInitialFrames, dwScale, dwRate, dwStart
    count = int.from_bytes(data[length : length + 4], "little")
    data[length : length + 4] = (count * factor).to_bytes(4, "little")
    path.write_bytes(bytes(data))


def _drop_first_packets(source: Path, out: Path, keep_from: int) -> None:
    """Remux ``source`` into ``out`` without its first ``keep_from`` packets (decode order), so the
    new file starts on packets that reference frames it no longer holds."""
    import av

    with av.open(str(source)) as inp, av.open(str(out), "w") as output:
        stream_in = inp.streams.video[0]
        stream_out = output.add_stream_from_template(stream_in)
        for k, packet in enumerate(inp.demux(stream_in)):
            if packet.size == 0 or k < keep_from:
                continue
            packet.stream = stream_out
            output.mux(packet)


#: name -> (file name, what it exercises)
CORPUS = {
    "h264-bframes-long-gop": ("h264_bframes_gop120.mp4", "H.264, 3 B-frames, closed 120-frame GOP, MP4"),
    "h264-open-gop": ("h264_open_gop.mp4", "H.264, 3 B-frames, open 40-frame GOP, MP4"),
    "h264-vfr": ("h264_vfr.mkv", "H.264, B-frames, variable frame rate (irregular timestamps), Matroska"),
    "mpeg4-avi": ("mpeg4_bframes.avi", "MPEG-4 Part 2 with 2 B-frames in AVI (no presentation timestamps)"),
    "avi-overreported": ("mpeg4_overreported.avi", "MPEG-4 Part 2 AVI whose headers state twice its frames"),
    "h264-undecodable-start": ("h264_cut_start.mkv", "H.264 whose first packets reference frames cut away, Matroska"),
}


def write_decode_corpus(folder: str | os.PathLike, num_frames: int = 240, size: tuple[int, int] = (96, 160)) -> dict[str, Path]:
    """Write the :data:`CORPUS` files into ``folder``; name -> path. Frame k of each shows k
    (``h264-undecodable-start``: its first decodable frame shows a later index)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {name: folder / file for name, (file, _) in CORPUS.items()}
    long_gop = {"x264-params": "keyint=120:min-keyint=120:bframes=3:scenecut=0", "preset": "veryfast"}
    write_stamped_video(files["h264-bframes-long-gop"], num_frames, size=size, options=long_gop)
    write_stamped_video(
        files["h264-open-gop"], num_frames, size=size,
        options={"x264-params": "keyint=40:min-keyint=40:bframes=3:open-gop=1:scenecut=0", "preset": "veryfast"},
    )
    rng = np.random.default_rng(0)
    steps = rng.choice([20, 33, 40, 80], size=num_frames)  # milliseconds between frames
    vfr_pts = np.concatenate([[0], np.cumsum(steps)[:-1]]).astype(int).tolist()
    write_stamped_video(
        files["h264-vfr"], num_frames, size=size, pts=vfr_pts, time_base=(1, 1000),
        options={"x264-params": "keyint=60:bframes=2:scenecut=0", "preset": "veryfast"},
    )
    mpeg4 = {"bf": "2", "g": "60", "qscale": "3"}
    write_stamped_video(files["mpeg4-avi"], num_frames, codec="mpeg4", size=size, options=mpeg4)
    write_stamped_video(files["avi-overreported"], num_frames, codec="mpeg4", size=size, options=mpeg4)
    _overreport_avi_frames(files["avi-overreported"])
    whole = folder / "_h264_whole.mkv"
    write_stamped_video(
        whole, num_frames, size=size,
        options={"x264-params": "keyint=30:min-keyint=30:bframes=3:scenecut=0", "preset": "veryfast"},
    )
    _drop_first_packets(whole, files["h264-undecodable-start"], keep_from=2)
    whole.unlink()
    return files


def reference_stamps(path: str | os.PathLike) -> list[int]:
    """The stamps of every frame that decodes, in order, by one sequential PyAV pass: what frame
    k of the file is, for every backend to match."""
    import av

    with av.open(os.fspath(path)) as container:
        stream = container.streams.video[0]
        return [read_stamp(f.to_ndarray(format="rgb24")) for f in container.decode(stream)]


def audit_backend(
    path: str | os.PathLike,
    backend: str,
    *,
    clips: int = 40,
    num_frames: int = 12,
    stride: int = 6,
    seed: int = 0,
    reference: list[int] | None = None,
) -> dict:
    """Random strided clips of a stamped video read through ``VideoFileSource(backend=...)``, each
    clip's indices in shuffled order, alternating new and reused readers; every returned frame
    is compared with :func:`reference_stamps`.

    Returns ``{"count": frames the backend reports, "expected": frames that decode, "reads":
    frames read, "wrong": [(asked, expected stamp, got stamp), ...], "ms_per_clip": float}``.
    """
    import time

    from .video_files import VideoFileSource

    reference = reference_stamps(path) if reference is None else reference
    rng = np.random.default_rng(seed)
    source = VideoFileSource([path], backend=backend)
    count = source.num_frames(0)
    span = stride * (num_frames - 1) + 1
    wrong, reads, seconds = [], 0, 0.0
    for clip in range(clips):
        if clip % 2:
            source = VideoFileSource([path], backend=backend)  # a new reader: nothing decoded before
        start = int(rng.integers(0, max(1, min(count, len(reference)) - span + 1)))
        asked = [int(i) for i in rng.permutation([start + stride * k for k in range(num_frames)])]
        began = time.perf_counter()
        frames = source.read_frames(0, asked)
        seconds += time.perf_counter() - began
        for k, got in zip(asked, read_stamps(frames)):
            reads += 1
            want = reference[k] if k < len(reference) else -1
            if got != want:
                wrong.append((k, want, got))
    return {"count": count, "expected": len(reference), "reads": reads, "wrong": wrong, "ms_per_clip": 1000 * seconds / clips}
