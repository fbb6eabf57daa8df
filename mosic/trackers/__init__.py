"""Point trackers: video (B, T, 3, H, W) uint8 + queries (B, N, 3) -> :class:`Tracks`."""

from . import oracle  # noqa: F401  (registers the built-in trackers)
from . import lucas_kanade  # noqa: F401  (registers 'lk')
from . import raft  # noqa: F401  (registers 'raft' and 'raft-small')
from . import cotracker  # noqa: F401  (registers 'cotracker3' and 'cotracker3-online')
from ..tracks import Tracks, query_grid
from .base import TRACKERS, Tracker, register_tracker
from .card import TrackerCard, TrackerInput, TrackerWeights
from .oracle import OracleTracker

__all__ = [
    "TRACKERS",
    "OracleTracker",
    "Tracker",
    "TrackerCard",
    "TrackerInput",
    "TrackerWeights",
    "Tracks",
    "query_grid",
    "register_tracker",
]
