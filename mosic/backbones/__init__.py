"""Backbones: ViTs returning (B, h, w, D) patch tokens. See :class:`Backbone`.

Registered names and their cards live in :mod:`mosic.backbones.catalog`; providers are
timm (:class:`TimmViT`), Hugging Face transformers (:class:`HFDinov2`) and open_clip
(:class:`OpenClipEVA`); weight key formats in :mod:`mosic.backbones.formats`.
"""

from . import catalog  # noqa: F401  (registers the built-in backbones)
from .base import BACKBONES, Backbone, WeightsUnavailableError, register_backbone
from .card import BackboneCard, ViTSpec
from .catalog import AliasWarning, build_backbone
from .timm_vit import TimmViT

__all__ = ["AliasWarning", "BACKBONES", "Backbone", "BackboneCard", "TimmViT", "ViTSpec", "WeightsUnavailableError", "build_backbone", "register_backbone"]
