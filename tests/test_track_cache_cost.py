"""What makes tracking once cheaper than tracking in every step, with the same tracks:

* the per-frame work of CoTracker3 (resize, CNN, feature pyramid) is done once per frame of
  a video and shared by the overlapping clips that read it (``Tracker.track_clips``);
* a cache planned for some runs (``mosic track --for-run``) tracks only the clip starts
  those runs read, and gives them exactly the clips and tracks of a full cache;
* the source grid's default: the average crop holds the paper's G x G points.
"""

import json

import numpy as np
import pytest
import torch

import mosic
from conftest import tiny_config
from mosic.data.clips import ClipDataset
from mosic.data.synthetic import SyntheticVideos
from mosic.data.track_cache import (
    StaleCacheError,
    TrackCache,
    clip_starts,
    default_cache_grid,
    planned_starts,
    planned_starts_for_run,
    run_epochs,
)
from mosic.data.transforms import ViewTransform
from mosic.trackers.cache import CacheSettings, _start_groups, write_track_cache
from mosic.trackers.cotracker.tracker import CoTracker3Tracker
from mosic.trackers.lucas_kanade import LucasKanadeTracker
from mosic.trackers.oracle import OracleTracker
from mosic.tracks import query_grid

SMALL = (64, 96)


def _video_and_clips(frames=20, clip_len=6, stride=2, step=2, size=(40, 56), seed=0):
    g = torch.Generator().manual_seed(seed)
    video = torch.randint(0, 256, (frames, 3, *size), generator=g, dtype=torch.uint8)
    video = torch.nn.functional.avg_pool2d(video.float(), 3, 1, 1).to(torch.uint8)  # some spatial structure
    starts = clip_starts(frames, clip_len, stride, step)
    clip_frames = torch.tensor([[s + stride * k for k in range(clip_len)] for s in starts])
    queries = query_grid(*size, 5).expand(len(starts), -1, -1).clone()
    queries[:, ::3, 0] = 2.0  # some queries after frame 0
    return video, clip_frames, queries


@pytest.mark.parametrize("online", [False, True])
def test_cotracker3_shares_per_frame_work_and_equals_tracking_each_clip(online):
    torch.manual_seed(0)
    tracker = CoTracker3Tracker(weights=False, online=online, device="cpu", model_resolution=SMALL, iters=2)
    video, clip_frames, queries = _video_and_clips()
    assert clip_frames.shape[0] >= 4 and len(set(clip_frames.flatten().tolist())) < clip_frames.numel() / 2
    calls = []
    hook = tracker.model.fnet.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    shared = tracker.track_clips(video, clip_frames, queries, batch_size=3)
    encoded_shared = sum(calls)
    calls.clear()
    alone = [tracker(video[c][None], q[None]) for c, q in zip(clip_frames, queries)]
    hook.remove()
    assert encoded_shared == video.shape[0] and sum(calls) == clip_frames.numel()  # each frame once vs once per clip
    xy = torch.cat([a.xy for a in alone])
    visible = torch.cat([a.visible for a in alone])
    assert shared.xy.shape == xy.shape
    assert (shared.xy - xy).abs().max() <= 1e-4  # pixels
    assert torch.equal(shared.visible, visible)


def test_the_default_track_clips_is_tracking_each_clip():
    tracker = LucasKanadeTracker()
    video, clip_frames, queries = _video_and_clips(frames=12, clip_len=4)
    shared = tracker.track_clips(video, clip_frames, queries, batch_size=2)
    alone = tracker(video[clip_frames], queries)
    assert torch.equal(shared.xy, alone.xy) and torch.equal(shared.visible, alone.visible)
    with pytest.raises(ValueError, match=r"clip_frames must index the 12 frames"):
        tracker.track_clips(video, clip_frames + 100, queries)
    with pytest.raises(ValueError, match=r"queries must be \(S="):
        tracker.track_clips(video, clip_frames, queries[:1])


class _FramesSource(SyntheticVideos):
    """Synthetic videos with random textured frames (CoTracker needs texture, not exactness)."""


def test_a_cotracker3_cache_equals_tracking_each_clip_in_source_pixels(tmp_path):
    torch.manual_seed(0)
    tracker = CoTracker3Tracker(weights=False, device="cpu", model_resolution=SMALL, iters=1)
    source = SyntheticVideos(num_videos=1, num_frames=14, size=48, seed=3)
    settings = CacheSettings(tracker="cotracker3", weights="random", grid_size=4, num_frames=4, frame_stride=2, start_step=2, track_size=32)
    write_track_cache(source, tracker, tmp_path, settings, batch_size=2, frames_per_call=7)  # several groups
    cache = TrackCache(tmp_path, source)
    assert cache.starts(0) == clip_starts(14, 4, 2, 2) == [0, 2, 4, 6]
    frames = torch.from_numpy(np.asarray(source.read_frames(0, list(range(14))))).permute(0, 3, 1, 2)
    view = ViewTransform(0, 0, 48, 48, (32, 32))
    for start in cache.starts(0):
        clip = view.apply_to_frames(frames[start : start + 8 : 2])
        expected = tracker(clip[None], query_grid(32, 32, 4)[None])
        cached = cache.load(0, start)
        assert (cached.xy - view.points_to_source(expected.xy)).abs().max() <= 1e-4
        assert torch.equal(cached.visible, expected.visible)


