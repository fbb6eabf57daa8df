"""Tracker ablation: one MoSiC recipe, several point trackers, one table.

Every tracker gets the same RunConfig; only ``tracker.name`` and ``tracker.kwargs`` change.
For each tracker the trainer is built from the config, and the tracker it builds (by
name, lazily, exactly as in training) is

1. measured against the exact ground truth of held-out synthetic clips (another seed
   than the training videos) with the TAP-Vid metrics (``mosic.eval.tracking``):
   <δ avg (position accuracy of ground-truth-visible points), OA (occlusion accuracy),
   AJ (average Jaccard: position and visibility together), and throughput (query
   points x frames tracked per second); the clips have the training clips' length,
   frame stride and size, queried on a grid on frame 0;
2. used to post-pretrain the same backbone (same initial weights, same seed, same data
   order) on the training videos; before and after, the teacher's patch features of the
   held-out clips are clustered with K-means and Hungarian-matched to the ground truth
   (``evaluate_video_clustering``: class mIoU over the dataset, instance mIoU per clip).

Trackers and weights:

* ``oracle`` returns the exact tracks of synthetic clips (an upper bound; no real videos);
* ``lk`` (pyramidal Lucas-Kanade) needs no weights;
* learned trackers (``raft``, ``raft-small``, ``cotracker3``, ``cotracker3-online``,
  ``cotracker2``: any tracker whose factory takes ``weights``) take a local file with
  ``--weights NAME=PATH``, or download their official weights with ``--download``;
  without either they are skipped, except in ``--smoke``, where they run from random
  initialisation: their tracks are then meaningless and only exercise the pipeline.

Usage::

    python examples/tracker_ablation.py --smoke --out runs/tracker_ablation_smoke   # CPU, < 2 min
    python examples/tracker_ablation.py --trackers oracle lk raft-small cotracker3 \\
        --weights raft-small=raft_small_C_T_V2-01064c6d.pth cotracker3=scaled_offline.pth \\
        --backbone dinov2-s14 --pretrained --steps 1000 --out runs/tracker_ablation   # GPU

Writes ``tracker_ablation.md`` and ``tracker_ablation.json`` to ``--out``, and one run
folder per tracker (config.yaml, metrics.jsonl, final checkpoint).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import time
from pathlib import Path
from typing import Any

import mosic
from mosic.data import SyntheticVideos, open_videos
from mosic.eval import evaluate_video_clustering
from mosic.eval.tracking import evaluate_tracker

#: the recipe shared by every tracker: the paper's defaults (RunConfig), frames 2 apart
#: because the synthetic videos are 24 frames long, a loader worker per core (up to 8)
RECIPE = {
    "data": {"frame_stride": 2, "num_workers": min(8, os.cpu_count() or 1)},
}
#: the smoke run's recipe: small head, short clips, tiny batches, no worker processes
SMOKE_RECIPE = {
    "tracker": {"grid_size": 4},
    "objective": {"head_hidden_dims": [64], "projection_dim": 32, "num_prototypes": 16},
    "data": {"num_frames": 4, "frame_stride": 2, "global_batch_size": 2, "num_workers": 0},
    "optim": {"backbone_lr": 1e-4, "head_lr": 1e-3},
    "train": {"log_every": 1, "progress": False},
}
#: architecture overrides that make the smoke backbone a small random model
SMOKE_ARCH = {"depth": 2, "embed_dim": 64, "num_heads": 2}
#: tracker arguments used in every mode (part of tracker.kwargs, recorded in the table)
TRACKER_KWARGS: dict[str, dict[str, Any]] = {}
#: extra tracker arguments of the smoke run: cheaper settings of the learned trackers on CPU
#: (fewer refinement iterations; CoTracker at 64x64 instead of its 384x512); arguments a
#: tracker does not take are left out
SMOKE_TRACKER_KWARGS: dict[str, dict[str, Any]] = {
    "raft": {"iters": 2},
    "raft-small": {"iters": 2},
    **{name: {"iters": 2, "model_resolution": [64, 64]} for name in ("cotracker3", "cotracker3-online", "cotracker2")},
}
DEFAULT_TRACKERS = ["oracle", "lk", "raft-small", "raft", "cotracker3", "cotracker3-online", "cotracker2"]
SMOKE_TRACKERS = ["oracle", "lk", "raft-small", "cotracker3"]
EVAL_FRAMES, EVAL_STRIDE, EVAL_SEED_OFFSET = 8, 2, 10_000
EVAL_GRID, SMOKE_EVAL_GRID = 16, 8  # G x G tracking queries on frame 0 of each held-out clip
RANDOM_NOTE = "random init: meaningless tracks, pipeline check only"


def factory_arguments(name: str) -> set[str] | None:
    """Keyword arguments the registered tracker's factory takes (None: any)."""
    entry = mosic.TRACKERS.get(name)
    try:
        parameters = inspect.signature(entry.factory).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return None
    return set(parameters) | set(entry.defaults)


