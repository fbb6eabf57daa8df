"""What training reads videos through: the :class:`VideoSource` protocol.

A source is an indexable collection of videos. Frames come back as (T, H, W, 3) uint8
RGB numpy arrays. Sources with ground truth (synthetic videos) also return a
:class:`GroundTruth` per video. Coordinates are (x, y) pixels of the source frames
(see :mod:`mosic.trackers.base`).

A video that cannot be read makes ``num_frames`` or ``read_frames`` raise
:class:`mosic.errors.VideoReadError` (its ``path`` and a ``reason`` a user
understands); training skips such videos (:class:`mosic.data.clips.ClipDataset`). A source
may also have ``verify(index) -> int``, decoding every frame of a video (``mosic check-data
--full``); :func:`mosic.data.video_files.verify_video` falls back to chunked ``read_frames``.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class GroundTruth(Protocol):
    """Exact annotations of one video (synthetic sources only). Must be picklable."""

    def tracks(self, frame_indices: Sequence[int], queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ground-truth tracks.

        Args:
            frame_indices: the video frames of the clip, length T.
            queries: (N, 3) rows (q, x, y): q indexes ``frame_indices`` (0 <= q < T),
                (x, y) are source pixels on that frame.
        Returns:
            xy (T, N, 2) float32 source pixels, visible (T, N) bool.
        """
        ...

    def instance_masks(self, frame_indices: Sequence[int]) -> np.ndarray:
        """(T, H, W) int64: 0 background, i >= 1 object i."""
        ...

    def class_masks(self, frame_indices: Sequence[int]) -> np.ndarray:
        """(T, H, W) int64 semantic class ids, 0 = background."""
        ...


@runtime_checkable
class VideoSource(Protocol):
    """An indexable set of videos."""

    def __len__(self) -> int: ...

    def video_name(self, index: int) -> str:
        """A stable human-readable id (file path, folder name, ``synthetic/seed0/3``)."""
        ...

    def num_frames(self, index: int) -> int: ...

    def fps(self, index: int) -> float | None:
        """Frames per second, or None when unknown (frame folders)."""
        ...

    def read_frames(self, index: int, frame_indices: Sequence[int]) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB frames at ``frame_indices``; VideoReadError for a bad video."""
        ...

    def ground_truth(self, index: int) -> GroundTruth | None:
        """Annotations, or None for real videos."""
        ...


def decoder_name(source: VideoSource, index: int) -> str:
    """The decoder that reads video ``index`` of ``source`` ("pyav", "torchcodec", "decord",
    "frames"; the source's class name for sources that do not say); provenance for caches."""
    name = getattr(source, "decoder_name", None)
    return name(index) if callable(name) else type(source).__name__
