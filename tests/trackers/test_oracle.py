"""The oracle tracker (mosic.trackers.oracle): the ground-truth tracks of synthetic clips."""

import numpy as np
import pytest
import torch

from mosic.data import ClipDataset, collate_clips
from mosic.trackers import OracleTracker, query_grid


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
