"""Compare objectives on synthetic videos: same backbone init, data, seeds and steps.

Each run post-pretrains the demo's randomly initialised ViT (``mosic demo``'s config:
ViT-Ti layout, depth 6, patch 8, 64 px, oracle tracks, 8 frames, global batch 8) with
one objective, then measures on 16 held-out synthetic videos:

- class clustering mIoU (one K-means over the dataset, K = 5, Hungarian matched),
- instance clustering mIoU (K-means per clip, K = its number of instances),
- track consistency: for every ground-truth track visible in frame t > 0, whether the
  teacher feature at its position in frame t has, among the features of all 64 query
  points in frame 0, its own query point as nearest neighbour (cosine). This is what
  the MoSiC loss asks for (the same physical point keeps its cluster over time);
- the fraction of (point, frame) targets on which tracked and static targets differ
  under the initial teacher (how different the supervision of `mosic` and `mosic-still` is).

Usage::

    python examples/objective_comparison.py --out runs/objectives            # ~20 min on 2 CPU cores
    python examples/objective_comparison.py --smoke --out /tmp/objectives    # seconds, for the tests
    python examples/objective_comparison.py --stride 6 --objectives mosic mosic-still
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import mosic
from mosic.data import SyntheticVideos
from mosic.demo import demo_config
from mosic.eval.clustering import evaluate_video_clustering
from mosic.eval.track_consistency import track_consistency
from mosic.trackers import OracleTracker, query_grid

OBJECTIVES = ["mosic", "mosic-propagated", "mosic-still", "spacetime-kmeans", "correspondence"]
EVAL_FRAMES, EVAL_STRIDE, EVAL_GRID = 8, 2, 8


@torch.no_grad()
def target_difference(trainer: mosic.PostPretrainer, source: SyntheticVideos) -> float:
    """% of visible (point, frame > 0) entries whose teacher Sinkhorn target differs between
    tracked positions (`mosic`) and still positions (`mosic-still`), under the current teacher."""
    from mosic.data.clips import ClipDataset, collate_clips
    from mosic.objectives import MoSiCObjective, ObjectiveInputs

    data = trainer.config.data
    dataset = ClipDataset(source, data.num_frames, data.stride, data.size, data.crop_scale, 0.0, seed=1)
    batch = collate_clips([dataset[(0, i)] for i in range(len(source))])
    frames = batch["frames"]
    b, t, _, h, w = frames.shape
    tracks = OracleTracker().track(frames, query_grid(h, w, trainer.config.tracker.grid_size).expand(b, -1, -1), clips=batch["meta"])
    backbone = trainer.teacher
    tokens = trainer.teacher_learner.tokens(backbone.preprocess(frames))
    objective = trainer.teacher_learner.objective
    if not isinstance(objective, MoSiCObjective):
        return float("nan")
    used = tracks.visible & tracks.visible[:, :1]
    inputs = ObjectiveInputs(tokens[:, :1], tokens, tracks, backbone.patch_size)
    target = objective.target
    objective.target = "tracked"  # read each frame at the given positions, whatever the run trained with
    try:
        moving = objective.teacher_targets(inputs, objective, used)
        still = objective.teacher_targets(inputs.replace(tracks=mosic.Tracks.still(tracks.xy[:, 0], t)), objective, used)
    finally:
        objective.target = target
    later = used[:, 1:]
    return 100.0 * float((moving[:, 1:] != still[:, 1:])[later].float().mean())


def normalized_mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """NMI of two labelings, 2 I(a; b) / (H(a) + H(b)) (0: independent, 1: the same partition)."""
    _, a = np.unique(a, return_inverse=True)
    _, b = np.unique(b, return_inverse=True)
    joint = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(joint, (a, b), 1.0)
    joint /= joint.sum()
    pa, pb = joint.sum(1), joint.sum(0)
    nz = joint > 0
    mutual = float((joint[nz] * np.log(joint[nz] / np.outer(pa, pb)[nz])).sum())
    entropy = float(-(pa[pa > 0] * np.log(pa[pa > 0])).sum() - (pb[pb > 0] * np.log(pb[pb > 0])).sum())
    return 2.0 * mutual / entropy if entropy > 0 else 1.0


@torch.no_grad()
def target_information(trainer: mosic.PostPretrainer, source: SyntheticVideos) -> dict:
    """What the teacher's Sinkhorn targets encode, on the frame-0 query points of held-out
    clips (whole frames, 8 x 8 grid): NMI of the target cluster with the point's grid cell
    (absolute position) and with its ground-truth class. MoSiC-family objectives only."""
    from mosic.objectives import MoSiCObjective, ObjectiveInputs

    objective = trainer.teacher_learner.objective
    if not isinstance(objective, MoSiCObjective):
        return {}
    backbone = trainer.teacher
    frames_index = [i * EVAL_STRIDE for i in range(EVAL_FRAMES)]
    frames = torch.stack([torch.from_numpy(source.read_frames(v, frames_index)) for v in range(len(source))])
    frames = frames.permute(0, 1, 4, 2, 3)  # (B, T, 3, H, W)
    b, t, _, h, w = frames.shape
    queries = query_grid(h, w, EVAL_GRID)
    xy = queries[:, 1:].expand(b, 1, -1, -1)
    tokens = trainer.teacher_learner.tokens(backbone.preprocess(frames[:, :1]))
    visible = torch.ones(xy.shape[:-1], dtype=torch.bool)
    inputs = ObjectiveInputs(tokens, tokens, mosic.Tracks(xy, visible), backbone.patch_size)
    targets = objective.teacher_targets(inputs, objective, visible)[:, 0].numpy()  # (B, N)
    cols, rows = queries[:, 1].round().long().numpy(), queries[:, 2].round().long().numpy()
    classes = np.stack([source.ground_truth(v).class_masks([0])[0][rows, cols] for v in range(b)])
    cells = np.broadcast_to(np.arange(targets.shape[1]), targets.shape)
    shuffled = np.random.default_rng(0).permutation(targets.ravel())  # chance level: same sizes, no relation
    return {
        "nmi_position": round(100 * normalized_mutual_information(targets.ravel(), cells.ravel()), 1),
        "nmi_class": round(100 * normalized_mutual_information(targets.ravel(), classes.ravel()), 1),
        "nmi_position_chance": round(100 * normalized_mutual_information(shuffled, cells.ravel()), 1),
        "nmi_class_chance": round(100 * normalized_mutual_information(shuffled, classes.ravel()), 1),
        "clusters": int(len(np.unique(targets))),
    }


def run(objectives: list[str], steps: int, out: Path, stride: int, train_videos: int, eval_videos: int, smoke: bool,
        seed: int = 0) -> dict:
    train = SyntheticVideos(num_videos=train_videos, num_frames=24 if stride <= 2 else 8 * stride, size=64, seed=0)
    held_out = SyntheticVideos(num_videos=eval_videos, num_frames=24, size=64, seed=10_000)
    rows: dict[str, dict] = {}
    for name in objectives:
        overrides = {"objective.name": name, "train.progress": False, "data.frame_stride": stride, "train.seed": seed}
        if smoke:
            overrides.update({"backbone.kwargs.depth": 1, "objective.head_hidden_dims": [32], "objective.num_prototypes": 16,
                              "data.global_batch_size": 2, "data.num_workers": 0, "train.checkpoint_every": 1000})
        config = demo_config(steps, out / name).with_overrides(overrides)
        trainer = mosic.PostPretrainer(config=config)  # seeds torch with train.seed: the same init for every run
        if "before" not in rows:
            rows["before"] = evaluate(trainer, held_out)
            rows["before"]["target_difference"] = target_difference(trainer, held_out)
        start = time.perf_counter()
        trainer.fit(train)
        rows[name] = evaluate(trainer, held_out)
        rows[name]["train_seconds"] = round(time.perf_counter() - start, 1)
        rows[name]["first_loss"] = trainer.history[0]["loss"]
        rows[name]["final_loss"] = trainer.history[-1]["loss"]
        print(f"{name}: {rows[name]}", flush=True)
    return rows


def evaluate(trainer: mosic.PostPretrainer, held_out: SyntheticVideos) -> dict:
    result = evaluate_video_clustering(trainer.teacher, held_out, num_frames=EVAL_FRAMES, frame_stride=EVAL_STRIDE)
    return {
        "dataset_miou": round(result["dataset_miou"], 1),
        "clip_miou": round(result["clip_miou"], 1),
        "track_consistency": round(track_consistency(trainer.teacher, held_out, EVAL_FRAMES, EVAL_STRIDE, EVAL_GRID), 1),
    }


def format_table(rows: dict) -> str:
    lines = [
        "| run | class clustering mIoU | instance clustering mIoU | track consistency (%) | loss first -> last | train s |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        loss = f"{r['first_loss']:.3f} -> {r['final_loss']:.3f}" if "final_loss" in r else "-"
        lines.append(
            f"| {name} | {r['dataset_miou']:.1f} | {r['clip_miou']:.1f} | {r['track_consistency']:.1f} | {loss} | {r.get('train_seconds', '-')} |"
        )
    if "target_difference" in rows.get("before", {}):
        lines.append("")
        lines.append(f"Initial teacher: tracked and static targets differ on {rows['before']['target_difference']:.1f}% of visible later-frame entries.")
    return "\n".join(lines)


def diagnose(runs: list[Path], eval_videos: int) -> dict:
    """Target diagnostics of saved runs (their latest checkpoints) and of their initial state."""
    held_out = SyntheticVideos(num_videos=eval_videos, num_frames=24, size=64, seed=10_000)
    rows: dict[str, dict] = {}
    for run_dir in runs:
        trainer = mosic.PostPretrainer.load(run_dir)
        if "before" not in rows:
            config = trainer.config.with_overrides({"objective.name": "mosic", "train.out_dir": None})
            initial = mosic.PostPretrainer(config=config)  # the runs' common initial weights (train.seed)
            rows["before"] = {**target_information(initial, held_out), "target_difference": target_difference(initial, held_out)}
        rows[trainer.config.objective.name] = {**target_information(trainer, held_out), "target_difference": target_difference(trainer, held_out)}
        print(f"{run_dir}: {rows[trainer.config.objective.name]}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objectives", nargs="+", default=OBJECTIVES)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--stride", type=int, default=2, help="source frames between clip frames")
    parser.add_argument("--train-videos", type=int, default=64)
    parser.add_argument("--eval-videos", type=int, default=16)
    parser.add_argument("--out", default="runs/objectives")
    parser.add_argument("--seed", type=int, default=0, help="train.seed: initial weights, data order, crops and masks")
    parser.add_argument("--smoke", action="store_true", help="tiny settings: checks the script, measures nothing")
    parser.add_argument("--diagnose", nargs="+", metavar="RUN", help="only print target diagnostics of saved runs")
    args = parser.parse_args(argv)
    if args.diagnose:
        rows = diagnose([Path(r) for r in args.diagnose], 2 if args.smoke else args.eval_videos)
        print("| run | NMI(target, position) (chance) | NMI(target, class) (chance) | clusters used | tracked vs static targets differ (%) |")
        print("|---|---|---|---|---|")
        for name, r in rows.items():
            if "nmi_position" not in r:
                continue
            print(f"| {name} | {r['nmi_position']} ({r['nmi_position_chance']}) | {r['nmi_class']} ({r['nmi_class_chance']}) "
                  f"| {r['clusters']} | {r['target_difference']:.1f} |")
        return rows
    if args.smoke:
        args.steps, args.train_videos, args.eval_videos = 2, 4, 2
    out = Path(args.out)
    rows = run(args.objectives, args.steps, out, args.stride, args.train_videos, args.eval_videos, args.smoke, args.seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    table = format_table(rows)
    (out / "results.md").write_text(table + "\n")
    print(table)
    return rows


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
