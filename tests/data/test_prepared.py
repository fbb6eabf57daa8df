"""Prepared frames (``mosic prepare``): the lattice frames decoded once, read without decoding,
the same clips, crops and tracks as decoding, never used stale."""

import json
import shutil

import numpy as np
import pytest
import torch

import mosic
from conftest import tiny_config
from helpers.videos import Edited
from mosic.data.clips import ClipDataset, collate_clips
from mosic.data.prepared import (
    PreparedFrames,
    PreparedSettings,
    StalePreparedError,
    default_short_side,
    prepare_frames,
    resize_frames,
    stored_frames,
    stored_size,
)
from mosic.data.synthetic import SyntheticVideos
from mosic.data.track_cache import TrackCache
from mosic.data.transforms import ViewTransform
from mosic.trackers.cache import CacheSettings, write_track_cache
from mosic.trackers.oracle import OracleTracker

SIZE = (48, 64)  # (H, W): not square, so x and y scales differ
SETTINGS = PreparedSettings(num_frames=4, frame_stride=2, start_step=2, short_side=36, decoder="auto")
EXPECT = {"num_frames": 4, "frame_stride": 2}


def videos(seed=0, num_videos=3):
    return SyntheticVideos(num_videos=num_videos, num_frames=16, size=SIZE, seed=seed)


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory):
    return prepare_frames(videos(), tmp_path_factory.mktemp("prepared"), SETTINGS, chunk_frames=3)


def test_rules_for_frames_and_sizes():
    assert default_short_side(224, (0.4, 1.0)) == 355  # ceil(224 / sqrt(0.4)) = ceil(354.2)
    assert default_short_side(224, (1.0, 1.0)) == 224
    frames = stored_frames(180, 12, 6, 6)  # a YouTube-VOS-like video at the authors' stride
    assert len(frames) == 30 and all(f % 6 == 0 for f in frames) and frames[-1] == 174
    assert stored_frames(12, 4, 2, 3) == [0, 2, 3, 4, 5, 6, 7, 9]  # starts 0 and 3
    assert stored_frames(5, 4, 2, 1) == [0, 1, 2, 3, 4]  # too short for stride 2: stride 1
    assert stored_frames(3, 4, 2, 2) == []  # shorter than a clip
    assert stored_size(480, 854, 355) == (355, 632)
    assert stored_size(854, 480, 355) == (632, 355)
    assert stored_size(32, 40, 355) == (32, 40)  # never upscaled


def test_stored_frames_are_the_source_frames_resized(prepared_dir):
    manifest = json.loads((prepared_dir / "manifest.json").read_text())
    assert manifest["complete"] and manifest["version"] == 1
    assert manifest["settings"] == {"num_frames": 4, "frame_stride": 2, "start_step": 2, "short_side": 36, "decoder": "auto"}
    source = videos()
    for index, entry in enumerate(manifest["videos"]):
        assert entry["frames"] == list(range(0, 16, 2))  # the multiples of the stride
        assert (entry["num_frames"], entry["height"], entry["width"]) == (16, 48, 64)
        assert entry["shape"] == [8, 36, 48, 3] and entry["scale"] == [48 / 64, 36 / 48]  # (x, y)
        stored = np.load(prepared_dir / entry["file"], mmap_mode="r", allow_pickle=False)
        expected = resize_frames(source.read_frames(index, entry["frames"]), (36, 48))
        np.testing.assert_array_equal(stored, expected)  # decoded in chunks of 3: the same frames
        direct = ViewTransform(0, 0, 64, 48, (36, 48)).apply_to_frames(
            torch.from_numpy(source.read_frames(index, [6])).permute(0, 3, 1, 2)
        )
        assert torch.equal(torch.from_numpy(np.array(stored[3])).permute(2, 0, 1), direct[0])


def test_a_view_is_the_scaled_crop_of_the_stored_frames(prepared_dir):
    prepared = PreparedFrames(prepared_dir, videos(), EXPECT)
    view = ViewTransform(x0=9, y0=5, width=40, height=30, out_size=(20, 24), flip=True)
    got = prepared.read_view(1, [2, 4, 6, 8], view)
    assert got.shape == (4, 3, 20, 24) and got.dtype == torch.uint8 and got.is_contiguous()
    stored = torch.from_numpy(prepared.read(1, [2, 4, 6, 8])).permute(0, 3, 1, 2)
    # the box scaled by (0.75, 0.75) and rounded: x 6.75..36.75 -> 7..37, y 3.75..26.25 -> 4..26
    crop = ViewTransform(7, 4, 30, 22, (20, 24), flip=True).apply_to_frames(stored)  # float resize
    assert (got.int() - crop.int()).abs().max() <= 1  # uint8 resize: within one grey level
    with pytest.raises(StalePreparedError, match="frame 3 .* not in the prepared frames"):
        prepared.read_view(1, [3, 5, 7, 9], view)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    settings = CacheSettings(tracker="oracle", weights="none", grid_size=8, num_frames=4, frame_stride=2, start_step=2, track_size=384)
    return write_track_cache(videos(), OracleTracker(), tmp_path_factory.mktemp("cache"), settings)


