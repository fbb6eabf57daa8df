import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers.eval import BlockVideos, ClassCode
from mosic.backbones.base import Backbone
from mosic.data.segmentation import SyntheticVideoSegmentation, VideoSegmentationDataset
from mosic.eval.clustering import MODES, PAPER_OVERCLUSTER_K, evaluate_video_clustering, kmeans, segment_features
from mosic.eval.features import resolve_backbone
from mosic.eval.metrics import confusion_matrix, greedy_many_to_one_miou, hungarian_miou


# ---------------------------------------------------------------- matching metrics


def test_confusion_matrix_ignore_index():
    pred = np.array([0, 1, 1, 0, 2, 2])
    target = np.array([0, 1, 255, 1, 255, 0])
    conf = confusion_matrix(pred, target, 3, 2, ignore_index=255)
    np.testing.assert_array_equal(conf, [[1, 1], [0, 1], [1, 0]])
    assert conf.dtype == np.int64
    with pytest.raises(ValueError, match="target values"):
        confusion_matrix(pred, target, 3, 2)
    with pytest.raises(ValueError, match="pred values"):
        confusion_matrix(pred, np.zeros(6, dtype=int), 2, 2)


def test_perfect_and_permuted_prediction_give_100():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 4, size=(3, 16, 16))
    assert hungarian_miou(target, target, 4)["miou"] == 100.0
    perm = np.array([2, 0, 3, 1])
    result = hungarian_miou(torch.from_numpy(perm[target]), torch.from_numpy(target), 4)
    assert result["miou"] == 100.0
    np.testing.assert_array_equal(result["iou_per_class"], [100.0] * 4)
    np.testing.assert_array_equal(result["matching"][perm], np.arange(4))


def test_hungarian_two_classes_by_hand():
    target = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    pred = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 1])  # cluster 1 ~ class 0, cluster 0 ~ class 1
    # class 0: tp 3, predicted 4, gt 4 -> 3 / 5; class 1: tp 5, predicted 6, gt 6 -> 5 / 7
    result = hungarian_miou(pred, target, 2)
    np.testing.assert_array_equal(result["matching"], [1, 0])
    np.testing.assert_allclose(result["iou_per_class"], [60.0, 500 / 7])
    assert math.isclose(result["miou"], (60.0 + 500 / 7) / 2)


def test_hungarian_unmatched_clusters_count_as_wrong_and_absent_classes_skipped():
    target = np.array([0, 0, 0, 0, 1, 1, 1, 1, 255])
    pred = np.array([0, 0, 1, 1, 2, 2, 2, 3, 3])
    # class 0 gets cluster 0 or 1 (2 of 4 pixels) -> 50; class 1 gets cluster 2 -> 3/4 -> 75
    result = hungarian_miou(pred, target, 3)
    np.testing.assert_allclose(result["iou_per_class"], [50.0, 75.0, np.nan])
    assert result["miou"] == 62.5
    assert result["matching"][2] == 1 and 0 in result["matching"][:2]


def test_greedy_many_to_one():
    target = np.repeat([0, 1, 2], 4)
    pure = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5])
    result = greedy_many_to_one_miou(pure, target, 3)
    assert result["miou"] == 100.0
    np.testing.assert_array_equal(result["matching"], [0, 0, 1, 1, 2, 2])
    # Hungarian can use only one cluster per class: 2 of 4 pixels each -> 50
    assert hungarian_miou(pure, target, 3)["miou"] == 50.0

    mixed = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 0])  # cluster 0 = 2x class 0 + 1x class 2
    # class 0: tp 4, predicted 5, gt 4 -> 80; class 1 -> 100; class 2: tp 3, predicted 3, gt 4 -> 75
    result = greedy_many_to_one_miou(mixed, target, 3)
    np.testing.assert_allclose(result["iou_per_class"], [80.0, 100.0, 75.0])
    assert math.isclose(result["miou"], 85.0)


# ---------------------------------------------------------------- k-means


