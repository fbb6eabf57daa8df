"""The ``mosic`` command line: fit, demo, list, config, track, prepare, track-eval, eval, export."""

from __future__ import annotations

import argparse
import fnmatch
import sys
from pathlib import Path

from .config import RunConfig, parse_key_values


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mosic", description="Post-pretrain vision backbones on video with motion.")
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="post-pretrain from a config file")
    fit.add_argument("--config", help="YAML/JSON RunConfig or a preset name (`mosic list presets`; default: the paper's defaults)")
    fit.add_argument("--videos", help="folder of videos or frame folders, a video file, or 'synthetic:num_videos=64' (default: data.videos)")
    fit.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in train.out_dir")
    fit.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.max_steps=100")

    demo = sub.add_parser("demo", help="offline demo on synthetic videos (CPU, a few minutes)")
    demo.add_argument("--out", default="runs/demo", help="run folder")
    demo.add_argument("--steps", type=int, default=300, help="training steps of each run (default: 300)")
    demo.add_argument("--start", default=None, help="weights file of the demo ViT to start from (default: random init)")
    demo.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    demo.add_argument("--no-progress", action="store_true")

    lst = sub.add_parser("list", help="list registered components")
    lst.add_argument("kind", choices=["backbones", "trackers", "objectives", "presets"])
    lst.add_argument(
        "-v", "--verbose", action="store_true",
        help="print each entry's card (backbones: with the parameter count; trackers: weights, licence, input; "
        "objectives: what they need)",
    )
    lst.add_argument("pattern", nargs="?", help="glob filter, e.g. 'dinov2*'")

    show = sub.add_parser("config", help="print the default (or a given) config as YAML")
    show.add_argument("--config")
    show.add_argument("overrides", nargs="*")

    track = sub.add_parser("track", help="precompute tracks once per video (a track cache for training)")
    track.add_argument("videos", help="folder of videos or frame folders, a video file, or 'synthetic:...'")
    track.add_argument("--out", required=True, help="cache folder")
    track.add_argument("--config", help="RunConfig whose tracker and data settings to use (default: the paper's)")
    track.add_argument("--tracker", help="registered tracker (default: the config's tracker.name)")
    track.add_argument("--weights", help="local tracker weights file (default: the tracker's own download)")
    track.add_argument("--grid", type=int, help="G of the G x G source-frame grid (default: the average crop holds the paper's G x G)")
    track.add_argument("--for-run", action="append", default=[], metavar="CONFIG",
                       help="track only the clip starts this run reads (a RunConfig or preset; repeat for a sweep; "
                            "default: every start). Its tracker and data settings are used when --config is not given")
    track.add_argument("--start-step", type=int, help="frames between cached clip starts (default: the clip frame stride)")
    track.add_argument("--track-size", type=int, default=384, help="shorter side frames are resized to (never upscaled)")
    track.add_argument("--batch-size", type=int, default=8, help="clips tracked together")
    track.add_argument("--device", default="auto")
    track.add_argument("--no-progress", action="store_true")
    track.add_argument("overrides", nargs="*", help="config overrides, e.g. data.num_frames=12")

    prep = sub.add_parser(
        "prepare",
        help="decode every video once and store the frames training clips read, resized (train with data.prepared=DIR)",
        description="Decode each video once and store, as raw uint8 .npy files, only the frames a training clip can "
        "read (clip starts every --start-step frames, frames every data.stride), resized so the shorter side is "
        "--short-side. Training with data.prepared=DIR then reads them instead of decoding. Running it again "
        "keeps videos already prepared and unchanged.",
    )
    prep.add_argument("videos", help="folder of videos or frame folders, a video file, or 'synthetic:...'")
    prep.add_argument("--out", required=True, help="output folder")
    prep.add_argument("--config", help="RunConfig whose data settings to use (default: the paper's)")
    prep.add_argument("--start-step", type=int, help="frames between clip starts (default: the clip frame stride; "
                      "a track cache used with it must have the same)")
    prep.add_argument("--short-side", type=int, help="shorter side of the stored frames in pixels, never upscaled "
                      "(default: ceil(data.size / sqrt(data.crop_scale[0])), 355 for 224 px and 0.4)")
    prep.add_argument("--chunk-frames", type=int, default=32, help="frames decoded at a time (bounds memory)")
    prep.add_argument("--no-progress", action="store_true")
    prep.add_argument("overrides", nargs="*", help="config overrides, e.g. data.num_frames=12 data.frame_stride=6")

    teval = sub.add_parser("track-eval", help="TAP-Vid metrics of a tracker on synthetic clips with exact ground truth")
    teval.add_argument("--tracker", required=True, help="registered tracker, see `mosic list trackers`")
    teval.add_argument("--weights", help="local tracker weights file")
    teval.add_argument("--videos", help="a source with ground-truth tracks (default: synthetic clips)")
    teval.add_argument("--num-videos", type=int, default=8)
    teval.add_argument("--num-frames", type=int, default=24)
    teval.add_argument("--frame-stride", type=int, default=1)
    teval.add_argument("--size", type=int, default=64, help="square clip size in pixels")
    teval.add_argument("--grid", type=int, default=16, help="G x G queries on frame 0")
    teval.add_argument("--query-mode", choices=["first", "strided"], default="first")
    teval.add_argument("--seed", type=int, default=0)
    teval.add_argument("--batch-size", type=int, default=4)
    teval.add_argument("--device", default="auto")
    teval.add_argument("--out", help="also write the results as JSON here")

    ev = sub.add_parser("eval", help="dense evaluation protocols (in-context, linear, overclustering, video-clustering, label-propagation)")
    ev.add_argument("protocol", nargs="?", choices=["in-context", "linear", "overclustering", "video-clustering", "label-propagation"])
    ev.add_argument("--backbone", help="registered name, run folder, checkpoint folder or `mosic export` folder")
    ev.add_argument("--model", choices=["teacher", "student"], default="teacher", help="which network of a run")
    ev.add_argument("--backbone-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="arguments for a registered name, e.g. pretrained=false (repeatable)")
    ev.add_argument("--data", help="dataset spec: voc:ROOT, ade20k:ROOT, coco-things:ROOT, coco-stuff:ROOT, davis:ROOT, "
                    "ytvos:ROOT, synthetic[:k=v,...], synthetic-video[:k=v,...] (default: synthetic)")
    ev.add_argument("--train-data", help="training split spec for in-context and linear (default: --data's training split)")
    ev.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="options",
                    help="protocol option, e.g. size=448, fractions=[0.0078125,1.0], ks=[null,100], epochs=20 (repeatable)")
    ev.add_argument("--out", help="write results.json, results.md (and figures) here")
    ev.add_argument("--figures", type=int, default=0, help="qualitative PNG examples to write into --out")
    ev.add_argument("--device", help="where the backbone runs (default: where it was built)")
    ev.add_argument("--seed", type=int, default=0, help="torch seed before building the backbone (random initialisation)")
    ev.add_argument("--compare", nargs=2, metavar=("RESULT_A", "RESULT_B"), help="print the difference of two reports")

    check = sub.add_parser("check-data", help="scan videos before training: list the ones training would skip, and why")
    check.add_argument("videos", nargs="+", help="folder of videos or frame folders, video files, or a dataset root")
    check.add_argument("--num-frames", type=int, help="frames per clip (default: the config's data.num_frames)")
    check.add_argument("--stride", type=int, help="frames between clip frames (default: the config's data.stride)")
    check.add_argument("--backend", choices=["auto", "pyav", "torchcodec", "decord"], help="video decoder (default: data.backend)")
    check.add_argument("--config", help="RunConfig whose data settings to use (default: the paper's)")
    check.add_argument("--full", action="store_true", help="decode every frame, not one clip and the last frame (slow)")
    check.add_argument("--workers", type=int, help="reading threads (default: up to 8)")
    check.add_argument("--json", metavar="OUT", help="also write every video's result as JSON here")
    check.add_argument("-v", "--verbose", action="store_true", help="list usable videos too")

    export = sub.add_parser("export", help="write a run's post-pretrained backbone for timm, transformers or torch.hub")
    export.add_argument("run", help="run folder (its latest checkpoint) or a checkpoint folder")
    export.add_argument("out", help="output folder")
    export.add_argument("--format", choices=["timm", "hf", "torchhub"], default="timm")
    export.add_argument("--model", choices=["teacher", "student"], default="teacher", help="the paper evaluates the teacher")

    from .viz.command import add_viz_parser

    add_viz_parser(sub)  # mosic viz tracks|clusters|curves (docs/viz.md)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "list" and args.pattern is None and len(extra) == 1 and not extra[0].startswith("-"):
        args.pattern, extra = extra[0], []  # `mosic list backbones -v 'dino*'`
    if hasattr(args, "overrides") and extra and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides, extra = [*args.overrides, *extra], []  # overrides after options
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from .data.clips import NoUsableVideosError
    from .errors import VideoReadError
    from .errors import WeightsUnavailableError
    from .train.nonfinite import NonFiniteLossError

    user_errors = (
        ValueError, KeyError, FileNotFoundError, WeightsUnavailableError,
        NoUsableVideosError, VideoReadError, NonFiniteLossError,
    )
    try:
        code = _run(args)
    except user_errors as exc:  # user errors: a message, not a traceback
        print(f"mosic {args.command}: error: {exc}", file=sys.stderr)
        return 2
    from .distributed import shutdown

    shutdown()  # under torchrun: every rank finishes, then the process group goes
    return code


