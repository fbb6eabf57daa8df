"""Reproduce a MoSiC paper run: track cache, post-pretraining, the paper's evaluations.

For one of the paper's presets (``mosic list presets -v``: ``dinov2-s14``, ``dinov2-b14``,
``dinov2r-b14``, ``dino-s16``, ``eva-clip-b14``, ...) this runs the whole pipeline:

1. **Track cache** (``mosic track``): CoTracker3 tracks every training video once, with
   the preset's clip length and stride (``docs/track_cache.md``). Run again, it keeps the
   videos already tracked.
2. **Post-pretraining** (``mosic fit --config PRESET``) from the cache, with the paper's
   recipe (YouTube-VOS 2019 train, 8 epochs of 64 clips per step for DINOv2). Run again,
   it resumes from the newest checkpoint (a finished run is not trained further).
3. **Evaluation** (``mosic eval``) of the backbone *before* post-pretraining (the
   preset's pretrained weights) and *after* (the run's teacher, as the paper evaluates),
   with the protocols of the paper's tables (``docs/evaluation.md``):

   | paper | protocol | datasets (argument) |
   |---|---|---|
   | Table 1 | in-context (Hummingbird), fractions 1/128, 1/64, 1/8, 1/1 | ``--voc``, ``--ade20k`` |
   | Table 2 | video-clustering (per frame / clip / dataset) | ``--davis``, ``--ytvos`` |
   | Table 3 | overclustering (K = classes, 100, 300, 500; the authors' PCA-50) | ``--voc``, ``--coco`` (Things and Stuff) |
   | Table 4 | linear segmentation probe | ``--voc``, ``--coco`` (Things and Stuff), ``--ade20k`` |
   | extra | DAVIS-17 label propagation (J&F; not one of the paper's four benchmarks) | ``--davis`` |

   The paper reports four benchmarks on six datasets; which dataset goes with which table
   above is our reading of the paper, so check a row against the paper before quoting it.
   A row whose dataset root is not given is skipped (and listed as skipped).
4. **Report**: ``results.md`` (one table: metric, before, after, difference, i.e.
   ``mosic eval --compare``) and ``results.json``, plus every protocol's own
   ``results.json``/``results.md`` under ``eval/before`` and ``eval/after`` and the
   per-row comparison under ``eval/compare``.

Usage::

    python examples/reproduce_paper.py --preset dinov2-b14 \\
        --videos /data/youtube-vos/train_all_frames/JPEGImages --tracker-weights scaled_offline.pth \\
        --voc /data/VOCdevkit/VOC2012 --ade20k /data/ADEChallengeData2016 --coco /data/cocostuff \\
        --davis /data/DAVIS --ytvos /data/youtube-vos --out runs/paper-dinov2-b14 \\
        train.accumulation_steps=8                 # any config override; here: 64 clips as 8 x 8 on one GPU
    python examples/reproduce_paper.py --smoke     # offline: synthetic videos and datasets, tiny model, CPU, ~1-2 min

Several GPUs: track and train with the commands this script prints (``mosic track ...``,
then ``torchrun --nproc-per-node 8 -m mosic fit --config OUT/recipe.yaml ...``), then run
this script with the same arguments: the cache and the finished run are reused, and only
the evaluations run.

Not reproduced. The paper's numbers have **not** been reproduced with this script: it has
only run in ``--smoke`` mode (synthetic videos and datasets, tiny random models, a 2-core
CPU, no GPU, no datasets, no weights downloads). Expected hardware for a real run: CUDA
GPUs with bf16 (the authors used 8 x A6000 48 GB, 8 clips each; ``docs/benchmarks.md``
estimates about 1 GiB per GPU of state and activations for ViT-B/14 at 8 clips, and one
GPU works with ``train.accumulation_steps=8``); disk for YouTube-VOS 2019 train
all_frames, Pascal VOC 2012 (+ SegmentationClassAug), ADE20K, COCO-Stuff and DAVIS-17;
the long parts are tracking 3471 videos with CoTracker3 and the in-context evaluation (a
memory of 10.24 M patches; faiss-gpu recommended: ``pip install -e ".[gpu]"``). No run
time of this script on a GPU has been measured.

Weights. The presets start from the hub weights (``backbone.pretrained: true``), or pass
a local file with ``--weights``; CoTracker3 downloads ``scaled_offline.pth`` unless
``--tracker-weights`` is given. The CoTracker weights are CC BY-NC 4.0 (non-commercial);
see ``docs/licences.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import mosic
from mosic import cli
from mosic.config import list_presets
from mosic.eval import compare_reports, resolve_backbone, run_protocol
from mosic.eval.clustering import PAPER_OVERCLUSTER_K
from mosic.eval.overclustering import PAPER_OVERCLUSTERING

#: (paper table, protocol, dataset kind, argument holding its root)
PAPER_EVALS = [
    ("Table 1", "in-context", "voc", "voc"),
    ("Table 1", "in-context", "ade20k", "ade20k"),
    ("Table 2", "video-clustering", "davis", "davis"),
    ("Table 2", "video-clustering", "ytvos", "ytvos"),
    ("Table 3", "overclustering", "voc", "voc"),
    ("Table 3", "overclustering", "coco-things", "coco"),
    ("Table 3", "overclustering", "coco-stuff", "coco"),
    ("Table 4", "linear", "voc", "voc"),
    ("Table 4", "linear", "coco-things", "coco"),
    ("Table 4", "linear", "coco-stuff", "coco"),
    ("Table 4", "linear", "ade20k", "ade20k"),
    ("extra", "label-propagation", "davis", "davis"),
]


def paper_options(protocol: str, kind: str) -> dict:
    """The paper's protocol settings where ``run_protocol``'s defaults differ."""
    if protocol == "overclustering":
        return dict(PAPER_OVERCLUSTERING)  # K = classes/100/300/500, PCA-50, 5 seeds, 448 px
    if protocol == "video-clustering":
        return {"overcluster_k": PAPER_OVERCLUSTER_K[kind]}  # 10 per frame / clip, 200 (DAVIS) or 500 (YTVOS)
    return {}  # in-context, linear, label-propagation: the defaults are the paper's (docs/evaluation.md)


#: the smoke run: one row per protocol on synthetic data, with small settings
SMOKE_EVALS = [
    ("Table 1", "in-context", "synthetic:num_images=16", {"fractions": [0.25, 1.0], "seeds": [0]}),
    ("Table 2", "video-clustering", "synthetic-video:num_videos=4,num_frames=12", {"overcluster_k": {"frame": 8, "clip": 8, "dataset": 16}}),
    ("Table 3", "overclustering", "synthetic:num_images=16",
     {"ks": [None, 16], "pca_dim": 16, "normalize": False, "num_seeds": 1, "nredo": 1, "mask_size": 32}),
    ("Table 4", "linear", "synthetic:num_images=16", {"epochs": 2, "mask_size": 32}),
    ("extra", "label-propagation", "synthetic-video:num_videos=4,num_frames=12", {}),
]
SMOKE_VIDEOS = "synthetic:num_videos=8,num_frames=12,size=64"
SMOKE_ARCH = {"depth": 2, "embed_dim": 64, "num_heads": 2}
SMOKE_RECIPE = {
    "tracker.name": "oracle",  # exact tracks of the synthetic videos: no tracker weights
    "tracker.grid_size": 4,
    "objective.head_hidden_dims": [64],
    "objective.projection_dim": 32,
    "objective.num_prototypes": 16,
    "data.num_frames": 4,
    "data.frame_stride": 2,
    "data.global_batch_size": 4,
    "data.num_workers": 0,
    "optim.backbone_lr": 1e-3,  # with a fast EMA: 4 steps visibly move the teacher
    "optim.head_lr": 1e-3,
    "train.ema_momentum": 0.5,
    "train.max_steps": 4,
    "train.checkpoint_every": 2,
    "train.log_every": 1,
    "train.progress": False,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=list_presets(), help="the paper's run (default dinov2-b14 with --smoke)")
    parser.add_argument("--videos", help="training videos: YouTube-VOS 2019 train all_frames (JPEGImages)")
    parser.add_argument("--weights", help="local backbone weights file (default: the preset's hub download)")
    parser.add_argument("--tracker-weights", help="local CoTracker3 weights, scaled_offline.pth (default: download)")
    for name, what in (("voc", "VOCdevkit/VOC2012"), ("ade20k", "ADEChallengeData2016"), ("coco", "COCO-Stuff (Things and Stuff)"),
                       ("davis", "DAVIS-17"), ("ytvos", "YouTube-VOS 2019")):
        parser.add_argument(f"--{name}", metavar="ROOT", help=f"{what} root (its rows are skipped without it)")
    parser.add_argument("--out", help="output folder (default runs/paper-PRESET, or runs/paper-smoke)")
    parser.add_argument("--track-batch-size", type=int, default=8, help="clips tracked together")
    parser.add_argument("--device", help="evaluation device (default: where the backbone was built)")
    parser.add_argument("--smoke", action="store_true", help="synthetic videos and datasets, tiny model, a few steps (CPU)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train.accumulation_steps=8")
    args = parser.parse_args(argv)
    roots = [getattr(args, n) for n in ("voc", "ade20k", "coco", "davis", "ytvos")]
    if args.smoke:
        if args.videos or args.weights or args.tracker_weights or any(roots):
            parser.error("--smoke runs on synthetic videos and datasets with a tiny random model: "
                         "no --videos, weights or dataset roots")
        args.preset = args.preset or "dinov2-b14"
        args.videos = SMOKE_VIDEOS
    elif not args.preset or not args.videos:
        parser.error("--preset and --videos are needed (or --smoke for the offline run)")
    args.out = Path(args.out or f"runs/paper-{'smoke' if args.smoke else args.preset}")
    return args


def recipe(args: argparse.Namespace) -> mosic.RunConfig:
    """The preset, with the cache, the run folder, local weights and the user's overrides."""
    config = mosic.RunConfig.load(args.preset)
    overrides: dict = {"train.out_dir": str(args.out / "run"), "tracker.cache": str(args.out / "cache")}
    if args.smoke:
        patch = mosic.BACKBONES.card(config.backbone.name).patch_size
        size = 64 // patch * patch  # 56 px for patch 14, 64 px for patch 16
        overrides.update(SMOKE_RECIPE)
        overrides.update({"backbone.pretrained": False, "backbone.kwargs": {**SMOKE_ARCH, "img_size": size}, "data.size": size})
    if args.weights:
        overrides["backbone.pretrained"] = args.weights
    if args.tracker_weights:
        overrides["tracker.kwargs.weights"] = args.tracker_weights
    return config.with_overrides(overrides).with_overrides(args.overrides)


