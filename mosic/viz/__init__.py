"""Visualisation: tracks and label maps over video frames (MP4/GIF/PNG), training curves (PNG).

The same functions back ``mosic viz`` (see docs/viz.md)::

    from mosic.viz import draw_tracks, overlay_labels, cluster_maps, write_video, plot_curves

Names load lazily, so ``import mosic.viz`` (and the CLI's parser) stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "draw_tracks": "tracks",
    "point_colors": "tracks",
    "overlay_labels": "maps",
    "cluster_maps": "maps",
    "label_colors": "maps",
    "upsample_labels": "maps",
    "write_video": "writers",
    "contact_sheet": "writers",
    "upscale": "writers",
    "plot_curves": "curves",
    "read_metrics": "curves",
    "read_clip": "command",
    "track_clip": "command",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
