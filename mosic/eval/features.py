"""Frozen dense features for evaluation, and the backbone an evaluation runs on.

:func:`dense_features` turns uint8 RGB images into (N, h, w, D) patch tokens of a
:class:`~mosic.backbones.Backbone` (resized to a multiple of the patch size, batched,
no grad, eval mode). :func:`resolve_backbone` accepts what a user has at hand: a
built backbone, a registered name (``"dinov2-s14"``), a mosic run or checkpoint folder
(its teacher, as the paper evaluates), or a folder written by ``mosic export``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..backbones.base import BACKBONES, Backbone
from ..checks import is_int


def resize_images(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> (N, 3, *size) uint8, bilinear with antialiasing."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    out = F.interpolate(images.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


@torch.no_grad()
def dense_features(
    backbone: Backbone,
    images: np.ndarray | torch.Tensor | Sequence[np.ndarray],
    size: int | tuple[int, int] | None = None,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Patch tokens of images.

    Args:
        images: (N, H, W, 3) uint8 RGB (array or tensor), or a sequence of (H, W, 3)
            arrays of one size.
        size: square side or (H, W) the images are resized to (a multiple of the patch
            size); None: the input size rounded down to a multiple of the patch size.
        device: where the backbone runs (default: where its parameters are).
    Returns:
        (N, h, w, D) tokens on the CPU in ``dtype``.
    """
    if not isinstance(backbone, Backbone):
        raise TypeError(f"dense_features: backbone must be a mosic Backbone (see resolve_backbone), got {type(backbone).__name__}")
    if not isinstance(images, (np.ndarray, torch.Tensor)):
        try:
            images = np.stack(list(images))
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"dense_features: images must be (N, H, W, 3) uint8 RGB, or a sequence of (H, W, 3) arrays of one size ({exc})"
            ) from None
    x = torch.as_tensor(images)
    if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != torch.uint8:
        raise ValueError(f"dense_features: images must be (N, H, W, 3) uint8 RGB, got {tuple(x.shape)} {x.dtype}")
    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(f"dense_features: batch_size must be an int >= 1, got {batch_size!r}")
    p = backbone.patch_size
    if size is None:
        out_hw = (x.shape[1] // p * p, x.shape[2] // p * p)
    elif is_int(size):
        out_hw = (int(size), int(size))
    elif isinstance(size, Sequence) and len(size) == 2 and all(is_int(v) for v in size):
        out_hw = (int(size[0]), int(size[1]))
    else:
        raise ValueError(f"dense_features: size must be None, an int or (H, W) ints, got {size!r}")
    if min(out_hw) < p or out_hw[0] % p or out_hw[1] % p:
        raise ValueError(f"dense_features: size {out_hw} must be positive multiples of the patch size {p}")
    if device is None:
        device = next(iter(backbone.parameters())).device
    was_training = backbone.training
    backbone.eval()
    chunks = []
    try:
        for batch in x.permute(0, 3, 1, 2).split(batch_size):
            batch = resize_images(batch.to(device), out_hw)
            chunks.append(backbone.patch_tokens(backbone.preprocess(batch)).to("cpu", dtype))
    finally:
        backbone.train(was_training)
    return torch.cat(chunks)



def resolve_backbone(spec: Backbone | str | Path, *, model: str = "teacher", **kwargs: Any) -> Backbone:
    """The backbone to evaluate.

    Args:
        spec: a :class:`Backbone`; a registered name (built with ``kwargs``, e.g.
            ``pretrained=False``); a mosic run folder or checkpoint folder (its
            ``model``, "teacher" by default); or a ``mosic export`` folder in timm or
            torch.hub format (rebuilt from its ``mosic.json``).
    """
    if isinstance(spec, Backbone):
        return spec
    if not isinstance(spec, (str, Path)):
        raise TypeError(
            "resolve_backbone: spec must be a Backbone, a registered name, a run/checkpoint folder or a "
            f"`mosic export` folder, got {type(spec).__name__}"
        )
    path = Path(spec)
    if path.is_dir():
        if (path / "mosic.json").is_file():
            return _from_export(path, **kwargs)
        from ..export import _backbone_from_run

        backbone, _ = _backbone_from_run(path, model)
        return backbone
    if str(spec) in BACKBONES:
        return BACKBONES.create(str(spec), **kwargs)
    raise ValueError(
        f"cannot evaluate {spec!r}: give a registered backbone name (`mosic list backbones`), a mosic run "
        "or checkpoint folder, or a folder written by `mosic export`"
    )


def _from_export(path: Path, **kwargs: Any) -> Backbone:
    """Rebuild an export from its ``mosic.json`` (untrusted input: plain JSON, checked) and load
    its ``model.safetensors`` (tensors only; a pickle under that name is refused)."""
    info_file = path / "mosic.json"
    try:
        info = json.loads(info_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{info_file} is not a readable `mosic export` description (JSON): {exc}") from None
    if not isinstance(info, dict):
        raise ValueError(f"{info_file} must hold a JSON object (backbone, spec, format), got {type(info).__name__}")
    name, spec, fmt = info.get("backbone"), info.get("spec") or {}, info.get("format")
    if not isinstance(name, str) or name not in BACKBONES:
        raise ValueError(f"{info_file} names backbone {name!r}, which is not registered here")
    if not isinstance(spec, dict):
        raise ValueError(f"{info_file}: 'spec' must be an object of architecture values, got {type(spec).__name__}")
    bad = {
        k: spec[k]
        for k in ("patch_size", "embed_dim", "depth", "num_heads", "img_size")
        if k in spec and (not is_int(spec[k]) or spec[k] < 1)
    }
    if bad:
        raise ValueError(f"{info_file}: spec values must be positive ints, got {bad}")
    if fmt not in ("timm", "torchhub"):
        raise ValueError(f"{path}: exports in format {fmt!r} are loaded with transformers; evaluate the run folder instead")
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{path}: no model.safetensors (a `mosic export --format {fmt}` folder holds one)")
    overrides = {k: spec[k] for k in ("patch_size", "embed_dim", "depth", "num_heads", "img_size") if k in spec}
    backbone = BACKBONES.create(name, pretrained=False, **overrides, **kwargs)
    backbone.load_weights(weights)
    return backbone.eval()
