"""Memory per GPU of a MoSiC run: model and optimizer state, and the student's activations.

For each backbone, at the paper's setting (12 frames, 224 px, 16 x 16 points, last 2
blocks trained, 10% token masking, bf16 autocast) and a per-GPU batch of ``--per-gpu``
clips (8 = global batch 64 on 8 GPUs):

* state bytes, exact from the real parameter counts: the student's and the teacher's
  fp32 weights (the teacher shares the student's frozen blocks, so only its trained
  blocks are extra), fp32 gradients and AdamW's two fp32 moments of the trained
  parameters; the moments divided by the number of processes with
  ``train.shard_optimizer`` (ZeRO-1);
* the student's activations kept for backward, measured: one student forward of one
  clip (frame 0) under ``saved_tensors_hooks`` counting every distinct saved storage,
  times the per-GPU batch;
* the teacher's output tokens (B x T x h x w x D, fp32 after the final norm), exact.

Not counted: the teacher's transient activations inside one block, the allocator's
slack and CUDA's own context (~0.5 GiB); ``benchmarks/components.py --device cuda``
reports the measured peak on a GPU.

    python benchmarks/memory_per_gpu.py --backbones dinov2-s14 dinov2-b14 dinov2-l14 dinov2-g14
"""

from __future__ import annotations

import argparse
import json

import torch

from mosic.backbones.base import BACKBONES
from mosic.objectives.base import OBJECTIVES

GIB = 1024**3


def saved_activation_bytes(backbone, size: int, mask_ratio: float, autocast: bool) -> tuple[int, int]:
    """Bytes of the distinct tensors autograd saves for backward in one student forward
    of one image (the frame-0 image of one clip), and the bytes per element of the
    backbone's output tokens (fp32: the final LayerNorm runs in fp32 under autocast)."""
    h = w = size // backbone.patch_size
    image = torch.randn(1, 3, size, size)
    mask = None
    if mask_ratio > 0:
        mask = torch.zeros(1, h * w, dtype=torch.bool)
        mask[0, torch.randperm(h * w, generator=torch.Generator().manual_seed(0))[: round(mask_ratio * h * w)]] = True
        mask = mask.view(1, h, w)
    seen: dict[int, int] = {}

    def pack(tensor):
        if tensor.device.type != "meta":
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = backbone(image, mask)
    # parameters are saved by reference, they are state, not activations
    params = {p.untyped_storage().data_ptr() for p in backbone.parameters()}
    element = out.element_size()
    del out
    return sum(n for ptr, n in seen.items() if ptr not in params), element


def measure(name: str, args) -> dict:
    torch.manual_seed(0)
    backbone = BACKBONES.create(name, pretrained=False)
    backbone.set_trainable(args.train_blocks)
    objective = OBJECTIVES.create("mosic", embed_dim=backbone.embed_dim)
    total = sum(p.numel() for p in backbone.parameters())
    trained = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
    heads = sum(p.numel() for p in objective.parameters())
    learned = trained + heads  # what the optimizer and the EMA touch
    activation, element = saved_activation_bytes(backbone, args.size, args.mask_ratio, autocast=True)
    h = args.size // backbone.patch_size
    teacher_tokens = args.per_gpu * args.frames * h * h * backbone.embed_dim * element
    state = {
        "student weights": 4 * (total + heads),
        "teacher weights (trained blocks + head)": 4 * learned,
        "gradients": 4 * learned,
        "AdamW moments": 8 * learned,
    }
    rows = {}
    for world in args.worlds:
        moments = state["AdamW moments"] / world
        plain = sum(state.values())
        sharded = plain - state["AdamW moments"] + moments
        per_gpu = args.per_gpu * activation + teacher_tokens
        rows[world] = {
            "state_gib_ddp": plain / GIB,
            "state_gib_zero1": sharded / GIB,
            "total_gib_ddp": (plain + per_gpu) / GIB,
            "total_gib_zero1": (sharded + per_gpu) / GIB,
        }
    return {
        "backbone": name,
        "params_m": total / 1e6,
        "trained_params_m": trained / 1e6,
        "head_params_m": heads / 1e6,
        "state_bytes": state,
        "student_activation_mib_per_clip": activation / 2**20,
        "teacher_tokens_mib": teacher_tokens / 2**20,
        "per_world": rows,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["dinov2-s14", "dinov2-b14", "dinov2-l14", "dinov2-g14"])
    parser.add_argument("--per-gpu", type=int, default=8, help="clips per GPU per micro-batch (64 / 8 GPUs)")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--train-blocks", default=2, type=lambda v: v if v == "all" else int(v))
    parser.add_argument("--mask-ratio", type=float, default=0.1)
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    results = [measure(name, args) for name in args.backbones]
    print(f"per GPU: {args.per_gpu} clips x {args.frames} frames, {args.size} px, last {args.train_blocks} blocks trained")
    print("| backbone | params (M) | trained + head (M) | student activations / clip (MiB) | teacher tokens (MiB) | "
          + " | ".join(f"GiB/GPU, {w} GPU{'s' if w > 1 else ''}: DDP / ZeRO-1" for w in args.worlds) + " |")
    print("|---|---:|---:|---:|---:|" + "---:|" * len(args.worlds))
    for r in results:
        cells = " | ".join(
            f"{r['per_world'][w]['total_gib_ddp']:.2f} / {r['per_world'][w]['total_gib_zero1']:.2f}" for w in args.worlds
        )
        print(
            f"| {r['backbone']} | {r['params_m']:.1f} | {r['trained_params_m'] + r['head_params_m']:.1f} | "
            f"{r['student_activation_mib_per_clip']:.1f} | {r['teacher_tokens_mib']:.1f} | {cells} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
