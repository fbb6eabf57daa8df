"""The timm provider: ``VisionTransformer`` (DINO, DINOv2, DINOv2-R) and ``Eva`` (EVA-02 CLIP)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .base import Backbone, WeightsUnavailableError
from .card import IMAGENET_MEAN, IMAGENET_STD, ViTSpec
from .token_drop import drop_tokens, kept_indices, restore_tokens


class TimmViT(Backbone):
    """A timm ``VisionTransformer`` or ``Eva`` exposing patch tokens.

    Args:
        arch: timm model name (with optional pretrained tag, ``name.tag``).
        pretrained: False (random init), True (timm's hub download) or a path to a
            local weights file in any format :mod:`mosic.backbones.formats` detects.
        img_size: native resolution of the position embedding; any input size
            divisible by the patch size works (position embeddings are interpolated,
            EVA's rotary embedding is rebuilt for the input grid).
        **timm_kwargs: forwarded to ``timm.create_model`` (``patch_size``, ``depth``,
            ``embed_dim``, ``num_heads``... to make small test models).
    """

    weight_format = "timm"

    def __init__(self, arch: str, pretrained: bool | str | Path = False, img_size: int | None = None, **timm_kwargs: Any):
        super().__init__()
        import timm

        self.arch = arch
        hub = pretrained is True
        if img_size is not None:
            timm_kwargs["img_size"] = img_size
        try:
            self.model = timm.create_model(arch, pretrained=hub, num_classes=0, dynamic_img_size=True, **timm_kwargs)
        except Exception as exc:
            if not hub:
                raise
            raise WeightsUnavailableError(
                f"could not download pretrained weights for timm model {arch!r} ({type(exc).__name__}: {exc}). "
                "Offline? Pass a local weights file instead: pretrained='/path/to/weights.safetensors' "
                "(or .pth; timm, HF, open_clip, torch.hub and MoSiC/NeCo key formats are detected), "
                "or pretrained=False for random initialisation."
            ) from exc
        self.is_eva = type(self.model).__name__ == "Eva"
        self.spec = spec_of_timm_model(self.model)
        self.patch_size = self.spec.patch_size
        self.embed_dim = self.spec.embed_dim
        self.num_prefix_tokens = int(self.model.num_prefix_tokens)
        data_config = getattr(self.model, "pretrained_cfg", {}) or {}
        self.mean = tuple(data_config.get("mean", IMAGENET_MEAN))
        self.std = tuple(data_config.get("std", IMAGENET_STD))
        if isinstance(pretrained, (str, Path)):
            self.load_weights(pretrained)

    def weights_module(self) -> nn.Module:
        return self.model

    def blocks_in_order(self) -> Sequence[nn.Module]:
        return list(self.model.blocks)

    def head_modules(self) -> Sequence[nn.Module]:
        return [self.model.norm]

    def patch_tokens(self, images: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.check_images(images)
        m = self.model
        b = images.shape[0]
        h, w = images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
        x = m.patch_embed(images)  # (B, h, w, D) with dynamic_img_size
        rope = None
        if self.is_eva:
            x, rope = m._pos_embed(x)  # rope: (h*w, d) rotary table for this grid, or None
        else:
            x = m._pos_embed(x)  # (B, P + h*w, D)
        x = m.norm_pre(x)
        p = self.num_prefix_tokens
        keep = None
        if token_mask is not None:
            keep = kept_indices(token_mask, b, h, w, x.device)  # (B, L_keep)
            x = drop_tokens(x, keep, p)
            if rope is not None:  # per-image rotary rows of the kept tokens, (B, 1, L_keep, d)
                rope = rope[keep].unsqueeze(1)
        if self.is_eva:
            for block in m.blocks:
                x = block(x, rope=rope)
        else:
            x = m.blocks(x)
        x = m.norm(x)[:, p:]
        if keep is not None:
            x = restore_tokens(x, keep, h * w)
        return x.reshape(b, h, w, -1)


def spec_of_timm_model(model: nn.Module) -> ViTSpec:
    """The :class:`ViTSpec` of a built timm ``VisionTransformer`` or ``Eva``."""
    is_eva = type(model).__name__ == "Eva"
    block = model.blocks[0]
    mlp = type(block.mlp).__name__
    has_cls = getattr(model, "cls_token", None) is not None
    if not has_cls:
        raise ValueError(f"{type(model).__name__} without a CLS token is not supported")
    ls = getattr(block, "ls1", None)
    return ViTSpec(
        kind="eva" if is_eva else "vit",
        patch_size=int(model.patch_embed.patch_size[0]),
        embed_dim=int(model.embed_dim),
        depth=len(model.blocks),
        num_heads=int(block.attn.num_heads),
        img_size=int(model.patch_embed.img_size[0]),
        num_registers=int(model.num_prefix_tokens) - 1,
        mlp="swiglu" if mlp in ("GluMlp", "SwiGLU", "SwiGLUPacked") else "gelu",
        layer_scale=ls is not None and not isinstance(ls, nn.Identity),
    )
