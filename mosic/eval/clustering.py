"""Unsupervised video segmentation by clustering patch features (MoSiC evaluation).

K-means (faiss) groups the backbone's patch tokens; clusters are matched to ground-truth
labels, one-to-one with the Hungarian algorithm (maximising IoU) or many-to-one by majority
for over-clustering, and scored by mIoU in percent (0-100), all with
:mod:`mosic.eval.metrics`. :func:`evaluate_video_clustering` runs the paper's unsupervised
video segmentation settings: clustering per dataset (D), per clip (C) and per frame (F),
and over-clustering with a fixed K per setting.
The image protocols built on these functions live in :mod:`mosic.eval.overclustering`
and :mod:`mosic.eval.linear_probe`.
"""

from __future__ import annotations

from typing import Sequence

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from ..backbones.base import Backbone
from ..data.segmentation import IGNORE_INDEX, VideoSegmentationDataset
from ..data.source import VideoSource
from .features import dense_features
from .metrics import greedy_many_to_one_miou, hungarian_miou

#: all video clustering modes: per dataset (D), per clip (C), per frame (F)
MODES = ("dataset", "clip", "frame")
#: what :func:`evaluate_video_clustering` runs by default (kept from before "frame" existed)
DEFAULT_MODES = ("dataset", "clip")
#: the paper's over-clustering K (Table 2 / 12): 10 per frame and per clip, per dataset 200
#: on DAVIS and 500 on YouTube-VOS; pass one as ``overcluster_k``
PAPER_OVERCLUSTER_K = {
    "davis": {"frame": 10, "clip": 10, "dataset": 200},
    "ytvos": {"frame": 10, "clip": 10, "dataset": 500},
}


def _to_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def kmeans(
    features: np.ndarray | torch.Tensor,
    k: int,
    *,
    seed: int = 0,
    niter: int = 50,
    normalize: bool = True,
    nredo: int = 1,
) -> np.ndarray:
    """Cluster (N, D) features into ``k`` groups with faiss; returns (N,) int64 labels.

    Rows are L2-normalised first when ``normalize``. ``nredo`` > 1 runs K-means that many
    times (different initialisations) and keeps the lowest objective. Deterministic for a
    given ``seed``.
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
    if nredo < 1:
        raise ValueError(f"nredo must be >= 1, got {nredo}")
    # min_points_per_centroid only controls faiss' "too few points" warning.
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, nredo=nredo, min_points_per_centroid=1, verbose=False)
    km.train(x)
    _, labels = km.index.search(x, 1)
    return labels[:, 0].astype(np.int64)


def segment_features(
    features: np.ndarray | torch.Tensor,
    k: int,
    *,
    seed: int = 0,
    niter: int = 50,
    normalize: bool = True,
    nredo: int = 1,
) -> np.ndarray:
    """K-means over all patches of (F, h, w, D) features jointly -> (F, h, w) int64 cluster maps."""
    x = _to_numpy(features)
    if x.ndim != 4:
        raise ValueError(f"features must be (F, h, w, D), got shape {x.shape}")
    labels = kmeans(x.reshape(-1, x.shape[-1]), k, seed=seed, niter=niter, normalize=normalize, nredo=nredo)
    return labels.reshape(x.shape[:3])


def _upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(T, h, w) label maps -> (T, *size) by nearest-neighbour upsampling."""
    up = F.interpolate(torch.from_numpy(maps)[:, None].float(), size=size, mode="nearest")
    return up[:, 0].long().numpy()


