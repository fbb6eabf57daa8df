"""Add your own point tracker to mosic and post-pretrain a backbone with it, by name.

mosic calls a tracker as ``tracker(video, queries, clips=...)`` with ``video`` (B, T, 3, H, W)
uint8 RGB and ``queries`` (B, N, 3) rows (t, x, y) in pixels (the centre of pixel (row i,
column j) is (x=j, y=i)), and expects :class:`mosic.Tracks`: ``xy`` (B, T, N, 2) pixels
and ``visible`` (B, T, N) bool. Anything that does this can be registered.

This example turns any dense optical-flow function into a point tracker:

* ``DenseFlowTracker(flow)`` wraps a user function ``flow(frame_a, frame_b) -> (H, W, 2)``
  (per-pixel displacement (dx, dy) from ``frame_a`` to ``frame_b``). Points are chained frame
  to frame (``p_{t+1} = p_t + flow_t(p_t)``, the flow sampled bilinearly at the sub-pixel
  position), forwards from each query's frame and backwards to the frames before it. A
  forward-backward check marks occlusions: where following the backward flow from
  ``p_{t+1}`` does not come back near ``p_t``, the point is lost (invisible) for the rest of
  the clip, as it is when it leaves the frame; chained flow cannot re-find a point.
* ``farneback_flow`` is a small classical flow: OpenCV's Farneback polynomial expansion on
  grey frames. Replace it by your own model (a RAFT, a learned flow net, ...).
* ``@mosic.register_tracker("my-flow")`` registers a factory whose keyword arguments are
  plain numbers, so the tracker can be chosen in a config (``tracker.name: my-flow``,
  ``tracker.kwargs: {winsize: 9}``) and is saved with the run like the built-in ones.

The example then measures the tracker against the exact ground truth of synthetic clips
(TAP-Vid metrics, ``mosic.eval.tracking``) and post-pretrains a small random ViT with it
for a few steps, the tracker built by the trainer from ``tracker.name="my-flow"``.

Usage::

    python examples/register_custom_tracker.py --smoke   # tiny clips and model, a few steps, CPU, well under a minute
    python examples/register_custom_tracker.py           # 64 px clips, 200 steps (a few minutes on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

import mosic
from mosic.data import SyntheticVideos
from mosic.eval.tracking import evaluate_tracker

#: a dense flow function: (H, W, 3) uint8 RGB frame a, frame b -> (H, W, 2) float32 (dx, dy) pixels
FlowFunction = Callable[[np.ndarray, np.ndarray], np.ndarray]


def farneback_flow(frame_a: np.ndarray, frame_b: np.ndarray, *, levels: int = 3, winsize: int = 9,
                   iterations: int = 3) -> np.ndarray:
    """Farneback dense optical flow (OpenCV) from ``frame_a`` to ``frame_b``.

    Returns (H, W, 2) float32: the content at pixel (x, y) of ``frame_a`` is at
    (x + dx, y + dy) in ``frame_b``.
    """
    grey_a = cv2.cvtColor(np.ascontiguousarray(frame_a), cv2.COLOR_RGB2GRAY)
    grey_b = cv2.cvtColor(np.ascontiguousarray(frame_b), cv2.COLOR_RGB2GRAY)
    return cv2.calcOpticalFlowFarneback(
        grey_a, grey_b, None, pyr_scale=0.5, levels=levels, winsize=winsize, iterations=iterations,
        poly_n=5, poly_sigma=1.1, flags=0,
    )


def sample_flow(flow: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Bilinear sample of (B, H, W, 2) flow fields at (B, N, 2) sub-pixel positions -> (B, N, 2).

    Pixel centres are integer (x, y); positions outside the frame read the border.
    """
    _, h, w, _ = flow.shape
    grid = torch.stack([2 * xy[..., 0] / max(w - 1, 1) - 1, 2 * xy[..., 1] / max(h - 1, 1) - 1], dim=-1)
    out = F.grid_sample(flow.permute(0, 3, 1, 2), grid[:, :, None], mode="bilinear", padding_mode="border",
                        align_corners=True)  # (B, 2, N, 1)
    return out[..., 0].transpose(1, 2)


