"""In-context scene understanding (the Hummingbird benchmark, dense nearest-neighbour retrieval).

The protocol of Balazevic et al. (NeurIPS 2023) as run by the open-hummingbird-eval code
the MoSiC paper uses (Table 1, appendix 7.4), with faiss instead of ScaNN:

1. **Memory.** A seeded random ``fraction`` of the training images (at least one) is
   encoded with :func:`~mosic.eval.features.dense_features` at ``size`` and the patch
   tokens are L2-normalised. Each patch gets a label histogram: the fraction of each
   class among the patch's *labelled* pixels (:func:`patch_label_histograms`; the same as
   average-pooling the one-hot mask over the patch and renormalising without the
   ignore pixels). ``patches_per_image`` patches per image enter the memory, chosen by
   :func:`sample_patches` (class-balanced, favouring patches of classes rare in the
   image); by default ``memory_size // num_images`` with the paper's memory of
   10,240,000 patches, so small training sets keep every patch.
2. **Retrieval.** Each validation patch (normalised token) retrieves its ``k`` = 30
   nearest memory patches by inner product (:class:`~mosic.eval.knn.NearestNeighbors`).
3. **Label transfer.** Its class scores are the neighbours' label histograms weighted by
   ``softmax(similarity / temperature)`` (temperature 0.02), giving an (h, w, C) map that
   is upsampled bilinearly to the mask's resolution; the prediction is the argmax.
4. **Score.** One confusion matrix over all labelled validation pixels gives the IoU of
   each class, mIoU (mean over classes present in the validation masks, percent) and
   pixel accuracy.

Where this differs from the reference code (open-hummingbird-eval, ``hbird_eval.py``):

* Ignore pixels: the reference maps them to class 0 (background) before building the
  histograms, so they count as background in the memory; here they are left out, and
  patches with no labelled pixel never enter the memory (the reference samples them
  last).
* Training images: the reference builds the memory from augmented images
  (RandomResizedCrop scale 0.5-2, colour jitter, ``augmentation_epoch`` passes, default
  1); here each selected image is resized to ``size`` once, without augmentation, so a
  run is deterministic for its seed.
* Scoring: the reference resizes validation masks to the input size (nearest) and
  scores there; here predictions are upsampled to the native mask size. The reference
  scores with Hungarian matching of predicted to true classes (``PredsmIoU``) and
  averages IoU over all classes; the default here (``matching="identity"``) scores
  predicted class ids as they are, the natural reading for label transfer, and averages
  over classes present in the validation masks; ``matching="hungarian"`` reproduces the
  reference's matching (on the IoU matrix). On Pascal VOC and ADE20K val every class is
  present, and with a sensible backbone the matching is the identity.
* Subsets: the reference (and the paper's 1/128, 1/64, 1/8 numbers) uses fixed file
  lists drawn so that every class appears in a few images; here ``fraction`` draws a
  uniform seeded subset (``floor(fraction * N)``, at least 1). Pass ``train_indices`` to
  use a fixed list instead.
* Retrieval: ScaNN (tree + asymmetric hashing + reordering) there; exact faiss search
  below 1e6 memory patches and IVF-Flat above (``index="auto"``) here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..backbones.base import Backbone
from ..data.segmentation import IGNORE_INDEX, SegmentationDataset
from .features import dense_features, resize_images, resolve_backbone
from .knn import NearestNeighbors
from .metrics import confusion_matrix, hungarian_matching, miou_from_confusion, pixel_accuracy

#: the paper's memory bank size (patches), as in Hummingbird (appendix 7.4)
PAPER_MEMORY_SIZE = 10_240_000
#: training-set fractions of Table 1
PAPER_FRACTIONS = (1 / 128, 1 / 64, 1 / 8, 1.0)
#: five seeds per fraction (the paper averages fractions < 1 over five runs)
PAPER_SEEDS = (0, 1, 2, 3, 4)
#: input side for ViT-S/B (the paper uses 518 for some backbones; pass ``size=518``)
DEFAULT_SIZE = 448
MATCHINGS = ("identity", "hungarian")


# ---------------------------------------------------------------------------- building blocks


def patch_label_histograms(
    mask: np.ndarray | torch.Tensor, grid: tuple[int, int], num_classes: int, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """Per-patch class fractions of a mask, ignore pixels excluded.

    Pixel (i, j) of an (H, W) mask belongs to patch (i * h // H, j * w // W) of the
    (h, w) ``grid``; when H and W are multiples of h and w this is average pooling of
    the one-hot mask with a (H/h, W/w) window, renormalised over the labelled pixels.

    Returns:
        (h, w, num_classes) float32; rows sum to 1, or are all zero for patches without
        a labelled pixel.
    """
    m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {m.shape}")
    h, w = grid
    H, W = m.shape
    if not (1 <= h <= H and 1 <= w <= W):
        raise ValueError(f"grid {grid} must lie within the mask size {m.shape}")
    m = m.astype(np.int64)
    valid = m != ignore_index
    labels = m[valid]
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"mask values must lie in [0, {num_classes}) or equal {ignore_index}, got [{labels.min()}, {labels.max()}]"
        )
    patch = (np.arange(H) * h // H)[:, None] * w + (np.arange(W) * w // W)[None, :]
    counts = np.bincount(patch[valid] * num_classes + labels, minlength=h * w * num_classes)
    counts = counts.reshape(h * w, num_classes).astype(np.float64)
    total = counts.sum(1, keepdims=True)
    hist = np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)
    return hist.reshape(h, w, num_classes).astype(np.float32)


def sample_patches(hist: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Class-balanced choice of ``n`` patches of one image (the reference's sampler).

    ``hist`` is (P, C) (the image's flattened :func:`patch_label_histograms`). A class's
    frequency is the number of the image's patches containing it; a patch's score is the
    sum of the frequencies of the classes it contains, times a uniform draw in [0, 1);
    the ``n`` lowest scores are kept. Patches of classes rare in the image therefore
    tend to be kept, and the draw makes the choice random. Patches without labelled
    pixels are never chosen; with ``n`` >= the labelled patches, all of them are kept.

    Returns:
        sorted int64 indices into the P patches.
    """
    present = hist > 0
    labelled = np.flatnonzero(present.any(1))
    draw = rng.random(len(hist))  # drawn for every patch: the stream does not depend on n
    if n >= len(labelled):
        return labelled
    frequency = present.sum(0).astype(np.float64)
    score = (present @ frequency) * draw
    keep = labelled[np.argsort(score[labelled], kind="stable")[:n]]
    return np.sort(keep)


def train_subset(num_images: int, fraction: float, seed: int) -> tuple[np.ndarray, bool]:
    """A seeded uniform subset of ``floor(fraction * num_images)`` images (at least one).

    Returns:
        sorted indices and whether the size was raised to one image.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    if num_images < 1:
        raise ValueError("the training set is empty")
    n = int(fraction * num_images + 1e-9)
    clamped = n < 1
    n = max(n, 1)
    if n >= num_images:
        return np.arange(num_images), clamped
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_images, n, replace=False)), clamped


def fraction_label(fraction: float) -> str:
    """``1/128``-style name of a fraction (``1/1`` for the whole set)."""
    f = Fraction(fraction).limit_denominator(1 << 16)
    return f"{f.numerator}/{f.denominator}"


# ---------------------------------------------------------------------------- features


def _batches(dataset: SegmentationDataset, indices: Sequence[int], batch_size: int) -> Iterator[list]:
    batch = []
    for i in indices:
        batch.append((int(i), dataset[int(i)]))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _encode(
    backbone: Backbone,
    images: list[np.ndarray],
    size: tuple[int, int] | None,
    batch_size: int,
    device: torch.device,
) -> list[torch.Tensor]:
    """L2-normalised (h, w, D) float32 CPU tokens of each (H, W, 3) uint8 image."""
    out: list[torch.Tensor | None] = [None] * len(images)
    if size is not None:
        # resize each image on the device first, so images of any shape share a batch
        x = torch.stack(
            [
                resize_images(torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)[None].to(device), size)[0]
                for im in images
            ]
        )
        feats = dense_features(backbone, x.permute(0, 2, 3, 1), size=size, batch_size=batch_size, device=device)
        out = list(F.normalize(feats, dim=-1))
    else:
        groups: dict[tuple, list[int]] = {}
        for j, im in enumerate(images):
            groups.setdefault(im.shape, []).append(j)
        for members in groups.values():
            x = np.stack([images[j] for j in members])
            feats = F.normalize(dense_features(backbone, x, None, batch_size, device), dim=-1)
            for j, f in zip(members, feats):
                out[j] = f
    return out  # type: ignore[return-value]


def _check_image(sample, index: int, split: str) -> np.ndarray:
    image = np.asarray(sample.image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{split} image {index} must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    return image


# ---------------------------------------------------------------------------- the protocol's steps


def _check_settings(
    backbone: Backbone,
    train: SegmentationDataset,
    val: SegmentationDataset,
    k: int,
    temperature: float,
    batch_size: int,
    matching: str,
    size: int | tuple[int, int] | None,
) -> tuple[int, tuple[int, int] | None]:
    """(number of classes, size as (H, W) or None); raises on settings the protocol cannot run."""
    num_classes = int(train.num_classes)
    if int(val.num_classes) != num_classes:
        raise ValueError(f"train has {num_classes} classes but val has {val.num_classes}")
    if k < 1 or temperature <= 0 or batch_size < 1:
        raise ValueError(f"k and batch_size must be >= 1 and temperature > 0, got {k}, {batch_size}, {temperature}")
    if matching not in MATCHINGS:
        raise ValueError(f"matching must be one of {MATCHINGS}, got {matching!r}")
    if len(val) == 0:
        raise ValueError("the validation set is empty")
    p = backbone.patch_size
    if size is not None:
        size = (size, size) if isinstance(size, int) else tuple(size)
        if min(size) < p or size[0] % p or size[1] % p:
            raise ValueError(f"size {size} must be positive multiples of the patch size {p}")
    return num_classes, size


def _training_images(
    num_train: int, fraction: float, seed: int, train_indices: Sequence[int] | None
) -> tuple[np.ndarray, float, bool, str | None]:
    """The images the memory is built from: (sorted indices, the fraction they are of the
    training set, whether the subset was raised to one image, a note saying so or None)."""
    if train_indices is not None:
        subset = np.unique(np.asarray(train_indices, dtype=np.int64))
        if not len(subset) or subset[0] < 0 or subset[-1] >= num_train:
            raise ValueError(f"train_indices must be non-empty indices into the {num_train} training images")
        return subset, len(subset) / num_train, False, None
    subset, clamped = train_subset(num_train, fraction, seed)
    note = None
    if clamped:
        note = (
            f"fraction {fraction_label(fraction)} of {num_train} training images is "
            f"{fraction * num_train:.3g} images; kept 1 image (the memory needs at least one)"
        )
    return subset, fraction, clamped, note


def _memory_budget(memory_size: int | None, patches_per_image: int | None, num_images: int) -> tuple[int, int]:
    """(memory capacity in patches, patches kept per image)."""
    capacity = PAPER_MEMORY_SIZE if memory_size is None else int(memory_size)
    per_image = int(patches_per_image) if patches_per_image is not None else capacity // num_images
    if per_image < 1:
        raise ValueError(
            f"memory_size={capacity} is smaller than the {num_images} training images; "
            "raise it or pass patches_per_image"
        )
    return capacity, per_image


@dataclass
class _Memory:
    """The memory bank: the kept patches' tokens in a kNN index and their label histograms.

    Attributes:
        knn: the index over the kept (L2-normalised) patch tokens; not built yet.
        labels: (M, C) float32 label histogram of each kept patch, in the index's order.
        labelled: patches with a labelled pixel in the selected images (kept or not).
    """

    knn: NearestNeighbors
    labels: torch.Tensor
    labelled: int


def _build_memory(
    backbone: Backbone,
    train: SegmentationDataset,
    subset: np.ndarray,
    per_image: int,
    num_classes: int,
    *,
    seed: int,
    size: tuple[int, int] | None,
    batch_size: int,
    device: torch.device,
    index: str,
    nprobe: int,
    use_gpu: bool | str,
) -> _Memory:
    """Encode the ``subset`` images and keep ``per_image`` patches of each (:func:`sample_patches`)."""
    rng = np.random.default_rng((seed, 1))  # patch sampling; the subset used default_rng(seed)
    knn: NearestNeighbors | None = None  # built at the first image, once D is known
    labels, labelled = [], 0
    for batch in _batches(train, subset, batch_size):
        images = [_check_image(s, i, "train") for i, s in batch]
        feats = _encode(backbone, images, size, batch_size, device)
        for (i, sample), f in zip(batch, feats):
            h, w, dim = f.shape
            hist = patch_label_histograms(sample.mask, (h, w), num_classes).reshape(h * w, num_classes)
            keep = sample_patches(hist, per_image, rng)
            labelled += int((hist.sum(1) > 0).sum())
            if knn is None:
                knn = NearestNeighbors(dim, "ip", index, nprobe=nprobe, use_gpu=use_gpu, seed=seed)
            knn.add(f.reshape(h * w, dim)[torch.from_numpy(keep)])
            labels.append(hist[keep])
    if knn is None or knn.ntotal == 0:
        raise ValueError("no labelled training patch: every selected mask is ignore-only")
    return _Memory(knn, torch.from_numpy(np.concatenate(labels)), labelled)


def _val_features(
    backbone: Backbone,
    batch: list,
    size: tuple[int, int] | None,
    batch_size: int,
    device: torch.device,
    cache: dict[int, torch.Tensor] | None,
) -> list[torch.Tensor]:
    """Tokens of a batch of (index, sample) validation images; ``cache`` (index -> tokens)
    is read and filled when given."""
    missing = [j for j, (i, _) in enumerate(batch) if cache is None or i not in cache]
    feats: list[torch.Tensor | None] = [None] * len(batch)
    if missing:
        images = [_check_image(batch[j][1], batch[j][0], "val") for j in missing]
        for j, f in zip(missing, _encode(backbone, images, size, batch_size, device)):
            feats[j] = f
            if cache is not None:
                cache[batch[j][0]] = f
    for j, (i, _) in enumerate(batch):
        if feats[j] is None:
            feats[j] = cache[i]  # type: ignore[index]
    return feats  # type: ignore[return-value]


def _transfer(
    memory_labels: torch.Tensor, scores: np.ndarray, neighbours: np.ndarray, temperature: float
) -> torch.Tensor:
    """(Q, C) class scores of Q queries: their (Q, k) neighbours' label histograms weighted by
    ``softmax(similarity / temperature)``."""
    weights = torch.softmax(torch.from_numpy(scores) / temperature, dim=1).nan_to_num_(0.0)  # all -inf: no vote
    return torch.einsum("qk,qkc->qc", weights, memory_labels[torch.from_numpy(neighbours).clamp(min=0)])


def _predict(votes: torch.Tensor, grid: tuple[int, int], mask_hw: tuple[int, int], device: torch.device) -> np.ndarray:
    """(H, W) class ids: the argmax of the (h * w, C) ``votes`` upsampled bilinearly to ``mask_hw``."""
    h, w = grid
    logits = votes.reshape(1, h, w, votes.shape[-1]).permute(0, 3, 1, 2).to(device)
    up = F.interpolate(logits, size=mask_hw, mode="bilinear", align_corners=False)
    return up[0].argmax(0).cpu().numpy()


def _label_transfer(
    memory: _Memory,
    backbone: Backbone,
    val: SegmentationDataset,
    num_classes: int,
    *,
    k: int,
    temperature: float,
    size: tuple[int, int] | None,
    batch_size: int,
    device: torch.device,
    cache: dict[int, torch.Tensor] | None,
) -> tuple[np.ndarray, float]:
    """Segment every validation image from its patches' neighbours in the (built) memory.

    Returns:
        the (C, C) confusion matrix of the predictions over all labelled validation pixels,
        and the seconds spent searching the index.
    """
    k_eff = min(k, memory.knn.ntotal)
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    search_s = 0.0
    for batch in _batches(val, range(len(val)), batch_size):
        feats = _val_features(backbone, batch, size, batch_size, device, cache)
        queries = torch.cat([f.reshape(-1, f.shape[-1]) for f in feats])
        t0 = time.perf_counter()
        scores, neighbours = memory.knn.search(queries, k_eff)
        search_s += time.perf_counter() - t0
        start = 0
        for (_, sample), f in zip(batch, feats):
            h, w, _ = f.shape
            rows = slice(start, start + h * w)
            start += h * w
            mask = np.asarray(sample.mask)
            votes = _transfer(memory.labels, scores[rows], neighbours[rows], temperature)
            pred = _predict(votes, (h, w), mask.shape[-2:], device)
            conf += confusion_matrix(pred, mask, num_classes, num_classes, ignore_index=IGNORE_INDEX)
    return conf, search_s


def _score(conf: np.ndarray, matching: str) -> dict[str, Any]:
    """``miou``, ``pixel_accuracy`` and ``iou_per_class`` of a (C, C) confusion matrix,
    predicted ids taken as classes (``"identity"``) or matched to them (``"hungarian"``)."""
    assignment = hungarian_matching(conf) if matching == "hungarian" else None
    scored = miou_from_confusion(conf, assignment)
    return {
        "miou": scored["miou"],
        "pixel_accuracy": pixel_accuracy(conf, assignment),
        "iou_per_class": scored["iou_per_class"].tolist(),
    }


# ---------------------------------------------------------------------------- the protocol


def evaluate_in_context(
    backbone: Backbone | str | Path,
    train: SegmentationDataset,
    val: SegmentationDataset,
    *,
    fraction: float = 1.0,
    seed: int = 0,
    memory_size: int | None = None,
    patches_per_image: int | None = None,
    k: int = 30,
    temperature: float = 0.02,
    size: int | tuple[int, int] | None = DEFAULT_SIZE,
    batch_size: int = 16,
    index: Literal["exact", "ivf", "auto"] = "auto",
    nprobe: int = 64,
    use_gpu: bool | Literal["auto"] = "auto",
    matching: Literal["identity", "hungarian"] = "identity",
    train_indices: Sequence[int] | None = None,
    device: str | torch.device | None = None,
    _val_cache: dict[int, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Hummingbird in-context segmentation of ``val`` from a memory built on ``train``.

    Args:
        backbone: a :class:`~mosic.backbones.Backbone`, or anything
            :func:`~mosic.eval.features.resolve_backbone` accepts.
        fraction: share of the training images in the memory (seeded uniform subset,
            ``floor(fraction * len(train))``, at least one image).
        seed: seeds the subset and the patch sampling; a run is deterministic for it.
        memory_size: memory capacity in patches (default :data:`PAPER_MEMORY_SIZE`);
            each image contributes ``memory_size // num_images`` patches, capped by its
            labelled patches.
        patches_per_image: patches kept per image, overriding ``memory_size``.
        k: neighbours retrieved.
        temperature: the softmax temperature over their cosine similarities.
        size: square side or (H, W) images are resized to (multiple of the patch size);
            None: each image's own size rounded down to a multiple of the patch size.
        index: the :class:`~mosic.eval.knn.NearestNeighbors` index kind.
        nprobe: the :class:`~mosic.eval.knn.NearestNeighbors` cells searched (IVF index).
        use_gpu: whether :class:`~mosic.eval.knn.NearestNeighbors` runs on the GPU.
        matching: ``"identity"`` (predicted ids are classes) or ``"hungarian"`` (the
            reference code's one-to-one matching before scoring).
        train_indices: explicit training images (e.g. a published file list); replaces
            the ``fraction`` / ``seed`` subset.
        device: where images are encoded and predictions upsampled (the backbone must
            be there); default: the device of the backbone's parameters.

    Returns:
        ``miou``, ``pixel_accuracy`` (percent), ``iou_per_class`` (list, NaN for classes
        absent from the validation masks), ``class_names``, ``num_classes``,
        ``fraction``, ``seed``, ``num_train_images``, ``num_train_total``,
        ``fraction_clamped``, ``note`` (None or why the subset was enlarged),
        ``num_val_images``, ``memory_size`` (patches in the memory),
        ``memory_capacity``, ``patches_per_image``, ``labelled_patches`` (available in
        the subset), ``k``, ``temperature``, ``size``, ``matching``, ``index`` (the
        built kind), ``nlist``, ``nprobe``, ``gpu`` and ``timings`` (seconds:
        ``memory_s``, ``index_s``, ``inference_s``, ``search_s``, ``total_s``).
    """
    t_start = time.perf_counter()
    backbone = resolve_backbone(backbone)
    num_classes, size = _check_settings(backbone, train, val, k, temperature, batch_size, matching, size)
    device = torch.device(device) if device is not None else next(iter(backbone.parameters())).device
    subset, fraction, clamped, note = _training_images(len(train), fraction, seed, train_indices)
    capacity, per_image = _memory_budget(memory_size, patches_per_image, len(subset))

    was_training = backbone.training
    backbone.eval()
    try:
        memory = _build_memory(
            backbone, train, subset, per_image, num_classes, seed=seed, size=size, batch_size=batch_size,
            device=device, index=index, nprobe=nprobe, use_gpu=use_gpu,
        )
        t_memory = time.perf_counter()
        memory.knn.build()
        t_index = time.perf_counter()
        conf, search_s = _label_transfer(
            memory, backbone, val, num_classes, k=k, temperature=temperature, size=size,
            batch_size=batch_size, device=device, cache=_val_cache,
        )
    finally:
        backbone.train(was_training)
    t_end = time.perf_counter()

    knn = memory.knn
    return {
        **_score(conf, matching),
        "class_names": list(getattr(train, "class_names", [str(c) for c in range(num_classes)])),
        "num_classes": num_classes,
        "fraction": float(fraction),
        "seed": int(seed),
        "num_train_images": len(subset),
        "num_train_total": len(train),
        "fraction_clamped": bool(clamped),
        "note": note,
        "num_val_images": len(val),
        "memory_size": int(knn.ntotal),
        "memory_capacity": capacity,
        "patches_per_image": per_image,
        "labelled_patches": memory.labelled,
        "k": int(k),
        "temperature": float(temperature),
        "size": list(size) if size is not None else None,
        "matching": matching,
        "index": knn.kind,
        "nlist": knn.nlist if knn.kind == "ivf" else None,
        "nprobe": knn.nprobe if knn.kind == "ivf" else None,
        "gpu": knn.use_gpu,
        "timings": {
            "memory_s": t_memory - t_start,
            "index_s": t_index - t_memory,
            "inference_s": t_end - t_index,
            "search_s": search_s,
            "total_s": t_end - t_start,
        },
    }


def evaluate_in_context_fractions(
    backbone: Backbone | str | Path,
    train: SegmentationDataset,
    val: SegmentationDataset,
    fractions: Sequence[float] = PAPER_FRACTIONS,
    seeds: Sequence[int] = PAPER_SEEDS,
    *,
    full_data_once: bool = True,
    cache_val_features: bool = True,
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`evaluate_in_context` for each training fraction and seed (Table 1).

    Args:
        fractions: training fractions; every fraction runs once per seed.
        seeds: the seeds of each fraction; with ``full_data_once`` a fraction of 1 runs
            only with the first seed (every seed selects the same images; the paper
            reports 1/1 from one run).
        cache_val_features: encode the validation set once and reuse its tokens in
            every run (costs N_val * h * w * D * 4 bytes of RAM).
        kwargs: passed to :func:`evaluate_in_context` (``size``, ``k``, ``memory_size``...).

    Returns:
        ``fractions``: one entry per fraction with ``fraction``, ``label`` ("1/128"),
        ``miou_mean`` / ``miou_std`` (population std over its runs, 0 for one run),
        ``mious``, ``pixel_accuracy_mean``, ``seeds``, ``num_train_images``,
        ``fraction_clamped``, ``note`` and ``runs`` (the full results);
        ``summary`` ({label: miou_mean}); ``num_train_total``, ``num_val_images``,
        ``timings`` (``total_s``).
    """
    if not fractions or not seeds:
        raise ValueError("fractions and seeds must be non-empty")
    for bad in ("fraction", "seed", "train_indices", "_val_cache"):
        if bad in kwargs:
            raise TypeError(f"evaluate_in_context_fractions sets {bad!r} itself")
    t0 = time.perf_counter()
    backbone = resolve_backbone(backbone)
    cache: dict[int, torch.Tensor] | None = {} if cache_val_features else None
    entries = []
    for fraction in fractions:
        run_seeds = list(seeds[:1]) if full_data_once and math.isclose(fraction, 1.0) else list(seeds)
        runs = [
            evaluate_in_context(backbone, train, val, fraction=fraction, seed=s, _val_cache=cache, **kwargs)
            for s in run_seeds
        ]
        mious = [r["miou"] for r in runs]
        notes = [r["note"] for r in runs if r["note"]]
        entries.append(
            {
                "fraction": float(fraction),
                "label": fraction_label(fraction),
                "miou_mean": float(np.mean(mious)),
                "miou_std": float(np.std(mious)),
                "mious": mious,
                "pixel_accuracy_mean": float(np.mean([r["pixel_accuracy"] for r in runs])),
                "seeds": run_seeds,
                "num_train_images": runs[0]["num_train_images"],
                "fraction_clamped": runs[0]["fraction_clamped"],
                "note": notes[0] if notes else None,
                "runs": runs,
            }
        )
    return {
        "fractions": entries,
        "summary": {e["label"]: e["miou_mean"] for e in entries},
        "num_train_total": len(train),
        "num_val_images": len(val),
        "timings": {"total_s": time.perf_counter() - t0},
    }
