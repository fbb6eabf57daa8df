"""`mosic check-data` and check_videos on the bad-video corpus of tests/helpers/bad_videos.py."""

import json
import shutil

import av
import numpy as np
import pytest

from helpers.bad_videos import colour_frames, write_corpus, write_video
from mosic.cli import main
from mosic.data.check import check_videos, format_report
from mosic.data.video_files import open_videos

FILES = ["good.mp4", "truncated.mp4", "empty.mp4", "text.mp4", "short.mp4", "gray8.mkv", "vfr.mp4"]
FOLDERS = ["frames_rgba", "frames_corrupt", "frames_gray16"]
SKIPPED = {  # video: start of the reason, with clips of 8 frames
    "truncated.mp4": "truncated or corrupt: the file ends inside its 'mdat' box",
    "empty.mp4": "empty file (0 bytes)",
    "text.mp4": "not a video file (it looks like text)",
    "short.mp4": "too short: 5 frames, a clip needs 8",
    "frames_corrupt": "frame 00000.jpg is truncated or corrupt",
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A folder holding some video files and frame folders of the corpus, some of them bad."""
    root = tmp_path_factory.mktemp("check")
    write_corpus(root / "all", FILES + FOLDERS)
    videos = root / "videos"
    videos.mkdir()
    for name in FILES + FOLDERS:
        (shutil.copytree if name in FOLDERS else shutil.copy)(root / "all" / name, videos / name)
    return videos


def _by_name(rows):
    return {row["video"].rsplit("/", 1)[-1]: row for row in rows}


@pytest.mark.parametrize("backend", ["pyav", "auto"])
def test_check_videos_reports_each_video(dataset, backend):
    rows = check_videos(open_videos(dataset, backend=backend), num_frames=8, stride=2, workers=2)
    assert [row["index"] for row in rows] == list(range(len(FILES) + len(FOLDERS)))
    rows = _by_name(rows)
    assert {name for name, row in rows.items() if not row["usable"]} == set(SKIPPED)
    for name, reason in SKIPPED.items():
        assert rows[name]["reason"].startswith(reason), rows[name]["reason"]
    good = rows["good.mp4"]
    assert (good["frames"], good["width"], good["height"], good["fps"], good["reason"]) == (24, 64, 48, 10.0, None)
    assert rows["frames_rgba"]["fps"] is None and rows["frames_rgba"]["frames"] == 12
    assert (rows["short.mp4"]["frames"], rows["short.mp4"]["width"]) == (5, 64)  # probed, then too short
    assert rows["empty.mp4"]["frames"] is None


def test_threads_give_the_same_rows(dataset):
    source = open_videos(dataset, backend="pyav")
    assert check_videos(source, 8, 2, workers=1) == check_videos(source, 8, 2, workers=3)


def test_full_check_finds_damage_in_the_middle(tmp_path):
    """Frame 30 of 60 is garbage: one clip and the last frame decode, the full check does not."""
    path = write_video(tmp_path / "mid.mp4", colour_frames(60))
    with av.open(str(path)) as container:
        packets = [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size]
    data = bytearray(path.read_bytes())
    pos, size = packets[30]
    data[pos : pos + size] = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    source = open_videos(path, backend="pyav")
    assert check_videos(source, 4, 2)[0]["usable"]
    (row,) = check_videos(source, 4, 2, full=True)
    assert not row["usable"] and row["reason"].startswith("truncated or corrupt: decoding stopped at frame 30 of 60")


def test_format_report_lists_skipped_videos_and_a_summary():
    rows = [
        {"index": 0, "video": "a.mp4", "usable": True, "reason": None, "frames": 90, "width": 64, "height": 48, "fps": 30.0},
        {"index": 1, "video": "b.mp4", "usable": False, "reason": "empty file (0 bytes)",
         "frames": None, "width": None, "height": None, "fps": None},
    ]
    text = format_report(rows, 12, 8)
    assert "a.mp4" not in text and "b.mp4" in text and "skip: empty file (0 bytes)" in text
    assert "clips of 12 frames, stride 8" in text
    assert text.splitlines()[-1] == "2 videos: 1 usable, 1 skipped"
    assert "a.mp4" in format_report(rows, 12, 8, show_all=True)


def test_cli_check_data(dataset, tmp_path, capsys):
    out = tmp_path / "report.json"
    code = main(["check-data", str(dataset), "--num-frames", "8", "--stride", "2", "--backend", "pyav", "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[-1] == f"{len(FILES) + len(FOLDERS)} videos: {len(FILES) + len(FOLDERS) - len(SKIPPED)} usable, {len(SKIPPED)} skipped"
    for name, reason in SKIPPED.items():
        assert any(name in line and f"skip: {reason}" in line for line in lines), (name, text)
    assert "good.mp4" not in text
    report = json.loads(out.read_text())
    assert (report["num_frames"], report["stride"], report["skipped"]) == (8, 2, len(SKIPPED))
    assert {r["video"].rsplit("/", 1)[-1] for r in report["results"] if not r["usable"]} == set(SKIPPED)


def test_cli_check_data_exit_status_when_nothing_is_usable(dataset, tmp_path, capsys):
    bad = [str(dataset / name) for name in ("empty.mp4", "text.mp4", "short.mp4")]
    assert main(["check-data", *bad, "--num-frames", "8", "--backend", "pyav"]) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines()[-1] == "3 videos: 0 usable, 3 skipped"
    assert "no usable video" in captured.err
    # the config's clip length is the default; a user error is exit status 2
    assert main(["check-data", str(dataset / "short.mp4"), "--num-frames", "5", "-v"]) == 0
    assert "ok" in capsys.readouterr().out
    assert main(["check-data", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
