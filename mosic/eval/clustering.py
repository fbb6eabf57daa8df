"""Unsupervised video segmentation by clustering patch features (MoSiC evaluation).

K-means (faiss) groups the backbone's patch tokens; clusters are matched to ground-truth
labels, one-to-one with the Hungarian algorithm or many-to-one by majority for
over-clustering, and scored by mIoU in percent (0-100).
"""

from __future__ import annotations

from typing import Sequence

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from ..backbones.base import Backbone
from ..data.source import VideoSource

MODES = ("dataset", "clip")


def _to_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def kmeans(
    features: np.ndarray | torch.Tensor, k: int, *, seed: int = 0, niter: int = 50, normalize: bool = True
) -> np.ndarray:
    """Cluster (N, D) features into ``k`` groups with faiss; returns (N,) int64 labels.

    Rows are L2-normalised first when ``normalize``. Deterministic for a given ``seed``.
    """
    x = np.ascontiguousarray(_to_numpy(features), dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {x.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(x) < k:
        raise ValueError(f"cannot cluster {len(x)} points into k={k} clusters; need at least k points")
    if normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    # min_points_per_centroid only controls faiss' "too few points" warning.
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, min_points_per_centroid=1, verbose=False)
    km.train(x)
    _, labels = km.index.search(x, 1)
    return labels[:, 0].astype(np.int64)


def confusion_matrix(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    num_pred: int,
    num_target: int,
    ignore_index: int | None = None,
) -> np.ndarray:
    """(num_pred, num_target) int64 counts of pixels with pred p and target t.

    ``pred`` and ``target`` are int arrays of the same shape; pixels whose target equals
    ``ignore_index`` are skipped.
    """
    pred, target = _to_numpy(pred).reshape(-1), _to_numpy(target).reshape(-1)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target differ in size: {pred.size} vs {target.size}")
    if ignore_index is not None:
        keep = target != ignore_index
        pred, target = pred[keep], target[keep]
    pred, target = pred.astype(np.int64), target.astype(np.int64)
    if pred.size and (pred.min() < 0 or pred.max() >= num_pred):
        raise ValueError(f"pred values must lie in [0, {num_pred}), got [{pred.min()}, {pred.max()}]")
    if target.size and (target.min() < 0 or target.max() >= num_target):
        raise ValueError(
            f"target values must lie in [0, {num_target}) or equal ignore_index, "
            f"got [{target.min()}, {target.max()}]"
        )
    counts = np.bincount(pred * num_target + target, minlength=num_pred * num_target)
    return counts.reshape(num_pred, num_target).astype(np.int64)


def _cluster_confusion(pred, target, num_classes: int, ignore_index: int | None) -> np.ndarray:
    pred = _to_numpy(pred)
    num_pred = int(pred.max()) + 1 if pred.size else 1
    return confusion_matrix(pred, target, num_pred, num_classes, ignore_index)


def _miou(conf: np.ndarray, matching: np.ndarray) -> dict:
    """mIoU of clusters mapped to classes by ``matching`` ((K,) class id, -1 = wrong)."""
    num_classes = conf.shape[1]
    matched = np.flatnonzero(matching >= 0)
    classes = matching[matched]
    tp = np.bincount(classes, weights=conf[matched, classes], minlength=num_classes)
    predicted = np.bincount(classes, weights=conf[matched].sum(1), minlength=num_classes)
    gt = conf.sum(0).astype(np.float64)
    present = gt > 0
    iou = np.full(num_classes, np.nan)
    iou[present] = 100.0 * tp[present] / (gt + predicted - tp)[present]
    miou = float(iou[present].mean()) if present.any() else float("nan")
    return {"miou": miou, "iou_per_class": iou, "matching": matching}


def hungarian_miou(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    num_classes: int,
    ignore_index: int | None = 255,
) -> dict:
    """mIoU after one-to-one Hungarian matching of clusters to classes.

    Args:
        pred: int cluster ids >= 0, any shape (K = max id + 1 clusters).
        target: int class ids in [0, num_classes) or ``ignore_index``, same shape.
    Returns:
        ``miou`` (mean over classes present in target, percent), ``iou_per_class``
        ((num_classes,) percent, NaN for absent classes) and ``matching`` ((K,) int64
        class of each cluster, -1 for unmatched clusters, whose pixels count as wrong).
    """
    conf = _cluster_confusion(pred, target, num_classes, ignore_index)
    rows, cols = linear_sum_assignment(conf, maximize=True)
    matching = np.full(conf.shape[0], -1, dtype=np.int64)
    matching[rows] = cols
    return _miou(conf, matching)


def greedy_many_to_one_miou(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    num_classes: int,
    ignore_index: int | None = 255,
) -> dict:
    """Over-clustering mIoU: each cluster takes the class it overlaps most (majority).

    Same arguments and return value as :func:`hungarian_miou`; several clusters may map
    to one class, empty clusters map to -1.
    """
    conf = _cluster_confusion(pred, target, num_classes, ignore_index)
    matching = np.where(conf.sum(1) > 0, conf.argmax(1), -1).astype(np.int64)
    return _miou(conf, matching)


def segment_features(
    features: np.ndarray | torch.Tensor, k: int, *, seed: int = 0, niter: int = 50, normalize: bool = True
) -> np.ndarray:
    """K-means over all patches of (F, h, w, D) features jointly -> (F, h, w) int64 cluster maps."""
    x = _to_numpy(features)
    if x.ndim != 4:
        raise ValueError(f"features must be (F, h, w, D), got shape {x.shape}")
    labels = kmeans(x.reshape(-1, x.shape[-1]), k, seed=seed, niter=niter, normalize=normalize)
    return labels.reshape(x.shape[:3])


def _upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(T, h, w) label maps -> (T, *size) by nearest-neighbour upsampling."""
    up = F.interpolate(torch.from_numpy(maps)[:, None].float(), size=size, mode="nearest")
    return up[:, 0].long().numpy()


@torch.no_grad()
def _clip_features(
    backbone: Backbone,
    frames: np.ndarray,
    size: int | tuple[int, int] | None,
    batch_size: int,
    device: str | torch.device,
) -> np.ndarray:
    """(T, H, W, 3) uint8 frames -> (T, h, w, D) float32 patch tokens."""
    p = backbone.patch_size
    x = torch.from_numpy(frames).permute(0, 3, 1, 2)
    if size is None:
        out_hw = (x.shape[-2] // p * p, x.shape[-1] // p * p)
    else:
        out_hw = (size, size) if isinstance(size, int) else tuple(size)
    if min(out_hw) < p or out_hw[0] % p or out_hw[1] % p:
        raise ValueError(f"size {out_hw} must be positive multiples of the patch size {p}")
    chunks = []
    for batch in x.split(batch_size):
        batch = batch.to(device)
        if tuple(batch.shape[-2:]) != out_hw:
            batch = F.interpolate(batch.float(), size=out_hw, mode="bilinear", antialias=True, align_corners=False)
            batch = batch.round().clamp(0, 255).to(torch.uint8)
        chunks.append(backbone.patch_tokens(backbone.preprocess(batch)).float().cpu())
    return torch.cat(chunks).numpy()


def evaluate_video_clustering(
    backbone: Backbone,
    source: VideoSource,
    *,
    num_frames: int = 8,
    frame_stride: int = 1,
    size: int | tuple[int, int] | None = None,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    seed: int = 0,
    modes: Sequence[str] = MODES,
) -> dict:
    """Unsupervised video segmentation by K-means on patch tokens, scored by Hungarian mIoU.

    Each video contributes the clip of frames 0, s, 2s, ... (``num_frames`` of them,
    s = ``frame_stride``), resized (bilinear, antialiased) to ``size`` (int = square,
    or (H, W); default: the source size rounded down to a multiple of the patch size).
    Cluster maps (h, w) are upsampled with nearest neighbour to the mask resolution,
    as in the paper, before scoring.

    Modes:
        ``"dataset"`` (D): one K-means over the patches of all clips with K = number of
        classes incl. background (``source.num_classes + 1`` if the source has it, else
        max class id + 1), Hungarian mIoU against class masks over the whole dataset.
        ``"clip"`` (C): per clip, K = number of instance ids in its instance masks (incl.
        background), Hungarian mIoU against instance masks, averaged over clips.

    Args:
        device: where frames go; the backbone must already be there.
    Returns:
        ``num_videos`` plus, per requested mode, ``dataset_miou``, ``dataset_iou_per_class``
        (list, NaN for absent classes) and ``num_classes``; ``clip_miou`` and
        ``clip_mious`` (list per video). Deterministic for a given ``seed``.
    """
    unknown = set(modes) - set(MODES)
    if unknown or not modes:
        raise ValueError(f"modes must be a non-empty subset of {MODES}, got {tuple(modes)}")
    if len(source) == 0:
        raise ValueError("the source has no videos")
    frame_indices = [i * frame_stride for i in range(num_frames)]
    features, class_masks, clip_mious = [], [], []
    was_training = backbone.training
    backbone.eval()
    try:
        for v in range(len(source)):
            gt = source.ground_truth(v)
            if gt is None:
                raise ValueError(
                    f"evaluate_video_clustering needs a source with ground-truth masks, e.g. "
                    f"mosic.data.SyntheticVideos; video {v} ({source.video_name(v)}) has none"
                )
            if source.num_frames(v) <= frame_indices[-1]:
                raise ValueError(
                    f"video {v} ({source.video_name(v)}) has {source.num_frames(v)} frames; "
                    f"num_frames={num_frames} with frame_stride={frame_stride} needs {frame_indices[-1] + 1}"
                )
            feats = _clip_features(backbone, source.read_frames(v, frame_indices), size, batch_size, device)
            if "dataset" in modes:
                features.append(feats)
                class_masks.append(gt.class_masks(frame_indices))
            if "clip" in modes:
                instances = gt.instance_masks(frame_indices)
                ids, target = np.unique(instances, return_inverse=True)
                maps = _upsample(segment_features(feats, len(ids), seed=seed), instances.shape[-2:])
                result = hungarian_miou(maps, target.reshape(instances.shape), len(ids), ignore_index=None)
                clip_mious.append(result["miou"])
    finally:
        backbone.train(was_training)

    out: dict = {"num_videos": len(source)}
    if "dataset" in modes:
        num_classes = getattr(source, "num_classes", None)
        num_classes = num_classes + 1 if num_classes is not None else max(int(m.max()) for m in class_masks) + 1
        maps = segment_features(np.concatenate(features), num_classes, seed=seed)
        preds, start = [], 0
        for masks in class_masks:
            preds.append(_upsample(maps[start : start + len(masks)], masks.shape[-2:]).reshape(-1))
            start += len(masks)
        target = np.concatenate([m.reshape(-1) for m in class_masks])
        result = hungarian_miou(np.concatenate(preds), target, num_classes, ignore_index=None)
        out.update(
            dataset_miou=result["miou"],
            dataset_iou_per_class=result["iou_per_class"].tolist(),
            num_classes=num_classes,
        )
    if "clip" in modes:
        out.update(clip_miou=float(np.mean(clip_mious)), clip_mious=clip_mious)
    return out
