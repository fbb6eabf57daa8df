"""End to end: what a whole MoSiC run costs (tracking, training steps, data), not one step.

Two parts, both printed as markdown tables (``--json`` keeps every figure):

**FLOPs at dataset scale** (hardware-independent). ``torch.utils.flop_counter.FlopCounterMode``
counts (matmul, convolution, attention; forward and backward; element-wise work and
interpolation count 0) on mosic's own models with random weights:

* CoTracker3 (offline) on one ``--clip-frames`` clip of ``--source-size`` frames at the model
  resolution ``--model-resolution``: the per-frame part E (resize + CNN + feature pyramid,
  :meth:`CoTracker3Base.encode`, which does not depend on the queries) and whole calls with
  the query grids in use: G x G plus mosic's 6 x 6 support grid, and the authors' 16 x 16
  without it. The query part of a clip is Q(N) = F(N) - T * E. A check counts
  :meth:`Tracker.track_clips` on two overlapping clips, which must equal
  distinct frames x E + 2 x Q(N) (the shared per-frame work).
* One training step per clip: ``PostPretrainer.train_step`` with cached tracks, and the
  authors' step (``benchmarks/step_vs_reference.py``'s ``reference_step``, student on all
  frames) without its tracker, on ``--backbone`` at ``--size`` px.

They are scaled by the counts of a run at ``--videos`` videos of ``--video-frames`` frames
(YouTube-VOS train: 3,471 videos, ~180 frames) over ``--epochs`` epochs, one clip per video
per epoch, counted by mosic's own planner (:func:`mosic.data.track_cache.planned_starts`, the
dataset's draws replayed): clip starts a run reads, and the distinct frames those starts
read. Columns:

* (a) the authors: the tracker inside every step, 16 x 16 points on the augmented clip, one
  clip per tracker call, and their step;
* (b) mosic tracking in the step (no cache): 16 x 16 + support on the augmented clip, mosic's step;
* (c) mosic with a track cache, counting its build: ``mosic track --for-run`` (only the planned
  starts, per-frame work shared, the G = 19 grid, the default since issue 15), ``mosic track``
  (every start, shared, G = 19), and the cache as it was before (every start, a separate
  tracker call per start, G = 26).

Rows: one run, a 5-run ablation sweep over the same videos with the same seed (the planned
starts are the same, the cache is built once), and 5 runs with 5 seeds.

**CPU seconds of a scaled instance that really runs** (``--cpu-videos 0`` skips it):
``--cpu-videos`` synthetic textured 480p videos of ``--video-frames`` frames written as H.264
(``benchmarks/data_loading.py``'s writer), ``--cpu-epochs`` epochs of ``--cpu-batch`` clips per
step at the paper's sampling, ViT-S/14 (random init), CoTracker3 with random weights at
``--cpu-model-resolution`` (lower than the real 384 x 512 so that 2 CPU cores finish; the query
part, which dominates, does not depend on it). It runs (a) the authors' step loop with the
tracker in the step, (b) ``PostPretrainer.fit`` with the tracker in the step, (c)
``mosic track --for-run`` then ``mosic fit`` through the CLI: CPU seconds of the process (all
threads), and the data part (decode + crop) on its own, from the H.264 files and from the
same frames as JPEG folders.

    python benchmarks/end_to_end.py --json end_to_end.json
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

import mosic
from mosic.data.track_cache import clip_starts, planned_starts
from mosic.tracks import query_grid


def _load(name: str):
    """``benchmarks/<name>.py`` as a module (benchmarks/ is not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def count_flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


# ----------------------------------------------------------------------------- FLOPs


def tracker_flops(args: argparse.Namespace) -> dict:
    """GFLOP of CoTracker3's parts on one clip (random weights; FLOPs do not depend on them)."""
    resolution = tuple(args.model_resolution)
    tracker = mosic.create_tracker("cotracker3", weights=False, model_resolution=resolution, device="cpu")
    authors = mosic.create_tracker(
        "cotracker3", weights=False, model_resolution=resolution, support_grid_size=0, device="cpu"
    )
    t, (h, w) = args.clip_frames, args.source_size
    video = torch.randint(0, 256, (1, t, 3, h, w), dtype=torch.uint8)
    out: dict = {"support_points": tracker.support_grid_size**2}
    with torch.no_grad():
        out["per_frame"] = count_flops(lambda: tracker.model.encode(video, tracker.frames_per_chunk)) / t / 1e9
    clip: dict[int, float] = {}
    for grid in sorted({1, args.grid, args.cache_grid, args.old_cache_grid}):
        queries = query_grid(h, w, grid)[None]
        clip[grid] = count_flops(lambda: tracker(video, queries)) / 1e9
    out["clip"] = clip
    out["query_part"] = {g: f - t * out["per_frame"] for g, f in clip.items()}
    queries = query_grid(h, w, args.grid)[None]
    out["authors_clip"] = count_flops(lambda: authors(video, queries)) / 1e9
    # the shared path: two clips of one video overlapping by half, 1 x 1 grid
    half = t // 2
    frames = torch.randint(0, 256, (t + half, 3, h, w), dtype=torch.uint8)
    clip_frames = torch.stack([torch.arange(t), torch.arange(half, half + t)])
    queries = query_grid(h, w, 1)[None].expand(2, -1, -1)
    measured = count_flops(lambda: tracker.track_clips(frames, clip_frames, queries)) / 1e9
    predicted = (t + half) * out["per_frame"] + 2 * out["query_part"][1]
    out["shared_check"] = {"measured": measured, "predicted": predicted}
    return out


def step_flops(args: argparse.Namespace) -> dict:
    """GFLOP per clip of mosic's step (cached tracks) and of the authors' step without its tracker."""
    reference = _load("step_vs_reference")
    trainer, batch = reference.paper_setting(
        args.backbone, {}, args.clip_frames, args.size, args.grid, 2, 0.0, "cpu"
    )
    mosic_step = count_flops(lambda: trainer.train_step(batch)) / 2 / 1e9
    other = copy.deepcopy(trainer)
    authors_step = count_flops(lambda: reference.reference_step(other, batch["frames"], batch["tracks"], None)) / 2 / 1e9
    return {"mosic": mosic_step, "authors": authors_step}


def run_counts(args: argparse.Namespace) -> dict:
    """Clip starts and distinct frames per video that runs read, from mosic's planner."""
    v, length, t, stride = args.videos, args.video_frames, args.clip_frames, args.stride
    step = args.start_step or stride
    lengths = [length] * v
    every = clip_starts(length, t, stride, step)

    def frames_of(starts) -> int:
        return len({s + stride * k for s in starts for k in range(t)})

    def plan(seeds) -> tuple[float, float]:
        merged: dict[int, set[int]] = {}
        for seed in seeds:
            for video, starts in planned_starts(
                lengths, clip_frames=t, frame_stride=stride, start_step=step, seed=seed, epochs=args.epochs
            ).items():
                merged.setdefault(video, set()).update(starts)
        return (
            sum(len(s) for s in merged.values()) / v,
            sum(frames_of(s) for s in merged.values()) / v,
        )

    one_starts, one_frames = plan([0])
    five_starts, five_frames = plan(range(5))
    return {
        "clips_per_video_per_run": args.epochs,
        "all_starts": len(every),
        "all_frames": frames_of(every),
        "planned_starts_one_seed": one_starts,
        "planned_frames_one_seed": one_frames,
        "planned_starts_five_seeds": five_starts,
        "planned_frames_five_seeds": five_frames,
    }


def cost_table(tracker: dict, step: dict, counts: dict, args: argparse.Namespace) -> dict:
    """TFLOP per video for each pipeline (column) and sweep (row)."""
    e, q = tracker["per_frame"], tracker["query_part"]
    clips = counts["clips_per_video_per_run"]
    runs = 5
    in_step_authors = clips * (tracker["authors_clip"] + step["authors"])
    in_step_mosic = clips * (tracker["clip"][args.grid] + step["mosic"])
    train = clips * step["mosic"]

    def build(starts: float, frames: float, grid: int, shared: bool) -> float:
        if shared:
            return frames * e + starts * q[grid]
        return starts * tracker["clip"][grid]

    full_shared = build(counts["all_starts"], counts["all_frames"], args.cache_grid, True)
    full_old = build(counts["all_starts"], counts["all_frames"], args.old_cache_grid, False)
    planned_one = build(counts["planned_starts_one_seed"], counts["planned_frames_one_seed"], args.cache_grid, True)
    planned_five = build(counts["planned_starts_five_seeds"], counts["planned_frames_five_seeds"], args.cache_grid, True)
    columns = ["(a) authors", "(b) mosic, tracker in the step", "(c) mosic, cache for the runs",
               "(c) mosic, cache of every start", "(c) cache before issue 15"]  # fmt: skip
    rows = {
        "one run": [in_step_authors, in_step_mosic, planned_one + train, full_shared + train, full_old + train],
        "5 runs, one seed": [
            runs * in_step_authors, runs * in_step_mosic, planned_one + runs * train,
            full_shared + runs * train, full_old + runs * train,
        ],
        "5 runs, 5 seeds": [
            runs * in_step_authors, runs * in_step_mosic, planned_five + runs * train,
            full_shared + runs * train, full_old + runs * train,
        ],
    }  # fmt: skip
    builds = {"planned, one seed": planned_one, "planned, 5 seeds": planned_five, "every start": full_shared,
              "before issue 15": full_old}  # fmt: skip
    return {"columns": columns, "gflop_per_video": rows, "build_gflop_per_video": builds}


def print_flops(result: dict, args: argparse.Namespace) -> None:
    tracker, step, counts, table = result["tracker"], result["step"], result["counts"], result["table"]
    res = "x".join(map(str, args.model_resolution))
    print(f"\n### FLOPs per part (FlopCounterMode; CoTracker3 at {res}, {args.clip_frames}-frame clips of "
          f"{args.source_size[1]}x{args.source_size[0]}; {args.backbone} at {args.size} px)\n")  # fmt: skip
    print("| part | GFLOP |\n|---|---:|")
    print(f"| tracker, per frame (resize, CNN, pyramid: shared by clips) | {tracker['per_frame']:.1f} |")
    for grid, value in tracker["clip"].items():
        print(f"| tracker, one clip, {grid}x{grid} + {tracker['support_points']} support points | {value:.0f} |")
        print(f"| ... of which the query part Q | {tracker['query_part'][grid]:.0f} |")
    print(f"| tracker, one clip, {args.grid}x{args.grid}, no support grid (the authors' call) | {tracker['authors_clip']:.0f} |")
    check = tracker["shared_check"]
    print(f"| track_clips, 2 clips sharing {args.clip_frames // 2} frames, 1x1 grid: measured / distinct x E + 2 Q | "
          f"{check['measured']:.0f} / {check['predicted']:.0f} |")  # fmt: skip
    print(f"| mosic step, per clip (cached tracks) | {step['mosic']:.0f} |")
    print(f"| authors' step, per clip, without its tracker | {step['authors']:.0f} |")
    print(f"\nCounts per video ({args.video_frames} frames, {args.epochs} epochs, stride {args.stride}, one clip per "
          f"video per epoch, a start every {args.start_step or args.stride} frames): {counts['clips_per_video_per_run']} clips per run; {counts['all_starts']} clip starts "
          f"reading {counts['all_frames']} distinct frames; a run's planned starts: "
          f"{counts['planned_starts_one_seed']:.2f} ({counts['planned_frames_one_seed']:.1f} frames), 5 seeds' "
          f"union: {counts['planned_starts_five_seeds']:.2f} ({counts['planned_frames_five_seeds']:.1f} frames)")  # fmt: skip
    scale = args.videos / 1e3  # GFLOP per video -> PFLOP in all: x videos / 1e6
    print(f"\n### Whole runs at {args.videos} videos: PFLOP (ratio to the authors)\n")
    print("| | " + " | ".join(table["columns"]) + " |")
    print("|---|" + "---:|" * len(table["columns"]))
    for row, values in table["gflop_per_video"].items():
        cells = [f"{v * scale / 1e3:.1f} ({v / values[0]:.2f}x)" for v in values]
        print(f"| {row} | " + " | ".join(cells) + " |")
    print("\ncache builds, TFLOP per video: " + ", ".join(
        f"{name} {value / 1e3:.2f}" for name, value in table["build_gflop_per_video"].items()))  # fmt: skip


# ----------------------------------------------------------------------------- CPU instance


def _cpu(fn: Callable[[], object]) -> tuple[float, float]:
    """(CPU seconds of the process, all threads; wall seconds) of ``fn()``."""
    start, start_wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - start, time.perf_counter() - start_wall


def cpu_instance(args: argparse.Namespace) -> dict:
    """Run the three pipelines on a small real instance; CPU seconds of each."""
    from mosic.cli import main as cli
    from mosic.data.clips import ClipDataset, collate_clips
    from mosic.data.video_files import open_videos

    loading = _load("data_loading")
    root = Path(args.dir or tempfile.mkdtemp(prefix="mosic-e2e-"))
    video_args = argparse.Namespace(
        videos=args.cpu_videos, video_frames=args.video_frames, width=args.source_size[1], height=args.source_size[0],
        fps=30, crf=23, preset="veryfast", gop=0, jpeg_quality=90,
    )  # fmt: skip
    if not (root / "mp4").is_dir() or len(list((root / "mp4").iterdir())) != args.cpu_videos:
        loading.write_videos(root, video_args)
    mp4 = str(root / "mp4")
    resolution = list(args.cpu_model_resolution)
    tracker_kwargs = {"weights": False, "model_resolution": resolution}
    config = {
        "backbone": {"name": args.backbone, "pretrained": False},
        "tracker": {"name": "cotracker3", "grid_size": args.grid, "kwargs": tracker_kwargs},
        "data": {"videos": mp4, "num_frames": args.clip_frames, "frame_stride": args.stride, "size": args.size,
                 "global_batch_size": args.cpu_batch, "num_workers": 0, "decode_timeout": None},
        "train": {"epochs": args.cpu_epochs, "device": "cpu", "progress": False, "seed": 0},
    }  # fmt: skip
    result: dict = {"videos": args.cpu_videos, "epochs": args.cpu_epochs, "batch": args.cpu_batch,
                    "model_resolution": resolution}  # fmt: skip

    # data alone: the clips of one run, decoded and cropped as training does (no tracks)
    for name, where in (("h264", mp4), ("jpeg", str(root / "JPEGImages"))):
        source = open_videos(where)
        dataset = ClipDataset(source, args.clip_frames, args.stride, args.size, (0.4, 1.0), seed=0)
        keys = [(e, i) for e in range(args.cpu_epochs) for i in range(len(source))]
        cpu, _ = _cpu(lambda: [dataset[key] for key in keys])
        result[f"data_cpu_s_per_clip_{name}"] = cpu / len(keys)
    source = open_videos(mp4)
    dataset = ClipDataset(source, args.clip_frames, args.stride, args.size, (0.4, 1.0), seed=0)

    # (a) the authors: tracker in every step, their step
    reference = _load("step_vs_reference")
    trainer = mosic.PostPretrainer(config={**config, "tracker": {"name": "oracle", "grid_size": args.grid}})
    steps = args.cpu_epochs * (len(source) // args.cpu_batch)
    trainer._prepare_optimizer(steps)
    authors_tracker = mosic.create_tracker(
        "cotracker3", weights=False, model_resolution=resolution, support_grid_size=0, device="cpu"
    )

    def authors_run():
        for e in range(args.cpu_epochs):
            order = np.random.default_rng(e).permutation(len(source))
            for first in range(0, len(order) - args.cpu_batch + 1, args.cpu_batch):
                batch = collate_clips([dataset[(e, int(i))] for i in order[first : first + args.cpu_batch]])
                reference.reference_step(trainer, batch["frames"], None, authors_tracker)

    result["(a) authors"] = _cpu(authors_run)

    # (b) mosic, tracker in the step
    result["(b) mosic, tracker in the step"] = _cpu(lambda: mosic.PostPretrainer(config=config).fit())

    # (c) mosic track --for-run, then mosic fit with the cache
    config_path = root / "run.yaml"
    mosic.RunConfig.from_dict(config).save(config_path)
    cache = root / f"cache-{time.time_ns()}"
    track = _cpu(lambda: cli(["track", mp4, "--out", str(cache), "--for-run", str(config_path), "--no-progress"]))
    fit = _cpu(lambda: cli(["fit", "--config", str(config_path), f"tracker.cache={cache}"]))
    result["(c) mosic track --for-run"] = track
    result["(c) mosic fit with the cache"] = fit
    result["(c) mosic, cache for the run"] = (track[0] + fit[0], track[1] + fit[1])
    return result


def print_cpu(result: dict) -> None:
    res = "x".join(map(str, result["model_resolution"]))
    print(f"\n### CPU seconds of a scaled instance ({result['videos']} videos, {result['epochs']} epochs, "
          f"{result['batch']} clips per step, CoTracker3 at {res}, {torch.get_num_threads()} threads)\n")  # fmt: skip
    print("| pipeline | CPU s | wall s | CPU ratio to (a) |\n|---|---:|---:|---:|")
    base = result["(a) authors"][0]
    for name in ("(a) authors", "(b) mosic, tracker in the step", "(c) mosic track --for-run",
                 "(c) mosic fit with the cache", "(c) mosic, cache for the run"):  # fmt: skip
        cpu, wall = result[name]
        print(f"| {name} | {cpu:.0f} | {wall:.0f} | {cpu / base:.2f}x |")
    print(f"\ndata alone (decode + crop, what every pipeline pays per clip; the pipelines read the H.264 files): "
          f"H.264 {result['data_cpu_s_per_clip_h264'] * 1e3:.0f} ms, JPEG folders "
          f"{result['data_cpu_s_per_clip_jpeg'] * 1e3:.0f} ms CPU per clip")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=3471, help="videos of the projected run (YouTube-VOS train)")
    parser.add_argument("--video-frames", type=int, default=180)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--clip-frames", type=int, default=12)
    parser.add_argument("--stride", type=int, default=6, help="frame stride (the authors' train.sh: 6)")
    parser.add_argument("--start-step", type=int, help="frames between cached clip starts (default: the stride)")
    parser.add_argument("--grid", type=int, default=16, help="the paper's G")
    parser.add_argument("--cache-grid", type=int, default=19, help="the cache's grid (default_cache_grid)")
    parser.add_argument("--old-cache-grid", type=int, default=26, help="the cache's grid before issue 15")
    parser.add_argument("--source-size", type=int, nargs=2, default=(480, 854), metavar=("H", "W"))
    parser.add_argument("--model-resolution", type=int, nargs=2, default=(384, 512), metavar=("H", "W"))
    parser.add_argument("--backbone", default="dinov2-s14")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--cpu-videos", type=int, default=4, help="videos of the scaled instance (0: skip it)")
    parser.add_argument("--cpu-epochs", type=int, default=4)
    parser.add_argument("--cpu-batch", type=int, default=4)
    parser.add_argument("--cpu-model-resolution", type=int, nargs=2, default=(192, 256), metavar=("H", "W"))
    parser.add_argument("--dir", help="keep the scaled instance's videos and caches here")
    parser.add_argument("--json", help="write every figure here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    result: dict = {"args": {k: v for k, v in vars(args).items()}}
    result["tracker"] = tracker_flops(args)
    result["step"] = step_flops(args)
    result["counts"] = run_counts(args)
    result["table"] = cost_table(result["tracker"], result["step"], result["counts"], args)
    print_flops(result, args)
    if args.cpu_videos:
        result["cpu"] = cpu_instance(args)
        print_cpu(result["cpu"])
    print(f"\n(benchmark took {time.perf_counter() - started:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
