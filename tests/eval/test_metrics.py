"""mosic.eval.metrics: IoU, Hungarian (IoU-maximising) and greedy matching, mIoU, pixel accuracy."""

import itertools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from helpers.fuzz import FUZZ
from mosic.data.segmentation import IGNORE_INDEX
from mosic.eval import clustering, metrics
from mosic.eval.metrics import (
    greedy_matching,
    hungarian_matching,
    hungarian_miou,
    iou_matrix,
    miou_from_confusion,
    pixel_accuracy,
)
from mosic.eval.metrics import greedy_many_to_one_miou


def pixels(conf):
    """(pred, target) pixel arrays whose confusion matrix is ``conf`` (rows = clusters)."""
    conf = np.asarray(conf)
    rows, cols = np.nonzero(conf)
    counts = conf[rows, cols]
    return np.repeat(rows, counts), np.repeat(cols, counts)


def miou_of(conf, class_of_cluster):
    """Percent mIoU over the present classes of a one-to-one {cluster: class} assignment,
    computed from the definition (a present class without a cluster has IoU 0)."""
    conf = np.asarray(conf, dtype=np.float64)
    cluster_of_class = {j: i for i, j in class_of_cluster.items()}
    ious = []
    for j in np.flatnonzero(conf.sum(0) > 0):
        i = cluster_of_class.get(j)
        if i is None:
            ious.append(0.0)
        else:
            ious.append(conf[i, j] / (conf[i].sum() + conf[:, j].sum() - conf[i, j]))
    return 100.0 * float(np.mean(ious))


def one_to_one_assignments(num_clusters, num_classes):
    """Every one-to-one {cluster: class} assignment matching min(K, C) pairs."""
    if num_clusters >= num_classes:
        for clusters in itertools.permutations(range(num_clusters), num_classes):
            yield {i: j for j, i in enumerate(clusters)}
    else:
        for classes in itertools.permutations(range(num_classes), num_clusters):
            yield dict(enumerate(classes))


def best_miou(conf):
    """The brute-force best one-to-one mIoU."""
    return max(miou_of(conf, a) for a in one_to_one_assignments(*np.shape(conf)))


# ---------------------------------------------------------------- the fidelity fix

#: rows = clusters, columns = classes: matching the most pixels is not matching the best IoU
COUNTEREXAMPLE = np.array([[20, 30, 10], [10, 20, 0], [30, 40, 10]])


def test_hungarian_maximises_iou_not_matched_pixels():
    result = hungarian_miou(*pixels(COUNTEREXAMPLE), 3)
    assert result["miou"] == pytest.approx(20.520, abs=1e-3)
    assert result["miou"] == pytest.approx(best_miou(COUNTEREXAMPLE), abs=1e-9)  # brute force
    np.testing.assert_array_equal(result["matching"], [2, 1, 0])

    # What the old code did: linear_sum_assignment on the counts. Four assignments tie at
    # the most matched pixels (60); scipy picks one whose mIoU is 19.185.
    rows, cols = linear_sum_assignment(COUNTEREXAMPLE, maximize=True)
    by_counts = dict(zip(rows.tolist(), cols.tolist()))
    most_pixels = max(
        sum(COUNTEREXAMPLE[i, j] for i, j in a.items()) for a in one_to_one_assignments(3, 3)
    )
    assert sum(COUNTEREXAMPLE[i, j] for i, j in by_counts.items()) == most_pixels == 60
    assert miou_of(COUNTEREXAMPLE, by_counts) == pytest.approx(19.185, abs=1e-3)


def test_hungarian_beats_a_unique_most_pixels_matching():
    conf = np.array([[9, 3, 2], [0, 0, 5], [6, 2, 8]])
    assignments = list(one_to_one_assignments(3, 3))
    matched_pixels = [sum(conf[i, j] for i, j in a.items()) for a in assignments]
    (most_pixels,) = [a for a, n in zip(assignments, matched_pixels) if n == max(matched_pixels)]  # unique here
    assert most_pixels == {0: 0, 1: 1, 2: 2}
    assert miou_of(conf, most_pixels) == pytest.approx(26.594, abs=1e-3)
    result = miou_from_confusion(conf, hungarian_matching(conf))
    assert result["miou"] == pytest.approx(29.620, abs=1e-3)
    assert result["miou"] == pytest.approx(best_miou(conf), abs=1e-9)
    np.testing.assert_array_equal(result["matching"], [0, 2, 1])


