"""Tracker throughput: point-frames per second of each registered tracker on one clip.

    python benchmarks/tracker_throughput.py --frames 12 --size 224 --grid 16 --device cpu
    python benchmarks/tracker_throughput.py --points 70000 --tracker-kwargs max_points_per_chunk=8192 --device cuda

Memory: the peak CUDA allocation of each tracker's calls (``--device cuda``), or on CPU
the peak resident memory of the process during them, sampled every 5 ms, minus the
resident memory before (``--points N`` tracks N random points instead of the grid).

Learned trackers run with random weights (``weights=False``): their speed does not
depend on the weights, their tracks are meaningless here. Times are the median of
``--repeats`` calls after one warm-up call.
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import threading
import time

import torch

import mosic
from mosic.data.synthetic import SyntheticVideos
from mosic.trackers.base import TRACKERS
from mosic.tracks import query_grid

DEFAULT = ["lk", "raft-small", "raft", "cotracker3", "cotracker3-online", "cotracker2"]


class PeakRSS:
    """Peak resident memory (MiB) of this process above its level on entry, sampled."""

    def __enter__(self):
        self.base = self.peak = _rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_mib())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mib())

    @property
    def mib(self) -> float:
        return self.peak - self.base


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trackers", nargs="+", default=DEFAULT)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--points", type=int, default=0, help="random query points instead of the grid")
    parser.add_argument("--tracker-kwargs", default="", help="e.g. max_points_per_chunk=8192 (where accepted)")
    args = parser.parse_args(argv)
    extra = {k: int(v) for k, v in (kv.split("=") for kv in args.tracker_kwargs.split(",") if kv)}

    source = SyntheticVideos(num_videos=args.batch, num_frames=args.frames, size=args.size, seed=0)
    frames = [torch.from_numpy(source.read_frames(i, list(range(args.frames)))) for i in range(args.batch)]
    video = torch.stack(frames).permute(0, 1, 4, 2, 3).contiguous().to(args.device)  # (B, T, 3, H, W)
    if args.points:
        g = torch.Generator().manual_seed(0)
        xy = torch.rand(args.batch, args.points, 2, generator=g) * (args.size - 1)
        queries = torch.cat([torch.zeros(args.batch, args.points, 1), xy], -1).to(args.device)  # (t, x, y)
    else:
        queries = query_grid(args.size, args.size, args.grid).expand(args.batch, -1, -1).to(args.device)
    points = args.batch * queries.shape[1] * args.frames
    rows = []
    memory = "peak CUDA MiB" if args.device.startswith("cuda") else "peak RSS growth MiB"
    print(f"| tracker | seconds per call | point-frames / s | {memory} | ({args.batch} x {args.frames} frames, {args.size} px, {queries.shape[1]} points, {args.device}, {torch.get_num_threads()} threads{', ' + args.tracker_kwargs if extra else ''})")
    print("|---|---:|---:|---:|")
    for name in args.trackers:
        factory = TRACKERS.get(name).factory
        accepted = inspect.signature(factory).parameters
        kwargs = {"weights": False} if "weights" in accepted else {}
        kwargs.update({k: v for k, v in extra.items() if k in accepted})
        tracker = mosic.create_tracker(name, **kwargs).to(args.device)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        with PeakRSS() as rss:
            tracker(video, queries)  # warm-up
            for _ in range(args.repeats):
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                start = time.perf_counter()
                tracker(video, queries)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        mib = torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda") else rss.mib
        rows.append({"tracker": name, "seconds": seconds, "point_frames_per_second": points / seconds, "memory_mib": mib})
        print(f"| {name} | {seconds:.2f} | {points / seconds:,.0f} | {mib:,.0f} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
