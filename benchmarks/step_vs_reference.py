"""mosic's training step against the authors' step (their algorithm's cost), same process, same inputs.

The reference step is written here from the published code's algorithm (the project's
reference notes, section 1), with the gather bug fixed (it reads (x, y) correctly), bilinear
teacher reads (their train.sh reads nearest) and mosic's patch-centre queries:

* the tracker runs inside every step (``--reference-tracker``; CoTracker3 in the
  paper), or reads the same cached tracks as mosic (``--reference-cached``);
* the student runs on all T frames (only frame 0 reaches the loss), the teacher on all T;
* every teacher frame's feature map is upsampled to pixels in a Python loop and the
  track points are indexed; the student's frame-0 map likewise (the authors upsample
  more; this keeps the reference's cost a lower bound);
* plain-exp Sinkhorn over all points of all frames, fp32;
* cross-entropy of the student's frame-0 scores against the teacher's argmax, weighted
  by visibility, divided by all entries; AdamW; EMA in a Python loop over the parameters
  (the teacher holds the student's frozen tensors itself, so those are skipped: multiplying
  them by the momentum would shrink the frozen weights of both networks every step).

mosic's step is ``PostPretrainer.train_step`` on the same batch with cached tracks (the
track cache), no token masking for both (the authors' train.sh). Learned trackers and
backbones run with random weights: speed does not depend on them.

    python benchmarks/step_vs_reference.py --device cpu --batch 2 --repeats 2
"""

from __future__ import annotations

import argparse
import copy
import resource
import statistics
import time

import torch
import torch.nn.functional as F

import mosic
from mosic.data.clips import ClipDataset, collate_clips
from mosic.data.synthetic import SyntheticVideos
from mosic.sinkhorn import plain_sinkhorn
from mosic.tracks import query_grid


def reference_step(trainer: mosic.PostPretrainer, frames: torch.Tensor, tracks: mosic.Tracks | None, tracker) -> float:
    """One step of the authors' algorithm on the trainer's student/teacher; returns the loss."""
    student, teacher = trainer.learner, trainer.teacher_learner
    b, t, _, h, w = frames.shape
    if tracks is None:
        queries = query_grid(h, w, trainer.config.tracker.grid_size).to(frames.device).expand(b, -1, -1)
        with torch.no_grad():
            tracks = tracker(frames, queries)
    images = student.backbone.preprocess(frames)
    student_tokens = student.tokens(images)  # all T frames, with grad
    with torch.no_grad():
        teacher_tokens = teacher.tokens(images)
    xy = tracks.xy.round().long()
    x, y = xy[..., 0].clamp(0, w - 1), xy[..., 1].clamp(0, h - 1)  # (B, T, N)
    batch_index = torch.arange(b, device=frames.device)[:, None]
    teacher_points = []
    with torch.no_grad():
        for k in range(t):  # upsample each frame's map to pixels, then index the points
            full = F.interpolate(teacher_tokens[:, k].permute(0, 3, 1, 2), size=(h, w), mode="bilinear", align_corners=False)
            teacher_points.append(full.permute(0, 2, 3, 1)[batch_index, y[:, k], x[:, k]])
    full = F.interpolate(student_tokens[:, 0].permute(0, 3, 1, 2), size=(h, w), mode="bilinear", align_corners=False)
    student_points = full.permute(0, 2, 3, 1)[batch_index, y[:, 0], x[:, 0]]  # (B, N, D)
    objective = student.objective
    with torch.no_grad():
        teacher_scores = teacher.objective.scores(torch.stack(teacher_points, 1))  # (B, T, N, K)
        targets = plain_sinkhorn(teacher_scores.reshape(-1, teacher_scores.shape[-1]).float()).argmax(-1).view(b, t, -1)
    log_p = F.log_softmax(objective.scores(student_points) / objective.temperature, dim=-1)  # (B, N, K)
    nll = -torch.gather(log_p.unsqueeze(1).expand(b, t, -1, -1), 3, targets.unsqueeze(-1)).squeeze(-1)
    loss = (nll * tracks.visible.float()).sum() / tracks.visible.numel()
    trainer.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    trainer.optimizer.step()
    momentum = trainer.config.train.ema_momentum
    with torch.no_grad():  # EMA in a Python loop, one parameter at a time
        for (name, p_t), (_, p_s) in zip(teacher.named_parameters(), student.named_parameters()):
            if p_t is p_s:  # a frozen tensor the teacher shares with the student: EMA(x, x) = x
                continue
            p_t.mul_(momentum).add_(p_s.detach(), alpha=1 - momentum)
    objective.prototypes.normalize_()
    return float(loss.detach())


