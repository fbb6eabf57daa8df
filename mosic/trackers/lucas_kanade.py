"""The weight-free ``lk`` tracker: pyramidal Lucas-Kanade (OpenCV) with a forward-backward check.

Frames are converted to grayscale (``cv2.COLOR_RGB2GRAY``) and points are followed
frame to frame with ``cv2.calcOpticalFlowPyrLK`` (Bouguet's pyramidal Lucas-Kanade),
which uses the same pixel convention as mosic: the centre of pixel (row i, col j) is
(x=j, y=i). Output is (x, y), like every mosic tracker.

Per step s -> s + 1 (all on CPU, numpy; a batch is a loop over its clips):

* track p to p' forward, then p' back to p'' (s + 1 -> s); the step fails when either
  call reports status 0, when the round-trip error ``|p - p''|`` exceeds
  ``fb_threshold`` pixels (default 1.0), or when p' leaves the frame
  ([-0.5, W - 0.5] x [-0.5, H - 0.5]);
* a point whose step fails becomes invisible and stays invisible for the rest of the
  clip (Lucas-Kanade cannot re-detect a point). Its position keeps following the
  forward Lucas-Kanade estimate while OpenCV still returns one (status 1), else it stays
  where it was: a best guess, not a measurement.

Queries may sit on any frame t: frames after t are tracked forward, frames before t
backward (the same check with the roles of the two frames swapped), so every frame gets
a position and a visibility. With ``track_backward=False`` frames before t keep the
query position and are invisible.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..tracks import Tracks
from .base import Tracker, register_tracker
from .catalog import CARDS

__all__ = ["LucasKanadeTracker"]


def _cv2():
    import cv2  # imported on first use: keeps ``import mosic`` light

    return cv2


def _inside(xy: np.ndarray, height: int, width: int) -> np.ndarray:
    x, y = xy[..., 0], xy[..., 1]
    return np.isfinite(x) & np.isfinite(y) & (x >= -0.5) & (x <= width - 0.5) & (y >= -0.5) & (y <= height - 0.5)


@register_tracker("lk", card=CARDS["lk"])
class LucasKanadeTracker(Tracker):
    """Pyramidal Lucas-Kanade point tracker (OpenCV), no weights, CPU.

    Args:
        win_size: search window per pyramid level, an int (square) or (w, h).
        max_level: pyramid levels above the full image (0 = no pyramid).
        max_iters: most iterations per level (``cv2.TERM_CRITERIA_COUNT``).
        eps: smallest update that continues the iterations (``cv2.TERM_CRITERIA_EPS``).
        fb_threshold: largest forward-backward round-trip error in pixels.
        min_eig_threshold: OpenCV's ``minEigThreshold`` (rejects textureless windows).
        track_backward: track frames before a query's frame backward in time.
    """

    name = "lk"

    def __init__(
        self,
        win_size: int | Sequence[int] = 15,
        max_level: int = 3,
        max_iters: int = 30,
        eps: float = 0.01,
        fb_threshold: float = 1.0,
        min_eig_threshold: float = 1e-4,
        track_backward: bool = True,
    ):
        if isinstance(win_size, (int, np.integer)):
            win_size = (win_size, win_size)
        ws = tuple(int(v) for v in win_size)
        if len(ws) != 2 or min(ws) < 3:
            raise ValueError(f"win_size must be an int or (w, h) of at least 3 px, got {win_size}")
        if max_level < 0 or max_iters < 1 or eps <= 0 or fb_threshold <= 0:
            raise ValueError("need max_level >= 0, max_iters >= 1, eps > 0 and fb_threshold > 0")
        cv2 = _cv2()
        self.win_size = ws
        self.max_level = int(max_level)
        self.criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, int(max_iters), float(eps))
        self.fb_threshold = float(fb_threshold)
        self.min_eig_threshold = float(min_eig_threshold)
        self.track_backward = bool(track_backward)

    def _lk(self, img0: np.ndarray, img1: np.ndarray, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(M, 2) float32 points on img0 -> (M, 2) positions on img1, (M,) bool status."""
        nxt, status, _ = _cv2().calcOpticalFlowPyrLK(
            img0, img1, np.ascontiguousarray(pts, dtype=np.float32).reshape(-1, 1, 2), None,
            winSize=self.win_size, maxLevel=self.max_level, criteria=self.criteria,
            minEigThreshold=self.min_eig_threshold,
        )
        return nxt.reshape(-1, 2).astype(np.float64), status.reshape(-1).astype(bool)

    def _step(self, img0: np.ndarray, img1: np.ndarray, pos: np.ndarray, height: int, width: int):
        """One checked step of (M, 2) points: new positions and (M,) success."""
        nxt, ok1 = self._lk(img0, img1, pos)
        ok1 &= np.isfinite(nxt).all(-1)
        back, ok2 = self._lk(img1, img0, np.where(ok1[:, None], nxt, pos))
        round_trip = np.linalg.norm(back - pos, axis=-1)
        ok = ok1 & ok2 & (round_trip <= self.fb_threshold) & _inside(nxt, height, width)
        return np.where(ok1[:, None], nxt, pos), ok

    def _track_clip(self, frames: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(T, H, W, 3) uint8, (N, 3) -> xy (T, N, 2), visible (T, N)."""
        t_len, height, width = frames.shape[:3]
        cv2 = _cv2()
        gray = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames]
        q_t = np.rint(queries[:, 0]).astype(np.int64)
        if (np.abs(queries[:, 0] - q_t) > 1e-3).any() or (q_t < 0).any() or (q_t >= t_len).any():
            raise ValueError(f"query frames must be integers in [0, {t_len}), got {queries[:, 0]}")
        start = queries[:, 1:].astype(np.float64)
        start_inside = _inside(start, height, width)
        n = len(queries)
        xy = np.broadcast_to(start, (t_len, n, 2)).copy()
        visible = np.zeros((t_len, n), dtype=bool)

        pos, alive = start.copy(), start_inside.copy()
        for s in range(t_len):
            at_query = q_t == s
            pos[at_query], alive[at_query] = start[at_query], start_inside[at_query]
            active = q_t <= s
            xy[s, active] = pos[active]
            visible[s] = active & alive
            if s == t_len - 1 or not active.any():
                continue
            new, ok = self._step(gray[s], gray[s + 1], pos[active], height, width)
            pos[active] = new
            alive[active] &= ok

        if self.track_backward:
            pos, alive = start.copy(), start_inside.copy()
            for s in range(t_len - 1, 0, -1):
                at_query = q_t == s
                pos[at_query], alive[at_query] = start[at_query], start_inside[at_query]
                earlier = q_t >= s  # frame s - 1 lies before their query frame
                if not earlier.any():
                    continue
                new, ok = self._step(gray[s], gray[s - 1], pos[earlier], height, width)
                pos[earlier] = new
                alive[earlier] &= ok
                xy[s - 1, earlier] = pos[earlier]
                visible[s - 1, earlier] = alive[earlier]
        return xy, visible

    def track(self, video: torch.Tensor, queries: torch.Tensor, *, clips: Sequence[Any] | None = None) -> Tracks:
        frames = video.detach().permute(0, 1, 3, 4, 2).cpu().numpy()  # (B, T, H, W, 3)
        q = queries.detach().cpu().double().numpy()
        xy, visible = zip(*(self._track_clip(f, qq) for f, qq in zip(frames, q)))
        xy_t = torch.from_numpy(np.stack(xy).astype(np.float32))
        return Tracks(xy_t.to(video.device), torch.from_numpy(np.stack(visible)).to(video.device))
