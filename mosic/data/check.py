"""Scan a video dataset before training: which videos training will skip, and why.

:func:`check_videos` probes every video of a source (frame count, fps), decodes the frames
of one training clip and the last frame, and reports each video as usable or not with the
reason training would give when skipping it (see :class:`~mosic.data.clips.ClipDataset`).
``mosic check-data VIDEOS`` is the command line around it (:func:`run_check_data`).
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from ..errors import VideoReadError
from .clips import effective_stride
from .source import VideoSource
from .video_files import verify_video


def check_video(source: VideoSource, index: int, num_frames: int, stride: int, full: bool = False) -> dict[str, Any]:
    """What training will make of video ``index``.

    Returns:
        ``{"index", "video", "usable", "reason", "frames", "width", "height", "fps"}``:
        ``reason`` is None for a usable video; the others are None where unknown.
    """
    row: dict[str, Any] = {
        "index": index, "video": source.video_name(index), "usable": False, "reason": None,
        "frames": None, "width": None, "height": None, "fps": None,
    }
    try:
        count = source.num_frames(index)
        row["frames"], row["fps"] = count, source.fps(index)
        if count >= num_frames:  # the first clip training could draw, and the very last frame
            step = effective_stride(count, num_frames, stride)
            wanted = sorted({step * k for k in range(num_frames)} | {count - 1})
        else:
            wanted = sorted({0, count - 1})
        frames = source.read_frames(index, wanted)
        row["height"], row["width"] = int(frames.shape[1]), int(frames.shape[2])
        del frames
        if full:
            verify_video(source, index)
        if count < num_frames:
            row["reason"] = f"too short: {count} frame{'s' * (count != 1)}, a clip needs {num_frames}"
        else:
            row["usable"] = True
    except VideoReadError as error:
        row["reason"] = error.reason
    except Exception as error:  # noqa: BLE001  (training would stop here: report it, keep scanning)
        row["reason"] = f"unexpected {type(error).__name__} (training would stop on it): {error}"
    return row


def check_videos(
    source: VideoSource,
    num_frames: int = 12,
    stride: int = 8,
    full: bool = False,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """:func:`check_video` for every video of ``source``, in index order.

    Args:
        num_frames: frames of the training clip (``data.num_frames``); a video shorter
            than ``num_frames`` is skipped.
        stride: frames between clip frames (``data.stride``); a video shorter than
            ``stride * (num_frames - 1) + 1`` frames is read with a smaller stride.
        full: decode every frame, not just one clip and the last frame (slow; finds damage
            in the middle of a video).
        workers: threads (default: up to 8); each reads through its own copy of the source.
        progress: called as ``progress(done, total)`` after each video.
    """
    total = len(source)
    workers = max(1, min(workers or min(8, os.cpu_count() or 1), total))
    blob = None
    if workers > 1:
        try:
            blob = pickle.dumps(source)
        except Exception:  # noqa: BLE001  (an unpicklable source is checked in one thread)
            workers = 1
    local = threading.local()

    def check(index: int) -> dict[str, Any]:
        if blob is None:
            return check_video(source, index, num_frames, stride, full)
        if not hasattr(local, "source"):
            local.source = pickle.loads(blob)
        return check_video(local.source, index, num_frames, stride, full)

    rows: list[dict[str, Any]] = []
    if workers == 1:
        for index in range(total):
            rows.append(check(index))
            if progress:
                progress(len(rows), total)
        return rows
    with ThreadPoolExecutor(workers, thread_name_prefix="check-data") as pool:
        for row in pool.map(check, range(total)):
            rows.append(row)
            if progress:
                progress(len(rows), total)
    return rows


def _size(row: dict[str, Any]) -> str:
    return f"{row['width']}x{row['height']}" if row["width"] else "-"


def format_report(rows: list[dict[str, Any]], num_frames: int, stride: int, show_all: bool = False) -> str:
    """A table of the videos training will skip (every video with ``show_all``) and a summary line."""
    skipped = [row for row in rows if not row["usable"]]
    shown = rows if show_all else skipped
    lines = []
    if shown:
        width = min(max(len("video"), *(len(row["video"]) for row in shown)), 72)
        title = "videos" if show_all else f"videos training will skip (clips of {num_frames} frames, stride {stride})"
        lines.append(f"{title}:")
        lines.append(f"  {'video':<{width}}  {'frames':>6}  {'size':>9}  {'fps':>6}  status")
        for row in shown:
            frames = "-" if row["frames"] is None else str(row["frames"])
            fps = "-" if row["fps"] is None else f"{row['fps']:.4g}"
            status = "ok" if row["usable"] else f"skip: {row['reason']}"
            lines.append(f"  {row['video']:<{width}}  {frames:>6}  {_size(row):>9}  {fps:>6}  {status}")
    lines.append(f"{len(rows)} videos: {len(rows) - len(skipped)} usable, {len(skipped)} skipped")
    return "\n".join(lines) + "\n"


def run_check_data(args) -> int:
    """``mosic check-data``: exit status 0 when at least one video is usable, else 1."""
    from ..config import RunConfig
    from .video_files import open_videos

    config = RunConfig.load(args.config) if args.config else RunConfig()
    num_frames = args.num_frames or config.data.num_frames
    stride = args.stride or config.data.stride
    videos = args.videos[0] if len(args.videos) == 1 else list(args.videos)
    source = open_videos(videos, backend=args.backend or config.data.backend, decode_timeout=config.data.decode_timeout)
    show_progress = sys.stderr.isatty() and len(source) > 1
    bar = None
    if show_progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        task = bar.add_task("checking videos", total=len(source))
        bar.start()
    try:
        rows = check_videos(
            source, num_frames, stride, full=args.full, workers=args.workers,
            progress=(lambda done, total: bar.update(task, completed=done)) if bar else None,
        )
    finally:
        if bar is not None:
            bar.stop()
    print(format_report(rows, num_frames, stride, show_all=args.verbose), end="")
    usable = sum(row["usable"] for row in rows)
    if args.json:
        summary = {
            "num_frames": num_frames, "stride": stride, "full": bool(args.full),
            "videos": len(rows), "usable": usable, "skipped": len(rows) - usable, "results": rows,
        }
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    if not usable:
        print("no usable video: training on this data would stop with NoUsableVideosError", file=sys.stderr)
    return 0 if usable else 1
