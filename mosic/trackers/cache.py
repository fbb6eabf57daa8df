"""Track cache: run a tracker once per video, read the tracks in every training step.

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
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import distributed as dist
from ..data.clips import BadVideoWarning, ClipTooShortError, effective_stride
from ..data.readers import VideoReadError, file_sha256
from ..data.source import VideoSource, decoder_name
from .base import Tracker, Tracks

CACHE_VERSION = 2  # 2: video files are fingerprinted by their bytes, entries record the decoder
MANIFEST = "manifest.json"
PART_MANIFESTS = "manifest.part-*.json"  # one per process of a `torchrun ... mosic track`, merged at the end


class StaleCacheError(ValueError):
    """A track cache does not match the videos or the settings it is used with."""


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


def default_cache_grid(grid_size: int, min_crop_scale: float) -> int:
    """A source grid dense enough that the smallest training crop still holds ~G x G points."""
    return math.ceil(grid_size / math.sqrt(min_crop_scale))


def clip_starts(num_available: int, num_frames: int, stride: int, start_step: int) -> list[int]:
    """The cached clip starts of a video: every ``start_step`` frames that leave room for a clip."""
    stride = effective_stride(num_available, num_frames, stride)
    span = stride * (num_frames - 1) + 1
    return list(range(0, num_available - span + 1, start_step))


def video_fingerprint(source: VideoSource, index: int) -> str:
    """sha256 of the video's name, frame count and content.

    The content is the file's bytes where the source can hash them (video files: see
    :meth:`~mosic.data.readers.VideoFileSource.content_fingerprint`), so the fingerprint does not
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


def weights_digest(path: str | os.PathLike | None) -> str:
    """sha256 of a weights file (what a cache records of the tracker's weights)."""
    if path is None:
        return "none"
    return file_sha256(Path(path))




def write_track_cache(
    source: VideoSource,
    tracker: Tracker,
    out_dir: str | os.PathLike,
    settings: CacheSettings,
    *,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    progress: bool = False,
    on_video: Callable[[int, str], None] | None = None,
) -> Path:
    """Track every video of ``source`` and write the cache; resumable.

    Videos whose file already exists with the same settings and fingerprint are kept,
    so an interrupted run continues where it stopped. Starts of one video are tracked
    together in batches of ``batch_size`` clips. Returns ``out_dir``.

    Under torchrun every process tracks every world-th video and keeps its progress in
    ``manifest.part-RANK.json``; at the end rank 0 writes the complete manifest.
    """
    out = Path(out_dir)
    rank, world = dist.rank(), dist.world_size()
    (out / "tracks").mkdir(parents=True, exist_ok=True)
    previous = _read_manifest(out) if (out / MANIFEST).is_file() else None
    if previous is not None and previous["settings"] != asdict(settings):
        raise StaleCacheError(
            f"{out} holds a cache made with other settings ({_diff(previous['settings'], asdict(settings))}); "
            "choose another --out or delete it"
        )
    known = {v["name"]: v for v in previous["videos"]} if previous else {}
    for part in sorted(out.glob(PART_MANIFESTS)):  # progress of an interrupted multi-process run
        partial = _read_manifest(out, part.name)
        if partial["settings"] == asdict(settings):
            known.update({v["name"]: v for v in partial["videos"]})
    dist.barrier()  # every process has read the old progress before any rewrites it
    entries: dict[int, dict[str, Any]] = {}
    tracker.to(device)
    indices = range(rank, len(source), world)  # under torchrun: every world-th video
    if progress and dist.is_main_process():
        from rich.progress import track as rich_track

        indices = rich_track(indices, description="tracking videos")
    manifest_name = MANIFEST if world == 1 else PART_MANIFESTS.replace("*", str(rank))
    for index in indices:
        name = source.video_name(index)
        file = out / "tracks" / f"{index:06d}.safetensors"
        try:
            fingerprint = video_fingerprint(source, index)
            old = known.get(name)
            if old and old.get("fingerprint") == fingerprint and file.is_file() and file_sha256(file) == old["sha256"]:
                entries[index] = old
                continue
            entry = _track_video(source, index, tracker, settings, file, batch_size, device)
        except (VideoReadError, ClipTooShortError) as error:  # recorded, skipped by training, retried next time
            reason = getattr(error, "reason", str(error))
            warnings.warn(f"mosic track: skipping {name}: {reason}", BadVideoWarning, stacklevel=2)
            entry = {"name": name, "error": reason}
        else:
            entry.update(name=name, fingerprint=fingerprint, decoder=decoder_name(source, index))
        entries[index] = entry
        _write_manifest(out, settings, [entries[i] for i in sorted(entries)], complete=False, name=manifest_name)
        if on_video is not None:
            on_video(index, name)
    if world > 1:
        for gathered in dist.all_gather_object(entries):
            entries.update(gathered)
    if dist.is_main_process():
        _write_manifest(out, settings, [entries[i] for i in range(len(source))], complete=True)
        for part in out.glob(PART_MANIFESTS):
            part.unlink()
    dist.barrier()
    return out


