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


def build_run_objective(cfg: ObjectiveConfig, backbone: Backbone) -> Objective:
    """The objective (or weighted sum of objectives) for ``backbone``'s width."""
    fields = cfg.model_dump(exclude={"name", "kwargs"})
    return build_objective(cfg.name, backbone.embed_dim, fields, cfg.kwargs)


def build_tracker(cfg: TrackerConfig) -> Tracker:
    return TRACKERS.create(cfg.name, **cfg.kwargs)
