"""Backbones: ViTs returning (B, h, w, D) patch tokens. See :class:`Backbone`."""

from . import timm_vit  # noqa: F401  (registers the built-in backbones)
from .base import BACKBONES, Backbone, register_backbone
from .timm_vit import TimmViT

__all__ = ["BACKBONES", "Backbone", "TimmViT", "register_backbone"]
