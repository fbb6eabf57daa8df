"""Segmentation scores shared by every protocol: confusion matrix, IoU, cluster-to-class matching, mIoU.

A confusion matrix ``conf`` is (K, C) int64: ``conf[i, j]`` counts the labelled pixels
predicted as cluster (or class) i whose true class is j. The IoU of cluster i with class j
is ``conf[i, j] / (rowsum_i + colsum_j - conf[i, j])`` (:func:`iou_matrix`). A *matching*
is a (K,) int64 array giving the class each cluster stands for, -1 for a cluster that
stands for none (its pixels count as wrong):

* :func:`hungarian_matching`: one-to-one, maximising the summed IoU of the matched pairs,
  i.e. the mIoU (as NeCo's and open-hummingbird-eval's ``PredsmIoU`` do);
* :func:`greedy_matching`: many-to-one for over-clustering, each cluster to the class it
  overlaps most (the highest pixel precision);
* the identity (``matching=None``) for predictions that already are class ids (linear
  probe, label transfer).

:func:`miou_from_confusion` scores a matching (mIoU in percent over the classes present in
the target); :func:`hungarian_miou` and :func:`greedy_many_to_one_miou` do it all from
label maps.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

__all__ = [
    "confusion_matrix",
    "greedy_many_to_one_miou",
    "greedy_matching",
    "hungarian_matching",
    "hungarian_miou",
    "iou_matrix",
    "miou_from_confusion",
    "pixel_accuracy",
]


def _to_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


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


def iou_matrix(conf: np.ndarray) -> np.ndarray:
    """(K, C) float64 IoU (0..1) of cluster i with class j; 0 where both are empty."""
    c = np.asarray(conf, dtype=np.float64)
    union = c.sum(1, keepdims=True) + c.sum(0, keepdims=True) - c
    return np.divide(c, union, out=np.zeros_like(c), where=union > 0)


def hungarian_matching(conf: np.ndarray) -> np.ndarray:
    """One-to-one matching of the K clusters to the C classes maximising the summed IoU.

    A class absent from the target has IoU 0 with every cluster, so this maximises the
    mIoU over the present classes (:func:`miou_from_confusion`). With K > C the K - C
    clusters left over get -1; with K < C, C - K classes get no cluster (IoU 0).

    Returns:
        (K,) int64 class of each cluster, -1 for unmatched clusters.
    """
    rows, cols = linear_sum_assignment(iou_matrix(conf), maximize=True)
    matching = np.full(np.shape(conf)[0], -1, dtype=np.int64)
    matching[rows] = cols
    return matching


def greedy_matching(conf: np.ndarray) -> np.ndarray:
    """Many-to-one matching: each cluster takes the class it overlaps most (majority vote).

    Returns:
        (K,) int64 class of each cluster; -1 for clusters without a labelled pixel.
    """
    conf = np.asarray(conf)
    return np.where(conf.sum(1) > 0, conf.argmax(1), -1).astype(np.int64)


def _identity(conf: np.ndarray) -> np.ndarray:
    num_pred, num_classes = np.shape(conf)
    if num_pred != num_classes:
        raise ValueError(f"the identity matching needs a square confusion matrix, got {num_pred} x {num_classes}")
    return np.arange(num_classes, dtype=np.int64)


def miou_from_confusion(conf: np.ndarray, matching: np.ndarray | None = None) -> dict:
    """mIoU of clusters mapped to classes by ``matching``.

    Args:
        conf: (K, C) confusion counts (:func:`confusion_matrix`).
        matching: (K,) class of each cluster, -1 = none (its pixels count as wrong);
            None: the identity (K = C, predictions are class ids).
    Returns:
        ``miou`` (mean over the classes present in the target, percent; NaN when none
        is), ``iou_per_class`` ((C,) percent, NaN for absent classes) and ``matching``.
    """
    conf = np.asarray(conf)
    matching = _identity(conf) if matching is None else np.asarray(matching)
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


def pixel_accuracy(conf: np.ndarray, matching: np.ndarray | None = None) -> float:
    """Percent of the labelled pixels whose cluster is matched to their class (NaN for none)."""
    conf = np.asarray(conf)
    matching = _identity(conf) if matching is None else np.asarray(matching)
    matched = np.flatnonzero(matching >= 0)
    total = conf.sum()
    correct = conf[matched, matching[matched]].sum()
    return float(100.0 * correct / total) if total else float("nan")


def _cluster_confusion(pred, target, num_classes: int, ignore_index: int | None) -> np.ndarray:
    pred = _to_numpy(pred)
    num_pred = int(pred.max()) + 1 if pred.size else 1
    return confusion_matrix(pred, target, num_pred, num_classes, ignore_index)


def hungarian_miou(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    num_classes: int,
    ignore_index: int | None = 255,
) -> dict:
    """mIoU after one-to-one Hungarian matching of clusters to classes (maximising IoU,
    :func:`hungarian_matching`).

    Args:
        pred: int cluster ids >= 0, any shape (K = max id + 1 clusters).
        target: int class ids in [0, num_classes) or ``ignore_index``, same shape.
    Returns:
        ``miou`` (mean over classes present in target, percent), ``iou_per_class``
        ((num_classes,) percent, NaN for absent classes) and ``matching`` ((K,) int64
        class of each cluster, -1 for unmatched clusters, whose pixels count as wrong).
    """
    conf = _cluster_confusion(pred, target, num_classes, ignore_index)
    return miou_from_confusion(conf, hungarian_matching(conf))


def greedy_many_to_one_miou(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    num_classes: int,
    ignore_index: int | None = 255,
) -> dict:
    """Over-clustering mIoU: each cluster takes the class it overlaps most (majority,
    :func:`greedy_matching`).

    Same arguments and return value as :func:`hungarian_miou`; several clusters may map
    to one class, empty clusters map to -1.
    """
    conf = _cluster_confusion(pred, target, num_classes, ignore_index)
    return miou_from_confusion(conf, greedy_matching(conf))
