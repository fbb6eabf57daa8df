"""Where one mosic training step spends its time and FLOPs, component by component.

The paper's setting by default: 12 frames, 224 px, a 16 x 16 track grid (256 points),
100 prototypes, ViT-S/14 (``dinov2-s14``, random init; ``--backbone dinov2-b14`` etc.),
``--batch`` clips per step, cached tracks (the track cache), no token masking (the
authors' train.sh; ``--mask-ratio 0.1`` is the paper's table). Each component is timed
on its own with the step's inputs, under the step's autocast (bf16 on CUDA) and
``torch.no_grad`` where the step has it; CUDA is synchronised around every timing.
Times (wall, and the process's CPU time over all its threads, which other processes'
load inflates less on a shared CPU) are medians over ``--repeats`` rounds, each calling
every component and the whole step once in turn, after one warm-up call of each:

* preprocess: uint8 -> normalised float, B*T frames;
* teacher forward: the EMA teacher on all B*T frames, no grad;
* student forward+backward: the student on frame 0 (B frames), backward of a
  surrogate loss through the trainable blocks;
* heads at the points: read the teacher's B*T*N point features (bilinear) and score
  them (projection head + prototypes, no grad); read the student's B*N frame-0 point
  features (nearest), score them, cross-entropy, backward to the tokens;
* Sinkhorn: ``mosic.sinkhorn.sinkhorn`` on the (B*T*N, K) teacher scores, fp32;
* EMA update: ``mosic.train.student_teacher.ema_update_`` over the trainable parameters;
* AdamW step: ``optimizer.step()`` over the trainable parameters;
* prototype re-normalisation (student and teacher);
* the whole ``PostPretrainer.train_step``; "unaccounted" is the step minus the parts.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls,
convolutions and attention, forward and backward; elementwise ops such as Sinkhorn's
are not counted): mosic's step, the reference step of ``step_vs_reference.py`` with
cached tracks, and the reference step with ``--reference-tracker`` (CoTracker3, random
weights) in the step, plus the tracker's own share. FLOP counts do not depend on the
hardware. On CUDA the model-FLOPs utilisation (step FLOPs / step time / ``--peak-tflops``)
is printed too. The projected cost of the paper's recipe (``--epochs`` 8 epochs of
``--videos`` 3471 YouTube-VOS videos at ``--global-batch`` 64 clips per step) scales the
measured time per clip linearly to 64 clips per step: GPU-hours on CUDA, CPU-hours on CPU.

    python benchmarks/components.py --device cpu --batch 2 --repeats 5 --json components.json
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import inspect
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import mosic
import mosic.train.inputs
from mosic.train.student_teacher import ema_update_
from mosic.points import sample_at_points
from mosic.sinkhorn import sinkhorn


def _load_step_vs_reference():
    """``benchmarks/step_vs_reference.py`` as a module (benchmarks/ is not a package)."""
    name = "step_vs_reference"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("step_vs_reference.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _parse_kwargs(text: str) -> dict:
    """``a=1,b=64x96,c=0.5`` -> {"a": 1, "b": (64, 96), "c": 0.5}."""
    out: dict = {}
    for item in filter(None, text.split(",")):
        key, value = item.split("=", 1)
        if "x" in value and all(part.isdigit() for part in value.split("x")):
            out[key] = tuple(int(part) for part in value.split("x"))
        else:
            try:
                out[key] = int(value)
            except ValueError:
                out[key] = float(value)
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_rounds(
    fns: dict[str, Callable[[], object]], repeats: int, device: torch.device
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall seconds and process CPU seconds (all threads) of every call: one warm-up call
    each, then ``repeats`` rounds that call every function once in turn (a burst of load
    from other processes then hits all of them alike instead of one), CUDA synchronised
    around each call. On a shared CPU the CPU seconds grow less with other processes'
    load than the wall seconds do."""
    for fn in fns.values():
        fn()
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            _sync(device)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu


def count_flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


class _CountedTracker:
    """Calls a tracker inside its own FlopCounterMode (nested counters both count)."""

    def __init__(self, tracker):
        self.tracker = tracker
        self.flops = 0

    def __call__(self, *args, **kwargs):
        with FlopCounterMode(display=False) as counter:
            out = self.tracker(*args, **kwargs)
        self.flops += int(counter.get_total_flops())
        return out


