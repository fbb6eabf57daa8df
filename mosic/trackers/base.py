"""Tracker interface (the :class:`~mosic.tracks.Tracks` type and the query grid live in
:mod:`mosic.tracks`; they are re-exported here)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

import torch

from ..registry import Registry
from ..tracks import Tracks, query_grid

__all__ = ["TRACKERS", "Tracker", "Tracks", "check_track_inputs", "query_grid", "register_tracker"]


class Tracker(ABC):
    """Follows query points through videos.

    Subclasses implement :meth:`track`. ``clips`` carries per-video metadata
    (:class:`mosic.data.ClipMeta`) for trackers that need more than pixels (the oracle);
    ordinary trackers ignore it.
    """

    #: the registry name: ``TRACKERS.create(name)`` stamps it on the instance; a subclass sets
    #: the class default, the name of instances made directly from the class
    name: str = "tracker"

    @abstractmethod
    def track(
        self,
        video: torch.Tensor,
        queries: torch.Tensor,
        *,
        clips: Sequence[Any] | None = None,
    ) -> Tracks:
        """Track ``queries`` through ``video``.

        Args:
            video: (B, T, 3, H, W) uint8 RGB.
            queries: (B, N, 3) float rows (t, x, y): frame index and pixel position.
            clips: optional per-video metadata, length B.
        Returns:
            :class:`Tracks` with xy (B, T, N, 2) in the pixels of ``video`` and visible (B, T, N).
        """

    def __call__(self, video: torch.Tensor, queries: torch.Tensor, **kwargs: Any) -> Tracks:
        check_track_inputs(video, queries)
        return self.track(video, queries, **kwargs)

    def track_clips(
        self,
        frames: torch.Tensor,
        clip_frames: torch.Tensor,
        queries: torch.Tensor,
        *,
        clips: Sequence[Any] | None = None,
        batch_size: int = 8,
    ) -> Tracks:
        """Track several clips of one video that share frames (what ``mosic track`` does).

        Args:
            frames: (F, 3, H, W) uint8, the frames of the video the clips read.
            clip_frames: (S, T) int64 indices into ``frames``: clip s is ``frames[clip_frames[s]]``.
            queries: (S, N, 3) rows (t, x, y) per clip.
            clips: optional metadata per clip, length S.
            batch_size: clips tracked together.
        Returns:
            :class:`Tracks` xy (S, T, N, 2), visible (S, T, N): what :meth:`track` gives for
            each clip. This default tracks ``batch_size`` clips at a time; trackers whose
            per-frame work does not depend on the queries do it once per frame (CoTracker3).
        """
        _check_clip_inputs(frames, clip_frames, queries)
        parts = []
        for first in range(0, clip_frames.shape[0], batch_size):
            part = slice(first, first + batch_size)
            metas = None if clips is None else list(clips[part])
            parts.append(self(frames[clip_frames[part]], queries[part], clips=metas))
        return Tracks.cat(parts)

    def to(self, device: torch.device | str) -> "Tracker":
        """Move any weights to ``device`` (no-op for weight-free trackers)."""
        return self


def check_track_inputs(video: torch.Tensor, queries: torch.Tensor) -> None:
    """Fail fast with a readable message on malformed tracker inputs."""
    if not isinstance(video, torch.Tensor) or video.ndim != 5 or video.shape[2] != 3:
        shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
        raise ValueError(f"video must be a (B, T, 3, H, W) uint8 tensor, got {shape}")
    if video.dtype != torch.uint8:
        raise ValueError(f"video must be uint8 (0..255), got {video.dtype}")
    if queries.ndim != 3 or queries.shape[-1] != 3 or queries.shape[0] != video.shape[0]:
        raise ValueError(
            f"queries must be (B={video.shape[0]}, N, 3) rows (t, x, y), got {tuple(queries.shape)}"
        )


TRACKERS: Registry[Tracker] = Registry("tracker", "mosic.trackers")
register_tracker = TRACKERS.register


def _check_clip_inputs(frames: torch.Tensor, clip_frames: torch.Tensor, queries: torch.Tensor) -> None:
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[1] != 3 or frames.dtype != torch.uint8:
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise ValueError(f"frames must be a (F, 3, H, W) uint8 tensor, got {shape}")
    if clip_frames.ndim != 2 or clip_frames.dtype != torch.int64:
        raise ValueError(f"clip_frames must be (S, T) int64 indices into frames, got {tuple(clip_frames.shape)} {clip_frames.dtype}")
    if clip_frames.numel() and (clip_frames.min() < 0 or clip_frames.max() >= frames.shape[0]):
        raise ValueError(f"clip_frames must index the {frames.shape[0]} frames, got {clip_frames.min()}..{clip_frames.max()}")
    if queries.ndim != 3 or queries.shape[-1] != 3 or queries.shape[0] != clip_frames.shape[0]:
        raise ValueError(f"queries must be (S={clip_frames.shape[0]}, N, 3) rows (t, x, y), got {tuple(queries.shape)}")