@FUZZ
@given(
    conf=st.integers(1, 4).flatmap(
        lambda k: st.integers(1, 4).flatmap(
            lambda c: st.lists(st.lists(st.integers(0, 20), min_size=c, max_size=c), min_size=k, max_size=k)
        )
    )
)
def test_hungarian_equals_the_brute_force_best_permutation(conf):
    conf = np.array(conf, dtype=np.int64)
    if conf.sum() == 0:
        assert math.isnan(miou_from_confusion(conf, hungarian_matching(conf))["miou"])
        return
    matching = hungarian_matching(conf)
    assert matching.shape == (conf.shape[0],) and matching.dtype == np.int64
    matched = matching[matching >= 0]
    assert len(matched) == min(conf.shape) and len(set(matched.tolist())) == len(matched)  # one-to-one
    result = miou_from_confusion(conf, matching)
    assert result["miou"] == pytest.approx(best_miou(conf), abs=1e-9)
    assert result["miou"] == pytest.approx(miou_of(conf, {i: int(j) for i, j in enumerate(matching) if j >= 0}))
    if conf.sum(1)[-1] > 0:  # the pixel-level entry point sees all K clusters
        assert hungarian_miou(*pixels(conf), conf.shape[1])["miou"] == pytest.approx(result["miou"], abs=1e-9)


# ---------------------------------------------------------------- building blocks


def test_iou_matrix():
    conf = np.array([[3, 1], [0, 0], [1, 5]])
    expected = [[3 / 5, 1 / 9], [0, 0], [1 / 9, 5 / 7]]  # conf / (row sum + column sum - conf)
    np.testing.assert_allclose(iou_matrix(conf), expected)
    assert iou_matrix(np.zeros((2, 3), dtype=np.int64)).tolist() == [[0.0] * 3] * 2


def test_greedy_matching_takes_the_majority_class_and_skips_empty_clusters():
    conf = np.array([[3, 1, 0], [0, 0, 0], [1, 5, 2], [0, 1, 4]])
    np.testing.assert_array_equal(greedy_matching(conf), [0, -1, 1, 2])


def test_identity_scoring_and_pixel_accuracy():
    conf = np.array([[4, 1, 0], [2, 3, 0], [0, 0, 0]])  # class 2 absent
    result = miou_from_confusion(conf)
    np.testing.assert_allclose(result["iou_per_class"], [400 / 7, 300 / 6, np.nan])
    assert result["miou"] == pytest.approx((400 / 7 + 50) / 2)
    np.testing.assert_array_equal(result["matching"], [0, 1, 2])
    assert pixel_accuracy(conf) == pytest.approx(70.0)
    assert pixel_accuracy(conf, np.array([1, 0, -1])) == pytest.approx(30.0)
    assert math.isnan(pixel_accuracy(np.zeros((2, 2), dtype=np.int64)))
    with pytest.raises(ValueError, match="square"):
        miou_from_confusion(np.ones((3, 2)))


def test_one_home_for_the_matchers():
    import mosic.eval as ev

    for name in ("confusion_matrix", "hungarian_miou", "greedy_many_to_one_miou", "hungarian_matching",
                 "greedy_matching", "iou_matrix", "miou_from_confusion", "pixel_accuracy"):
        assert getattr(ev, name) is getattr(metrics, name), name
    assert clustering.hungarian_miou is metrics.hungarian_miou
    assert clustering.greedy_many_to_one_miou is metrics.greedy_many_to_one_miou


# ---- matching metrics on hand-made predictions


def test_perfect_and_permuted_predictions():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 5, size=(2, 10, 10))
    target[0, 0, :3] = IGNORE_INDEX
    pred = np.where(target == IGNORE_INDEX, 0, target)
    assert hungarian_miou(pred, target, 5)["miou"] == 100.0
    assert greedy_many_to_one_miou(pred, target, 5)["miou"] == 100.0
    perm = np.array([3, 0, 4, 1, 2])
    result = hungarian_miou(perm[pred], target, 5)
    assert result["miou"] == 100.0
    np.testing.assert_array_equal(result["matching"][perm], np.arange(5))


def test_greedy_four_clusters_onto_two_classes_by_hand():
    target = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, IGNORE_INDEX])
    pred = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    # clusters: 0 = 3x class 0 -> 0; 1 = 3x class 0 + 1x class 1 -> 0; 2 = 3x class 1 -> 1;
    # 3 = 2x class 1 (+ 1 unlabelled, not counted) -> 1
    result = greedy_many_to_one_miou(pred, target, 2)
    np.testing.assert_array_equal(result["matching"], [0, 0, 1, 1])
    # class 0: tp 6, predicted 7, gt 6 -> 6/7; class 1: tp 5, predicted 5, gt 6 -> 5/6
    np.testing.assert_allclose(result["iou_per_class"], [600 / 7, 500 / 6])
    assert math.isclose(result["miou"], (600 / 7 + 500 / 6) / 2)
