"""Track cache, the writing side: run a tracker once per video (``mosic track``).

What a cache holds, its layout and its staleness rules: :mod:`mosic.data.track_cache`.

The reading side (:class:`~mosic.data.track_cache.TrackCache`, used by training) lives in
:mod:`mosic.data.track_cache`.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import distributed as dist
from ..data.clips import BadVideoWarning, ClipTooShortError, effective_stride
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
    write_manifest,
)
from ..data.transforms import tracks_in_view
from ..data.video_files import file_sha256
from ..errors import VideoReadError
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
    plan: Callable[[set[int]], dict[int, set[int]]] | None = None,
    frames_per_call: int = 96,
) -> Path:
    """Track the videos of ``source`` and write the cache; resumable and incremental.

    Every video's clip starts are tracked (:func:`clip_starts`), or with ``plan`` only the
    starts the planned runs read: ``plan(unusable)`` maps a video index to its starts, given
    the videos no run can read (see :func:`mosic.data.track_cache.planned_starts`); when a
    video turns out unreadable while tracking, the plan is made again without it (its clips
    go to substitutes) until nothing changes. A start's tracks do not depend on which other
    starts are tracked, so a planned cache gives its runs exactly the tracks of a full one.

    Videos whose file already exists with the same settings and fingerprint keep their
    tracks; only missing starts are tracked and merged in, so an interrupted run continues
    where it stopped and a cache planned for one run grows for the next. The starts of a
    video are tracked in groups that read at most ``frames_per_call`` distinct frames: each
    frame is decoded once per group and the tracker's per-frame work is shared by the clips
    that read it (:meth:`~mosic.trackers.base.Tracker.track_clips`), ``batch_size`` clips at
    a time. Returns ``out_dir``.

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
    tracker.to(device)
    manifest_name = MANIFEST if world == 1 else PART_MANIFESTS.replace("*", str(rank))
    unusable: set[int] = set()
    while True:
        wanted = None if plan is None else plan(unusable)
        entries: dict[int, dict[str, Any]] = {}
        indices = range(rank, len(source), world)  # under torchrun: every world-th video
        if progress and dist.is_main_process():
            from rich.progress import track as rich_track

            indices = rich_track(indices, description="tracking videos")
        for index in indices:
            want = None if wanted is None else set(wanted.get(index, ()))
            entries[index] = entry = _cache_video(source, index, tracker, settings, out, known, want, batch_size, device, frames_per_call)
            if entry is known.get(entry["name"]):  # nothing was missing
                continue
            _write_manifest(out, settings, [entries[i] for i in sorted(entries)], complete=False, name=manifest_name)
            if on_video is not None:
                on_video(index, entry["name"])
        if world > 1:
            for gathered in dist.all_gather_object(entries):
                entries.update(gathered)
        failed = {i for i, e in entries.items() if "error" in e}
        if plan is None or failed <= unusable:
            break
        unusable |= failed  # their planned clips are drawn from substitutes: plan again
        known.update({e["name"]: e for e in entries.values() if "error" not in e})
    if dist.is_main_process():
        _write_manifest(out, settings, [entries[i] for i in range(len(source))], complete=True)
        for part in out.glob(PART_MANIFESTS):
            part.unlink()
    dist.barrier()
    return out


def _cache_video(source, index, tracker, settings, out: Path, known: dict, want: set[int] | None, batch_size, device, frames_per_call):
    """The manifest entry of video ``index``, tracking the starts it lacks (all, or ``want``)."""
    name = source.video_name(index)
    file = out / "tracks" / f"{index:06d}.safetensors"
    try:
        fingerprint = video_fingerprint(source, index)
        n = source.num_frames(index)
        candidates = clip_starts(n, settings.num_frames, settings.frame_stride, settings.start_step)
        if not candidates:
            raise ClipTooShortError(f"too short: {n} frames, a clip needs {settings.num_frames}")
        needed = set(candidates) if want is None else want & set(candidates)
        old = known.get(name)
        usable = old is not None and "error" not in old and old.get("fingerprint") == fingerprint
        usable = usable and file.is_file() and file_sha256(file) == old["sha256"]
        have = set(old["starts"]) if usable else set()
        if usable and needed <= have:
            return old
        entry = _track_video(source, index, tracker, settings, file, sorted(needed - have), batch_size, device,
                             frames_per_call, keep=(file, old["starts"]) if usable and have else None)
    except (VideoReadError, ClipTooShortError) as error:  # recorded, skipped by training, retried next time
        reason = getattr(error, "reason", str(error))
        warnings.warn(f"mosic track: skipping {name}: {reason}", BadVideoWarning, stacklevel=3)
        return {"name": name, "error": reason}
    entry.update(name=name, fingerprint=fingerprint, decoder=decoder_name(source, index))
    return entry


