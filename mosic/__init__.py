"""mosic: post-pretrain vision backbones on unlabeled video with motion (MoSiC, ICCV 2025).

    from mosic import PostPretrainer
    PostPretrainer(backbone="dinov2-s14").fit("videos/")

Coordinates are (x, y) pixels everywhere: x to the right, y down, the centre of pixel
(row i, column j) at (x=j, y=i).
"""

from .backbones import BACKBONES, Backbone, register_backbone
from .config import ConfigError, RunConfig
from .objectives import OBJECTIVES, Objective, register_objective
from .registry import UnknownNameError
from .trackers import TRACKERS, Tracker, Tracks, query_grid, register_tracker
from .train import PostPretrainer

from .version import __version__


def create_backbone(name: str, **kwargs) -> Backbone:
    """Build a registered backbone, e.g. ``create_backbone("vit-tiny", pretrained=False)``."""
    return BACKBONES.create(name, **kwargs)


def create_tracker(name: str, **kwargs) -> Tracker:
    return TRACKERS.create(name, **kwargs)


def create_objective(name: str, embed_dim: int, **kwargs) -> Objective:
    """Build a registered objective or a weighted sum (``"mosic + 0.1 correspondence"``)
    for a backbone of width ``embed_dim``. ``kwargs`` are the objective's arguments; for a
    sum, each term receives those it accepts."""
    from .objectives.composite import build_objective, is_composite

    if is_composite(name):
        return build_objective(name, embed_dim, fields=kwargs)
    return build_objective(name, embed_dim, kwargs=kwargs)


def list_backbones(pattern: str | None = None) -> list[str]:
    return BACKBONES.list(pattern)


def list_trackers(pattern: str | None = None) -> list[str]:
    return TRACKERS.list(pattern)


def list_objectives(pattern: str | None = None) -> list[str]:
    return OBJECTIVES.list(pattern)


__all__ = [
    "Backbone",
    "ConfigError",
    "Objective",
    "PostPretrainer",
    "RunConfig",
    "Tracker",
    "Tracks",
    "__version__",
    "UnknownNameError",
    "create_backbone",
    "create_objective",
    "create_tracker",
    "list_backbones",
    "list_objectives",
    "list_trackers",
    "query_grid",
    "register_backbone",
    "register_objective",
    "register_tracker",
]
