import math

import faiss
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mosic.backbones.base import Backbone
from mosic.data.segmentation import (
    IGNORE_INDEX,
    SegmentationSample,
    SyntheticSegmentation,
    SyntheticVideoSegmentation,
    VideoSegmentationDataset,
)
from mosic.eval.clustering import (
    MODES,
    PAPER_OVERCLUSTER_K,
    evaluate_video_clustering,
    greedy_many_to_one_miou,
    hungarian_miou,
)
from mosic.eval.features import resolve_backbone
from mosic.eval.linear_probe import evaluate_linear_probe
from mosic.eval.overclustering import evaluate_overclustering

# ---------------------------------------------------------------- stubs

PALETTE = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)  # colour == class


class ClassCode(Backbone):
    """Patch token = 5 x one-hot of the palette colour nearest to the patch's mean colour.

    ``dense_features`` calls ``preprocess`` (uint8 -> normalised float) then
    ``patch_tokens`` ((B, 3, H, W) -> (B, H/8, W/8, D)); nothing else. No parameters.
    """

    patch_size = 8
    embed_dim = 6
    num_prefix_tokens = 0

    def __init__(self):
        super().__init__()
        mean, std = torch.tensor(self.mean).view(1, 3), torch.tensor(self.std).view(1, 3)
        self.register_buffer("palette", (torch.from_numpy(PALETTE).float() / 255 - mean) / std)

    def patch_tokens(self, images, token_mask=None):
        self.check_images(images)
        colour = F.avg_pool2d(images, 8).permute(0, 2, 3, 1)  # (B, h, w, 3)
        nearest = torch.cdist(colour.reshape(-1, 3), self.palette).argmin(1).view(colour.shape[:3])
        return 5.0 * F.one_hot(nearest, self.embed_dim).float()

    def blocks_in_order(self):
        return []


class Blocks:
    """A SegmentationDataset of 4x4 patch-aligned blocks (``block`` px each), one class each."""

    num_classes = 4
    class_names = ("background", "red", "green", "blue")

    def __init__(self, n=24, seed=0, ignore_border=False, block=8):
        rng = np.random.default_rng(seed)
        self.classes = rng.integers(0, 4, size=(n, 4, 4))
        self.classes[:, 0, :4] = np.arange(4)  # every class in every image
        self.ignore_border = ignore_border
        self.block = block

    def __len__(self):
        return len(self.classes)

    def __getitem__(self, i):
        mask = np.kron(self.classes[i], np.ones((self.block, self.block), dtype=np.int64))
        image = PALETTE[mask]
        if self.ignore_border:
            mask = mask.copy()
            mask[:, :2] = IGNORE_INDEX
        return SegmentationSample(image, mask, f"blocks/{i}")


class BlockVideos:
    """A VideoSegmentationDataset (read_masks, no ground_truth) of moving colour blocks."""

    def __init__(self, num_videos=2, num_frames=4):
        rng = np.random.default_rng(1)
        self.videos = []
        for _ in range(num_videos):
            inst = np.zeros((num_frames, 32, 48), dtype=np.int64)
            colours = rng.permutation([1, 2, 3])
            for t in range(num_frames):  # objects of 2x2 patches
                inst[t, 0:16, 8 * t : 8 * t + 16] = 1
                inst[t, 16:32, 32 - 8 * t : 48 - 8 * t] = 2
                if t % 2 == 0:
                    inst[t, 16:32, 0:16] = 3  # object 3 only in even frames
            frames = PALETTE[np.r_[0, colours][inst]]
            masks = inst.copy()
            masks[:, :, -1] = IGNORE_INDEX  # an unlabelled column
            self.videos.append((frames, masks))

    def __len__(self):
        return len(self.videos)

    def video_name(self, index):
        return f"blocks/{index}"

    def num_frames(self, index):
        return len(self.videos[index][0])

    def fps(self, index):
        return None

    def read_frames(self, index, frame_indices):
        return self.videos[index][0][list(frame_indices)]

    def read_masks(self, index, frame_indices):
        return self.videos[index][1][list(frame_indices)]

    def annotated_frames(self, index):
        return [0, 1, 2]  # the last frame has no mask


@pytest.fixture(autouse=True, scope="module")
def single_threaded():
    """torch and faiss each bring an OpenMP runtime; on a busy 2-core machine their spinning
    worker threads make every tiny K-means take 0.1-5 s. One thread each: milliseconds."""
    threads = faiss.omp_get_max_threads(), torch.get_num_threads()
    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads[0])
    torch.set_num_threads(threads[1])


@pytest.fixture(scope="module")
def tiny_vit():
    torch.manual_seed(0)
    return resolve_backbone("vit-tiny", pretrained=False, patch_size=8, img_size=32, depth=1)


# ---------------------------------------------------------------- matching metrics


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


# ---------------------------------------------------------------- linear probe