@pytest.mark.parametrize("view_size", [32, 16])
def test_same_clips_crops_and_tracks_as_decoding(tmp_path, cache_dir, view_size):
    """With a track cache, the prepared store changes nothing but the resampling of pixels.

    A 32 px view: the default shorter side ceil(32 / sqrt(0.4)) = 51 keeps the 48 x 64 source
    as it is, and frames are within 1 grey level of decoding (uint8 vs float resizing). A 16 px
    view: frames are stored at 26 x 35 (0.54x), resampled twice, and the crop box is rounded to
    stored pixels; on these sharp-edged synthetic frames the mean absolute difference per clip
    is at most 8 grey levels (7.1 measured)."""
    source = videos()
    settings = PreparedSettings(**{**SETTINGS.__dict__, "short_side": default_short_side(view_size, (0.4, 1.0))})
    prepared = PreparedFrames(prepare_frames(source, tmp_path / "p", settings), source, EXPECT)
    assert prepared.videos[0]["shape"][1:3] == ([48, 64] if view_size == 32 else [26, 35])
    cache = TrackCache(cache_dir, source, {"num_frames": 4, "frame_stride": 2})
    decoded = ClipDataset(source, 4, 2, view_size, (0.4, 1.0), 0.5, seed=1, track_cache=cache)
    read = ClipDataset(source, 4, 2, view_size, (0.4, 1.0), 0.5, seed=1, track_cache=cache, prepared=prepared)
    alone = ClipDataset(source, 4, 2, view_size, (0.4, 1.0), 0.5, seed=1, prepared=prepared)  # no cache: its lattice
    errors = []
    for epoch in range(6):
        for index in range(3):
            a, b, c = decoded[(epoch, index)], read[(epoch, index)], alone[(epoch, index)]
            assert a["meta"].frame_indices == b["meta"].frame_indices == c["meta"].frame_indices
            assert a["meta"].transform == b["meta"].transform == c["meta"].transform
            assert torch.equal(a["tracks"].xy, b["tracks"].xy) and torch.equal(a["tracks"].visible, b["tracks"].visible)
            assert torch.equal(b["frames"], c["frames"]) and b["frames"].shape == a["frames"].shape == (4, 3, view_size, view_size)
            diff = (a["frames"].int() - b["frames"].int()).abs()
            errors.append((diff.float().mean().item(), diff.max().item()))
    mean, peak = max(e[0] for e in errors), max(e[1] for e in errors)
    if view_size == 32:
        assert peak <= 1
    else:
        assert 0 < mean <= 8
    assert collate_clips([read[(0, i)] for i in range(3)])["frames"].shape == (3, 4, 3, view_size, view_size)


def test_start_step_one_gives_the_clips_of_decoding(tmp_path):
    """A store with a start every frame draws exactly the clips (starts and crops) of decoding."""
    source = videos()
    settings = PreparedSettings(**{**SETTINGS.__dict__, "start_step": 1, "short_side": 48})
    prepared = PreparedFrames(prepare_frames(source, tmp_path / "p", settings), source, EXPECT)
    decoded = ClipDataset(source, 4, 2, 32, (0.4, 1.0), seed=3)
    read = ClipDataset(source, 4, 2, 32, (0.4, 1.0), seed=3, prepared=prepared)
    starts = set()
    for epoch in range(4):
        for index in range(3):
            a, b = decoded[(epoch, index)], read[(epoch, index)]
            assert a["meta"].frame_indices == b["meta"].frame_indices and a["meta"].transform == b["meta"].transform
            assert (a["frames"].int() - b["frames"].int()).abs().max() <= 1
            starts.add(a["meta"].frame_indices[0])
    assert any(s % 2 for s in starts)  # odd starts too


