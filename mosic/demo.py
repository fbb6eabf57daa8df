"""``mosic demo``: post-pretrain a small ViT on synthetic videos, offline, on CPU, against a
no-motion baseline, and evaluate both on a world configuration training never saw.

From one starting backbone (``start``: random init, or a local weights file), two runs of
the same steps, data and seed: ``mosic`` (targets follow the tracks) and ``mosic-still``
(the same loss on still points: no motion). The start and both results are evaluated on
held-out clips of another world configuration (new seeds, faster motion, more and smaller
objects) with four dense measures:

- class clustering mIoU: one K-means over all patches of all clips, K = classes + 1,
  Hungarian-matched (by IoU) to the class masks;
- instance clustering mIoU: K-means per clip with K = its number of instances;
- label propagation J&F: DAVIS-style propagation of the first frame's instance masks;
- track consistency: the share of tracked points whose feature in a later frame has its
  own frame-0 feature as nearest (:mod:`mosic.eval.track_consistency`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

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

#: the training world: SyntheticVideos' defaults, seed 0
TRAIN_WORLD: dict[str, Any] = {"seed": 0}
#: the evaluation world: other seeds, motion 1.5x as fast, 3-5 smaller objects per video
EVAL_WORLD: dict[str, Any] = {"seed": 30_000, "speed": 1.5, "objects_per_video": (3, 5), "object_size": (0.1, 0.2)}
#: what the demo compares, in order
OBJECTIVES = ("mosic", "mosic-still")
METRICS = ("class_miou", "instance_miou", "label_propagation_jf", "track_consistency")


def demo_config(steps: int = 300, out_dir: str | Path = "runs/demo") -> RunConfig:
    return RunConfig.from_dict(DEMO_CONFIG).with_overrides({"train.max_steps": steps, "train.out_dir": str(out_dir)})


def evaluate_demo(backbone, held_out, device=None) -> dict[str, float]:
    """The demo's four measures of ``backbone`` on ``held_out`` (a
    :class:`~mosic.data.segmentation.SyntheticVideoSegmentation`), in percent."""
    from .eval.clustering import evaluate_video_clustering
    from .eval.label_propagation import evaluate_label_propagation
    from .eval.track_consistency import track_consistency

    clustering = evaluate_video_clustering(backbone, held_out, num_frames=8, frame_stride=2, device=device)
    propagation = evaluate_label_propagation(backbone, held_out, max_frames=12, device=device)
    return {
        "class_miou": round(float(clustering["dataset_miou"]), 2),
        "instance_miou": round(float(clustering["clip_miou"]), 2),
        "label_propagation_jf": round(float(propagation["jf_mean"]), 2),
        "track_consistency": round(track_consistency(backbone, held_out, num_frames=8, frame_stride=2, device=device), 2),
    }


def run_demo(
    out_dir: str | Path = "runs/demo",
    steps: int = 300,
    train_videos: int = 64,
    eval_videos: int = 16,
    start: bool | str = False,
    objectives: tuple[str, ...] = OBJECTIVES,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Evaluate the start, post-pretrain it with each objective (``out_dir/<objective>``),
    evaluate each, write ``out_dir/demo_results.json``; returns the results.

    ``start``: False (random init) or a local weights file of the demo's ViT.
    """
    from .data.segmentation import SyntheticVideoSegmentation
    from .data.synthetic import SyntheticVideos
    from .train import PostPretrainer

    out_dir = Path(out_dir)
    train = SyntheticVideos(num_videos=train_videos, num_frames=24, size=64, **TRAIN_WORLD)
    held_out = SyntheticVideoSegmentation(num_videos=eval_videos, num_frames=24, size=64, **EVAL_WORLD)
    base = demo_config(steps, out_dir).with_overrides(
        {"train.progress": progress, "train.seed": seed, "backbone.pretrained": start}
    )
    runs: dict[str, dict] = {}
    started = time.perf_counter()
    runs["start"] = evaluate_demo(PostPretrainer(config=base).teacher, held_out)
    for objective in objectives:
        config = base.with_overrides({"objective.name": objective, "train.out_dir": str(out_dir / objective)})
        trainer = PostPretrainer(config=config)
        t0 = time.perf_counter()
        trainer.fit(train)
        runs[objective] = {
            **evaluate_demo(trainer.teacher, held_out, trainer.device),
            "train_seconds": round(time.perf_counter() - t0, 1),
            "first_loss": trainer.history[0]["loss"] if trainer.history else None,
            "final_loss": trainer.history[-1]["loss"] if trainer.history else None,
        }
    results = {
        "start": "random init" if start is False else str(start),
        "steps": steps,
        "seed": seed,
        "train_world": {"num_videos": train_videos, **TRAIN_WORLD},
        "eval_world": {"num_videos": eval_videos, **{k: list(v) if isinstance(v, tuple) else v for k, v in EVAL_WORLD.items()}},
        "runs": runs,
        "seconds": round(time.perf_counter() - started, 1),
        "checkpoints": {o: str(out_dir / o / "checkpoints") for o in objectives},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "demo_results.json").write_text(json.dumps(results, indent=2))
    return results


def format_results(results: dict) -> str:
    """One table: the start and each objective on the held-out world."""
    rows = [
        "| held-out world (new seeds, 1.5x motion, 3-5 smaller objects) | class clustering mIoU | "
        "instance clustering mIoU | label propagation J&F | track consistency (%) |",
        "|---|---|---|---|---|",
    ]
    for name, r in results["runs"].items():
        label = f"start ({results['start']})" if name == "start" else f"`{name}`, {results['steps']} steps"
        rows.append(f"| {label} | " + " | ".join(f"{r[m]:.1f}" for m in METRICS) + " |")
    rows.append("")
    for name, r in results["runs"].items():
        if name != "start" and r["first_loss"] is not None:
            rows.append(f"{name}: loss {r['first_loss']:.3f} -> {r['final_loss']:.3f} in {r['train_seconds']} s")
    rows.append(f"{results['seconds']} s in all; checkpoints in " + ", ".join(results["checkpoints"].values()))
    return "\n".join(rows)
