"""Video sources on disk: video files, folders of frames, and whatever mix users pass.

:class:`VideoFileSource` decodes video files with PyAV, torchcodec or decord (frame k is always
the k-th frame that decodes; only PyAV and torchcodec are exact on every file of the
decode-accuracy corpus, :mod:`mosic.data.stamped`, so ``auto`` never picks decord), :class:`FrameFolderSource`
reads folders of JPEG/PNG frames (YouTube-VOS / DAVIS ``JPEGImages``), :class:`ConcatSource`
chains sources, and :func:`open_videos` turns a path, a folder, a dataset root or a list of
those into one :class:`~mosic.data.source.VideoSource`.

Sources are picklable and are pickled to DataLoader workers: decoders are opened lazily in
the process that reads and never travel in pickled state (nor survive a fork).
"""

from __future__ import annotations

import bisect
import hashlib
import os
import re
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Iterable, Iterator, Sequence, Union

import numpy as np

from .source import GroundTruth, VideoSource, decoder_name

VIDEO_EXTENSIONS = (
    ".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ogv", ".3gp",
)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
BACKENDS = ("auto", "pyav", "torchcodec", "decord")

PathLike = Union[str, "os.PathLike[str]"]

from ..errors import VideoReadError  # noqa: E402  (re-exported: mosic.data.readers.VideoReadError)


def _natural_key(name: str) -> tuple[list, str]:
    """Sort key ordering ``frame2`` before ``frame10``; the name itself breaks ties."""
    parts = re.split(r"([0-9]+)", name)
    return [int(p) if i % 2 else p.lower() for i, p in enumerate(parts)], name


def _check_indices(frame_indices: Sequence[int], num_frames: int, name: str) -> np.ndarray:
    """(T,) int64 frame indices, each in [0, num_frames)."""
    idx = np.asarray(frame_indices)
    if idx.ndim != 1 or idx.size == 0:
        raise ValueError(f"frame_indices must be a non-empty 1-D sequence, got shape {idx.shape}")
    if idx.dtype.kind not in "iu":
        raise TypeError(f"frame_indices must be integers, got dtype {idx.dtype}")
    bad = idx[(idx < 0) | (idx >= num_frames)]
    if bad.size:
        raise IndexError(
            f"frame index {int(bad[0])} is out of range for video {name}, which has "
            f"{num_frames} frames (valid indices 0..{num_frames - 1})"
        )
    return idx.astype(np.int64)