def test_linear_probe_learns_class_coding_features():
    # 64 px images, blocks of 2x2 tokens; only pixels near block borders can be wrong (the
    # bilinear upsampling of 8x8 logits to 100x100 blends neighbouring blocks there)
    train, val = Blocks(24, seed=0, ignore_border=True, block=16), Blocks(8, seed=1, block=16)
    result = evaluate_linear_probe(ClassCode(), train, val, size=None, batch_size=8, device="cpu")
    assert result["miou"] > 95 and result["pixel_accuracy"] > 97
    assert result["mask_size"] == [100, 100] and result["token_grid"] == [8, 8] and result["input_size"] == [64, 64]
    assert len(result["train_loss"]) == 20 and result["train_loss"][-1] < 0.25 * result["train_loss"][0]
    assert result["lr"] == [0.01] * 20  # default milestone (20,) falls after the 20th epoch
    # at the token resolution the bilinear upsampling is the identity: exact
    train, val = Blocks(24, seed=0, ignore_border=True), Blocks(8, seed=1)
    exact = evaluate_linear_probe(ClassCode(), train, val, size=None, mask_size=4, batch_size=8, epochs=5)
    assert exact["miou"] == 100.0 and exact["iou_per_class"] == [100.0] * 4
    assert set(exact["timings"]) == {"features", "train", "eval", "total"}


def test_linear_probe_schedule_seed_and_errors():
    train, val = Blocks(8, seed=0), Blocks(4, seed=1)
    a = evaluate_linear_probe(ClassCode(), train, val, size=None, epochs=4, milestones=(1, 3), batch_size=4, seed=3)
    np.testing.assert_allclose(a["lr"], [0.01, 0.001, 0.001, 0.0001])
    b = evaluate_linear_probe(ClassCode(), train, val, size=None, epochs=4, milestones=(1, 3), batch_size=4, seed=3)
    assert a["train_loss"] == b["train_loss"] and a["miou"] == b["miou"]

    class Wrong(Blocks):
        num_classes = 5

    with pytest.raises(ValueError, match="must match"):
        evaluate_linear_probe(ClassCode(), train, Wrong(4), size=None, epochs=1)
    with pytest.raises(ValueError, match="multiples of the patch size"):
        evaluate_linear_probe(ClassCode(), train, val, size=20, epochs=1)


def test_linear_probe_end_to_end_synthetic_vit(tiny_vit):
    train = SyntheticSegmentation(num_images=16, size=32, seed=0)
    val = SyntheticSegmentation(num_images=8, size=32, seed=1)
    result = evaluate_linear_probe(tiny_vit, train, val, size=32, epochs=3, batch_size=8)
    assert 0 <= result["miou"] <= 100 and 0 <= result["pixel_accuracy"] <= 100
    assert result["num_classes"] == 5 and len(result["iou_per_class"]) == 5
    assert result["num_train"] == 16 and result["num_val"] == 8
    assert all(np.isfinite(result["train_loss"]))


# ---------------------------------------------------------------- overclustering


def test_overclustering_permuted_clusters_score_100():
    result = evaluate_overclustering(ClassCode(), Blocks(8), ks=(None, 6), size=None, device="cpu")
    by_k = result["miou_by_k"]
    assert by_k == {"num_classes": 100.0, "6": 100.0}
    assert [r["matching"] for r in result["results"]] == ["hungarian", "greedy"]
    assert result["results"][0]["k"] == 4 and result["mask_size"] == [100, 100]
    assert result["num_tokens"] == 8 * 16


def test_overclustering_end_to_end_synthetic_vit(tiny_vit):
    dataset = SyntheticSegmentation(num_images=16, size=32, seed=0)
    result = evaluate_overclustering(tiny_vit, dataset, ks=(None, 8), size=32, num_seeds=2)
    first, second = result["results"]
    assert (first["k"], first["matching"]) == (5, "hungarian") and (second["k"], second["matching"]) == (8, "greedy")
    for r in result["results"]:
        assert 0 <= r["miou"] <= 100 and len(r["mious"]) == 2 and len(r["iou_per_class"]) == 5
    assert result["num_tokens"] == 16 * 4 * 4 and result["pca_dim"] is None
    again = evaluate_overclustering(tiny_vit, dataset, ks=(None, 8), size=32, num_seeds=2)
    assert again["results"] == result["results"]
    pca = evaluate_overclustering(tiny_vit, dataset, ks=(8,), size=32, pca_dim=16, normalize=False)
    assert pca["pca_dim"] == 16 and 0 <= pca["results"][0]["miou"] <= 100
    with pytest.raises(ValueError, match="exceeds the 256 patch tokens"):
        evaluate_overclustering(tiny_vit, dataset, ks=(300,), size=32)
    with pytest.raises(ValueError, match="positive int or None"):
        evaluate_overclustering(tiny_vit, dataset, ks=(0,), size=32)


# ---------------------------------------------------------------- video clustering: per frame, over-clustering


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
