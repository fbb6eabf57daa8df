import math

import numpy as np
import pytest
import torch

from mosic.data.synthetic import SyntheticVideos
from mosic.eval.tracking import evaluate_tracker, format_results, tapvid_metrics
from mosic.trackers import Tracker, Tracks


def _random_gt(b=2, t=6, n=5, size=256, seed=0):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, size - 1, (b, t, n, 2))
    visible = rng.random((b, t, n)) > 0.3
    visible[:, 0] = True  # visible on the query frame
    return xy, visible, np.zeros((b, n), dtype=np.int64)


def test_perfect_predictions_score_100():
    xy, vis, q = _random_gt()
    m = tapvid_metrics(xy, vis, xy, vis, q, 256)
    assert m["delta_avg"] == 100 and m["average_jaccard"] == 100 and m["occlusion_accuracy"] == 100
    assert all(m[f"delta_{d}"] == 100 and m[f"jaccard_{d}"] == 100 for d in (1, 2, 4, 8, 16))
    # torch inputs work the same
    mt = tapvid_metrics(torch.from_numpy(xy), torch.from_numpy(vis), torch.from_numpy(xy), torch.from_numpy(vis),
                        torch.from_numpy(q), (256, 256))
    assert mt["average_jaccard"] == 100


@pytest.mark.parametrize(
    "image_size, offset",
    [(256, (3.0, 0.0)), (128, (0.0, 1.5)), ((64, 512), (0.0, 0.75)), ((64, 512), (6.0, 0.0))],
)
def test_constant_offset_of_3px_at_256(image_size, offset):
    """3 px at 256 x 256 (after rescaling each axis): within 4, 8, 16 but not 1, 2."""
    xy, _, q = _random_gt()
    vis = np.ones(xy.shape[:3], dtype=bool)
    m = tapvid_metrics(xy + np.array(offset), vis, xy, vis, q, image_size)
    assert [m[f"delta_{d}"] for d in (1, 2, 4, 8, 16)] == [0, 0, 100, 100, 100]
    assert m["delta_avg"] == pytest.approx(60.0)
    # Jaccard: a visible prediction too far away is both a false positive and a miss
    assert [m[f"jaccard_{d}"] for d in (1, 2, 4, 8, 16)] == [0, 0, 100, 100, 100]
    assert m["average_jaccard"] == pytest.approx(60.0) and m["occlusion_accuracy"] == 100


def test_thresholds_are_strict():
    xy, _, q = _random_gt()
    xy = np.round(xy)  # exact differences
    vis = np.ones(xy.shape[:3], dtype=bool)
    m = tapvid_metrics(xy + np.array([4.0, 0.0]), vis, xy, vis, q, 256)
    assert (m["delta_2"], m["delta_4"], m["delta_8"]) == (0, 0, 100)
    diag = tapvid_metrics(xy + np.array([3.0, 3.0]), vis, xy, vis, q, 256)  # 4.24 px
    assert (diag["delta_4"], diag["delta_8"]) == (0, 100)


def test_occlusion_errors_change_oa_and_aj_by_hand_computed_amounts():
    # one video, 5 frames, 2 points queried on frame 0: evaluated frames 1..4 (8 point-frames)
    t, n = 5, 2
    gt_xy = np.zeros((1, t, n, 2)) + np.array([100.0, 50.0])
    gt_vis = np.ones((1, t, n), dtype=bool)
    gt_vis[0, 3:, 1] = False  # point 1 occluded on frames 3 and 4
    pred_vis = gt_vis.copy()
    pred_vis[0, 2, 0] = False  # a miss: point 0 predicted occluded on frame 2
    pred_vis[0, 3, 1] = True  # a false positive: point 1 predicted visible on frame 3
    m = tapvid_metrics(gt_xy, pred_vis, gt_xy, gt_vis, np.zeros((1, n)), 256)
    assert m["occlusion_accuracy"] == pytest.approx(100 * 6 / 8)
    assert m["delta_avg"] == 100  # positions are exact; delta ignores predicted visibility
    # 6 ground-truth-visible evaluated point-frames, TP = 5, FP = 1: J = 5 / (6 + 1)
    assert m["average_jaccard"] == pytest.approx(100 * 5 / 7)
    assert m["num_eval_points"] == 8


