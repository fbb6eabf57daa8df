"""The registered backbones: DINO, DINOv2, DINOv2-R, EVA-CLIP (and small ViTs for tests).

Every name carries a :class:`~mosic.backbones.card.BackboneCard` and builds through one
factory, :func:`build_backbone`, which picks the provider (``source="timm"`` by default,
``"hf"`` for DINOv2/DINOv2-R, ``"open_clip"`` for EVA-CLIP) and loads weights:
``pretrained=True`` downloads with the provider's own hub code, ``pretrained="file"``
(or ``weights="file"``) loads a local file in any detected key format, strictly.
"""

from __future__ import annotations

import warnings
from functools import partial
from pathlib import Path
from typing import Any

from .base import BACKBONES, Backbone
from .card import CLIP_MEAN, CLIP_STD, BackboneCard, ViTSpec

ARCH_OVERRIDES = ("img_size", "patch_size", "embed_dim", "depth", "num_heads")

_DINO = "Caron et al., Emerging Properties in Self-Supervised Vision Transformers, ICCV 2021 (arXiv:2104.14294)"
_DINOV2 = "Oquab et al., DINOv2: Learning Robust Visual Features without Supervision, TMLR 2024 (arXiv:2304.07193)"
_REG = "Darcet et al., Vision Transformers Need Registers, ICLR 2024 (arXiv:2309.16588)"
_EVA = "Sun et al., EVA-CLIP: Improved Training Techniques for CLIP at Scale, 2023 (arXiv:2303.15389)"


def _vit(architecture: str, dim: int, heads: int, *, timm: str) -> dict[str, Any]:
    """Fields of a small supervised ViT card (tests and the demo)."""
    return dict(
        family="vit",
        architecture=architecture,
        spec=ViTSpec(patch_size=16, embed_dim=dim, depth=12, num_heads=heads, img_size=224),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        sources={"timm": timm},
        weights="timm's supervised ImageNet-21k/1k weights (augreg)",
        licence="Apache-2.0",
        paper="Steiner et al., How to train your ViT?, TMLR 2022 (arXiv:2106.10270)",
        notes="Not self-supervised: used with pretrained=False and small overrides for tests and the demo.",
    )


def _dino(architecture: str, dim: int, depth: int, heads: int, *, timm: str, torchhub: str) -> dict[str, Any]:
    return dict(
        family="dino",
        architecture=architecture,
        spec=ViTSpec(patch_size=16, embed_dim=dim, depth=depth, num_heads=heads, img_size=224),
        sources={"timm": timm},
        torchhub=torchhub,
        weights=f"DINO {architecture} (ImageNet-1k, self-supervised) via timm's hub",
        licence="Apache-2.0",
        paper=_DINO,
    )


def _dinov2(
    architecture: str, dim: int, depth: int, heads: int, *, registers: int = 0, swiglu: bool = False,
    timm: str, hf: str, torchhub: str,
) -> dict[str, Any]:
    """Fields of a DINOv2 (``registers=0``) or DINOv2-with-registers card."""
    return dict(
        family="dinov2r" if registers else "dinov2",
        architecture=architecture + (" + 4 registers" if registers else ""),
        spec=ViTSpec(
            patch_size=14,
            embed_dim=dim,
            depth=depth,
            num_heads=heads,
            img_size=518,
            num_registers=registers,
            mlp="swiglu" if swiglu else "gelu",
            layer_scale=True,
        ),
        sources={"timm": timm, "hf": hf},
        torchhub=torchhub,
        weights=f"DINOv2{' with registers' if registers else ''} {architecture} (LVD-142M)",
        licence="Apache-2.0",
        paper=_REG if registers else _DINOV2,
        notes="Native 518 px (37x37 patches); the paper post-pretrains at 224 px"
        + ("; SwiGLU MLP" if swiglu else "")
        + (". Registers are prefix tokens: patch_tokens drops them" if registers else "."),
    )


def _eva_clip(architecture: str, spec: ViTSpec, *, timm: str, open_clip: str, weights: str, **extra: Any) -> dict[str, Any]:
    fields = dict(
        family="eva-clip",
        architecture=architecture,
        spec=spec,
        mean=CLIP_MEAN,
        std=CLIP_STD,
        sources={"timm": timm, "open_clip": open_clip},
        weights=weights,
        licence="MIT",
        paper=_EVA,
        notes="Rotary position embedding, SwiGLU MLP; the CLIP projection head is not part of the backbone.",
    )
    fields.update(extra)
    return fields