def _planted(n_per=100, k=3, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 10
    truth = np.repeat(np.arange(k), n_per)
    x = centers[truth] + rng.normal(scale=0.05, size=(len(truth), d))
    perm = rng.permutation(len(truth))
    return x[perm].astype(np.float32), truth[perm]


def _same_partition(a, b):
    conf = confusion_matrix(a, b, a.max() + 1, b.max() + 1)
    return (conf > 0).sum() == conf.shape[0] == conf.shape[1]


def test_kmeans_recovers_planted_clusters():
    x, truth = _planted()
    labels = kmeans(x, 3, seed=1)
    assert labels.dtype == np.int64 and labels.shape == truth.shape
    assert _same_partition(labels, truth)
    np.testing.assert_array_equal(labels, kmeans(torch.from_numpy(x), 3, seed=1))
    assert _same_partition(kmeans(x, 3, normalize=False), truth)
    with pytest.raises(ValueError, match="at least k points"):
        kmeans(x[:2], 3)


def test_segment_features_shape():
    x, truth = _planted(n_per=16, k=2, d=8)
    maps = segment_features(x.reshape(2, 4, 4, 8), 2)
    assert maps.shape == (2, 4, 4)
    assert _same_partition(maps.reshape(-1), truth)


# ---------------------------------------------------------------- video evaluation

PALETTE = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)  # colour == class


