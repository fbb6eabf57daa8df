"""Prepared frames: decode each video once, train without decoding (``mosic prepare``).

Decoding is most of the data loader's CPU time (docs/data.md: ~200 ms per 12-frame clip
of 480p H.264, ~115 ms of JPEG folders). A training clip reads frames ``s + stride * k``
(k < T) from a start ``s`` on the lattice :func:`~mosic.data.track_cache.clip_starts`
(every ``start_step`` frames; a track cache uses the same lattice), so a video needs only
the union of those frames: with ``start_step == stride``, the multiples of the stride (30
of a 180-frame video at stride 6). :func:`prepare_frames` decodes each video once, in
chunks, resizes those frames with antialiasing so the shorter side is ``short_side``
(never upscaled) and stores them raw; :class:`PreparedFrames` reads a clip's T frames from
the memory-mapped file, crops and resizes them in uint8.

Layout::

    DIR/manifest.json             version, settings, one entry per video (name, fingerprint,
                                  source frame count and (H, W), stored frame numbers, file,
                                  shape, bytes, sha256, scale)
    DIR/frames/000000.npy         (T_stored, H', W', 3) uint8 RGB, row i = source frame frames[i]

The crop is sampled in SOURCE pixels (the same :class:`~mosic.data.transforms.ViewTransform`
as without the store, so ``meta.transform`` and tracks are unchanged); its box is scaled by
the stored scale (x by W'/W, y by H'/H) and rounded to whole stored pixels, at most 0.5
stored pixels from the exact box. Pixels: (x, y), x to the right, y down, pixel (row i,
column j) centred at (x=j, y=i).

Staleness follows the track cache's rules: settings (clip length, stride, start step) that
differ from the run's, a video whose name, frame count or content fingerprint differs, and a
file whose size or ``.npy`` header differs from the manifest raise :class:`StalePreparedError`
(at open, before training). File checksums (sha256) are checked by ``mosic prepare`` when it
runs again (it re-prepares corrupt files) or with ``PreparedFrames(..., verify="sha256")``;
training checks sizes and headers only, so it never hashes the (large) frame files.
Nothing is unpickled: ``np.load(..., allow_pickle=False)``.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import VideoReadError
from .clips import BadVideoWarning, ClipTooShortError, effective_stride
from .source import VideoSource, decoder_name
from .track_cache import StaleCacheError, check_video_entries, clip_starts, open_manifest_folder, video_fingerprint, write_manifest
from .transforms import ViewTransform
from .video_files import file_sha256

PREPARED_VERSION = 1
MANIFEST = "manifest.json"


class StalePreparedError(StaleCacheError):
    """A prepared-frames folder does not match the videos or the settings it is used with."""


@dataclass(frozen=True)
class PreparedSettings:
    """What a prepared folder was made with."""

    num_frames: int  # T, frames per clip
    frame_stride: int
    start_step: int  # frames between clip starts (the lattice of clip_starts)
    short_side: int  # stored frames' shorter side in pixels (never upscaled)
    decoder: str  # the backend asked for (data.backend); each entry records the one that read it


def default_short_side(size: int, crop_scale: tuple[float, float]) -> int:
    """The smallest shorter side at which the smallest training crop (area ``crop_scale[0]``
    of a square frame) still has ``size`` pixels per side: ceil(size / sqrt(crop_scale[0]))
    (355 for 224 px and 0.4)."""
    return math.ceil(size / math.sqrt(crop_scale[0]) - 1e-9)


def stored_frames(num_available: int, num_frames: int, stride: int, start_step: int) -> list[int]:
    """Source frame numbers any clip on the lattice reads (sorted): ``s + stride' * k`` for every
    start ``s`` of :func:`clip_starts` and k < ``num_frames`` (stride' = the effective stride)."""
    step = effective_stride(num_available, num_frames, stride)
    starts = clip_starts(num_available, num_frames, stride, start_step)
    return sorted({s + step * k for s in starts for k in range(num_frames)})


def stored_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(H', W') of stored frames: the shorter side ``short_side``, never larger than (H, W)."""
    scale = min(1.0, short_side / min(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(F, H, W, 3) uint8 -> (F, H', W', 3) uint8, bilinear with antialiasing (float, rounded;
    what :meth:`ViewTransform.apply_to_frames` does to a whole frame)."""
    height, width = frames.shape[1:3]
    view = ViewTransform(0, 0, width, height, tuple(size))
    out = view.apply_to_frames(torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2))
    return out.permute(0, 2, 3, 1).contiguous().numpy()


