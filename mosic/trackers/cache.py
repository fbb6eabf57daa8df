"""Track cache, the writing side: run a tracker once per video (``mosic track``).

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

The reading side (:class:`~mosic.data.track_cache.TrackCache`, used by training) lives in
:mod:`mosic.data.track_cache`.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import distributed as dist
from ..data.clips import BadVideoWarning, ClipTooShortError, effective_stride
from ..data.readers import VideoReadError, file_sha256
from ..data.source import VideoSource, decoder_name
from ..data.track_cache import (  # the reading side, re-exported here
    CACHE_VERSION,
    MANIFEST,
    PART_MANIFESTS,
    CacheSettings,
    StaleCacheError,
    TrackCache,
    _diff,
    _read_manifest,
    clip_starts,
    default_cache_grid,
    video_fingerprint,
)
from ..data.transforms import tracks_in_view
from .base import Tracker

__all__ = [
    "CACHE_VERSION", "CacheSettings", "StaleCacheError", "TrackCache", "clip_starts", "default_cache_grid",
    "tracks_in_view", "video_fingerprint", "weights_digest", "write_track_cache",
]


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
    from ..tracks import query_grid

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