def evaluations(args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    """The rows to evaluate and the ones skipped for want of a dataset root."""
    if args.smoke:
        rows = [dict(table=t, protocol=p, data=d, options=o) for t, p, d, o in SMOKE_EVALS]
        return rows, []
    rows, skipped = [], []
    for table, protocol, kind, arg in PAPER_EVALS:
        root = getattr(args, arg)
        if root is None:
            skipped.append(f"{table} {protocol} on {kind} (no --{arg})")
        else:
            rows.append(dict(table=table, protocol=protocol, data=f"{kind}:{root}", options=paper_options(protocol, kind)))
    return rows, skipped


def row_name(row: dict) -> str:
    return f"{row['protocol']}-{row['data'].split(':')[0]}"


def shown(argv: list[str]) -> str:
    return " ".join(shlex.quote(str(a)) for a in argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    config = recipe(args)
    config.save(out / "recipe.yaml")
    rows, skipped = evaluations(args)
    timings: dict[str, float] = {}
    print(f"preset {args.preset}{' (smoke: tiny random model, synthetic data)' if args.smoke else ''}; "
          f"recipe {out / 'recipe.yaml'}; {len(rows)} evaluations, {len(skipped)} skipped", flush=True)

    # ---- 1. the track cache -----------------------------------------------------------------
    start = time.perf_counter()
    track = ["track", args.videos, "--config", str(out / "recipe.yaml"), "--out", config.tracker.cache,
             "--batch-size", str(args.track_batch_size), "--no-progress"]
    print(f"[1/4] mosic {shown(track)}", flush=True)
    if cli.main(track) != 0:
        sys.exit("reproduce_paper: `mosic track` failed (see above)")
    timings["track_s"] = time.perf_counter() - start

    # ---- 2. evaluate the backbone before post-pretraining ----------------------------------
    # The trainer's teacher is the preset's initial backbone until fit() runs (a resumed
    # run restores its checkpoint inside fit()), so "before" is exactly the starting point.
    start = time.perf_counter()
    trainer = mosic.PostPretrainer(config=config)
    name = config.backbone.name
    print(f"[2/4] mosic eval PROTOCOL --backbone {name} ({len(rows)} evaluations: the backbone before post-pretraining)",
          flush=True)
    before = {}
    for row in rows:
        before[row_name(row)] = evaluate(row, trainer.teacher, out / "eval" / "before", f"{name} (before)", args.device)
    timings["eval_before_s"] = time.perf_counter() - start

    # ---- 3. post-pretrain (resumes) ----------------------------------------------------------
    start = time.perf_counter()
    fit = ["fit", "--config", str(out / "recipe.yaml"), "--videos", args.videos, "--resume"]
    print(f"[3/4] mosic {shown(fit)}   (several GPUs: torchrun --nproc-per-node N -m mosic {shown(fit)})", flush=True)
    trainer.fit(args.videos, resume=True)
    timings["fit_s"] = time.perf_counter() - start
    losses = [r["loss"] for r in trainer.history]
    if losses:
        print(f"      {trainer.step} steps; loss {losses[0]:.3f} -> {losses[-1]:.3f} in this session", flush=True)
    else:
        print(f"      the run had finished already ({trainer.step} steps)", flush=True)

    # ---- 4. evaluate the post-pretrained teacher, compare ---------------------------------
    start = time.perf_counter()
    run = out / "run"
    print(f"[4/4] mosic eval PROTOCOL --backbone {run} ({len(rows)} evaluations), mosic eval --compare", flush=True)
    teacher = resolve_backbone(run)  # the saved run, as `mosic eval --backbone RUN` reads it
    after, table = {}, []
    for row in rows:
        key = row_name(row)
        after[key] = evaluate(row, teacher, out / "eval" / "after", f"{run} (teacher)", args.device)
        comparison = compare_reports(before[key], after[key], names=("before", "after"))
        (out / "eval" / "compare").mkdir(parents=True, exist_ok=True)
        (out / "eval" / "compare" / f"{key}.md").write_text(comparison)
        for metric, value in after[key]["metrics"].items():
            if "std" in metric or metric == "fps":
                continue
            table.append({"table": row["table"], "protocol": row["protocol"], "data": row["data"], "metric": metric,
                          "before": before[key]["metrics"].get(metric), "after": value})
    timings["eval_after_s"] = time.perf_counter() - start

    results = {"preset": args.preset, "smoke": args.smoke, "steps": trainer.step, "run": str(run),
               "cache": config.tracker.cache, "rows": table, "skipped": skipped,
               "timings": {k: round(v, 1) for k, v in timings.items()}}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (out / "results.md").write_text(text)
    print()
    print(text, end="")
    print(f"\nwrote {out / 'results.md'} and {out / 'results.json'}")
    return results


def evaluate(row: dict, backbone, out: Path, label: str, device: str | None) -> dict:
    report = run_protocol(row["protocol"], backbone, data=row["data"], out=out / row_name(row), label=label,
                          device=device, **row["options"])
    headline = ", ".join(f"{k} {v:.2f}" for k, v in list(report["metrics"].items())[:3])
    print(f"      {row['table']} {row['protocol']} on {row['data']}: {headline} ({report['seconds']:.1f} s)", flush=True)
    return report


def markdown(results: dict) -> str:
    def fmt(v, signed=False):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        return f"{v:+.2f}" if signed else f"{v:.2f}"

    kind = "smoke run: synthetic videos and datasets, a tiny random model" if results["smoke"] else "full run"
    lines = [
        f"# MoSiC reproduction: preset `{results['preset']}` ({kind})",
        "",
        "Not the paper's numbers: this script has not reproduced the paper's tables (it has only run in smoke "
        "mode, without GPU, datasets or pretrained weights). Before = the preset's backbone before "
        "post-pretraining, after = the run's teacher; metrics in percent.",
        "",
        f"Run: `{results['run']}` ({results['steps']} steps), track cache `{results['cache']}`; "
        "wall time " + ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in results["timings"].items()) + ".",
        "",
        "| paper | protocol | dataset | metric | before | after | after - before |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        diff = None if r["before"] is None else r["after"] - r["before"]
        lines.append(f"| {r['table']} | {r['protocol']} | {r['data']} | {r['metric']} | {fmt(r['before'])} "
                     f"| {fmt(r['after'])} | {fmt(diff, signed=True)} |")
    if results["skipped"]:
        lines += ["", "Skipped (no dataset root given): " + "; ".join(results["skipped"]) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
