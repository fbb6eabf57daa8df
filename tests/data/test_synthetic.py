"""SyntheticVideos: determinism, protocol, masks and exact ground-truth tracks."""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest

from mosic.data.source import GroundTruth, VideoSource
from mosic.data.synthetic import SyntheticScene, SyntheticVideos, VideoIndexError

SIZE, FRAMES, VIDEOS = 64, 24, 16


@pytest.fixture(scope="module")
def source() -> SyntheticVideos:
    return SyntheticVideos(num_videos=VIDEOS, num_frames=FRAMES, size=SIZE, seed=0)


def _interior(masks: np.ndarray) -> np.ndarray:
    """(T, H, W) bool: the pixel and its 8 neighbours carry the same id (False on the border)."""
    out = np.zeros(masks.shape, dtype=bool)
    centre = masks[:, 1:-1, 1:-1]
    same = np.ones(centre.shape, dtype=bool)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            same &= masks[:, 1 + di : masks.shape[1] - 1 + di, 1 + dj : masks.shape[2] - 1 + dj] == centre
    out[:, 1:-1, 1:-1] = same
    return out


def _grid_queries(stride: int = 2) -> np.ndarray:
    """(N, 3) queries (0, x, y) at pixel centres of frame 0."""
    ys, xs = np.mgrid[0:SIZE:stride, 0:SIZE:stride]
    return np.stack([np.zeros(xs.size), xs.ravel(), ys.ravel()], axis=1).astype(np.float64)


@pytest.fixture(scope="module")
def tracked(source):
    """Per video: scene, instance masks, queries, tracks from frame 0 and the tracked ids."""
    out = []
    frames = list(range(FRAMES))
    queries = _grid_queries()
    for v in range(VIDEOS):
        scene = source.ground_truth(v)
        masks = scene.instance_masks(frames)
        xy, visible = scene.tracks(frames, queries)
        ids = masks[0, queries[:, 2].astype(int), queries[:, 1].astype(int)]
        out.append((scene, masks, queries, xy, visible, ids))
    return out


def _in_frame(xy: np.ndarray) -> np.ndarray:
    return (xy >= -0.5).all(-1) & (xy <= SIZE - 0.5).all(-1)


