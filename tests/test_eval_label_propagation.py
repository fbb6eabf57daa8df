import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mosic.backbones.base import Backbone
from mosic.data.segmentation import IGNORE_INDEX, SyntheticVideoSegmentation
from mosic.eval import label_propagation as lp
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
from mosic.eval.features import resolve_backbone
from mosic.eval.label_propagation import evaluate_label_propagation, propagate_labels


def square(shape, top, left, side):
    m = np.zeros(shape, dtype=bool)
    m[top : top + side, left : left + side] = True
    return m


# ---------------------------------------------------------------- J


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


# ---------------------------------------------------------------- propagation


class MeanColour(Backbone):
    """A stub backbone: each patch token is the patch's mean (normalised) colour."""

    num_prefix_tokens = 0

    def __init__(self, patch_size: int = 4):
        super().__init__()
        self.patch_size, self.embed_dim = patch_size, 3
        self.anchor = nn.Parameter(torch.zeros(()))  # dense_features looks up the device

    def patch_tokens(self, images, token_mask=None):
        self.check_images(images)
        return F.avg_pool2d(images, self.patch_size).permute(0, 2, 3, 1)

    def blocks_in_order(self):
        return []


def translating_squares(T=8, size=80):
    """A red checkered square (id 1) moving (+2, +3) px per frame and a green striped one
    (id 5) moving (0, -2) over a static textured blue-grey background."""
    yy, xx = np.mgrid[:size, :size]
    background = np.stack(
        [40 + 30 * ((xx // 3 + yy // 5) % 2), 90 + 60 * np.sin(xx / 5.0) ** 2, 160 + 40 * ((yy // 4) % 2)], -1
    )
    frames = np.empty((T, size, size, 3), np.uint8)
    masks = np.zeros((T, size, size), np.int64)
    for t in range(T):
        frame = background.copy()
        for obj, (y0, x0, side, colour) in {
            1: (8 + 2 * t, 8 + 3 * t, 32, lambda ly, lx: [200 + 40 * ((ly // 4 + lx // 4) % 2), 30 + 20 * ((lx // 3) % 2), 30]),
            5: (52, 60 - 2 * t, 16, lambda ly, lx: [30, 170 + 50 * ((ly // 3) % 2), 40]),
        }.items():
            ly, lx = np.mgrid[:side, :side]
            frame[y0 : y0 + side, x0 : x0 + side] = np.stack(np.broadcast_arrays(*colour(ly, lx)), -1)
            masks[t, y0 : y0 + side, x0 : x0 + side] = obj
        frames[t] = frame
    return frames, masks


def test_propagation_tracks_translating_squares():
    frames, masks = translating_squares()
    pred = propagate_labels(MeanColour(4), frames, masks[0], topk=5, radius=12, temperature=0.1)
    assert pred.shape == masks.shape and pred.dtype == np.int64
    np.testing.assert_array_equal(pred[0], masks[0])
    assert set(np.unique(pred)) <= {0, 1, 5}
    for obj in (1, 5):
        propagated = [jaccard(pred[t] == obj, masks[t] == obj) for t in range(len(masks))]
        copied = jaccard(masks[0] == obj, masks[-1] == obj)  # no propagation: the first mask
        assert min(propagated) > 0.8, (obj, propagated)
        assert propagated[-1] > copied + 0.4, (obj, propagated[-1], copied)
    scores = davis_scores(pred, masks)
    baseline = davis_scores(np.repeat(masks[:1], len(masks), 0), masks)
    assert scores["j_mean"] > 0.8 and scores["jf_mean"] > baseline["jf_mean"] + 0.3


def dino_reference(target, ref_feats, ref_labels, topk, radius, temperature):
    """DINO's label_propagation written out densely: exp(sim / T) * window, top-k over
    all reference patches, normalised, labels^T @ affinity."""
    h, w, d = target.shape
    n = ref_feats.shape[0]
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    window = ((ys[None] - ys[:, None]).abs() <= radius) & ((xs[None] - xs[:, None]).abs() <= radius)  # (src, tar)
    aff = torch.exp(ref_feats.reshape(n, -1, d) @ target.reshape(-1, d).T / temperature)  # (n, src, tar)
    aff = (aff * window[None]).reshape(-1, h * w)
    kth = aff.topk(topk, dim=0).values.min(0).values
    aff[aff < kth] = 0
    aff = aff / aff.sum(0, keepdim=True)
    return (ref_labels.reshape(-1, ref_labels.shape[-1]).T @ aff).T.reshape(h, w, -1)


@pytest.mark.parametrize("radius", [1, 3, 100])
def test_tiled_affinity_matches_dense_dino_formula(monkeypatch, radius):
    g = torch.Generator().manual_seed(0)
    target = F.normalize(torch.randn(6, 7, 8, generator=g, dtype=torch.float64), dim=-1)
    refs = F.normalize(torch.randn(3, 6, 7, 8, generator=g, dtype=torch.float64), dim=-1)
    labels = torch.rand(3, 6, 7, 4, generator=g, dtype=torch.float64)
    expected = dino_reference(target, refs, labels, 5, radius, 0.1)
    monkeypatch.setattr(lp, "_CHUNK_ELEMENTS", 100)  # one target patch at a time
    got = lp._propagate_frame(target, refs, labels, topk=5, radius=radius, temperature=0.1)
    torch.testing.assert_close(got, expected)
    monkeypatch.setattr(lp, "_CHUNK_ELEMENTS", 1 << 25)
    torch.testing.assert_close(lp._propagate_frame(target, refs, labels, topk=5, radius=radius, temperature=0.1), expected)
    unrestricted = lp._propagate_frame(target, refs, labels, topk=5, radius=None, temperature=0.1)
    torch.testing.assert_close(unrestricted, dino_reference(target, refs, labels, 5, 100, 0.1))


def test_propagate_labels_argument_checks():
    frames, masks = translating_squares(T=2)
    backbone = MeanColour(4)
    with pytest.raises(ValueError, match="uint8"):
        propagate_labels(backbone, frames.astype(np.float32), masks[0])
    with pytest.raises(ValueError, match="frame size"):
        propagate_labels(backbone, frames, masks[0, :8])
    with pytest.raises(ValueError, match="topk"):
        propagate_labels(backbone, frames, masks[0], topk=0)
    with pytest.raises(ValueError, match="temperature"):
        propagate_labels(backbone, frames, masks[0], temperature=0)
    with pytest.raises(ValueError, match="multiples"):
        propagate_labels(backbone, frames, masks[0], size=10)
    single = propagate_labels(backbone, frames[:1], np.where(masks[0] == 1, IGNORE_INDEX, masks[0]))
    assert single.shape == (1, 80, 80) and not (single == IGNORE_INDEX).any()


# ---------------------------------------------------------------- end to end


def test_evaluate_label_propagation_end_to_end():
    torch.manual_seed(0)
    backbone = resolve_backbone("vit-tiny", pretrained=False, patch_size=8, img_size=32, depth=1)
    dataset = SyntheticVideoSegmentation(num_videos=2, num_frames=8, size=32)
    result = evaluate_label_propagation(backbone, dataset)
    keys = ("jf_mean", "j_mean", "j_recall", "j_decay", "f_mean", "f_recall", "f_decay")
    for key in keys:
        assert key in result
    for key in ("jf_mean", "j_mean", "j_recall", "f_mean", "f_recall"):
        assert 0.0 <= result[key] <= 100.0, (key, result[key])
    assert result["jf_mean"] == pytest.approx((result["j_mean"] + result["f_mean"]) / 2)
    assert result["num_videos"] == 2 and result["num_frames"] == 16 and result["fps"] > 0
    first_ids = [set(np.unique(dataset.read_masks(v, [0])[0])) - {0} for v in range(2)]
    assert result["num_objects"] == sum(map(len, first_ids)) > 0
    assert set(result["per_video"]) == {dataset.video_name(0), dataset.video_name(1)}
    for stats in result["per_video"].values():
        assert 0.0 <= stats["jf_mean"] <= 100.0 and stats["num_frames"] == 8
    again = evaluate_label_propagation(backbone, dataset)
    for key in keys:
        assert again[key] == result[key]
    short = evaluate_label_propagation(backbone, dataset, max_frames=4, max_videos=1)
    assert short["num_videos"] == 1 and short["num_frames"] == 4
    with pytest.raises(ValueError, match="max_frames"):
        evaluate_label_propagation(backbone, dataset, max_frames=2)