def _run(args: argparse.Namespace) -> int:
    if args.command == "list":
        import mosic

        from .config import list_presets, preset_summary

        lister = {
            "backbones": mosic.list_backbones,
            "trackers": mosic.list_trackers,
            "objectives": mosic.list_objectives,
            "presets": lambda pattern: [p for p in list_presets() if pattern is None or fnmatch.fnmatch(p, pattern)],
        }
        for name in lister[args.kind](args.pattern):
            if args.verbose and args.kind == "backbones":
                print(_backbone_summary(name))
            elif args.verbose and args.kind in ("trackers", "objectives"):
                print(_card_summary(mosic.TRACKERS if args.kind == "trackers" else mosic.OBJECTIVES, name))
            elif args.kind == "presets":
                print(f"{name}: {preset_summary(name)}" if args.verbose else name)
            else:
                print(name)
        return 0
    if args.command == "track":
        return _track(args)
    if args.command == "prepare":
        return _prepare(args)
    if args.command == "track-eval":
        return _track_eval(args)
    if args.command == "export":
        from .export import export_backbone

        out = export_backbone(args.run, args.out, format=args.format, model=args.model)
        print(f"wrote the {args.model} in {args.format} format to {out}; how to load it: {out / 'mosic.json'}")
        return 0
    if args.command == "eval":
        return _eval(args)
    if args.command == "viz":
        from .viz.command import run_viz

        return run_viz(args)
    if args.command == "check-data":
        from .data.check import run_check_data

        return run_check_data(args)
    if args.command == "config":
        config = RunConfig.load(args.config) if args.config else RunConfig()
        print(config.with_overrides(args.overrides).to_yaml(), end="")
        return 0
    if args.command == "demo":
        from .demo import format_results, run_demo

        results = run_demo(
            args.out, steps=args.steps, start=args.start or False, seed=args.seed, progress=not args.no_progress
        )
        print(format_results(results))
        return 0
    if args.command == "fit":
        from .train import PostPretrainer

        config = RunConfig.load(args.config) if args.config else RunConfig()
        config = config.with_overrides(args.overrides)
        trainer = PostPretrainer(config=config).fit(args.videos, resume=args.resume)
        from .distributed import is_main_process

        if is_main_process():
            where = trainer.config.train.out_dir or "(no out_dir: nothing saved)"
            print(f"done: {trainer.step} steps; run folder {where}")
        return 0
    return 2


