"""CoTracker point trackers (independent implementation, official-checkpoint compatible).

Importing this package registers ``cotracker3`` (offline) and ``cotracker3-online``.
The official weights are CC BY-NC 4.0 (non-commercial); see :mod:`.weights`.
"""

from .cotracker3 import CoTracker3Base, CoTracker3Offline, CoTracker3Online
from .tracker import CoTracker3Tracker, CoTrackerTrackerBase
from .weights import WEIGHT_URLS, CoTrackerWeightsUnavailable, load_cotracker_weights
from . import cotracker2  # noqa: F401,E402  (registers 'cotracker2')

__all__ = [
    "WEIGHT_URLS",
    "CoTracker3Base",
    "CoTracker3Offline",
    "CoTracker3Online",
    "CoTracker3Tracker",
    "CoTrackerTrackerBase",
    "CoTrackerWeightsUnavailable",
    "load_cotracker_weights",
]
