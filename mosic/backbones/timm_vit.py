"""Vision Transformers from timm (``vit-tiny`` for tests and demos, ``dinov2-s14``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .base import Backbone, register_backbone
from .weights import load_state_dict_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@register_backbone("vit-tiny", arch="vit_tiny_patch16_224", img_size=224)
@register_backbone("vit-small", arch="vit_small_patch16_224", img_size=224)
@register_backbone("dinov2-s14", arch="vit_small_patch14_dinov2.lvd142m", img_size=518)
class TimmViT(Backbone):
    """A timm ``VisionTransformer`` exposing patch tokens.

    Args:
        arch: timm model name (with optional pretrained tag, ``name.tag``).
        pretrained: False (random init), True (timm's hub download) or a path to a
            local ``.safetensors``/``.pth`` state dict in timm's key format.
        img_size: native resolution of the position embedding; any input size
            divisible by the patch size works (position embeddings are interpolated).
        **timm_kwargs: forwarded to ``timm.create_model`` (``patch_size``, ``depth``,
            ``embed_dim``, ``num_heads``... to make small test models).
    """

    def __init__(self, arch: str, pretrained: bool | str | Path = False, img_size: int = 224, **timm_kwargs: Any):
        super().__init__()
        import timm

        self.arch = arch
        hub = pretrained is True
        try:
            self.model = timm.create_model(
                arch, pretrained=hub, num_classes=0, img_size=img_size, dynamic_img_size=True, **timm_kwargs
            )
        except Exception as exc:
            if not hub:
                raise
            raise RuntimeError(
                f"could not download pretrained weights for timm model {arch!r} ({type(exc).__name__}: {exc}). "
                "Offline? Pass a local weights file instead: pretrained='/path/to/weights.safetensors' "
                "(or .pth), or pretrained=False for random initialisation."
            ) from exc
        if isinstance(pretrained, (str, Path)):
            load_state_dict_file(self.model, pretrained)
        self.patch_size = int(self.model.patch_embed.patch_size[0])
        self.embed_dim = int(self.model.embed_dim)
        self.num_prefix_tokens = int(self.model.num_prefix_tokens)
        data_config = getattr(self.model, "pretrained_cfg", {}) or {}
        self.mean = tuple(data_config.get("mean", IMAGENET_MEAN))
        self.std = tuple(data_config.get("std", IMAGENET_STD))

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
        x = m._pos_embed(x)  # (B, P + h*w, D)
        x = m.norm_pre(x)
        p = self.num_prefix_tokens
        keep = None
        if token_mask is not None:
            keep = _kept_indices(token_mask, b, h, w)  # (B, L_keep)
            gather = keep.unsqueeze(-1).expand(-1, -1, x.shape[-1])
            x = torch.cat([x[:, :p], torch.gather(x[:, p:], 1, gather)], dim=1)
        x = m.blocks(x)
        x = m.norm(x)[:, p:]
        if keep is not None:
            full = x.new_zeros(b, h * w, x.shape[-1])
            x = full.scatter(1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]), x)
        return x.reshape(b, h, w, -1)


def _kept_indices(token_mask: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
    """Indices (B, L_keep) of tokens with mask False; every row must keep the same count."""
    if token_mask.shape != (b, h, w) or token_mask.dtype != torch.bool:
        raise ValueError(
            f"token_mask must be a bool tensor of shape (B, h, w) = {(b, h, w)}, "
            f"got {token_mask.dtype} {tuple(token_mask.shape)}"
        )
    kept = ~token_mask.reshape(b, h * w)
    counts = kept.sum(1)
    if not bool((counts == counts[0]).all()):
        raise ValueError("token_mask must drop the same number of tokens in every image")
    # stable sort puts kept positions first, in increasing order
    order = torch.argsort((~kept).to(torch.int8), dim=1, stable=True)
    return order[:, : int(counts[0])]
