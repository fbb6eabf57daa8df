"""Frozen clustering of image patch features: K-means, Hungarian and over-clustering mIoU.

The MoSiC paper's "Overclustering" protocol (appendix 7.4, Table 3 / 11; after Leopart and
the NeCo ``eval_overcluster.py`` the MoSiC README points to):

* images resized to ``size`` (448 in the paper), one pass through the frozen backbone;
* K-means (faiss) over all spatial (patch) tokens of the dataset, at patch resolution;
* cluster maps upsampled with nearest neighbour to ``mask_size`` x ``mask_size``
  (100 x 100 in the paper, "to accelerate Hungarian matching"), masks downsampled to the
  same size with nearest neighbour; unlabelled (255) pixels are skipped;
* K = number of classes: one-to-one Hungarian matching maximising IoU (:func:`hungarian_miou`);
  K > number of classes (100, 300, 500): each cluster goes to the class it overlaps with
  the highest pixel precision, i.e. the most pixels (:func:`greedy_many_to_one_miou`);
* mIoU (percent) over the classes present in the masks; the paper averages five seeds.

Feature preprocessing: by default the tokens are clustered as they are, L2-normalised
(``normalize=True``, as elsewhere in mosic). The authors' code standardises every feature
dimension, reduces to 50 dims with faiss PCA and runs plain (Euclidean) K-means with
100 iterations and 5 restarts (``niter=100, nredo=5``, the defaults here too):
``pca_dim=50, normalize=False`` follows it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import faiss
import numpy as np
import torch

from ..backbones.base import Backbone
from ..checks import is_int
from ..data.segmentation import IGNORE_INDEX, SegmentationDataset
from .clustering import _upsample, kmeans
from .linear_probe import _mask_hw, extract_dataset
from .metrics import greedy_many_to_one_miou, hungarian_miou

#: the paper's K values (Table 3: K = #classes, 100, 300, 500) and resolutions
PAPER_OVERCLUSTERING = {
    "ks": (None, 100, 300, 500),
    "size": 448,
    "mask_size": 100,
    "pca_dim": 50,
    "normalize": False,
    "num_seeds": 5,
    "niter": 100,
    "nredo": 5,
}


def standardize_and_pca(features: np.ndarray, pca_dim: int) -> np.ndarray:
    """The authors' preprocessing: per-dimension standardisation (zero mean, unit variance;
    constant dimensions only centred), then faiss PCA to ``pca_dim`` dimensions."""
    x = np.ascontiguousarray(features, dtype=np.float32)
    if not 1 <= pca_dim <= x.shape[1]:
        raise ValueError(f"pca_dim must lie in [1, {x.shape[1]}] (the feature dimension), got {pca_dim}")
    mean = x.mean(0, dtype=np.float64)
    std = x.std(0, dtype=np.float64)
    std[std == 0] = 1.0
    x = ((x - mean) / std).astype(np.float32)
    pca = faiss.PCAMatrix(x.shape[1], pca_dim)
    pca.train(x)
    return pca.apply_py(x)


def evaluate_overclustering(
    backbone: Backbone,
    dataset: SegmentationDataset,
    *,
    ks: Sequence[int | None] = (None, 100, 300, 500),
    size: int | tuple[int, int] | None = 448,
    mask_size: int | tuple[int, int] = 100,
    pca_dim: int | None = None,
    normalize: bool = True,
    seed: int = 0,
    num_seeds: int = 1,
    niter: int = 100,
    nredo: int = 5,
    batch_size: int = 16,
    device: str | torch.device | None = None,
) -> dict:
    """K-means over all patch tokens of ``dataset``, matched to its classes, mIoU per K.

    Args:
        ks: cluster counts; None = the dataset's number of classes (``num_classes``,
            background included where the dataset has it), matched one-to-one with the
            Hungarian algorithm; any int K is matched many-to-one (greedy by precision).
        size: side (int) or (H, W) the images are resized to (paper: 448); None: the image
            size rounded down to a multiple of the patch size (then all must share it).
        mask_size: resolution of the scored masks and cluster maps (paper: 100 -> 100 x 100).
        pca_dim: None (default): no PCA. An int: standardise the features and reduce them
            to ``pca_dim`` dims with PCA first, as the authors' code does with 50.
        normalize: L2-normalise the (possibly PCA-reduced) features before K-means.
        seed: first K-means seed: runs use seeds ``seed .. seed + num_seeds - 1``.
        num_seeds: K-means runs, mIoUs averaged (the paper reports the mean of 5 seeds).
        niter: K-means iterations (the authors' code: 100).
        nredo: K-means restarts, the lowest objective kept (the authors' code: 5). One
            restart can merge two well-separated groups.
    Returns:
        ``results``: one dict per K in ``ks`` order with ``k`` (the K used), ``requested``
        (the entry of ``ks``), ``matching`` ("hungarian" or "greedy"), ``miou`` (mean over
        seeds), ``miou_std``, ``mious`` (per seed) and ``iou_per_class`` (mean over seeds,
        NaN for absent classes); ``miou_by_k`` ({"num_classes" or str(K): miou});
        ``num_images``, ``num_classes``, ``num_tokens``, ``token_grid``, ``mask_size``,
        ``pca_dim``, ``normalize`` and ``timings`` (seconds: ``features``, ``clustering``
        per K, ``total``).
    """
    if num_seeds < 1:
        raise ValueError(f"num_seeds must be >= 1, got {num_seeds}")
    if not ks:
        raise ValueError("ks must name at least one K (None = number of classes)")
    num_classes = int(dataset.num_classes)
    resolved = []
    for k in ks:
        value = num_classes if k is None else k
        if not is_int(value) or value < 1:
            raise ValueError(f"every K in ks must be a positive int or None, got {k!r}")
        resolved.append(int(value))
    mask_hw = _mask_hw(mask_size)
    t0 = time.perf_counter()
    feats, masks = extract_dataset(
        backbone,
        dataset,
        size=size,
        mask_size=mask_hw,
        batch_size=batch_size,
        device=device,
        feature_dtype=torch.float32,
    )
    n, h, w, d = feats.shape
    num_tokens = n * h * w
    too_big = [k for k in resolved if k > num_tokens]
    if too_big:
        raise ValueError(
            f"K={too_big} exceeds the {num_tokens} patch tokens of the dataset ({n} images x {h}x{w} tokens): "
            "K-means cannot make more clusters than points; use smaller K, more images or a larger size"
        )
    x = feats.reshape(num_tokens, d).numpy()
    if pca_dim is not None:
        x = standardize_and_pca(x, int(pca_dim))
    target = masks.numpy()
    t1 = time.perf_counter()

    results, timings = [], {}
    for requested, k in zip(ks, resolved):
        hungarian = requested is None
        start = time.perf_counter()
        mious, ious = [], []
        for s in range(seed, seed + num_seeds):
            labels = kmeans(x, k, seed=s, niter=niter, normalize=normalize, nredo=nredo).reshape(n, h, w)
            pred = _upsample(labels, mask_hw)
            match = hungarian_miou if hungarian else greedy_many_to_one_miou
            result = match(pred, target, num_classes, ignore_index=IGNORE_INDEX)
            mious.append(result["miou"])
            ious.append(result["iou_per_class"])
        key = "num_classes" if hungarian else str(k)
        timings[key] = time.perf_counter() - start
        with np.errstate(invalid="ignore"):
            iou = np.mean(ious, axis=0)  # NaN stays NaN for absent classes
        results.append(
            {
                "k": k,
                "requested": requested,
                "matching": "hungarian" if hungarian else "greedy",
                "miou": float(np.mean(mious)),
                "miou_std": float(np.std(mious)),
                "mious": [float(m) for m in mious],
                "iou_per_class": iou.tolist(),
            }
        )
    timings = {"features": t1 - t0, "clustering": timings, "total": time.perf_counter() - t0}
    return {
        "results": results,
        "miou_by_k": {("num_classes" if r["requested"] is None else str(r["k"])): r["miou"] for r in results},
        "num_images": n,
        "num_classes": num_classes,
        "class_names": list(getattr(dataset, "class_names", [])),
        "num_tokens": num_tokens,
        "token_grid": [h, w],
        "mask_size": list(mask_hw),
        "pca_dim": pca_dim,
        "normalize": normalize,
        "seeds": list(range(seed, seed + num_seeds)),
        "timings": timings,
    }
