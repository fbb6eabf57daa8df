"""A training run over a folder with unreadable videos: they are skipped, counted and
reported; a folder of nothing but bad videos stops with a clear error."""

import json
from pathlib import Path

import pytest

from bad_videos import colour_frames, write_video
from conftest import tiny_config
from mosic import PostPretrainer
from mosic.data.clips import NoUsableVideosError

CONFIG = {"tracker.name": "lk", "train.max_steps": 3, "data.global_batch_size": 4, "data.num_frames": 4, "data.frame_stride": 2}


def folder_with(tmp_path, good: int, bad: dict[str, bytes]):
    root = tmp_path / "videos"
    root.mkdir()
    for k in range(good):
        write_video(root / f"good_{k}.mp4", colour_frames(24))
    for name, content in bad.items():
        (root / name).write_bytes(content)
    return root


def test_bad_videos_are_skipped_counted_and_reported(tmp_path, capsys):
    root = folder_with(tmp_path, 4, {"broken.mp4": b"this is not a video", "empty.mp4": b""})
    out = tmp_path / "run"
    trainer = PostPretrainer(config=tiny_config(**CONFIG))
    with pytest.warns(UserWarning, match="broken.mp4"):
        trainer.fit(root, out_dir=out)
    assert trainer.step == 3  # the run finished, batches stayed full
    assert sorted(Path(name).name for name in trainer.skipped_videos) == ["broken.mp4", "empty.mp4"]
    report = json.loads((out / "skipped_videos.json").read_text())
    assert report == trainer.skipped_videos and all(report.values())  # every skip has a reason
    assert trainer.history[-1]["skipped_videos"] == 2
    printed = capsys.readouterr().out
    assert "2 unreadable videos were skipped" in printed and "skipped_videos.json" in printed


def test_a_folder_of_only_bad_videos_stops_with_a_clear_error(tmp_path):
    root = folder_with(tmp_path, 0, {f"bad_{k}.mp4": b"garbage" * k for k in range(4)})
    trainer = PostPretrainer(config=tiny_config(**CONFIG))
    with pytest.warns(UserWarning), pytest.raises(NoUsableVideosError, match="check-data"):
        trainer.fit(root, out_dir=tmp_path / "run")


def test_skipping_can_be_turned_off(tmp_path):
    from mosic.data.readers import VideoReadError

    root = folder_with(tmp_path, 4, {"broken.mp4": b"this is not a video"})
    trainer = PostPretrainer(config=tiny_config(**CONFIG, **{"data.skip_bad_videos": False}))
    with pytest.raises(VideoReadError, match="broken.mp4"):
        trainer.fit(root, out_dir=tmp_path / "run")


def test_mosic_track_records_unreadable_videos_and_training_skips_them(tmp_path, capsys):
    from mosic.cli import main
    from mosic.data.clips import BadVideoWarning
    from mosic.trackers.cache import TrackCache
    from mosic.data.readers import open_videos

    root = folder_with(tmp_path, 4, {"broken.mp4": b"this is not a video"})
    cache = tmp_path / "cache"
    track = ["track", str(root), "--out", str(cache), "--tracker", "lk", "--grid", "4", "--device", "cpu",
             "--no-progress", "data.num_frames=4", "data.frame_stride=2"]
    with pytest.warns(BadVideoWarning, match="mosic track: skipping .*broken.mp4"):
        assert main(track) == 0
    assert "tracked 4 of 5 videos (1 unreadable, skipped: " in capsys.readouterr().out
    unreadable = TrackCache(cache, open_videos(str(root))).unreadable
    assert [Path(n).name for n in unreadable] == ["broken.mp4"] and all(unreadable.values())
    trainer = PostPretrainer(config=tiny_config(**CONFIG, **{"tracker.cache": str(cache)}))
    with pytest.warns(UserWarning, match="broken.mp4"):
        trainer.fit(root, out_dir=tmp_path / "run")
    assert trainer.step == 3 and [Path(n).name for n in trainer.skipped_videos] == ["broken.mp4"]
