"""The DAVIS metrics (mosic.eval.davis_metrics): region similarity J, boundary F and their statistics,
checked by hand on squares."""

import math

import numpy as np
import pytest

from mosic.data.segmentation import IGNORE_INDEX
from mosic.eval.davis_metrics import (
    _dilate,
    bound_pixels,
    boundary_precision_recall,
    davis_scores,
    db_statistics,
    disk,
    f_boundary,
    jaccard,
    seg2bmap,
)


# ---------------------------------------------------------------- J


def square(shape, top, left, side):
    m = np.zeros(shape, dtype=bool)
    m[top : top + side, left : left + side] = True
    return m


def test_jaccard_overlapping_squares_by_counting():
    a, b = square((20, 20), 0, 0, 10), square((20, 20), 5, 5, 10)
    # intersection: rows 5..9 x cols 5..9 = 25 px; union 100 + 100 - 25 = 175
    assert jaccard(a, b) == pytest.approx(25 / 175)
    assert jaccard(a, a) == 1.0
    assert jaccard(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0  # both empty: 1 (DAVIS toolkit)
    assert jaccard(a, np.zeros_like(a)) == 0.0
    with pytest.raises(ValueError, match="shape"):
        jaccard(a, a[:-1])


# ---------------------------------------------------------------- F


def test_seg2bmap_square_is_its_perimeter_shifted_towards_the_origin():
    mask = square((100, 100), 20, 20, 20)  # rows/cols 20..39
    # a pixel is a boundary pixel when its east, south or south-east neighbour differs:
    # the outer pixels above/left of the square and the inner last row/column, i.e. the
    # perimeter of rows/cols 19..39 (21 x 21): 4 * 21 - 4 = 80 pixels
    expected = square((100, 100), 19, 19, 21) & ~square((100, 100), 20, 20, 19)
    np.testing.assert_array_equal(seg2bmap(mask), expected)
    assert expected.sum() == 80
    # the image border is no boundary: a full mask has none; a mask touching the right
    # border has no boundary on that border
    assert not seg2bmap(np.ones((8, 8))).any()
    right = np.zeros((8, 8), dtype=bool)
    right[:, 4:] = True
    np.testing.assert_array_equal(np.flatnonzero(seg2bmap(right).any(0)), [3])


def test_bound_pixels_and_disk():
    assert bound_pixels((480, 854)) == 8  # ceil(0.008 * 979.7): DAVIS 480p
    assert bound_pixels((100, 100)) == 2  # ceil(0.008 * 141.4 = 1.13)
    assert bound_pixels((100, 100), 3) == 3  # >= 1: pixels
    assert disk(2).sum() == 13  # x^2 + y^2 <= 4
    assert disk(1).sum() == 5


def test_f_measure_by_hand():
    shape = (100, 100)  # tolerance 2 px
    a = square(shape, 20, 20, 20)
    assert f_boundary(a, a) == 1.0
    # shifted by 1 column: every boundary pixel lies within 1 px of the other boundary
    assert f_boundary(square(shape, 20, 21, 20), a) == 1.0
    # shifted by 10 columns: boundaries are the perimeters of rows 19..39 x cols 19..39
    # (A) and x cols 29..49 (B), 80 px each. B's pixels within 2 px of A's boundary: top
    # and bottom rows cols 29..41 (13 + 13; col 42 is 3 px from A's corner) and the left
    # column rows 20, 21, 37, 38 (within 2 of A's top/bottom rows) -> 30; by symmetry the
    # same for A. P = R = F = 30 / 80
    b = square(shape, 20, 30, 20)
    assert boundary_precision_recall(b, a) == pytest.approx((30 / 80, 30 / 80))
    assert f_boundary(b, a) == pytest.approx(0.375)
    # a wider tolerance of 10 px (bound_th >= 1 is pixels) matches everything
    assert f_boundary(b, a, bound_th=10) == 1.0
    # precision and recall differ: a small square inside a large one, 15 px apart,
    # tolerance 2: nothing matches -> F = 0
    assert f_boundary(square(shape, 40, 40, 10), square(shape, 25, 25, 40)) == 0.0


def test_f_measure_empty_conventions():
    empty = np.zeros((50, 50), dtype=bool)
    a = square((50, 50), 10, 10, 10)
    assert f_boundary(empty, empty) == 1.0
    assert boundary_precision_recall(empty, a) == (1.0, 0.0)  # nothing predicted
    assert boundary_precision_recall(a, empty) == (0.0, 1.0)  # nothing to find
    assert f_boundary(empty, a) == 0.0
    assert f_boundary(a, empty) == 0.0


def test_disk_dilation_matches_scipy():
    from scipy import ndimage

    rng = np.random.default_rng(0)
    boundary = rng.random((40, 57)) > 0.97
    for r in (1, 3, 8):
        np.testing.assert_array_equal(_dilate(boundary, r), ndimage.binary_dilation(boundary, structure=disk(r)))


# ---------------------------------------------------------------- statistics


def test_db_statistics_by_hand():
    v = [0.9, 0.8, 0.6, 0.4, 0.3, 0.1, 0.0, 0.2]
    stats = db_statistics(v)
    assert stats["mean"] == pytest.approx(3.3 / 8)
    assert stats["recall"] == pytest.approx(3 / 8)  # values > 0.5
    # 4 bins at round(linspace(1, 8, 5) + 1e-10) - 1 = [0, 2, 4, 5, 7]:
    # first bin v[0:3], last bin v[5:8]
    assert stats["decay"] == pytest.approx((0.9 + 0.8 + 0.6) / 3 - (0.1 + 0.0 + 0.2) / 3)
    assert db_statistics([0.5, 0.5, 0.5])["recall"] == 0.0  # strictly above 0.5
    assert all(math.isnan(x) for x in db_statistics([]).values())


def test_davis_scores_skip_first_and_last_frame_and_average_objects():
    T, shape = 5, (40, 40)
    gt = np.zeros((T, *shape), dtype=np.int64)
    for t in range(T):
        gt[t][square(shape, 5 + t, 5, 10)] = 1
        gt[t][square(shape, 20, 20 + t, 12)] = 2
    gt[:, 0, 0] = IGNORE_INDEX  # void counts as background
    pred = np.where(gt == IGNORE_INDEX, 0, gt)
    pred[0] = 0  # the first and the last frames are wrong but not scored
    pred[-1] = 0
    pred[1:-1][pred[1:-1] == 2] = 0  # object 2 is never found on the scored frames
    scores = davis_scores(pred, gt)
    assert scores["object_ids"] == [1, 2]
    assert scores["frames"] == [1, 2, 3]
    assert scores["per_object"][1]["j_mean"] == 1.0 and scores["per_object"][1]["f_mean"] == 1.0
    assert scores["per_object"][2]["j_mean"] == 0.0 and scores["per_object"][2]["f_recall"] == 0.0
    assert scores["j_mean"] == 0.5 and scores["f_mean"] == 0.5 and scores["jf_mean"] == 0.5
    assert scores["j_recall"] == 0.5
    assert scores["j_per_frame"].shape == (2, 3)
    # scoring the last frame too: object 1 gets J = 0 there -> 3 / 4
    assert davis_scores(pred, gt, [1], skip_last=False)["j_mean"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="no frame left"):
        davis_scores(pred[:2], gt[:2])
