"""The ``cotracker3`` and ``cotracker3-online`` trackers (mosic :class:`~mosic.trackers.Tracker` interface).

What a call does (the official predictors' input handling, ``cotracker/predictor.py``):

1. Frames are resized to the model resolution (384x512; bilinear, ``align_corners=True``)
   and normalised to [-1, 1] inside the model; query positions are scaled by
   ``(W' - 1) / (W - 1)`` and ``(H' - 1) / (H - 1)`` (pixel centres onto pixel centres, the
   geometry of an ``align_corners=True`` resize), and the outputs by the inverse.
2. ``cotracker3`` (offline, like ``CoTrackerPredictor(video, queries=...)``): a 6x6
   support grid of extra points on frame 0 (``get_points_on_a_grid``: a margin of W'/64)
   is tracked together with the queries and dropped from the output; no backward
   pass (the official default ``backward_tracking=False``: the offline model attends
   over all frames anyway, so frames before a query frame still get a position);
   6 refinement iterations; visible = ``vis > 0.9`` (confidence ignored, the official
   offline predictor and what MoSiC trained with); each query is then reported at its
   own position and visible on its query frame (co-tracker issue 28).
3. ``cotracker3-online`` (like ``CoTrackerOnlinePredictor`` fed the whole video): windows of
   16 frames every 8 frames, computed in one call; no support grid (the official
   ``add_support_grid=False``); visible = ``vis * conf > 0.6``; no query snapping.
4. mosic additions: a point is invisible on every frame before its query frame; query
   frames are rounded to the nearest integer (the official code truncates) and must lie
   in [0, T-1]; videos are batched (B > 1); points are processed in chunks of
   ``max_points_per_chunk``; bf16 autocast on GPUs (``precision``).

Points are tracked jointly (CoTracker's virtual tracks read all points of a frame), so a
track depends on the other queries of the same video and on the support grid; it does not
depend on ``max_points_per_chunk`` nor on the other videos of the batch: only the
per-point work is chunked, the virtual tracks read every point, so chunked results
equal one chunk (up to float round-off).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch

from ...tracks import Tracks
from ..base import TRACKERS, Tracker, _check_clip_inputs, register_tracker
from ..catalog import CARDS
from ...device import resolve_device
from .blocks import get_points_on_a_grid
from .cotracker3 import CoTracker3Base, CoTracker3Offline, CoTracker3Online
from .weights import load_cotracker_weights

__all__ = ["CoTracker3Tracker", "CoTrackerTrackerBase"]

_PRECISIONS = ("auto", "bf16", "fp32")


class CoTrackerTrackerBase(Tracker):
    """Resizing, support grid, visibility and output plumbing shared by CoTracker trackers.

    Subclasses set ``self.model`` (a module whose ``forward(video, queries, iters=,
    point_chunk=, frames_per_chunk=, amp_dtype=)`` takes (B, T, 3, H, W) 0..255 frames and
    (B, N, 3) queries in model pixels and returns coords (B, T, N, 2) in model pixels,
    visibility probabilities (B, T, N) and confidence probabilities or ``None``), and
    ``self.model_resolution``.

    Args:
        device: where the model runs (default: CUDA when available, else CPU).
        max_points_per_chunk: points (over all videos of a batch) whose per-point work
            runs together; memory grows by roughly 40 KB per point and frame of a chunk.
        visibility_threshold: a point is visible when its score exceeds it.
        use_confidence: score = visibility x confidence (else visibility alone).
        precision: ``"auto"`` (bf16 autocast on CUDA devices that support it, float32
            otherwise), ``"bf16"`` or ``"fp32"``. Sampling, coordinates and logits stay float32.
        support_grid_size: side of the grid of extra points on frame 0 (0: none).
        snap_queries: report each query at its own position and visible on its query frame.
        iters: refinement iterations.
        frames_per_chunk: frames per CNN call (memory only).
    """

    name = "cotracker"
    model: torch.nn.Module
    model_resolution: tuple[int, int]

    def _setup(
        self,
        *,
        device: str | torch.device | None,
        max_points_per_chunk: int | None,
        visibility_threshold: float,
        use_confidence: bool,
        precision: str,
        support_grid_size: int,
        snap_queries: bool,
        iters: int,
        frames_per_chunk: int,
    ) -> None:
        if precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {_PRECISIONS}, got {precision!r}")
        if max_points_per_chunk is not None and max_points_per_chunk < 1:
            raise ValueError(f"max_points_per_chunk must be >= 1, got {max_points_per_chunk}")
        if iters < 1 or frames_per_chunk < 1 or support_grid_size < 0:
            raise ValueError("iters and frames_per_chunk must be >= 1 and support_grid_size >= 0")
        self.max_points_per_chunk = max_points_per_chunk
        self.visibility_threshold = float(visibility_threshold)
        self.use_confidence = bool(use_confidence)
        self.precision = precision
        self.support_grid_size = int(support_grid_size)
        self.snap_queries = bool(snap_queries)
        self.iters = int(iters)
        self.frames_per_chunk = int(frames_per_chunk)
        device = resolve_device(device)
        self.model = self.model.eval().requires_grad_(False)
        self.to(device)

    def to(self, device: torch.device | str) -> "CoTrackerTrackerBase":
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def amp_dtype(self) -> torch.dtype | None:
        """The autocast dtype of the current device and ``precision`` (None: float32)."""
        if self.precision == "fp32":
            return None
        if self.precision == "bf16":
            return torch.bfloat16
        if self.device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None

    def _scale(self, height: int, width: int) -> torch.Tensor:
        """Input pixels -> model pixels factors (x, y), float64 on the CPU."""
        if height < 2 or width < 2:
            raise ValueError(f"videos must be at least 2x2 pixels, got {height}x{width}")
        hm, wm = self.model_resolution
        return torch.tensor([(wm - 1) / (width - 1), (hm - 1) / (height - 1)], dtype=torch.float64)

    @torch.no_grad()
    def track(self, video: torch.Tensor, queries: torch.Tensor, *, clips: Sequence[Any] | None = None) -> Tracks:
        b, t, _, h, w = video.shape
        if queries.shape[1] == 0:
            empty = torch.zeros(b, t, 0, 2, device=video.device)
            return Tracks(empty, empty[..., 0].bool())
        device_video = video.to(self.device, non_blocking=True)

        def run(model_queries: torch.Tensor, point_chunk: int | None):
            return self.model(
                device_video,
                model_queries,
                iters=self.iters,
                point_chunk=point_chunk,
                frames_per_chunk=self.frames_per_chunk,
                amp_dtype=self.amp_dtype(),
            )

        return self._track_with(run, queries, b, t, h, w).to(video.device)

    @torch.no_grad()
    def track_clips(
        self,
        frames: torch.Tensor,
        clip_frames: torch.Tensor,
        queries: torch.Tensor,
        *,
        clips: Sequence[Any] | None = None,
        batch_size: int = 8,
    ) -> Tracks:
        """As :meth:`Tracker.track_clips`, with the per-frame work (resize, CNN, feature
        pyramid: nothing that depends on the queries) done once per frame of ``frames``
        instead of once per clip that reads it. Equal to tracking each clip on its own up to
        float round-off (the CNN sees each frame alone; tests bound the difference by 1e-4 px)."""
        forward_features = getattr(self.model, "forward_features", None)
        if forward_features is None:  # a model without the split (CoTracker2): per clip
            return super().track_clips(frames, clip_frames, queries, clips=clips, batch_size=batch_size)
        _check_clip_inputs(frames, clip_frames, queries)
        s, t = clip_frames.shape
        h, w = frames.shape[-2:]
        if queries.shape[1] == 0 or s == 0:
            empty = torch.zeros(s, t, queries.shape[1], 2, device=frames.device)
            return Tracks(empty, empty[..., 0].bool())
        self._scale(h, w)  # size check before the CNN runs
        amp = self.amp_dtype()
        pyramid = [level[0] for level in self.model.encode(frames[None].to(self.device), self.frames_per_chunk, amp)]
        parts = []
        for first in range(0, s, batch_size):
            index = clip_frames[first : first + batch_size].to(self.device)
            clip_pyramid = [level[index] for level in pyramid]  # (b, T, C, h, w) per level

            def run(model_queries: torch.Tensor, point_chunk: int | None, clip_pyramid=clip_pyramid):
                return forward_features(clip_pyramid, model_queries, self.iters, point_chunk, amp)

            parts.append(self._track_with(run, queries[first : first + batch_size], len(index), t, h, w))
        return Tracks.cat(parts).to(frames.device)

    def _track_with(self, run, queries: torch.Tensor, b: int, t: int, h: int, w: int) -> Tracks:
        """Query scaling, support grid, visibility and snapping around ``run(model_queries,
        point_chunk) -> (coords, vis, conf)`` in model pixels; Tracks on :attr:`device`."""
        n = queries.shape[1]
        q = queries.detach().to("cpu", torch.float64)  # the little query arithmetic in float64
        frames = torch.round(q[..., 0])
        if frames.min() < 0 or frames.max() > t - 1:
            raise ValueError(f"query frames must be in [0, {t - 1}], got {frames.min().item()}..{frames.max().item()}")
        scale = self._scale(h, w)
        model_queries = torch.cat([frames[..., None], q[..., 1:3] * scale], dim=-1)
        if self.support_grid_size > 0:
            grid = get_points_on_a_grid(self.support_grid_size, self.model_resolution, device="cpu")
            grid = torch.cat([torch.zeros_like(grid[..., :1]), grid], dim=-1).to(torch.float64)
            model_queries = torch.cat([model_queries, grid.expand(b, -1, -1)], dim=1)
        point_chunk = None if self.max_points_per_chunk is None else max(1, self.max_points_per_chunk // max(b, 1))
        coords, vis, conf = run(model_queries.float().to(self.device), point_chunk)
        coords, vis = coords[:, :, :n].float(), vis[:, :, :n].float()
        score = vis * conf[:, :, :n].float() if (self.use_confidence and conf is not None) else vis
        visible = score > self.visibility_threshold
        xy = coords / scale.float().to(self.device)
        frame_index = frames.long().to(self.device)  # B N
        if self.snap_queries:
            bi = torch.arange(b, device=self.device)[:, None].expand(b, n)
            ni = torch.arange(n, device=self.device)[None, :].expand(b, n)
            xy[bi, frame_index, ni] = q[..., 1:3].float().to(self.device)
            visible[bi, frame_index, ni] = True
        started = torch.arange(t, device=self.device)[None, :, None] >= frame_index[:, None, :]
        return Tracks(xy, visible & started)


@register_tracker("cotracker3-online", online=True, card=CARDS["cotracker3-online"])
@register_tracker("cotracker3", online=False, card=CARDS["cotracker3"])
class CoTracker3Tracker(CoTrackerTrackerBase):
    """CoTracker3 point tracker, offline (``cotracker3``) or online (``cotracker3-online``).

    See the module docstring for what a call does; defaults reproduce the official
    predictors.

    Args:
        weights: ``None``: the official checkpoint (``scaled_offline.pth`` /
            ``scaled_online.pth``, CC BY-NC 4.0 non-commercial; torch hub cache, else
            downloaded from Hugging Face); a path to a local ``.pth``/``.safetensors``
            file, loaded strictly; ``False``: random initialisation (tests).
        online: the online model (sliding windows of 16 frames) instead of the offline one.
        device: where the model runs (default CUDA when available); :meth:`to` moves it.
        max_points_per_chunk: points (over the batch) processed together in the per-point
            parts of the model (~40 KB per point-frame); results do not depend on it.
        visibility_threshold: default 0.9 offline, 0.6 online.
        use_confidence: score = vis x conf; default False offline, True online.
        precision: ``"auto"`` (bf16 autocast on capable GPUs, else fp32), ``"bf16"``, ``"fp32"``.
        support_grid_size: extra 6x6 grid on frame 0 offline, none online (the defaults).
        snap_queries: default True offline (the official offline predictor), False online.
        iters: refinement iterations (6, as the official predictors).
        model_resolution: (H, W) frames are resized to; the checkpoints were trained at
            (384, 512); smaller values are for tests.
        frames_per_chunk: frames per CNN call (memory only).
        progress: show the download progress bar.
    """

    name = "cotracker3"

    def __init__(
        self,
        weights: str | os.PathLike | bool | None = None,
        online: bool = False,
        device: str | torch.device | None = None,
        max_points_per_chunk: int | None = 1024,
        visibility_threshold: float | None = None,
        use_confidence: bool | None = None,
        precision: str = "auto",
        *,
        support_grid_size: int | None = None,
        snap_queries: bool | None = None,
        iters: int = 6,
        model_resolution: Sequence[int] = (384, 512),
        frames_per_chunk: int = 16,
        progress: bool = True,
    ):
        self.online = bool(online)
        self.name = TRACKERS.name_for(type(self), online=self.online) or self.name
        self.model_resolution = (int(model_resolution[0]), int(model_resolution[1]))
        model: CoTracker3Base
        if self.online:
            model = CoTracker3Online(model_resolution=self.model_resolution)
        else:
            model = CoTracker3Offline(model_resolution=self.model_resolution)
        variant = "cotracker3_online" if self.online else "cotracker3_offline"
        self.model = load_cotracker_weights(model, weights, variant, progress=progress)
        if visibility_threshold is None:
            visibility_threshold = 0.6 if self.online else 0.9
        self._setup(
            device=device,
            max_points_per_chunk=max_points_per_chunk,
            visibility_threshold=visibility_threshold,
            use_confidence=self.online if use_confidence is None else use_confidence,
            precision=precision,
            support_grid_size=(0 if self.online else 6) if support_grid_size is None else support_grid_size,
            snap_queries=(not self.online) if snap_queries is None else snap_queries,
            iters=iters,
            frames_per_chunk=frames_per_chunk,
        )