def takes_weights(name: str) -> bool:
    """Whether the tracker's factory has a ``weights`` argument (a learned tracker)."""
    accepted = factory_arguments(name)
    return accepted is not None and "weights" in accepted


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trackers", nargs="+", help=f"registered tracker names (default: {' '.join(DEFAULT_TRACKERS)}"
                        f"; with --smoke: {' '.join(SMOKE_TRACKERS)})")
    parser.add_argument("--weights", nargs="+", default=[], metavar="NAME=PATH",
                        help="local weights files of learned trackers")
    parser.add_argument("--download", action="store_true",
                        help="learned trackers without --weights download their official weights")
    parser.add_argument("--backbone", default="dinov2-s14", help="registered backbone name (default dinov2-s14)")
    parser.add_argument("--backbone-weights", metavar="PATH", help="a local weights file of the backbone")
    parser.add_argument("--pretrained", action="store_true", help="download the backbone's hub weights")
    parser.add_argument(
        "--videos",
        help="training videos: a 'synthetic:key=value,...' spec (default: 64 videos at --size, or 8 at 64 px with "
        "--smoke) or a folder / files of real videos (not with the oracle tracker)",
    )
    parser.add_argument("--steps", type=int, help="training steps per tracker (default 500, or 3 with --smoke)")
    parser.add_argument("--size", type=int,
                        help="clip size before rounding to the patch size (default 224, or 64 with --smoke)")
    parser.add_argument("--eval-videos", type=int, help="held-out synthetic videos (default 16, or 2 with --smoke)")
    parser.add_argument("--out", default="runs/tracker_ablation",
                        help="tracker_ablation.md, tracker_ablation.json and a run folder per tracker")
    parser.add_argument("--smoke", action="store_true", help="small random backbone, few steps, tiny clips, "
                        "randomly initialised learned trackers (CPU, < 2 min)")
    args = parser.parse_args(argv)

    args.trackers = args.trackers or (SMOKE_TRACKERS if args.smoke else DEFAULT_TRACKERS)
    args.steps = args.steps or (3 if args.smoke else 500)
    args.size = args.size or (64 if args.smoke else 224)
    args.eval_videos = args.eval_videos or (2 if args.smoke else 16)
    args.eval_grid = SMOKE_EVAL_GRID if args.smoke else EVAL_GRID
    if args.videos is None:
        args.videos = "synthetic:num_videos=8,num_frames=12,size=64" if args.smoke else (
            f"synthetic:num_videos=64,num_frames=24,size={args.size}"
        )
    if args.smoke and (args.backbone_weights or args.pretrained):
        parser.error("--smoke builds a small random backbone; pretrained weights do not fit it")
    if args.backbone_weights and args.pretrained:
        parser.error("pass --backbone-weights or --pretrained, not both")
    try:
        card = mosic.BACKBONES.card(args.backbone)
    except mosic.UnknownNameError as exc:
        parser.error(str(exc))
    if card is None:
        parser.error(f"backbone {args.backbone!r} has no card: the ablation reads the patch size from it")
    args.patch_size = card.patch_size
    if args.backbone_weights and not Path(args.backbone_weights).is_file():
        parser.error(f"--backbone-weights {args.backbone_weights}: no such file")
    args.init = args.backbone_weights or args.pretrained

    weights = {}
    for item in args.weights:
        name, sep, path = item.partition("=")
        if not sep or not path:
            parser.error(f"--weights takes NAME=PATH items, got {item!r}")
        weights[name] = path
    extra = sorted(set(weights) - set(args.trackers))
    if extra:
        parser.error(f"--weights names {extra} are not in --trackers {args.trackers}")
    synthetic = args.videos.startswith("synthetic:")
    args.plan, args.skipped = [], []
    for name in args.trackers:
        if name not in mosic.TRACKERS:
            if name in DEFAULT_TRACKERS:  # shipped by newer mosic versions
                args.skipped.append({"tracker": name, "reason": f"{name} is not registered in this mosic installation "
                                     f"(registered: {', '.join(mosic.list_trackers())})"})
                continue
            try:
                mosic.TRACKERS.get(name)
            except mosic.UnknownNameError as exc:
                parser.error(str(exc))
        if name == "oracle" and not synthetic:
            parser.error(
                "the 'oracle' tracker only has tracks of synthetic videos; drop it or use a 'synthetic:...' --videos"
            )
        kwargs = {**TRACKER_KWARGS.get(name, {}), **(SMOKE_TRACKER_KWARGS.get(name, {}) if args.smoke else {})}
        accepted = factory_arguments(name)
        kwargs = {k: v for k, v in kwargs.items() if accepted is None or k in accepted}
        if name == "oracle":
            init = "ground truth"
        elif not takes_weights(name):
            if name in weights:
                parser.error(f"tracker {name!r} takes no weights")
            init = "no weights"
        elif name in weights:
            if not Path(weights[name]).is_file():
                parser.error(f"--weights {name}={weights[name]}: no such file")
            kwargs["weights"], init = weights[name], f"file {weights[name]}"
        elif args.download:
            kwargs["weights"], init = True, "official (download)"
        elif args.smoke:
            kwargs["weights"], init = False, "random"
        else:
            args.skipped.append({
                "tracker": name,
                "reason": f"{name} needs weights: pass --weights {name}=PATH (a local file) or --download",
            })
            continue
        args.plan.append((name, kwargs, init))
    if not args.plan:
        parser.error("no tracker left to run: " + "; ".join(s["reason"] for s in args.skipped))
    return args


