"""CoTracker3Tracker (mosic.trackers.cotracker.tracker): the per-frame work (resize, CNN, feature pyramid)
is done once per frame of a video and shared by the overlapping clips that read it (track_clips)."""

import pytest
import torch

from helpers.videos import video_and_clips
from mosic.trackers.cotracker.tracker import CoTracker3Tracker


SMALL = (64, 96)


@pytest.mark.parametrize("online", [False, True])
def test_cotracker3_shares_per_frame_work_and_equals_tracking_each_clip(online):
    torch.manual_seed(0)
    tracker = CoTracker3Tracker(weights=False, online=online, device="cpu", model_resolution=SMALL, iters=2)
    video, clip_frames, queries = video_and_clips()
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