def _write_manifest(out: Path, settings: PreparedSettings, entries: list[dict], complete: bool) -> None:
    write_manifest(out, PREPARED_VERSION, settings, entries, complete)


_ENTRY_KEYS = {
    "name": str, "file": str, "sha256": str, "fingerprint": str, "decoder": str, "num_frames": int,
    "height": int, "width": int, "stride": int, "frames": list, "shape": list, "bytes": int, "scale": list,
}  # fmt: skip


def _read_manifest(out: Path) -> dict[str, Any]:
    """The manifest, its structure checked (it is untrusted input) before any of it is used."""
    where = out / MANIFEST

    def bad(why: str) -> StalePreparedError:
        return StalePreparedError(f"{where} is not a valid prepared-frames manifest: {why}; re-run `mosic prepare`")

    try:
        manifest = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StalePreparedError(f"cannot read the prepared-frames manifest {where}: {exc}; re-run `mosic prepare`") from exc
    if not isinstance(manifest, dict):
        raise bad(f"expected a JSON object, got {type(manifest).__name__}")
    if manifest.get("version") != PREPARED_VERSION:
        raise StalePreparedError(
            f"{out} holds version {manifest.get('version')!r} prepared frames; this mosic reads version "
            f"{PREPARED_VERSION}: re-run `mosic prepare` into a new folder"
        )
    settings, fields = manifest.get("settings"), set(PreparedSettings.__dataclass_fields__)
    if not isinstance(settings, dict) or set(settings) != fields:
        raise bad(f"'settings' must hold exactly {sorted(fields)}, got {settings!r}")
    videos = manifest.get("videos")
    if not isinstance(videos, list):
        raise bad(f"'videos' must be a list, got {type(videos).__name__}")
    check_video_entries(videos, _ENTRY_KEYS, ["frames", "shape"], out, bad)
    return manifest


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of a ``.npy`` file from its header alone (no pickles)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
        if fortran:
            raise ValueError("Fortran-ordered array")
        return tuple(shape), dtype, f.tell()


def _check_file(path: Path, entry: dict, verify: str) -> str | None:
    """Why the stored file of ``entry`` is unusable (missing, truncated, wrong header, and with
    ``verify="sha256"`` wrong checksum); None when it is fine."""
    if not path.is_file():
        return "is missing"
    size = path.stat().st_size
    if size != entry["bytes"]:
        return f"has {size} bytes, the manifest records {entry['bytes']} (truncated or replaced)"
    try:
        shape, dtype, _ = _npy_header(path)
    except (OSError, ValueError, SyntaxError) as exc:
        return f"has no valid .npy header ({exc})"
    if shape != tuple(entry["shape"]) or dtype != np.uint8:
        return f"holds {dtype} {shape}, the manifest records uint8 {tuple(entry['shape'])}"
    if verify == "sha256" and file_sha256(path) != entry["sha256"]:
        return "does not match its sha256 in the manifest (corrupt)"
    return None


def prepare_frames(
    source: VideoSource,
    out_dir: str | os.PathLike,
    settings: PreparedSettings,
    *,
    chunk_frames: int = 32,
    progress: bool = False,
    on_video: Callable[[int, str], None] | None = None,
) -> Path:
    """Decode every video of ``source`` once and store the frames its clips can read; resumable.

    For video i, the frames :func:`stored_frames` names are read through
    ``source.read_frames`` ``chunk_frames`` at a time (memory: ``chunk_frames`` source
    frames), resized by :func:`resize_frames` to :func:`stored_size` and written into
    ``frames/<i>.npy`` (a temporary file, then ``os.replace``); the manifest is rewritten
    after each video. Videos whose entry has the same fingerprint and whose file passes its
    sha256 are kept; unreadable or too-short videos are recorded with their reason (a
    :class:`~mosic.data.clips.BadVideoWarning`) and skipped by training. A folder made with
    other settings raises :class:`StalePreparedError`. Returns ``out_dir``.
    """
    out = Path(out_dir)
    (out / "frames").mkdir(parents=True, exist_ok=True)
    previous = _read_manifest(out) if (out / MANIFEST).is_file() else None
    if previous is not None and previous["settings"] != asdict(settings):
        diff = ", ".join(
            f"{k}: folder {previous['settings'].get(k)!r} vs {v!r}" for k, v in asdict(settings).items()
            if previous["settings"].get(k) != v
        )
        raise StalePreparedError(f"{out} holds frames prepared with other settings ({diff}); choose another --out or delete it")
    known = {v["name"]: v for v in previous["videos"]} if previous else {}
    entries: list[dict] = []
    indices: Any = range(len(source))
    if progress:
        from rich.progress import track as rich_track

        indices = rich_track(indices, description="preparing videos")
    for index in indices:
        entry = _prepare_video(source, index, settings, out, known.get(source.video_name(index)), chunk_frames)
        entries.append(entry)
        if entry is not known.get(entry["name"]):
            _write_manifest(out, settings, entries, complete=False)
            if on_video is not None:
                on_video(index, entry["name"])
    _write_manifest(out, settings, entries, complete=True)
    return out


