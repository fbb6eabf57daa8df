"""Errors shared across mosic's components."""

from __future__ import annotations


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights (a backbone's or a tracker's) could not be downloaded (offline,
    no access); the message says how to pass a local file instead."""
