"""Typed model cards: what a registered backbone name is, where its weights come from."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Provider = Literal["timm", "hf", "open_clip"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ViTSpec(BaseModel):
    """The architecture of a ViT, independent of the library that implements it.

    ``kind="vit"`` is a plain ViT (timm ``VisionTransformer``, HF ``Dinov2Model``);
    ``kind="eva"`` is EVA-02 (rotary position embedding, SwiGLU MLP with a sub-norm,
    separate q/k/v projections; timm ``Eva``). ``mlp="swiglu"`` on a ``vit`` is DINOv2-g's
    fused SwiGLU. ``num_registers`` extra prefix tokens follow the CLS token.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["vit", "eva"] = "vit"
    patch_size: int = Field(gt=0)
    embed_dim: int = Field(gt=0)
    depth: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    img_size: int = Field(gt=0, description="native resolution (the position embedding's grid)")
    num_registers: int = Field(0, ge=0)
    mlp: Literal["gelu", "swiglu"] = "gelu"
    layer_scale: bool = False

    @property
    def num_prefix_tokens(self) -> int:
        return 1 + self.num_registers

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    def with_overrides(self, **overrides: int) -> "ViTSpec":
        """A copy with some of ``patch_size, embed_dim, depth, num_heads, img_size`` changed."""
        allowed = {"patch_size", "embed_dim", "depth", "num_heads", "img_size"}
        bad = sorted(set(overrides) - allowed)
        if bad:
            raise ValueError(f"cannot override {bad} of a ViT spec; allowed: {sorted(allowed)}")
        return self.model_copy(update=overrides) if overrides else self


class BackboneCard(BaseModel):
    """What a registered backbone name resolves to. Printed by ``mosic list backbones -v``.

    ``sources`` maps each provider that can build this backbone to its identifier there:
    a timm model name with pretrained tag, a Hugging Face repository, or an open_clip
    ``model:pretrained_tag``. ``torchhub`` (when present) names the official
    facebookresearch torch.hub entry whose state-dict format loads and exports.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    family: str = Field(description="dino, dinov2, dinov2r, eva-clip or vit")
    architecture: str = Field(description="human name, e.g. ViT-S/14")
    spec: ViTSpec
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    sources: dict[str, str] = Field(description="provider -> identifier (timm name, HF repo, open_clip name:tag)")
    default_source: Provider = "timm"
    torchhub: str | None = Field(None, description="official torch.hub entry, 'repo:entry'")
    weights: str = Field(description="what pretrained=True downloads")
    licence: str = Field(description="licence of the pretrained weights")
    paper: str
    notes: str = ""
    alias_of: str | None = Field(None, description="set when this name is another name's model")

    @property
    def patch_size(self) -> int:
        return self.spec.patch_size

    @property
    def embed_dim(self) -> int:
        return self.spec.embed_dim

    @property
    def num_prefix_tokens(self) -> int:
        return self.spec.num_prefix_tokens

    @property
    def native_resolution(self) -> int:
        return self.spec.img_size

    def summary(self) -> str:
        """A few lines for the command line."""
        s = self.spec
        prefix = "CLS" + (f" + {s.num_registers} registers" if s.num_registers else "")
        lines = [
            f"{self.name}: {self.architecture} ({self.family})" + (f", same model as {self.alias_of}" if self.alias_of else ""),
            f"  patch {s.patch_size}, dim {s.embed_dim}, depth {s.depth}, heads {s.num_heads}, "
            f"prefix tokens {s.num_prefix_tokens} ({prefix}), native {s.img_size} px",
            f"  mean {self.mean}, std {self.std}",
            "  sources: " + ", ".join(f"{k}={v}" + (" (default)" if k == self.default_source else "") for k, v in self.sources.items()),
            f"  weights: {self.weights}; licence: {self.licence}",
            f"  paper: {self.paper}",
        ]
        if self.torchhub:
            lines.append(f"  torch.hub format: {self.torchhub}")
        if self.notes:
            lines.append(f"  note: {self.notes}")
        return "\n".join(lines)