class MeanColour(Backbone):
    """Patch token = mean normalised colour of the patch (or noise with ``random``)."""

    patch_size = 8
    embed_dim = 3
    num_prefix_tokens = 0

    def __init__(self, random=False):
        super().__init__()
        self.random = random
        self.seen_training = []

    def patch_tokens(self, images, token_mask=None):
        self.check_images(images)
        self.seen_training.append(self.training)
        if self.random:
            b, _, h, w = images.shape
            g = torch.Generator().manual_seed(len(self.seen_training))
            return torch.randn(b, h // 8, w // 8, 16, generator=g)
        return F.avg_pool2d(images, 8).permute(0, 2, 3, 1)

    def blocks_in_order(self):
        return []


class GT:
    def __init__(self, instances, classes):
        self.instances, self.classes = instances, classes

    def tracks(self, frame_indices, queries):
        raise NotImplementedError

    def instance_masks(self, frame_indices):
        return self.instances[list(frame_indices)]

    def class_masks(self, frame_indices):
        return self.classes[list(frame_indices)]


class Videos:
    """Objects of patch-aligned 8x8-pixel blocks moving over a black background."""

    def __init__(self, with_gt=True, num_frames=6, height=32, width=48):
        self.with_gt = with_gt
        self.requested = []
        # (class id, top, left, blocks high, blocks wide, dx per frame in blocks) per object
        layouts = [[(1, 0, 0, 2, 2, 1), (2, 2, 3, 2, 2, 0)], [(3, 1, 1, 1, 3, 1), (2, 0, 5, 3, 1, 0)]]
        self.videos = []
        for objects in layouts:
            inst = np.zeros((num_frames, height, width), dtype=np.int64)
            cls = np.zeros_like(inst)
            for t in range(num_frames):
                for i, (c, top, left, bh, bw, dx) in enumerate(objects, start=1):
                    x0 = (left + dx * t) % (width // 8 - bw + 1)
                    region = (t, slice(top * 8, (top + bh) * 8), slice(x0 * 8, (x0 + bw) * 8))
                    inst[region], cls[region] = i, c
            self.videos.append((PALETTE[cls], GT(inst, cls)))

    def __len__(self):
        return len(self.videos)

    def video_name(self, index):
        return f"fake/{index}"

    def num_frames(self, index):
        return len(self.videos[index][0])

    def fps(self, index):
        return None

    def read_frames(self, index, frame_indices):
        self.requested.append(list(frame_indices))
        return self.videos[index][0][list(frame_indices)]

    def ground_truth(self, index):
        return self.videos[index][1] if self.with_gt else None


def test_evaluate_video_clustering_perfect_features():
    backbone, source = MeanColour(), Videos()
    backbone.train()
    result = evaluate_video_clustering(backbone, source, num_frames=3, frame_stride=2, batch_size=2)
    assert result["num_videos"] == 2 and result["num_classes"] == 4
    assert result["dataset_miou"] == 100.0
    assert result["clip_miou"] == 100.0 and result["clip_mious"] == [100.0, 100.0]
    assert source.requested == [[0, 2, 4], [0, 2, 4]]
    assert backbone.training and backbone.seen_training and not any(backbone.seen_training)


def test_evaluate_video_clustering_num_classes_attribute_and_modes():
    source = Videos()
    source.num_classes = 5  # one class never appears: K = 6, absent class is skipped
    result = evaluate_video_clustering(MeanColour(), source, num_frames=2, modes=("dataset",))
    assert result["num_classes"] == 6 and "clip_miou" not in result
    assert math.isnan(result["dataset_iou_per_class"][4])
    assert result["dataset_miou"] == 100.0


def test_evaluate_video_clustering_resizes():
    # 32x48 -> 16x16: 2x2 patches per frame cannot resolve the objects exactly
    result = evaluate_video_clustering(MeanColour(), Videos(), num_frames=2, size=16, modes=("clip",))
    assert "dataset_miou" not in result and 0 < result["clip_miou"] < 100
    # default size: the source size rounded down to a multiple of the patch size
    source = Videos(height=36, width=52)
    result = evaluate_video_clustering(MeanColour(), source, num_frames=2)
    assert result == evaluate_video_clustering(MeanColour(), source, num_frames=2, size=(32, 48))
    assert result["dataset_miou"] < 100  # blended border patches


def test_evaluate_video_clustering_random_features_and_determinism():
    def run():
        return evaluate_video_clustering(MeanColour(random=True), Videos(), num_frames=4, seed=3)

    result = run()
    assert result["dataset_miou"] < 50 and result["clip_miou"] < 60
    assert run() == result


def test_evaluate_video_clustering_errors():
    with pytest.raises(ValueError, match="needs a source with ground-truth masks"):
        evaluate_video_clustering(MeanColour(), Videos(with_gt=False))
    with pytest.raises(ValueError, match="multiples of the patch size"):
        evaluate_video_clustering(MeanColour(), Videos(), num_frames=2, size=20)
    with pytest.raises(ValueError, match="needs 7"):
        evaluate_video_clustering(MeanColour(), Videos(), num_frames=4, frame_stride=2)
    with pytest.raises(ValueError, match="modes"):
        evaluate_video_clustering(MeanColour(), Videos(), modes=("pixel",))


# ---- video clustering: per frame, over-clustering (stubs: tests/helpers/eval.py)


@pytest.fixture(scope="module")
def tiny_vit():
    torch.manual_seed(0)
    return resolve_backbone("vit-tiny", pretrained=False, patch_size=8, img_size=32, depth=1)


@pytest.mark.usefixtures("single_threaded")
def test_video_frame_mode_read_masks_perfect_features():
    source = BlockVideos()
    assert isinstance(source, VideoSegmentationDataset)
    result = evaluate_video_clustering(
        ClassCode(), source, num_frames=3, modes=("frame", "clip"), overcluster_k={"frame": 6, "clip": 6}, nredo=5
    )
    assert result["frame_miou"] == 100.0 and result["frame_mious"] == [100.0, 100.0]
    assert result["clip_miou"] == 100.0
    assert result["frame_overcluster_miou"] == 100.0 and result["clip_overcluster_miou"] == 100.0
    assert result["overcluster_k"] == {"frame": 6, "clip": 6} and "dataset_miou" not in result
    with pytest.raises(ValueError, match="no masks for frames"):
        evaluate_video_clustering(ClassCode(), source, num_frames=4, modes=("frame",))
    with pytest.raises(ValueError, match="needs semantic class masks"):
        evaluate_video_clustering(ClassCode(), source, num_frames=2, modes=("dataset",))
    with pytest.raises(ValueError, match="not in modes"):
        evaluate_video_clustering(ClassCode(), source, num_frames=2, modes=("frame",), overcluster_k={"clip": 4})
    with pytest.raises(ValueError, match="exceed the 24 patch tokens"):
        evaluate_video_clustering(ClassCode(), source, num_frames=2, modes=("frame",), overcluster_k={"frame": 30})


@pytest.mark.usefixtures("single_threaded")
def test_video_all_modes_synthetic_video_segmentation(tiny_vit):
    source = SyntheticVideoSegmentation(num_videos=2, num_frames=8, size=32, seed=0)
    assert set(MODES) == {"dataset", "clip", "frame"} and PAPER_OVERCLUSTER_K["davis"]["dataset"] == 200
    result = evaluate_video_clustering(
        tiny_vit,
        source,
        num_frames=4,
        frame_stride=2,
        modes=MODES,
        overcluster_k={"frame": 4, "clip": 8, "dataset": 10},
    )
    for key in (
        "dataset_miou",
        "clip_miou",
        "frame_miou",
        "frame_overcluster_miou",
        "clip_overcluster_miou",
        "dataset_overcluster_miou",
    ):
        assert 0 <= result[key] <= 100, key
    assert len(result["frame_mious"]) == 2 and len(result["frame_overcluster_mious"]) == 2
    assert result["num_classes"] == source.num_classes + 1
    # the default modes are unchanged: no per-frame keys
    default = evaluate_video_clustering(tiny_vit, source, num_frames=4, frame_stride=2)
    assert "frame_miou" not in default and default["dataset_miou"] == result["dataset_miou"]
    assert default["clip_miou"] == result["clip_miou"]