def test_start_groups_bound_the_frames_of_a_call():
    starts = list(range(0, 60, 3))
    groups = _start_groups(starts, stride=3, num_frames=8, max_frames=16)
    assert [s for g in groups for s in g] == starts
    for group in groups:
        frames = {s + 3 * k for s in group for k in range(8)}
        assert len(frames) <= 16
    assert _start_groups([0, 50], 3, 8, 8) == [[0], [50]]


def test_default_grid_rule():
    assert default_cache_grid(16, (0.4, 1.0)) == 19  # 0.7 * 19^2 = 253 points in the average crop
    assert default_cache_grid(16, (1.0, 1.0)) == 16
    assert default_cache_grid(8, (0.2, 0.6)) == 13


SETTINGS = CacheSettings(tracker="oracle", weights="none", grid_size=6, num_frames=4, frame_stride=2, start_step=1, track_size=384)


def _source():
    return SyntheticVideos(num_videos=6, num_frames=20, size=32, seed=0)


def test_planned_starts_are_the_starts_the_dataset_draws(tmp_path):
    source = _source()
    write_track_cache(source, OracleTracker(), tmp_path, SETTINGS)
    cache = TrackCache(tmp_path, source)
    dataset = ClipDataset(source, 4, 2, 16, (0.4, 1.0), seed=7, track_cache=cache)
    drawn: dict[int, set[int]] = {}
    for epoch in range(3):
        for i in range(len(dataset)):
            meta = dataset[(epoch, i)]["meta"]
            drawn.setdefault(meta.index, set()).add(meta.frame_indices[0])
    counts = [source.num_frames(i) for i in range(len(source))]
    plan = planned_starts(counts, clip_frames=4, frame_stride=2, start_step=1, seed=7, epochs=3)
    assert plan == drawn
    assert sum(map(len, plan.values())) < sum(len(cache.candidate_starts(i)) for i in range(6))  # 14 starts a video
    # a video no clip can come from: its clips go to the next video, with the substitute's seed
    substitute = planned_starts(counts, clip_frames=4, frame_stride=2, start_step=1, seed=7, epochs=3, unusable={2})
    assert 2 not in substitute and substitute[3] >= plan[3]


def test_run_epochs_cover_any_process_count():
    assert run_epochs(None, 4, 100, 8) == 4
    assert run_epochs(25, None, 100, 8) == 3  # 12 steps an epoch with one process
    for world in (1, 2, 4, 8):  # DistributedSampler's steps per epoch are never fewer
        per_rank = 8 // world
        assert -(-100 // world) // per_rank >= 100 // 8


def _run(cache, seed=0, steps=3, **over):
    return tiny_config(**{
        "tracker.cache": str(cache), "tracker.name": "oracle", "data.num_frames": 4, "data.frame_stride": 2,
        "data.global_batch_size": 2, "train.max_steps": steps, "train.seed": seed, **over,
    })  # fmt: skip


def test_a_planned_cache_trains_like_a_full_one_and_grows_for_the_next_run(tmp_path):
    source = _source()
    full, planned = tmp_path / "full", tmp_path / "planned"
    write_track_cache(source, OracleTracker(), full, SETTINGS)
    run = _run(planned)
    counts = [source.num_frames(i) for i in range(len(source))]
    write_track_cache(source, OracleTracker(), planned, SETTINGS, plan=lambda unusable: planned_starts_for_run(run, counts, 1, unusable))
    held = sum(len(v["starts"]) for v in json.loads((planned / "manifest.json").read_text())["videos"])
    assert 0 < held < 6 * 14
    losses = [r["loss"] for r in mosic.PostPretrainer(config=run).fit(source).history]
    reference = [r["loss"] for r in mosic.PostPretrainer(config=_run(full)).fit(source).history]
    assert losses == reference  # the same clips, the same tracks
    other = _run(planned, seed=5)
    with pytest.raises(StaleCacheError, match=r"lacks \d+ clip starts .*--for-run"):
        mosic.PostPretrainer(config=other).fit(source)
    tracked = []
    write_track_cache(
        source, OracleTracker(), planned, SETTINGS, on_video=lambda i, n: tracked.append(i),
        plan=lambda unusable: planned_starts_for_run(other, counts, 1, unusable),
    )
    assert tracked  # only videos that lacked a start were tracked again
    cache = TrackCache(planned, source)
    for i in range(6):  # merged starts hold the tracks a full cache holds
        for start in cache.starts(i):
            a, b = cache.load(i, start), TrackCache(full, source).load(i, start)
            assert torch.equal(a.xy, b.xy) and torch.equal(a.visible, b.visible)
    assert mosic.PostPretrainer(config=other).fit(source).step == 3


def test_track_command_for_a_run(tmp_path, capsys):
    from mosic.cli import main

    run = _run(tmp_path / "cache")
    run.save(tmp_path / "run.yaml")
    spec = "synthetic:num_videos=6,num_frames=20,size=32,seed=0"
    args = ["track", spec, "--out", str(tmp_path / "cache"), "--for-run", str(tmp_path / "run.yaml"), "--grid", "6",
            "--start-step", "1", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "the starts of 1 planned run:" in printed and "of 84 clip starts" in printed
    assert mosic.PostPretrainer(config=run).fit(SyntheticVideos.from_spec(spec)).step == 3
