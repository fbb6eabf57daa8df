"""Semi-supervised video object segmentation by label propagation (DAVIS-17 protocol).

The protocol of DINO (Caron et al. 2021, ``eval_video_segmentation.py``) and CRW
(Jabri et al. 2020, ``test.py``): given the instance mask of the first frame, every
later frame t takes its labels from reference frames through patch-feature affinity,
with no training:

1. Patch tokens of every frame (:func:`~mosic.eval.features.dense_features`; frames
   resized to ``size``), L2-normalised.
2. References of frame t: the first frame (its given mask) and the ``n_last_frames``
   previous frames (their *soft* propagated label maps, a queue).
3. Affinity: cosine similarity of each patch of frame t with the reference patches
   within ``radius`` patches in both directions (a square window, as DINO; CRW uses a
   disk), over all references jointly; keep the ``topk`` largest (across all reference
   frames together, not per frame), weights = softmax(similarity / ``temperature``) over
   them (DINO: exp(sim / 0.1), top-k, normalised: the same thing).
4. Label of a patch = weighted sum of the neighbours' label vectors (one-hot per instance
   for the first frame, downsampled to the patch grid by nearest neighbour at patch
   centres as DINO's PIL resize does, or by area).
5. The (C, h, w) soft map is upsampled bilinearly to the frame size; DINO then rescales
   every channel to [0, 1] (``norm_mask``, kept as an option, on by default); argmax ->
   instance ids.

Defaults are DINO's: ``n_last_frames=7``, ``topk=5``, ``radius=12`` (patches),
``temperature=0.1``. CRW's (README command): ``n_last_frames=20``, ``topk=10``,
``radius=12`` (a disk, distance < 12, not applied to the first frame),
``temperature=0.05``, no channel rescaling (``--norm_mask`` off by default). DINO
evaluates DAVIS-17 val at 480p (short side 480, long side floored to a multiple of 64:
``size=(480, 832)`` for 854 x 480 videos) with ViT-S/8 or B/8.

Differences from DINO's script: the soft map is upsampled straight to the frame size
(DINO upsamples by the patch size to the resized frame, then resizes the argmax to the
frame with nearest neighbour; identical when ``size`` is None and the frame is a multiple
of the patch size); exactly ``topk`` neighbours are kept (DINO keeps ties with the k-th);
a channel with constant values is left alone by ``norm_mask`` (DINO divides 0 by 0).
:func:`evaluate_label_propagation` scores with :mod:`mosic.eval.davis_metrics` (the
official toolkit's definitions) and reports percent.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..backbones.base import Backbone
from ..data.segmentation import IGNORE_INDEX, VideoSegmentationDataset
from .davis_metrics import BOUND_TH, davis_scores
from .features import dense_features, resolve_backbone

__all__ = ["evaluate_label_propagation", "propagate_labels"]

#: affinity entries computed at once (per tile of target patches); bounds memory to ~128 MB
_CHUNK_ELEMENTS = 1 << 25


def _grid_size(hw: tuple[int, int], size: int | tuple[int, int] | None, patch: int) -> tuple[int, int]:
    """The (H, W) frames are resized to before patching (as :func:`dense_features`)."""
    if size is None:
        out = (hw[0] // patch * patch, hw[1] // patch * patch)
    else:
        out = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    if min(out) < patch or out[0] % patch or out[1] % patch:
        raise ValueError(f"size {out} must be positive multiples of the patch size {patch}")
    return out


def _first_labels(channels: torch.Tensor, num_labels: int, hw: tuple[int, int], mode: str) -> torch.Tensor:
    """(H, W) channel indices -> (h, w, C) label vectors at patch resolution."""
    if mode == "nearest":
        small = F.interpolate(channels[None, None].float(), size=hw, mode="nearest-exact")[0, 0].long()
        return F.one_hot(small, num_labels).float()
    onehot = F.one_hot(channels, num_labels).permute(2, 0, 1).float()[None]
    return F.interpolate(onehot, size=hw, mode="area")[0].permute(1, 2, 0).contiguous()


def _propagate_frame(
    target: torch.Tensor,
    ref_feats: torch.Tensor,
    ref_labels: torch.Tensor,
    *,
    topk: int,
    radius: int | None,
    temperature: float,
) -> torch.Tensor:
    """Labels of one frame from its references.

    Args:
        target: (h, w, D) L2-normalised features of the frame.
        ref_feats: (R, h, w, D) L2-normalised features of the references.
        ref_labels: (R, h, w, C) their label vectors.
    Returns:
        (h, w, C) propagated soft labels.
    """
    h, w, d = target.shape
    n_ref, c = ref_feats.shape[0], ref_labels.shape[-1]
    device = target.device
    # Tiles of target patches; a tile only needs the reference patches within the radius
    # of it, so with a radius the cost per patch is ~(tile + 2 radius)^2 instead of h * w.
    if radius is None:
        tile_h, tile_w = h, w
    else:
        tile_h = tile_w = max(4, radius)

    def _cost(th: int, tw: int) -> int:
        if radius is None:
            return th * tw * n_ref * h * w
        return th * tw * n_ref * min(h, th + 2 * radius) * min(w, tw + 2 * radius)

    while (tile_h > 1 or tile_w > 1) and _cost(tile_h, tile_w) > _CHUNK_ELEMENTS:
        if tile_h >= tile_w:
            tile_h = (tile_h + 1) // 2
        else:
            tile_w = (tile_w + 1) // 2
    out = torch.empty(h, w, c, device=device, dtype=ref_labels.dtype)
    for y0 in range(0, h, tile_h):
        y1 = min(h, y0 + tile_h)
        for x0 in range(0, w, tile_w):
            x1 = min(w, x0 + tile_w)
            if radius is None:
                ky0, ky1, kx0, kx1 = 0, h, 0, w
            else:
                ky0, ky1 = max(0, y0 - radius), min(h, y1 + radius)
                kx0, kx1 = max(0, x0 - radius), min(w, x1 + radius)
            query = target[y0:y1, x0:x1].reshape(-1, d)
            keys = ref_feats[:, ky0:ky1, kx0:kx1].reshape(-1, d)
            sim = (query @ keys.T).view(query.shape[0], n_ref, -1)  # (q, R, keys per reference)
            if radius is not None:  # outside the square window: row or column too far
                far_y = (torch.arange(y0, y1, device=device)[:, None] - torch.arange(ky0, ky1, device=device)).abs() > radius
                far_x = (torch.arange(x0, x1, device=device)[:, None] - torch.arange(kx0, kx1, device=device)).abs() > radius
                far = (far_y[:, None, :, None] | far_x[None, :, None, :]).reshape(query.shape[0], 1, -1)
                sim.masked_fill_(far, float("-inf"))
            sim = sim.view(query.shape[0], -1)
            values, index = sim.topk(min(topk, sim.shape[1]), dim=1)
            weights = torch.softmax(values / temperature, dim=1)  # -inf (outside the window) -> 0
            labels = ref_labels[:, ky0:ky1, kx0:kx1].reshape(-1, c)[index]  # (q, k, C)
            out[y0:y1, x0:x1] = (weights[..., None] * labels).sum(1).view(y1 - y0, x1 - x0, c)
    return out


def _check_args(n_last_frames: int, topk: int, radius: int | None, temperature: float, label_downsample: str) -> None:
    if n_last_frames < 0:
        raise ValueError(f"n_last_frames must be >= 0, got {n_last_frames}")
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    if radius is not None and radius < 0:
        raise ValueError(f"radius must be None (no restriction) or >= 0 patches, got {radius}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if label_downsample not in ("nearest", "area"):
        raise ValueError(f"label_downsample must be 'nearest' or 'area', got {label_downsample!r}")


@torch.no_grad()
def propagate_labels(
    backbone: Backbone,
    frames: np.ndarray | torch.Tensor,
    first_mask: np.ndarray | torch.Tensor,
    *,
    size: int | tuple[int, int] | None = None,
    n_last_frames: int = 7,
    topk: int = 5,
    radius: int | None = 12,
    temperature: float = 0.1,
    norm_mask: bool = True,
    label_downsample: Literal["nearest", "area"] = "nearest",
    batch_size: int = 16,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Propagate the first frame's instance mask through a video (see the module docstring).

    Args:
        backbone: its patch tokens give the affinities (eval mode, no grad).
        frames: (T, H, W, 3) uint8 RGB.
        first_mask: (H, W) int instance ids of frame 0 (0 background, :data:`IGNORE_INDEX`
            treated as background; a bool mask is object 1).
        size: square side or (H, W) frames are resized to before patching (multiples of
            the patch size); None: the frame size rounded down to a multiple of it.
        n_last_frames: previous frames used as references besides the first (DINO 7,
            CRW 20).
        topk: neighbours kept per target patch, across all references (DINO 5, CRW 10).
        radius: a target patch only sees reference patches at most this many patches
            away in rows and in columns (DINO's ``size_mask_neighborhood``, 12 at ViT/8
            480p); None: no restriction (DINO's 0).
        temperature: softmax temperature on cosine similarities (DINO 0.1, CRW 0.05).
        norm_mask: rescale each upsampled label channel to [0, 1] before the argmax
            (DINO's ``norm_mask``).
        label_downsample: first-frame labels to the patch grid: ``"nearest"`` (the label
            at each patch centre, as DINO) or ``"area"`` (label fractions per patch).
        batch_size: frames per backbone forward.
        device: where the backbone runs and the affinities are computed (default: where
            its parameters are; the backbone is not moved).
    Returns:
        (T, H, W) int64 predicted instance ids; frame 0 is ``first_mask`` (void -> 0).
    """
    _check_args(n_last_frames, topk, radius, temperature, label_downsample)
    video = torch.as_tensor(frames)
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != torch.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8 RGB, got {tuple(video.shape)} {video.dtype}")
    mask = torch.as_tensor(np.asarray(first_mask) if not isinstance(first_mask, torch.Tensor) else first_mask)
    if tuple(mask.shape) != tuple(video.shape[1:3]):
        raise ValueError(f"first_mask {tuple(mask.shape)} must match the frame size {tuple(video.shape[1:3])}")
    if mask.dtype.is_floating_point or mask.dtype.is_complex:
        raise ValueError(f"first_mask must hold integer instance ids (or be a bool mask), got {mask.dtype}")
    mask = mask.long().cpu()
    mask = torch.where(mask == IGNORE_INDEX, torch.zeros_like(mask), mask)
    if (mask < 0).any():
        raise ValueError("first_mask has negative ids")
    if device is None:
        device = next(iter(backbone.parameters())).device
    device = torch.device(device)

    num_frames, height, width = video.shape[:3]
    p = backbone.patch_size
    grid_hw = _grid_size((height, width), size, p)
    h, w = grid_hw[0] // p, grid_hw[1] // p
    ids = torch.unique(mask)
    ids = torch.cat([torch.zeros(1, dtype=torch.long), ids[ids != 0]])  # channel c <-> instance ids[c]
    channels = torch.searchsorted(ids, mask)
    first_labels = _first_labels(channels, len(ids), (h, w), label_downsample).to(device)

    preds = np.empty((num_frames, height, width), dtype=np.int64)
    preds[0] = mask.numpy()
    if num_frames == 1:
        return preds
    lut = ids.to(device)
    first_feats: torch.Tensor | None = None
    queue: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=max(n_last_frames, 1))
    for start in range(0, num_frames, batch_size):
        feats = dense_features(backbone, video[start : start + batch_size], size=grid_hw, batch_size=batch_size, device=device)
        feats = F.normalize(feats.to(device), dim=-1)
        for i, feat in enumerate(feats):
            t = start + i
            if t == 0:
                first_feats = feat
                continue
            refs = [(first_feats, first_labels), *(queue if n_last_frames > 0 else ())]
            soft = _propagate_frame(
                feat,
                torch.stack([r[0] for r in refs]),
                torch.stack([r[1] for r in refs]),
                topk=topk,
                radius=radius,
                temperature=temperature,
            )
            if n_last_frames > 0:
                queue.append((feat, soft))
            up = F.interpolate(soft.permute(2, 0, 1)[None], size=(height, width), mode="bilinear", align_corners=False)[0]
            if norm_mask:
                flat = up.view(up.shape[0], -1)
                lo, hi = flat.min(1).values, flat.max(1).values
                scale = torch.where((hi > 0) & (hi > lo), hi - lo, torch.ones_like(hi))
                shift = torch.where((hi > 0) & (hi > lo), lo, torch.zeros_like(lo))
                up = (up - shift[:, None, None]) / scale[:, None, None]
            preds[t] = lut[up.argmax(0)].cpu().numpy()
    return preds


