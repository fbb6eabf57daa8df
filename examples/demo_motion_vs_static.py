"""Does motion matter? The demo's run with true tracks vs the same run with static tracks.

Both runs use the demo's configuration, seeds and data. The control replaces every
track by its frame-0 position (visibility unchanged), so the teacher target is read at
the same place in every frame: the same loss, no motion. Usage::

    python examples/demo_motion_vs_static.py --steps 300 --out runs/motion_vs_static
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import mosic
from mosic.data import SyntheticVideos
from mosic.demo import demo_config
from mosic.eval.clustering import evaluate_video_clustering
from mosic.trackers import OracleTracker, Tracks


class StaticTracker(mosic.Tracker):
    """Ground-truth visibility, but every point stays where it was queried."""

    def track(self, video, queries, *, clips=None):
        truth = OracleTracker().track(video, queries, clips=clips)
        return Tracks(truth.xy[:, :1].expand_as(truth.xy).clone(), truth.visible)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", default="runs/motion_vs_static")
    args = parser.parse_args()
    out = Path(args.out)
    train = SyntheticVideos(num_videos=64, num_frames=24, size=64, seed=0)
    held_out = SyntheticVideos(num_videos=16, num_frames=24, size=64, seed=10_000)
    rows = {}
    for label, tracker in (("true tracks (mosic)", None), ("static tracks (no motion)", StaticTracker())):
        config = demo_config(args.steps, out / label.split()[0]).with_overrides({"train.progress": False})
        trainer = mosic.PostPretrainer(config=config, tracker=tracker)
        if not rows:
            rows["before"] = evaluate_video_clustering(trainer.teacher, held_out, num_frames=8, frame_stride=2)
        trainer.fit(train)
        rows[label] = evaluate_video_clustering(trainer.teacher, held_out, num_frames=8, frame_stride=2)
        rows[label]["final_loss"] = trainer.history[-1]["loss"]
    print("| run | class clustering mIoU (per dataset) | instance clustering mIoU (per clip) | final loss |")
    print("|---|---|---|---|")
    for label, r in rows.items():
        loss = f"{r['final_loss']:.3f}" if "final_loss" in r else "-"
        print(f"| {label} | {r['dataset_miou']:.1f} | {r['clip_miou']:.1f} | {loss} |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({k: {m: v for m, v in r.items() if not isinstance(v, list)} for k, r in rows.items()}, indent=2))


if __name__ == "__main__":
    main()
