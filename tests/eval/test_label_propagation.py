"""Label propagation (mosic.eval.label_propagation): DINO-style propagation of the first frame's labels
through a video, scored with the DAVIS metrics (tests/eval/test_davis_metrics.py)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mosic.backbones.base import Backbone
from mosic.data.segmentation import IGNORE_INDEX, SyntheticVideoSegmentation
from mosic.eval import label_propagation as lp
from mosic.eval.davis_metrics import davis_scores, jaccard
from mosic.eval.features import resolve_backbone
from mosic.eval.label_propagation import evaluate_label_propagation, propagate_labels


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
