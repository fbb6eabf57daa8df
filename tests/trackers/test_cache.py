"""Track cache (mosic.trackers.cache, the writer): written once, read through the clip's
crop/resize/flip, never used stale. Tracking once is cheaper than tracking in every step, with
the same tracks, also for a cache planned for some runs (``mosic track --for-run``)."""

import json

import numpy as np
import pytest
import torch

import mosic
from conftest import tiny_config
from helpers.videos import Edited
from mosic.data.clips import ClipDataset, collate_clips
from mosic.data.synthetic import SyntheticVideos
from mosic.data.track_cache import planned_starts, planned_starts_for_run
from mosic.data.transforms import ViewTransform
from mosic.trackers.cache import (
    CacheSettings,
    StaleCacheError,
    TrackCache,
    _start_groups,
    clip_starts,
    tracks_in_view,
    write_track_cache,
)
from mosic.trackers.cotracker.tracker import CoTracker3Tracker
from mosic.trackers.oracle import OracleTracker
from mosic.tracks import Tracks, query_grid

SETTINGS = CacheSettings(
    tracker="oracle", weights="none", grid_size=12, num_frames=4, frame_stride=2, start_step=3, track_size=384
)
EXPECT = {"tracker": "oracle", "num_frames": 4, "frame_stride": 2}


def videos(seed=0, num_videos=3):
    return SyntheticVideos(num_videos=num_videos, num_frames=12, size=48, seed=seed)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cache")
    write_track_cache(videos(), OracleTracker(), out, SETTINGS, batch_size=2)
    return out


def test_layout_and_starts(cache_dir):
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    assert manifest["complete"] and manifest["settings"]["grid_size"] == 12
    assert clip_starts(12, 4, 2, 3) == [0, 3]  # span 7: starts 0..5, every 3 frames
    assert clip_starts(5, 4, 2, 1) == [0, 1]  # too short for stride 2: stride 1, span 4
    cache = TrackCache(cache_dir, videos(), EXPECT)
    assert cache.starts(0) == [0, 3] and cache.stride(0) == 2
    tracks = cache.load(0, 3)
    assert tracks.xy.shape == (1, 4, 144, 2) and tracks.visible.dtype == torch.bool
    assert tracks.visible[0, 0].all()  # queries are visible where they are placed


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_cached_tracks_in_the_view_equal_tracking_the_view(cache_dir, flip):
    """Cached source tracks mapped through crop/resize/flip = the oracle run on the augmented clip."""
    source = videos()
    cache = TrackCache(cache_dir, source, EXPECT)
    dataset = ClipDataset(source, 4, 2, 32, (0.3, 0.6), flip, seed=1, track_cache=cache)
    checked = 0
    for i in range(len(dataset)):
        sample = dataset[(0, i)]
        tracks, meta = sample["tracks"], sample["meta"]
        assert meta.frame_indices[0] in cache.starts(i)
        assert meta.transform.flip == bool(flip)
        start = tracks.visible[0, 0]  # tracks whose frame-0 point is inside the crop
        assert 0 < int(start.sum()) < 144  # a 0.3-0.6 crop keeps some points, not all
        assert not tracks.visible[0, :, ~start].any()  # the others are invisible at every frame
        queries = torch.cat([torch.zeros(int(start.sum()), 1), tracks.xy[0, 0, start]], dim=1)[None]
        truth = OracleTracker()(sample["frames"][None], queries, clips=[meta])
        assert torch.allclose(tracks.xy[0, :, start], truth.xy[0], atol=1e-3)
        assert torch.equal(tracks.visible[0, :, start], truth.visible[0])
        checked += 1
    assert checked == 3
    batch = collate_clips([dataset[(0, i)] for i in range(3)])
    assert batch["tracks"].xy.shape == (3, 4, 144, 2)


def test_view_transform_of_points():
    xy = torch.tensor([[[[10.0, 20.0], [0.0, 0.0]], [[12.0, 20.0], [30.0, 30.0]]]])  # (1, T=2, N=2, 2)
    tracks = Tracks(xy, torch.ones(1, 2, 2, dtype=torch.bool))
    crop = ViewTransform(x0=8, y0=16, width=16, height=16, out_size=(32, 32))
    out = tracks_in_view(tracks, crop)
    assert torch.allclose(out.xy[0, 0, 0], torch.tensor([(10.5 - 8) * 2 - 0.5, (20.5 - 16) * 2 - 0.5]))
    assert out.visible[0, :, 0].tolist() == [True, True]
    assert out.visible[0, :, 1].tolist() == [False, False]  # frame-0 point outside the crop: whole track off
    flipped = tracks_in_view(tracks, ViewTransform(8, 16, 16, 16, (32, 32), flip=True))
    assert torch.allclose(flipped.xy[..., 0], 31 - out.xy[..., 0]) and torch.equal(flipped.xy[..., 1], out.xy[..., 1])
    leaving = Tracks(torch.tensor([[[[10.0, 20.0]], [[40.0, 20.0]]]]), torch.ones(1, 2, 1, dtype=torch.bool))
    assert tracks_in_view(leaving, crop).visible[0, :, 0].tolist() == [True, False]  # left the view


