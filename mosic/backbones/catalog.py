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
_SIZES = {  # letter: (timm word, HF word, embed_dim, depth, heads)
    "s": ("small", "small", 384, 12, 6),
    "b": ("base", "base", 768, 12, 12),
    "l": ("large", "large", 1024, 24, 16),
    "g": ("giant", "giant", 1536, 40, 24),
}


def _cards() -> list[BackboneCard]:
    cards = [
        BackboneCard(
            name=f"vit-{word}",
            family="vit",
            architecture=f"ViT-{short}/16",
            spec=ViTSpec(patch_size=16, embed_dim=dim, depth=12, num_heads=heads, img_size=224),
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            sources={"timm": f"vit_{word}_patch16_224"},
            weights="timm's supervised ImageNet-21k/1k weights (augreg)",
            licence="Apache-2.0",
            paper="Steiner et al., How to train your ViT?, TMLR 2022 (arXiv:2106.10270)",
            notes="Not self-supervised: used with pretrained=False and small overrides for tests and the demo.",
        )
        for word, short, dim, heads in (("tiny", "Ti", 192, 3), ("small", "S", 384, 6))
    ]
    for letter in ("s", "b"):
        word, _, dim, depth, heads = _SIZES[letter]
        cards.append(
            BackboneCard(
                name=f"dino-{letter}16",
                family="dino",
                architecture=f"ViT-{letter.upper()}/16",
                spec=ViTSpec(patch_size=16, embed_dim=dim, depth=depth, num_heads=heads, img_size=224),
                sources={"timm": f"vit_{word}_patch16_224.dino"},
                torchhub=f"facebookresearch/dino:main:dino_vit{letter}16",
                weights=f"DINO ViT-{letter.upper()}/16 (ImageNet-1k, self-supervised) via timm's hub",
                licence="Apache-2.0",
                paper=_DINO,
            )
        )
    for registers in (0, 4):
        for letter, (word, hf_word, dim, depth, heads) in _SIZES.items():
            family = "dinov2r" if registers else "dinov2"
            swiglu = letter == "g"
            cards.append(
                BackboneCard(
                    name=f"{family}-{letter}14",
                    family=family,
                    architecture=f"ViT-{letter.upper()}/14" + (" + 4 registers" if registers else ""),
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
                    sources={
                        "timm": f"vit_{word}_patch14_{'reg4_' if registers else ''}dinov2.lvd142m",
                        "hf": f"facebook/dinov2-{'with-registers-' if registers else ''}{hf_word}",
                    },
                    torchhub=f"facebookresearch/dinov2:dinov2_vit{letter}14{'_reg' if registers else ''}",
                    weights=f"DINOv2{' with registers' if registers else ''} ViT-{letter.upper()}/14 (LVD-142M)",
                    licence="Apache-2.0",
                    paper=_REG if registers else _DINOV2,
                    notes="Native 518 px (37x37 patches); the paper post-pretrains at 224 px"
                    + ("; SwiGLU MLP" if swiglu else "")
                    + (". Registers are prefix tokens: patch_tokens drops them" if registers else "."),
                )
            )
    eva = dict(
        family="eva-clip",
        mean=CLIP_MEAN,
        std=CLIP_STD,
        licence="MIT",
        paper=_EVA,
    )
    b16 = BackboneCard(
        name="eva-clip-b16",
        architecture="EVA02-CLIP-B/16",
        spec=ViTSpec(kind="eva", patch_size=16, embed_dim=768, depth=12, num_heads=12, img_size=224, mlp="swiglu"),
        sources={"timm": "eva02_base_patch16_clip_224.merged2b", "open_clip": "EVA02-B-16:merged2b_s8b_b131k"},
        weights="EVA02-CLIP-B/16 image tower (Merged-2B, 8B samples)",
        notes="Rotary position embedding, SwiGLU MLP; the CLIP projection head is not part of the backbone.",
        **eva,
    )
    cards += [
        b16,
        BackboneCard(
            name="eva-clip-l14",
            architecture="EVA02-CLIP-L/14",
            spec=ViTSpec(kind="eva", patch_size=14, embed_dim=1024, depth=24, num_heads=16, img_size=224, mlp="swiglu"),
            sources={"timm": "eva02_large_patch14_clip_224.merged2b", "open_clip": "EVA02-L-14:merged2b_s4b_b131k"},
            weights="EVA02-CLIP-L/14 image tower (Merged-2B, 4B samples)",
            notes="Rotary position embedding, SwiGLU MLP; the CLIP projection head is not part of the backbone.",
            **eva,
        ),
        b16.model_copy(
            update=dict(
                name="eva-clip-b14",
                alias_of="eva-clip-b16",
                notes=(
                    "The MoSiC paper's tables call its EVA-CLIP base model 'B/14', but the weights the "
                    "authors used (timm eva02_base_patch16_clip_224, open_clip EVA02-B-16) have 16x16 "
                    "patches, and no EVA-CLIP B/14 exists. This name builds exactly that patch-16 model "
                    "(patch_size 16, 14x14 tokens at 224 px) so the paper's runs reproduce; prefer "
                    "'eva-clip-b16' in new work."
                ),
            )
        ),
    ]
    return cards


CARDS: dict[str, BackboneCard] = {card.name: card for card in _cards()}
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


for _card in CARDS.values():
    BACKBONES.register(_card.name, card=_card)(partial(build_backbone, _card))