def _prepare_video(source, index: int, settings: PreparedSettings, out: Path, old: dict | None, chunk_frames: int) -> dict:
    name = source.video_name(index)
    file = out / "frames" / f"{index:06d}.npy"
    try:
        n = source.num_frames(index)
        frames = stored_frames(n, settings.num_frames, settings.frame_stride, settings.start_step)
        if n < settings.num_frames or not frames:
            raise ClipTooShortError(f"too short: {n} frames, a clip needs {settings.num_frames}")
        fingerprint = video_fingerprint(source, index)
        if (
            old is not None and "error" not in old and old["fingerprint"] == fingerprint and old["frames"] == frames
            and old["file"] == f"frames/{file.name}" and _check_file(file, old, "sha256") is None
        ):
            return old
        tmp = file.with_suffix(".npy.tmp")
        array = None
        for begin in range(0, len(frames), max(1, chunk_frames)):
            chunk = frames[begin : begin + max(1, chunk_frames)]
            raw = np.asarray(source.read_frames(index, chunk))  # (F, H, W, 3) uint8
            if array is None:
                height, width = raw.shape[1:3]
                size = stored_size(height, width, settings.short_side)
                array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(frames), *size, 3))
            array[begin : begin + len(chunk)] = resize_frames(raw, size)
        array.flush()
        shape = list(array.shape)
        del array
        os.replace(tmp, file)
    except (VideoReadError, ClipTooShortError) as error:
        reason = getattr(error, "reason", str(error))
        warnings.warn(f"mosic prepare: skipping {name}: {reason}", BadVideoWarning, stacklevel=3)
        return {"name": name, "error": reason}
    return {
        "name": name,
        "fingerprint": fingerprint,
        "decoder": decoder_name(source, index),
        "num_frames": n,
        "height": height,
        "width": width,
        "stride": effective_stride(n, settings.num_frames, settings.frame_stride),
        "frames": frames,
        "file": f"frames/{file.name}",
        "shape": shape,
        "bytes": file.stat().st_size,
        "sha256": file_sha256(file),
        "scale": [shape[2] / width, shape[1] / height],  # (x, y): stored pixels per source pixel
    }


