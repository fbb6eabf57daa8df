"""Backbone ablation: one MoSiC recipe, several backbones, one table of before/after metrics.

Every backbone is post-pretrained with the same RunConfig; only ``backbone.*`` and the
clip size change. The clip size is ``--size`` rounded down to a multiple of the
backbone's patch size (224 px suits patch 14 and patch 16 alike; the smoke run's 64 px
gives 56 px for patch 14), and is recorded in the table. Before and after training, the
teacher's patch features of held-out synthetic clips (a different seed) are clustered
with K-means and Hungarian-matched to the ground truth (``evaluate_video_clustering``):
class clustering mIoU over the dataset and instance clustering mIoU per clip. DAVIS and
YouTube-VOS evaluation comes with the evaluation suite (issue 6).

Training videos are synthetic, so that the ``oracle`` tracker gives exact tracks and the
held-out evaluation has exact masks: the table compares backbones, not trackers. For real
videos, train with ``mosic fit`` and a real tracker (``lk`` needs no weights; CoTracker and
RAFT take local weights); DAVIS/YouTube-VOS evaluation comes with issue 6.

Usage::

    python examples/backbone_ablation.py --smoke --out runs/ablation_smoke   # tiny random models, CPU, < 1 min
    python examples/backbone_ablation.py --pretrained --steps 1000 --out runs/ablation   # hub weights, GPU
    python examples/backbone_ablation.py --weights dinov2-s14=dinov2_vits14.safetensors --backbones dinov2-s14

Writes ``ablation.md`` and ``ablation.json`` to ``--out``, and one run folder per backbone
(config.yaml, metrics.jsonl, final checkpoint).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import mosic
from mosic.data import SyntheticVideos, open_videos
from mosic.eval import evaluate_video_clustering

#: the recipe shared by every backbone: the paper's defaults (RunConfig), the oracle
#: tracker, frames 2 apart because the synthetic videos are 24 frames long, and a loader
#: worker per core (up to 8): rendering a 12-frame 224 px synthetic clip takes ~0.4 s
RECIPE = {
    "tracker": {"name": "oracle"},
    "data": {"frame_stride": 2, "num_workers": min(8, os.cpu_count() or 1)},
}
#: the smoke run's recipe: small head, short clips, tiny batches, no worker processes
SMOKE_RECIPE = {
    "tracker": {"name": "oracle", "grid_size": 4},
    "objective": {"head_hidden_dims": [64], "projection_dim": 32, "num_prototypes": 16},
    "data": {"num_frames": 4, "frame_stride": 2, "global_batch_size": 4, "num_workers": 0},
    "optim": {"backbone_lr": 1e-4, "head_lr": 1e-3},
    "train": {"log_every": 1, "progress": False},
}
#: architecture overrides that make each smoke backbone a small random model
SMOKE_ARCH = {"depth": 2, "embed_dim": 64, "num_heads": 2}
DEFAULT_BACKBONES = ["dino-s16", "dinov2-s14", "dinov2r-s14", "eva-clip-b16"]
EVAL_FRAMES, EVAL_STRIDE, EVAL_SEED_OFFSET = 8, 2, 10_000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=DEFAULT_BACKBONES, help="registered backbone names")
    parser.add_argument("--weights", nargs="+", default=[], metavar="NAME=PATH", help="local pretrained weights files")
    parser.add_argument(
        "--pretrained", action="store_true", help="download hub weights for the backbones without --weights"
    )
    parser.add_argument(
        "--videos",
        help="training videos, a 'synthetic:key=value,...' spec (default: 64 videos at --size, or 8 at 64 px with "
        "--smoke); this example evaluates on synthetic masks, so it trains on synthetic videos",
    )
    parser.add_argument("--steps", type=int, help="training steps per backbone (default 500, or 4 with --smoke)")
    parser.add_argument(
        "--size", type=int, help="clip size before rounding to the patch size (default 224, or 64 with --smoke)"
    )
    parser.add_argument("--eval-videos", type=int, help="held-out synthetic videos (default 16, or 4 with --smoke)")
    parser.add_argument("--out", default="runs/backbone_ablation", help="ablation.md, ablation.json and a run folder per backbone")
    parser.add_argument(
        "--smoke", action="store_true", help="small random backbones, few steps, tiny data (CPU, < 1 min)"
    )
    args = parser.parse_args(argv)

    args.steps = args.steps or (4 if args.smoke else 500)
    args.size = args.size or (64 if args.smoke else 224)
    args.eval_videos = args.eval_videos or (4 if args.smoke else 16)
    if args.videos is None:
        args.videos = "synthetic:num_videos=8,num_frames=12,size=64" if args.smoke else (
            f"synthetic:num_videos=64,num_frames=24,size={args.size}"
        )
    if not args.videos.startswith("synthetic:"):
        parser.error(
            "--videos must be a 'synthetic:...' spec: this example trains with the exact 'oracle' tracks and "
            "evaluates on synthetic masks; for real videos use `mosic fit` with tracker.name=lk or cotracker3"
        )
    weights = {}
    for item in args.weights:
        name, sep, path = item.partition("=")
        if not sep or not path:
            parser.error(f"--weights takes NAME=PATH items, got {item!r}")
        weights[name] = path
    extra = sorted(set(weights) - set(args.backbones))
    if extra:
        parser.error(f"--weights names {extra} are not in --backbones {args.backbones}")
    if args.smoke and (weights or args.pretrained):
        parser.error("--smoke builds small random backbones; pretrained weights do not fit them")
    for name in args.backbones:
        try:
            card = mosic.BACKBONES.card(name)
        except mosic.UnknownNameError as exc:
            parser.error(str(exc))
        if card is None:
            parser.error(f"backbone {name!r} has no card: the ablation reads the patch size from it")
    args.init = {name: weights.get(name, args.pretrained) for name in args.backbones}
    return args


def run_backbone(name: str, pretrained: bool | str, config: mosic.RunConfig, args, train, held_out) -> dict:
    """Build, evaluate, post-pretrain and re-evaluate one backbone; returns its table row."""
    card = mosic.BACKBONES.card(name)
    clip_size = args.size // card.patch_size * card.patch_size
    kwargs = {**SMOKE_ARCH, "img_size": clip_size} if args.smoke else {}
    config = config.with_overrides(
        {
            "backbone.name": name,
            "backbone.pretrained": pretrained,
            "backbone.kwargs": kwargs,
            "data.size": clip_size,
            "train.max_steps": args.steps,
            "train.out_dir": str(Path(args.out) / name),
        }
    )
    trainer = mosic.PostPretrainer(config=config)

    def evaluate() -> dict:
        result = evaluate_video_clustering(
            trainer.teacher,
            held_out,
            num_frames=EVAL_FRAMES,
            frame_stride=EVAL_STRIDE,
            size=clip_size,
            device=trainer.device,
        )
        return {"dataset_miou": result["dataset_miou"], "clip_miou": result["clip_miou"]}

    before = evaluate()
    start = time.perf_counter()
    trainer.fit(train)
    train_seconds = time.perf_counter() - start
    after = evaluate()
    backbone = trainer.student
    return {
        "backbone": name,
        "architecture": card.architecture + (f" (overridden: {kwargs})" if kwargs else ""),
        "init": "random" if pretrained is False else "hub" if pretrained is True else f"file {pretrained}",
        "patch_size": backbone.patch_size,
        "clip_size": clip_size,
        "tokens": f"{clip_size // backbone.patch_size}x{clip_size // backbone.patch_size}",
        "params": sum(p.numel() for p in backbone.parameters()),
        "trainable_params": sum(p.numel() for _, p in backbone.trainable_parameters()),
        "before": before,
        "after": after,
        "first_loss": trainer.history[0]["loss"],
        "final_loss": trainer.history[-1]["loss"],
        "steps": trainer.step,
        "train_seconds": round(train_seconds, 2),
        "run_dir": config.train.out_dir,
    }


def markdown(rows: list[dict], header: dict) -> str:
    lines = [
        "# Backbone ablation",
        "",
        f"Recipe: one RunConfig (`ablation.json` → `recipe`), {header['steps']} steps per backbone on "
        f"`{header['videos']}` with the `oracle` tracker; clip size = {header['size']} px rounded down to a "
        "multiple of the patch size.",
        f"Evaluation: {header['eval']}; mIoU in percent, teacher features, before → after post-pretraining. "
        "DAVIS/YouTube-VOS evaluation comes with the evaluation suite (issue 6).",
        "",
        "| backbone | init | clip px (tokens) | params | class mIoU before | class mIoU after "
        "| instance mIoU before | instance mIoU after | final loss | steps | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backbone']} | {r['init']} | {r['clip_size']} ({r['tokens']}) | {r['params'] / 1e6:.2f} M "
            f"| {r['before']['dataset_miou']:.1f} | {r['after']['dataset_miou']:.1f} "
            f"| {r['before']['clip_miou']:.1f} | {r['after']['clip_miou']:.1f} "
            f"| {r['final_loss']:.3f} | {r['steps']} | {r['train_seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = mosic.RunConfig.from_dict(SMOKE_RECIPE if args.smoke else RECIPE)
    train = open_videos(args.videos)
    held_out = SyntheticVideos(
        num_videos=args.eval_videos,
        num_frames=EVAL_STRIDE * (EVAL_FRAMES - 1) + 1,
        size=train.size,
        num_classes=train.num_classes,
        seed=train.seed + EVAL_SEED_OFFSET,
    )
    rows = []
    for name in args.backbones:
        row = run_backbone(name, args.init[name], config, args, train, held_out)
        rows.append(row)
        print(
            f"{name}: class mIoU {row['before']['dataset_miou']:.1f} -> {row['after']['dataset_miou']:.1f}, "
            f"instance mIoU {row['before']['clip_miou']:.1f} -> {row['after']['clip_miou']:.1f}, "
            f"loss {row['first_loss']:.3f} -> {row['final_loss']:.3f} in {row['steps']} steps, "
            f"{row['train_seconds']:.1f} s",
            flush=True,
        )
    header = {
        "steps": args.steps,
        "videos": args.videos,
        "size": args.size,
        "eval": f"{held_out!r}, {EVAL_FRAMES} frames {EVAL_STRIDE} apart per clip",
    }
    (out / "ablation.md").write_text(markdown(rows, header))
    report = {**header, "recipe": json.loads(config.model_dump_json(exclude={"backbone"})), "rows": rows}
    (out / "ablation.json").write_text(json.dumps(report, indent=2))
    print(markdown(rows, header))
    return rows


if __name__ == "__main__":
    main()