def build(args: argparse.Namespace):
    """(trainer, batch with cached tracks) as in step_vs_reference.py."""
    objective = {"num_prototypes": args.prototypes}
    if args.head_hidden:
        objective["head_hidden_dims"] = [int(v) for v in args.head_hidden.split(",")]
    if args.projection_dim:
        objective["projection_dim"] = args.projection_dim
    return _load_step_vs_reference().paper_setting(
        args.backbone, _parse_kwargs(args.backbone_kwargs), args.frames, args.size, args.grid, args.batch,
        args.mask_ratio, args.device, objective,
    )


def component_fns(trainer: mosic.PostPretrainer, batch: dict) -> dict[str, Callable[[], object]]:
    """One closure per component of ``train_step`` on ``batch``, in step order."""
    device = trainer.device
    student, teacher = trainer.learner, trainer.teacher_learner
    objective, teacher_objective = student.objective, teacher.objective
    backbone = student.backbone
    frames, tracks, metas = batch["frames"], batch["tracks"].to(device), batch["meta"]
    b, t, _, height, width = frames.shape
    patch = backbone.patch_size
    precision = trainer.config.train.precision
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")  # as train_step

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    student.train()
    if teacher is not student:
        teacher.eval()
    images = backbone.preprocess(frames)
    mask = None
    if trainer.config.train.mask_ratio > 0:  # the step's per-clip masks
        mask = mosic.train.inputs.token_masks(metas, 1, height // patch, width // patch, trainer.config.train.mask_ratio)
        mask = None if mask is None else mask.to(device)
    with torch.no_grad(), autocast():
        teacher_tokens = teacher.tokens(images)
        student_tokens = student.tokens(images[:, :1], mask)
    used = tracks.visible[:, :1] & tracks.visible  # (B, T, N)
    with torch.no_grad(), autocast():
        features = sample_at_points(teacher_tokens.flatten(0, 1), tracks.xy.flatten(0, 1), patch, "bilinear")
        scores = teacher_objective.scores(features)
    scores = scores.reshape(-1, scores.shape[-1])
    targets = sinkhorn(scores, objective.sinkhorn_epsilon, objective.sinkhorn_iterations, used.reshape(-1)).argmax(-1)
    targets = targets.view(b, t, -1)
    trainable = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    grads = [torch.randn_like(p) * 1e-3 for p in trainable]
    pairs = [(p, q) for p, q in zip(teacher.parameters(), student.parameters()) if q.requires_grad]
    ema_teacher, ema_student = [p for p, _ in pairs], [q for _, q in pairs]  # what train_step updates

    def preprocess():
        return backbone.preprocess(frames)

    def teacher_forward():
        with torch.no_grad(), autocast():
            return teacher.tokens(images)

    def student_forward_backward():
        trainer.optimizer.zero_grad(set_to_none=True)
        with autocast():
            tokens = student.tokens(images[:, :1], mask)
        tokens.float().square().mean().backward()

    def heads_at_points():
        with torch.no_grad(), autocast():
            feats = sample_at_points(teacher_tokens.flatten(0, 1), tracks.xy.flatten(0, 1), patch, "bilinear")
            teacher_objective.scores(feats)
        leaf = student_tokens[:, 0].detach().requires_grad_(True)
        with autocast():
            feats = sample_at_points(leaf, tracks.xy[:, 0], patch, "nearest")
            logits = objective.scores(feats).float() / objective.temperature  # (B, N, K)
        log_p = F.log_softmax(logits, dim=-1)
        nll = -torch.gather(log_p.unsqueeze(1).expand(b, t, -1, -1), 3, targets.unsqueeze(-1)).squeeze(-1)
        weights = used.float()
        ((nll * weights).sum() / weights.sum().clamp_min(1.0)).backward()

    def sinkhorn_only():
        with torch.no_grad():
            return sinkhorn(scores, objective.sinkhorn_epsilon, objective.sinkhorn_iterations, used.reshape(-1))

    def ema():
        ema_update_(ema_teacher, ema_student, trainer.config.train.ema_momentum)

    def adamw():
        for p, g in zip(trainable, grads):
            p.grad = g
        trainer.optimizer.step()

    def normalise():
        objective.after_optimizer_step()
        if teacher is not student:
            teacher_objective.after_optimizer_step()

    return {
        "preprocess (B*T frames)": preprocess,
        "teacher forward (B*T frames, no grad)": teacher_forward,
        "student forward+backward (B frames, frame 0)": student_forward_backward,
        "heads at the points (teacher B*T*N no grad, student B*N fwd+bwd, loss)": heads_at_points,
        "Sinkhorn (B*T*N x K, fp32)": sinkhorn_only,
        "EMA update (trainable parameters)": ema,
        "AdamW step": adamw,
        "prototype re-normalisation": normalise,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="dinov2-s14", help="registered name, built with random weights")
    parser.add_argument("--backbone-kwargs", default="", help="e.g. depth=4 (small CPU runs)")
    parser.add_argument("--batch", type=int, default=2, help="clips per step")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--prototypes", type=int, default=100)
    parser.add_argument("--head-hidden", default="", help="projection head hidden widths, e.g. 2048,2048 (default: the config's)")
    parser.add_argument("--projection-dim", type=int, default=0, help="0: the config's (256)")
    parser.add_argument("--mask-ratio", type=float, default=0.0, help="student token masking (authors' script: 0)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP counts")
    parser.add_argument("--reference-tracker", default="cotracker3", help="tracker inside the reference step")
    parser.add_argument("--tracker-kwargs", default="", help="e.g. model_resolution=64x96,iters=1 (tests only)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="accelerator peak (H200 bf16 dense: 989)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--videos", type=int, default=3471, help="YouTube-VOS training videos")
    parser.add_argument("--global-batch", type=int, default=64)
    parser.add_argument("--json", default=None, help="also write the figures to this path")
    args = parser.parse_args(argv)

    trainer, batch = build(args)
    device = trainer.device
    fns = component_fns(trainer, batch)
    raw, raw_cpu = timed_rounds({**fns, "train_step": lambda: trainer.train_step(batch)}, args.repeats, device)
    times = {name: statistics.median(values) for name, values in raw.items()}
    cpu_times = {name: statistics.median(values) for name, values in raw_cpu.items()}
    step, cpu_step = times.pop("train_step"), cpu_times.pop("train_step")
    parts = sum(times.values())
    sinkhorn_name = next(name for name in times if name.startswith("Sinkhorn"))
    n_points = args.grid * args.grid
    header = (
        f"{args.backbone} {args.backbone_kwargs} random init, {args.batch} clips x {args.frames} frames, {args.size} px, "
        f"{n_points} points, K={args.prototypes}, mask {args.mask_ratio}, {device.type}, {torch.get_num_threads()} threads, "
        f"median of {args.repeats} interleaved rounds"
    )
    cpu_parts = sum(cpu_times.values())
    print(f"| component | ms | % of step | CPU ms (process, all threads) | % of step CPU | ({header})")
    print("|---|---:|---:|---:|---:|")
    for name, seconds in times.items():
        cpu_s = cpu_times[name]
        print(f"| {name} | {seconds * 1e3:.1f} | {100 * seconds / step:.1f} | {cpu_s * 1e3:.1f} | {100 * cpu_s / cpu_step:.1f} |")
    print(
        f"| sum of the components | {parts * 1e3:.1f} | {100 * parts / step:.1f} | {cpu_parts * 1e3:.1f} | "
        f"{100 * cpu_parts / cpu_step:.1f} |"
    )
    print(f"| whole train_step | {step * 1e3:.1f} | 100.0 | {cpu_step * 1e3:.1f} | 100.0 |")
    print(
        f"| unaccounted (step - sum) | {(step - parts) * 1e3:.1f} | {100 * (step - parts) / step:.1f} | "
        f"{(cpu_step - cpu_parts) * 1e3:.1f} | {100 * (cpu_step - cpu_parts) / cpu_step:.1f} |"
    )
    sinkhorn_share = 100 * times[sinkhorn_name] / step
    print(
        f"Sinkhorn: {times[sinkhorn_name] * 1e3:.2f} ms = {sinkhorn_share:.2f}% of the step "
        f"({100 * cpu_times[sinkhorn_name] / cpu_step:.2f}% of its CPU time) "
        f"(the issue's target is < 2% of a GPU step; this is a {device.type} step)"
    )

    results: dict = {
        "config": {k: v for k, v in vars(args).items() if k != "json"} | {"threads": torch.get_num_threads()},
        "times_s": {**times, "train_step": step},
        "all_times_s": raw,
        "cpu_times_s": {**cpu_times, "train_step": cpu_step},
        "all_cpu_times_s": raw_cpu,
        "cpu_percent_of_step": {name: 100 * s / cpu_step for name, s in cpu_times.items()},
        "sum_of_components_s": parts,
        "percent_of_step": {name: 100 * s / step for name, s in times.items()},
        "sinkhorn_percent_of_step": sinkhorn_share,
        "clips_per_s": args.batch / step,
    }

    steps_per_epoch = args.videos // args.global_batch
    total_steps = steps_per_epoch * args.epochs
    per_global_batch = step / args.batch * args.global_batch
    hours = per_global_batch * total_steps / 3600
    unit = "GPU-hours" if device.type == "cuda" else "CPU-hours"
    results["projection"] = {
        "seconds_per_global_batch": per_global_batch,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "hours": hours,
        "unit": unit,
    }
    print(
        f"paper recipe: {args.epochs} epochs x {steps_per_epoch} steps of {args.global_batch} clips = {total_steps} steps; "
        f"{per_global_batch:.1f} s per {args.global_batch} clips (measured per clip at batch {args.batch}, scaled "
        f"linearly) -> {hours:.2f} {unit} on this machine"
    )

    if not args.no_flops:
        flops = flop_counts(trainer, batch, fns, args)
        results["flops"] = flops
        print("| FLOPs (FlopCounterMode: matmul, conv, attention; fwd+bwd) | GFLOP |")
        print("|---|---:|")
        for name, value in flops["components"].items():
            print(f"| {name} | {value / 1e9:.4g} |")
        print(f"| mosic train_step (cached tracks) | {flops['mosic_step'] / 1e9:.4g} |")
        print(f"| reference step, cached tracks | {flops['reference_cached'] / 1e9:.4g} |")
        print(f"| reference step, {args.reference_tracker} in the step | {flops['reference_with_tracker'] / 1e9:.4g} |")
        print(f"| of which {args.reference_tracker} | {flops['tracker'] / 1e9:.4g} |")
        print(
            f"tracker share of the reference step's FLOPs: {100 * flops['tracker_fraction']:.1f}%; reference (tracker in "
            f"the step) / mosic FLOPs: {flops['reference_with_tracker'] / flops['mosic_step']:.2f}x; reference (cached) "
            f"/ mosic: {flops['reference_cached'] / flops['mosic_step']:.2f}x"
        )
        achieved = flops["mosic_step"] / step
        results["achieved_tflops"] = achieved / 1e12
        if device.type == "cuda":
            results["mfu"] = achieved / (args.peak_tflops * 1e12)
            print(
                f"model-FLOPs utilisation: {achieved / 1e12:.1f} TFLOP/s of {args.peak_tflops:g} peak = "
                f"{100 * results['mfu']:.1f}%"
            )
        else:
            print(f"achieved: {achieved / 1e9:.1f} GFLOP/s on this CPU (no MFU: no peak given for CPUs)")

    if device.type == "cuda":
        results["peak_cuda_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        print(f"peak CUDA memory: {results['peak_cuda_memory_mib']:.0f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return results


def flop_counts(trainer: mosic.PostPretrainer, batch: dict, fns: dict, args: argparse.Namespace) -> dict:
    """FLOPs of every component, of mosic's step, and of the reference step with and without its tracker."""
    reference_module = _load_step_vs_reference()
    frames, cached = batch["frames"], batch["tracks"]
    components = {name: count_flops(fn) for name, fn in fns.items()}
    mosic_step = count_flops(lambda: trainer.train_step(batch))
    reference = copy.deepcopy(trainer)
    reference_cached = count_flops(lambda: reference_module.reference_step(reference, frames, cached, None))
    factory = mosic.trackers.TRACKERS.get(args.reference_tracker).factory
    kwargs = {"weights": False} if "weights" in inspect.signature(factory).parameters else {}
    tracker = _CountedTracker(
        mosic.create_tracker(args.reference_tracker, **kwargs, **_parse_kwargs(args.tracker_kwargs)).to(trainer.device)
    )
    reference_tracked = count_flops(lambda: reference_module.reference_step(reference, frames, None, tracker))
    return {
        "components": components,
        "mosic_step": mosic_step,
        "reference_cached": reference_cached,
        "reference_with_tracker": reference_tracked,
        "tracker": tracker.flops,
        "tracker_fraction": tracker.flops / reference_tracked if reference_tracked else math.nan,
        "note": "FlopCounterMode counts matmul, convolution and attention FLOPs (forward and backward); "
        "elementwise ops (Sinkhorn, softmax, norms, interpolation, grid_sample) count 0",
    }


if __name__ == "__main__":
    main()