def _relabel(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Ids of ``masks`` (any ints, IGNORE_INDEX = unlabelled) -> consecutive 0..n-1.

    Returns (relabelled masks with IGNORE_INDEX kept, n). Without unlabelled pixels this is
    ``np.unique(masks, return_inverse=True)``.
    """
    masks = np.asarray(masks)
    keep = masks != IGNORE_INDEX
    ids, inverse = np.unique(masks[keep], return_inverse=True)
    out = np.full(masks.shape, IGNORE_INDEX, dtype=np.int64)
    out[keep] = inverse.reshape(-1)
    return out, len(ids)


def _check_k(k: int, num_tokens: int, what: str) -> None:
    if k > num_tokens:
        raise ValueError(
            f"{what}: K={k} clusters exceed the {num_tokens} patch tokens to cluster; use a smaller K "
            "(overcluster_k) or a larger input size"
        )


class _Masks:
    """Reads instance / class masks from a VideoSource with ground truth or a VideoSegmentationDataset."""

    def __init__(self, source):
        self.source = source
        self._cached: tuple[int, object] | None = None

    def _gt(self, v: int):
        if self._cached is None or self._cached[0] != v:
            ground_truth = getattr(self.source, "ground_truth", None)
            self._cached = (v, ground_truth(v) if callable(ground_truth) else None)
        return self._cached[1]

    def _check_annotated(self, v: int, frame_indices: list[int]) -> None:
        annotated = getattr(self.source, "annotated_frames", None)
        if callable(annotated):
            missing = sorted(set(frame_indices) - set(annotated(v)))
            if missing:
                raise ValueError(
                    f"video {v} ({self.source.video_name(v)}) has no masks for frames {missing[:5]}; "
                    "choose num_frames / frame_stride so that every frame read is annotated"
                )

    def check(self, v: int) -> None:
        """Raise unless video ``v`` has instance masks (before any frame is read)."""
        if self._gt(v) is None and not isinstance(self.source, VideoSegmentationDataset):
            raise ValueError(
                f"evaluate_video_clustering needs a source with ground-truth masks, e.g. "
                f"mosic.data.SyntheticVideos, or a VideoSegmentationDataset (read_masks); video {v} "
                f"({self.source.video_name(v)}) has none"
            )

    def instances(self, v: int, frame_indices: list[int]) -> np.ndarray:
        self.check(v)
        gt = self._gt(v)
        if gt is not None:
            return np.asarray(gt.instance_masks(frame_indices))
        self._check_annotated(v, frame_indices)
        return np.asarray(self.source.read_masks(v, frame_indices))

    def classes(self, v: int, frame_indices: list[int]) -> np.ndarray:
        gt = self._gt(v)
        if gt is not None:
            return np.asarray(gt.class_masks(frame_indices))
        read_class_masks = getattr(self.source, "read_class_masks", None)
        if callable(read_class_masks):
            self._check_annotated(v, frame_indices)
            return np.asarray(read_class_masks(v, frame_indices))
        if isinstance(self.source, VideoSegmentationDataset):
            raise ValueError(
                f"mode 'dataset' needs semantic class masks (ground_truth(v).class_masks or "
                f"read_class_masks); {type(self.source).__name__} has only instance masks (read_masks), "
                "whose ids are not comparable across videos: use modes=('clip', 'frame')"
            )
        return self.instances(v, frame_indices)  # raises the "needs ground-truth masks" error


def evaluate_video_clustering(
    backbone: Backbone,
    source: VideoSource | VideoSegmentationDataset,
    *,
    num_frames: int = 8,
    frame_stride: int = 1,
    size: int | tuple[int, int] | None = None,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    seed: int = 0,
    modes: Sequence[str] = DEFAULT_MODES,
    overcluster_k: dict[str, int] | None = None,
    nredo: int = 1,
) -> dict:
    """Unsupervised video segmentation by K-means on patch tokens, scored by Hungarian mIoU.

    Each video contributes the clip of frames 0, s, 2s, ... (``num_frames`` of them,
    s = ``frame_stride``), resized (bilinear, antialiased) to ``size`` (int = square,
    or (H, W); default: the source size rounded down to a multiple of the patch size).
    Cluster maps (h, w) are upsampled with nearest neighbour to the mask resolution,
    as in the paper, before scoring.

    Modes (the paper's Table 2 settings):
        ``"dataset"`` (D): one K-means over the patches of all clips with K = number of
        classes incl. background (``source.num_classes + 1`` if the source has it, else
        max class id + 1), Hungarian mIoU against class masks over the whole dataset.
        Needs class masks (``ground_truth(v).class_masks`` or ``read_class_masks``).
        ``"clip"`` (C): per clip, K = number of instance ids in its instance masks (incl.
        background), Hungarian mIoU against instance masks, averaged over clips.
        ``"frame"`` (F): per frame, K-means over that frame's patches with K = number of
        instance ids in the frame (incl. background), Hungarian mIoU against the frame's
        instance masks, averaged over all frames of all clips.
        Default ``("dataset", "clip")``; all three: :data:`MODES`.

    Over-clustering: ``overcluster_k`` maps modes (each also in ``modes``) to a fixed K,
    e.g. ``PAPER_OVERCLUSTER_K["davis"]`` = {frame: 10, clip: 10, dataset: 200} (YTVOS:
    dataset 500). For each, K-means with that K is matched many-to-one (each cluster to the
    label it overlaps most, :func:`greedy_many_to_one_miou`) and scored by mIoU.

    Masks: ``source.ground_truth(v)`` when the source has it (SyntheticVideos), else
    ``read_masks`` of a :class:`~mosic.data.VideoSegmentationDataset` (DAVIS, YTVOS);
    pixels equal to ``IGNORE_INDEX`` (255) are not scored and are not an instance. With
    ``read_masks``, every frame read must be in ``annotated_frames(v)``.

    Args:
        device: where frames go; the backbone must already be there.
        nredo: K-means restarts per clustering (the lowest objective is kept). 1 (the
            default, as before) can end in a local minimum that merges two well-separated
            groups; the authors' image clustering code uses 5.
    Returns:
        ``num_videos`` plus, per requested mode, ``dataset_miou``, ``dataset_iou_per_class``
        (list, NaN for absent classes) and ``num_classes``; ``clip_miou`` and
        ``clip_mious`` (list per video); ``frame_miou`` (mean over all frames) and
        ``frame_mious`` (list per video: mean over its frames). With ``overcluster_k``:
        ``overcluster_k`` and per mode ``{mode}_overcluster_miou`` (plus
        ``clip_overcluster_mious`` / ``frame_overcluster_mious`` per video,
        ``dataset_overcluster_iou_per_class``). Deterministic for a given ``seed``.
    """
    unknown = set(modes) - set(MODES)
    if unknown or not modes:
        raise ValueError(f"modes must be a non-empty subset of {MODES}, got {tuple(modes)}")
    overcluster_k = dict(overcluster_k or {})
    extra = set(overcluster_k) - set(modes)
    if extra:
        raise ValueError(
            f"overcluster_k names modes {sorted(extra)} that are not in modes={tuple(modes)}; "
            f"add them to modes or drop them from overcluster_k"
        )
    for mode, k in overcluster_k.items():
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"overcluster_k[{mode!r}] must be a positive int, got {k!r}")
    if len(source) == 0:
        raise ValueError("the source has no videos")
    frame_indices = [i * frame_stride for i in range(num_frames)]
    masks = _Masks(source)
    features, class_masks = [], []
    clip_mious, clip_over, frame_mious, frame_over, all_frame, all_frame_over = [], [], [], [], [], []
    was_training = backbone.training
    backbone.eval()
    try:
        for v in range(len(source)):
            masks.check(v)
            if source.num_frames(v) <= frame_indices[-1]:
                raise ValueError(
                    f"video {v} ({source.video_name(v)}) has {source.num_frames(v)} frames; "
                    f"num_frames={num_frames} with frame_stride={frame_stride} needs {frame_indices[-1] + 1}"
                )
            need_instances = "clip" in modes or "frame" in modes
            instances = masks.instances(v, frame_indices) if need_instances else None
            classes = masks.classes(v, frame_indices) if "dataset" in modes else None
            feats = dense_features(backbone, source.read_frames(v, frame_indices), size, batch_size, device).numpy()
            name = f"video {v} ({source.video_name(v)})"
            if "dataset" in modes:
                features.append(feats)
                class_masks.append(classes)
            if "clip" in modes:
                target, n = _relabel(instances)
                if n == 0:
                    raise ValueError(f"{name}: every pixel of the clip is unlabelled ({IGNORE_INDEX})")
                hw = instances.shape[-2:]
                _check_k(n, feats.shape[0] * feats.shape[1] * feats.shape[2], f"{name}, mode 'clip'")
                maps = _upsample(segment_features(feats, n, seed=seed, nredo=nredo), hw)
                clip_mious.append(hungarian_miou(maps, target, n, ignore_index=IGNORE_INDEX)["miou"])
                if "clip" in overcluster_k:
                    k = int(overcluster_k["clip"])
                    _check_k(k, feats.shape[0] * feats.shape[1] * feats.shape[2], f"{name}, over-clustering 'clip'")
                    maps = _upsample(segment_features(feats, k, seed=seed, nredo=nredo), hw)
                    clip_over.append(greedy_many_to_one_miou(maps, target, n, ignore_index=IGNORE_INDEX)["miou"])
            if "frame" in modes:
                per_frame, per_frame_over = [], []
                for t in range(len(frame_indices)):
                    target, n = _relabel(instances[t])
                    if n == 0:  # nothing labelled in this frame: not scored
                        continue
                    hw = target.shape
                    tokens = feats[t : t + 1]
                    _check_k(n, tokens.shape[1] * tokens.shape[2], f"{name} frame {frame_indices[t]}, mode 'frame'")
                    maps = _upsample(segment_features(tokens, n, seed=seed, nredo=nredo), hw)
                    per_frame.append(hungarian_miou(maps, target, n, ignore_index=IGNORE_INDEX)["miou"])
                    if "frame" in overcluster_k:
                        k = int(overcluster_k["frame"])
                        _check_k(
                            k,
                            tokens.shape[1] * tokens.shape[2],
                            f"{name} frame {frame_indices[t]}, over-clustering 'frame'",
                        )
                        maps = _upsample(segment_features(tokens, k, seed=seed, nredo=nredo), hw)
                        per_frame_over.append(
                            greedy_many_to_one_miou(maps, target, n, ignore_index=IGNORE_INDEX)["miou"]
                        )
                if not per_frame:
                    raise ValueError(f"{name}: every pixel of every frame is unlabelled ({IGNORE_INDEX})")
                frame_mious.append(float(np.mean(per_frame)))
                all_frame.extend(per_frame)
                if per_frame_over:
                    frame_over.append(float(np.mean(per_frame_over)))
                    all_frame_over.extend(per_frame_over)
    finally:
        backbone.train(was_training)

    out: dict = {"num_videos": len(source)}
    if "dataset" in modes:
        num_classes = getattr(source, "num_classes", None)
        if num_classes is not None:
            num_classes = int(num_classes) + 1
        else:
            num_classes = max(int(m[m != IGNORE_INDEX].max(initial=0)) for m in class_masks) + 1
        feats = np.concatenate(features)
        target = np.concatenate([m.reshape(-1) for m in class_masks])

        def dataset_preds(k: int) -> np.ndarray:
            maps = segment_features(feats, k, seed=seed, nredo=nredo)
            preds, start = [], 0
            for m in class_masks:
                preds.append(_upsample(maps[start : start + len(m)], m.shape[-2:]).reshape(-1))
                start += len(m)
            return np.concatenate(preds)

        num_tokens = feats.shape[0] * feats.shape[1] * feats.shape[2]
        _check_k(num_classes, num_tokens, "mode 'dataset'")
        result = hungarian_miou(dataset_preds(num_classes), target, num_classes, ignore_index=IGNORE_INDEX)
        out.update(
            dataset_miou=result["miou"],
            dataset_iou_per_class=result["iou_per_class"].tolist(),
            num_classes=num_classes,
        )
        if "dataset" in overcluster_k:
            k = int(overcluster_k["dataset"])
            _check_k(k, num_tokens, "over-clustering 'dataset'")
            result = greedy_many_to_one_miou(dataset_preds(k), target, num_classes, ignore_index=IGNORE_INDEX)
            out.update(
                dataset_overcluster_miou=result["miou"],
                dataset_overcluster_iou_per_class=result["iou_per_class"].tolist(),
            )
    if "clip" in modes:
        out.update(clip_miou=float(np.mean(clip_mious)), clip_mious=clip_mious)
        if "clip" in overcluster_k:
            out.update(clip_overcluster_miou=float(np.mean(clip_over)), clip_overcluster_mious=clip_over)
    if "frame" in modes:
        out.update(frame_miou=float(np.mean(all_frame)), frame_mious=frame_mious)
        if "frame" in overcluster_k:
            out.update(frame_overcluster_miou=float(np.mean(all_frame_over)), frame_overcluster_mious=frame_over)
    if overcluster_k:
        out["overcluster_k"] = {m: int(k) for m, k in overcluster_k.items()}
    return out
