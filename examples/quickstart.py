"""Quickstart: post-pretrain EVA-CLIP on your videos, export it, evaluate it.

The whole of MoSiC in one line::

    from mosic import PostPretrainer
    trainer = PostPretrainer(backbone="eva-clip-b14").fit("videos/")

It tracks a 16 x 16 grid of points through 12-frame clips of ``videos/`` with CoTracker3
and post-pretrains the EVA-CLIP base model with the paper's defaults (``mosic config``
prints them). This script adds the two steps that usually follow: ``mosic export`` (the
teacher, in timm format) and one evaluation protocol (``mosic eval``), before and after
post-pretraining, side by side.

Usage::

    python examples/quickstart.py videos/ --out runs/quickstart        # the real thing: a GPU, downloads weights
    python examples/quickstart.py videos/ --weights eva02_b16.safetensors --tracker-weights scaled_offline.pth
    python examples/quickstart.py videos/ --tracker lk --steps 200      # no tracker weights at all
    python examples/quickstart.py --smoke                               # offline: synthetic videos, tiny model, CPU, < 1 min

``videos/`` is a folder of video files, of frame folders, or a YouTube-VOS / DAVIS root
(``JPEGImages`` is found). ``--eval-data davis:/data/DAVIS`` evaluates on DAVIS-17
(``docs/evaluation.md`` lists the datasets); the default is synthetic videos with exact
masks, which runs offline.

Note on weights
---------------
* **Backbone.** ``eva-clip-b14`` is the MoSiC paper's name for EVA02-CLIP-B/16 (the model
  has 16 x 16 patches; the name warns once and builds exactly that model, the same as
  ``eva-clip-b16``). ``pretrained=True`` (the default) downloads its image tower with the
  provider's own hub code: timm ``eva02_base_patch16_clip_224.merged2b`` from the Hugging
  Face hub (the default source), or open_clip ``EVA02-B-16`` / ``merged2b_s8b_b131k`` with
  ``backbone.source=open_clip``. They land in the usual caches (``~/.cache/huggingface``)
  and are reused offline. Offline, or to pin a file, pass a local file instead:
  ``PostPretrainer(backbone="eva-clip-b14", pretrained="path/to/weights.safetensors")``
  (here ``--weights``). timm, Hugging Face, open_clip, torch.hub and MoSiC/NeCo/TimeTuning
  key formats are detected; ``.safetensors`` or ``.pth``/``.bin`` read with
  ``torch.load(weights_only=True)``; loaded strictly. ``pretrained=False`` is a random
  initialisation (the smoke run). ``mosic list backbones -v eva-clip-b14`` prints the card.
* **Tracker.** CoTracker3 (the default tracker) downloads ``scaled_offline.pth`` from
  ``huggingface.co/facebook/cotracker3`` into the torch hub cache; ``--tracker-weights``
  (``tracker.kwargs.weights``) passes a local copy. ``--tracker lk`` (Lucas-Kanade, OpenCV)
  needs no weights.
* **Licences.** mosic's code is MIT. EVA-CLIP's weights are MIT; the CoTracker weights
  are **CC BY-NC 4.0, non-commercial use only**; whether that reaches a backbone trained
  on CoTracker's tracks is a question for your own legal advice (``--tracker lk`` avoids
  it). Every registry entry's weights and licence: ``docs/licences.md``.

Writes into ``--out``: ``run/`` (config.yaml, metrics.jsonl, checkpoints), ``export/``
(``mosic export --format timm``: model.safetensors, config.json, mosic.json), and
``eval/{before,after}/`` (``results.json``, ``results.md``), and prints the comparison.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mosic import PostPretrainer
from mosic.data import SyntheticVideos
from mosic.errors import WeightsUnavailableError
from mosic.eval import compare_reports, run_protocol
from mosic.export import export_backbone

#: the smoke run: a 2-block, 64-wide EVA with random weights, exact synthetic tracks,
#: tiny clips and head; everything else is the paper's recipe
SMOKE = {
    "tracker.grid_size": 4,
    "backbone.kwargs": {"depth": 2, "embed_dim": 64, "num_heads": 2, "img_size": 64},
    "objective.head_hidden_dims": [64],
    "objective.projection_dim": 32,
    "objective.num_prototypes": 16,
    "data.num_frames": 4,
    "data.frame_stride": 2,
    "data.size": 64,
    "data.global_batch_size": 4,
    "data.num_workers": 0,
    "optim.backbone_lr": 1e-4,
    "optim.head_lr": 1e-3,
    "train.log_every": 1,
    "train.progress": False,
}
PROTOCOLS = ("video-clustering", "label-propagation", "overclustering", "linear", "in-context")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("videos", nargs="?", help="folder of videos or frame folders (not with --smoke)")
    parser.add_argument("--out", default="runs/quickstart", help="run/, export/ and eval/ go here")
    parser.add_argument("--weights", help="local EVA-CLIP weights file (default: download from the hub)")
    parser.add_argument("--tracker", default="cotracker3", help="registered tracker: cotracker3 (default), lk, raft, ...")
    parser.add_argument("--tracker-weights", help="local tracker weights, e.g. scaled_offline.pth (default: download)")
    parser.add_argument("--steps", type=int, help="training steps (default: the paper's 8 epochs, or 4 with --smoke)")
    parser.add_argument("--protocol", default="video-clustering", choices=PROTOCOLS, help="evaluation protocol")
    parser.add_argument("--eval-data", help="dataset spec for --protocol, e.g. davis:/data/DAVIS (default: synthetic)")
    parser.add_argument("--smoke", action="store_true", help="synthetic videos, tiny random model, 4 steps (CPU, < 1 min)")
    args = parser.parse_args(argv)
    if args.smoke and (args.videos or args.weights or args.tracker_weights):
        parser.error("--smoke trains a tiny random model on synthetic videos: no videos or weights arguments")
    if not args.smoke and not args.videos:
        parser.error("give a folder of videos (or --smoke for the offline run)")
    return args


def build_trainer(args: argparse.Namespace) -> PostPretrainer:
    if args.smoke:  # random weights, exact tracks of the synthetic videos: nothing to download
        return PostPretrainer(backbone="eva-clip-b14", tracker="oracle", pretrained=False, **SMOKE)
    return PostPretrainer(
        backbone="eva-clip-b14",
        tracker=args.tracker,
        pretrained=args.weights or True,  # a local file, else the hub download
        **{"tracker.kwargs": {"weights": args.tracker_weights} if args.tracker_weights else {}},
    )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    started = time.perf_counter()

    # ---- 1. post-pretrain ------------------------------------------------------------------
    if args.smoke:
        videos = SyntheticVideos(num_videos=8, num_frames=12, size=64, seed=0)  # exact tracks: the oracle tracker
    else:
        videos = args.videos
    try:
        trainer = build_trainer(args)
        # the backbone before post-pretraining, measured the same way: the trainer's teacher
        # is still the initial model (the pretrained weights; in the smoke run, random ones)
        before = run_protocol(args.protocol, trainer.teacher, data=args.eval_data, out=out / "eval" / "before",
                              label="eva-clip-b14 (before)")
        trainer.fit(videos, max_steps=args.steps or (4 if args.smoke else None), out_dir=out / "run")
    except WeightsUnavailableError as exc:  # offline and nothing cached
        sys.exit(f"quickstart: {exc}\n(pass local files with --weights / --tracker-weights: see this script's note on weights)")
    first, last = trainer.history[0]["loss"], trainer.history[-1]["loss"]
    print(f"trained eva-clip-b14: {trainer.step} steps, loss {first:.3f} -> {last:.3f}, run folder {out / 'run'}")

    # ---- 2. export (= mosic export RUN OUT --format timm) ----------------------------------
    exported = export_backbone(out / "run", out / "export", format="timm")
    print(f"exported the teacher to {exported} (timm format; how to load it: {exported / 'mosic.json'})")

    # ---- 3. evaluate the export (= mosic eval PROTOCOL --backbone OUT/export) ---------------
    after = run_protocol(args.protocol, exported, data=args.eval_data, out=out / "eval" / "after",
                         label="eva-clip-b14 (after, exported)")
    print()
    print(compare_reports(before, after, names=("before", "after")), end="")
    print(f"\nquickstart done in {time.perf_counter() - started:.1f} s; reports in {out / 'eval'}")
    return {"before": before, "after": after, "history": trainer.history}


if __name__ == "__main__":
    main()
