"""The ``oracle`` tracker: exact ground-truth tracks of synthetic clips."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..tracks import Tracks
from .base import Tracker, register_tracker
from .catalog import CARDS


@register_tracker("oracle", card=CARDS["oracle"])
class OracleTracker(Tracker):
    """Returns the ground truth of clips whose metadata carries it (``mosic.data.SyntheticVideos``).

    Queries given in view pixels are mapped back to source pixels through the clip's
    :class:`~mosic.data.transforms.ViewTransform`, tracked exactly, and mapped forward;
    points leaving the view are invisible.
    """

    name = "oracle"

    def track(self, video: torch.Tensor, queries: torch.Tensor, *, clips: Sequence[Any] | None = None) -> Tracks:
        b, t = video.shape[:2]
        if clips is None or len(clips) != b or any(getattr(c, "ground_truth", None) is None for c in clips):
            raise ValueError(
                "the 'oracle' tracker only works on synthetic clips with ground truth "
                "(mosic.data.SyntheticVideos); for real videos choose a real tracker, "
                "see mosic.list_trackers()"
            )
        xy_all, vis_all = [], []
        for clip, q in zip(clips, queries.detach().cpu().numpy()):
            if len(clip.frame_indices) != t:
                raise ValueError(f"clip metadata has {len(clip.frame_indices)} frames, video has {t}")
            tf = clip.transform
            src = np.concatenate([q[:, :1], tf.points_to_source(q[:, 1:])], axis=1)
            xy, visible = clip.ground_truth.tracks(clip.frame_indices, src)
            xy = tf.points_to_view(np.asarray(xy, dtype=np.float64))
            xy_all.append(torch.from_numpy(xy.astype(np.float32)))
            vis_all.append(torch.from_numpy(np.asarray(visible, dtype=bool) & tf.inside_view(xy)))
        return Tracks(torch.stack(xy_all).to(video.device), torch.stack(vis_all).to(video.device))
