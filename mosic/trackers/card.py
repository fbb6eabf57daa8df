"""Typed tracker cards: what a registered tracker name is, what it expects, where its weights come from.

Every built-in tracker is registered with a :class:`TrackerCard` (``mosic.TRACKERS.card(name)``,
printed by ``mosic list trackers -v``); the cards themselves live in
:mod:`mosic.trackers.catalog`. The weight URLs and checksums the download code uses are
read from the cards (:attr:`TrackerCard.weights`), so a card is the one place a
tracker's weights are named.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["TrackerCard", "TrackerInput", "TrackerWeights", "WeightsChecksumError"]


class WeightsChecksumError(ValueError):
    """A weights file does not match the sha256 its card records."""


class TrackerWeights(BaseModel):
    """One official weights file: where it is downloaded from and how to check it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(description="what weights=None downloads (cached in $TORCH_HOME/hub/checkpoints)")
    sha256: str | None = Field(
        None,
        description="hex sha256 of the file, or its leading hex digits where only those are published "
        "(torchvision names its files with the first 8); None: not published",
    )
    description: str = Field(description="what the weights are, e.g. what they were trained on")

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-f]{8,64}", value):
            raise ValueError(f"sha256 must be 8 to 64 lowercase hex digits, got {value!r}")
        return value

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    def verify(self, path: str | Path) -> None:
        """Raise :class:`WeightsChecksumError` when ``path``'s sha256 disagrees with
        :attr:`sha256` (a prefix is compared as a prefix); no-op when none is recorded."""
        if self.sha256 is None:
            return
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        actual = digest.hexdigest()
        if not actual.startswith(self.sha256):
            raise WeightsChecksumError(
                f"{path} has sha256 {actual[:16]}..., but {self.filename} from {self.url} has sha256 "
                f"{self.sha256[:16]}...: the file is corrupt or not the official one. Delete it and download it again."
            )


class TrackerInput(BaseModel):
    """What a tracker is called with and what it does to the frames before its model sees them.

    Every mosic tracker takes (B, T, 3, H, W) uint8 RGB frames in 0..255 (checked by
    :meth:`mosic.Tracker.__call__`) and returns positions in the pixels of that input;
    ``resolution`` and ``model_input`` describe the internal working size and format.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    layout: str = "(B, T, 3, H, W)"
    dtype: Literal["uint8"] = "uint8"
    color: Literal["RGB"] = "RGB"
    value_range: tuple[int, int] = (0, 255)
    resolution: str = Field(description="the resolution it runs at, e.g. 'resized to 384x512'")
    model_input: str = Field(description="what its model sees, e.g. 'float in [-1, 1]'")
    needs_clip_metadata: bool = Field(False, description="needs clips= metadata (the oracle's ground truth)")

    def summary(self) -> str:
        lo, hi = self.value_range
        return f"{self.layout} {self.dtype} {self.color} {lo}..{hi}; runs at: {self.resolution}; model sees: {self.model_input}"


class TrackerCard(BaseModel):
    """What a registered tracker name resolves to. Printed by ``mosic list trackers -v``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    family: str = Field(description="cotracker, raft, lucas-kanade or oracle")
    description: str
    mode: Literal["online", "offline"] = Field(
        description="online: causal, frame by frame or in sliding windows that only look back; "
        "offline: sees the whole clip (or large windows of it) at once"
    )
    input: TrackerInput
    weights: TrackerWeights | None = Field(None, description="the official weights weights=None loads; None: weight-free")
    licence: str = Field(description="licence of the weights (weight-free trackers: 'no weights')")
    paper: str
    notes: str = ""

    @property
    def online(self) -> bool:
        return self.mode == "online"

    def summary(self) -> str:
        """A few lines for the command line."""
        lines = [
            f"{self.name}: {self.description} ({self.family}, {self.mode})",
            f"  input: {self.input.summary()}",
        ]
        if self.input.needs_clip_metadata:
            lines.append("  needs clip metadata (clips=...)")
        if self.weights is None:
            lines.append(f"  weights: none; licence: {self.licence}")
        else:
            w = self.weights
            lines.append(f"  weights: {w.url} ({w.description}); licence: {self.licence}")
            digest = "not published" if w.sha256 is None else w.sha256 + ("" if len(w.sha256) == 64 else "... (prefix)")
            lines.append(f"  sha256: {digest}")
        lines.append(f"  paper: {self.paper}")
        if self.notes:
            lines.append(f"  note: {self.notes}")
        return "\n".join(lines)