def paper_setting(
    backbone: str,
    backbone_kwargs: dict,
    frames: int,
    size: int,
    grid: int,
    batch: int,
    mask_ratio: float,
    device: str,
    objective: dict | None = None,
) -> tuple[mosic.PostPretrainer, dict]:
    """A trainer (random weights, optimizer ready) and one batch of synthetic clips with
    exact cached tracks on ``device``: the inputs both steps are timed on."""
    config = {
        "backbone": {"name": backbone, "pretrained": False, "kwargs": backbone_kwargs},
        "tracker": {"name": "oracle", "grid_size": grid},
        "objective": objective or {},
        "data": {"num_frames": frames, "frame_stride": 2, "size": size, "global_batch_size": batch},
        "train": {"mask_ratio": mask_ratio, "device": device, "progress": False},
    }
    trainer = mosic.PostPretrainer(config=config)
    trainer._prepare_optimizer(1000)
    source = SyntheticVideos(num_videos=batch, num_frames=2 * frames, size=size, seed=0)
    dataset = ClipDataset(source, frames, 2, size, (0.4, 1.0))
    clips = collate_clips([dataset[(0, i)] for i in range(batch)])
    clips["frames"] = clips["frames"].to(device)
    clips["tracks"] = trainer._tracks_for(clips["frames"], clips["meta"])  # exact tracks: what a track cache holds
    return trainer, clips


def timed(fn, repeats: int, device: str) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="dinov2-s14", help="registered name, built with random weights")
    parser.add_argument("--backbone-kwargs", default="", help="e.g. depth=4 (small CPU runs)")
    parser.add_argument("--reference-tracker", default="cotracker3")
    parser.add_argument("--batch", type=int, default=2, help="clips per step")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", choices=["mosic", "reference-cached", "reference-tracker"], help="run one step kind (per-step peak RSS)")
    parser.add_argument("--mask-ratio", type=float, default=0.0, help="mosic's token masking (authors' train.sh: 0)")
    args = parser.parse_args(argv)
    extra = {k: int(v) for k, v in (kv.split("=") for kv in args.backbone_kwargs.split(",") if kv)}

    trainer, batch = paper_setting(
        args.backbone, extra, args.frames, args.size, args.grid, args.batch, args.mask_ratio, args.device
    )
    frames, cached = batch["frames"], batch["tracks"]
    reference = copy.deepcopy(trainer)
    factory = mosic.trackers.TRACKERS.get(args.reference_tracker).factory
    import inspect

    kwargs = {"weights": False} if "weights" in inspect.signature(factory).parameters else {}
    tracker = mosic.create_tracker(args.reference_tracker, **kwargs).to(args.device)

    steps = {
        "mosic (cached tracks)": lambda: trainer.train_step(batch),
        "reference (cached tracks)": lambda: reference_step(reference, frames, cached, None),
        f"reference ({args.reference_tracker} in the step)": lambda: reference_step(reference, frames, None, tracker),
    }
    if args.only:
        kinds = ["mosic", "reference-cached", "reference-tracker"]
        steps = {k: v for kind, (k, v) in zip(kinds, steps.items()) if kind == args.only}
    results, peaks = {}, {}
    for name, step in steps.items():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        results[name] = timed(step, args.repeats, args.device)
        if args.device.startswith("cuda"):
            peaks[name] = torch.cuda.max_memory_allocated() / 2**20
    base = results.get("mosic (cached tracks)", next(iter(results.values())))
    print(
        f"| step | s per step | clips/s | mosic speed-up | ({args.backbone} {extra or ''} random init, {args.batch} clips x "
        f"{args.frames} frames, {args.size} px, {args.grid}x{args.grid} points, {args.device}, {torch.get_num_threads()} threads)"
    )
    print("|---|---:|---:|---:|")
    for name, seconds in results.items():
        print(f"| {name} | {seconds:.2f} | {args.batch / seconds:.3f} | {seconds / base:.2f}x |")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory of the process: {peak:.0f} MiB (every step run; --only NAME for one)")
    for name, mib in peaks.items():
        print(f"peak CUDA memory, {name}: {mib:.0f} MiB")
    return {"seconds": results, "peak_cuda_mib": peaks, "peak_rss_mib": peak}


if __name__ == "__main__":
    main()
