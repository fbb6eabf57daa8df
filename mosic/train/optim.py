"""AdamW with the paper's parameter groups and a cosine schedule with warm-up."""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from ..config import OptimConfig


def parameter_groups(backbone: nn.Module, heads: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Backbone (``backbone_lr``) and head/prototypes (``head_lr``), each split into
    decayed and non-decayed (biases and 1-D parameters) groups; frozen ones left out."""
    groups = []
    for label, module, lr in (("backbone", backbone, cfg.backbone_lr), ("head", heads, cfg.head_lr)):
        decay, no_decay = [], []
        for name, p in module.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
        for params, wd, suffix in ((decay, cfg.weight_decay, ""), (no_decay, 0.0, "_no_decay")):
            if params:
                groups.append({"name": label + suffix, "params": params, "lr": lr, "weight_decay": wd})
    return groups


def build_optimizer(
    groups: Iterable[dict], cfg: OptimConfig, device: torch.device, shard: bool = False
) -> torch.optim.Optimizer:
    """AdamW (fused on CUDA). ``shard=True`` (under torch.distributed) wraps it in
    ZeroRedundancyOptimizer: each process keeps the moments of 1/world of the parameters
    and broadcasts its updated shard after the step (ZeRO-1)."""
    kwargs = {"betas": tuple(cfg.betas), "fused": device.type == "cuda"}
    if shard:
        from torch.distributed.optim import ZeroRedundancyOptimizer

        return ZeroRedundancyOptimizer(list(groups), optimizer_class=torch.optim.AdamW, **kwargs)
    return torch.optim.AdamW(list(groups), **kwargs)


def lr_factor(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Multiplier of every group's peak lr at ``step`` (linear warm-up, then cosine/constant)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, cfg: OptimConfig):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, cfg))
