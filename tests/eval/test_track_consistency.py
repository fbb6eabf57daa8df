"""Track consistency (mosic.eval.track_consistency) on synthetic videos with exact tracks."""

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_VIT
from mosic import create_backbone
from mosic.data import SyntheticVideos
from mosic.data.clips import ClipMeta
from mosic.data.transforms import ViewTransform
from mosic.eval.track_consistency import track_consistency
from mosic.trackers import OracleTracker, query_grid


def backbone():
    torch.manual_seed(0)
    return create_backbone("vit-tiny", pretrained=False, **TINY_VIT).eval()


def test_a_still_world_is_fully_consistent():
    still = SyntheticVideos(num_videos=2, num_frames=8, size=32, seed=1, speed=0.0)
    assert track_consistency(backbone(), still, num_frames=4, frame_stride=2, grid_size=4) == 100.0


def test_it_counts_the_visible_entries_whose_nearest_query_is_their_own():
    source = SyntheticVideos(num_videos=2, num_frames=8, size=32, seed=1, speed=3.0)
    model = backbone()
    hits = total = 0
    with torch.no_grad():  # by hand: per entry, the argmax over the 16 frame-0 queries
        for v in range(2):
            frames = torch.from_numpy(source.read_frames(v, [0, 2, 4, 6])).permute(0, 3, 1, 2)
            meta = ClipMeta("v", v, [0, 2, 4, 6], ViewTransform.identity(32, 32), 0, source.ground_truth(v))
            tracks = OracleTracker().track(frames[None], query_grid(32, 32, 4)[None], clips=[meta])
            tokens = model.patch_tokens(model.preprocess(frames))  # (T, 4, 4, D)
            grid = (tracks.xy[0] + 0.5) / 32 * 2 - 1  # (T, N, 2) in grid_sample's [-1, 1]
            feats = F.grid_sample(tokens.permute(0, 3, 1, 2), grid[:, :, None], align_corners=False)[..., 0]
            feats = F.normalize(feats.permute(0, 2, 1), dim=-1)  # (T, N, D)
            for t in range(1, 4):
                for i in range(16):
                    if tracks.visible[0, 0, i] and tracks.visible[0, t, i]:
                        total += 1
                        hits += int((feats[0] @ feats[t, i]).argmax() == i)
    measured = track_consistency(model, source, num_frames=4, frame_stride=2, grid_size=4)
    assert total > 0 and measured == pytest.approx(100.0 * hits / total, abs=1e-9)
    assert measured < 100.0  # moving points change patches


def test_it_needs_ground_truth():
    class NoTruth(SyntheticVideos):
        def ground_truth(self, index):
            return None

    with pytest.raises(ValueError, match="needs ground-truth tracks"):
        track_consistency(backbone(), NoTruth(num_videos=1, num_frames=8, size=32), num_frames=2)
