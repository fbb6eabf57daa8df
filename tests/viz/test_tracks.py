"""Drawing tracks (mosic.viz.tracks): points coloured by where they start, occluded points and trails."""

import numpy as np
import pytest
import torch

from helpers.images import colour_count, grey_frames
from mosic.trackers import Tracks
from mosic.viz import draw_tracks, point_colors


def test_draw_tracks_visible_occluded_and_trails():
    frames = grey_frames()
    t = len(frames)
    xy = np.zeros((t, 3, 2), dtype=np.float32)
    xy[:, 0] = np.stack([np.linspace(4, 34, t), np.full(t, 30)], -1)  # moves right, always visible
    xy[:, 1] = (20, 8)  # still; occluded in the last frame
    xy[:, 2] = (8, 8)  # still, always visible
    visible = np.ones((t, 3), dtype=bool)
    visible[-1, 1] = False
    colours = point_colors(xy[0], 40, 40)
    assert colour_count(colours) == 3
    out = draw_tracks(frames, xy, visible, trail=4, point_radius=3)
    assert out.shape == frames.shape and out.dtype == np.uint8
    same = draw_tracks(frames, Tracks(torch.from_numpy(xy)[None], torch.from_numpy(visible)[None]), trail=4, point_radius=3)
    np.testing.assert_array_equal(out, same)
    last = out[-1]
    # visible points: filled with their colour (centre and next to it)
    for j, (x, y) in ((0, xy[-1, 0]), (2, xy[-1, 2])):
        x, y = int(round(x)), int(round(y))
        assert (last[y, x] == colours[j]).all() and (last[y, x + 1] == colours[j]).all()
    # the occluded point: hollow, a ring of its colour around an untouched centre
    assert (last[8, 20] == 128).all()
    assert (last[8, 23] == colours[1]).all() and (last[5, 20] == colours[1]).all()
    assert (out[-2][8, 20] == colours[1]).all()  # the frame before, visible: filled
    # trail: between the previous two positions of the moving point, not in frame 0
    for x0, x1 in zip(xy[-3:-1, 0, 0], xy[-2:, 0, 0]):
        mid = int(round((x0 + x1) / 2))
        if abs(mid - xy[-1, 0, 0]) > 4:  # clear of the marker
            assert (last[30, mid] != 128).any(), mid
            tint = last[30, mid].astype(int) - 128
            assert np.sign(tint).tolist() == np.sign(colours[0].astype(int) - 128).tolist()
    assert (out[0][30, 12:30] == 128).all()  # frame 0 has no history yet
    assert (draw_tracks(frames, xy, visible, trail=0, point_radius=3)[-1][30, 12:25] == 128).all()
    # scale: pixels grow, positions follow the pixel-centre convention
    big = draw_tracks(frames, xy, visible, point_radius=3, scale=2)
    assert big.shape == (t, 80, 80, 3)
    assert (big[-1][2 * 8 + 1 - 1, 2 * 8 + 1 - 1] == colours[2]).all()


def test_draw_tracks_rejects_bad_input():
    with pytest.raises(ValueError, match="frames"):
        draw_tracks(grey_frames(), np.zeros((5, 2, 2)))
    with pytest.raises(ValueError, match="visible"):
        draw_tracks(grey_frames(), np.zeros((6, 2, 2)), np.ones((6, 3), bool))
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\) uint8"):
        draw_tracks(np.zeros((6, 8, 8, 3), np.float32), np.zeros((6, 2, 2)))
