"""Track cache, the reading side: a cache made by ``mosic track`` opened as a data source.

The writer (it runs a tracker) is :func:`mosic.trackers.cache.write_track_cache`; this
module needs no tracker, so the data package never imports the trackers package.

Tracking dominated the authors' training step (~75% of its FLOPs, REFERENCE-NOTES §1).
``mosic track VIDEOS --tracker NAME --out CACHE`` tracks, for every video, a G x G grid
of source-frame points from each cached clip start ``s`` (every ``start_step`` frames)
through the clip's frames ``s, s + stride, ..., s + stride (T - 1)``; the same frames the
training loop samples. Training with ``tracker.cache=CACHE`` draws clip starts from the
cached ones and maps the stored tracks through the clip's crop/resize/flip
(:class:`~mosic.data.transforms.ViewTransform`); a point outside the view, or whose
frame-0 position is outside it, is invisible.

Layout::

    CACHE/manifest.json           settings, provenance, one entry per video (fingerprint, decoder, sha256)
    CACHE/tracks/000000.safetensors   xy (S, T, N, 2) float32 source pixels,
                                      visible (S, T, N) uint8, starts (S,) int64

A cache whose settings (tracker, weights, clip length, stride) or videos (name, frame
count, content fingerprint, file checksum) do not match raises :class:`StaleCacheError`;
it is never used silently.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..checks import is_int
from ..errors import UntrackedStartError, VideoReadError
from ..tracks import Tracks
from .clips import draw_start, effective_stride, sample_seed
from .source import VideoSource
from .video_files import file_sha256

CACHE_VERSION = 2  # 2: video files are fingerprinted by their bytes, entries record the decoder
MANIFEST = "manifest.json"
PART_MANIFESTS = "manifest.part-*.json"  # one per process of a `torchrun ... mosic track`, merged at the end


class StaleCacheError(ValueError):
    """A track cache does not match the videos or the settings it is used with."""


class MissingStartError(StaleCacheError, UntrackedStartError):
    """A clip start the cache does not hold; training passes a substitute clip over to the
    next video (a clip the run's plan did not foresee), and fails on a clip of its own."""


@dataclass(frozen=True)
class CacheSettings:
    """What a cache was computed with; all of it must match where it is used."""

    tracker: str
    weights: str  # sha256 of the tracker's weights file, or a description ("none", "random")
    grid_size: int  # G of the G x G source-frame grid (N = G * G tracks per start)
    num_frames: int
    frame_stride: int
    start_step: int
    track_size: int  # the shorter side frames were resized to before tracking (no upscaling)


def default_cache_grid(grid_size: int, crop_scale: tuple[float, float]) -> int:
    """The source grid whose average training crop holds the paper's G x G points.

    A crop covering a fraction a of the frame holds about a * S^2 points of an S x S source
    grid; a is drawn uniformly from ``crop_scale``, so S = round(G / sqrt(mean a)): 19 for
    G = 16 and crop scale (0.4, 1) (253 points on average; 144 in the smallest crop, 361 in
    the whole frame). Tracking cost grows with S^2 (docs/benchmarks.md): the earlier rule,
    every crop at least G x G (S = ceil(G / sqrt(min a)) = 26), tracked 1.9x these points.
    """
    low, high = crop_scale
    return max(1, round(grid_size / math.sqrt((low + high) / 2)))


def planned_starts(
    num_frames: Sequence[int | None],
    *,
    clip_frames: int,
    frame_stride: int,
    start_step: int,
    seed: int,
    epochs: int,
    unusable: set[int] = frozenset(),
) -> dict[int, set[int]]:
    """The clip starts a training run with a track cache reads: video index -> starts.

    Replays :class:`~mosic.data.clips.ClipDataset`'s draws (the same seeds, the same
    substitution of unusable videos) for every item of ``epochs`` epochs, a superset of what
    any process count or resume point reads. ``num_frames[i]`` is None for a video that
    cannot be opened; ``unusable`` holds more videos no clip can come from.
    """
    count = len(num_frames)
    never = {i for i, n in enumerate(num_frames) if n is None or n < clip_frames} | set(unusable)
    candidates = {
        i: clip_starts(n, clip_frames, frame_stride, start_step) for i, n in enumerate(num_frames) if i not in never
    }
    plan: dict[int, set[int]] = {}
    for epoch in range(epochs):
        for index in range(count):
            for attempt in range(count):
                video = (index + attempt) % count
                if video in never or not candidates[video]:
                    continue
                rng = np.random.default_rng(sample_seed(seed, epoch, index, attempt))
                plan.setdefault(video, set()).add(draw_start(rng, candidates[video]))
                break
    return plan


def run_epochs(max_steps: int | None, epochs: int | None, num_videos: int, global_batch_size: int) -> int:
    """Epochs a run of ``max_steps`` steps (or ``epochs``) touches, for any process count:
    a process count W gives floor(ceil(V / W) / (B / W)) >= floor(V / B) steps an epoch."""
    if not max_steps:
        return int(epochs or 1)
    return math.ceil(max_steps / max(1, num_videos // global_batch_size))


def planned_starts_for_run(config, num_frames: Sequence[int | None], start_step: int, unusable: set[int] = frozenset()) -> dict[int, set[int]]:
    """:func:`planned_starts` of a :class:`~mosic.config.RunConfig`'s training run."""
    train, data = config.train, config.data
    return planned_starts(
        num_frames,
        clip_frames=data.num_frames,
        frame_stride=data.stride,
        start_step=start_step,
        seed=train.seed,
        epochs=run_epochs(train.max_steps, train.epochs, len(num_frames), data.global_batch_size),
        unusable=unusable,
    )


def clip_starts(num_available: int, num_frames: int, stride: int, start_step: int) -> list[int]:
    """The cached clip starts of a video: every ``start_step`` frames that leave room for a clip."""
    stride = effective_stride(num_available, num_frames, stride)
    span = stride * (num_frames - 1) + 1
    return list(range(0, num_available - span + 1, start_step))


def video_fingerprint(source: VideoSource, index: int) -> str:
    """sha256 of the video's name, frame count and content.

    The content is the file's bytes where the source can hash them (video files: see
    :meth:`~mosic.data.video_files.VideoFileSource.content_fingerprint`), so the fingerprint does not
    depend on which decoder read the video or what it decoded before; else the pixels of the
    first and last frames (frame folders and synthetic videos, whose reads are deterministic).
    """
    n = source.num_frames(index)
    h = hashlib.sha256(f"{source.video_name(index)}|{n}".encode())
    content = getattr(source, "content_fingerprint", None)
    digest = content(index) if callable(content) else None
    if digest is not None:
        h.update(f"|file:{digest}".encode())
        return h.hexdigest()
    frames = np.ascontiguousarray(source.read_frames(index, [0, n - 1]))
    h.update(f"|{frames.shape}".encode())
    h.update(frames.tobytes())
    return h.hexdigest()


def write_manifest(out: Path, version: int, settings: Any, entries: list[dict], complete: bool, name: str = MANIFEST) -> None:
    """Write a folder's manifest atomically (a temporary file, fsync, then ``os.replace``):
    ``version``, ``complete``, the creation time, ``settings`` (a dataclass) and the video entries."""
    manifest = {
        "version": version,
        "complete": complete,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": asdict(settings),
        "videos": entries,
    }
    tmp = out / (name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out / name)


def _is_json(value: Any, kind: type) -> bool:
    """``value`` is of ``kind``; a bool is not an int here."""
    return is_int(value) if kind is int else isinstance(value, kind)


def check_video_entries(
    videos: list, entry_keys: dict[str, type], int_lists: Sequence[str], folder: Path, bad, files: str = "file", where: str = "folder"
) -> None:
    """The video entries of an untrusted manifest: each an object with ``entry_keys`` of their
    types (an unreadable video: ``name`` and ``error`` strings only), the lists ``int_lists`` of
    ints, and a ``file`` inside ``folder``; ``bad(why)`` is the exception to raise (``files`` and
    ``where`` name the files and the folder in its message)."""
    root = folder.resolve()
    for i, entry in enumerate(videos):
        if not isinstance(entry, dict):
            raise bad(f"video entry {i} must be an object, got {type(entry).__name__}")
        if "error" in entry:  # a video the command could not read: name and reason only
            if set(entry) != {"name", "error"} or not all(isinstance(v, str) for v in entry.values()):
                raise bad(f"video entry {i} of an unreadable video must hold 'name' and 'error' strings only")
            continue
        for key, kind in entry_keys.items():
            if not _is_json(entry.get(key), kind):
                raise bad(f"video entry {i} needs {key!r} ({kind.__name__}), got {entry.get(key)!r}")
        for key in int_lists:
            if not all(_is_json(v, int) for v in entry[key]):
                raise bad(f"video entry {i}: {key!r} must be a list of ints")
        file = entry["file"]
        if Path(file).is_absolute() or not (folder / file).resolve().is_relative_to(root):
            raise bad(f"video entry {i} names the {files} {file!r}, outside the {where}")


def _read_manifest(out: Path, name: str = MANIFEST) -> dict[str, Any]:
    try:
        manifest = json.loads((out / name).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StaleCacheError(f"cannot read the track cache manifest {out / name}: {exc}") from exc
    if not isinstance(manifest, dict):
        raise StaleCacheError(f"{out / name} is not a track cache manifest (a JSON object); rebuild it with mosic track")
    if manifest.get("version") != CACHE_VERSION:
        raise StaleCacheError(
            f"{out} is a version {manifest.get('version')} track cache; this mosic reads version {CACHE_VERSION}: "
            "rebuild it with mosic track"
        )
    _check_manifest(manifest, out, name)
    return manifest


_ENTRY_KEYS = {
    "name": str, "file": str, "sha256": str, "fingerprint": str, "decoder": str, "num_frames": int, "stride": int, "starts": list,
}


def _check_manifest(manifest: Any, path: Path, name: str = MANIFEST) -> None:
    """The manifest is untrusted input: its structure is checked before any of it is used, and
    every track file it names must lie inside the cache folder."""
    where = path / name

    def bad(why: str) -> StaleCacheError:
        return StaleCacheError(f"{where} is not a valid track cache manifest: {why}; rebuild it with mosic track")

    if not isinstance(manifest, dict):
        raise bad(f"expected a JSON object, got {type(manifest).__name__}")
    settings = manifest.get("settings")
    fields = set(CacheSettings.__dataclass_fields__)
    if not isinstance(settings, dict) or set(settings) != fields:
        raise bad(f"'settings' must hold exactly {sorted(fields)}, got {settings!r}")
    videos = manifest.get("videos")
    if not isinstance(videos, list):
        raise bad(f"'videos' must be a list, got {type(videos).__name__}")
    check_video_entries(videos, _ENTRY_KEYS, ["starts"], path, bad, "track file", "cache folder")


def _diff(old: dict, new: dict) -> str:
    return ", ".join(f"{k}: cache {old.get(k)!r} vs {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))


def open_manifest_folder(
    path: Path,
    source: VideoSource,
    expect: dict[str, Any] | None,
    *,
    what: str,
    rebuild: str,
    settings_type: type,
    error: type[Exception] = StaleCacheError,
    read: Callable[[Path], dict[str, Any]] | None = None,
) -> tuple[dict[str, Any], Any]:
    """(manifest, settings) of a folder a mosic command wrote (a track cache, prepared frames),
    after the checks both share: the manifest exists and is complete, the settings equal
    ``expect``, and it covers as many videos as ``source``; else ``error``. ``what`` names
    the folder ("the track cache"), ``rebuild`` says how to fix it, ``read`` reads and checks
    its manifest (default: the track cache's)."""
    if not (path / MANIFEST).is_file():
        raise error(f"no {what.removeprefix('the ')} at {path} (no {MANIFEST}); create it with {rebuild}")
    manifest = (read or _read_manifest)(path)
    if not manifest.get("complete"):
        raise error(f"{what} at {path} is incomplete; run the same {rebuild} again to finish it")
    settings = settings_type(**manifest["settings"])
    wrong = {k: v for k, v in (expect or {}).items() if getattr(settings, k) != v}
    if wrong:
        raise error(
            f"{what} at {path} was made with "
            + ", ".join(f"{k}={getattr(settings, k)!r}" for k in wrong)
            + " but this run uses "
            + ", ".join(f"{k}={v!r}" for k, v in wrong.items())
            + f"; re-run {rebuild} with the run's settings (into a new --out), or change the run's settings"
        )
    count = len(manifest["videos"])
    if count != len(source):
        raise error(f"{what} at {path} covers {count} videos, the source has {len(source)}; re-run {rebuild} on these videos")
    return manifest, settings


class TrackCache:
    """A track cache opened for training on ``source``.

    Checks at once that the cache is complete, was made with ``expect`` (a dict of
    :class:`CacheSettings` fields, e.g. the run's ``num_frames`` and ``frame_stride``)
    and covers the same videos in the same order with the same frame counts. Each
    video's content fingerprint and file checksum are verified the first time its
    tracks are read (per process), before any of them is used.
    """

    def __init__(self, path: str | os.PathLike, source: VideoSource, expect: dict[str, Any] | None = None):
        self.path = Path(path)
        manifest, self.settings = open_manifest_folder(
            self.path, source, expect, what="the track cache", rebuild="`mosic track`", settings_type=CacheSettings
        )
        self.videos = manifest["videos"]
        for index, entry in enumerate(self.videos):
            if "error" in entry:  # unreadable when tracked: training skips it (reading fails again)
                if entry["name"] != source.video_name(index):
                    raise StaleCacheError(
                        f"video {index} is {source.video_name(index)!r}, but the track cache at {self.path} has "
                        f"{entry['name']!r}; rebuild it with mosic track"
                    )
                continue
            name, n = source.video_name(index), source.num_frames(index)
            if entry["name"] != name or entry["num_frames"] != n:
                raise StaleCacheError(
                    f"video {index} is {name!r} with {n} frames, but the track cache at {self.path} has "
                    f"{entry['name']!r} with {entry['num_frames']} frames; rebuild it with mosic track"
                )
        self.source = source
        self._verified: set[int] = set()

    @property
    def unreadable(self) -> dict[str, str]:
        """Videos ``mosic track`` could not read: name -> reason."""
        return {e["name"]: e["error"] for e in self.videos if "error" in e}

    def starts(self, index: int) -> list[int]:
        entry = self.videos[index]
        if "error" in entry:
            raise VideoReadError(entry["name"], f"{entry['error']} (mosic track could not track it)")
        return entry["starts"]

    def candidate_starts(self, index: int) -> list[int]:
        """Every start a clip of video ``index`` may have (what training draws from); a cache
        planned for some runs tracked only theirs (:meth:`starts`)."""
        entry = self.videos[index]
        if "error" in entry:
            raise VideoReadError(entry["name"], f"{entry['error']} (mosic track could not track it)")
        s = self.settings
        return clip_starts(entry["num_frames"], s.num_frames, s.frame_stride, s.start_step)

    def missing_starts(self, plan: dict[int, set[int]]) -> dict[str, list[int]]:
        """Video name -> the starts of ``plan`` (:func:`planned_starts`) this cache lacks."""
        missing = {}
        for index, starts in plan.items():
            entry = self.videos[index]
            if "error" not in entry and (lacking := sorted(set(starts) - set(entry["starts"]))):
                missing[entry["name"]] = lacking
        return missing

    def stride(self, index: int) -> int:
        return self.videos[index]["stride"]

    def load(self, index: int, start: int) -> Tracks:
        """Tracks of the clip starting at ``start``: xy (1, T, N, 2) source pixels, visible (1, T, N)."""
        from safetensors import safe_open

        entry = self.videos[index]
        file = self.path / entry["file"]
        if index not in self._verified:
            if not file.is_file():
                raise StaleCacheError(
                    f"{file} (tracks of {entry['name']!r}) is missing from the track cache at {self.path}; "
                    "run the same `mosic track` again to restore it"
                )
            digest = file_sha256(file)
            if digest != entry["sha256"]:
                raise StaleCacheError(
                    f"{file} does not match its checksum in the manifest (corrupt or replaced): sha256 "
                    f"{digest[:16]}... but the manifest records {str(entry['sha256'])[:16]}... for {entry['name']!r}. "
                    "Run the same `mosic track` again: it re-tracks the videos whose files fail their checksum"
                )
            if video_fingerprint(self.source, index) != entry["fingerprint"]:
                raise StaleCacheError(
                    f"video {entry['name']!r} changed since its tracks were cached in {self.path}; rebuild with mosic track"
                )
            self._verified.add(index)
        try:
            s = entry["starts"].index(start)
        except ValueError:
            raise MissingStartError(
                f"start {start} of {entry['name']!r} is not in the track cache at {self.path} (it holds the starts "
                "of the runs it was planned for); add this run's with `mosic track VIDEOS --out CACHE --for-run "
                "CONFIG` (it tracks only what is missing), or all starts without --for-run"
            ) from None
        with safe_open(str(file), framework="pt") as f:  # reads one start, not the whole file
            xy, visible = f.get_slice("xy")[s : s + 1], f.get_slice("visible")[s : s + 1]
        return Tracks(xy, visible.bool())