def _mask_at(masks: np.ndarray, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mask value and interior flag at the nearest pixel of (T, N, 2) in-frame positions."""
    j = np.clip(np.rint(xy[..., 0]).astype(int), 0, SIZE - 1)
    i = np.clip(np.rint(xy[..., 1]).astype(int), 0, SIZE - 1)
    t = np.arange(len(xy))[:, None]
    return masks[t, i, j], _interior(masks)[t, i, j]


# ---------------------------------------------------------------- protocol, shapes, determinism


def test_protocol_shapes_and_dtypes():
    ds = SyntheticVideos(num_videos=3, num_frames=5, size=(24, 40), seed=1, num_classes=3)
    assert isinstance(ds, VideoSource)
    assert len(ds) == 3 and ds.num_frames(2) == 5 and ds.fps(0) == 30.0
    assert ds.video_name(2) == "synthetic/seed1/00002"
    assert ds.classes[0] == "background" and len(ds.classes) == 4 and len(set(ds.classes)) == 4
    frames = ds.read_frames(1, [4, 0, 0])
    assert frames.shape == (3, 24, 40, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames[1], frames[2])
    np.testing.assert_array_equal(frames[0], ds.read_frames(1, [4])[0])
    assert ds.read_frames(1, []).shape == (0, 24, 40, 3)

    gt = ds.ground_truth(1)
    assert isinstance(gt, GroundTruth) and isinstance(gt, SyntheticScene)
    for masks in (gt.instance_masks([0, 2]), gt.class_masks([0, 2])):
        assert masks.shape == (2, 24, 40) and masks.dtype == np.int64
    assert gt.amodal_masks([0, 2]).shape == (2, gt.num_objects, 24, 40)
    xy, visible = gt.tracks([0, 2, 4], np.array([[0, 3.0, 4.0], [2, 10.5, 7.25]]))
    assert xy.shape == (3, 2, 2) and xy.dtype == np.float32
    assert visible.shape == (3, 2) and visible.dtype == bool

    item = ds[2]
    assert item["name"] == "synthetic/seed1/00002"
    assert item["frames"].shape == (5, 24, 40, 3) and item["frames"].dtype == np.uint8
    np.testing.assert_array_equal(item["frames"], ds.read_frames(2, range(5)))
    np.testing.assert_array_equal(item["instance_masks"], ds.ground_truth(2).instance_masks(range(5)))
    np.testing.assert_array_equal(item["class_masks"], ds.ground_truth(2).class_masks(range(5)))
    assert [item["name"] for item in ds] == [ds.video_name(i) for i in range(3)]


def test_determinism():
    a = SyntheticVideos(num_videos=8, num_frames=6, size=32, seed=3)
    b = SyntheticVideos(num_videos=8, num_frames=6, size=32, seed=3)
    c = SyntheticVideos(num_videos=8, num_frames=6, size=32, seed=4)
    for i in range(5):
        b.read_frames(i, range(6))  # reading other videos first changes nothing
    assert a.read_frames(5, range(6)).tobytes() == b.read_frames(5, range(6)).tobytes()
    assert a.read_frames(5, range(6)).tobytes() != c.read_frames(5, range(6)).tobytes()
    assert a.read_frames(5, range(6)).tobytes() != a.read_frames(6, range(6)).tobytes()
    np.testing.assert_array_equal(a.ground_truth(5).instance_masks(range(6)), b.ground_truth(5).instance_masks(range(6)))
    # a video is the same whatever the dataset length
    d = SyntheticVideos(num_videos=100, num_frames=6, size=32, seed=3)
    np.testing.assert_array_equal(a.read_frames(7, [2]), d.read_frames(7, [2]))


def test_pickle_small_round_trip():
    ds = SyntheticVideos(num_videos=4, num_frames=8, size=48, seed=2)
    ds.read_frames(0, range(8))
    blob = pickle.dumps(ds)
    assert len(blob) < 1000
    clone = pickle.loads(blob)
    np.testing.assert_array_equal(clone.read_frames(3, [0, 7]), ds.read_frames(3, [0, 7]))

    gt = ds.ground_truth(3)
    gt_blob = pickle.dumps(gt)
    assert len(gt_blob) < 20_000
    gt2 = pickle.loads(gt_blob)
    queries = np.array([[0, 10.0, 20.0], [1, 30.0, 5.0]])
    for a, b in zip(gt.tracks([0, 5], queries), gt2.tracks([0, 5], queries)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(gt.render(range(8)), ds.read_frames(3, range(8)))


def test_argument_validation():
    with pytest.raises(ValueError, match="num_videos"):
        SyntheticVideos(num_videos=-1)
    with pytest.raises(ValueError, match="num_frames"):
        SyntheticVideos(num_frames=0)
    with pytest.raises(ValueError, match="size"):
        SyntheticVideos(size=(0, 8))
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticVideos(num_classes=0)
    with pytest.raises(ValueError, match="objects_per_video"):
        SyntheticVideos(objects_per_video=(3, 1))
    with pytest.raises(ValueError, match="color_jitter"):
        SyntheticVideos(color_jitter=-0.1)
    ds = SyntheticVideos(num_videos=4, num_frames=6, size=16)
    for call in (ds.video_name, ds.num_frames, ds.fps, ds.ground_truth, ds.__getitem__):
        with pytest.raises(ValueError, match=r"0\.\.3"):
            call(4)
        with pytest.raises(IndexError):
            call(-1)
    with pytest.raises(ValueError, match=r"0\.\.5"):
        ds.read_frames(0, [0, 6])
    with pytest.raises(VideoIndexError):
        ds.ground_truth(0).instance_masks([-1])
    with pytest.raises(ValueError, match="ints"):
        ds.read_frames(0, [0.5])
    gt = ds.ground_truth(0)
    with pytest.raises(ValueError, match="queries"):
        gt.tracks([0, 1], np.zeros((3, 2)))
    with pytest.raises(ValueError, match="integers"):
        gt.tracks([0, 1], np.array([[2, 1.0, 1.0]]))


def test_render_speed_budget():
    ds = SyntheticVideos(num_videos=2, num_frames=24, size=64)
    ds.read_frames(0, range(24))
    start = time.perf_counter()
    ds.read_frames(1, range(24))
    assert time.perf_counter() - start < 1.0  # loose bound (target ~0.05 s) for slow CI machines


# ---------------------------------------------------------------- masks


def test_class_masks_follow_instances(source, tracked):
    seen = set()
    for scene, masks, *_ in tracked:
        classes = scene.class_masks(range(FRAMES))
        np.testing.assert_array_equal(classes, scene.instance_classes[masks])
        assert masks.min() >= 0 and masks.max() <= scene.num_objects
        assert 1 <= scene.instance_classes[1:].min() and scene.instance_classes.max() <= source.num_classes
        seen |= set(np.unique(classes).tolist())
    assert seen == set(range(source.num_classes + 1))


def test_every_class_of_eight_appears():
    ds = SyntheticVideos(num_videos=16, num_frames=4, size=48, num_classes=8)
    seen = set()
    for v in range(len(ds)):
        seen |= set(np.unique(ds.ground_truth(v).class_masks(range(4))).tolist())
    assert seen == set(range(9))
    assert len(set(ds.classes)) == 9


def test_objects_occlude_each_other(tracked):
    overlaps = 0
    for scene, masks, *_ in tracked:
        amodal = scene.amodal_masks(range(FRAMES))  # (T, K, H, W)
        # the instance mask is the frontmost (largest id) object covering the pixel
        k = np.arange(1, scene.num_objects + 1)[None, :, None, None]
        np.testing.assert_array_equal(masks, (amodal * k).max(axis=1, initial=0))
        overlaps += int((amodal.sum(axis=1) >= 2).sum())
    assert overlaps > 100


def test_background_only_and_static_camera():
    ds = SyntheticVideos(num_videos=2, num_frames=5, size=32, objects_per_video=0, camera_motion=False)
    gt = ds.ground_truth(1)
    assert gt.num_objects == 0
    assert not gt.instance_masks(range(5)).any()
    frames = ds.read_frames(1, range(5))
    assert (frames == frames[:1]).all() and frames.std() > 5  # textured, static
    np.testing.assert_array_equal(gt.camera_offset(range(5)), np.zeros((5, 2)))


# ---------------------------------------------------------------- tracks


def test_tracks_start_at_queries(tracked):
    for scene, masks, queries, xy, visible, ids in tracked:
        np.testing.assert_allclose(xy[0], queries[:, 1:], atol=1e-5)
        assert visible[0].all()


def test_visible_tracks_land_on_their_instance(tracked):
    checked = 0
    for scene, masks, queries, xy, visible, ids in tracked:
        inside = _in_frame(xy)
        assert not (visible & ~inside).any()
        found, interior = _mask_at(masks, xy)
        sel = visible & interior
        np.testing.assert_array_equal(found[sel], np.broadcast_to(ids, found.shape)[sel])
        checked += int((sel & (ids > 0)).sum())
    assert checked > 10_000  # many object points, not only background


def test_track_colours_are_constant_and_match_frames(tracked):
    diffs, baseline = [], []
    for scene, masks, queries, xy, visible, ids in tracked[:4]:
        colours = scene.colours_at(range(FRAMES), xy.astype(np.float64))
        frames = scene.render(range(FRAMES)).astype(np.float64)
        # rendered pixels are the exact colours at pixel centres, rounded
        np.testing.assert_allclose(colours[0], frames[0, queries[:, 2].astype(int), queries[:, 1].astype(int)], atol=0.5)
        # a tracked point keeps its colour while visible (up to the float32 rounding of xy)
        ref = np.broadcast_to(colours[:1], colours.shape)
        np.testing.assert_allclose(colours[visible], ref[visible], atol=0.01)
        # the nearest pixel of later frames shows nearly that colour
        j = np.clip(np.rint(xy[..., 0]).astype(int), 0, SIZE - 1)
        i = np.clip(np.rint(xy[..., 1]).astype(int), 0, SIZE - 1)
        sampled = frames[np.arange(FRAMES)[:, None], i, j]
        _, interior = _mask_at(masks, xy)
        sel = visible & interior
        sel[0] = False
        diffs.append(np.abs(sampled[sel] - ref[sel]).mean())
        baseline.append(np.abs(sampled[sel] - np.roll(ref[sel], 1, axis=0)).mean())
    assert np.mean(diffs) < 12.0 and np.mean(diffs) < 0.3 * np.mean(baseline)


def test_background_points_move_with_the_camera(tracked):
    moved = 0.0
    for scene, masks, queries, xy, visible, ids in tracked:
        cam = scene.camera_offset(range(FRAMES))
        bg = ids == 0
        expected = queries[None, bg, 1:] - (cam - cam[:1])[:, None, :]
        np.testing.assert_allclose(xy[:, bg], expected, atol=1e-3)
        moved = max(moved, float(np.abs(cam[-1] - cam[0]).max()))
    assert moved > 5.0


def test_later_queries_follow_the_same_trajectory(tracked):
    frames = list(range(0, FRAMES, 3))  # a clip with stride 3
    k = 4
    compared = 0
    for scene, masks, queries, *_ in tracked[:8]:
        xy0, vis0 = scene.tracks(frames, queries)
        sel = vis0[k]
        later = np.concatenate([np.full((int(sel.sum()), 1), k), xy0[k, sel]], axis=1)
        xyk, visk = scene.tracks(frames, later)
        both = vis0[:, sel] & visk
        np.testing.assert_allclose(xyk[both], xy0[:, sel][both], atol=1e-3)
        assert both.mean() > 0.99 * vis0[:, sel].mean()
        compared += int(both.sum())
    assert compared > 1000


def test_points_leaving_the_frame_are_invisible(tracked):
    left = 0
    for scene, masks, queries, xy, visible, ids in tracked:
        outside = ~_in_frame(xy)
        assert not visible[outside].any()
        left += int((outside & (ids > 0)).sum())
    assert left > 100  # objects do leave the frame


def test_occluded_points_are_invisible(tracked):
    occluded = 0
    for scene, masks, queries, xy, visible, ids in tracked:
        hidden = _in_frame(xy) & ~visible
        found, interior = _mask_at(masks, xy)
        sel = hidden & interior
        # whatever is seen there is an object in front of the tracked layer
        assert (found[sel] > np.broadcast_to(ids, found.shape)[sel]).all()
        occluded += int((sel & (ids > 0)).sum())
    assert occluded > 100  # object points get occluded by other objects


def test_speed_scales_every_motion_and_the_default_world_is_unchanged():
    base = SyntheticVideos(num_videos=2, num_frames=8, size=32, seed=3)
    same = SyntheticVideos(num_videos=2, num_frames=8, size=32, seed=3, speed=1.0, object_size=(0.12, 0.25))
    assert np.array_equal(base.read_frames(1, range(8)), same.read_frames(1, range(8)))
    still = SyntheticVideos(num_videos=2, num_frames=8, size=32, seed=3, speed=0.0).read_frames(1, range(8))
    assert all(np.array_equal(still[0], frame) for frame in still)  # nothing moves, the camera included
    # the background moves with the camera (drift and sway), whose motion is linear in speed
    queries = np.array([[0, 10.0, 12.0], [0, 20.0, 16.0]])
    world = dict(num_videos=2, num_frames=8, size=32, seed=3, objects_per_video=0)
    slow = SyntheticVideos(**world).ground_truth(0).tracks(range(6), queries)[0]
    fast = SyntheticVideos(**world, speed=2.0).ground_truth(0).tracks(range(6), queries)[0]
    assert not np.allclose(slow[-1], slow[0])
    np.testing.assert_allclose(fast - fast[0], 2 * (slow - slow[0]), atol=1e-4)


def test_object_size_sets_the_radius_range_and_bad_world_settings_fail():
    small = SyntheticVideos(num_videos=4, num_frames=2, size=64, seed=0, object_size=(0.05, 0.06))
    big = SyntheticVideos(num_videos=4, num_frames=2, size=64, seed=0, object_size=(0.3, 0.35))
    area = lambda s: sum((s[i]["instance_masks"][0] > 0).mean() for i in range(len(s)))  # noqa: E731
    assert area(small) < area(big)
    with pytest.raises(ValueError, match="speed must be"):
        SyntheticVideos(speed=-1.0)
    with pytest.raises(ValueError, match="object_size must be"):
        SyntheticVideos(object_size=(0.3, 0.1))