def test_stale_settings_videos_and_files_are_rejected(cache_dir, tmp_path):
    with pytest.raises(StaleCacheError, match=r"frame_stride=2.*this run uses frame_stride=6"):
        TrackCache(cache_dir, videos(), {**EXPECT, "frame_stride": 6})
    with pytest.raises(StaleCacheError, match="tracker='oracle'"):
        TrackCache(cache_dir, videos(), {**EXPECT, "tracker": "cotracker3"})
    with pytest.raises(StaleCacheError, match="covers 3 videos, the source has 2"):
        TrackCache(cache_dir, videos(num_videos=2), EXPECT)
    other = TrackCache(cache_dir, Edited(videos()), EXPECT)  # same names and lengths, other pixels
    with pytest.raises(StaleCacheError, match="changed since its tracks were cached"):
        other.load(0, 0)
    with pytest.raises(StaleCacheError, match="not in the track cache"):
        TrackCache(cache_dir, videos(), EXPECT).load(0, 1)
    # a corrupted file fails its checksum
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(cache_dir, copy)
    data = bytearray((copy / "tracks" / "000001.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (copy / "tracks" / "000001.safetensors").write_bytes(bytes(data))
    with pytest.raises(StaleCacheError, match="checksum"):
        TrackCache(copy, videos(), EXPECT).load(1, 0)
    # an interrupted cache is incomplete
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(StaleCacheError, match="incomplete"):
        TrackCache(copy, videos(), EXPECT)
    with pytest.raises(StaleCacheError, match="no track cache"):
        TrackCache(tmp_path / "nothing", videos(), EXPECT)


def test_writing_resumes_and_refuses_other_settings(cache_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(cache_dir, copy)
    (copy / "tracks" / "000002.safetensors").unlink()
    tracked = []
    write_track_cache(videos(), OracleTracker(), copy, SETTINGS, on_video=lambda i, name: tracked.append(i))
    assert tracked == [2]  # only the missing video is tracked again
    TrackCache(copy, videos(), EXPECT).load(2, 0)
    other = CacheSettings(**{**SETTINGS.__dict__, "grid_size": 8})
    with pytest.raises(StaleCacheError, match="grid_size: cache 12 vs 8"):
        write_track_cache(videos(), OracleTracker(), copy, other)


def test_training_reads_the_cache_and_never_builds_a_tracker(cache_dir):
    config = tiny_config(
        **{"tracker.cache": str(cache_dir), "tracker.name": "oracle", "data.num_frames": 4, "data.frame_stride": 2,
           "data.global_batch_size": 3, "train.max_steps": 2}
    )  # fmt: skip
    trainer = mosic.PostPretrainer(config=config).fit(videos())
    assert trainer.step == 2 and trainer._tracker is None
    assert all(np.isfinite(r["loss"]) for r in trainer.history)
    stale = config.with_overrides({"tracker.name": "lk"})
    with pytest.raises(StaleCacheError, match="tracker='oracle'.*tracker='lk'"):
        mosic.PostPretrainer(config=stale).fit(videos())


def test_track_command(tmp_path, capsys):
    from mosic.cli import main

    spec = "synthetic:num_videos=2,num_frames=12,size=48"
    out = tmp_path / "cache"
    args = ["track", spec, "--tracker", "oracle", "--out", str(out), "--grid", "6", "--no-progress"]
    assert main([*args, "data.num_frames=4", "data.frame_stride=2"]) == 0
    assert "train with: tracker.name=oracle tracker.cache=" in capsys.readouterr().out
    assert TrackCache(out, SyntheticVideos.from_spec(spec), EXPECT).load(1, 0).xy.shape == (1, 4, 36, 2)


# ---- tracking once for the cache: CoTracker3 shares per-frame work across the clips it tracks in one call


SMALL = (64, 96)


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


# ---- a cache planned for some runs (mosic track --for-run) tracks only the clip starts those runs read, and gives them exactly the clips and tracks of a full cache


PLANNED_SETTINGS = CacheSettings(tracker="oracle", weights="none", grid_size=6, num_frames=4, frame_stride=2, start_step=1, track_size=384)


def _source():
    return SyntheticVideos(num_videos=6, num_frames=20, size=32, seed=0)


def test_planned_starts_are_the_starts_the_dataset_draws(tmp_path):
    source = _source()
    write_track_cache(source, OracleTracker(), tmp_path, PLANNED_SETTINGS)
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


def _run(cache, seed=0, steps=3, **over):
    return tiny_config(**{
        "tracker.cache": str(cache), "tracker.name": "oracle", "data.num_frames": 4, "data.frame_stride": 2,
        "data.global_batch_size": 2, "train.max_steps": steps, "train.seed": seed, **over,
    })  # fmt: skip


def test_a_planned_cache_trains_like_a_full_one_and_grows_for_the_next_run(tmp_path):
    source = _source()
    full, planned = tmp_path / "full", tmp_path / "planned"
    write_track_cache(source, OracleTracker(), full, PLANNED_SETTINGS)
    run = _run(planned)
    counts = [source.num_frames(i) for i in range(len(source))]
    write_track_cache(source, OracleTracker(), planned, PLANNED_SETTINGS, plan=lambda unusable: planned_starts_for_run(run, counts, 1, unusable))
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
        source, OracleTracker(), planned, PLANNED_SETTINGS, on_video=lambda i, n: tracked.append(i),
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