class DenseFlowTracker(mosic.Tracker):
    """A point tracker made of a dense flow function (see the module docstring).

    Args:
        flow: ``flow(frame_a, frame_b) -> (H, W, 2)`` displacement from a to b.
        fb_threshold: a step passes the forward-backward check when the round trip ends
            within ``fb_threshold + fb_relative * (|forward| + |backward|)`` pixels of its start.
        fb_relative: see ``fb_threshold``.
        name: shown in messages and tables.
    """

    def __init__(self, flow: FlowFunction, *, fb_threshold: float = 1.0, fb_relative: float = 0.1,
                 name: str = "dense-flow"):
        self.flow = flow
        self.fb_threshold = fb_threshold
        self.fb_relative = fb_relative
        self.name = name
        self.clips_tracked = 0  # how many clips this instance has tracked (the example prints it)

    def track(self, video: torch.Tensor, queries: torch.Tensor, *, clips: Sequence[Any] | None = None) -> mosic.Tracks:
        b, t, _, h, w = video.shape
        frames = video.permute(0, 1, 3, 4, 2).cpu().numpy()  # (B, T, H, W, 3)
        # flows between consecutive frames, both ways: (B, T - 1, H, W, 2)
        forward = torch.from_numpy(np.stack([[self.flow(v[i], v[i + 1]) for i in range(t - 1)] for v in frames]))
        backward = torch.from_numpy(np.stack([[self.flow(v[i + 1], v[i]) for i in range(t - 1)] for v in frames]))
        queries = queries.detach().cpu().float()
        query_frame = queries[..., 0].round().long()  # (B, N)
        query_xy = queries[..., 1:]  # (B, N, 2)
        xy = torch.zeros(b, t, queries.shape[1], 2)
        visible = torch.zeros(b, t, queries.shape[1], dtype=torch.bool)
        # forwards from each query frame, then backwards to the frames before it
        self._chain(list(range(t)), forward, backward, query_frame, query_xy, xy, visible, h, w)
        if bool((query_frame > 0).any()):
            order = list(range(t - 1, -1, -1))
            self._chain(order, backward.flip(1), forward.flip(1), query_frame, query_xy, xy, visible, h, w)
        self.clips_tracked += b
        return mosic.Tracks(xy.to(video.device), visible.to(video.device))

    def _chain(self, order, to_next, from_next, query_frame, query_xy, xy, visible, h, w) -> None:
        """Follow points along the frames ``order``; ``to_next[:, k]`` is the flow from
        frame ``order[k]`` to ``order[k + 1]`` and ``from_next[:, k]`` the flow back."""
        pos = query_xy.clone()
        started = torch.zeros_like(query_frame, dtype=torch.bool)  # the query frame has been passed
        alive = torch.zeros_like(started)  # started and not lost
        for k, frame in enumerate(order):
            start = query_frame == frame
            pos = torch.where(start[..., None], query_xy, pos)
            started, alive = started | start, alive | start
            xy[:, frame] = torch.where(started[..., None], pos, xy[:, frame])
            visible[:, frame] = torch.where(started, alive, visible[:, frame])
            if k + 1 == len(order):
                break
            step = sample_flow(to_next[:, k], pos)
            nxt = pos + step
            back = sample_flow(from_next[:, k], nxt)
            error = (nxt + back - pos).norm(dim=-1)
            consistent = error <= self.fb_threshold + self.fb_relative * (step.norm(dim=-1) + back.norm(dim=-1))
            inside = (nxt[..., 0] >= -0.5) & (nxt[..., 0] <= w - 0.5) & (nxt[..., 1] >= -0.5) & (nxt[..., 1] <= h - 0.5)
            alive = alive & consistent & inside
            pos = nxt


@mosic.register_tracker("my-flow")
def my_flow(winsize: int = 9, levels: int = 3, fb_threshold: float = 1.0, fb_relative: float = 0.1) -> DenseFlowTracker:
    """Farneback flow chained frame to frame; the arguments are what ``tracker.kwargs`` may set."""
    flow = functools.partial(farneback_flow, winsize=winsize, levels=levels)
    return DenseFlowTracker(flow, fb_threshold=fb_threshold, fb_relative=fb_relative, name="my-flow")


# ---- measure it, then post-pretrain with it by name ------------------------------------------

#: per mode: held-out clips for the tracking metrics, training videos, steps
SETTINGS = {
    "smoke": {
        "eval_videos": {"num_videos": 2, "num_frames": 24, "size": 64},
        "videos": {"num_videos": 8, "num_frames": 12, "size": 64},
        "steps": 3,
    },
    "full": {
        "eval_videos": {"num_videos": 8, "num_frames": 24, "size": 64},
        "videos": {"num_videos": 64, "num_frames": 24, "size": 64},
        "steps": 200,
    },
}
EVAL_SEED = 10_000  # held-out clips: another seed than the training videos
EVAL_FRAMES, EVAL_STRIDE, EVAL_GRID = 8, 2, 16