CARDS: dict[str, BackboneCard] = {}


def _register(name: str, **fields: Any) -> BackboneCard:
    """Register ``name`` with the card made of ``fields``; it builds through :func:`build_backbone`."""
    card = BackboneCard(name=name, **fields)
    CARDS[name] = card
    BACKBONES.register(name, card=card)(partial(build_backbone, card))
    return card


_warned_aliases: set[str] = set()


class AliasWarning(UserWarning):
    """A registered name builds a model whose name differs (see the card's notes)."""


def build_backbone(
    card: BackboneCard,
    pretrained: bool | str | Path = False,
    *,
    weights: str | Path | None = None,
    source: str | None = None,
    strict: bool = True,
    **overrides: Any,
) -> Backbone:
    """Build the backbone a card describes.

    Args:
        card: what to build.
        pretrained: False (random init), True (the provider's hub download), or a local
            weights file (same as ``weights=``).
        weights: a local ``.safetensors``/``.pth``/``.bin`` file in timm, HF, open_clip,
            torch.hub or MoSiC/NeCo/TimeTuning key format (detected); loaded strictly.
        source: ``"timm"`` (default), ``"hf"`` or ``"open_clip"``; see ``card.sources``.
        strict: False loads the keys that match and warns about the rest.
        **overrides: architecture changes for small random models (``img_size``,
            ``patch_size``, ``embed_dim``, ``depth``, ``num_heads``); the timm provider
            also forwards other ``timm.create_model`` keyword arguments.
    """
    if isinstance(pretrained, (str, Path)):
        if weights is not None:
            raise ValueError("pass the weights file either as pretrained='file' or as weights='file', not both")
        pretrained, weights = False, pretrained
    if weights is not None and pretrained is True:
        raise ValueError("pretrained=True downloads weights; with weights='file' leave pretrained unset")
    source = source or card.default_source
    if source not in card.sources:
        raise ValueError(
            f"backbone {card.name!r} is not available from source {source!r}; "
            f"its sources are {sorted(card.sources)} (see mosic list backbones -v)"
        )
    resized = sorted(k for k in overrides if k in ARCH_OVERRIDES and k != "img_size")
    if pretrained is True and resized:
        raise ValueError(
            f"pretrained=True downloads {card.name}'s weights, which do not fit the overridden {resized}; "
            "use pretrained=False for a resized random model"
        )
    if card.alias_of and card.name not in _warned_aliases:
        _warned_aliases.add(card.name)
        warnings.warn(f"{card.name!r}: {card.notes}", AliasWarning, stacklevel=3)

    identifier = card.sources[source]
    if source == "timm":
        from .timm_vit import TimmViT

        backbone: Backbone = TimmViT(identifier, pretrained=pretrained is True, **overrides)
    elif source == "hf":
        from .hf_dinov2 import HFDinov2

        _only_arch_overrides(overrides, source)
        spec = card.spec.with_overrides(**overrides)
        backbone = HFDinov2(spec, repo=identifier, pretrained=pretrained is True, mean=card.mean, std=card.std)
    else:
        from .open_clip_eva import OpenClipEVA

        _only_arch_overrides(overrides, source)
        backbone = OpenClipEVA(identifier, pretrained=pretrained is True, **overrides)
    backbone.card = card
    backbone.mean, backbone.std = card.mean, card.std
    if weights is not None:
        backbone.load_weights(weights, strict=strict)
    return backbone


def _only_arch_overrides(overrides: dict, source: str) -> None:
    other = sorted(set(overrides) - set(ARCH_OVERRIDES))
    if other:
        raise ValueError(f"source={source!r} takes only the architecture overrides {list(ARCH_OVERRIDES)}, got {other}")


# ----------------------------------------------------------------------------- the registered names
# One literal name per call (grep-able), timm-style.

_register("vit-tiny", **_vit("ViT-Ti/16", 192, 3, timm="vit_tiny_patch16_224"))
_register("vit-small", **_vit("ViT-S/16", 384, 6, timm="vit_small_patch16_224"))

_register("dino-s16", **_dino("ViT-S/16", 384, 12, 6, timm="vit_small_patch16_224.dino", torchhub="facebookresearch/dino:main:dino_vits16"))
_register("dino-b16", **_dino("ViT-B/16", 768, 12, 12, timm="vit_base_patch16_224.dino", torchhub="facebookresearch/dino:main:dino_vitb16"))

