"""Track consistency: does a point's feature stay its own as the point moves?

For each clip of a source with ground truth (:class:`~mosic.data.SyntheticVideos`), a
G x G grid of frame-0 queries is tracked exactly (the ``oracle`` tracker). For every
entry (point i, frame t > 0) where the point is visible in frames 0 and t, the backbone's
feature read bilinearly at the point's (x, y) pixel position in frame t is compared, by
cosine, with the frame-0 features of all G^2 queries: a hit when its nearest is its own
query. This is what the MoSiC loss asks for (the same physical point keeps its cluster
over time); chance is 1 / G^2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..backbones.base import Backbone
from ..checks import positive_int
from ..data.clips import ClipMeta
from ..data.source import VideoSource
from ..data.transforms import ViewTransform
from ..points import sample_at_points
from ..trackers.oracle import OracleTracker
from ..tracks import query_grid


@torch.no_grad()
def track_consistency(
    backbone: Backbone,
    source: VideoSource,
    num_frames: int = 8,
    frame_stride: int = 2,
    grid_size: int = 8,
    device: str | torch.device | None = None,
) -> float:
    """The share (percent) of visible (point, frame > 0) entries of the clips (frames
    ``0, frame_stride, ...``, ``num_frames`` of them, of every video of ``source``) whose
    nearest frame-0 query feature is their own. ``source`` needs ground truth."""
    positive_int(num_frames, "track_consistency: num_frames")
    positive_int(frame_stride, "track_consistency: frame_stride")
    positive_int(grid_size, "track_consistency: grid_size")
    device = torch.device(device) if device is not None else next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    hits = total = 0
    frames_index = [i * frame_stride for i in range(num_frames)]
    tracker = OracleTracker()
    try:
        for v in range(len(source)):
            truth = source.ground_truth(v)
            if truth is None:
                raise ValueError(f"track_consistency needs ground-truth tracks; {source.video_name(v)} has none")
            frames = torch.from_numpy(source.read_frames(v, frames_index)).permute(0, 3, 1, 2)[None]  # (1, T, 3, H, W)
            h, w = frames.shape[-2:]
            meta = ClipMeta(source.video_name(v), v, frames_index, ViewTransform.identity(h, w), 0, truth)
            tracks = tracker.track(frames, query_grid(h, w, grid_size)[None], clips=[meta])
            tokens = backbone.patch_tokens(backbone.preprocess(frames[0].to(device))).float()  # (T, h, w, D)
            xy = tracks.xy[0].to(device)
            features = F.normalize(sample_at_points(tokens, xy, backbone.patch_size, "bilinear"), dim=-1)  # (T, N, D)
            nearest = (features[1:] @ features[0].T).argmax(-1).cpu()  # (T-1, N)
            own = torch.arange(features.shape[1]).expand_as(nearest)
            visible = tracks.visible[0, 1:] & tracks.visible[0, :1]
            hits += int(((nearest == own) & visible).sum())
            total += int(visible.sum())
    finally:
        backbone.train(was_training)
    return 100.0 * hits / max(total, 1)
