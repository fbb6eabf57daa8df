"""Linear segmentation probe on frozen patch features (the MoSiC paper's protocol, after Leopart).

Protocol (paper appendix 7.4 "Linear Segmentation"; Leopart / NeCo ``linear_finetune.py``,
the code the MoSiC README points to for this evaluation):

* images resized to ``size`` (448 in the paper) and passed once through the frozen backbone;
* a 1x1 convolution (a linear layer per patch) on the patch features, bilinearly upsampled
  (``align_corners=False``) to ``mask_size`` x ``mask_size`` (100 x 100);
* masks downsampled to ``mask_size`` x ``mask_size`` with nearest neighbour;
* pixel cross-entropy with ``ignore_index`` 255; SGD lr 0.01, momentum 0.9, weight decay
  1e-4, step schedule (x0.1 at the ``milestones`` epochs), 20 epochs;
* mIoU on the validation set at the same ``mask_size`` x ``mask_size`` resolution, over the
  classes present in the validation masks, unlabelled (255) pixels skipped.

Speed: the backbone is frozen, so the features of every image are computed once and cached
(at patch resolution, in ``feature_dtype``); the head trains on the cache. A 1x1 conv
commutes with bilinear upsampling (both are linear and the interpolation weights sum to
one), so the head is applied at patch resolution and its logits (``num_classes`` channels,
not ``embed_dim``) are upsampled: the same function as upsampling features first, up to
float rounding, and much cheaper.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.base import Backbone
from ..data.segmentation import IGNORE_INDEX, SegmentationDataset
from .features import dense_features, resize_images
from .metrics import confusion_matrix, miou_from_confusion, pixel_accuracy

#: the paper's defaults (appendix 7.4; Leopart / NeCo linear_finetune)
PAPER_LINEAR_PROBE = {"size": 448, "mask_size": 100, "epochs": 20, "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4}


def _backbone_device(backbone: Backbone, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    param = next(iter(backbone.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def _out_hw(size, patch: int, image_hw: tuple[int, int]) -> tuple[int, int]:
    if size is None:
        hw = (image_hw[0] // patch * patch, image_hw[1] // patch * patch)
    else:
        hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if min(hw) < patch or hw[0] % patch or hw[1] % patch:
        raise ValueError(f"size {hw} must be positive multiples of the patch size {patch}")
    return hw


def _mask_hw(mask_size) -> tuple[int, int]:
    hw = (mask_size, mask_size) if isinstance(mask_size, int) else (int(mask_size[0]), int(mask_size[1]))
    if min(hw) < 1:
        raise ValueError(f"mask_size must be positive, got {mask_size}")
    return hw


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """(H, W) int mask -> (*size) int64 by nearest neighbour (torch's ``nearest``)."""
    m = torch.as_tensor(np.asarray(mask, dtype=np.int64))
    if tuple(m.shape) == tuple(size):
        return m
    return F.interpolate(m[None, None].float(), size=size, mode="nearest")[0, 0].long()


def extract_dataset(
    backbone: Backbone,
    dataset: SegmentationDataset,
    *,
    size: int | tuple[int, int] | None,
    mask_size: int | tuple[int, int],
    batch_size: int = 16,
    device: str | torch.device | None = None,
    feature_dtype: torch.dtype = torch.float16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen features and downsampled masks of a whole dataset.

    Each image is resized (bilinear, antialiased) to ``size`` (None: its own size rounded
    down to a multiple of the patch size; then all images must share one size) and each
    mask to ``mask_size`` (nearest). Returns ((N, h, w, D) ``feature_dtype`` tokens on the
    CPU, (N, *mask_size) int16 masks with IGNORE_INDEX kept).
    """
    if len(dataset) == 0:
        raise ValueError("the dataset has no images")
    if not 0 < int(dataset.num_classes) <= IGNORE_INDEX:
        raise ValueError(f"num_classes must lie in [1, {IGNORE_INDEX}], got {dataset.num_classes}")
    device = _backbone_device(backbone, device)
    mask_hw = _mask_hw(mask_size)
    num_classes = int(dataset.num_classes)
    feats, masks, out_hw = [], [], None
    for start in range(0, len(dataset), batch_size):
        images = []
        for i in range(start, min(start + batch_size, len(dataset))):
            sample = dataset[i]
            image = torch.as_tensor(np.ascontiguousarray(sample.image)).permute(2, 0, 1)[None]
            hw = _out_hw(size, backbone.patch_size, tuple(image.shape[-2:]))
            if out_hw is None:
                out_hw = hw
            elif hw != out_hw:
                raise ValueError(
                    f"image {i} ({sample.name}) would be resized to {hw}, earlier ones to {out_hw}: "
                    "pass size= to give all images one size"
                )
            images.append(resize_images(image, out_hw)[0].permute(1, 2, 0))
            mask = resize_mask(sample.mask, mask_hw)
            bad = (mask != IGNORE_INDEX) & ((mask < 0) | (mask >= num_classes))
            if bad.any():
                raise ValueError(
                    f"mask of image {i} ({sample.name}) has values outside [0, {num_classes}) "
                    f"and != {IGNORE_INDEX}: {sorted(set(mask[bad].tolist()))[:5]}"
                )
            masks.append(mask.to(torch.int16))  # 2 bytes per pixel; ids < 32768
        feats.append(
            dense_features(backbone, torch.stack(images), batch_size=batch_size, device=device, dtype=feature_dtype)
        )
    return torch.cat(feats), torch.stack(masks)


def _logits(head: nn.Conv2d, feats: torch.Tensor, mask_hw: tuple[int, int]) -> torch.Tensor:
    """(B, h, w, D) cached tokens -> (B, C, *mask_hw) logits (1x1 conv, then bilinear upsampling)."""
    x = feats.permute(0, 3, 1, 2).float()
    return F.interpolate(head(x), size=mask_hw, mode="bilinear", align_corners=False)


def evaluate_linear_probe(
    backbone: Backbone,
    train: SegmentationDataset,
    val: SegmentationDataset,
    *,
    epochs: int = 20,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    milestones: Sequence[int] = (20,),
    gamma: float = 0.1,
    batch_size: int = 16,
    feature_batch_size: int = 16,
    size: int | tuple[int, int] | None = 448,
    mask_size: int | tuple[int, int] = 100,
    device: str | torch.device | None = None,
    seed: int = 0,
    feature_dtype: torch.dtype = torch.float16,
    return_predictions: int = 0,
) -> dict:
    """Train a linear (1x1 conv) segmentation head on frozen features; mIoU on ``val``.

    Args:
        backbone: frozen; used only to compute features once (eval mode, no grad).
        train: a :class:`~mosic.data.SegmentationDataset`; masks hold class ids or
            IGNORE_INDEX (255).
        val: a :class:`~mosic.data.SegmentationDataset` with the same classes
            (``train.num_classes``).
        epochs: SGD epochs on the head (paper: 20).
        lr: SGD learning rate (paper: 0.01).
        momentum: SGD momentum (paper: 0.9).
        weight_decay: SGD weight decay (paper: 1e-4).
        milestones: the lr is multiplied by ``gamma`` after each epoch listed in
            ``milestones`` (torch ``MultiStepLR``, stepped per epoch). Default (20,) is the
            authors' code (NeCo/Leopart ``StepLR(step_size=drop_at=20)``, gamma 0.1): with the
            paper's 20 epochs the drop falls after the last epoch, i.e. the lr stays 0.01;
            Leopart trains 25 epochs with the same drop (``epochs=25``).
        batch_size: images per SGD step; ``feature_batch_size``: images per backbone call.
        size: input side (int) or (H, W) the images are resized to (paper: 448); None:
            the image size rounded down to a multiple of the patch size.
        mask_size: training and evaluation mask resolution (paper: 100 -> 100 x 100).
        device: where the backbone and head run (default: the backbone's device).
        seed: head initialisation and batch order.
        feature_dtype: dtype of the feature cache on the CPU (float16 halves its memory;
            the head computes in float32).
    Returns:
        ``miou`` (percent, over classes present in val, at ``mask_size`` resolution),
        ``iou_per_class`` (list, NaN for classes absent from val), ``pixel_accuracy``
        (percent of labelled val pixels), ``train_loss`` (mean loss per epoch), ``lr``
        (per epoch), ``num_classes``, ``class_names``, ``mask_size``, ``input_size``,
        ``token_grid`` (h, w), ``num_train`` / ``num_val`` and ``timings`` (seconds:
        ``features``, ``train``, ``eval``, ``total``).
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    num_classes = int(train.num_classes)
    if int(val.num_classes) != num_classes:
        raise ValueError(f"train has {num_classes} classes, val {val.num_classes}: they must match")
    mask_hw = _mask_hw(mask_size)
    device = _backbone_device(backbone, device)
    t0 = time.perf_counter()
    kwargs = {
        "size": size,
        "mask_size": mask_hw,
        "batch_size": feature_batch_size,
        "device": device,
        "feature_dtype": feature_dtype,
    }
    train_feats, train_masks = extract_dataset(backbone, train, **kwargs)
    val_feats, val_masks = extract_dataset(backbone, val, **kwargs)
    if train_feats.shape[1:] != val_feats.shape[1:]:
        raise ValueError(
            f"train tokens {tuple(train_feats.shape[1:])} and val tokens {tuple(val_feats.shape[1:])} differ"
        )
    t1 = time.perf_counter()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Conv2d(train_feats.shape[-1], num_classes, kernel_size=1)
    head = head.to(device)
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(milestones), gamma=gamma)
    criterion = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    generator = torch.Generator().manual_seed(seed)
    pin = device.type == "cuda"
    losses, lrs = [], []
    head.train()
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        total, steps = 0.0, 0
        for idx in torch.randperm(len(train_feats), generator=generator).split(batch_size):
            feats, masks = train_feats[idx], train_masks[idx].long()
            if pin:
                feats, masks = feats.pin_memory(), masks.pin_memory()
            feats, masks = feats.to(device, non_blocking=True), masks.to(device, non_blocking=True)
            if not (masks != IGNORE_INDEX).any():  # cross-entropy over no pixels is NaN
                continue
            loss = criterion(_logits(head, feats, mask_hw), masks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, steps = total + loss.item(), steps + 1
        scheduler.step()
        losses.append(total / steps if steps else float("nan"))
    t2 = time.perf_counter()

    head.eval()
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    predictions: list[np.ndarray] = []
    with torch.no_grad():
        for start in range(0, len(val_feats), batch_size):
            feats = val_feats[start : start + batch_size].to(device)
            pred = _logits(head, feats, mask_hw).argmax(1).cpu()
            predictions.extend(pred[: max(0, return_predictions - len(predictions))].numpy())
            conf += confusion_matrix(
                pred, val_masks[start : start + batch_size], num_classes, num_classes, IGNORE_INDEX
            )
    result = miou_from_confusion(conf)
    t3 = time.perf_counter()
    return {
        "miou": result["miou"],
        "iou_per_class": result["iou_per_class"].tolist(),
        "pixel_accuracy": pixel_accuracy(conf),
        "train_loss": losses,
        "lr": lrs,
        "num_classes": num_classes,
        "class_names": list(getattr(train, "class_names", [])),
        "mask_size": list(mask_hw),
        "input_size": [int(s) * backbone.patch_size for s in train_feats.shape[1:3]],
        "token_grid": list(train_feats.shape[1:3]),
        "num_train": len(train_feats),
        "num_val": len(val_feats),
        "epochs": epochs,
        "timings": {"features": t1 - t0, "train": t2 - t1, "eval": t3 - t2, "total": t3 - t0},
        **({"predictions": predictions} if return_predictions else {}),
    }