def _track_video(source, index, tracker, settings, file: Path, batch_size: int, device) -> dict[str, Any]:
    from safetensors.torch import save_file

    from ..data.clips import ClipMeta
    from ..data.transforms import ViewTransform
    from .base import query_grid

    n = source.num_frames(index)
    s = settings
    name = source.video_name(index)
    stride = effective_stride(n, s.num_frames, s.frame_stride)
    starts = clip_starts(n, s.num_frames, s.frame_stride, s.start_step)
    if not starts:
        raise ClipTooShortError(f"too short: {n} frames, a clip needs {s.num_frames}")
    truth = source.ground_truth(index)
    xy_parts, vis_parts = [], []
    for first in range(0, len(starts), batch_size):
        chunk = starts[first : first + batch_size]
        frame_lists = [[st + stride * k for k in range(s.num_frames)] for st in chunk]
        clips = torch.from_numpy(np.stack([source.read_frames(index, f) for f in frame_lists])).permute(0, 1, 4, 2, 3)
        height, width = clips.shape[-2:]
        scale = min(1.0, s.track_size / min(height, width))
        # the whole frame, resized like a training view (no crop): source <-> tracking pixels
        view = ViewTransform(0, 0, width, height, (round(height * scale), round(width * scale)))
        video = torch.stack([view.apply_to_frames(c) for c in clips])  # (B, T, 3, h, w)
        queries = query_grid(*view.out_size, s.grid_size).expand(len(chunk), -1, -1)
        metas = [ClipMeta(name, index, f, view, 0, truth) for f in frame_lists]  # lets the oracle track too
        with torch.no_grad():
            tracks = tracker(video.to(device), queries.to(device), clips=metas)
        xy_parts.append(view.points_to_source(tracks.xy.float().cpu()))
        vis_parts.append(tracks.visible.cpu())
    tensors = {
        "xy": torch.cat(xy_parts).contiguous(),
        "visible": torch.cat(vis_parts).to(torch.uint8).contiguous(),
        "starts": torch.tensor(starts, dtype=torch.int64),
    }
    tmp = file.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"video": name, "stride": str(stride)})
    os.replace(tmp, file)
    return {"file": f"tracks/{file.name}", "sha256": file_sha256(file), "num_frames": n, "stride": stride, "starts": starts}


def _write_manifest(
    out: Path, settings: CacheSettings, entries: list[dict], complete: bool, name: str = MANIFEST
) -> None:
    manifest = {
        "version": CACHE_VERSION,
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
    root = path.resolve()
    for i, entry in enumerate(videos):
        if not isinstance(entry, dict):
            raise bad(f"video entry {i} must be an object, got {type(entry).__name__}")
        if "error" in entry:  # a video mosic track could not read: name and reason only
            if set(entry) != {"name", "error"} or not all(isinstance(v, str) for v in entry.values()):
                raise bad(f"video entry {i} of an unreadable video must hold 'name' and 'error' strings only")
            continue
        for key, kind in _ENTRY_KEYS.items():
            if not isinstance(entry.get(key), kind) or isinstance(entry.get(key), bool):
                raise bad(f"video entry {i} needs {key!r} ({kind.__name__}), got {entry.get(key)!r}")
        if not all(isinstance(st, int) and not isinstance(st, bool) for st in entry["starts"]):
            raise bad(f"video entry {i}: 'starts' must be a list of ints")
        file = entry["file"]
        if Path(file).is_absolute() or not (path / file).resolve().is_relative_to(root):
            raise bad(f"video entry {i} names the track file {file!r}, outside the cache folder")


def _diff(old: dict, new: dict) -> str:
    return ", ".join(f"{k}: cache {old.get(k)!r} vs {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))


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
        if not (self.path / MANIFEST).is_file():
            raise StaleCacheError(f"no track cache at {self.path} (no {MANIFEST}); create one with `mosic track`")
        manifest = _read_manifest(self.path)
        if not manifest.get("complete"):
            raise StaleCacheError(f"the track cache at {self.path} is incomplete; run the same `mosic track` again to finish it")
        self.settings = CacheSettings(**manifest["settings"])
        wrong = {k: v for k, v in (expect or {}).items() if getattr(self.settings, k) != v}
        if wrong:
            raise StaleCacheError(
                f"the track cache at {self.path} was made with "
                + ", ".join(f"{k}={getattr(self.settings, k)!r}" for k in wrong)
                + " but this run uses "
                + ", ".join(f"{k}={v!r}" for k, v in wrong.items())
                + "; rebuild it with mosic track or change the run's settings"
            )
        self.videos = manifest["videos"]
        if len(self.videos) != len(source):
            raise StaleCacheError(f"the track cache at {self.path} covers {len(self.videos)} videos, the source has {len(source)}")
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
            raise StaleCacheError(f"start {start} of {entry['name']!r} is not in the track cache") from None
        with safe_open(str(file), framework="pt") as f:  # reads one start, not the whole file
            xy, visible = f.get_slice("xy")[s : s + 1], f.get_slice("visible")[s : s + 1]
        return Tracks(xy, visible.bool())


def tracks_in_view(tracks: Tracks, transform) -> Tracks:
    """Map cached source-pixel tracks (1, T, N, ...) into a clip's view.

    A point is visible where it was visible, lies inside the view, and its frame-0
    position (the query the student sees) lies inside the view.
    """
    xy = transform.points_to_view(tracks.xy)
    inside = transform.inside_view(xy)
    visible = tracks.visible & inside & inside[:, :1]
    return Tracks(xy.float(), visible)
