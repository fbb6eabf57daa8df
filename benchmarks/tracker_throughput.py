"""Tracker throughput: point-frames per second of each registered tracker on one clip.

    python benchmarks/tracker_throughput.py --frames 12 --size 224 --grid 16 --device cpu

Learned trackers run with random weights (``weights=False``): their speed does not
depend on the weights, their tracks are meaningless here. Times are the median of
``--repeats`` calls after one warm-up call.
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import time

import torch

import mosic
from mosic.data.synthetic import SyntheticVideos
from mosic.trackers.base import TRACKERS, query_grid

DEFAULT = ["lk", "raft-small", "raft", "cotracker3", "cotracker3-online", "cotracker2"]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trackers", nargs="+", default=DEFAULT)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    source = SyntheticVideos(num_videos=args.batch, num_frames=args.frames, size=args.size, seed=0)
    frames = [torch.from_numpy(source.read_frames(i, list(range(args.frames)))) for i in range(args.batch)]
    video = torch.stack(frames).permute(0, 1, 4, 2, 3).contiguous().to(args.device)  # (B, T, 3, H, W)
    queries = query_grid(args.size, args.size, args.grid).expand(args.batch, -1, -1).to(args.device)
    points = args.batch * queries.shape[1] * args.frames
    rows = []
    print(f"| tracker | seconds per call | point-frames / s | ({args.batch} x {args.frames} frames, {args.size} px, {queries.shape[1]} points, {args.device}, {torch.get_num_threads()} threads)")
    print("|---|---:|---:|")
    for name in args.trackers:
        factory = TRACKERS.get(name).factory
        kwargs = {"weights": False} if "weights" in inspect.signature(factory).parameters else {}
        tracker = mosic.create_tracker(name, **kwargs).to(args.device)
        tracker(video, queries)  # warm-up
        times = []
        for _ in range(args.repeats):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            tracker(video, queries)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        rows.append({"tracker": name, "seconds": seconds, "point_frames_per_second": points / seconds})
        print(f"| {name} | {seconds:.2f} | {points / seconds:,.0f} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