class PreparedFrames:
    """A prepared folder (``mosic prepare``) opened for training on ``source``.

    At open, in the process that opens it (DataLoader workers inherit the result): the
    folder is complete, its settings match ``expect`` (a dict of :class:`PreparedSettings`
    fields, e.g. the run's ``num_frames``, ``frame_stride``), it covers the same videos in the
    same order with the same frame counts and content fingerprints
    (:func:`~mosic.data.track_cache.video_fingerprint`), and every frame file has the recorded
    size and ``.npy`` header (``verify="sha256"`` also checks every file's checksum: slow for
    large folders). Anything else raises :class:`StalePreparedError`.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        source: VideoSource,
        expect: dict[str, Any] | None = None,
        verify: str = "size",
    ):
        if verify not in ("size", "sha256"):
            raise ValueError(f"verify must be 'size' or 'sha256', got {verify!r}")
        self.path = Path(path)
        manifest, self.settings = open_manifest_folder(
            self.path, source, expect, what="the prepared frames", rebuild="`mosic prepare`",
            settings_type=PreparedSettings, error=StalePreparedError, read=_read_manifest,
        )  # fmt: skip
        self.videos = manifest["videos"]
        for index, entry in enumerate(self.videos):
            name = source.video_name(index)
            if entry["name"] != name:
                raise StalePreparedError(
                    f"video {index} is {name!r}, but the prepared frames at {self.path} have {entry['name']!r}; "
                    "re-run `mosic prepare` on these videos"
                )
            if "error" in entry:
                continue
            why = _check_file(self.path / entry["file"], entry, verify)
            if why is not None:
                raise StalePreparedError(
                    f"{self.path / entry['file']} (frames of {name!r}) {why}; run the same `mosic prepare` again: "
                    "it re-prepares the videos whose files fail their checks"
                )
            try:
                same = source.num_frames(index) == entry["num_frames"] and video_fingerprint(source, index) == entry["fingerprint"]
            except VideoReadError as error:
                raise StalePreparedError(
                    f"video {name!r} cannot be read now ({error.reason}) but has prepared frames in {self.path}; "
                    "re-run `mosic prepare`"
                ) from error
            if not same:
                raise StalePreparedError(
                    f"video {name!r} changed since its frames were prepared in {self.path}; re-run `mosic prepare` "
                    "on these videos (it re-prepares the changed ones)"
                )
        self._rows = [None if "error" in e else {f: i for i, f in enumerate(e["frames"])} for e in self.videos]

    @property
    def unreadable(self) -> dict[str, str]:
        """Videos ``mosic prepare`` could not read: name -> reason."""
        return {e["name"]: e["error"] for e in self.videos if "error" in e}

    def _entry(self, index: int) -> dict:
        entry = self.videos[index]
        if "error" in entry:
            raise VideoReadError(entry["name"], f"{entry['error']} (mosic prepare could not read it)")
        return entry

    def num_frames(self, index: int) -> int:
        """Source frame count of video ``index`` (VideoReadError for a video prepare could not read)."""
        return self._entry(index)["num_frames"]

    def source_size(self, index: int) -> tuple[int, int]:
        """(H, W) of the source frames of video ``index``."""
        entry = self._entry(index)
        return entry["height"], entry["width"]

    def stride(self, index: int) -> int:
        return self._entry(index)["stride"]

    def candidate_starts(self, index: int) -> list[int]:
        """Every clip start on the lattice (what training draws from)."""
        s = self.settings
        return clip_starts(self.num_frames(index), s.num_frames, s.frame_stride, s.start_step)

    def read(self, index: int, frame_indices: Sequence[int]) -> np.ndarray:
        """(T, H', W', 3) uint8 stored frames of source frames ``frame_indices``."""
        return np.array(self._array(index)[self._positions(index, frame_indices)])

    def read_view(self, index: int, frame_indices: Sequence[int], transform: ViewTransform) -> torch.Tensor:
        """(T, 3, out_h, out_w) uint8 training view of source frames ``frame_indices``.

        ``transform``'s crop box (source pixels) is scaled to stored pixels and rounded (at
        most 0.5 stored px off), read from the memory map alone (T crops, not T frames),
        resized by ``F.interpolate`` in uint8 (bilinear, antialias, channels-last) and flipped.
        """
        entry = self._entry(index)
        rows = self._positions(index, frame_indices)
        _, height, width, _ = entry["shape"]
        sx, sy = entry["scale"]
        x0 = min(max(0, round(transform.x0 * sx)), width - 1)
        y0 = min(max(0, round(transform.y0 * sy)), height - 1)
        x1 = min(width, max(x0 + 1, round((transform.x0 + transform.width) * sx)))
        y1 = min(height, max(y0 + 1, round((transform.y0 + transform.height) * sy)))
        array = self._array(index)
        if rows == list(range(rows[0], rows[0] + len(rows))):  # one slice: no index array
            block = array[rows[0] : rows[0] + len(rows), y0:y1, x0:x1]
        else:
            block = array[rows, y0:y1, x0:x1]
        crop = torch.from_numpy(np.array(block)).permute(0, 3, 1, 2)  # (T, 3, h, w), channels-last memory
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # these small kernels run 4x slower on 2 threads than on 1 (DataLoader workers use 1)
        try:
            if (y1 - y0, x1 - x0) != tuple(transform.out_size):
                crop = F.interpolate(crop, size=tuple(transform.out_size), mode="bilinear", align_corners=False, antialias=True)
            if transform.flip:
                crop = crop.flip(-1)
            return crop.contiguous()
        finally:
            torch.set_num_threads(threads)

    def _positions(self, index: int, frame_indices: Sequence[int]) -> list[int]:
        self._entry(index)
        rows = self._rows[index]
        try:
            return [rows[f] for f in frame_indices]
        except KeyError as missing:
            raise StalePreparedError(
                f"frame {missing.args[0]} of {self.videos[index]['name']!r} is not in the prepared frames at {self.path} "
                f"(they hold the clips of {self.settings.num_frames} frames every {self.settings.frame_stride} from "
                f"starts every {self.settings.start_step}); re-run `mosic prepare` with the run's settings"
            ) from None

    def _array(self, index: int) -> np.ndarray:
        file = self.path / self.videos[index]["file"]
        try:
            return np.load(file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise StalePreparedError(
                f"{file} (frames of {self.videos[index]['name']!r}) cannot be read ({exc}); run the same "
                "`mosic prepare` again"
            ) from exc
