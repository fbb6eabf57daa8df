"""``mosic demo``: post-pretrain a small random ViT on synthetic videos, offline, on CPU.

It measures video clustering (K-means over the teacher's patch features, Hungarian-
matched to the ground-truth masks of held-out synthetic clips) before and after
post-pretraining. From random weights a few hundred CPU steps do not make features
better for clustering (see docs/demo.md); the demo shows the whole pipeline working
and reports the numbers as they are.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .config import RunConfig

DEMO_CONFIG = {
    "backbone": {
        "name": "vit-tiny",
        "pretrained": False,
        "train_blocks": "all",
        "kwargs": {"patch_size": 8, "img_size": 64, "depth": 6},
    },
    "tracker": {"name": "oracle", "grid_size": 8},
    "objective": {"name": "mosic", "head_hidden_dims": [512, 512], "num_prototypes": 100},
    "data": {"num_frames": 8, "frame_stride": 2, "size": 64, "global_batch_size": 8, "num_workers": 1},
    "optim": {"backbone_lr": 1e-4, "head_lr": 1e-4, "warmup_steps": 20},
    "train": {"max_steps": 300, "log_every": 10, "checkpoint_every": 100, "mask_ratio": 0.1, "seed": 0},
}


def demo_config(steps: int = 300, out_dir: str | Path = "runs/demo") -> RunConfig:
    return RunConfig.from_dict(DEMO_CONFIG).with_overrides({"train.max_steps": steps, "train.out_dir": str(out_dir)})


def run_demo(
    out_dir: str | Path = "runs/demo",
    steps: int = 300,
    train_videos: int = 64,
    eval_videos: int = 16,
    progress: bool = True,
) -> dict:
    """Train, evaluate before/after, write ``demo_results.json``; returns the results."""
    from .data.synthetic import SyntheticVideos
    from .eval.clustering import evaluate_video_clustering
    from .train import PostPretrainer

    out_dir = Path(out_dir)
    config = demo_config(steps, out_dir).with_overrides({"train.progress": progress})
    size = config.data.size
    train = SyntheticVideos(num_videos=train_videos, num_frames=24, size=size, seed=0)
    held_out = SyntheticVideos(num_videos=eval_videos, num_frames=24, size=size, seed=10_000)

    def evaluate(trainer: PostPretrainer) -> dict:
        result = evaluate_video_clustering(trainer.teacher, held_out, num_frames=8, frame_stride=2, device=trainer.device)
        return {"dataset_miou": result["dataset_miou"], "clip_miou": result["clip_miou"]}

    trainer = PostPretrainer(config=config)
    before = evaluate(trainer)
    start = time.perf_counter()
    trainer.fit(train)
    train_seconds = time.perf_counter() - start
    after = evaluate(trainer)
    results = {
        "before": before,
        "after": after,
        "steps": trainer.step,
        "train_seconds": round(train_seconds, 1),
        "final_loss": trainer.history[-1]["loss"] if trainer.history else None,
        "first_loss": trainer.history[0]["loss"] if trainer.history else None,
        "checkpoint": str(out_dir / "checkpoints"),
    }
    (out_dir / "demo_results.json").write_text(json.dumps(results, indent=2))
    return results


def format_results(results: dict) -> str:
    rows = [
        "| held-out synthetic clips | class clustering mIoU (per dataset) | instance clustering mIoU (per clip) |",
        "|---|---|---|",
    ]
    for label in ("before", "after"):
        r = results[label]
        rows.append(f"| {label} post-pretraining | {r['dataset_miou']:.1f} | {r['clip_miou']:.1f} |")
    rows.append("")
    rows.append(
        f"{results['steps']} steps in {results['train_seconds']} s; loss {results['first_loss']:.3f} -> "
        f"{results['final_loss']:.3f}; checkpoints in {results['checkpoint']}"
    )
    return "\n".join(rows)
