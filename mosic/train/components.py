"""Build a run's backbone, objective and tracker from its config."""

from __future__ import annotations

from ..backbones.base import BACKBONES, Backbone
from ..config import BackboneConfig, ObjectiveConfig, TrackerConfig
from ..objectives.base import Objective
from ..objectives.composite import build_objective
from ..trackers.base import TRACKERS, Tracker


def build_backbone(cfg: BackboneConfig) -> Backbone:
    source = {} if cfg.source is None else {"source": cfg.source}
    return BACKBONES.create(cfg.name, pretrained=cfg.pretrained, **source, **cfg.kwargs)


def set_trainable(backbone: Backbone, cfg: BackboneConfig) -> None:
    """``cfg.train_blocks`` blocks train, with the final norm unless ``cfg.train_final_norm`` is False."""
    backbone.set_trainable(cfg.train_blocks)
    if not cfg.train_final_norm and cfg.train_blocks != "all":
        for module in backbone.head_modules():
            module.requires_grad_(False)


def build_run_objective(cfg: ObjectiveConfig, backbone: Backbone) -> Objective:
    """The objective (or weighted sum of objectives) for ``backbone``'s width."""
    fields = cfg.model_dump(exclude={"name", "kwargs"})
    return build_objective(cfg.name, backbone.embed_dim, fields, cfg.kwargs)


def build_tracker(cfg: TrackerConfig) -> Tracker:
    return TRACKERS.create(cfg.name, **cfg.kwargs)
