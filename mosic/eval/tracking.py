"""Point-tracking evaluation with the TAP-Vid metrics (Doersch et al., NeurIPS 2022 D&B).

Definitions follow the TAP-Vid benchmark (tapnet's ``compute_tapvid_metrics``):

* Coordinates are rescaled to a 256 x 256 image, as TAP-Vid resizes every video to
  256 x 256 (anisotropically for non-square videos): with the pixel-centre convention
  ``x256 = (x + 0.5) * 256 / W - 0.5`` and ``y256 = (y + 0.5) * 256 / H - 0.5``, so
  thresholds are in pixels of the 256 x 256 frame.
* Evaluated frames: query mode ``"first"`` counts only frames strictly after each
  point's query frame (TAP-Vid's "query first": the query frame itself and earlier
  frames are ignored); ``"strided"`` counts every frame except the query frame.
* ``delta_d`` (TAP-Vid's "< delta^x", pts_within_d): among evaluated frames where the
  ground truth is visible, the fraction whose predicted position lies strictly within
  d pixels (Euclidean, ``|p - g| < d``), whatever the predicted visibility;
  ``delta_avg`` averages d = 1, 2, 4, 8, 16.
* ``occlusion_accuracy`` (OA): fraction of evaluated frames whose predicted visibility
  equals the ground truth.
* ``jaccard_d``: TP / (TP + FP + FN), TP = predicted visible, ground-truth visible and
  within d; FP = predicted visible but ground-truth occluded or farther than d;
  FN = ground-truth visible but not a TP. ``average_jaccard`` (AJ) averages d = 1 .. 16.

Each metric is computed per video and averaged over videos (the benchmark's "simple
mean over the full set of videos"), in percent (0-100). A video without any evaluated
ground-truth-visible point has no defined delta/AJ and is left out of their means.
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..data.clips import ClipMeta, clip_frame_indices
from ..data.source import VideoSource
from ..data.transforms import ViewTransform
from ..trackers.base import TRACKERS, Tracker
from ..tracks import query_grid

__all__ = ["THRESHOLDS", "TAPVID_SIZE", "evaluate_tracker", "format_results", "tapvid_metrics"]

#: TAP-Vid's pixel thresholds at 256 x 256
THRESHOLDS = (1, 2, 4, 8, 16)
#: the resolution TAP-Vid metrics are defined at
TAPVID_SIZE = 256
QUERY_MODES = ("first", "strided")


def _to_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _mean(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else float("nan")


def tapvid_metrics(
    pred_xy: np.ndarray | torch.Tensor,
    pred_visible: np.ndarray | torch.Tensor,
    gt_xy: np.ndarray | torch.Tensor,
    gt_visible: np.ndarray | torch.Tensor,
    query_frames: np.ndarray | torch.Tensor,
    image_size: int | Sequence[int],
    *,
    query_mode: str = "first",
    per_video: bool = False,
) -> dict:
    """TAP-Vid metrics of predicted tracks (see the module docstring for the definitions).

    Args:
        pred_xy: (B, T, N, 2) predicted (x, y) pixels of images of ``image_size``.
        gt_xy: (B, T, N, 2) ground-truth (x, y) pixels, as ``pred_xy``.
        pred_visible: (B, T, N) bool, predicted visibility.
        gt_visible: (B, T, N) bool, ground-truth visibility.
        query_frames: (B, N) integer query frame of every point.
        image_size: (H, W) of the frames the coordinates refer to, or an int for square.
        query_mode: ``"first"`` (frames after the query frame) or ``"strided"`` (all but it).
        per_video: return (B,) arrays instead of means over videos.
    Returns:
        ``delta_1`` ... ``delta_16``, ``delta_avg``, ``jaccard_1`` ... ``jaccard_16``,
        ``average_jaccard``, ``occlusion_accuracy`` (percent; means over videos, NaN when
        no video defines them) and ``num_eval_points`` (evaluated point-frames, summed,
        or per video).
    """
    if query_mode not in QUERY_MODES:
        raise ValueError(f"query_mode must be one of {QUERY_MODES}, got {query_mode!r}")
    pred_xy, gt_xy = _to_numpy(pred_xy).astype(np.float64), _to_numpy(gt_xy).astype(np.float64)
    pred_vis, gt_vis = _to_numpy(pred_visible).astype(bool), _to_numpy(gt_visible).astype(bool)
    q = _to_numpy(query_frames)
    if gt_xy.ndim != 4 or gt_xy.shape[-1] != 2:
        raise ValueError(f"gt_xy must be (B, T, N, 2), got {gt_xy.shape}")
    b, t, n = gt_xy.shape[:3]
    for name, arr, shape in (
        ("pred_xy", pred_xy, (b, t, n, 2)),
        ("pred_visible", pred_vis, (b, t, n)),
        ("gt_visible", gt_vis, (b, t, n)),
        ("query_frames", q, (b, n)),
    ):
        if arr.shape != shape:
            raise ValueError(f"{name} must be {shape} to match gt_xy, got {arr.shape}")
    q_int = np.rint(q).astype(np.int64)
    if (np.abs(q - q_int) > 1e-3).any() or (q_int < 0).any() or (q_int >= t).any():
        raise ValueError(f"query_frames must be integers in [0, {t})")
    height, width = (image_size, image_size) if isinstance(image_size, (int, np.integer)) else tuple(image_size)

    frames = np.arange(t)[None, :, None]  # (1, T, 1)
    qf = q_int[:, None, :]  # (B, 1, N)
    evaluated = frames > qf if query_mode == "first" else frames != qf  # (B, T, N)

    scale = np.array([TAPVID_SIZE / width, TAPVID_SIZE / height])
    # (x + 0.5) * s - 0.5 for both; the offset cancels in the distance
    dist2 = np.square((pred_xy - gt_xy) * scale).sum(-1)  # (B, T, N)
    dist2 = np.where(np.isfinite(dist2), dist2, np.inf)

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(den > 0, 100.0 * num / np.maximum(den, 1), np.nan)

    axes = (1, 2)
    gt_count = (gt_vis & evaluated).sum(axes)
    out: dict[str, Any] = {}
    deltas, jaccards = [], []
    for d in THRESHOLDS:
        within = dist2 < d * d
        correct = within & gt_vis & evaluated
        delta = ratio(correct.sum(axes), gt_count)
        tp = (correct & pred_vis).sum(axes)
        fp = (pred_vis & (~gt_vis | ~within) & evaluated).sum(axes)
        jac = ratio(tp, gt_count + fp)
        out[f"delta_{d}"], out[f"jaccard_{d}"] = delta, jac
        deltas.append(delta)
        jaccards.append(jac)
    out["delta_avg"] = np.mean(deltas, axis=0)
    out["average_jaccard"] = np.mean(jaccards, axis=0)
    out["occlusion_accuracy"] = ratio(((pred_vis == gt_vis) & evaluated).sum(axes), evaluated.sum(axes))
    out["num_eval_points"] = evaluated.sum(axes)
    if per_video:
        return out
    result = {k: _mean(v) for k, v in out.items() if k != "num_eval_points"}
    result["num_eval_points"] = int(out["num_eval_points"].sum())
    return result


def _clip_queries(
    height: int, width: int, num_frames: int, grid_size: int | None, num_points: int | None,
    query_mode: str, query_stride: int, rng: np.random.Generator,
) -> np.ndarray:
    """(N, 3) rows (t, x, y) in view pixels: the grid or random points on each query frame."""
    query_frames = [0] if query_mode == "first" else list(range(0, num_frames, query_stride))
    parts = []
    for f in query_frames:
        if grid_size is not None:
            parts.append(query_grid(height, width, grid_size, frame=f).numpy().astype(np.float64))
        else:
            xy = rng.uniform(0.0, 1.0, (num_points, 2)) * np.array([width - 1, height - 1])
            parts.append(np.concatenate([np.full((num_points, 1), float(f)), xy], axis=1))
    return np.concatenate(parts)


def evaluate_tracker(
    tracker: Tracker | str,
    source: VideoSource | None = None,
    *,
    num_videos: int | None = None,
    num_frames: int = 24,
    frame_stride: int = 1,
    size: int | Sequence[int] | None = None,
    grid_size: int | None = None,
    num_points: int | None = None,
    query_mode: str = "first",
    query_stride: int = 5,
    seed: int = 0,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    tracker_kwargs: Mapping[str, Any] | None = None,
) -> dict:
    """TAP-Vid metrics of a tracker on clips of a source with ground-truth tracks.

    Clip v (v < ``num_videos``) takes ``num_frames`` frames ``frame_stride`` apart from a
    start drawn with ``numpy.random.default_rng([seed, v])`` (the stride shrinks for
    short videos, as in training), resized to ``size`` (int = square, (H, W), or None:
    the source size; bilinear, antialiased). Queries: a ``grid_size`` x ``grid_size``
    grid (:func:`~mosic.trackers.query_grid`) or ``num_points`` uniform random points
    (default: a 16 x 16 grid) on frame 0 (``query_mode="first"``) or on every
    ``query_stride``-th frame (``"strided"``, TAP-Vid's strided protocol, which needs
    backward tracking); only queries visible in the ground truth on their frame are
    kept. The tracker gets ``clips=`` metadata (:class:`~mosic.data.ClipMeta`), so the
    ``oracle`` works too.

    Args:
        tracker: a :class:`~mosic.trackers.Tracker` or a registered name (built with
            ``tracker_kwargs`` and moved to ``device``).
        source: a source whose ``ground_truth(v)`` has ``tracks`` (default:
            ``SyntheticVideos(num_videos, num_frames=max(24, clip span), size=size or 64, seed=seed)``).
        batch_size: clips per tracker call.
        device: where videos and queries go.
    Returns:
        :func:`tapvid_metrics` (percent, means over clips) plus ``tracker``,
        ``num_videos``, ``num_frames``, ``frame_stride``, ``size`` ([H, W]), ``num_points``
        (queries per clip, mean), ``query_mode``, ``tracker_seconds`` (time inside the
        tracker), ``wall_seconds`` (everything, ground truth included),
        ``point_frames_per_second`` (query points x frames tracked per tracker second)
        and ``frames_per_second`` (video frames per tracker second: what dense-flow
        trackers such as RAFT cost, whatever the number of points).
    """
    wall_start = time.perf_counter()
    if query_mode not in QUERY_MODES:
        raise ValueError(f"query_mode must be one of {QUERY_MODES}, got {query_mode!r}")
    if grid_size is not None and num_points is not None:
        raise ValueError("pass grid_size or num_points, not both")
    if grid_size is None and num_points is None:
        grid_size = 16
    if (grid_size is not None and grid_size < 1) or (num_points is not None and num_points < 1):
        raise ValueError(f"grid_size and num_points must be >= 1, got {grid_size} and {num_points}")
    if num_frames < 2 or frame_stride < 1 or batch_size < 1 or query_stride < 1:
        raise ValueError("need num_frames >= 2, frame_stride >= 1, batch_size >= 1 and query_stride >= 1")
    out_size = None if size is None else ((size, size) if isinstance(size, int) else tuple(int(s) for s in size))
    if source is None:
        from ..data.synthetic import SyntheticVideos

        span = (num_frames - 1) * frame_stride + 1
        source = SyntheticVideos(
            num_videos=8 if num_videos is None else num_videos,
            num_frames=max(24, span),
            size=out_size or 64,
            seed=seed,
        )
    num_videos = len(source) if num_videos is None else num_videos
    if not 1 <= num_videos <= len(source):
        raise ValueError(f"num_videos must be in [1, {len(source)}] for this source, got {num_videos}")
    if isinstance(tracker, str):
        tracker = TRACKERS.create(tracker, **dict(tracker_kwargs or {}))
        tracker.to(device)
    elif tracker_kwargs:
        raise ValueError("tracker_kwargs only apply when tracker is a registered name")

    # ground truth of every clip
    clips = []
    for v in range(num_videos):
        gt = source.ground_truth(v)
        if gt is None or not hasattr(gt, "tracks"):
            raise ValueError(
                f"evaluate_tracker needs ground-truth tracks, e.g. mosic.data.SyntheticVideos; "
                f"video {v} ({source.video_name(v)}) has none"
            )
        rng = np.random.default_rng([seed, v])
        name = source.video_name(v)
        frame_indices = clip_frame_indices(source.num_frames(v), num_frames, frame_stride, rng, name)
        frames = torch.from_numpy(np.ascontiguousarray(source.read_frames(v, frame_indices))).permute(0, 3, 1, 2)
        src_h, src_w = frames.shape[-2:]
        tf = ViewTransform(0, 0, src_w, src_h, out_size or (src_h, src_w))
        frames = tf.apply_to_frames(frames).contiguous()
        height, width = tf.out_size
        queries = _clip_queries(height, width, num_frames, grid_size, num_points, query_mode, query_stride, rng)
        src_q = np.concatenate([queries[:, :1], tf.points_to_source(queries[:, 1:])], axis=1)
        gt_xy, gt_vis = gt.tracks(frame_indices, src_q)
        gt_xy = tf.points_to_view(np.asarray(gt_xy, dtype=np.float64))
        gt_vis = np.asarray(gt_vis, dtype=bool) & tf.inside_view(gt_xy)
        keep = gt_vis[queries[:, 0].astype(np.int64), np.arange(len(queries))]
        if not keep.any():
            continue
        meta = ClipMeta(name, v, list(frame_indices), tf, int(seed), gt)
        clips.append((frames, queries[keep], gt_xy[:, keep], gt_vis[:, keep], meta))
    if not clips:
        raise ValueError("no clip has a query point visible in the ground truth")

    # track, batch by batch (clips of one batch share T, H, W; queries padded to the same N)
    per_video: dict[str, list] = {}
    tracker_seconds, point_frames, frames_tracked = 0.0, 0, 0
    device = torch.device(device)
    for i in range(0, len(clips), batch_size):
        batch = clips[i : i + batch_size]
        groups = [batch] if len({c[0].shape for c in batch}) == 1 else [[c] for c in batch]
        for group in groups:
            n_max = max(len(c[1]) for c in group)
            queries = np.stack([np.concatenate([c[1], np.repeat(c[1][:1], n_max - len(c[1]), 0)]) for c in group])
            video = torch.stack([c[0] for c in group]).to(device)
            q = torch.from_numpy(queries.astype(np.float32)).to(device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            tracks = tracker(video, q, clips=[c[4] for c in group])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            tracker_seconds += time.perf_counter() - t0
            pred_xy, pred_vis = tracks.xy.detach().float().cpu().numpy(), tracks.visible.cpu().numpy()
            for j, (frames, cq, gxy, gvis, _) in enumerate(group):
                n = len(cq)
                point_frames += n * frames.shape[0]
                frames_tracked += frames.shape[0]
                m = tapvid_metrics(
                    pred_xy[j : j + 1, :, :n], pred_vis[j : j + 1, :, :n], gxy[None], gvis[None], cq[None, :, 0],
                    frames.shape[-2:], query_mode=query_mode, per_video=True,
                )
                for k, val in m.items():
                    per_video.setdefault(k, []).append(val[0])

    results: dict[str, Any] = {k: _mean(np.asarray(v, dtype=np.float64)) for k, v in per_video.items()
                               if k != "num_eval_points"}
    results["num_eval_points"] = int(np.sum(per_video["num_eval_points"]))
    first = clips[0][0]
    results.update(
        tracker=getattr(tracker, "name", type(tracker).__name__),
        num_videos=len(clips),
        num_frames=int(first.shape[0]),
        frame_stride=frame_stride,
        size=[int(first.shape[-2]), int(first.shape[-1])],
        num_points=float(np.mean([len(c[1]) for c in clips])),
        query_mode=query_mode,
        tracker_seconds=tracker_seconds,
        wall_seconds=time.perf_counter() - wall_start,
        point_frames_per_second=point_frames / tracker_seconds if tracker_seconds > 0 else float("inf"),
        frames_per_second=frames_tracked / tracker_seconds if tracker_seconds > 0 else float("inf"),
    )
    return results


_TABLE_COLUMNS = (
    ("AJ", "average_jaccard", "{:.1f}"),
    ("<δ avg", "delta_avg", "{:.1f}"),
    ("OA", "occlusion_accuracy", "{:.1f}"),
    ("<δ1", "delta_1", "{:.1f}"),
    ("<δ2", "delta_2", "{:.1f}"),
    ("<δ4", "delta_4", "{:.1f}"),
    ("<δ8", "delta_8", "{:.1f}"),
    ("<δ16", "delta_16", "{:.1f}"),
    ("points·frames/s", "point_frames_per_second", "{:.0f}"),
)


def format_results(results: Mapping[str, Any] | Mapping[str, Mapping[str, Any]]) -> str:
    """A markdown table of :func:`evaluate_tracker` results: one dict, or {label: results}."""
    rows = {results.get("tracker", "tracker"): results} if "delta_avg" in results else dict(results)
    header = "| tracker | " + " | ".join(c[0] for c in _TABLE_COLUMNS) + " |"
    lines = [header, "|---|" + "---:|" * len(_TABLE_COLUMNS)]
    for label, res in rows.items():
        cells = []
        for _, key, fmt in _TABLE_COLUMNS:
            value = res.get(key)
            cells.append("" if value is None else fmt.format(value))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    first = next(iter(rows.values()))
    if "num_videos" in first:
        lines.append(
            f"\n{first['num_videos']} clips x {first['num_frames']} frames (stride {first['frame_stride']}) at "
            f"{first['size'][0]}x{first['size'][1]}, {first['num_points']:g} queries per clip, query mode "
            f"'{first['query_mode']}'; TAP-Vid metrics in percent at 256x256."
        )
    return "\n".join(lines)