def _eval(args: argparse.Namespace) -> int:
    from .eval.report import compare_reports, format_markdown, read_report

    if args.compare:
        a, b = (read_report(p) for p in args.compare)
        print(compare_reports(a, b, names=(str(args.compare[0]), str(args.compare[1]))), end="")
        return 0
    if not args.protocol or not args.backbone:
        raise ValueError("mosic eval needs a PROTOCOL and --backbone (or --compare RESULT_A RESULT_B)")
    from .eval.protocols import run_protocol

    import torch

    backbone_kwargs = parse_key_values(args.backbone_arg, "--backbone-arg")
    torch.manual_seed(args.seed)  # a randomly initialised backbone is the same on every run
    label = f"{args.backbone} ({args.model})" if Path(args.backbone).is_dir() else args.backbone
    report = run_protocol(
        args.protocol,
        args.backbone,
        data=args.data,
        train_data=args.train_data,
        model=args.model,
        out=args.out,
        figures=args.figures,
        backbone_kwargs=backbone_kwargs,
        device=args.device,
        label=label,
        **parse_key_values(args.options, "--set"),
    )
    print(format_markdown(report), end="")
    if args.out:
        print(f"\nwrote {args.out}/results.json and results.md")
    return 0


def _track(args: argparse.Namespace) -> int:
    import time


    from .data.video_files import open_videos
    from .trackers.base import TRACKERS
    from .trackers.cache import CacheSettings, default_cache_grid, weights_digest, write_track_cache

    runs = [RunConfig.load(path).with_overrides(args.overrides) for path in args.for_run]
    base = args.config or (args.for_run[0] if args.for_run else None)
    config = (RunConfig.load(base) if base else RunConfig()).with_overrides(args.overrides)
    name = args.tracker or config.tracker.name
    kwargs = dict(config.tracker.kwargs)
    if args.weights:
        kwargs["weights"] = args.weights
    weights = kwargs.get("weights")
    settings = CacheSettings(
        tracker=name,
        weights=weights_digest(weights) if isinstance(weights, str) else ("none" if weights is None else str(weights)),
        grid_size=args.grid or default_cache_grid(config.tracker.grid_size, config.data.crop_scale),
        num_frames=config.data.num_frames,
        frame_stride=config.data.stride,
        start_step=args.start_step or config.data.stride,
        track_size=args.track_size,
    )
    from .device import resolve_device
    from .distributed import init_from_environment, is_main_process

    device = resolve_device(args.device)
    init_from_environment(device)  # under torchrun: every process tracks every world-th video
    source = open_videos(args.videos, backend=config.data.backend, decode_timeout=config.data.decode_timeout)
    tracker = TRACKERS.create(name, **kwargs)
    started = time.perf_counter()
    plan = _run_plan(runs, source, settings) if runs else None
    out = write_track_cache(
        source, tracker, args.out, settings, batch_size=args.batch_size, device=device, progress=not args.no_progress, plan=plan
    )
    if not is_main_process():
        return 0
    from .data.track_cache import TrackCache

    cache = TrackCache(out, source)
    unreadable = cache.unreadable
    skipped = f" ({len(unreadable)} unreadable, skipped: {', '.join(sorted(unreadable)[:5])})" if unreadable else ""
    readable = [i for i, e in enumerate(cache.videos) if "error" not in e]
    held = sum(len(cache.starts(i)) for i in readable)
    possible = sum(len(cache.candidate_starts(i)) for i in readable)
    scope = f"the starts of {len(runs)} planned run{'s' * (len(runs) != 1)}: " if runs else ""
    print(
        f"tracked {len(source) - len(unreadable)} of {len(source)} videos{skipped} with {name} in "
        f"{time.perf_counter() - started:.1f} s ({scope}{held} of {possible} clip starts, "
        f"{settings.grid_size}x{settings.grid_size} points each); "
        f"train with: tracker.name={name} tracker.cache={out}"
    )
    return 0