def file_sha256(path: PathLike) -> str:
    """sha256 hex digest of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _short_error(error: Exception) -> str:
    """First line of a backend error, without decord's ``[hh:mm:ss] file.cc:123:`` prefixes."""
    lines = str(error).strip().splitlines()
    line = lines[0] if lines else type(error).__name__
    return re.sub(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ", "", line).strip()


# ----------------------------------------------------------------------------- diagnosis

#: (test on the first bytes, container name) of the formats FFmpeg reads video from
_CONTAINER_SIGNATURES = (
    (lambda h: h[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot"), "MP4/MOV"),
    (lambda h: h.startswith(b"\x1a\x45\xdf\xa3"), "Matroska/WebM"),
    (lambda h: h.startswith(b"RIFF") and h[8:12] == b"AVI ", "AVI"),
    (lambda h: h.startswith(b"OggS"), "Ogg"),
    (lambda h: h.startswith(b"FLV"), "FLV"),
    (lambda h: h.startswith((b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3")), "MPEG program stream"),
    (lambda h: len(h) > 188 and h[0] == 0x47 and h[188] == 0x47, "MPEG transport stream"),
    (lambda h: h.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"), "ASF/WMV"),
    (lambda h: h.startswith((b"\x00\x00\x00\x01", b"\x00\x00\x01")), "raw H.264/HEVC stream"),
)
_OTHER_SIGNATURES = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG", "a PNG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a zip archive"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"ID3", "an MP3 audio file"),
    (b"fLaC", "a FLAC audio file"),
)


def _what_it_looks_like(head: bytes) -> str:
    """A few words on what a non-video file seems to be, from its first bytes."""
    for magic, what in _OTHER_SIGNATURES:
        if head.startswith(magic):
            return what
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        return "an HTML/XML page, often a failed download"
    try:
        head.decode("utf-8")
        return "it looks like text"
    except UnicodeDecodeError as error:
        if error.start >= len(head) - 4 and error.start > 0:  # a character cut by the 512-byte window
            return "it looks like text"
    return "no known video container signature"


def _mp4_layout_problem(path: str, size: int) -> str | None:
    """Why an MP4/MOV file cannot be parsed, from its top-level boxes; None when they look fine."""
    boxes, offset = set(), 0
    try:
        with open(path, "rb") as f:
            while offset + 8 <= size:
                f.seek(offset)
                header = f.read(16)
                box_size, kind = int.from_bytes(header[:4], "big"), header[4:8].decode("latin-1")
                if box_size == 1 and len(header) == 16:
                    box_size = int.from_bytes(header[8:16], "big")
                elif box_size == 0:  # the box runs to the end of the file
                    box_size = size - offset
                if box_size < 8:
                    return f"its box structure is broken at byte {offset}"
                boxes.add(kind)
                if offset + box_size > size:
                    missing = "" if "moov" in boxes else "; its index ('moov' box) is missing"
                    return f"the file ends inside its '{kind}' box, at byte {size} of {offset + box_size}{missing}"
                offset += box_size
    except OSError:
        return None
    return None if "moov" in boxes else "its index ('moov' box) is missing"


def _diagnose(path: str, detail: str) -> str:
    """A reason a user understands for a file a decoder could not open.

    Distinguishes empty files, files that are not videos at all (text, HTML error pages,
    images) and damaged videos ("truncated or corrupt: ..."); ``detail`` is the decoder's
    own message, appended for damaged videos.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(512)
    except FileNotFoundError:
        return "the file does not exist (any more)"
    except PermissionError:
        return "permission denied"
    except OSError as error:
        return f"the file cannot be read ({error.strerror or error})"
    if size == 0:
        return "empty file (0 bytes)"
    container = next((name for test, name in _CONTAINER_SIGNATURES if test(head)), None)
    if container is None:
        return f"not a video file ({_what_it_looks_like(head)})"
    problem = _mp4_layout_problem(path, size) if container == "MP4/MOV" else None
    detail = f" ({detail})" if detail else ""
    if problem is not None:
        return f"truncated or corrupt: {problem}{detail}"
    return f"truncated or corrupt: {container} data that the decoder cannot open{detail}"


def _ffmpeg_detail(error: Exception) -> str:
    """FFmpeg's message without the errno and the file name PyAV adds."""
    detail = getattr(error, "strerror", None)
    return str(detail) if detail else _short_error(error)


def _decord_detail(error: Exception) -> str:
    """decord's message without its ``Check failed: expr (a vs. b)`` and ``Error reading path`` noise."""
    line = _short_error(error)
    checked = re.search(r"\(-?\d+ vs\. -?\d+\)\s*(.*)$", line)
    if line.startswith("Check failed") and checked:
        line = checked.group(1)
    line = re.sub(r"^(Thread worker: |ERROR |Error: )", "", line).strip().rstrip(".")
    return "" if line.startswith("Error reading ") else line


# ----------------------------------------------------------------------------- backends


class DecordBackend:
    """Decodes with decord, opening the file for each call.

    Readers are never cached: a decord reader alive when a DataLoader forks its workers
    crashes the worker that releases it.
    """

    name = "decord"

    def __init__(self) -> None:
        self._quiet()  # fails early when decord is missing

    @staticmethod
    def _quiet() -> None:
        """Silence decord's FFmpeg, which prints lines of its own for every broken file ("moov
        atom not found", ...): what went wrong reaches the user once, as a VideoReadError."""
        import decord

        decord.logging.set_level(decord.logging.QUIET)

    def __getstate__(self) -> dict:
        return {"quiet": True}

    def __setstate__(self, state: dict) -> None:  # in a spawned DataLoader worker
        self._quiet()

    @staticmethod
    def _open(path: str):
        import decord

        if os.path.isfile(path) and os.path.getsize(path) == 0:  # decord would print an error line of its own
            raise VideoReadError(path, "empty file (0 bytes)")
        try:
            return decord.VideoReader(path, ctx=decord.cpu(0))
        except (decord.DECORDError, RuntimeError, OSError) as error:
            detail = _decord_detail(error)
            if "cannot find video stream" in detail:
                raise VideoReadError(path, "it has no video stream") from error
            raise VideoReadError(path, _diagnose(path, detail)) from error

    def probe(self, path: str) -> tuple[int, float | None]:
        """(number of frames, fps or None)."""
        reader = self._open(path)
        fps = float(reader.get_avg_fps())
        return len(reader), fps if fps > 0 else None

    def read(self, path: str, indices: np.ndarray) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB frames at sorted unique in-range ``indices`` (T,)."""
        return self._get_batch(self._open(path), path, indices)

    @staticmethod
    def _get_batch(reader, path: str, indices: np.ndarray) -> np.ndarray:
        import decord

        try:
            batch = reader.get_batch(indices.tolist())
        except (decord.DECORDError, RuntimeError) as error:
            frames = f"frame {indices[0]}" if len(indices) == 1 else f"{len(indices)} frames in {indices[0]}..{indices[-1]}"
            raise VideoReadError(
                path,
                f"truncated or corrupt: decord failed to decode {frames} ({_decord_detail(error)}); "
                "backend='pyav' may read it",
            ) from error
        # A global decord.bridge.set_bridge("torch") makes get_batch return tensors.
        return batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)

    def verify(self, path: str, chunk: int = 16) -> int:
        """Decode every frame (slow); the number of frames. Raises :class:`VideoReadError`."""
        reader = self._open(path)
        count = len(reader)
        for start in range(0, count, chunk):
            self._get_batch(reader, path, np.arange(start, min(count, start + chunk)))
        return count


@dataclass(frozen=True)
class _PacketIndex:
    """Presentation timestamps of a stream's frames, found by demuxing (no decoding).

    Attributes:
        pts: (N,) int64, frame k's timestamp is ``pts[k]`` (sorted, unique).
        seek_ts: (N,) int64, timestamp to seek to for frame k: min(pts, dts) of its packet, as
            demuxers index by either.
        keyframes: (K,) int64 sorted frame indices of keyframes, starting with 0.
    """

    pts: np.ndarray
    seek_ts: np.ndarray
    keyframes: np.ndarray

    def frame_of(self, pts: int | None) -> int:
        """The frame index with timestamp ``pts``, -1 if none."""
        if pts is None:
            return -1
        k = int(np.searchsorted(self.pts, pts))
        return k if k < len(self.pts) and self.pts[k] == pts else -1


class PyAVBackend:
    """Decodes with PyAV (bundled FFmpeg).

    Frame k is the k-th frame the decoder outputs (presentation order). Its timestamp comes
    from demuxing the file's packets once, so seeking never converts indices to time and
    variable frame rates are safe: a read seeks to the keyframe at or before each wanted
    frame it cannot reach by decoding forward. Files without usable packet timestamps (raw
    streams), whose packet count disagrees with what decodes, or where seeking misses frames
    are read sequentially from the start instead; their frame count is found by decoding once.
    """

    name = "pyav"
    _INDEX_CACHE = 64

    def __init__(self) -> None:
        import av  # noqa: F401

        self._sequential: set[str] = set()  # files read from the start; plain data, pickled
        self._indexes: OrderedDict[str, _PacketIndex] = OrderedDict()  # per-process LRU

    def __getstate__(self) -> dict:
        return {"_sequential": self._sequential}

    def __setstate__(self, state: dict) -> None:
        self._sequential = state["_sequential"]
        self._indexes = OrderedDict()

    @contextmanager
    def _container(self, path: str) -> Iterator[tuple[object, object]]:
        """(container, first video stream); FFmpeg errors become :class:`VideoReadError`."""
        import av

        try:
            container = av.open(path, metadata_errors="ignore")
        except (av.FFmpegError, UnicodeDecodeError, OSError) as error:
            raise VideoReadError(path, _diagnose(path, _ffmpeg_detail(error))) from error
        try:
            if not container.streams.video:
                raise VideoReadError(path, "it has no video stream")
            yield container, container.streams.video[0]
        except av.FFmpegError as error:
            raise VideoReadError(path, f"truncated or corrupt: decoding failed ({_ffmpeg_detail(error)})") from error
        finally:
            container.close()

    @staticmethod
    def _frames(path: str, container, stream, expected: int | None = None) -> Iterator[object]:
        """The stream's frames in decode order; a decoding error becomes :class:`VideoReadError`
        saying where decoding stopped (of ``expected`` frames, when known)."""
        import av

        position = 0
        try:
            for frame in container.decode(stream):
                yield frame
                position += 1
        except av.FFmpegError as error:
            of = f" of {expected}" if expected else ""
            raise VideoReadError(
                path, f"truncated or corrupt: decoding stopped at frame {position}{of} ({_ffmpeg_detail(error)})"
            ) from error

    @staticmethod
    def _demux(container, stream) -> tuple[_PacketIndex | None, int]:
        """(the stream's packet index, or None when timestamps are missing or repeated; the
        number of packets the file holds, frames to be discarded included)."""
        pts, seek_ts, key, packets, usable = [], [], [], 0, True
        for packet in container.demux(stream):
            if packet.size == 0 and packet.pts is None and packet.dts is None:
                continue  # the flush packet demuxing ends with
            packets += 1
            if not usable or packet.size == 0 or packet.is_discard:
                continue
            if packet.pts is None:
                usable = False
                continue
            pts.append(packet.pts)
            seek_ts.append(packet.pts if packet.dts is None else min(packet.pts, packet.dts))
            key.append(packet.is_keyframe)
        order = np.argsort(np.asarray(pts, np.int64), kind="stable")
        sorted_pts = np.asarray(pts, np.int64)[order]
        if not usable or (np.diff(sorted_pts) == 0).any():
            return None, packets
        keyframes = np.union1d([0], np.flatnonzero(np.asarray(key, bool)[order])).astype(np.int64)
        return _PacketIndex(sorted_pts, np.asarray(seek_ts, np.int64)[order], keyframes), packets

    def _index(self, path: str, container, stream) -> tuple[_PacketIndex | None, int]:
        """The packet index of the frames that decode: :meth:`_demux`'s, less the frames before
        the first one the decoder outputs (a file whose first packets reference frames it
        does not hold, e.g. one cut out of a longer stream, starts decoding at a later
        keyframe; output is in presentation order, so nothing before that frame ever comes)."""
        index, packets = self._demux(container, stream)
        if index is None:
            return None, packets
        first = None
        with self._container(path) as (fresh, fresh_stream):
            for first in self._frames(path, fresh, fresh_stream):
                break
        if first is None or first.pts is None:
            return None, packets
        if first.pts == index.pts[0]:
            return index, packets
        keep = index.pts >= first.pts
        if not keep.any() or index.frame_of(first.pts) < 0:
            return None, packets
        offset = int(np.argmax(keep))
        keyframes = np.union1d([0], index.keyframes[index.keyframes >= offset] - offset).astype(np.int64)
        return _PacketIndex(index.pts[keep], index.seek_ts[keep], keyframes), packets

    def _count_decoded(self, path: str, expected: int | None = None) -> int:
        with self._container(path) as (container, stream):
            return sum(1 for _ in self._frames(path, container, stream, expected))

    def _remember(self, path: str, index: _PacketIndex) -> None:
        self._indexes[path] = index
        self._indexes.move_to_end(path)
        if len(self._indexes) > self._INDEX_CACHE:
            self._indexes.popitem(last=False)

    def probe(self, path: str) -> tuple[int, float | None]:
        """(number of frames, fps or None); verified by decoding when the metadata disagree.

        An MP4/MOV file whose sample table lists more frames than the file holds was cut
        off (an interrupted download or recording): :class:`VideoReadError`.
        """
        with self._container(path) as (container, stream):
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else None
            header_count = stream.frames
            index, packets = self._index(path, container, stream)
            mp4 = any(name in container.format.name.split(",") for name in ("mov", "mp4"))
        if index is not None and header_count in (0, len(index.pts)):
            self._remember(path, index)
            return len(index.pts), fps
        expected = header_count or (len(index.pts) if index is not None else None)
        count = self._count_decoded(path, expected)
        if mp4 and packets < header_count:
            raise VideoReadError(
                path, f"truncated or corrupt: decoding stopped at frame {count} of {header_count} (the file is cut off)"
            )
        if index is not None and count == len(index.pts):
            self._remember(path, index)
        else:
            self._sequential.add(path)
        return count, fps

    def read(self, path: str, indices: np.ndarray) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB frames at sorted unique in-range ``indices`` (T,)."""
        if path not in self._sequential:
            index = self._indexes.get(path)
            if index is None:
                with self._container(path) as (container, stream):
                    index, _ = self._index(path, container, stream)
            if index is not None:
                self._remember(path, index)
                frames = self._read_seeking(path, index, indices)
                if frames is not None:
                    return frames
            self._sequential.add(path)
        return self._read_sequential(path, indices)

    def _read_seeking(self, path: str, index: _PacketIndex, indices: np.ndarray) -> np.ndarray | None:
        """Frames via keyframe seeks, or None when the decoder does not yield them all.

        From a keyframe on, the decoder must output frames whose timestamps are consecutive in
        the index; anything else (e.g. AVI, which stores no presentation timestamps, holding
        B-frames) means the timestamps cannot be trusted and the caller reads sequentially.
        """
        import av

        frames = []
        with self._container(path) as (container, stream):
            decoded, position = None, -1
            try:
                for target in indices:
                    keyframe = int(index.keyframes[np.searchsorted(index.keyframes, target, "right") - 1])
                    if decoded is None or keyframe > position:
                        seek_ts = int(index.seek_ts[keyframe])
                        container.seek(seek_ts, stream=stream, backward=True, any_frame=False)
                        decoded, position = container.decode(stream), None
                    found = None
                    for frame in decoded:
                        previous, position = position, index.frame_of(frame.pts)
                        if position < 0 or (previous is not None and position != previous + 1):
                            return None
                        if position >= target:
                            found = frame if position == target else None
                            break
                    if found is None:
                        return None
                    frames.append(_rgb(found, stream))
            except av.FFmpegError:  # seeking unsupported, or a bad keyframe flag: read sequentially
                return None
        return np.stack(frames)

    def _read_sequential(self, path: str, indices: np.ndarray) -> np.ndarray:
        """Frames by decoding from the start and counting."""
        frames, wanted, position = [], iter(indices.tolist()), -1
        target = next(wanted)
        with self._container(path) as (container, stream):
            for position, frame in enumerate(self._frames(path, container, stream, stream.frames or None)):
                if position == target:
                    frames.append(_rgb(frame, stream))
                    target = next(wanted, None)
                    if target is None:
                        return np.stack(frames)
        raise VideoReadError(
            path, f"truncated or corrupt: frame {target} was requested but only {position + 1} frames decode"
        )

    def verify(self, path: str) -> int:
        """Decode every frame (slow); the number of frames. Raises :class:`VideoReadError`."""
        with self._container(path) as (container, stream):
            expected = stream.frames or None
            count = 0
            for frame in self._frames(path, container, stream, expected):
                _rgb(frame, stream)
                count += 1
        return count


def _rgb(frame, stream) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a PyAV frame of any pixel format, at the stream's frame size."""
    width = stream.codec_context.width or frame.width
    height = stream.codec_context.height or frame.height
    return frame.reformat(width=width, height=height, format="rgb24").to_ndarray()


class TorchCodecBackend:
    """Decodes with torchcodec (PyTorch's decoder, ``seek_mode="exact"``: a scan of the file's
    packets indexes every frame, then reads seek to the keyframe before each frame).

    torchcodec numbers packets, not decoded frames, and trusts the container's timestamps. On
    the decode-accuracy corpus that is wrong in two cases, which this backend therefore hands
    to :class:`PyAVBackend`: AVI files with B-frames (torchcodec returns frame k - 1) and
    files whose first packets do not decode (it counts frames that never come out). So files
    go to torchcodec only when they are not AVI, PyAV's index of their decodable frames has
    trustworthy timestamps, and torchcodec counts the same number of frames.
    torchcodec needs FFmpeg's shared libraries (4 to 9) on the system.
    """

    name = "torchcodec"

    def __init__(self) -> None:
        from torchcodec.decoders import VideoDecoder  # noqa: F401 - fails early when unusable

        self._pyav = PyAVBackend()
        self._delegated: set[str] = set()  # files read by PyAV instead; plain data, pickled

    def __getstate__(self) -> dict:
        return {"pyav": self._pyav, "delegated": self._delegated}

    def __setstate__(self, state: dict) -> None:
        self._pyav, self._delegated = state["pyav"], state["delegated"]

    def _decoder(self, path: str):
        from torchcodec.decoders import VideoDecoder

        try:
            return VideoDecoder(path, seek_mode="exact", dimension_order="NHWC", device="cpu")
        except (RuntimeError, ValueError) as error:
            raise VideoReadError(path, _diagnose(path, _short_error(error))) from error

    def _trusted(self, path: str) -> bool:
        """Whether torchcodec's frame k is the k-th decoded frame of ``path`` (see the class doc)."""
        if path.lower().endswith(".avi"):
            return False
        with self._pyav._container(path) as (container, stream):
            index, _ = self._pyav._index(path, container, stream)  # decodable frames only
        return index is not None and self._decoder(path).metadata.num_frames == len(index.pts)

    def probe(self, path: str) -> tuple[int, float | None]:
        """(number of frames, fps or None)."""
        try:
            if path not in self._delegated and self._trusted(path):
                metadata = self._decoder(path).metadata
                fps = metadata.average_fps
                return int(metadata.num_frames), float(fps) if fps else None
        except VideoReadError:
            pass  # PyAV's reason, if it fails too, is the one raised
        self._delegated.add(path)
        return self._pyav.probe(path)

    def read(self, path: str, indices: np.ndarray) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB frames at sorted unique in-range ``indices`` (T,); a file
        torchcodec cannot decode is read by PyAV, whose error, if it fails too, is raised."""
        if path not in self._delegated:
            try:
                frames = self._decoder(path).get_frames_at(indices.tolist()).data.numpy()
            except (VideoReadError, RuntimeError, IndexError):
                pass
            else:
                if frames.ndim == 4 and frames.shape[-1] == 3 and len(frames) == len(indices):
                    return frames
        return self._pyav.read(path, indices)

    def verify(self, path: str) -> int:
        """Decode every frame (slow); the number of frames. Raises :class:`VideoReadError`."""
        return self._pyav.verify(path)


def make_backend(name: str = "auto") -> DecordBackend | PyAVBackend | TorchCodecBackend:
    """A decoding backend: "pyav", "torchcodec", "decord", or "auto" (PyAV).

    PyAV and torchcodec are exact on every file of the decode-accuracy corpus
    (:mod:`mosic.data.stamped`; torchcodec hands AVI files and files with undecodable first
    packets to PyAV) and decode 480p H.264 clips at about the same CPU cost, so ``auto`` is
    PyAV, which needs nothing beyond its wheel; torchcodec also needs FFmpeg's shared
    libraries (4 to 9). decord returns wrong frames on random access into open-GOP H.264,
    AVI with B-frames and files whose first packets do not decode, so it is used only when
    asked for, with a warning. docs/data.md has the table.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown video backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name in ("auto", "pyav"):
        return PyAVBackend()
    if name == "torchcodec":
        try:
            return TorchCodecBackend()
        except (ImportError, RuntimeError, OSError) as error:
            raise ImportError(
                "backend='torchcodec' needs the torchcodec package (pip install torchcodec) and FFmpeg's "
                f"shared libraries, versions 4 to 9 (e.g. apt-get install ffmpeg); or use backend='pyav' ({_short_error(error)})"
            ) from error
    try:
        backend = DecordBackend()
    except ImportError as error:
        raise ImportError(
            "backend='decord' needs the decord package (pip install decord; it has no wheels for "
            "macOS arm64), or use backend='pyav'"
        ) from error
    warnings.warn(
        "backend='decord' returns wrong frames on random access into some files (open-GOP H.264, AVI "
        "with B-frames, files whose first packets do not decode; dmlc/decord #54 #195 #365): the tracks "
        "may not belong to the frames trained on. backend='pyav' or 'torchcodec' are exact",
        InexactDecoderWarning,
        stacklevel=3,
    )
    return backend


def available_backends() -> list[str]:
    """The backends that load here ("pyav" always; "torchcodec" with its FFmpeg libraries; "decord")."""
    usable = []
    for name, cls in (("pyav", PyAVBackend), ("torchcodec", TorchCodecBackend), ("decord", DecordBackend)):
        try:
            cls()
        except (ImportError, RuntimeError, OSError):
            continue
        usable.append(name)
    return usable


class InexactDecoderWarning(UserWarning):
    """The chosen video decoder is known to return wrong frames on some files."""


# ----------------------------------------------------------------------------- sources


class VideoFileSource:
    """Video files (mp4, avi, mkv, webm, mov, ...), in the order given.

    Frame k of a file is the k-th frame that decodes, whatever the backend, and
    ``num_frames`` counts the frames that really decode (not what the container's header says).

    Args:
        paths: the video files; ``video_name`` is the path as given.
        backend: "auto" (= "pyav"), "pyav", "torchcodec" or "decord"; see :func:`make_backend`.
        decode_timeout: seconds one probe or read may take; past it the decoder (run in a
            child process, see :mod:`mosic.data.watchdog`) is killed and
            :class:`~mosic.data.watchdog.DecodeTimeoutError` (a VideoReadError) raised, so a
            hung decoder skips a video instead of stopping a run. None decodes in-process
            (no hang protection, no per-call hand-over).

    Files that cannot be opened or decoded raise :class:`VideoReadError` with a reason
    ("empty file (0 bytes)", "not a video file (...)", "truncated or corrupt: ...", "it has
    no video stream"); whatever the pixel format (gray, RGBA, 10/16-bit, ...), frames come
    back as 8-bit RGB.
    """

    def __init__(self, paths: Iterable[PathLike], backend: str = "auto", decode_timeout: float | None = None):
        self.paths = [os.fspath(p) for p in paths]
        if not self.paths:
            raise ValueError("VideoFileSource needs at least one video file")
        missing = [p for p in self.paths if not os.path.isfile(p)]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise FileNotFoundError(f"video file does not exist: {missing[0]}{more}")
        self.backend = make_backend(backend)
        self.decode_timeout = decode_timeout
        self._watchdog = None
        if decode_timeout is not None:
            from .watchdog import DecodeWatchdog

            self._watchdog = DecodeWatchdog(self.backend, decode_timeout)
        self._info: list[tuple[int, float | None] | None] = [None] * len(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def _call(self, index: int, method: str, *args, timeout: float | None = None):
        """``backend.method(path, *args)``, through the watchdog when there is one."""
        if self._watchdog is None:
            return getattr(self.backend, method)(self.paths[index], *args)
        return self._watchdog.call(method, self.paths[index], *args, timeout=timeout)

    def decoder_name(self, index: int) -> str:
        """The backend that reads video ``index``."""
        return self.backend.name

    def content_fingerprint(self, index: int) -> str:
        """sha256 of the file's size and bytes: what the track cache checks a video by (it does
        not depend on how, or in what order, anything was decoded)."""
        path = self.paths[index]
        try:
            return hashlib.sha256(f"{os.path.getsize(path)}|{file_sha256(path)}".encode()).hexdigest()
        except OSError as error:
            raise VideoReadError(path, f"the file cannot be read ({_os_error(error)})") from error

    def _probe(self, index: int) -> tuple[int, float | None]:
        if self._info[index] is None:
            count, fps = self._call(index, "probe")
            if count <= 0:
                raise VideoReadError(self.paths[index], "it contains no video frames")
            self._info[index] = (count, fps)
        return self._info[index]

    def video_name(self, index: int) -> str:
        return self.paths[index]

    def num_frames(self, index: int) -> int:
        return self._probe(index)[0]

    def fps(self, index: int) -> float | None:
        return self._probe(index)[1]

    def read_frames(self, index: int, frame_indices: Sequence[int]) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB frames at ``frame_indices`` (any order, repeats allowed)."""
        idx = _check_indices(frame_indices, self.num_frames(index), self.paths[index])
        unique, inverse = np.unique(idx, return_inverse=True)
        return self._call(index, "read", unique)[inverse]

    def verify(self, index: int) -> int:
        """Decode every frame of video ``index`` (slow: ``mosic check-data --full``); its frame
        count. Raises :class:`VideoReadError` when any frame fails."""
        expected = self.num_frames(index)
        timeout = None if self.decode_timeout is None else self.decode_timeout * max(1.0, expected / 16)
        count = self._call(index, "verify", timeout=timeout)
        if count < expected:
            raise VideoReadError(self.paths[index], f"truncated or corrupt: only {count} of {expected} frames decode")
        return count

    def ground_truth(self, index: int) -> GroundTruth | None:
        return None


def _image_files(folder: PathLike) -> list[str]:
    """Names of the JPEG/PNG files in ``folder``, in natural order (hidden files skipped)."""
    with os.scandir(folder) as entries:
        return sorted((e.name for e in entries if _is_image(e)), key=_natural_key)


def _has_images(folder: PathLike) -> bool:
    with os.scandir(folder) as entries:
        return any(_is_image(e) for e in entries)


def _is_image(entry: os.DirEntry) -> bool:
    name = entry.name
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS) and entry.is_file()


class FrameFolderSource:
    """Videos stored as folders of JPEG/PNG frames in natural filename order (00000.jpg, ...).

    Frames of any mode come back as 8-bit RGB: gray (L, LA, 1) is repeated into three equal
    channels, alpha is dropped (not composited), palette and CMYK are converted, and 16-bit
    frames (I;16 gray, 48-bit RGB) are scaled from 0..65535 to 0..255. An empty or unreadable
    folder, or a frame that cannot be decoded or whose size differs from the others, raises
    :class:`VideoReadError`.

    Args:
        dirs: one folder per video; ``video_name`` is the folder's name (the dataset's video id).
    """

    def __init__(self, dirs: Iterable[PathLike]):
        self.dirs = [os.fspath(d) for d in dirs]
        if not self.dirs:
            raise ValueError("FrameFolderSource needs at least one frame folder")
        for folder in self.dirs:
            if not os.path.isdir(folder):
                raise FileNotFoundError(f"frame folder does not exist: {folder}")
        self._frames: list[list[str] | None] = [None] * len(self.dirs)

    def __len__(self) -> int:
        return len(self.dirs)

    def _frame_files(self, index: int) -> list[str]:
        if self._frames[index] is None:
            folder = self.dirs[index]
            try:
                names = _image_files(folder)
            except OSError as error:
                raise VideoReadError(folder, f"the frame folder cannot be listed ({_os_error(error)})") from error
            if not names:
                raise VideoReadError(folder, "the frame folder holds no .jpg/.jpeg/.png frames")
            self._frames[index] = names
        return self._frames[index]

    def video_name(self, index: int) -> str:
        return os.path.basename(os.path.normpath(self.dirs[index]))

    def num_frames(self, index: int) -> int:
        return len(self._frame_files(index))

    def fps(self, index: int) -> float | None:
        return None

    def read_frames(self, index: int, frame_indices: Sequence[int]) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB frames at ``frame_indices`` (any order, repeats allowed)."""
        names = self._frame_files(index)
        idx = _check_indices(frame_indices, len(names), self.dirs[index])
        unique, inverse = np.unique(idx, return_inverse=True)
        frames = []
        for k in unique:
            frames.append(_read_image(os.path.join(self.dirs[index], names[k])))
            if frames[-1].shape != frames[0].shape:
                raise VideoReadError(
                    os.path.join(self.dirs[index], names[k]),
                    f"frame {names[k]} is {frames[-1].shape[1]}x{frames[-1].shape[0]} but frame "
                    f"{names[unique[0]]} of the same folder is {frames[0].shape[1]}x{frames[0].shape[0]} (W x H)",
                )
        return np.stack(frames)[inverse]

    def verify(self, index: int) -> int:
        """Decode every frame of video ``index``; its frame count. Raises :class:`VideoReadError`."""
        count = self.num_frames(index)
        for start in range(0, count, 16):
            self.read_frames(index, range(start, min(count, start + 16)))
        return count

    def ground_truth(self, index: int) -> GroundTruth | None:
        return None

    def decoder_name(self, index: int) -> str:
        return "frames"


def _os_error(error: OSError) -> str:
    """"permission denied", "input/output error", ...: an OS error without errno and path."""
    return error.strerror.lower() if error.strerror else _short_error(error)


def _read_image(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a JPEG/PNG frame of any mode; :class:`VideoReadError` when unreadable."""
    from PIL import Image, UnidentifiedImageError

    name = os.path.basename(path)
    try:
        with Image.open(path) as image:
            return _image_rgb(image)
    except UnidentifiedImageError as error:
        raise VideoReadError(path, f"frame {name} is not a readable image ({_what_it_looks_like(_head(path))})") from error
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        if isinstance(error, OSError) and error.errno:  # permission denied, I/O error, ...
            raise VideoReadError(path, f"frame {name} cannot be read ({_os_error(error)})") from error
        raise VideoReadError(path, f"frame {name} is truncated or corrupt ({_short_error(error)})") from error


def _head(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(512)
    except OSError:
        return b""


def _image_rgb(image) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a PIL image; 16-bit gray is scaled to 8 bits (``convert`` would clip)."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):  # "I": 16-bit PNG gray in older Pillow
        wide = np.asarray(image).astype(np.uint32)
        gray = ((np.clip(wide, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if image.mode != "RGB":
        image = image.convert("RGB")  # L/LA/1 -> equal channels, RGBA/LA -> alpha dropped, P/CMYK/YCbCr
    return np.asarray(image)


class ConcatSource:
    """Several sources as one, indexed globally in order (video i of source 2 follows source 1)."""

    def __init__(self, sources: Iterable[VideoSource]):
        self.sources = list(sources)
        if not self.sources:
            raise ValueError("ConcatSource needs at least one source")
        self._ends = np.cumsum([len(s) for s in self.sources]).tolist()

    def __len__(self) -> int:
        return self._ends[-1]

    def _locate(self, index: int) -> tuple[VideoSource, int]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"video index {index} is out of range for {len(self)} videos")
        k = bisect.bisect_right(self._ends, index)
        return self.sources[k], index - (self._ends[k - 1] if k else 0)

    def video_name(self, index: int) -> str:
        source, i = self._locate(index)
        return source.video_name(i)

    def num_frames(self, index: int) -> int:
        source, i = self._locate(index)
        return source.num_frames(i)

    def fps(self, index: int) -> float | None:
        source, i = self._locate(index)
        return source.fps(i)

    def read_frames(self, index: int, frame_indices: Sequence[int]) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB frames of video ``index`` at ``frame_indices``."""
        source, i = self._locate(index)
        return source.read_frames(i, frame_indices)

    def verify(self, index: int) -> int:
        """Decode every frame of video ``index`` (see :func:`verify_video`)."""
        source, i = self._locate(index)
        return verify_video(source, i)

    def content_fingerprint(self, index: int) -> str | None:
        """The part source's content fingerprint of video ``index``; None when it has none."""
        source, i = self._locate(index)
        fingerprint = getattr(source, "content_fingerprint", None)
        return fingerprint(i) if callable(fingerprint) else None

    def decoder_name(self, index: int) -> str:
        source, i = self._locate(index)
        return decoder_name(source, i)

    def ground_truth(self, index: int) -> GroundTruth | None:
        source, i = self._locate(index)
        return source.ground_truth(i)


def verify_video(source: VideoSource, index: int, chunk: int = 16) -> int:
    """Decode every frame of video ``index`` of any source (its ``verify`` method when it has
    one, else reads in chunks); the number of frames. Raises what reading raises."""
    verify = getattr(source, "verify", None)
    if callable(verify):
        return verify(index)
    count = source.num_frames(index)
    for start in range(0, count, chunk):
        source.read_frames(index, range(start, min(count, start + chunk)))
    return count


# ----------------------------------------------------------------------------- open_videos

_LAYOUTS = """\
Expected one of these layouts:
  <folder>/*.mp4 (or .avi, .mkv, ...)               a folder of video files
  <folder>/*.jpg (or .png)                          one video as a folder of frames
  <folder>/<video>/*.jpg                            a folder of frame folders
  <root>/JPEGImages/<video>/*.jpg                   YouTube-VOS / DAVIS style
  <root>/JPEGImages/480p/<video>/*.jpg              DAVIS
  <root>/train_all_frames/JPEGImages/<video>/*.jpg  YouTube-VOS (also <root>/train/JPEGImages)
Sub-folders of video files are not searched; pass them as a list instead."""


def _frames_root(folder: Path) -> Path:
    """The folder holding the videos of a dataset root (YouTube-VOS / DAVIS ``JPEGImages``)."""
    for sub in ("JPEGImages", "train_all_frames/JPEGImages", "train/JPEGImages"):
        if (folder / sub).is_dir():
            folder = folder / sub
            break
    for resolution in ("480p", "Full-Resolution"):
        if (folder / resolution).is_dir():
            return folder / resolution
    return folder


def _resolve(path: Path, extensions: tuple[str, ...]) -> list[tuple[str, str]]:
    """("file" | "frames", path) entries of the videos a path names, in natural order."""
    if not path.exists():
        raise FileNotFoundError(f"video path does not exist: {path}")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in extensions:
            return [("file", str(path))]
        if suffix in IMAGE_EXTENSIONS:
            raise ValueError(
                f"{path} is a single image, not a video; pass the folder holding the video's frames"
            )
        raise ValueError(
            f"{path} does not have a video extension ({', '.join(extensions)}); "
            f"pass extensions=(..., {suffix!r}) to open_videos to accept it"
        )
    if _has_images(path):
        return [("frames", str(path))]
    root = _frames_root(path)
    entries = []
    for child in sorted(root.iterdir(), key=lambda p: _natural_key(p.name)):
        if child.name.startswith("."):
            continue
        if child.is_file() and child.suffix.lower() in extensions:
            entries.append(("file", str(child)))
        elif child.is_dir() and _has_images(child):
            entries.append(("frames", str(child)))
    if not entries:
        where = f" (looked in {root})" if root != path else ""
        raise ValueError(f"{path} contains neither video files nor frame folders{where}.\n{_LAYOUTS}")
    return entries


def open_videos(
    videos: PathLike | VideoSource | Sequence[PathLike | VideoSource],
    backend: str = "auto",
    extensions: Iterable[str] = VIDEO_EXTENSIONS,
    decode_timeout: float | None = None,
) -> VideoSource:
    """One :class:`VideoSource` for what a user passes.

    Args:
        videos: a VideoSource (returned as is); a video file; a folder of video files; a frame
            folder; a folder of frame folders or a YouTube-VOS / DAVIS root (``JPEGImages`` is
            found automatically); ``"synthetic:num_videos=64,size=64,seed=0"`` for
            :class:`~mosic.data.SyntheticVideos` (handy in configs and on the command
            line); or a list of any of these, concatenated in order.
        backend: video decoder for files, see :func:`make_backend`.
        extensions: video file suffixes accepted (case-insensitive).
        decode_timeout: seconds a video file's probe or read may take before it is abandoned
            (see :class:`VideoFileSource`); None decodes in-process without a time limit.
    Returns:
        A VideoFileSource, a FrameFolderSource, or a ConcatSource of several.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if isinstance(videos, VideoSource):
        return videos
    if isinstance(videos, str) and videos.startswith("synthetic:"):
        from .synthetic import SyntheticVideos

        return SyntheticVideos.from_spec(videos)
    exts = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
    if isinstance(videos, (str, os.PathLike)):
        items: list = _resolve(Path(videos), exts)
    elif isinstance(videos, (list, tuple)):
        if not videos:
            raise ValueError("open_videos got an empty list; pass at least one video file or folder")
        items = []
        for video in videos:
            if isinstance(video, (str, os.PathLike)):
                items.extend(_resolve(Path(video), exts))
            elif isinstance(video, VideoSource):
                items.append(video)
            else:
                raise TypeError(
                    f"open_videos got a list holding a {type(video).__name__}; expected paths or VideoSources"
                )
    else:
        raise TypeError(
            "open_videos expects a path, a folder, a VideoSource or a list of those; "
            f"got {type(videos).__name__}"
        )
    sources: list[VideoSource] = []
    for kind, group in groupby(items, key=lambda item: item[0] if isinstance(item, tuple) else "source"):
        group = list(group)
        if kind == "file":
            sources.append(VideoFileSource([p for _, p in group], backend, decode_timeout=decode_timeout))
        elif kind == "frames":
            sources.append(FrameFolderSource([p for _, p in group]))
        else:
            sources.extend(group)
    return sources[0] if len(sources) == 1 else ConcatSource(sources)