def test_frames_before_and_on_the_query_frame_are_ignored():
    xy, vis, _ = _random_gt(b=1, t=6, n=4)
    q = np.array([[2, 2, 3, 0]])
    pred_xy, pred_vis = xy.copy(), vis.copy()
    for i, qi in enumerate(q[0]):
        pred_xy[0, : qi + 1, i] += 50.0  # garbage up to and including the query frame
        pred_vis[0, : qi + 1, i] = ~vis[0, : qi + 1, i]
    m = tapvid_metrics(pred_xy, pred_vis, xy, vis, q, 256)
    assert m["delta_avg"] == 100 and m["average_jaccard"] == 100 and m["occlusion_accuracy"] == 100
    assert m["num_eval_points"] == 3 + 3 + 2 + 5
    # the strided protocol evaluates frames before the query frame too (not the query frame)
    strided = tapvid_metrics(pred_xy, pred_vis, xy, vis, q, 256, query_mode="strided")
    assert strided["occlusion_accuracy"] < 100 and strided["num_eval_points"] == 4 * 5


def test_metrics_are_means_over_videos():
    xy, vis, q = _random_gt(b=2)
    pred = xy.copy()
    pred[1] += 100.0  # video 1 entirely wrong
    per = tapvid_metrics(pred, vis, xy, vis, q, 256, per_video=True)
    assert per["delta_avg"].tolist() == [100, 0]
    assert tapvid_metrics(pred, vis, xy, vis, q, 256)["delta_avg"] == pytest.approx(50)
    # a video without any evaluated visible point is left out of the position means
    vis_empty = vis.copy()
    vis_empty[1, 1:] = False
    m = tapvid_metrics(xy, vis, xy, vis_empty, q, 256, per_video=True)
    assert math.isnan(m["delta_avg"][1]) and tapvid_metrics(xy, vis, xy, vis_empty, q, 256)["delta_avg"] == 100


def test_bad_inputs_are_rejected():
    xy, vis, q = _random_gt()
    with pytest.raises(ValueError, match="pred_xy"):
        tapvid_metrics(xy[:, :3], vis, xy, vis, q, 256)
    with pytest.raises(ValueError, match="query_frames"):
        tapvid_metrics(xy, vis, xy, vis, q + 10, 256)
    with pytest.raises(ValueError, match="query_mode"):
        tapvid_metrics(xy, vis, xy, vis, q, 256, query_mode="last")


def test_evaluate_tracker_oracle_is_perfect_and_formats():
    source = SyntheticVideos(num_videos=3, num_frames=10, size=32, seed=1)
    res = evaluate_tracker("oracle", source, num_frames=6, frame_stride=1, grid_size=4, batch_size=2)
    assert res["delta_avg"] == 100 and res["average_jaccard"] == 100 and res["occlusion_accuracy"] == 100
    assert (res["num_videos"], res["num_frames"], res["size"], res["num_points"]) == (3, 6, [32, 32], 16)
    assert res["tracker"] == "oracle" and res["point_frames_per_second"] > 0 and res["wall_seconds"] > 0
    # resized views, random points, strided queries
    res = evaluate_tracker("oracle", source, num_videos=2, num_frames=8, frame_stride=1, size=(24, 40),
                           num_points=10, query_mode="strided", query_stride=4)
    assert res["average_jaccard"] == 100 and res["size"] == [24, 40] and res["num_points"] <= 20
    table = format_results({"oracle": res})
    assert table.splitlines()[0].startswith("| tracker | AJ |") and "| oracle | 100.0 | 100.0 | 100.0 |" in table


class _Frozen(Tracker):
    """Predicts that every point stays at its query position, always visible."""

    name = "frozen"

    def track(self, video, queries, *, clips=None):
        b, t = video.shape[:2]
        xy = queries[:, None, :, 1:].expand(b, t, -1, 2)
        return Tracks(xy, torch.ones(xy.shape[:3], dtype=torch.bool))


def test_evaluate_tracker_penalises_a_tracker_that_ignores_motion():
    res = evaluate_tracker(_Frozen(), num_videos=2, num_frames=8, frame_stride=2, size=32, grid_size=4, seed=3)
    assert res["delta_avg"] < 60 and res["average_jaccard"] < res["delta_avg"]
    assert "| frozen |" in format_results(res)
