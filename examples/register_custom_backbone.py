"""Add your own backbone to mosic, two ways, and post-pretrain each on synthetic videos.

(a) ``deit-s16``: any timm ViT with a CLS token under a new name. A ``BackboneCard`` says
    what the name is (architecture, weights, licence, paper); :func:`build_backbone` then
    gives it everything the built-in names have: random init, ``pretrained=True`` (timm's
    hub), ``pretrained="file"`` (a local file in any detected key format) and the
    architecture overrides used here for a small model.
(b) ``plain-vit-p8``: a ``mosic.Backbone`` subclass written below, a plain pre-norm ViT in
    a few lines. It fulfils the contract: (B, h, w, D) patch tokens, ``token_mask`` drops
    tokens (the masked student) and returns zeros there, ``blocks_in_order`` and
    ``head_modules`` drive the train-last-N-blocks policy. A card is optional; this one
    has none.

Both are then post-pretrained by name with ``PostPretrainer``, from random weights (no
downloads), on synthetic videos with the ``oracle`` tracker (their exact tracks; real
videos take ``lk``, RAFT or CoTracker).

Usage::

    python examples/register_custom_backbone.py --smoke   # tiny models, a few steps, CPU, well under a minute
    python examples/register_custom_backbone.py           # 300 steps each (under 5 min on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

import mosic
from mosic.backbones import BackboneCard, ViTSpec, build_backbone
from mosic.backbones.weights import load_state_dict_file
from mosic.data import SyntheticVideos

# ---- (a) a timm ViT under a new name --------------------------------------------------------

DEIT_S16 = BackboneCard(
    name="deit-s16",
    family="vit",
    architecture="ViT-S/16 (DeiT)",
    spec=ViTSpec(patch_size=16, embed_dim=384, depth=12, num_heads=6, img_size=224),
    sources={"timm": "deit_small_patch16_224.fb_in1k"},
    weights="DeiT-S/16, supervised on ImageNet-1k, via timm's hub",
    licence="Apache-2.0",
    paper="Touvron et al., Training data-efficient image transformers & distillation through attention, "
    "ICML 2021 (arXiv:2012.12877)",
    notes="Supervised, not self-supervised; registered here as an example of adding a timm ViT.",
)


@mosic.register_backbone("deit-s16", card=DEIT_S16)
def deit_s16(pretrained: bool | str = False, **kwargs) -> mosic.Backbone:
    return build_backbone(DEIT_S16, pretrained, **kwargs)


# ---- (b) your own nn.Module -------------------------------------------------------------------


def sincos_position_embedding(h: int, w: int, dim: int, device: torch.device) -> torch.Tensor:
    """(h * w, dim) fixed 2-D sine-cosine position embedding (works for any grid)."""
    y, x = torch.meshgrid(
        torch.arange(h, dtype=torch.float32, device=device),
        torch.arange(w, dtype=torch.float32, device=device),
        indexing="ij",
    )
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float32, device=device) / (dim // 4))
    angles = [c.reshape(-1, 1) * omega for c in (y, x)]
    return torch.cat([f(a) for a in angles for f in (torch.sin, torch.cos)], dim=1)


@mosic.register_backbone("plain-vit-p8")
class PlainViT(mosic.Backbone):
    """A plain pre-norm ViT: conv patch embedding, CLS token, sine-cosine positions,
    ``nn.TransformerEncoderLayer`` blocks, final LayerNorm.

    ``pretrained`` is False (random init) or a local file saved from this class's
    ``state_dict()``; there are no hub weights.
    """

    num_prefix_tokens = 1
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)

    def __init__(self, pretrained: bool | str = False, patch_size: int = 8, embed_dim: int = 128,
                 depth: int = 4, num_heads: int = 4):
        super().__init__()
        if embed_dim % 4:
            raise ValueError(f"embed_dim must be divisible by 4 for the 2-D sine-cosine embedding, got {embed_dim}")
        self.patch_size, self.embed_dim = patch_size, embed_dim
        self.patch_embed = nn.Conv2d(3, embed_dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim) * 0.02)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(embed_dim, num_heads, 4 * embed_dim, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim)
        if pretrained is True:
            raise ValueError("plain-vit-p8 has no hub weights: pass pretrained=False or a local state_dict file")
        if pretrained:
            load_state_dict_file(self, pretrained)

    def blocks_in_order(self):
        return list(self.blocks)

    def head_modules(self):
        return [self.norm]

    def patch_tokens(self, images: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.check_images(images)
        x = self.patch_embed(images)  # (B, D, h, w)
        b, d, h, w = x.shape
        x = x.flatten(2).transpose(1, 2) + sincos_position_embedding(h, w, d, x.device).to(x.dtype)
        if token_mask is not None:
            kept = ~token_mask.reshape(b, h * w)
            if not bool((kept.sum(1) == kept[0].sum()).all()):
                raise ValueError("token_mask must drop the same number of tokens in every image")
            keep = kept.nonzero()[:, 1].view(b, -1, 1).expand(-1, -1, d)  # kept positions, in order
            x = torch.gather(x, 1, keep)
        x = torch.cat([self.cls_token.expand(b, -1, -1).to(x.dtype), x], dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)[:, self.num_prefix_tokens :]
        if token_mask is not None:
            x = x.new_zeros(b, h * w, d).scatter(1, keep, x)
        return x.reshape(b, h, w, d)


# ---- post-pretrain both by name -------------------------------------------------------------

#: per mode: architecture overrides of each backbone, steps, training videos
SETTINGS = {
    "smoke": {
        "backbones": {
            "deit-s16": {"depth": 4, "embed_dim": 64, "num_heads": 2, "img_size": 64},
            "plain-vit-p8": {"depth": 4, "embed_dim": 64, "num_heads": 2},
        },
        "steps": 3,
        "videos": {"num_videos": 8, "num_frames": 12, "size": 64},
    },
    "full": {
        "backbones": {
            "deit-s16": {"depth": 6, "embed_dim": 192, "num_heads": 3, "img_size": 64},
            "plain-vit-p8": {"depth": 6, "embed_dim": 192, "num_heads": 3},
        },
        "steps": 300,
        "videos": {"num_videos": 64, "num_frames": 24, "size": 64},
    },
}


def recipe(size: int, smoke: bool) -> dict:
    """One RunConfig dict for both backbones: train the last 2 blocks (paper default)."""
    return {
        "backbone": {"pretrained": False, "train_blocks": 2},
        "tracker": {"name": "oracle", "grid_size": 4 if smoke else 8},
        "objective": {"head_hidden_dims": [64] if smoke else [512, 512], "projection_dim": 32 if smoke else 256,
                      "num_prototypes": 16 if smoke else 100},
        "data": {"num_frames": 4 if smoke else 8, "frame_stride": 2, "size": size,
                 "global_batch_size": 4 if smoke else 8, "num_workers": 0 if smoke else 1},
        "optim": {"backbone_lr": 1e-4, "head_lr": 1e-3 if smoke else 1e-4},
        "train": {"log_every": 1 if smoke else 25, "progress": False},
    }


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny models, a few steps (CPU, well under a minute)")
    parser.add_argument("--steps", type=int, help="steps per backbone (default 300, or 3 with --smoke)")
    parser.add_argument("--out", default="runs/custom_backbones", help="one run folder per backbone goes here")
    args = parser.parse_args(argv)
    settings = SETTINGS["smoke" if args.smoke else "full"]
    steps = args.steps or settings["steps"]
    videos = SyntheticVideos(seed=0, **settings["videos"])

    results = {}
    for name, arch in settings["backbones"].items():
        card = mosic.BACKBONES.card(name)
        factory = mosic.BACKBONES.get(name).factory
        print(card.summary() if card is not None else f"{name}: {factory.__qualname__}, registered without a card")
        config = mosic.RunConfig.from_dict(recipe(videos.size[0], args.smoke)).with_overrides(
            {"backbone.name": name, "backbone.kwargs": arch, "train.out_dir": str(Path(args.out) / name)}
        )
        trainer = mosic.PostPretrainer(config=config)
        student = trainer.student
        blocks = len(student.blocks_in_order())
        total = sum(p.numel() for p in student.parameters())
        trainable = sum(p.numel() for _, p in student.trainable_parameters())
        print(
            f"created {name}: {type(student).__name__}, patch {student.patch_size}, dim {student.embed_dim}, "
            f"{blocks} blocks; training the last {config.backbone.train_blocks} + final norm = "
            f"{trainable:,} of {total:,} backbone parameters"
        )
        start = time.perf_counter()
        trainer.fit(videos, max_steps=steps)
        seconds = time.perf_counter() - start
        first, last = trainer.history[0]["loss"], trainer.history[-1]["loss"]
        print(f"trained {name}: {trainer.step} steps in {seconds:.1f} s, loss {first:.3f} -> {last:.3f}\n", flush=True)
        results[name] = {"steps": trainer.step, "seconds": seconds, "first_loss": first, "final_loss": last}
    return results


if __name__ == "__main__":
    main()
