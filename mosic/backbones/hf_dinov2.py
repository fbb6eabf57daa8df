"""The Hugging Face provider: DINOv2 (``Dinov2Model``) and DINOv2 with registers
(``Dinov2WithRegistersModel``) from transformers."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .base import Backbone, TrainBlocks, WeightsUnavailableError
from .card import IMAGENET_MEAN, IMAGENET_STD, ViTSpec
from .token_drop import drop_tokens, kept_indices, restore_tokens


class HFDinov2(Backbone):
    """A transformers DINOv2 model exposing patch tokens.

    Args:
        spec: the architecture; ``kind="vit"`` with layer scale (every DINOv2 has it),
            ``num_registers > 0`` selects ``Dinov2WithRegistersModel``, ``mlp="swiglu"``
            DINOv2-g's SwiGLU MLP.
        repo: Hugging Face repository, e.g. ``"facebook/dinov2-small"`` (for ``pretrained=True``).
        pretrained: False (random init from a config built from ``spec``), True
            (``from_pretrained(repo)``) or a path to a local weights file in any format
            :mod:`mosic.backbones.formats` detects.
        mean, std: normalisation of [0, 1] RGB.

    The model attends with PyTorch's SDPA. Position embeddings are interpolated by
    transformers for inputs off the native grid (bicubic; with antialias for the
    registers model, as in transformers).
    """

    weight_format = "hf"

    def __init__(
        self,
        spec: ViTSpec,
        repo: str | None = None,
        pretrained: bool | str | Path = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        super().__init__()
        if spec.kind != "vit" or not spec.layer_scale:
            raise ValueError(
                f"the Hugging Face DINOv2 provider builds plain ViTs with layer scale; got kind={spec.kind!r}, "
                f"layer_scale={spec.layer_scale} (use the timm provider for other ViTs)"
            )
        from transformers import Dinov2Model, Dinov2WithRegistersModel

        model_class = Dinov2WithRegistersModel if spec.num_registers > 0 else Dinov2Model
        if pretrained is True:
            if repo is None:
                raise ValueError("pretrained=True needs the Hugging Face repository: repo='facebook/dinov2-...'")
            try:
                self.model = model_class.from_pretrained(repo, attn_implementation="sdpa")
            except Exception as exc:
                raise WeightsUnavailableError(
                    f"could not download the Hugging Face model {repo!r} ({type(exc).__name__}: {exc}). "
                    "Offline? Pass a local weights file instead: pretrained='/path/to/weights.safetensors' "
                    "(or .pth, or the repository's model.safetensors; HF, timm, torch.hub and MoSiC key "
                    "formats are detected), or pretrained=False for random initialisation."
                ) from exc
            _check_config(self.model.config, spec, repo)
        else:
            self.model = model_class(hf_config(spec))
        self.spec = spec
        self.patch_size = spec.patch_size
        self.embed_dim = spec.embed_dim
        self.num_prefix_tokens = spec.num_prefix_tokens
        self.mean, self.std = tuple(mean), tuple(std)
        self._freeze_mask_token()
        if isinstance(pretrained, (str, Path)):
            self.load_weights(pretrained)

    def weights_module(self) -> nn.Module:
        return self.model

    def blocks_in_order(self) -> Sequence[nn.Module]:
        return list(self.model.encoder.layer)

    def head_modules(self) -> Sequence[nn.Module]:
        return [self.model.layernorm]

    def set_trainable(self, train_blocks: TrainBlocks) -> None:
        super().set_trainable(train_blocks)
        self._freeze_mask_token()

    def _freeze_mask_token(self) -> None:
        # patch_tokens never uses it: a trainable unused parameter would break DDP
        self.model.embeddings.mask_token.requires_grad_(False)

    def patch_tokens(self, images: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.check_images(images)
        m = self.model
        b = images.shape[0]
        h, w = images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
        x = m.embeddings(images)  # (B, P + h*w, D): CLS, registers, patches (row-major)
        p = self.num_prefix_tokens
        keep = None
        if token_mask is not None:
            keep = kept_indices(token_mask, b, h, w, x.device)  # (B, L_keep)
            x = drop_tokens(x, keep, p)
        x = m.encoder(x).last_hidden_state
        x = m.layernorm(x)[:, p:]
        if keep is not None:
            x = restore_tokens(x, keep, h * w)
        return x.reshape(b, h, w, -1)


def hf_config(spec: ViTSpec):
    """A transformers config for ``spec`` whose MLP width equals timm's for the same spec.

    timm's DINOv2 MLP hidden width is 4 D (GELU) or ``int(D * 5.33334) // 2`` (DINOv2-g's
    packed SwiGLU); transformers' is ``int(D * mlp_ratio)``, for SwiGLU rounded to two
    thirds and a multiple of 8. Widths transformers cannot express raise ValueError.
    """
    from transformers import Dinov2Config, Dinov2WithRegistersConfig

    d = spec.embed_dim
    if spec.mlp == "swiglu":
        timm_hidden = int(d * (2.66667 * 2)) // 2
        hf_hidden = (int(d * 4 * 2 / 3) + 7) // 8 * 8
        if hf_hidden != timm_hidden:
            raise ValueError(
                f"embed_dim {d}: transformers' SwiGLU width {hf_hidden} differs from timm's {timm_hidden}; "
                "choose an embed_dim divisible by 3 (e.g. 96, 1536)"
            )
    common = dict(
        hidden_size=d,
        num_hidden_layers=spec.depth,
        num_attention_heads=spec.num_heads,
        patch_size=spec.patch_size,
        image_size=spec.img_size,
        mlp_ratio=4,
        use_swiglu_ffn=spec.mlp == "swiglu",
        layerscale_value=1e-5,  # timm's DINOv2 init_values
        layer_norm_eps=1e-6,
        attn_implementation="sdpa",
    )
    if spec.num_registers > 0:
        return Dinov2WithRegistersConfig(num_register_tokens=spec.num_registers, **common)
    return Dinov2Config(**common)


def _check_config(config, spec: ViTSpec, repo: str) -> None:
    """Raise when a downloaded model is not the architecture ``spec`` describes."""
    patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
    got = {
        "embed_dim": config.hidden_size,
        "depth": config.num_hidden_layers,
        "num_heads": config.num_attention_heads,
        "patch_size": patch,
        "num_registers": getattr(config, "num_register_tokens", 0),
        "mlp": "swiglu" if config.use_swiglu_ffn else "gelu",
    }
    wrong = {k: (v, getattr(spec, k)) for k, v in got.items() if v != getattr(spec, k)}
    if wrong:
        shown = ", ".join(f"{k}: repo {a} vs spec {b}" for k, (a, b) in wrong.items())
        raise ValueError(f"Hugging Face model {repo!r} does not match the backbone's architecture ({shown})")
