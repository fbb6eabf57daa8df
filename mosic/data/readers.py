"""Video sources on disk: video files, folders of frames, and whatever mix users pass.

:class:`VideoFileSource` decodes video files with decord or PyAV, :class:`FrameFolderSource`
reads folders of JPEG/PNG frames (YouTube-VOS / DAVIS ``JPEGImages``), :class:`ConcatSource`
chains sources, and :func:`open_videos` turns a path, a folder, a dataset root or a list of
those into one :class:`~mosic.data.source.VideoSource`.

Sources are picklable and are pickled to DataLoader workers: decoders are opened lazily in
the process that reads and never travel in pickled state (nor survive a fork).
"""

from __future__ import annotations

import bisect
import os
import re
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Iterable, Iterator, Sequence, Union

import numpy as np

from .source import GroundTruth, VideoSource

VIDEO_EXTENSIONS = (
    ".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ogv", ".3gp",
)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
BACKENDS = ("auto", "decord", "pyav")

PathLike = Union[str, "os.PathLike[str]"]


class VideoReadError(RuntimeError):
    """A video (or frame) file could not be opened or decoded: unreadable, corrupt, not a video."""

    def __init__(self, path: PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"cannot read {self.path}: the file is unreadable or corrupt ({reason})")

    def __reduce__(self):
        return type(self), (self.path, self.reason)


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


