"""Video decoders: the backends :class:`~mosic.data.video_files.VideoFileSource` reads files with.

:class:`PyAVBackend` (bundled FFmpeg; what ``auto`` picks), :class:`TorchCodecBackend` and
:class:`DecordBackend` all number frames the same way: frame k is the k-th frame that
decodes. Only PyAV and torchcodec are exact on every file of the decode-accuracy corpus
(:mod:`mosic.data.stamped`); decord is used only when asked for, with an
:class:`InexactDecoderWarning`. :func:`make_backend` builds one by name,
:func:`available_backends` says which load here.

Backends are picklable (they travel to DataLoader workers and to the decode watchdog's
child process, :mod:`mosic.data.watchdog`): decoders are opened lazily in the process that
reads and never travel in pickled state (nor survive a fork).
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ..errors import VideoReadError
from .diagnosis import decord_detail, diagnose, ffmpeg_detail, short_error

#: the names :func:`make_backend` (and ``open_videos(backend=...)``) accept
BACKENDS = ("auto", "pyav", "torchcodec", "decord")


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
            detail = decord_detail(error)
            if "cannot find video stream" in detail:
                raise VideoReadError(path, "it has no video stream") from error
            raise VideoReadError(path, diagnose(path, detail)) from error

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
                f"truncated or corrupt: decord failed to decode {frames} ({decord_detail(error)}); "
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
            raise VideoReadError(path, diagnose(path, ffmpeg_detail(error))) from error
        try:
            if not container.streams.video:
                raise VideoReadError(path, "it has no video stream")
            yield container, container.streams.video[0]
        except av.FFmpegError as error:
            raise VideoReadError(path, f"truncated or corrupt: decoding failed ({ffmpeg_detail(error)})") from error
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
                path, f"truncated or corrupt: decoding stopped at frame {position}{of} ({ffmpeg_detail(error)})"
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
            raise VideoReadError(path, diagnose(path, short_error(error))) from error

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
                f"shared libraries, versions 4 to 9 (e.g. apt-get install ffmpeg); or use backend='pyav' ({short_error(error)})"
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
