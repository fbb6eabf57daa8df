"""Hummingbird in-context evaluation (mosic.eval.hummingbird): a memory of patch features and labels,
labels transferred by nearest neighbours (tests/eval/test_knn.py)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mosic.backbones.base import Backbone
from mosic.data.segmentation import IGNORE_INDEX, SegmentationSample, SyntheticSegmentation
from mosic.eval.features import resolve_backbone
from mosic.eval.hummingbird import (
    evaluate_in_context,
    evaluate_in_context_fractions,
    fraction_label,
    patch_label_histograms,
    sample_patches,
    train_subset,
)


# ---------------------------------------------------------------- memory construction


def test_patch_label_histograms_by_hand():
    mask = np.zeros((8, 8), dtype=np.int64)
    mask[:4, 4:] = 1  # top-right patch: all class 1
    mask[4:, :4] = 2
    mask[4:, :2] = IGNORE_INDEX  # bottom-left: 8 class 2 + 8 ignore -> 100% class 2
    mask[4:, 4:] = 1
    mask[4, 4:] = 2  # bottom-right: 4 class 2, 12 class 1
    mask[5, 4:6] = 0  # ... then 2 class 0, 10 class 1
    mask[0, 0] = IGNORE_INDEX  # top-left: 15 class 0 -> 100% class 0
    hist = patch_label_histograms(mask, (2, 2), 3)
    assert hist.shape == (2, 2, 3) and hist.dtype == np.float32
    np.testing.assert_allclose(hist[0, 0], [1, 0, 0])
    np.testing.assert_allclose(hist[0, 1], [0, 1, 0])
    np.testing.assert_allclose(hist[1, 0], [0, 0, 1])
    np.testing.assert_allclose(hist[1, 1], [2 / 16, 10 / 16, 4 / 16])

    # equals average pooling of the one-hot mask when nothing is ignored
    clean = np.where(mask == IGNORE_INDEX, 0, mask)
    pooled = F.avg_pool2d(F.one_hot(torch.from_numpy(clean), 3).permute(2, 0, 1).float()[None], 4)[0]
    np.testing.assert_allclose(patch_label_histograms(clean, (2, 2), 3), pooled.permute(1, 2, 0).numpy(), atol=1e-6)

    ignored = np.full((8, 8), IGNORE_INDEX)
    assert not patch_label_histograms(ignored, (2, 2), 3).any()  # no labelled pixel: all zero
    with pytest.raises(ValueError, match="mask values"):
        patch_label_histograms(np.full((8, 8), 3), (2, 2), 3)


def test_class_balanced_sampling_favours_rare_classes():
    hist = np.zeros((18, 2), np.float32)
    hist[:16, 0] = 1  # 16 background patches
    hist[16, 1] = 1  # one patch of a rare class
    # patch 17 has no labelled pixel
    rng = np.random.default_rng(0)
    picks = [sample_patches(hist, 1, rng) for _ in range(300)]
    assert all(len(p) == 1 and p[0] != 17 for p in picks)
    rare = np.mean([p[0] == 16 for p in picks])
    assert rare > 0.4  # uniform sampling would give 1/17
    np.testing.assert_array_equal(sample_patches(hist, 100, rng), np.arange(17))  # all labelled
    a = sample_patches(hist, 5, np.random.default_rng(3))
    np.testing.assert_array_equal(a, sample_patches(hist, 5, np.random.default_rng(3)))


def test_train_subset_fraction_and_floor_of_one_image():
    idx, clamped = train_subset(256, 1 / 128, seed=0)
    assert len(idx) == 2 and not clamped
    np.testing.assert_array_equal(idx, train_subset(256, 1 / 128, seed=0)[0])
    idx, clamped = train_subset(20, 1 / 128, seed=0)
    assert len(idx) == 1 and clamped
    np.testing.assert_array_equal(train_subset(20, 1.0, seed=5)[0], np.arange(20))
    assert fraction_label(1 / 128) == "1/128" and fraction_label(1.0) == "1/1"


# ---------------------------------------------------------------- label transfer

PALETTE = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)


class StripeSegmentation:
    """32x32 images of four patch-aligned stripes, each a class painted in its palette colour."""

    num_classes = len(PALETTE)
    class_names = tuple(f"c{i}" for i in range(len(PALETTE)))

    def __init__(self, num_images, seed):
        rng = np.random.default_rng(seed)
        self.samples = []
        for i in range(num_images):
            classes = rng.integers(0, self.num_classes, 4)
            mask = np.repeat(classes, 8)[None, :].repeat(32, 0)
            if rng.random() < 0.5:
                mask = mask.T.copy()
            image = PALETTE[mask]
            mask[rng.random(mask.shape) < 0.1] = IGNORE_INDEX  # unlabelled pixels, colour intact
            self.samples.append(SegmentationSample(image, mask.astype(np.int64), f"img{i}"))

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return self.samples[i]


class ColourCodeBackbone(Backbone):
    """Features = one-hot of the palette colour nearest to each 8x8 patch's mean colour."""

    patch_size, embed_dim, num_prefix_tokens = 8, len(PALETTE), 0

    def __init__(self, random: bool = False):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.random = random
        self.generator = torch.Generator().manual_seed(0)

    def preprocess(self, frames):
        return frames.float()

    def patch_tokens(self, images, token_mask=None):
        colours = F.avg_pool2d(images, self.patch_size).permute(0, 2, 3, 1)  # (B, h, w, 3)
        if self.random:
            return torch.randn(*colours.shape[:3], 16, generator=self.generator)
        palette = torch.from_numpy(PALETTE).float()
        nearest = ((colours[..., None, :] - palette) ** 2).sum(-1).argmin(-1)
        return F.one_hot(nearest, len(PALETTE)).float()

    def blocks_in_order(self):
        return []