def _short_error(error: Exception) -> str:
    """First line of a backend error, without decord's ``[hh:mm:ss] file.cc:123:`` prefixes."""
    lines = str(error).strip().splitlines()
    line = lines[0] if lines else type(error).__name__
    return re.sub(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ", "", line).strip()


# ----------------------------------------------------------------------------- backends


class DecordBackend:
    """Decodes with decord, opening the file for each call.

    Readers are never cached: a decord reader alive when a DataLoader forks its workers
    crashes the worker that releases it.
    """

    name = "decord"

    def __init__(self) -> None:
        import decord  # noqa: F401  (fails early when decord is missing)

    @staticmethod
    def _open(path: str):
        import decord

        try:
            return decord.VideoReader(path, ctx=decord.cpu(0))
        except (decord.DECORDError, RuntimeError) as error:
            raise VideoReadError(path, _short_error(error)) from error

    def probe(self, path: str) -> tuple[int, float | None]:
        """(number of frames, fps or None)."""
        reader = self._open(path)
        fps = float(reader.get_avg_fps())
        return len(reader), fps if fps > 0 else None

    def read(self, path: str, indices: np.ndarray) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB frames at sorted unique in-range ``indices`` (T,)."""
        import decord

        reader = self._open(path)
        try:
            batch = reader.get_batch(indices.tolist())
        except (decord.DECORDError, RuntimeError) as error:
            raise VideoReadError(
                path, f"decord failed to decode frames: {_short_error(error)}; backend='pyav' may read it"
            ) from error
        # A global decord.bridge.set_bridge("torch") makes get_batch return tensors.
        return batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)


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
        except FileNotFoundError:
            raise
        except (av.FFmpegError, UnicodeDecodeError) as error:
            raise VideoReadError(path, _short_error(error)) from error
        try:
            if not container.streams.video:
                raise VideoReadError(path, "it has no video stream")
            yield container, container.streams.video[0]
        except av.FFmpegError as error:
            raise VideoReadError(path, f"decoding failed: {_short_error(error)}") from error
        finally:
            container.close()

    @staticmethod
    def _demux(container, stream) -> _PacketIndex | None:
        """The stream's packet index, or None when timestamps are missing or repeated."""
        pts, seek_ts, key = [], [], []
        for packet in container.demux(stream):
            if packet.size == 0 or packet.is_discard:
                continue
            if packet.pts is None:
                return None
            pts.append(packet.pts)
            seek_ts.append(packet.pts if packet.dts is None else min(packet.pts, packet.dts))
            key.append(packet.is_keyframe)
        order = np.argsort(np.asarray(pts, np.int64), kind="stable")
        sorted_pts = np.asarray(pts, np.int64)[order]
        if (np.diff(sorted_pts) == 0).any():
            return None
        keyframes = np.union1d([0], np.flatnonzero(np.asarray(key, bool)[order])).astype(np.int64)
        return _PacketIndex(sorted_pts, np.asarray(seek_ts, np.int64)[order], keyframes)

    def _count_decoded(self, path: str) -> int:
        with self._container(path) as (container, stream):
            return sum(1 for _ in container.decode(stream))

    def _remember(self, path: str, index: _PacketIndex) -> None:
        self._indexes[path] = index
        self._indexes.move_to_end(path)
        if len(self._indexes) > self._INDEX_CACHE:
            self._indexes.popitem(last=False)

    def probe(self, path: str) -> tuple[int, float | None]:
        """(number of frames, fps or None); verified by decoding when the metadata disagree."""
        with self._container(path) as (container, stream):
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else None
            header_count = stream.frames
            index = self._demux(container, stream)
        if index is not None and header_count in (0, len(index.pts)):
            self._remember(path, index)
            return len(index.pts), fps
        count = self._count_decoded(path)
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
                    index = self._demux(container, stream)
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
        frames, wanted = [], iter(indices.tolist())
        target = next(wanted)
        with self._container(path) as (container, stream):
            for position, frame in enumerate(container.decode(stream)):
                if position == target:
                    frames.append(_rgb(frame, stream))
                    target = next(wanted, None)
                    if target is None:
                        return np.stack(frames)
        raise VideoReadError(path, f"frame {target} was requested but fewer frames could be decoded")


def _rgb(frame, stream) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a PyAV frame of any pixel format, at the stream's frame size."""
    width = stream.codec_context.width or frame.width
    height = stream.codec_context.height or frame.height
    return frame.reformat(width=width, height=height, format="rgb24").to_ndarray()


def make_backend(name: str = "auto") -> DecordBackend | PyAVBackend:
    """A decoding backend: "decord", "pyav", or "auto" (decord when importable, else PyAV)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown video backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "pyav":
        return PyAVBackend()
    try:
        return DecordBackend()
    except ImportError as error:
        if name == "auto":
            return PyAVBackend()
        raise ImportError(
            "backend='decord' needs the decord package (pip install decord; it has no wheels for "
            "macOS arm64), or use backend='pyav'"
        ) from error


# ----------------------------------------------------------------------------- sources


class VideoFileSource:
    """Video files (mp4, avi, mkv, webm, mov, ...), in the order given.

    Args:
        paths: the video files; ``video_name`` is the path as given.
        backend: "decord", "pyav" or "auto" (decord when importable, else PyAV; AVI
            files always go to PyAV under "auto", because decord 0.6 returns wrong
            frames on random access into AVIs with B-frames).
    """

    def __init__(self, paths: Iterable[PathLike], backend: str = "auto"):
        self.paths = [os.fspath(p) for p in paths]
        if not self.paths:
            raise ValueError("VideoFileSource needs at least one video file")
        missing = [p for p in self.paths if not os.path.isfile(p)]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise FileNotFoundError(f"video file does not exist: {missing[0]}{more}")
        self.backend = make_backend(backend)
        self._avi_backend = PyAVBackend() if backend == "auto" else self.backend
        self._info: list[tuple[int, float | None] | None] = [None] * len(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def _probe(self, index: int) -> tuple[int, float | None]:
        if self._info[index] is None:
            count, fps = self._backend_for(index).probe(self.paths[index])
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
        return self._backend_for(index).read(self.paths[index], unique)[inverse]

    def _backend_for(self, index: int) -> DecordBackend | PyAVBackend:
        return self._avi_backend if self.paths[index].lower().endswith(".avi") else self.backend

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
            names = _image_files(self.dirs[index])
            if not names:
                raise ValueError(f"frame folder {self.dirs[index]} contains no .jpg/.jpeg/.png frames")
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
        from PIL import Image

        names = self._frame_files(index)
        idx = _check_indices(frame_indices, len(names), self.dirs[index])
        unique, inverse = np.unique(idx, return_inverse=True)
        frames = []
        for k in unique:
            path = os.path.join(self.dirs[index], names[k])
            try:
                with Image.open(path) as image:
                    frames.append(np.asarray(image.convert("RGB")))
            except OSError as error:
                raise VideoReadError(path, _short_error(error)) from error
            if frames[-1].shape != frames[0].shape:
                raise ValueError(
                    f"frame {path} is {frames[-1].shape[1]}x{frames[-1].shape[0]} but earlier frames of "
                    f"{self.dirs[index]} are {frames[0].shape[1]}x{frames[0].shape[0]} (W x H)"
                )
        return np.stack(frames)[inverse]

    def ground_truth(self, index: int) -> GroundTruth | None:
        return None


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

    def ground_truth(self, index: int) -> GroundTruth | None:
        source, i = self._locate(index)
        return source.ground_truth(i)


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
            sources.append(VideoFileSource([p for _, p in group], backend))
        elif kind == "frames":
            sources.append(FrameFolderSource([p for _, p in group]))
        else:
            sources.extend(group)
    return sources[0] if len(sources) == 1 else ConcatSource(sources)