def recipe(size: int, smoke: bool) -> dict:
    """A RunConfig dict: a small random ViT (patch 8) trained with the ``my-flow`` tracker."""
    return {
        "backbone": {"name": "vit-tiny", "pretrained": False, "train_blocks": 2,
                     "kwargs": {"patch_size": 8, "img_size": size, "depth": 4, "embed_dim": 64 if smoke else 128,
                                "num_heads": 2}},
        "tracker": {"name": "my-flow", "grid_size": 4 if smoke else 8, "kwargs": {"winsize": 9}},
        "objective": {"head_hidden_dims": [64] if smoke else [512, 512], "projection_dim": 32 if smoke else 256,
                      "num_prototypes": 16 if smoke else 100},
        "data": {"num_frames": 4 if smoke else 8, "frame_stride": 2, "size": size,
                 "global_batch_size": 4 if smoke else 8, "num_workers": 0 if smoke else 1},
        "optim": {"backbone_lr": 1e-4, "head_lr": 1e-3 if smoke else 1e-4},
        "train": {"log_every": 1 if smoke else 25, "progress": False},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny clips and model, a few steps (CPU, well under a minute)")
    parser.add_argument("--steps", type=int, help="training steps (default 200, or 3 with --smoke)")
    parser.add_argument("--out", default="runs/custom_tracker", help="the run folder")
    args = parser.parse_args(argv)
    settings = SETTINGS["smoke" if args.smoke else "full"]
    steps = args.steps or settings["steps"]

    print(f"registered trackers: {', '.join(mosic.list_trackers())}")
    tracker = mosic.create_tracker("my-flow")
    print(f"created my-flow: {type(tracker).__name__} wrapping {tracker.flow.func.__name__}")

    # 1. how good are its tracks? exact ground truth of held-out synthetic clips
    held_out = SyntheticVideos(seed=EVAL_SEED, **settings["eval_videos"])
    metrics = evaluate_tracker(tracker, held_out, num_frames=EVAL_FRAMES, frame_stride=EVAL_STRIDE, grid_size=EVAL_GRID)
    print(
        f"my-flow on {metrics['num_videos']} held-out synthetic clips ({EVAL_FRAMES} frames {EVAL_STRIDE} apart, "
        f"{EVAL_GRID}x{EVAL_GRID} queries on frame 0): delta_avg {metrics['delta_avg']:.1f}, "
        f"OA {metrics['occlusion_accuracy']:.1f}, AJ {metrics['average_jaccard']:.1f} "
        f"(TAP-Vid, percent; {metrics['point_frames_per_second']:.0f} points·frames/s)"
    )
    if "lk" in mosic.list_trackers():  # a built-in weight-free tracker on the same clips, for comparison
        lk = evaluate_tracker("lk", held_out, num_frames=EVAL_FRAMES, frame_stride=EVAL_STRIDE, grid_size=EVAL_GRID)
        print(f"for comparison, the built-in lk on the same clips: delta_avg {lk['delta_avg']:.1f}, "
              f"OA {lk['occlusion_accuracy']:.1f}, AJ {lk['average_jaccard']:.1f}")

    # 2. post-pretrain a small random ViT; the trainer builds the tracker from tracker.name
    videos = SyntheticVideos(seed=0, **settings["videos"])
    config = mosic.RunConfig.from_dict(recipe(videos.size[0], args.smoke)).with_overrides(
        {"train.out_dir": str(Path(args.out))}
    )
    trainer = mosic.PostPretrainer(config=config)
    start = time.perf_counter()
    trainer.fit(videos, max_steps=steps)
    seconds = time.perf_counter() - start
    used = trainer.tracker
    losses = [record["loss"] for record in trainer.history]
    print(
        f"trained with tracker {config.tracker.name} ({type(used).__name__}, {used.clips_tracked} clips tracked): "
        f"{trainer.step} steps in {seconds:.1f} s, loss {losses[0]:.3f} -> {losses[-1]:.3f}",
        flush=True,
    )
    return {"metrics": metrics, "steps": trainer.step, "seconds": seconds, "losses": losses,
            "clips_tracked": used.clips_tracked}


if __name__ == "__main__":
    main()
