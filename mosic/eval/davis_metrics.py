"""DAVIS video object segmentation metrics: region similarity J and boundary measure F.

Definitions follow the official DAVIS 2017 evaluation toolkit
(github.com/davisvideochallenge/davis2017-evaluation, ``davis2017/metrics.py``,
``utils.py``, ``evaluation.py``); this is an independent implementation of them:

* J (:func:`jaccard`): intersection over union of a predicted and a ground-truth binary
  mask; 1 when both are empty.
* F (:func:`f_boundary`): boundaries are 1-pixel wide maps from :func:`seg2bmap` (the
  Berkeley ``seg2bmap``: a pixel is a boundary pixel when it differs from its east, south
  or south-east neighbour; boundaries sit half a pixel towards the origin). A boundary
  pixel of one mask is matched when it lies within a disk of radius
  ``ceil(bound_th * image diagonal)`` pixels (``bound_th`` >= 1: that many pixels) of the
  other mask's boundary (binary dilation with a disk of ``x^2 + y^2 <= r^2``).
  Precision = matched predicted boundary / predicted boundary, recall = matched
  ground-truth boundary / ground-truth boundary, F = 2PR / (P + R). Conventions: both
  boundaries empty -> F = 1; only one empty -> F = 0.
* :func:`db_statistics`: mean, recall (fraction of frames with value > 0.5) and decay
  (mean of the first quarter of the frames minus mean of the last quarter, the
  toolkit's 4 bins) of per-frame values.
* :func:`davis_scores` (one sequence, semi-supervised protocol): per object, J and F on
  every frame except the first (given) frame and, as the official ``evaluation.py``
  does (``all_gt_masks[:, 1:-1]``), the last frame; statistics per object; the sequence
  summary averages over its objects. A benchmark averages over all objects of all
  sequences (``J&F-Mean = (mean J-Mean + mean F-Mean) / 2`` over objects).
  Ground-truth void pixels (:data:`~mosic.data.IGNORE_INDEX`) count as background, as
  in the toolkit's semi-supervised evaluation (it drops the void mask there).

All values here are fractions in [0, 1], as in the toolkit's output; evaluations built
on them (:func:`mosic.eval.label_propagation.evaluate_label_propagation`) report percent.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..data.segmentation import IGNORE_INDEX

__all__ = [
    "BOUND_TH",
    "bound_pixels",
    "boundary_precision_recall",
    "davis_scores",
    "db_statistics",
    "disk",
    "f_boundary",
    "jaccard",
    "seg2bmap",
]

#: the toolkit's boundary tolerance: a fraction of the image diagonal
BOUND_TH = 0.008


def _to_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _binary(mask: Any, name: str) -> np.ndarray:
    m = _to_numpy(mask)
    if m.ndim != 2:
        raise ValueError(f"{name} must be a (H, W) mask, got shape {m.shape}")
    return m.astype(bool)


def jaccard(pred: Any, gt: Any) -> float:
    """Region similarity J: |pred & gt| / |pred | gt| of two (H, W) binary masks (1 if both empty)."""
    p, g = _binary(pred, "pred"), _binary(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred {p.shape} and gt {g.shape} differ in shape")
    union = np.count_nonzero(p | g)
    return 1.0 if union == 0 else np.count_nonzero(p & g) / union


def seg2bmap(mask: Any) -> np.ndarray:
    """(H, W) binary mask -> (H, W) bool boundary map, 1 pixel wide (Berkeley ``seg2bmap``).

    A pixel is on the boundary when it differs from its east, south or south-east
    neighbour (pixels beyond the image count as background); in the last row only the
    east neighbour counts, in the last column only the south one, and the bottom-right
    pixel is never a boundary pixel. The image border itself is thus no boundary: a mask
    covering the whole image has none.
    """
    seg = _binary(mask, "mask")
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def disk(radius: int) -> np.ndarray:
    """(2r+1, 2r+1) bool disk ``x^2 + y^2 <= r^2`` (skimage.morphology.disk)."""
    r = int(radius)
    grid = np.arange(-r, r + 1)
    return grid[:, None] ** 2 + grid[None, :] ** 2 <= r * r


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation with :func:`disk` (pixels outside the image are background)."""
    if radius <= 0:
        return mask
    footprint = disk(radius)
    try:
        import cv2  # what the official toolkit uses; ~50x faster than scipy.ndimage here
    except ImportError:  # pragma: no cover - opencv is a dependency of mosic
        from scipy import ndimage

        return ndimage.binary_dilation(mask, structure=footprint)
    return cv2.dilate(mask.astype(np.uint8), footprint.astype(np.uint8)).astype(bool)


