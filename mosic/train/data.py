"""A run's training data: the videos, their clips (with cached tracks and prepared frames
when the config names them), this process's sampler and the loader."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from .. import distributed as dist
from ..config import ConfigError, RunConfig
from ..data.clips import ClipDataset, collate_clips
from ..data.sampler import EpochSampler
from .inputs import micro_batches


@dataclass
class TrainingData:
    """``dataset`` (one item per video), this process's ``sampler`` and batch size."""

    dataset: ClipDataset
    sampler: EpochSampler
    batch_size: int  # clips per process per step
    num_workers: int

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch

    def loader(self, start_step: int, pin_memory: bool) -> DataLoader:
        """Batches from global step ``start_step`` on (an endless stream over epochs)."""
        self.sampler.start_step = start_step
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=self.sampler,
            num_workers=self.num_workers,
            collate_fn=collate_clips,
            pin_memory=pin_memory,
            generator=torch.Generator(),  # the loader's seed draw leaves the global RNG (resumed exactly) alone
        )


def open_training_data(config: RunConfig, videos: Any) -> TrainingData:
    """Open ``videos`` (anything :func:`mosic.data.open_videos` takes) as the run's clips,
    checked against the config: a batch this process count can split, enough videos for
    one step, and a track cache / prepared frames that fit the run."""
    from ..data.video_files import open_videos

    data, train = config.data, config.train
    source = open_videos(videos, backend=data.backend, decode_timeout=data.decode_timeout)
    cache = open_track_cache(config, source)
    dataset = ClipDataset(
        source,
        data.num_frames,
        data.stride,
        data.size,
        data.crop_scale,
        data.flip_probability,
        train.seed,
        track_cache=cache,
        skip_bad_videos=data.skip_bad_videos,
        prepared=open_prepared(config, source, cache),
    )
    world = dist.world_size()
    if data.global_batch_size % world:
        raise ConfigError(f"data.global_batch_size={data.global_batch_size} is not divisible by the {world} processes")
    per_rank = data.global_batch_size // world
    micro_batches(per_rank, train.accumulation_steps)  # fails early when it cannot split
    sampler = EpochSampler(dataset, num_replicas=world, rank=dist.rank(), seed=train.seed, batch_size=per_rank)
    if sampler.steps_per_epoch == 0:
        raise ValueError(
            f"{len(dataset)} videos are fewer than one global batch of {data.global_batch_size} clips; "
            "lower data.global_batch_size or add videos"
        )
    return TrainingData(dataset, sampler, per_rank, data.num_workers)


def open_track_cache(config: RunConfig, source):
    """The run's track cache (``tracker.cache``), checked against the tracker, clip settings
    and weights, and holding every clip start this run reads; None without."""
    cfg = config.tracker
    if cfg.cache is None:
        return None
    from ..data.track_cache import TrackCache
    from ..trackers.cache import weights_digest

    expect = {"tracker": cfg.name, "num_frames": config.data.num_frames, "frame_stride": config.data.stride}
    if isinstance(cfg.kwargs.get("weights"), str):
        expect["weights"] = weights_digest(cfg.kwargs["weights"])
    cache = TrackCache(cfg.cache, source, expect)
    check_planned_starts(config, cache)
    return cache


def check_planned_starts(config: RunConfig, cache) -> None:
    """Fail before training when the cache lacks a start this run will read (a cache
    planned for other runs: ``mosic track --for-run``)."""
    from ..data.track_cache import StaleCacheError, planned_starts_for_run

    counts = [None if "error" in e else e["num_frames"] for e in cache.videos]
    missing = cache.missing_starts(planned_starts_for_run(config, counts, cache.settings.start_step))
    if missing:
        total = sum(map(len, missing.values()))
        example = ", ".join(f"{name}: {starts[:3]}" for name, starts in list(missing.items())[:3])
        raise StaleCacheError(
            f"the track cache at {cache.path} lacks {total} clip starts of {len(missing)} videos that this run "
            f"reads ({example}{', ...' if len(missing) > 3 else ''}): it was planned for other runs. Add them with "
            "`mosic track VIDEOS --out CACHE --for-run CONFIG` (this run's config; only the missing starts are "
            "tracked), or track every start without --for-run"
        )


def open_prepared(config: RunConfig, source, cache):
    """The run's prepared frames (``data.prepared``), checked against its settings and videos
    (and the track cache's start lattice) before training; None without."""
    data = config.data
    if data.prepared is None:
        return None
    from ..data.prepared import PreparedFrames, StalePreparedError, default_short_side

    expect = {"num_frames": data.num_frames, "frame_stride": data.stride}
    if cache is not None:
        expect["start_step"] = cache.settings.start_step
    try:
        prepared = PreparedFrames(data.prepared, source, expect)
    except StalePreparedError as error:
        raise StalePreparedError(f"data.prepared: {error}") from None
    wanted = default_short_side(data.size, data.crop_scale)
    shrunk = any("error" not in e and min(e["height"], e["width"]) > prepared.settings.short_side for e in prepared.videos)
    if prepared.settings.short_side < wanted and shrunk:
        warnings.warn(
            f"data.prepared: the frames at {prepared.path} were stored with a shorter side of "
            f"{prepared.settings.short_side} px; data.size={data.size} with crop_scale {data.crop_scale} wants "
            f"{wanted} px, so small crops are upscaled (re-run `mosic prepare` with --short-side {wanted})",
            stacklevel=4,
        )
    return prepared
