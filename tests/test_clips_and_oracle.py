import numpy as np
import pytest
import torch

from mosic.data import ClipDataset, ClipTooShortError, ViewTransform, collate_clips, random_resized_crop
from mosic.data.clips import clip_frame_indices
from mosic.trackers import OracleTracker, query_grid


def test_query_grid_sits_on_patch_centres():
    grid = query_grid(224, 224, 16)
    assert grid.shape == (256, 3) and (grid[:, 0] == 0).all()
    centres = torch.arange(16) * 14 + 6.5
    assert torch.allclose(grid[:16, 1], centres) and torch.allclose(grid[::16, 2], centres)


@pytest.mark.parametrize("flip", [False, True])
def test_view_transform_points_round_trip_and_match_frames(flip):
    tf = ViewTransform(x0=10, y0=4, width=20, height=40, out_size=(20, 10), flip=flip)
    xy = torch.tensor([[12.0, 7.0], [29.0, 43.0], [10.0, 4.0]])
    assert torch.allclose(tf.points_to_source(tf.points_to_view(xy)), xy, atol=1e-5)
    # a 2x2 block of source pixels becomes exactly one view pixel (scale 1/2)
    frames = torch.zeros(1, 3, 60, 40, dtype=torch.uint8)
    frames[0, :, 14:16, 16:18] = 255  # source pixels x 16-17, y 14-15: centre (16.5, 14.5)
    view = tf.apply_to_frames(frames)
    ys, xs = torch.nonzero(view[0, 0] > 128, as_tuple=True)
    expected = tf.points_to_view(torch.tensor([16.5, 14.5]))
    assert (xs.item(), ys.item()) == (round(expected[0].item()), round(expected[1].item()))


def test_random_resized_crop_is_reproducible_and_in_bounds():
    a = random_resized_crop(np.random.default_rng(5), 48, 64, (32, 32), (0.4, 1.0), flip_probability=0.5)
    b = random_resized_crop(np.random.default_rng(5), 48, 64, (32, 32), (0.4, 1.0), flip_probability=0.5)
    assert a == b
    for seed in range(50):
        tf = random_resized_crop(np.random.default_rng(seed), 48, 64, (32, 32), (0.4, 1.0))
        assert 0 <= tf.x0 and tf.x0 + tf.width <= 64 and 0 <= tf.y0 and tf.y0 + tf.height <= 48
        assert 0.4 * 48 * 64 * 0.9 <= tf.width * tf.height


def test_clip_frame_indices_shrink_the_stride_for_short_videos():
    rng = np.random.default_rng(0)
    first = clip_frame_indices(100, 4, 6, rng)
    assert np.diff(first).tolist() == [6, 6, 6] and 0 <= first[0] <= 100 - 19
    assert clip_frame_indices(7, 4, 6, rng) == [0, 2, 4, 6]
    with pytest.raises(ClipTooShortError, match="has 3 frames but a clip needs 4"):
        clip_frame_indices(3, 4, 6, rng, "tiny.mp4")


def test_clip_dataset_is_deterministic_per_epoch_and_index(synthetic):
    ds = ClipDataset(synthetic, num_frames=4, frame_stride=2, size=32)
    a, b, c = ds[(0, 3)], ds[(0, 3)], ds[(1, 3)]
    assert torch.equal(a["frames"], b["frames"])
    assert (a["meta"].frame_indices, a["meta"].transform) == (b["meta"].frame_indices, b["meta"].transform)
    assert a["meta"].sample_seed != c["meta"].sample_seed
    assert a["frames"].shape == (4, 3, 32, 32) and a["frames"].dtype == torch.uint8


def test_oracle_tracks_follow_objects_through_the_crop(synthetic):
    ds = ClipDataset(synthetic, num_frames=6, frame_stride=1, size=32, crop_scale=(0.5, 0.8))
    batch = collate_clips([ds[(0, i)] for i in range(4)])
    queries = query_grid(32, 32, 8).expand(4, -1, -1)
    tracks = OracleTracker()(batch["frames"], queries, clips=batch["meta"])
    assert tracks.xy.shape == (4, 6, 64, 2) and tracks.visible.shape == (4, 6, 64)
    assert torch.allclose(tracks.xy[:, 0], queries[..., 1:], atol=1e-4)  # frame 0 is the query
    assert tracks.visible[:, 0].all()
    # the instance under a visible tracked point stays the same instance (checked in source pixels)
    agree = total = 0
    for b, meta in enumerate(batch["meta"]):
        masks = meta.ground_truth.instance_masks(meta.frame_indices)
        src = meta.transform.points_to_source(tracks.xy[b].double().numpy())
        cols = np.clip(np.rint(src[..., 0]).astype(int), 0, masks.shape[2] - 1)
        rows = np.clip(np.rint(src[..., 1]).astype(int), 0, masks.shape[1] - 1)
        ids = masks[np.arange(6)[:, None], rows, cols]
        vis = tracks.visible[b].numpy()
        agree += ((ids == ids[0]) & vis).sum()
        total += vis.sum()
    assert agree / total > 0.95  # rounding at object edges aside
    assert not tracks.visible.all()  # something leaves the crop or is occluded


def test_oracle_explains_itself_without_ground_truth():
    video = torch.zeros(1, 2, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="synthetic clips with ground truth"):
        OracleTracker()(video, torch.zeros(1, 1, 3))
    with pytest.raises(ValueError, match=r"\(B, T, 3, H, W\)"):
        OracleTracker()(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.zeros(1, 1, 3))
