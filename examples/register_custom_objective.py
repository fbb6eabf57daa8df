"""Add your own training objective to mosic and post-pretrain with it, by name.

An objective is an ``nn.Module`` that owns its learnable heads and turns what one
training step computed into a loss. mosic hands it a :class:`mosic.objectives.ObjectiveInputs`:

* ``student_tokens`` (B, S, h, w, D): the student's patch tokens of the frames listed in
  the objective's ``student_frames`` (the student runs on nothing else), with grad;
* ``teacher_tokens`` (B, T, h, w, D): the EMA teacher's tokens of every frame, no grad;
* ``tracks``: ``xy`` (B, T, N, 2) (x, y) pixels of the G x G frame-0 grid through the clip,
  ``visible`` (B, T, N);
* ``patch_size`` and the student's token-drop mask,

and the teacher's copy of the objective (same class, EMA weights) as ``teacher``. It
returns :class:`mosic.objectives.ObjectiveOutput` (the loss to backpropagate and detached
metrics). Set ``uses_tracks = False`` if it never reads the tracks: the trainer then runs
no tracker at all.

This example registers ``mosic-soft``: the MoSiC loss with SOFT targets. Instead of the
argmax of the teacher's Sinkhorn assignment at the tracked position, the target is the
whole assignment distribution q (as SwAV uses its codes), and the loss is the cross-entropy
``-sum_k q_k log p_k`` of the student's frame-0 prediction p. It reuses the built-in
head, prototypes and Sinkhorn, and takes a new argument ``target_sharpness`` (q is raised
to this power and renormalised; 1 keeps Sinkhorn's q), which a config sets with
``objective.kwargs.target_sharpness=2``.

Third-party packages register without an import, through an entry point::

    # pyproject.toml of your package
    [project.entry-points."mosic.objectives"]
    mosic-soft = "my_package.objectives:SoftMoSiC"

Usage::

    python examples/register_custom_objective.py --smoke   # tiny model, a few steps (seconds)
    python examples/register_custom_objective.py           # the demo's setting, 300 steps, before/after clustering
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

import mosic
from mosic import distributed as dist
from mosic.data import SyntheticVideos
from mosic.objectives import MoSiCObjective, ObjectiveInputs, ObjectiveOutput
from mosic.points import sample_at_points
from mosic.sinkhorn import sinkhorn


@mosic.register_objective("mosic-soft")
class SoftMoSiC(MoSiCObjective):
    """MoSiC with the teacher's soft Sinkhorn assignment as the target (see the module docstring).

    Args: those of :class:`MoSiCObjective` (the trainer fills them from the config), plus
        target_sharpness: exponent applied to the soft targets before renormalising.
    """

    def __init__(self, embed_dim: int, num_prototypes: int = 100, projection_dim: int = 256,
                 head_hidden_dims=(2048, 2048), temperature: float = 0.1, sinkhorn_epsilon: float = 0.05,
                 sinkhorn_iterations: int = 10, target_sharpness: float = 1.0):
        super().__init__(embed_dim, num_prototypes, projection_dim, head_hidden_dims, temperature,
                         sinkhorn_epsilon, sinkhorn_iterations)
        if target_sharpness <= 0:
            raise ValueError(f"target_sharpness must be > 0, got {target_sharpness}")
        self.target_sharpness = target_sharpness

    def forward(self, inputs: ObjectiveInputs, teacher: "SoftMoSiC") -> ObjectiveOutput:
        xy, visible = inputs.tracks.xy, inputs.tracks.visible  # (B, T, N, 2), (B, T, N)
        b, t, n, _ = xy.shape
        used = visible & visible[:, :1]  # visible in frame t and at the query (frame 0)

        with torch.no_grad():  # soft targets: the teacher's Sinkhorn assignment at the tracked positions
            features = sample_at_points(inputs.teacher_tokens.flatten(0, 1), xy.flatten(0, 1), inputs.patch_size)
            scores = teacher.scores(features).reshape(-1, self.prototypes.weight.shape[0])
            q = sinkhorn(scores, self.sinkhorn_epsilon, self.sinkhorn_iterations, used.reshape(-1))
            # q^s / sum q^s, in the log domain (q^s underflows for large s); unused rows stay 0
            q = torch.softmax(self.target_sharpness * q.clamp_min(1e-30).log(), dim=-1) * (q.sum(-1, keepdim=True) > 0)
            q = q.view(b, t, n, -1)

        tokens, _ = inputs.student_frame(0)
        student = sample_at_points(tokens, xy[:, 0], inputs.patch_size, "nearest")  # (B, N, D)
        log_p = torch.log_softmax(self.scores(student).float() / self.temperature, dim=-1)  # (B, N, K)
        per_entry = -(q * log_p.unsqueeze(1)).sum(-1)  # (B, T, N)
        weights = used.float()
        count = dist.all_reduce_sum(weights.sum().detach()).clamp_min(1.0)
        loss_sum = (per_entry * weights).sum()
        metrics = {
            "loss": dist.all_reduce_sum(loss_sum.detach()) / count,
            "target_entropy": dist.all_reduce_sum((-(q * q.clamp_min(1e-12).log()).sum(-1) * weights).sum()) / count,
        }
        return ObjectiveOutput(loss=loss_sum / count * dist.world_size(), metrics=metrics)


# ---- post-pretrain with it by name ---------------------------------------------------------------

def recipe(smoke: bool, steps: int, out: str) -> mosic.RunConfig:
    """The demo's setting (random ViT, oracle tracks on synthetic videos) with ``mosic-soft``."""
    from mosic.demo import demo_config

    overrides: dict[str, Any] = {"objective.name": "mosic-soft", "objective.kwargs.target_sharpness": 1.0,
                                 "train.progress": False}
    if smoke:
        overrides.update({"backbone.kwargs.depth": 1, "backbone.kwargs.img_size": 32, "data.size": 32,
                          "objective.head_hidden_dims": [32], "objective.num_prototypes": 16,
                          "tracker.grid_size": 4, "data.num_frames": 4, "data.global_batch_size": 2,
                          "data.num_workers": 0, "train.log_every": 1})
    return demo_config(steps, out).with_overrides(overrides)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from mosic.eval.clustering import evaluate_video_clustering

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny model and data, a few steps")
    parser.add_argument("--steps", type=int, help="training steps (default 300, or 3 with --smoke)")
    parser.add_argument("--out", default="runs/custom_objective")
    args = parser.parse_args(argv)
    steps = args.steps or (3 if args.smoke else 300)
    print(f"registered objectives: {', '.join(mosic.list_objectives())}")

    config = recipe(args.smoke, steps, str(Path(args.out)))
    size = config.data.size
    videos = SyntheticVideos(num_videos=4 if args.smoke else 64, num_frames=24, size=size, seed=0)
    held_out = SyntheticVideos(num_videos=2 if args.smoke else 16, num_frames=24, size=size, seed=10_000)
    trainer = mosic.PostPretrainer(config=config)
    assert isinstance(trainer.learner.objective, SoftMoSiC)

    def clustering() -> dict:
        r = evaluate_video_clustering(trainer.teacher, held_out, num_frames=8, frame_stride=2)
        return {"class": r["dataset_miou"], "instance": r["clip_miou"]}

    before = clustering()
    start = time.perf_counter()
    trainer.fit(videos)
    seconds = time.perf_counter() - start
    after = clustering()
    losses = [r["loss"] for r in trainer.history]
    print(f"trained {trainer.step} steps with {config.objective.name} in {seconds:.1f} s: "
          f"loss {losses[0]:.3f} -> {losses[-1]:.3f}, target entropy {trainer.history[-1]['target_entropy']:.3f}")
    print(f"clustering mIoU on held-out clips, class / instance: before {before['class']:.1f} / {before['instance']:.1f}, "
          f"after {after['class']:.1f} / {after['instance']:.1f}")
    reloaded = mosic.PostPretrainer.load(args.out)  # the registered name rebuilds it from the saved config
    print(f"reloaded from {args.out}: objective {type(reloaded.learner.objective).__name__}, "
          f"target_sharpness {reloaded.learner.objective.target_sharpness}")
    return {"losses": losses, "before": before, "after": after, "steps": trainer.step}


if __name__ == "__main__":
    main()