def test_label_transfer_is_perfect_when_features_encode_the_class():
    train, val = StripeSegmentation(12, seed=0), StripeSegmentation(6, seed=1)
    present = np.unique(np.concatenate([s.mask.ravel() for s in train.samples]))
    assert set(range(4)) <= set(present.tolist())
    result = evaluate_in_context(ColourCodeBackbone(), train, val, size=32, batch_size=4)
    assert result["miou"] == 100.0 and result["pixel_accuracy"] == 100.0
    assert result["memory_size"] == result["labelled_patches"] == 12 * 16  # every patch fits
    assert result["index"] == "exact" and result["num_train_images"] == 12

    # a few class-balanced patches per image, IVF retrieval, Hungarian scoring: still exact
    few = evaluate_in_context(
        ColourCodeBackbone(), train, val, size=32, patches_per_image=3, index="ivf", matching="hungarian"
    )
    assert few["miou"] == 100.0 and few["memory_size"] == 36 and few["index"] == "ivf"

    noise = evaluate_in_context(ColourCodeBackbone(random=True), train, val, size=32)
    assert noise["miou"] < 50.0


# ---------------------------------------------------------------- end to end

KEYS = {
    "miou", "pixel_accuracy", "iou_per_class", "class_names", "num_classes", "fraction", "seed",
    "num_train_images", "num_train_total", "fraction_clamped", "note", "num_val_images", "memory_size",
    "memory_capacity", "patches_per_image", "labelled_patches", "k", "temperature", "size", "matching",
    "index", "nlist", "nprobe", "gpu", "timings",
}  # fmt: skip


def test_end_to_end_vit_tiny_fractions_and_seeds():
    torch.manual_seed(0)
    backbone = resolve_backbone("vit-tiny", pretrained=False, patch_size=8, img_size=32, depth=1)
    train = SyntheticSegmentation(num_images=8, size=32, seed=0)
    val = SyntheticSegmentation(num_images=4, size=32, seed=1)

    single = evaluate_in_context(backbone, train, val, fraction=0.5, seed=1, size=32, memory_size=40)
    assert set(single) == KEYS
    assert 0.0 <= single["miou"] <= 100.0 and 0.0 <= single["pixel_accuracy"] <= 100.0
    assert single["num_train_images"] == 4 and single["patches_per_image"] == 10 and single["memory_size"] <= 40
    assert len(single["iou_per_class"]) == train.num_classes == single["num_classes"]
    assert set(single["timings"]) == {"memory_s", "index_s", "inference_s", "search_s", "total_s"}
    again = evaluate_in_context(backbone, train, val, fraction=0.5, seed=1, size=32, memory_size=40)
    assert again["miou"] == single["miou"]
    np.testing.assert_array_equal(again["iou_per_class"], single["iou_per_class"])

    out = evaluate_in_context_fractions(
        backbone, train, val, fractions=(1 / 128, 0.5, 1.0), seeds=(0, 1), size=32, memory_size=40
    )
    assert [e["label"] for e in out["fractions"]] == ["1/128", "1/2", "1/1"]
    tiny, half, full = out["fractions"]
    assert tiny["fraction_clamped"] and tiny["num_train_images"] == 1 and "kept 1 image" in tiny["note"]
    assert half["seeds"] == [0, 1] and len(half["mious"]) == 2 and full["seeds"] == [0]
    for e in out["fractions"]:
        assert 0.0 <= e["miou_mean"] <= 100.0 and e["miou_std"] >= 0.0
        assert e["miou_mean"] == pytest.approx(np.mean(e["mious"]))
    assert full["miou_std"] == 0.0 and out["summary"]["1/2"] == half["miou_mean"]
    # cached validation features give the same numbers as a standalone run
    assert half["runs"][1]["miou"] == single["miou"]
