"""The open_clip provider: the EVA-02 CLIP image tower (a timm ``Eva`` trunk inside open_clip)."""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import WeightsUnavailableError
from .card import CLIP_MEAN, CLIP_STD
from .timm_vit import TimmViT


class OpenClipEVA(TimmViT):
    """EVA-CLIP's image tower as open_clip builds and downloads it.

    open_clip wraps a timm ``Eva`` as ``visual.trunk`` (plus a CLIP projection that
    patch tokens do not use). This provider resolves the trunk from open_clip's model
    config, builds it with dynamic input size, and with ``pretrained=True`` copies the
    trunk weights from ``open_clip.create_model(model, pretrained=tag)``. Weight files
    are read in open_clip's key format (``visual.trunk.*``; text tower ignored).

    Args:
        model: ``"open_clip_model_name:pretrained_tag"``, e.g. ``"EVA02-B-16:merged2b_s8b_b131k"``.
        pretrained: False (random init) or True (open_clip's hub download).
        **overrides: ``img_size``, ``depth``, ``embed_dim``, ``num_heads``... for small
            random test models (timm keyword arguments of the trunk).
    """

    weight_format = "open_clip"

    def __init__(self, model: str, pretrained: bool = False, **overrides: Any):
        import open_clip

        name, _, tag = model.partition(":")
        config = open_clip.get_model_config(name)
        vision = (config or {}).get("vision_cfg", {})
        arch = vision.get("timm_model_name")
        if arch is None:
            raise ValueError(f"open_clip model {name!r} has no timm image trunk; mosic supports open_clip's EVA-02 towers")
        overrides.setdefault("img_size", int(vision.get("image_size", 224)))
        super().__init__(arch, pretrained=False, **overrides)
        self.open_clip_model = model
        self.mean, self.std = CLIP_MEAN, CLIP_STD
        object.__setattr__(self, "_weights_view", _OpenClipView(self.model))  # not a submodule: no duplicate state
        if pretrained:
            if not tag:
                raise ValueError(f"pretrained=True needs a pretrained tag: 'model:tag', got {model!r}")
            self._load_open_clip_hub(name, tag)

    def weights_module(self) -> nn.Module:
        return self._weights_view

    def _load_open_clip_hub(self, name: str, tag: str) -> None:
        import open_clip

        try:
            clip = open_clip.create_model(name, pretrained=tag)
        except Exception as exc:
            raise WeightsUnavailableError(
                f"could not download open_clip weights {name}:{tag} ({type(exc).__name__}: {exc}). "
                "Offline? Pass a local file instead: pretrained='/path/to/open_clip_pytorch_model.bin' "
                "(or .safetensors; open_clip, timm and MoSiC key formats are detected), or pretrained=False."
            ) from exc
        state = {k: v for k, v in clip.visual.trunk.state_dict().items() if not k.startswith("head.")}
        self.model.load_state_dict(state, strict=True)


class _OpenClipView(nn.Module):
    """Presents a trunk under open_clip's key names (``visual.trunk.*``)."""

    def __init__(self, trunk: nn.Module):
        super().__init__()
        self.visual = nn.Module()
        self.visual.trunk = trunk