def run_tracker(name: str, kwargs: dict, init: str, config: mosic.RunConfig, args, train, held_out) -> dict:
    """TAP-Vid metrics, then post-pretraining and clustering before/after, for one tracker."""
    row_start = time.perf_counter()
    config = config.with_overrides({
        "tracker.name": name,
        "tracker.kwargs": kwargs,
        "train.out_dir": str(Path(args.out) / name),
    })
    trainer = mosic.PostPretrainer(config=config)
    tracker = trainer.tracker  # built from tracker.name / tracker.kwargs, as training builds it
    data = config.data
    tracking = evaluate_tracker(
        tracker,
        held_out,
        num_frames=data.num_frames,
        frame_stride=data.stride,
        size=data.size,
        grid_size=args.eval_grid,
        device=trainer.device,
    )

    def evaluate() -> dict:
        result = evaluate_video_clustering(
            trainer.teacher, held_out, num_frames=EVAL_FRAMES, frame_stride=EVAL_STRIDE, size=data.size,
            device=trainer.device,
        )
        return {"dataset_miou": result["dataset_miou"], "clip_miou": result["clip_miou"]}

    before = evaluate()
    start = time.perf_counter()
    trainer.fit(train)
    train_seconds = time.perf_counter() - start
    after = evaluate()
    shown = {k: v for k, v in kwargs.items() if k != "weights"}
    return {
        "tracker": name,
        "tracker_class": type(tracker).__name__,
        "tracker_kwargs": kwargs,
        "init": init,
        "note": RANDOM_NOTE if init == "random" else "",
        "settings": ", ".join(f"{k}={v}" for k, v in shown.items()) or "defaults",
        "tracking": {
            "delta_avg": tracking["delta_avg"],
            "occlusion_accuracy": tracking["occlusion_accuracy"],
            "average_jaccard": tracking["average_jaccard"],
            "point_frames_per_second": tracking["point_frames_per_second"],
            "tracker_seconds": tracking["tracker_seconds"],
            "num_videos": tracking["num_videos"],
            "num_points": tracking["num_points"],
        },
        "before": before,
        "after": after,
        "first_loss": trainer.history[0]["loss"],
        "final_loss": trainer.history[-1]["loss"],
        "steps": trainer.step,
        "train_seconds": round(train_seconds, 2),
        "wall_seconds": round(time.perf_counter() - row_start, 2),
        "run_dir": config.train.out_dir,
    }


