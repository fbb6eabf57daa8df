"""The Tracker interface (mosic.trackers.base): the default track_clips is tracking each clip."""

import pytest
import torch

from helpers.videos import video_and_clips
from mosic.trackers.lucas_kanade import LucasKanadeTracker


def test_the_default_track_clips_is_tracking_each_clip():
    tracker = LucasKanadeTracker()
    video, clip_frames, queries = video_and_clips(frames=12, clip_len=4)
    shared = tracker.track_clips(video, clip_frames, queries, batch_size=2)
    alone = tracker(video[clip_frames], queries)
    assert torch.equal(shared.xy, alone.xy) and torch.equal(shared.visible, alone.visible)
    with pytest.raises(ValueError, match=r"clip_frames must index the 12 frames"):
        tracker.track_clips(video, clip_frames + 100, queries)
    with pytest.raises(ValueError, match=r"queries must be \(S="):
        tracker.track_clips(video, clip_frames, queries[:1])