def _prepare(args: argparse.Namespace) -> int:
    import time

    from .data.prepared import PreparedFrames, PreparedSettings, default_short_side, prepare_frames
    from .data.video_files import open_videos

    config = (RunConfig.load(args.config) if args.config else RunConfig()).with_overrides(args.overrides)
    data = config.data
    for name, value in (("--start-step", args.start_step), ("--short-side", args.short_side), ("--chunk-frames", args.chunk_frames)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be a positive number of frames or pixels, got {value}")
    settings = PreparedSettings(
        num_frames=data.num_frames,
        frame_stride=data.stride,
        start_step=args.start_step or data.stride,
        short_side=args.short_side or default_short_side(data.size, data.crop_scale),
        decoder=data.backend,
    )
    source = open_videos(args.videos, backend=data.backend, decode_timeout=data.decode_timeout)
    started = time.perf_counter()
    done: list[int] = []
    out = prepare_frames(source, args.out, settings, chunk_frames=args.chunk_frames, progress=not args.no_progress,
                         on_video=lambda index, name: done.append(index))
    prepared = PreparedFrames(out, source)
    unreadable = prepared.unreadable
    skipped = f" ({len(unreadable)} unreadable or too short, skipped: {', '.join(sorted(unreadable)[:5])})" if unreadable else ""
    entries = [e for e in prepared.videos if "error" not in e]
    frames = sum(len(e["frames"]) for e in entries)
    size = sum(e["bytes"] for e in entries) / 2**20
    print(
        f"prepared {len(entries)} of {len(source)} videos{skipped} in {time.perf_counter() - started:.1f} s "
        f"({len(done)} decoded, {len(source) - len(done)} already prepared): {frames} frames, {size:.1f} MiB, shorter "
        f"side {settings.short_side} px, clips of {settings.num_frames} frames every {settings.frame_stride} from starts "
        f"every {settings.start_step}; train with: data.prepared={out}"
    )
    return 0


def _run_plan(runs: list[RunConfig], source, settings):
    """``plan(unusable)`` for write_track_cache: the union of the starts the runs read."""
    from .errors import VideoReadError
    from .data.track_cache import planned_starts_for_run

    for run in runs:
        if (run.data.num_frames, run.data.stride) != (settings.num_frames, settings.frame_stride):
            raise ValueError(
                f"--for-run: a run samples {run.data.num_frames} frames every {run.data.stride}, the cache "
                f"{settings.num_frames} every {settings.frame_stride}; give runs with the cache's data settings"
            )
    counts = []
    for index in range(len(source)):
        try:
            counts.append(source.num_frames(index))
        except VideoReadError:
            counts.append(None)

    def plan(unusable: set[int]) -> dict[int, set[int]]:
        merged: dict[int, set[int]] = {}
        for run in runs:
            for video, starts in planned_starts_for_run(run, counts, settings.start_step, unusable).items():
                merged.setdefault(video, set()).update(starts)
        return merged

    return plan


def _track_eval(args: argparse.Namespace) -> int:
    import json


    from .eval.tracking import evaluate_tracker, format_results

    source = None
    if args.videos:
        from .data.video_files import open_videos

        source = open_videos(args.videos)
    from .device import resolve_device

    device = resolve_device(args.device)
    results = evaluate_tracker(
        args.tracker,
        source,
        num_videos=args.num_videos,
        num_frames=args.num_frames,
        frame_stride=args.frame_stride,
        size=args.size,
        grid_size=args.grid,
        query_mode=args.query_mode,
        seed=args.seed,
        batch_size=args.batch_size,
        device=device,
        tracker_kwargs={"weights": args.weights} if args.weights else None,
    )
    print(format_results({args.tracker: results}))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return 0


def _card_summary(registry, name: str) -> str:
    """A tracker's or objective's card (no model is built) and the registry's aliases of the name."""
    entry = registry.get(name)
    card = entry.card
    if card is None:
        text = f"{name}: (no card)"
    else:
        text = card.summary() if hasattr(card, "summary") else f"{name}: {card}"
    if entry.aliases:
        text += f"\n  aliases: {', '.join(entry.aliases)} (accepted wherever {name!r} is)"
    return text + "\n"


def _backbone_summary(name: str) -> str:
    """A backbone's card plus its parameter count (built on the meta device: no memory, no download)."""
    import warnings

    import torch

    from .backbones.base import BACKBONES

    card = BACKBONES.card(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):
            count = sum(p.numel() for p in BACKBONES.create(name, pretrained=False).parameters())
    text = card.summary() if card is not None else f"{name}: (no card)"
    return f"{text}\n  parameters: {count / 1e6:.1f} M\n"


if __name__ == "__main__":
    sys.exit(main())
