"""Video sources on disk: video files, folders of frames, and whatever mix users pass.

:class:`VideoFileSource` decodes video files with a backend of :mod:`mosic.data.decoders`
(PyAV, torchcodec or decord; frame k is always the k-th frame that decodes),
:class:`FrameFolderSource` reads folders of JPEG/PNG frames (YouTube-VOS / DAVIS
``JPEGImages``), :class:`ConcatSource` chains sources, and :func:`open_videos` turns a path,
a folder, a dataset root or a list of those into one :class:`~mosic.data.source.VideoSource`
(the protocol, which stays in :mod:`mosic.data.source` so that what only needs the
protocol imports no decoder). Files that cannot be read raise
:class:`~mosic.errors.VideoReadError` with a reason from :mod:`mosic.data.diagnosis`.

Sources are picklable and are pickled to DataLoader workers: decoders are opened lazily in
the process that reads and never travel in pickled state (nor survive a fork).
"""

from __future__ import annotations

import bisect
import hashlib
import os
import re
from itertools import groupby
from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np

from ..errors import VideoReadError
from .decoders import BACKENDS, make_backend
from .diagnosis import file_head, os_error_reason, short_error, what_it_looks_like
from .source import GroundTruth, VideoSource, decoder_name

VIDEO_EXTENSIONS = (
    ".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ogv", ".3gp",
)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

PathLike = Union[str, "os.PathLike[str]"]


def natural_key(name: str) -> tuple[list, str]:
    """Sort key ordering ``frame2`` before ``frame10``; the name itself breaks ties."""
    parts = re.split(r"([0-9]+)", name)
    return [int(p) if i % 2 else p.lower() for i, p in enumerate(parts)], name


def check_indices(frame_indices: Sequence[int], num_frames: int, name: str) -> np.ndarray:
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
            raise VideoReadError(path, f"the file cannot be read ({os_error_reason(error)})") from error

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
        idx = check_indices(frame_indices, self.num_frames(index), self.paths[index])
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


def image_files(folder: PathLike) -> list[str]:
    """Names of the JPEG/PNG files in ``folder``, in natural order (hidden files skipped)."""
    with os.scandir(folder) as entries:
        return sorted((e.name for e in entries if _is_image(e)), key=natural_key)


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
                names = image_files(folder)
            except OSError as error:
                raise VideoReadError(folder, f"the frame folder cannot be listed ({os_error_reason(error)})") from error
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
        idx = check_indices(frame_indices, len(names), self.dirs[index])
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


def _read_image(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a JPEG/PNG frame of any mode; :class:`VideoReadError` when unreadable."""
    from PIL import Image, UnidentifiedImageError

    name = os.path.basename(path)
    try:
        with Image.open(path) as image:
            return _image_rgb(image)
    except UnidentifiedImageError as error:
        raise VideoReadError(path, f"frame {name} is not a readable image ({what_it_looks_like(file_head(path))})") from error
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        if isinstance(error, OSError) and error.errno:  # permission denied, I/O error, ...
            raise VideoReadError(path, f"frame {name} cannot be read ({os_error_reason(error)})") from error
        raise VideoReadError(path, f"frame {name} is truncated or corrupt ({short_error(error)})") from error


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
    for child in sorted(root.iterdir(), key=lambda p: natural_key(p.name)):
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
