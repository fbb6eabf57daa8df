"""Data loading: training clips per second per DataLoader worker, for each video reader.

The script writes its own synthetic videos into a temporary folder (``--dir`` keeps
them): ``--videos`` videos of ``--video-frames`` frames at ``--width`` x ``--height``
(854 x 480 by default, the 480p size), textured content that moves (a panning
multi-scale noise background, three textured discs on their own paths, light per-frame
noise), so decoding costs what textured footage costs. Each video is stored twice:
H.264 mp4 (libx264 through PyAV, ``--crf``, ``--preset``, GOP ``--gop``, 0 = x264's
default of 250, i.e. one keyframe per 100-frame video) and a folder of JPEG frames
(quality ``--jpeg-quality``, the YouTube-VOS / DAVIS ``JPEGImages`` layout).

Readers: ``pyav``, ``torchcodec`` and ``decord`` (``VideoFileSource`` on the mp4s),
``frames`` (``FrameFolderSource`` on the JPEG folders), each through ``open_videos``, and
``prepared``: the mp4s prepared once by ``mosic prepare`` (``mosic.data.prepared``: the
frames the clips can read, decoded by PyAV, resized to a shorter side of ``--short-side``,
default ceil(size / sqrt(crop_scale[0])), stored as raw ``.npy``), read through
``data.prepared`` without decoding; the preparation's wall and CPU time and its disk use per
video are reported (``"reused"`` when ``--dir`` already held it). Clips are
sampled exactly as training samples them: ``ClipDataset`` (12 frames, stride 8, a random
resized crop of area [0.4, 1] resized to 224 px), batched by ``collate_clips`` in a
``DataLoader`` with ``--workers`` 0, 1, 2 (0: the main process reads). Every
configuration runs one warm-up epoch (worker start-up, first opens), then ``--repeats``
rounds time each configuration in turn over ``--epochs-per-repeat`` epochs (so a burst of
load from other processes hits all alike); the median clips/s is reported, and clips/s
per worker = clips/s / max(1, workers). The CPU time of the main process and the workers
per clip (Linux /proc) is reported too: on a shared CPU it grows less with other
processes' load than the wall time does.

Given target step rates in clips/s (``--step-clips-per-s``, and the measured rate of
``benchmarks/components.py --json`` passed as ``--components-json``), it prints the
workers needed to keep one step fed: ceil(target / per-worker rate), using the rate
measured with one worker (a real worker process).

    python benchmarks/data_loading.py --workers 0 1 2 --repeats 3 --step-clips-per-s 1 10 100 --components-json components.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler

from mosic.data.clips import ClipDataset, collate_clips
from mosic.data.video_files import open_videos

READERS = ("pyav", "torchcodec", "decord", "frames", "prepared")


# ----------------------------------------------------------------------------- videos


def _noise_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float32 multi-scale noise around 0 (coarse blobs plus fine grain)."""
    out = torch.zeros(1, 3, height, width)
    for scale, amplitude in ((64, 55.0), (16, 35.0), (4, 20.0), (1, 8.0)):
        small = torch.from_numpy(rng.normal(size=(1, 3, height // scale + 2, width // scale + 2)).astype(np.float32))
        out += amplitude * F.interpolate(small, size=(height, width), mode="bicubic", align_corners=False)
    return out[0].permute(1, 2, 0).numpy()


def synthetic_frames(seed: int, num_frames: int, height: int, width: int):
    """Yield ``num_frames`` (H, W, 3) uint8 RGB frames of one synthetic video."""
    rng = np.random.default_rng(seed)
    margin = math.ceil(1.5 * num_frames) + 1
    canvas = _noise_texture(rng, height + 2 * margin, width + 2 * margin) + rng.uniform(60, 190, size=3)
    velocity = rng.uniform(-1.5, 1.5, size=2)  # background pan, px per frame
    objects = []
    for _ in range(3):
        radius = int(rng.integers(height // 10, height // 4))
        yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
        texture = _noise_texture(rng, 2 * radius + 1, 2 * radius + 1) + rng.uniform(40, 220, size=3)
        objects.append(
            {
                "disc": (xx**2 + yy**2) <= radius**2,
                "texture": texture,
                "radius": radius,
                "start": rng.uniform((0, 0), (width, height)),
                "velocity": rng.uniform(-4.0, 4.0, size=2),
            }
        )
    for t in range(num_frames):
        dx, dy = (margin + np.round(velocity * t)).astype(int)
        frame = canvas[dy : dy + height, dx : dx + width].copy()
        for obj in objects:
            r = obj["radius"]
            cx, cy = np.mod(obj["start"] + obj["velocity"] * t, (width, height)).astype(int)  # wraps around
            x0, y0, x1, y1 = max(cx - r, 0), max(cy - r, 0), min(cx + r + 1, width), min(cy + r + 1, height)
            if x0 >= x1 or y0 >= y1:
                continue
            sub = (slice(y0 - (cy - r), y1 - (cy - r)), slice(x0 - (cx - r), x1 - (cx - r)))
            region = frame[y0:y1, x0:x1]
            region[obj["disc"][sub]] = obj["texture"][sub][obj["disc"][sub]]
        frame += rng.normal(0.0, 2.0, size=frame.shape).astype(np.float32)
        yield np.clip(frame, 0, 255).astype(np.uint8)


def write_videos(root: Path, args: argparse.Namespace) -> dict:
    """Write the mp4s to root/mp4 and the JPEG folders to root/JPEGImages; their sizes."""
    import av
    from PIL import Image

    (root / "mp4").mkdir(parents=True, exist_ok=True)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    for v in range(args.videos):
        folder = root / "JPEGImages" / f"video{v:03d}"
        folder.mkdir(exist_ok=True)
        container = av.open(str(root / "mp4" / f"video{v:03d}.mp4"), "w")
        stream = container.add_stream("libx264", rate=args.fps)
        stream.width, stream.height, stream.pix_fmt = args.width, args.height, "yuv420p"
        options = {"crf": str(args.crf), "preset": args.preset}
        if args.gop:
            options["g"] = str(args.gop)
        stream.options = options
        for t, frame in enumerate(synthetic_frames(v, args.video_frames, args.height, args.width)):
            Image.fromarray(frame).save(folder / f"{t:05d}.jpg", quality=args.jpeg_quality)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        container.close()
    mp4_bytes = sum(p.stat().st_size for p in (root / "mp4").iterdir())
    jpeg_bytes = sum(p.stat().st_size for p in (root / "JPEGImages").rglob("*.jpg"))
    seconds = args.videos * args.video_frames / args.fps
    return {
        "mp4_mib_per_video": mp4_bytes / args.videos / 2**20,
        "mp4_kbit_per_s": mp4_bytes * 8 / 1000 / seconds,
        "jpeg_mib_per_video": jpeg_bytes / args.videos / 2**20,
        "jpeg_kib_per_frame": jpeg_bytes / (args.videos * args.video_frames) / 1024,
    }


# ----------------------------------------------------------------------------- loading


class _EpochKeys(Sampler):
    """(epoch, index) keys of ``epochs`` shuffled epochs per iteration, continuing the epoch count."""

    def __init__(self, size: int, epochs: int = 1):
        self.size, self.epochs, self.epoch = size, epochs, 0

    def __iter__(self):
        for _ in range(self.epochs):
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.epoch)).tolist()
            yield from ((self.epoch, i) for i in order)
            self.epoch += 1

    def __len__(self) -> int:
        return self.size * self.epochs


def _open(reader: str, root: Path):
    if reader == "frames":
        return open_videos(root / "JPEGImages")
    return open_videos(root / "mp4", backend=reader, decode_timeout=_DECODE_TIMEOUT)


_DECODE_TIMEOUT: float | None = None  # set from --decode-timeout


def _with_children(pids: list[int]) -> list[int]:
    """``pids`` and their child processes, recursively (a decode watchdog's child decodes)."""
    found, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        found.append(pid)
        try:
            todo += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            pass
    return found


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of this process and of ``pids`` (Linux /proc; NaN elsewhere)."""
    own = os.times()
    total = own.user + own.system
    for pid in set(_with_children([os.getpid()])[1:]) | set(pids):  # workers and their decoders
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return math.nan
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return total


def _worker_pids(loader: DataLoader) -> list[int]:
    iterator = getattr(loader, "_iterator", None)  # persistent workers live on it
    return [w.pid for w in getattr(iterator, "_workers", [])]


def prepare(root: Path, args: argparse.Namespace):
    """Prepare the mp4s (PyAV) once, as ``mosic prepare`` does; (PreparedFrames, its figures)."""
    from mosic.data.prepared import PreparedFrames, PreparedSettings, default_short_side, prepare_frames

    short = args.short_side or default_short_side(args.size, tuple(args.crop_scale))
    settings = PreparedSettings(args.clip_frames, args.stride, args.stride, short, "pyav")
    out = root / f"prepared-T{args.clip_frames}-s{args.stride}-{short}"
    source = open_videos(root / "mp4", backend="pyav", decode_timeout=_DECODE_TIMEOUT)
    done: list[int] = []
    start, start_cpu = time.perf_counter(), _cpu_seconds([])
    prepare_frames(source, out, settings, on_video=lambda i, name: done.append(i))
    seconds, cpu = time.perf_counter() - start, _cpu_seconds([]) - start_cpu
    prepared = PreparedFrames(out, source, {"num_frames": args.clip_frames, "frame_stride": args.stride})
    entries = [e for e in prepared.videos if "error" not in e]
    figures = {
        "short_side": short,
        "videos_prepared_now": len(done),
        "reused": not done,
        "seconds": seconds,
        "seconds_per_video": seconds / max(1, len(done)),
        "cpu_seconds_per_video": cpu / max(1, len(done)),
        "frames_per_video": sum(len(e["frames"]) for e in entries) / max(1, len(entries)),
        "stored_size": entries[0]["shape"][1:3] if entries else None,
        "mib_per_video": sum(e["bytes"] for e in entries) / max(1, len(entries)) / 2**20,
    }
    return prepared, figures


def open_dataset(reader: str, root: Path, args: argparse.Namespace, figures: dict | None = None) -> ClipDataset | str:
    """The reader's ClipDataset after probing every video and reading one clip, or why it cannot read."""
    try:
        prepared = None
        if reader == "prepared":
            prepared, prepared_figures = prepare(root, args)
            if figures is not None:
                figures.update(prepared_figures)
            source = open_videos(root / "mp4", backend="pyav", decode_timeout=_DECODE_TIMEOUT)
        else:
            source = _open(reader, root)
        dataset = ClipDataset(source, args.clip_frames, args.stride, args.size, tuple(args.crop_scale), seed=0, prepared=prepared)
        for i in range(len(source)):  # probe in the main process (workers inherit the counts)
            source.num_frames(i)
        sample = dataset[(0, 0)]
        if sample["frames"].shape != (args.clip_frames, 3, args.size, args.size):
            raise RuntimeError(f"unexpected clip shape {tuple(sample['frames'].shape)}")
    except Exception as error:  # noqa: BLE001  (any failure is the finding)
        return f"{type(error).__name__}: {error}".splitlines()[0][:300]
    return dataset


def measure(datasets: dict[str, ClipDataset], args: argparse.Namespace) -> dict[str, dict]:
    """Clips/s of every (reader, workers) DataLoader: one warm-up epoch each (worker start-up,
    first opens), then ``--repeats`` rounds that time every loader once in turn, so a burst of
    load from other processes hits all of them alike."""
    loaders = {}
    for reader, dataset in datasets.items():
        for workers in args.workers:
            loaders[reader, workers] = DataLoader(
                dataset,
                batch_size=args.batch,
                sampler=_EpochKeys(len(dataset), args.epochs_per_repeat),
                num_workers=workers,
                collate_fn=collate_clips,
                persistent_workers=workers > 0,
            )
    for loader in loaders.values():
        for _ in loader:
            pass
    seconds: dict[tuple[str, int], list[float]] = {key: [] for key in loaders}
    cpu: dict[tuple[str, int], list[float]] = {key: [] for key in loaders}
    clips = {key: len(loader.sampler) for key, loader in loaders.items()}
    for _ in range(args.repeats):
        for key, loader in loaders.items():
            pids = _worker_pids(loader)
            start, start_cpu = time.perf_counter(), _cpu_seconds(pids)
            count = sum(len(batch["meta"]) for batch in loader)
            seconds[key].append(time.perf_counter() - start)
            cpu[key].append(_cpu_seconds(pids) - start_cpu)
            if count != clips[key]:
                raise RuntimeError(f"{key}: read {count} clips, expected {clips[key]}")
    results = {}
    for reader in datasets:
        rates = {w: clips[reader, w] / statistics.median(seconds[reader, w]) for w in args.workers}
        results[reader] = {
            "clips_per_s": rates,
            "per_worker": {w: r / max(1, w) for w, r in rates.items()},
            "cpu_ms_per_clip": {w: 1e3 * statistics.median(cpu[reader, w]) / clips[reader, w] for w in args.workers},
            "all_seconds": {w: seconds[reader, w] for w in args.workers},
        }
    del loaders
    return results


def workers_needed(target: float, per_worker: float) -> int:
    return max(1, math.ceil(target / per_worker))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readers", nargs="+", default=list(READERS), choices=READERS)
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--video-frames", type=int, default=100)
    parser.add_argument("--width", type=int, default=854)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--crf", type=int, default=23)
    parser.add_argument("--preset", default="medium", help="libx264 preset")
    parser.add_argument("--gop", type=int, default=0, help="keyframe interval; 0: x264's default (250)")
    parser.add_argument("--jpeg-quality", type=int, default=90)
    parser.add_argument("--clip-frames", type=int, default=12)
    parser.add_argument("--stride", type=int, default=8, help="paper: 3.2 s / 12 frames at 30 fps = 8")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--crop-scale", type=float, nargs=2, default=[0.4, 1.0])
    parser.add_argument("--short-side", type=int, default=None,
                        help="prepared frames' shorter side (default: ceil(size / sqrt(crop_scale[0])))")
    parser.add_argument("--batch", type=int, default=4, help="clips per DataLoader batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs-per-repeat", type=int, default=1)
    parser.add_argument("--step-clips-per-s", type=float, nargs="*", default=[], help="target step rates")
    parser.add_argument("--components-json", default=None, help="benchmarks/components.py --json output")
    parser.add_argument("--dir", default=None, help="write (or reuse) the videos here instead of a temp folder")
    parser.add_argument("--json", default=None, help="also write the figures to this path")
    parser.add_argument(
        "--decode-timeout", type=float, default=None,
        help="decode through the hang watchdog (data.decode_timeout) with this timeout; default: in-process",
    )
    args = parser.parse_args(argv)
    global _DECODE_TIMEOUT
    _DECODE_TIMEOUT = args.decode_timeout

    with tempfile.TemporaryDirectory(prefix="mosic-data-loading-") as tmp:
        root = Path(args.dir) if args.dir else Path(tmp)
        stamp = root / "videos.json"
        spec = {k: getattr(args, k) for k in ("videos", "video_frames", "width", "height", "fps", "crf", "preset", "gop", "jpeg_quality")}
        start = time.perf_counter()
        if stamp.is_file() and json.loads(stamp.read_text())["spec"] == spec:
            sizes = json.loads(stamp.read_text())["sizes"]
        else:
            sizes = write_videos(root, args)
            stamp.write_text(json.dumps({"spec": spec, "sizes": sizes}))
        print(
            f"{args.videos} synthetic videos, {args.video_frames} frames, {args.width}x{args.height}: mp4 "
            f"{sizes['mp4_mib_per_video']:.2f} MiB per video ({sizes['mp4_kbit_per_s']:.0f} kbit/s at {args.fps} fps, "
            f"crf {args.crf}, {args.preset}), JPEG {sizes['jpeg_kib_per_frame']:.0f} KiB per frame "
            f"(ready in {time.perf_counter() - start:.0f} s)"
        )
        results: dict = {"config": {k: v for k, v in vars(args).items() if k not in ("json", "dir")}, "videos": sizes}
        results["cpu_count"] = os.cpu_count()
        preparation: dict = {}
        opened = {reader: open_dataset(reader, root, args, preparation) for reader in args.readers}
        if preparation:
            results["preparation"] = preparation
            print(
                f"prepared frames: {preparation['frames_per_video']:.1f} frames per video at "
                f"{'x'.join(map(str, preparation['stored_size'] or []))} (H x W), {preparation['mib_per_video']:.1f} MiB "
                "per video; " + ("reused from --dir" if preparation["reused"] else
                f"{preparation['seconds_per_video']:.2f} s ({preparation['cpu_seconds_per_video']:.2f} CPU s) per video")
            )
        measured = measure({r: d for r, d in opened.items() if not isinstance(d, str)}, args)
        results["readers"] = {r: {"error": d} if isinstance(d, str) else measured[r] for r, d in opened.items()}

    print(
        f"| reader | {' | '.join(f'{w} workers: clips/s' for w in args.workers)} | clips/s per worker | "
        "CPU ms per clip (main + workers) "
        f"({args.clip_frames} frames, stride {args.stride}, {args.size} px crop, batch {args.batch}, median of "
        f"{args.repeats} interleaved rounds of {args.epochs_per_repeat} epoch of {args.videos} clips, {os.cpu_count()} CPUs)"
    )
    print(f"|---|{'---:|' * (len(args.workers) + 2)}")
    per_worker_rate: dict[str, float] = {}
    for reader, result in results["readers"].items():
        if "error" in result:
            print(f"| {reader} | {' | '.join('n/a' for _ in args.workers)} | n/a | cannot read: {result['error']} |")
            continue
        rates = result["clips_per_s"]
        basis = 1 if 1 in rates else min((w for w in rates if w > 0), default=0)
        per_worker_rate[reader] = result["per_worker"][basis]
        result["per_worker_basis"] = basis
        per = " / ".join(f"{result['per_worker'][w]:.2f}" for w in args.workers)
        cpu_ms = " / ".join(f"{result['cpu_ms_per_clip'][w]:.0f}" for w in args.workers)
        print(f"| {reader} | {' | '.join(f'{rates[w]:.2f}' for w in args.workers)} | {per} | {cpu_ms} |")

    targets = {f"--step-clips-per-s {t:g}": t for t in args.step_clips_per_s}
    if args.components_json:
        measured = json.loads(Path(args.components_json).read_text())
        cfg = measured.get("config", {})
        label = f"components.py ({cfg.get('backbone')}, batch {cfg.get('batch')}, {cfg.get('device')})"
        targets[label] = float(measured["clips_per_s"])
    results["targets"] = {}
    if targets and per_worker_rate:
        print("| target step rate | clips/s | " + " | ".join(f"{r} workers needed" for r in per_worker_rate) + " |")
        print(f"|---|---:|{'---:|' * len(per_worker_rate)}")
        for label, target in targets.items():
            needed = {r: workers_needed(target, rate) for r, rate in per_worker_rate.items()}
            results["targets"][label] = {"clips_per_s": target, "workers_needed": needed}
            print(f"| {label} | {target:.2f} | " + " | ".join(str(n) for n in needed.values()) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return results


if __name__ == "__main__":
    main()