def bound_pixels(shape: Sequence[int], bound_th: float = BOUND_TH) -> int:
    """The F tolerance in pixels: ``bound_th`` if >= 1, else ceil(bound_th * diagonal)."""
    if bound_th < 0:
        raise ValueError(f"bound_th must be >= 0, got {bound_th}")
    if bound_th >= 1:
        return math.ceil(bound_th)
    return int(np.ceil(bound_th * np.linalg.norm(shape[:2])))


def boundary_precision_recall(pred: Any, gt: Any, bound_th: float = BOUND_TH) -> tuple[float, float]:
    """Boundary precision and recall of (H, W) binary masks (see :func:`f_boundary`)."""
    p, g = _binary(pred, "pred"), _binary(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred {p.shape} and gt {g.shape} differ in shape")
    radius = bound_pixels(p.shape, bound_th)
    pb, gb = seg2bmap(p), seg2bmap(g)
    n_p, n_g = np.count_nonzero(pb), np.count_nonzero(gb)
    if n_p == 0 and n_g == 0:
        return 1.0, 1.0
    if n_p == 0:
        return 1.0, 0.0
    if n_g == 0:
        return 0.0, 1.0
    precision = np.count_nonzero(pb & _dilate(gb, radius)) / n_p
    recall = np.count_nonzero(gb & _dilate(pb, radius)) / n_g
    return float(precision), float(recall)


def f_boundary(pred: Any, gt: Any, bound_th: float = BOUND_TH) -> float:
    """Boundary F-measure of (H, W) binary masks: 2PR / (P + R), 0 when P + R = 0.

    ``bound_th`` < 1 is a fraction of the image diagonal (DAVIS: 0.008, 8 pixels at
    480 x 854), >= 1 a number of pixels. Both boundaries empty -> 1; one empty -> 0.
    """
    precision, recall = boundary_precision_recall(pred, gt, bound_th)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def db_statistics(values: Any) -> dict:
    """Mean, recall and decay of per-frame values (the toolkit's ``db_statistics``).

    ``mean``: NaN-mean; ``recall``: fraction of (non-NaN) frames with value > 0.5;
    ``decay``: mean of the first of 4 equal frame bins minus mean of the last (bins
    ``round(linspace(1, n, 5)) - 1``, ends included, as in the toolkit).
    NaN for an empty input.
    """
    v = np.asarray(_to_numpy(values), dtype=np.float64).reshape(-1)
    if v.size == 0:
        return {"mean": float("nan"), "recall": float("nan"), "decay": float("nan")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = float(np.nanmean(v))
        finite = ~np.isnan(v)
        recall = float(np.mean(v[finite] > 0.5)) if finite.any() else float("nan")
        # the toolkit casts these to uint8, which wraps beyond 256 frames; int64 here
        ids = (np.round(np.linspace(1, v.size, 5) + 1e-10) - 1).astype(np.int64)
        first, last = v[ids[0] : ids[1] + 1], v[ids[3] : ids[4] + 1]
        decay = float(np.nanmean(first) - np.nanmean(last))
    return {"mean": mean, "recall": recall, "decay": decay}


def _label_masks(masks: Any, name: str) -> np.ndarray:
    m = _to_numpy(masks)
    if m.ndim != 3:
        raise ValueError(f"{name} must be (T, H, W) instance masks, got shape {m.shape}")
    if m.dtype.kind not in "iub":
        raise ValueError(f"{name} must hold integer instance ids, got dtype {m.dtype}")
    return m.astype(np.int64)


def davis_scores(
    pred_masks: Any,
    gt_masks: Any,
    object_ids: Sequence[int] | None = None,
    *,
    bound_th: float = BOUND_TH,
    skip_first: bool = True,
    skip_last: bool = True,
) -> dict:
    """J and F of one sequence under the DAVIS 2017 semi-supervised protocol.

    Args:
        pred_masks: (T, H, W) int instance masks (0 background, i >= 1 object i).
        gt_masks: (T, H, W) int ground-truth instance masks, as ``pred_masks``.
            :data:`~mosic.data.IGNORE_INDEX` pixels count as background (the toolkit's
            semi-supervised evaluation ignores its void mask).
        object_ids: objects to score (default: the non-zero ids of the first
            ground-truth frame). The toolkit scores ids ``1 .. max(first frame)``; for
            DAVIS, whose ids are contiguous, that is the same set.
        skip_first: leave out the first frame (given to the method), as the official
            toolkit does (``[:, 1:-1]``).
        skip_last: leave out the last frame, as the official toolkit does.
    Returns:
        fractions in [0, 1]: ``j_mean``, ``j_recall``, ``j_decay``, ``f_mean``,
        ``f_recall``, ``f_decay`` (means over objects of the per-object statistics),
        ``jf_mean`` = (j_mean + f_mean) / 2; ``per_object`` (id -> the six statistics),
        ``object_ids``, ``frames`` (evaluated frame indices), ``j_per_frame`` and
        ``f_per_frame`` ((num_objects, num_frames) arrays). With no object the
        statistics are NaN.
    """
    pred, gt = _label_masks(pred_masks, "pred_masks"), _label_masks(gt_masks, "gt_masks")
    if pred.shape != gt.shape:
        raise ValueError(f"pred_masks {pred.shape} and gt_masks {gt.shape} differ in shape")
    gt = np.where(gt == IGNORE_INDEX, 0, gt)
    if object_ids is None:
        object_ids = [int(i) for i in np.unique(gt[0]) if i != 0] if len(gt) else []
    object_ids = [int(i) for i in object_ids]
    if any(i <= 0 for i in object_ids):
        raise ValueError(f"object ids must be >= 1 (0 is background), got {object_ids}")
    start, stop = int(skip_first), len(gt) - int(skip_last)
    frames = list(range(start, stop))
    if not frames:
        raise ValueError(
            f"no frame left to score: {len(gt)} frames with skip_first={skip_first}, skip_last={skip_last} "
            "(the DAVIS protocol needs at least 3 frames)"
        )
    j = np.zeros((len(object_ids), len(frames)))
    f = np.zeros((len(object_ids), len(frames)))
    for a, obj in enumerate(object_ids):
        for b, t in enumerate(frames):
            p, g = pred[t] == obj, gt[t] == obj
            j[a, b] = jaccard(p, g)
            f[a, b] = f_boundary(p, g, bound_th)
    per_object = {}
    for a, obj in enumerate(object_ids):
        js, fs = db_statistics(j[a]), db_statistics(f[a])
        per_object[obj] = {f"j_{k}": v for k, v in js.items()} | {f"f_{k}": v for k, v in fs.items()}
    out: dict = {}
    for key in ("j_mean", "j_recall", "j_decay", "f_mean", "f_recall", "f_decay"):
        values = [s[key] for s in per_object.values()]
        out[key] = float(np.mean(values)) if values else float("nan")
    out["jf_mean"] = (out["j_mean"] + out["f_mean"]) / 2
    out.update(per_object=per_object, object_ids=object_ids, frames=frames, j_per_frame=j, f_per_frame=f)
    return out
