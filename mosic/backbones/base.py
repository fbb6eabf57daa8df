"""Backbone interface: a ViT that returns its patch tokens as a (B, h, w, D) grid."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterator, Literal, Sequence

import torch
from torch import nn

from ..errors import WeightsUnavailableError  # noqa: F401  (re-exported)
from ..registry import Registry
from .card import BackboneCard, ViTSpec

TrainBlocks = int | Literal["all"]


class Backbone(nn.Module, ABC):
    """A patch-token feature extractor.

    Subclasses set ``patch_size``, ``embed_dim``, ``num_prefix_tokens`` (CLS + registers),
    ``mean``/``std`` (normalisation of [0, 1] RGB) and implement :meth:`patch_tokens`
    and :meth:`blocks_in_order`. Backbones built from the registry also carry their
    ``card`` (what the name is) and ``spec`` (the architecture actually built), and name
    the key format of :meth:`weights_module`'s state dict in ``weight_format``
    (``"timm"``, ``"hf"`` or ``"open_clip"``; see :mod:`mosic.backbones.formats`).
    """

    patch_size: int
    embed_dim: int
    num_prefix_tokens: int
    mean: Sequence[float] = (0.485, 0.456, 0.406)
    std: Sequence[float] = (0.229, 0.224, 0.225)
    card: BackboneCard | None = None
    spec: ViTSpec | None = None
    weight_format: str | None = None
    #: the registry name: ``BACKBONES.create(name)`` stamps it (subclasses may set a class default)
    name: str = "backbone"

    @abstractmethod
    def patch_tokens(self, images: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Last-block patch tokens after the final norm, prefix tokens removed.

        Args:
            images: (B, 3, H, W) float, normalised with :meth:`preprocess`; H and W
                divisible by ``patch_size``.
            token_mask: optional (B, h, w) bool, True = drop that patch token (masked
                student). Every image must drop the same number of tokens.
        Returns:
            (B, h, w, D) with h = H // patch_size, w = W // patch_size. Dropped
            positions are zeros.
        """

    @abstractmethod
    def blocks_in_order(self) -> Sequence[nn.Module]:
        """The transformer blocks, input to output (used by :meth:`set_trainable`)."""

    def head_modules(self) -> Sequence[nn.Module]:
        """Modules after the last block that train with it (the final norm)."""
        return []

    def weights_module(self) -> nn.Module:
        """The module whose state dict is in ``weight_format`` (what weight files load into)."""
        return self

    def load_weights(self, path, strict: bool = True, prefix: str | None = None):
        """Load a local weights file in any supported key format (detected); ``prefix``
        picks one backbone from a file holding several. Returns a ``LoadReport``; see
        :func:`mosic.backbones.formats.load_backbone_weights`."""
        from .formats import load_backbone_weights

        return load_backbone_weights(self, path, strict=strict, prefix=prefix)

    def forward(self, images: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.patch_tokens(images, token_mask)

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 RGB (..., 3, H, W) -> float normalised with this backbone's mean/std."""
        if frames.dtype != torch.uint8:
            raise ValueError(f"preprocess expects uint8 frames, got {frames.dtype}")
        mean, std = self._normalisation(frames.device)
        return (frames.float().div_(255.0) - mean) / std

    def _normalisation(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(3, 1, 1) mean and std on ``device``, copied there once (no copy, no sync per call)."""
        cache = self.__dict__.setdefault("_normalisation_cache", {})
        if device not in cache:
            cache[device] = tuple(torch.tensor(v, dtype=torch.float32).view(3, 1, 1).to(device) for v in (self.mean, self.std))
        return cache[device]

    def set_trainable(self, train_blocks: TrainBlocks) -> None:
        """Train the last ``train_blocks`` blocks and the final norm, or ``"all"``."""
        if train_blocks == "all":
            self.requires_grad_(True)
            return
        blocks = list(self.blocks_in_order())
        if not isinstance(train_blocks, int) or not 0 <= train_blocks <= len(blocks):
            raise ValueError(
                f"train_blocks must be 'all' or an int in [0, {len(blocks)}], got {train_blocks!r}"
            )
        self.requires_grad_(False)
        for module in blocks[len(blocks) - train_blocks :]:
            module.requires_grad_(True)
        if train_blocks > 0:
            for module in self.head_modules():
                module.requires_grad_(True)

    def trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.named_parameters() if p.requires_grad)

    def check_images(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(
                f"images must be (B, 3, H, W) float, normalised with preprocess(); got {images.dtype} "
                f"{tuple(images.shape)}" + (": call backbone.preprocess(frames) first" if not images.is_floating_point() else "")
            )
        h, w = images.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"image size {h}x{w} is not divisible by the patch size {self.patch_size}; "
                f"resize or crop to a multiple of {self.patch_size}"
            )


BACKBONES: Registry[Backbone] = Registry("backbone", "mosic.backbones")
register_backbone = BACKBONES.register
