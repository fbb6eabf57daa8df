"""Label maps over video frames: K-means clusters of a backbone's patch tokens, a run's
prototype assignments, or any (T, h, w) prediction map.

Patch-level maps are upsampled to pixels by nearest neighbour (each patch a block of one
colour); label ``l`` gets colour ``l`` of a fixed palette (:func:`label_colors`), the same
in every frame and every call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checks import positive_int
from ..data.segmentation import IGNORE_INDEX
from .writers import as_frames


def label_colors(num_labels: int) -> np.ndarray:
    """(num_labels, 3) uint8: the evaluation figures' palette (:func:`mosic.eval.figures.palette`)
    without its black, so that label 0 is coloured like every other cluster."""
    from ..eval.figures import palette

    return palette(num_labels + 1)[1:]


def upsample_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """(..., h, w) int labels -> (..., height, width), nearest neighbour (pixel centres)."""
    labels = np.asarray(labels)
    h, w = labels.shape[-2:]
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.int64), w - 1)
    return labels[..., rows[:, None], cols[None, :]]


def overlay_labels(frames, labels, alpha: float = 0.5, colors=None, ignore_index: int | None = IGNORE_INDEX) -> np.ndarray:
    """Frames with a label map blended over them.

    Args:
        frames: (T, H, W, 3) uint8 RGB.
        labels: (T, h, w) int labels (any h, w: nearest-upsampled to H, W), or (h, w) for all frames.
        alpha: weight of the label colour (0: the frames, 1: the colours only).
        colors: (L, 3) uint8 colour of each label (default: :func:`label_colors`).
        ignore_index: label left uncoloured (None: none).
    Returns:
        (T, H, W, 3) uint8.
    """
    frames = as_frames(frames)
    t, h, w, _ = frames.shape
    labels = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if labels.ndim == 2:
        labels = np.broadcast_to(labels, (t, *labels.shape))
    if labels.ndim != 3 or len(labels) != t:
        raise ValueError(f"overlay_labels: labels must be (T={t}, h, w) ints, got shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"overlay_labels: labels must be integers, got {labels.dtype}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay_labels: alpha must be in [0, 1], got {alpha}")
    labels = upsample_labels(labels.astype(np.int64), h, w)
    if (labels < 0).any():
        raise ValueError("overlay_labels: labels must be >= 0")
    ignored = labels == ignore_index if ignore_index is not None else np.zeros(labels.shape, dtype=bool)
    top = int(labels[~ignored].max()) if (~ignored).any() else 0
    colors = label_colors(max(top + 1, 1)) if colors is None else np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    if top >= len(colors):
        raise ValueError(f"overlay_labels: label {top} has no colour ({len(colors)} colours given)")
    tint = colors[np.where(ignored, 0, labels)].astype(np.float32)
    mixed = (1.0 - alpha) * frames.astype(np.float32) + alpha * tint
    out = mixed.round().clip(0, 255).astype(np.uint8)
    out[ignored] = frames[ignored]
    return out


def compact_labels(labels: np.ndarray) -> np.ndarray:
    """Relabel to 0..L-1 in order of first appearance (raster order over T, h, w), so
    colours follow the clip, not arbitrary cluster ids."""
    labels = np.asarray(labels)
    _, first, inverse = np.unique(labels.ravel(), return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[inverse].reshape(labels.shape)


def cluster_maps(
    backbone: Any,
    frames,
    k: int = 8,
    *,
    method: str = "kmeans",
    size: int | tuple[int, int] | None = None,
    model: str = "teacher",
    seed: int = 0,
    device: str | torch.device | None = None,
    **backbone_kwargs: Any,
) -> np.ndarray:
    """(T, h, w) int64 patch labels of a clip.

    Args:
        backbone: a :class:`~mosic.backbones.Backbone`, a registered name (built with
            ``backbone_kwargs``, e.g. ``pretrained=False``), a mosic run or checkpoint
            folder, or a ``mosic export`` folder (see :func:`mosic.eval.features.resolve_backbone`).
        frames: (T, H, W, 3) uint8 RGB.
        k: K-means clusters (``method="kmeans"``).
        method: ``"kmeans"``: faiss K-means over the patch tokens of all frames together
            (one clustering per clip, so a cluster keeps its colour over time);
            ``"prototypes"``: the run's own clusters, each token assigned to the prototype of
            its highest score (``backbone`` must be a run or checkpoint folder).
        size: backbone input side or (H, W), rounded to the patch size (default: the frames'
            size rounded to the nearest multiple of the patch size).
        model: "teacher" or "student" of a run.
    Returns:
        Labels renumbered 0..L-1 in order of first appearance (:func:`compact_labels`).
    """
    from ..eval.features import dense_features, resolve_backbone

    if method not in ("kmeans", "prototypes"):
        raise ValueError(f"cluster_maps: method must be 'kmeans' or 'prototypes', got {method!r}")
    frames = as_frames(frames)
    scorer = None
    if method == "prototypes":
        net, scorer = _run_with_prototypes(backbone, model)
    else:
        net = resolve_backbone(backbone, model=model, **backbone_kwargs)
    p = net.patch_size
    if size is None:
        size = frames.shape[1:3]
    elif isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    out_hw = tuple(max(p, int(round(s / p)) * p) for s in size)
    if device is not None:
        net = net.to(device)
    tokens = dense_features(net, frames, size=out_hw, device=device)  # (T, h, w, D) on the CPU
    t, h, w, d = tokens.shape
    if scorer is None:
        from ..eval.clustering import kmeans

        positive_int(k, "cluster_maps: k")
        if k > t * h * w:
            raise ValueError(f"cluster_maps: k={k} is more than the {t * h * w} patch tokens of the clip")
        labels = kmeans(tokens.reshape(-1, d), k, seed=seed).reshape(t, h, w)
    else:
        with torch.no_grad():
            param = next(scorer.parameters())
            scores = scorer.scores(tokens.to(param.device, param.dtype))
        labels = scores.argmax(-1).cpu().numpy()
    return compact_labels(labels)


def _run_with_prototypes(spec: Any, model: str):
    """The backbone and the prototype-scoring objective of a run or checkpoint folder."""
    from ..train import PostPretrainer

    if isinstance(spec, PostPretrainer):
        trainer = spec
    elif isinstance(spec, (str, Path)) and Path(spec).is_dir():
        trainer = PostPretrainer.load(spec)
    else:
        raise ValueError(
            f"cluster maps from prototypes need a mosic run or checkpoint folder, got {spec!r}; "
            "use K-means (method='kmeans', no --prototypes) for other backbones"
        )
    if model not in ("teacher", "student"):
        raise ValueError(f"model must be 'teacher' or 'student', got {model!r}")
    learner = trainer.teacher_learner if model == "teacher" else trainer.learner
    scorer = next((m for m in learner.objective.modules() if callable(getattr(m, "scores", None))), None)
    if scorer is None:
        raise ValueError(
            f"the run's objective ({type(learner.objective).__name__}) has no prototypes to assign tokens to; "
            "use K-means instead (no --prototypes)"
        )
    return learner.backbone.eval(), scorer.eval()