def markdown(rows: list[dict], skipped: list[dict], header: dict) -> str:
    lines = [
        "# Tracker ablation",
        "",
        "Recipe: one RunConfig (`tracker_ablation.json` → `recipe`), only `tracker.name` / `tracker.kwargs` "
        f"change; backbone `{header['backbone']}` ({header['backbone_init']}), {header['size']} px clips, "
        f"{header['steps']} steps per tracker on `{header['videos']}`.",
        f"Tracking: TAP-Vid metrics in percent (at 256x256) on {header['tracking_eval']}; throughput in query "
        "points x frames per second of tracker time.",
        f"Clustering: {header['clustering_eval']}; mIoU in percent, teacher features, before → after "
        "post-pretraining.",
        "",
        "| tracker | weights | <δ avg | OA | AJ | points·frames/s | class mIoU before | class mIoU after "
        "| instance mIoU before | instance mIoU after | final loss | train s | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = r["tracking"]
        weights = r["init"] + (" †" if r["note"] else "")
        lines.append(
            f"| {r['tracker']} | {weights} | {t['delta_avg']:.1f} | {t['occlusion_accuracy']:.1f} "
            f"| {t['average_jaccard']:.1f} | {t['point_frames_per_second']:.0f} "
            f"| {r['before']['dataset_miou']:.1f} | {r['after']['dataset_miou']:.1f} "
            f"| {r['before']['clip_miou']:.1f} | {r['after']['clip_miou']:.1f} "
            f"| {r['final_loss']:.3f} | {r['train_seconds']:.1f} | {r['wall_seconds']:.1f} |"
        )
    lines.append("")
    if header["smoke"]:
        lines.append(
            f"Smoke run: a tiny random backbone, {header['steps']} steps (too few to move the EMA teacher: the "
            "clustering numbers before and after agree) and tiny clips. It shows that every tracker runs through "
            "the whole pipeline; it does not rank them."
        )
    if any(r["note"] for r in rows):
        lines.append(
            "† Learned tracker with randomly initialised weights (`--smoke` without `--weights`): its tracks are "
            "meaningless; the row only shows that the pipeline runs. Pass `--weights NAME=PATH` or `--download` "
            "for real numbers."
        )
    settings = [f"`{r['tracker']}`: {r['settings']}" for r in rows if r["settings"] != "defaults"]
    if settings:
        lines.append("Tracker settings other than the defaults: " + "; ".join(settings) + ".")
    for s in skipped:
        lines.append(f"Skipped `{s['tracker']}`: {s['reason']}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for s in args.skipped:
        print(f"skipping {s['tracker']}: {s['reason']}", flush=True)
    clip_size = args.size // args.patch_size * args.patch_size
    recipe = SMOKE_RECIPE if args.smoke else RECIPE
    config = mosic.RunConfig.from_dict(recipe).with_overrides({
        "backbone.name": args.backbone,
        "backbone.pretrained": args.init,
        "backbone.kwargs": {**SMOKE_ARCH, "img_size": clip_size} if args.smoke else {},
        "data.size": clip_size,
        "train.max_steps": args.steps,
    })
    train = open_videos(args.videos)
    size = getattr(train, "size", (args.size, args.size))
    span = max(config.data.stride * (config.data.num_frames - 1), EVAL_STRIDE * (EVAL_FRAMES - 1)) + 1
    held_out = SyntheticVideos(
        num_videos=args.eval_videos,
        num_frames=max(24, span),
        size=size,
        num_classes=getattr(train, "num_classes", 4),
        seed=getattr(train, "seed", 0) + EVAL_SEED_OFFSET,
    )
    rows = []
    for name, kwargs, init in args.plan:
        row = run_tracker(name, kwargs, init, config, args, train, held_out)
        rows.append(row)
        t = row["tracking"]
        print(
            f"{name} ({row['init']}): <δ avg {t['delta_avg']:.1f}, OA {t['occlusion_accuracy']:.1f}, "
            f"AJ {t['average_jaccard']:.1f}, {t['point_frames_per_second']:.0f} points·frames/s; "
            f"class mIoU {row['before']['dataset_miou']:.1f} -> {row['after']['dataset_miou']:.1f}, "
            f"instance mIoU {row['before']['clip_miou']:.1f} -> {row['after']['clip_miou']:.1f}, "
            f"loss {row['first_loss']:.3f} -> {row['final_loss']:.3f} in {row['steps']} steps, "
            f"{row['wall_seconds']:.1f} s" + (f" [{row['note']}]" if row["note"] else ""),
            flush=True,
        )
    header = {
        "backbone": args.backbone,
        "backbone_init": ("random" + (f", {SMOKE_ARCH}" if args.smoke else "")) if args.init is False
        else "hub" if args.init is True else f"file {args.init}",
        "size": clip_size,
        "steps": args.steps,
        "videos": args.videos,
        "tracking_eval": f"{held_out!r}: {config.data.num_frames} frames {config.data.stride} apart at "
        f"{clip_size} px per clip (the training clips' length and stride), a {args.eval_grid}x{args.eval_grid} "
        "query grid on frame 0",
        "clustering_eval": f"the same held-out videos, {EVAL_FRAMES} frames {EVAL_STRIDE} apart per clip",
        "smoke": args.smoke,
    }
    report = {
        **header,
        "recipe": json.loads(config.model_dump_json(exclude={"tracker": {"name", "kwargs"}})),
        "rows": rows,
        "skipped": args.skipped,
    }
    (out / "tracker_ablation.md").write_text(markdown(rows, args.skipped, header))
    (out / "tracker_ablation.json").write_text(json.dumps(report, indent=2, default=str))
    print(markdown(rows, args.skipped, header))
    return rows


if __name__ == "__main__":
    main()