def _video_range(dataset: VideoSegmentationDataset, v: int, max_frames: int | None) -> tuple[list[int], list[int]]:
    """Frames to propagate through and the annotated ones among them (first = start)."""
    annotated = sorted(int(a) for a in dataset.annotated_frames(v))
    if not annotated:
        raise ValueError(f"video {v} ({dataset.video_name(v)}) has no annotated frame")
    start, stop = annotated[0], dataset.num_frames(v)
    if max_frames is not None:
        stop = min(stop, start + max_frames)
    frames = list(range(start, stop))
    return frames, [a for a in annotated if a < stop]


def evaluate_label_propagation(
    backbone: Backbone | str,
    dataset: VideoSegmentationDataset,
    *,
    max_frames: int | None = None,
    max_videos: int | None = None,
    size: int | tuple[int, int] | None = None,
    n_last_frames: int = 7,
    topk: int = 5,
    radius: int | None = 12,
    temperature: float = 0.1,
    norm_mask: bool = True,
    label_downsample: Literal["nearest", "area"] = "nearest",
    bound_th: float = BOUND_TH,
    batch_size: int = 16,
    device: str | torch.device | None = None,
) -> dict:
    """DAVIS-17 semi-supervised label propagation: J, F and J&F of a backbone, in percent.

    Per video: the mask of the first annotated frame is propagated with
    :func:`propagate_labels` (same arguments) through the following frames (at most
    ``max_frames`` frames in all, the first included); the objects are the non-zero ids
    of that first mask; J and F are scored on the annotated frames by
    :func:`~mosic.eval.davis_metrics.davis_scores`, which leaves out the first and the
    last of them as the official toolkit does (so a video needs 3 annotated frames).

    Returns:
        ``jf_mean``, ``j_mean``, ``j_recall``, ``j_decay``, ``f_mean``, ``f_recall``,
        ``f_decay``: percent, averaged over all objects of all videos (the official
        toolkit's global numbers; ``jf_mean`` = (j_mean + f_mean) / 2);
        ``per_video``: video name -> the same keys (averaged over its objects) plus
        ``num_objects``, ``num_frames`` and ``fps``; ``fps``: frames propagated per second
        (feature extraction and propagation, not reading or scoring); ``num_videos``,
        ``num_objects``, ``num_frames``; ``skipped``: names of videos whose first mask has
        no object (not scored); ``settings``: the protocol arguments used.
    """
    backbone = resolve_backbone(backbone)
    _check_args(n_last_frames, topk, radius, temperature, label_downsample)
    if max_frames is not None and max_frames < 3:
        raise ValueError(f"max_frames must be >= 3 (the protocol skips the first and last frames), got {max_frames}")
    num_videos = len(dataset) if max_videos is None else min(len(dataset), max_videos)
    if num_videos == 0:
        raise ValueError("the dataset has no videos")
    keys = ("j_mean", "j_recall", "j_decay", "f_mean", "f_recall", "f_decay")
    per_object: dict[str, list[float]] = {k: [] for k in keys}
    per_video: dict[str, dict] = {}
    skipped: list[str] = []
    total_frames, total_time = 0, 0.0
    for v in range(num_videos):
        name = dataset.video_name(v)
        frames_idx, annotated = _video_range(dataset, v, max_frames)
        frames = dataset.read_frames(v, frames_idx)
        gt = np.asarray(dataset.read_masks(v, annotated)).astype(np.int64)
        first = gt[0]
        object_ids = [int(i) for i in np.unique(first) if i not in (0, IGNORE_INDEX)]
        if not object_ids:
            skipped.append(name)
            continue
        if len(annotated) < 3:
            raise ValueError(
                f"video {v} ({name}) has {len(annotated)} annotated frames in range; the DAVIS protocol "
                "scores all but the first and last, so it needs 3 (raise max_frames)"
            )
        t0 = time.perf_counter()
        pred = propagate_labels(
            backbone,
            frames,
            first,
            size=size,
            n_last_frames=n_last_frames,
            topk=topk,
            radius=radius,
            temperature=temperature,
            norm_mask=norm_mask,
            label_downsample=label_downsample,
            batch_size=batch_size,
            device=device,
        )
        elapsed = time.perf_counter() - t0
        total_frames += len(frames_idx)
        total_time += elapsed
        positions = [a - frames_idx[0] for a in annotated]
        scores = davis_scores(pred[positions], gt, object_ids, bound_th=bound_th)
        for stats in scores["per_object"].values():
            for k in keys:
                per_object[k].append(stats[k])
        per_video[name] = {k: 100.0 * scores[k] for k in (*keys, "jf_mean")} | {
            "num_objects": len(object_ids),
            "num_frames": len(frames_idx),
            "fps": len(frames_idx) / elapsed if elapsed > 0 else float("inf"),
        }
    out: dict = {k: 100.0 * float(np.mean(per_object[k])) if per_object[k] else float("nan") for k in keys}
    out["jf_mean"] = (out["j_mean"] + out["f_mean"]) / 2
    out.update(
        per_video=per_video,
        fps=total_frames / total_time if total_time > 0 else float("nan"),
        num_videos=len(per_video),
        num_objects=len(per_object["j_mean"]),
        num_frames=total_frames,
        skipped=skipped,
        settings={
            "size": size,
            "n_last_frames": n_last_frames,
            "topk": topk,
            "radius": radius,
            "temperature": temperature,
            "norm_mask": norm_mask,
            "label_downsample": label_downsample,
            "bound_th": bound_th,
            "max_frames": max_frames,
        },
    )
    return out