_register("dinov2-s14", **_dinov2(
    "ViT-S/14", 384, 12, 6,
    timm="vit_small_patch14_dinov2.lvd142m", hf="facebook/dinov2-small", torchhub="facebookresearch/dinov2:dinov2_vits14",
))
_register("dinov2-b14", **_dinov2(
    "ViT-B/14", 768, 12, 12,
    timm="vit_base_patch14_dinov2.lvd142m", hf="facebook/dinov2-base", torchhub="facebookresearch/dinov2:dinov2_vitb14",
))
_register("dinov2-l14", **_dinov2(
    "ViT-L/14", 1024, 24, 16,
    timm="vit_large_patch14_dinov2.lvd142m", hf="facebook/dinov2-large", torchhub="facebookresearch/dinov2:dinov2_vitl14",
))
_register("dinov2-g14", **_dinov2(
    "ViT-G/14", 1536, 40, 24, swiglu=True,
    timm="vit_giant_patch14_dinov2.lvd142m", hf="facebook/dinov2-giant", torchhub="facebookresearch/dinov2:dinov2_vitg14",
))

_register("dinov2r-s14", **_dinov2(
    "ViT-S/14", 384, 12, 6, registers=4,
    timm="vit_small_patch14_reg4_dinov2.lvd142m", hf="facebook/dinov2-with-registers-small",
    torchhub="facebookresearch/dinov2:dinov2_vits14_reg",
))
_register("dinov2r-b14", **_dinov2(
    "ViT-B/14", 768, 12, 12, registers=4,
    timm="vit_base_patch14_reg4_dinov2.lvd142m", hf="facebook/dinov2-with-registers-base",
    torchhub="facebookresearch/dinov2:dinov2_vitb14_reg",
))
_register("dinov2r-l14", **_dinov2(
    "ViT-L/14", 1024, 24, 16, registers=4,
    timm="vit_large_patch14_reg4_dinov2.lvd142m", hf="facebook/dinov2-with-registers-large",
    torchhub="facebookresearch/dinov2:dinov2_vitl14_reg",
))
_register("dinov2r-g14", **_dinov2(
    "ViT-G/14", 1536, 40, 24, registers=4, swiglu=True,
    timm="vit_giant_patch14_reg4_dinov2.lvd142m", hf="facebook/dinov2-with-registers-giant",
    torchhub="facebookresearch/dinov2:dinov2_vitg14_reg",
))

_register("eva-clip-b16", **_eva_clip(
    "EVA02-CLIP-B/16",
    ViTSpec(kind="eva", patch_size=16, embed_dim=768, depth=12, num_heads=12, img_size=224, mlp="swiglu"),
    timm="eva02_base_patch16_clip_224.merged2b", open_clip="EVA02-B-16:merged2b_s8b_b131k",
    weights="EVA02-CLIP-B/16 image tower (Merged-2B, 8B samples)",
))
_register("eva-clip-l14", **_eva_clip(
    "EVA02-CLIP-L/14",
    ViTSpec(kind="eva", patch_size=14, embed_dim=1024, depth=24, num_heads=16, img_size=224, mlp="swiglu"),
    timm="eva02_large_patch14_clip_224.merged2b", open_clip="EVA02-L-14:merged2b_s4b_b131k",
    weights="EVA02-CLIP-L/14 image tower (Merged-2B, 4B samples)",
))
_register("eva-clip-b14", **_eva_clip(
    "EVA02-CLIP-B/16",
    ViTSpec(kind="eva", patch_size=16, embed_dim=768, depth=12, num_heads=12, img_size=224, mlp="swiglu"),
    timm="eva02_base_patch16_clip_224.merged2b", open_clip="EVA02-B-16:merged2b_s8b_b131k",
    weights="EVA02-CLIP-B/16 image tower (Merged-2B, 8B samples)",
    alias_of="eva-clip-b16",
    notes=(
        "The MoSiC paper's tables call its EVA-CLIP base model 'B/14', but the weights the "
        "authors used (timm eva02_base_patch16_clip_224, open_clip EVA02-B-16) have 16x16 "
        "patches, and no EVA-CLIP B/14 exists. This name builds exactly that patch-16 model "
        "(patch_size 16, 14x14 tokens at 224 px) so the paper's runs reproduce; prefer "
        "'eva-clip-b16' in new work."
    ),
))
