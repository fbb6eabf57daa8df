"""Errors shared across mosic's components."""

from __future__ import annotations

import os


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights (a backbone's or a tracker's) could not be downloaded (offline,
    no access); the message says how to pass a local file instead."""


class VideoReadError(RuntimeError):
    """A video (or frame) file could not be opened or decoded: unreadable, corrupt, not a video."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"cannot read {self.path}: the file is unreadable or corrupt ({reason})")

    def __reduce__(self):
        return type(self), (self.path, self.reason)


class UntrackedStartError(ValueError):
    """A clip start a track cache does not hold (a cache planned for other runs)."""
