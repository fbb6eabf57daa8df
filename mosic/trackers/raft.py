"""Optical-flow point trackers ``raft`` and ``raft-small``: chained RAFT flows.

RAFT (Teed & Deng, ECCV 2020) from ``torchvision.models.optical_flow`` estimates the
dense flow between consecutive frames; a point is carried from frame to frame by the
flow sampled at its position. Weights: torchvision's ``C_T_V2`` checkpoints (trained on
FlyingChairs + FlyingThings3D; they avoid KITTI's non-commercial data).

How a clip is tracked (all in the pixels of the RAFT working resolution, see ``size``):

* Every frame is resized to ``size`` (bilinear; antialiased when shrinking) and
  normalised to [-1, 1]. The default size is the input size rounded up to multiples of 8
  and, for small videos, scaled up (aspect kept) so that the short side is at least
  128, the smallest input torchvision's RAFT accepts. Coordinates map between the
  input and the working resolution with the pixel-centre convention,
  ``x' = (x + 0.5) * W' / W - 0.5`` (likewise y), exactly in both directions.
* RAFT computes the forward flow ``f_s`` (frame s -> s + 1) and the backward flow
  ``b_s`` (s + 1 -> s) of every consecutive pair, ``batch_pairs`` pairs per forward pass
  (2 (T - 1) passes of RAFT per clip, whatever the number of points). The flows of a
  whole batch are kept on the device: 16 B (T - 1) H' W' bytes.
* A point at p on frame s moves to ``p + f_s(p)``; flows are sampled with bilinear
  interpolation at pixel centres (``grid_sample`` with ``align_corners=True``: the
  centre of pixel column 0 is x = 0, that of column W' - 1 is x = W' - 1; positions past
  the outer centres take the border value).
* Forward-backward check: with ``f = f_s(p)`` and ``b = b_s(p + f)`` the step is
  inconsistent (the point is occluded) when ``|f + b|^2 > alpha (|f|^2 + |b|^2) + beta``,
  alpha = 0.01 and beta = 0.5 px^2 (Sundaram et al. 2010). A point is also lost when it
  leaves the frame ([-0.5, W - 0.5] x [-0.5, H - 0.5]).
* A lost point stays invisible for the rest of the clip: chaining flows cannot
  re-detect it. Its position keeps following the flow (extrapolated with the
  border-clamped flow once outside the frame), a best guess rather than a measurement.
* Queries may sit on any frame t. Frames after t are tracked forward; frames before t
  are tracked backward with the backward flows and the same check (with the roles of
  the two flows swapped), so every frame gets a position and a visibility. With
  ``track_backward=False`` frames before t keep the query position and are invisible.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from ..errors import WeightsUnavailableError
from ..tracks import Tracks
from .base import TRACKERS, Tracker, register_tracker
from .catalog import CARDS

__all__ = [
    "RaftTracker",
    "RaftWeightsUnavailableError",
    "chain_flows",
    "consistent_steps",
    "inside_frame",
    "sample_flow",
]

#: smallest input side torchvision's RAFT accepts (its 4-level correlation pyramid at 1/8)
MIN_SIDE = 128

FlowFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class RaftWeightsUnavailableError(WeightsUnavailableError):
    """torchvision's RAFT weights could not be downloaded (offline, blocked) and are not cached."""


# ----------------------------------------------------------------------------- chaining