def _start_groups(starts: list[int], stride: int, num_frames: int, max_frames: int) -> list[list[int]]:
    """Consecutive runs of ``starts`` whose clips read at most ``max_frames`` distinct frames
    (at least one start per group)."""
    groups: list[list[int]] = []
    frames: set[int] = set()
    for start in starts:
        clip = {start + stride * k for k in range(num_frames)}
        if groups and len(frames | clip) <= max_frames:
            groups[-1].append(start)
            frames |= clip
        else:
            groups.append([start])
            frames = clip
    return groups


def _track_video(source, index, tracker, settings, file: Path, starts: list[int], batch_size: int, device,
                 frames_per_call: int, keep: tuple[Path, list[int]] | None = None) -> dict[str, Any]:
    from safetensors import safe_open
    from safetensors.torch import save_file

    from ..data.clips import ClipMeta
    from ..data.transforms import ViewTransform
    from ..tracks import query_grid

    n = source.num_frames(index)
    s = settings
    name = source.video_name(index)
    stride = effective_stride(n, s.num_frames, s.frame_stride)
    truth = source.ground_truth(index)
    tracked: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    if keep is not None:  # tracks already in the cache, verified by their checksum
        with safe_open(str(keep[0]), framework="pt") as f:
            xy_old, vis_old = f.get_tensor("xy"), f.get_tensor("visible")
        tracked.update({st: (xy_old[i], vis_old[i]) for i, st in enumerate(keep[1])})
    for group in _start_groups(starts, stride, s.num_frames, max(frames_per_call, s.num_frames)):
        frame_lists = [[st + stride * k for k in range(s.num_frames)] for st in group]
        needed = sorted({f for frames in frame_lists for f in frames})  # each frame decoded once
        raw = torch.from_numpy(np.ascontiguousarray(source.read_frames(index, needed))).permute(0, 3, 1, 2)
        height, width = raw.shape[-2:]
        scale = min(1.0, s.track_size / min(height, width))
        # the whole frame, resized like a training view (no crop): source <-> tracking pixels
        view = ViewTransform(0, 0, width, height, (round(height * scale), round(width * scale)))
        frames = view.apply_to_frames(raw).to(device)  # (F, 3, h, w)
        position = {f: i for i, f in enumerate(needed)}
        clip_frames = torch.tensor([[position[f] for f in frames_] for frames_ in frame_lists], dtype=torch.int64)
        queries = query_grid(*view.out_size, s.grid_size).expand(len(group), -1, -1).to(device)
        metas = [ClipMeta(name, index, f, view, 0, truth) for f in frame_lists]  # lets the oracle track too
        with torch.no_grad():
            tracks = tracker.track_clips(frames, clip_frames.to(device), queries, clips=metas, batch_size=batch_size)
        xy = view.points_to_source(tracks.xy.float().cpu())
        for i, st in enumerate(group):
            tracked[st] = (xy[i], tracks.visible[i].cpu())
    order = sorted(tracked)
    points = s.grid_size * s.grid_size
    tensors = {
        "xy": torch.stack([tracked[st][0] for st in order]).contiguous() if order else torch.zeros(0, s.num_frames, points, 2),
        "visible": torch.stack([tracked[st][1] for st in order]).to(torch.uint8).contiguous()
        if order else torch.zeros(0, s.num_frames, points, dtype=torch.uint8),
        "starts": torch.tensor(order, dtype=torch.int64),
    }
    tmp = file.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"video": name, "stride": str(stride)})
    os.replace(tmp, file)
    return {"file": f"tracks/{file.name}", "sha256": file_sha256(file), "num_frames": n, "stride": stride, "starts": order}


def _write_manifest(
    out: Path, settings: CacheSettings, entries: list[dict], complete: bool, name: str = MANIFEST
) -> None:
    write_manifest(out, CACHE_VERSION, settings, entries, complete, name)
