"""Track-then-fit on the decode-accuracy corpus, run as separate processes by
tests/system/test_decode_accuracy.py.

``python stamp_runs.py track VIDEOS CACHE BACKEND``: ``mosic track`` with the ``stamp`` tracker,
whose track of every point in frame t has x = the index stamped on the frame it was given,
so the cache records which frame each clip position held when it was tracked.

``python stamp_runs.py fit VIDEOS CACHE|none BACKEND SEED OUT.json``: a 2-step fit (from the
cache, or tracking in the step when CACHE is ``none``) whose train_step records, for every
clip it receives, the stamps of its frames, the clip's frame indices, and (with a cache) the
stamps its cached tracks carry.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch

from mosic.data.stamped import read_stamps
from mosic.trackers.base import Tracker, register_tracker
from mosic.tracks import Tracks


@register_tracker("stamp")
class StampTracker(Tracker):
    """x of every point in frame t = the stamp of frame t; y = the query's y; always visible."""

    name = "stamp"

    def track(self, video, queries, *, clips=None) -> Tracks:
        b, t = video.shape[:2]
        stamps = torch.tensor([read_stamps(v.cpu().numpy()) for v in video], dtype=torch.float32)  # (B, T)
        n = queries.shape[1]
        xy = torch.empty(b, t, n, 2)
        xy[..., 0] = stamps[:, :, None]
        xy[..., 1] = queries[:, None, :, 2].float().cpu()
        return Tracks(xy.to(video.device), torch.ones(b, t, n, dtype=torch.bool, device=video.device))


def _config(cache: str | None, backend: str, seed: int):
    from mosic.config import RunConfig

    return RunConfig.from_dict({
        "backbone": {"name": "vit-tiny", "pretrained": False, "train_blocks": 1,
                     "kwargs": {"patch_size": 8, "img_size": 64, "depth": 1, "embed_dim": 32, "num_heads": 2}},
        "tracker": {"name": "stamp", "grid_size": 4, **({"cache": cache} if cache else {})},
        "objective": {"name": "mosic", "head_hidden_dims": [16], "projection_dim": 8, "num_prototypes": 4},
        "data": {"num_frames": 4, "frame_stride": 5, "size": 64, "crop_scale": (1.0, 1.0), "global_batch_size": 3,
                 "num_workers": 0, "backend": backend},
        "train": {"seed": seed, "max_steps": 2, "log_every": 1, "progress": False, "mask_ratio": 0.0},
    })  # fmt: skip


def main(argv: list[str]) -> int:
    command, videos, cache, backend = argv[:4]
    if command == "track":
        from mosic.cli import main as mosic_main

        return mosic_main([
            "track", videos, "--tracker", "stamp", "--out", cache, "--grid", "3", "--no-progress",
            "data.num_frames=4", "data.frame_stride=5", f"data.backend={backend}",
        ])  # fmt: skip
    seed, out = int(argv[4]), argv[5]
    import mosic

    cache = None if cache == "none" else cache
    trainer = mosic.PostPretrainer(config=_config(cache, backend, seed))
    seen = []
    original = type(trainer).train_step

    def recording_step(self, batch):
        for k, meta in enumerate(batch["meta"]):
            clip = {
                "video": meta.video,
                "frame_indices": list(meta.frame_indices),
                "stamps": read_stamps(batch["frames"][k].numpy()),
            }
            if "tracks" in batch:
                source_xy = meta.transform.points_to_source(batch["tracks"].xy[k].numpy().astype(np.float64))
                clip["track_stamps"] = np.round(source_xy[:, :, 0]).astype(int).tolist()  # (T, N)
            seen.append(clip)
        return original(self, batch)

    type(trainer).train_step = recording_step
    trainer.fit(videos)
    with open(out, "w") as f:
        json.dump({"clips": seen, "steps": trainer.step}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