def test_rerun_skips_and_a_changed_video_is_rejected(prepared_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(prepared_dir, copy)
    redone = []
    prepare_frames(videos(), copy, SETTINGS, on_video=lambda i, name: redone.append(i))
    assert redone == []  # prepared and unchanged: nothing decoded again
    with pytest.raises(StalePreparedError, match=r"video 'synthetic/seed0/00000' changed .*re-run `mosic prepare`"):
        PreparedFrames(copy, Edited(videos()), EXPECT)
    prepare_frames(Edited(videos()), copy, SETTINGS, on_video=lambda i, name: redone.append(i))
    assert redone == [0]  # only the changed video
    PreparedFrames(copy, Edited(videos()), EXPECT)
    with pytest.raises(StalePreparedError, match="covers 3 videos, the source has 2"):
        PreparedFrames(copy, videos(num_videos=2), EXPECT)
    with pytest.raises(StalePreparedError, match="no prepared frames"):
        PreparedFrames(tmp_path / "nothing", videos(), EXPECT)


def test_mismatched_settings_are_rejected(prepared_dir):
    with pytest.raises(StalePreparedError, match=r"frame_stride=2 but this run uses frame_stride=6.*re-run `mosic prepare`"):
        PreparedFrames(prepared_dir, videos(), {**EXPECT, "frame_stride": 6})
    with pytest.raises(StalePreparedError, match=r"start_step=2 but this run uses start_step=3"):
        PreparedFrames(prepared_dir, videos(), {**EXPECT, "start_step": 3})
    other = PreparedSettings(**{**SETTINGS.__dict__, "short_side": 24})
    with pytest.raises(StalePreparedError, match="short_side: folder 36 vs 24"):
        prepare_frames(videos(), prepared_dir, other)


def test_corrupt_or_truncated_files_are_rejected(prepared_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(prepared_dir, copy)
    file = copy / "frames" / "000001.npy"
    good = file.read_bytes()
    file.write_bytes(good[:-100])  # truncated
    with pytest.raises(StalePreparedError, match=r"000001.npy \(frames of 'synthetic/seed0/00001'\) has .* bytes.*truncated"):
        PreparedFrames(copy, videos(), EXPECT)
    file.write_bytes(b"\x00" * len(good))  # same size, no header
    with pytest.raises(StalePreparedError, match="no valid .npy header"):
        PreparedFrames(copy, videos(), EXPECT)
    flipped = bytearray(good)
    flipped[-5] ^= 0xFF  # one pixel: the size and header checks pass, the checksum does not
    file.write_bytes(bytes(flipped))
    PreparedFrames(copy, videos(), EXPECT)
    with pytest.raises(StalePreparedError, match="sha256"):
        PreparedFrames(copy, videos(), EXPECT, verify="sha256")
    redone = []
    prepare_frames(videos(), copy, SETTINGS, on_video=lambda i, name: redone.append(i))
    assert redone == [1] and file.read_bytes() == good  # the re-run repairs it
    (copy / "frames" / "000002.npy").unlink()
    with pytest.raises(StalePreparedError, match="is missing"):
        PreparedFrames(copy, videos(), EXPECT)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["videos"][0]["file"] = "../../outside.npy"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StalePreparedError, match="outside the folder"):
        PreparedFrames(copy, videos(), EXPECT)
    (copy / "manifest.json").write_text(json.dumps({**manifest, "complete": False, "videos": []}))
    with pytest.raises(StalePreparedError, match="incomplete"):
        PreparedFrames(copy, videos(), EXPECT)


def test_fit_reads_prepared_frames_and_fails_early_when_stale(prepared_dir, cache_dir):
    config = tiny_config(
        **{"data.prepared": str(prepared_dir), "data.num_frames": 4, "data.frame_stride": 2, "data.size": 32,
           "data.global_batch_size": 3, "train.max_steps": 2}
    )  # fmt: skip
    with pytest.warns(UserWarning, match=r"shorter side of 36 px; data.size=32 .* wants 51 px"):
        trainer = mosic.PostPretrainer(config=config).fit(videos())
    assert trainer.step == 2 and all(np.isfinite(r["loss"]) for r in trainer.history)
    cached = config.with_overrides({"tracker.cache": str(cache_dir), "data.size": 16})  # 16 px wants 26: no warning
    assert mosic.PostPretrainer(config=cached).fit(videos()).step == 2
    with pytest.raises(StalePreparedError, match=r"data.prepared: .*frame_stride=2 but this run uses frame_stride=3"):
        mosic.PostPretrainer(config=config.with_overrides({"data.frame_stride": 3})).fit(videos())
    with pytest.raises(StalePreparedError, match="data.prepared: .*changed since"):
        mosic.PostPretrainer(config=config).fit(Edited(videos()))


def test_prepare_and_fit_commands(tmp_path, capsys):
    from mosic.cli import main

    spec = "synthetic:num_videos=3,num_frames=12,size=48"
    out = tmp_path / "prepared"
    args = ["prepare", spec, "--out", str(out), "--short-side", "48", "--no-progress", "data.num_frames=4", "data.frame_stride=2"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"train with: data.prepared={out}" in printed and "3 decoded, 0 already prepared" in printed
    assert main(args) == 0
    assert "0 decoded, 3 already prepared" in capsys.readouterr().out
    prepared = PreparedFrames(out, SyntheticVideos.from_spec(spec), EXPECT)
    assert prepared.settings.short_side == 48 and prepared.videos[0]["shape"] == [6, 48, 48, 3]
    config = tmp_path / "run.yaml"
    tiny_config(**{"data.global_batch_size": 3, "train.max_steps": 1}).save(config)
    assert main(["fit", "--config", str(config), "--videos", spec, f"data.prepared={out}"]) == 0
    assert "done: 1 steps" in capsys.readouterr().out
    assert main(["fit", "--config", str(config), "--videos", spec, f"data.prepared={out}", "data.num_frames=3"]) == 2
    assert "re-run `mosic prepare`" in capsys.readouterr().err