def sample_flow(flow: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample flow maps at sub-pixel positions.

    Args:
        flow: (P, 2, H, W) flow maps, channel 0 = dx, channel 1 = dy (pixels).
        xy: (P, N, 2) (x, y) pixel positions, pixel (row i, col j) centred at (x=j, y=i).
    Returns:
        (P, N, 2) flow at the positions; outside the outer pixel centres the border
        value (the flow of the nearest edge pixel).
    """
    h, w = flow.shape[-2:]
    # align_corners=True: -1 and +1 are the centres of the first and last pixels
    gx = xy[..., 0] * (2.0 / max(w - 1, 1)) - 1.0
    gy = xy[..., 1] * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack([gx, gy], dim=-1).to(flow.dtype)[:, :, None, :]  # (P, N, 1, 2)
    out = F.grid_sample(flow, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out[:, :, :, 0].transpose(1, 2)  # (P, N, 2)


def inside_frame(xy: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(..., 2) (x, y) pixels -> (...) bool, inside [-0.5, W - 0.5] x [-0.5, H - 0.5] (and finite)."""
    x, y = xy[..., 0], xy[..., 1]
    return (x >= -0.5) & (x <= width - 0.5) & (y >= -0.5) & (y <= height - 0.5)


def consistent_steps(f: torch.Tensor, b: torch.Tensor, alpha: float = 0.01, beta: float = 0.5) -> torch.Tensor:
    """Forward-backward consistency of (..., 2) flow vectors: ``|f + b|^2 <= alpha (|f|^2 + |b|^2) + beta``."""
    err = (f + b).square().sum(-1)
    return err <= alpha * (f.square().sum(-1) + b.square().sum(-1)) + beta


def _query_frames(queries: torch.Tensor, num_frames: int) -> torch.Tensor:
    t = queries[..., 0]
    frames = t.round().long()
    bad = ((t - frames).abs() > 1e-3) | (frames < 0) | (frames >= num_frames)
    if bad.any():
        raise ValueError(f"query frames must be integers in [0, {num_frames}), got {t[bad][0].item()}")
    return frames


def chain_flows(
    forward: torch.Tensor,
    backward: torch.Tensor,
    queries: torch.Tensor,
    *,
    track_backward: bool = True,
    alpha: float = 0.01,
    beta: float = 0.5,
) -> Tracks:
    """Chain consecutive flows into point tracks (the core of :class:`RaftTracker`).

    Args:
        forward: (B, T - 1, 2, H, W) flow from frame s to s + 1, pixels of these maps.
        backward: (B, T - 1, 2, H, W) flow from frame s + 1 to s.
        queries: (B, N, 3) rows (t, x, y) in the pixels of the flow maps.
        track_backward: also track frames before each query frame (else they keep the
            query position and are invisible).
        alpha, beta: forward-backward check, see the module docstring.
    Returns:
        :class:`Tracks` in the pixels of the flow maps; a point is visible on its query
        frame when it lies inside the frame, and afterwards until its first failed check
        or exit from the frame (then never again).
    """
    if forward.ndim != 5 or forward.shape[2] != 2 or backward.shape != forward.shape:
        raise ValueError(
            f"forward and backward flows must both be (B, T-1, 2, H, W), got {tuple(forward.shape)} "
            f"and {tuple(backward.shape)}"
        )
    b, steps, _, h, w = forward.shape
    t_len = steps + 1
    if queries.ndim != 3 or queries.shape[0] != b or queries.shape[-1] != 3:
        raise ValueError(f"queries must be (B={b}, N, 3), got {tuple(queries.shape)}")
    q_t = _query_frames(queries, t_len)  # (B, N)
    start = queries[..., 1:].to(forward.dtype)
    n = start.shape[1]
    xy = start[:, None].expand(b, t_len, n, 2).clone()
    visible = torch.zeros(b, t_len, n, dtype=torch.bool, device=forward.device)
    start_inside = inside_frame(start, h, w)

    # forward in time: frames >= the query frame
    pos, alive = start.clone(), start_inside.clone()
    for s in range(t_len):
        at_query = (q_t == s)[..., None]
        pos = torch.where(at_query, start, pos)
        alive = torch.where(at_query[..., 0], start_inside, alive)
        active = q_t <= s
        xy[:, s] = torch.where(active[..., None], pos, xy[:, s])
        visible[:, s] = active & alive
        if s == t_len - 1:
            break
        f = sample_flow(forward[:, s], pos)
        new = pos + f
        back = sample_flow(backward[:, s], new)
        alive = alive & consistent_steps(f, back, alpha, beta) & inside_frame(new, h, w)
        pos = new

    if track_backward:  # backward in time: frames < the query frame
        pos, alive = start.clone(), start_inside.clone()
        for s in range(t_len - 1, 0, -1):
            at_query = (q_t == s)[..., None]
            pos = torch.where(at_query, start, pos)
            alive = torch.where(at_query[..., 0], start_inside, alive)
            f = sample_flow(backward[:, s - 1], pos)  # s -> s - 1
            new = pos + f
            back = sample_flow(forward[:, s - 1], new)  # s - 1 -> s
            alive = alive & consistent_steps(f, back, alpha, beta) & inside_frame(new, h, w)
            pos = new
            earlier = q_t >= s  # frame s - 1 lies before their query frame
            xy[:, s - 1] = torch.where(earlier[..., None], pos, xy[:, s - 1])
            visible[:, s - 1] = torch.where(earlier, alive, visible[:, s - 1])
    return Tracks(xy, visible)


# ----------------------------------------------------------------------------- weights


def _card_weights(model: str):
    """The official weights of ``model`` (``"large"``: the ``raft`` card, ``"small"``: ``raft-small``)."""
    return (CARDS["raft"] if model == "large" else CARDS["raft-small"]).weights


def _weights_enum(model: str):
    """torchvision's weights enum of ``model``; its URL is the one on the tracker's card."""
    from torchvision.models.optical_flow import Raft_Large_Weights, Raft_Small_Weights

    return Raft_Large_Weights.C_T_V2 if model == "large" else Raft_Small_Weights.C_T_V2


def _download_state_dict(weights_enum, progress: bool) -> dict[str, torch.Tensor]:
    """torchvision's checkpoint (from the torch hub cache, downloading it when missing)."""
    return weights_enum.get_state_dict(progress=progress, check_hash=True, weights_only=True)


def _build_model(model: str, weights: Any, progress: bool) -> torch.nn.Module:
    from torchvision.models.optical_flow import raft_large, raft_small

    net = (raft_large if model == "large" else raft_small)(weights=None)
    if weights is False:
        return net
    if weights is None or weights is True:
        enum = _weights_enum(model)
        card_weights = _card_weights(model)
        try:
            state = _download_state_dict(enum, progress)  # torchvision checks the sha256 prefix of the file name
        except Exception as exc:  # URLError, HTTPError, socket/SSL errors, partial files
            from torch.hub import get_dir

            name = card_weights.filename
            raise RaftWeightsUnavailableError(
                f"could not get torchvision's RAFT weights {enum} from {card_weights.url} "
                f"({type(exc).__name__}: {exc}). Offline: download that file on a connected machine and "
                f"pass it as weights='/path/to/{name}' (tracker kwargs, e.g. tracker.kwargs.weights=...), "
                f"or put it in {Path(get_dir()) / 'checkpoints'}; or use the weight-free 'lk' tracker."
            ) from exc
        net.load_state_dict(state, strict=True)
        return net
    if isinstance(weights, (str, Path)):
        from ..backbones.weights import load_state_dict_strict, read_state_dict

        load_state_dict_strict(
            net,
            read_state_dict(weights),
            str(weights),
            hint=f"Expected a torchvision raft_{model} state dict, e.g. {_card_weights(model).filename}.",
        )
        return net
    if hasattr(weights, "get_state_dict"):  # a torchvision weights enum
        net.load_state_dict(_download_state_dict(weights, progress), strict=True)
        return net
    raise TypeError(f"weights must be None, False, a file path or a torchvision weights enum, got {weights!r}")


# ----------------------------------------------------------------------------- tracker


def working_size(height: int, width: int, size: int | Sequence[int] | None = None) -> tuple[int, int]:
    """RAFT's working (H', W'): ``size`` if given, else the input rounded up to multiples of
    8 after scaling up (aspect kept) so that the short side is at least 128."""
    if size is not None:
        hw = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
        if len(hw) != 2 or min(hw) < MIN_SIDE or hw[0] % 8 or hw[1] % 8:
            raise ValueError(f"RAFT size must be multiples of 8 and at least {MIN_SIDE}, got {size}")
        return hw
    scale = max(1.0, MIN_SIDE / min(height, width))
    return tuple(8 * math.ceil(round(d * scale, 6) / 8) for d in (height, width))


@register_tracker("raft-small", model="small", card=CARDS["raft-small"])
@register_tracker("raft", model="large", card=CARDS["raft"])
class RaftTracker(Tracker):
    """Point tracking by chaining torchvision RAFT flows (see the module docstring).

    Args:
        model: ``"large"`` (5.3 M parameters) or ``"small"`` (1.0 M).
        weights: ``None``/``True``: torchvision's ``C_T_V2`` weights (torch hub cache, else
            download); a file path: a local state dict, loaded strictly; ``False``: random
            initialisation (tests only: the flow is meaningless).
        iters: RAFT refinement iterations (``num_flow_updates``).
        batch_pairs: frame pairs per RAFT forward pass (memory vs speed).
        size: RAFT working resolution (H', W') or an int for square; multiples of 8, at
            least 128. Default: see :func:`working_size`.
        track_backward: track frames before a query's frame backward in time.
        amp: float16 autocast on CUDA (ignored on CPU).
        device: where the model runs; :meth:`to` moves it.
        flow_fn: replaces RAFT: ``flow_fn(image1, image2) -> (P, 2, H', W')`` flow from
            image1 to image2, given (P, 3, H', W') float images in [-1, 1] (tests, other flow models).
        alpha: forward-backward consistency check, relative term: a step fails when
            ``|f + b|^2 > alpha (|f|^2 + |b|^2) + beta``.
        beta: forward-backward consistency check, absolute term (pixels^2).
    """

    name = "raft"

    def __init__(
        self,
        model: str = "large",
        weights: str | Path | bool | None = None,
        *,
        iters: int = 12,
        batch_pairs: int = 8,
        size: int | Sequence[int] | None = None,
        track_backward: bool = True,
        amp: bool = False,
        device: str | torch.device = "cpu",
        flow_fn: FlowFn | None = None,
        alpha: float = 0.01,
        beta: float = 0.5,
        progress: bool = True,
    ):
        if model not in ("large", "small"):
            raise ValueError(f"model must be 'large' or 'small', got {model!r}")
        if iters < 1 or batch_pairs < 1:
            raise ValueError(f"iters and batch_pairs must be >= 1, got {iters} and {batch_pairs}")
        if size is not None:
            working_size(MIN_SIDE, MIN_SIDE, size)  # validate early
        self.name = TRACKERS.name_for(type(self), model=model) or self.name
        self.model_name = model
        self.iters = int(iters)
        self.batch_pairs = int(batch_pairs)
        self.size = size
        self.track_backward = bool(track_backward)
        self.amp = bool(amp)
        self.flow_fn = flow_fn
        self.alpha, self.beta = float(alpha), float(beta)
        self.device = torch.device(device)
        self.model: torch.nn.Module | None = None
        if flow_fn is None:
            self.model = _build_model(model, weights, progress).eval().requires_grad_(False).to(self.device)

    def to(self, device: torch.device | str) -> "RaftTracker":
        self.device = torch.device(device)
        if self.model is not None:
            self.model.to(self.device)
        return self

    @torch.no_grad()
    def compute_flow(self, image1: torch.Tensor, image2: torch.Tensor) -> torch.Tensor:
        """(P, 3, H', W') float images in [-1, 1] -> (P, 2, H', W') float32 flow image1 -> image2."""
        if self.flow_fn is not None:
            return self.flow_fn(image1, image2).float()
        use_amp = self.amp and image1.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.float16) if use_amp else contextlib.nullcontext():
            flows = self.model(image1, image2, num_flow_updates=self.iters)
        return flows[-1].float()

    def _prepare(self, frames: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """(P, 3, H, W) uint8 -> (P, 3, H', W') float in [-1, 1] on the model's device."""
        x = frames.to(self.device, non_blocking=True).float()
        if tuple(x.shape[-2:]) != hw:
            shrink = hw[0] < x.shape[-2] or hw[1] < x.shape[-1]
            x = F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=shrink)
        return x / 127.5 - 1.0

    @torch.no_grad()
    def pair_flows(self, video: torch.Tensor, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward flows of consecutive frames, each (B, T - 1, 2, H', W')."""
        b, t = video.shape[:2]
        flat = video.reshape(b * t, *video.shape[2:])
        first = torch.arange(b * t).reshape(b, t)[:, :-1].reshape(-1)  # frame s of each pair
        src = torch.cat([first, first + 1])  # forward pairs, then backward pairs
        dst = torch.cat([first + 1, first])
        flows = []
        for i in range(0, len(src), self.batch_pairs):
            s, d = src[i : i + self.batch_pairs], dst[i : i + self.batch_pairs]
            flows.append(self.compute_flow(self._prepare(flat[s], hw), self._prepare(flat[d], hw)))
        flows = torch.cat(flows).reshape(2, b, t - 1, 2, *hw)
        return flows[0], flows[1]

    @torch.no_grad()
    def track(self, video: torch.Tensor, queries: torch.Tensor, *, clips: Sequence[Any] | None = None) -> Tracks:
        b, t, _, height, width = video.shape
        hw = working_size(height, width, self.size)
        sx, sy = hw[1] / width, hw[0] / height
        q = queries.to(self.device, torch.float32)
        q_run = torch.stack([q[..., 0], (q[..., 1] + 0.5) * sx - 0.5, (q[..., 2] + 0.5) * sy - 0.5], dim=-1)
        if t > 1:
            fwd, bwd = self.pair_flows(video, hw)
        else:
            fwd = bwd = torch.zeros(b, 0, 2, *hw, device=self.device)
        tracks = chain_flows(fwd, bwd, q_run, track_backward=self.track_backward, alpha=self.alpha, beta=self.beta)
        xy = torch.stack([(tracks.xy[..., 0] + 0.5) / sx - 0.5, (tracks.xy[..., 1] + 0.5) / sy - 0.5], dim=-1)
        return Tracks(xy.to(video.device), tracks.visible.to(video.device))

