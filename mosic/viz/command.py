"""``mosic viz``: tracks, cluster maps and training curves to MP4/GIF/PNG.

Kept light at import time (the CLI builds its parser from here); the work happens in
:func:`run_viz`.
"""

from __future__ import annotations

import argparse
import math
from typing import Any


def add_viz_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``viz`` with its ``tracks``, ``clusters`` and ``curves`` sub-commands to ``sub``."""
    viz = sub.add_parser("viz", help="render tracks or cluster maps over video frames (MP4/GIF/PNG), training curves (PNG)")
    kinds = viz.add_subparsers(dest="viz_kind", required=True)

    def clip_options(p: argparse.ArgumentParser, out: str) -> None:
        p.add_argument("video", help="a video file, frame folder or dataset folder, or 'synthetic:num_videos=1,size=64'")
        p.add_argument("--index", type=int, default=0, help="which video of a folder or dataset (default: 0)")
        p.add_argument("--start", type=int, default=0, help="first frame of the clip")
        p.add_argument("--num-frames", type=int, default=12, help="frames in the clip")
        p.add_argument("--stride", type=int, default=2, help="frames between clip frames (lowered for short videos)")
        p.add_argument("--max-size", type=int, default=384, help="shorter side frames are resized to (never upscaled)")
        p.add_argument("--scale", type=int, help="integer upscaling for drawing (default: up to a 256 px shorter side)")
        p.add_argument("--out", default=out, help=f"output .mp4, .gif or .png (default: {out})")
        p.add_argument("--fps", type=float, default=8.0, help="frames per second of an MP4 or GIF")
        p.add_argument("--sheet", type=int, help="PNG only: frames in the contact sheet, evenly spaced (default: all)")
        p.add_argument("--columns", type=int, help="PNG only: contact sheet columns (default: one row up to 4 frames)")
        p.add_argument("--device", default="auto", help="where the tracker or backbone runs")

    tracks = kinds.add_parser("tracks", help="point tracks: trails, visible (filled) and occluded (hollow) points")
    clip_options(tracks, "tracks.mp4")
    tracks.add_argument("--tracker", help="registered tracker, see `mosic list trackers` "
                        "(default: oracle for synthetic clips, else the config's default tracker)")
    tracks.add_argument("--weights", help="local tracker weights file")
    tracks.add_argument("--grid", type=int, default=16, help="G x G query points on the first frame")
    tracks.add_argument("--trail", type=int, default=8, help="frames of history behind each point")
    tracks.add_argument("--radius", type=int, help="point radius in output pixels")

    clusters = kinds.add_parser("clusters", help="K-means clusters (or a run's prototypes) of patch tokens over the frames")
    clip_options(clusters, "clusters.mp4")
    clusters.add_argument("--backbone", required=True, help="registered name, run folder, checkpoint folder or `mosic export` folder")
    clusters.add_argument("--backbone-arg", action="append", default=[], metavar="KEY=VALUE",
                          help="arguments for a registered name, e.g. pretrained=false (repeatable)")
    clusters.add_argument("--model", choices=["teacher", "student"], default="teacher", help="which network of a run")
    clusters.add_argument("--k", type=int, default=8, help="K-means clusters over the clip's patch tokens")
    clusters.add_argument("--prototypes", action="store_true", help="a run's own clusters: each token's best prototype")
    clusters.add_argument("--size", type=int, help="backbone input side, rounded to the patch size (default: the frames')")
    clusters.add_argument("--alpha", type=float, default=0.5, help="weight of the cluster colours")
    clusters.add_argument("--seed", type=int, default=0, help="K-means seed and torch seed of a random backbone")

    curves = kinds.add_parser("curves", help="training curves of a run's metrics.jsonl")
    curves.add_argument("metrics", help="run folder or metrics.jsonl")
    curves.add_argument("--out", default="curves.png", help="output PNG (default: curves.png)")
    curves.add_argument("--keys", help="comma-separated metrics, or 'all' (default: loss, agreement, grad_norm, lr_backbone)")
    curves.add_argument("--size", help="WIDTHxHEIGHT in pixels (default: 900 wide, 220 per metric)")
    return viz


def read_clip(source, index: int = 0, num_frames: int = 12, stride: int = 2, start: int = 0, max_size: int | None = 384):
    """One clip of a video and its metadata.

    Args:
        source: anything :func:`mosic.data.video_files.open_videos` takes (``"synthetic:..."`` too).
        max_size: the shorter side is resized down to this (None: original size).
    Returns:
        frames (T, H, W, 3) uint8 and a :class:`~mosic.data.clips.ClipMeta` (whose
        transform maps source pixels to these frames; the ``oracle`` tracker reads it).
    """
    import numpy as np
    import torch

    from ..data.clips import ClipMeta, effective_stride
    from ..data.video_files import open_videos
    from ..data.transforms import ViewTransform

    source = open_videos(source)
    if not 0 <= index < len(source):
        raise ValueError(f"--index {index} is out of range: the source has {len(source)} video(s)")
    for name, value in (("num_frames", num_frames), ("stride", stride)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    available = source.num_frames(index)
    if not 0 <= start < available:
        raise ValueError(f"start frame {start} is out of range: {source.video_name(index)} has {available} frames")
    count = min(num_frames, available - start)
    stride = effective_stride(available - start, count, stride)
    frame_indices = [start + stride * i for i in range(count)]
    frames = torch.from_numpy(np.ascontiguousarray(source.read_frames(index, frame_indices))).permute(0, 3, 1, 2)
    h, w = frames.shape[-2:]
    s = 1.0 if max_size is None or min(h, w) <= max_size else max_size / min(h, w)
    view = ViewTransform(0, 0, w, h, (max(1, round(h * s)), max(1, round(w * s))))
    frames = view.apply_to_frames(frames).permute(0, 2, 3, 1).contiguous().numpy()
    meta = ClipMeta(source.video_name(index), index, frame_indices, view, 0, source.ground_truth(index))
    return frames, meta


def track_clip(frames, meta=None, tracker: Any = "oracle", grid: int = 16, device: str = "cpu", **tracker_kwargs):
    """Track a G x G grid of frame-0 queries through ``frames`` (T, H, W, 3) uint8.

    ``tracker`` is a registered name (built with ``tracker_kwargs``) or a Tracker;
    ``meta`` is the clip's :class:`~mosic.data.clips.ClipMeta` (the ``oracle`` needs it).
    Returns :class:`~mosic.trackers.Tracks` of batch size 1.
    """
    import torch

    from ..trackers.base import TRACKERS
    from ..tracks import query_grid

    if isinstance(tracker, str):
        tracker = TRACKERS.create(tracker, **tracker_kwargs)
    tracker = tracker.to(device)
    video = torch.as_tensor(frames).permute(0, 3, 1, 2).unsqueeze(0).contiguous().to(device)
    queries = query_grid(video.shape[-2], video.shape[-1], grid).unsqueeze(0).to(device)
    with torch.no_grad():
        tracks = tracker(video, queries, clips=None if meta is None else [meta])
    return tracks.to("cpu")


def _auto_scale(frames, scale: int | None) -> int:
    if scale is not None:
        if scale < 1:
            raise ValueError(f"--scale must be >= 1, got {scale}")
        return scale
    return max(1, math.ceil(256 / min(frames.shape[1:3])))


def run_viz(args: argparse.Namespace) -> int:
    """Run ``mosic viz tracks|clusters|curves``."""
    if args.viz_kind == "curves":
        return _curves(args)
    from .writers import SUFFIXES, write_video

    if not str(args.out).lower().endswith(SUFFIXES):
        raise ValueError(f"--out must end in {', '.join(SUFFIXES)}, got {args.out}")
    frames, meta = read_clip(args.video, args.index, args.num_frames, args.stride, args.start, args.max_size)
    scale = _auto_scale(frames, args.scale)
    from ..device import resolve_device

    device = str(resolve_device(args.device))
    if args.viz_kind == "tracks":
        from .tracks import draw_tracks

        name = args.tracker
        if name is None:
            from ..config import RunConfig

            name = "oracle" if hasattr(meta.ground_truth, "tracks") else RunConfig().tracker.name
        kwargs = {"weights": args.weights} if args.weights else {}
        if args.grid < 1:
            raise ValueError(f"--grid must be >= 1, got {args.grid}")
        tracks = track_clip(frames, meta, name, args.grid, device, **kwargs)
        drawn = draw_tracks(frames, tracks, trail=args.trail, point_radius=args.radius, scale=scale)
        what = f"{tracks.xy.shape[2]} tracks ({name})"
    else:
        import torch

        from ..config import parse_key_values
        from .maps import cluster_maps, overlay_labels
        from .writers import upscale

        torch.manual_seed(args.seed)  # a randomly initialised backbone is the same on every run
        labels = cluster_maps(
            args.backbone, frames, args.k, method="prototypes" if args.prototypes else "kmeans", size=args.size,
            model=args.model, seed=args.seed, device=device,
            **parse_key_values(args.backbone_arg, "--backbone-arg"),
        )
        drawn = overlay_labels(upscale(frames, scale), labels, alpha=args.alpha)
        what = f"{len(set(labels.ravel().tolist()))} clusters on a {labels.shape[1]}x{labels.shape[2]} patch grid"
    out = write_video(drawn, args.out, fps=args.fps, sheet_frames=args.sheet, columns=args.columns)
    print(f"wrote {out}: {len(frames)} frames of {meta.video}, {what}")
    return 0


def _curves(args: argparse.Namespace) -> int:
    from .curves import DEFAULT_KEYS, plot_curves

    keys: Any = DEFAULT_KEYS
    if args.keys:
        keys = None if args.keys.strip() == "all" else [k.strip() for k in args.keys.split(",") if k.strip()]
    size = None
    if args.size:
        w, x, h = args.size.lower().partition("x")
        if not x or not w.strip().isdigit() or not h.strip().isdigit():
            raise ValueError(f"--size must look like WIDTHxHEIGHT, e.g. 900x600, got {args.size!r}")
        size = (int(w), int(h))
    out = plot_curves(args.metrics, args.out, keys, size=size)
    print(f"wrote {out}")
    return 0
