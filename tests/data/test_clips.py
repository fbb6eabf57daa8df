"""Training clips (mosic.data.clips): frame indices, views, determinism, and bad videos skipped."""

import re
import shutil
import warnings

import numpy as np
import pytest
import torch

from helpers.bad_videos import write_corpus
from mosic.data import ClipDataset, ClipTooShortError
from mosic.data.clips import BadVideoWarning, NoUsableVideosError, clip_frame_indices, collate_clips
from mosic.data.video_files import open_videos
from mosic.errors import VideoReadError


def test_clip_frame_indices_shrink_the_stride_for_short_videos():
    rng = np.random.default_rng(0)
    first = clip_frame_indices(100, 4, 6, rng)
    assert np.diff(first).tolist() == [6, 6, 6] and 0 <= first[0] <= 100 - 19
    assert clip_frame_indices(7, 4, 6, rng) == [0, 2, 4, 6]
    with pytest.raises(ClipTooShortError, match="has 3 frames but a clip needs 4"):
        clip_frame_indices(3, 4, 6, rng, "tiny.mp4")


def test_clip_dataset_is_deterministic_per_epoch_and_index(synthetic):
    ds = ClipDataset(synthetic, num_frames=4, frame_stride=2, size=32)
    a, b, c = ds[(0, 3)], ds[(0, 3)], ds[(1, 3)]
    assert torch.equal(a["frames"], b["frames"])
    assert (a["meta"].frame_indices, a["meta"].transform) == (b["meta"].frame_indices, b["meta"].transform)
    assert a["meta"].sample_seed != c["meta"].sample_seed
    assert a["frames"].shape == (4, 3, 32, 32) and a["frames"].dtype == torch.uint8


# ---- bad videos at training time: skipped, warned about once, replaced by another video's clip, reproducibly (corpus: tests/helpers/bad_videos.py)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def _mixed_dataset(corpus, tmp_path, **kwargs):
    """[empty, good, good, good, corrupt]: a video that never opens, one that fails to decode."""
    paths = [corpus["empty.mp4"]]
    for k in range(3):
        paths.append(tmp_path / f"good{k}.mp4")
        shutil.copy(corpus["good.mp4"], paths[-1])
    paths.append(corpus["corrupt.mp4"])
    source = open_videos(paths, backend="pyav")
    return ClipDataset(source, num_frames=4, frame_stride=2, size=16, seed=3, **kwargs), [str(p) for p in paths]


def test_bad_videos_are_replaced_by_the_next_good_one(corpus, tmp_path):
    dataset, names = _mixed_dataset(corpus, tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        epochs = [[dataset[(epoch, i)] for i in range(5)] for epoch in range(2)]
    for samples in epochs:
        assert [s["meta"].index for s in samples] == [1, 1, 2, 3, 1]  # 0 -> 1; 4 -> (0) -> 1
        assert [s["meta"].video for s in samples] == [names[i] for i in (1, 1, 2, 3, 1)]
        assert [len(s["skipped"]) for s in samples] == [1, 0, 0, 0, 2]
        assert samples[0]["skipped"] == [(names[0], "empty file (0 bytes)")]
        corrupt, empty = samples[4]["skipped"]
        assert corrupt[0] == names[4] and corrupt[1].startswith("truncated or corrupt: decoding stopped")
        assert empty == samples[0]["skipped"][0]
        assert all(s["frames"].shape == (4, 3, 16, 16) for s in samples)
        # a substitute is a fresh clip, not a copy of the good video's own sample
        assert samples[0]["meta"].sample_seed != samples[1]["meta"].sample_seed
    bad = [w for w in caught if issubclass(w.category, BadVideoWarning)]
    assert len(bad) == 2, [str(w.message) for w in bad]  # one per bad file, over both epochs
    assert names[0] in str(bad[0].message) and "empty file" in str(bad[0].message)
    assert names[4] in str(bad[1].message) and "check-data" in str(bad[1].message)
    assert all("\n" not in str(w.message) for w in bad)
    assert dataset._unusable == {0: "empty file (0 bytes)"}  # the corrupt one: other clips may read

    batch = collate_clips(epochs[0])
    assert batch["frames"].shape == (5, 4, 3, 16, 16)
    assert batch["skipped"] == epochs[0][0]["skipped"] + epochs[0][4]["skipped"]


def _keys():
    return [(epoch, i) for epoch in range(2) for i in (4, 0, 2, 3, 1)]


def _load(dataset, workers):
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=2, sampler=_keys(), num_workers=workers, collate_fn=collate_clips,
        multiprocessing_context="fork" if workers else None,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadVideoWarning)
        return list(loader)


def test_skipping_is_deterministic_across_instances_and_workers(corpus, tmp_path):
    a, _ = _mixed_dataset(corpus, tmp_path)
    b, _ = _mixed_dataset(corpus, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadVideoWarning)
        for key in _keys():
            x, y = a[key], b[key]
            assert torch.equal(x["frames"], y["frames"]) and x["skipped"] == y["skipped"]
            assert (x["meta"].index, x["meta"].frame_indices, x["meta"].transform) == (
                y["meta"].index, y["meta"].frame_indices, y["meta"].transform)
    single = _load(a, 0)
    if "fork" not in torch.multiprocessing.get_all_start_methods():
        pytest.skip("no fork: spawned workers are too slow for this test")
    parallel = _load(b, 2)
    assert len(single) == len(parallel) == 5
    for x, y in zip(single, parallel):
        assert torch.equal(x["frames"], y["frames"]) and x["skipped"] == y["skipped"]
        assert [m.index for m in x["meta"]] == [m.index for m in y["meta"]]


def test_skipping_can_be_turned_off(corpus, tmp_path):
    dataset, names = _mixed_dataset(corpus, tmp_path, skip_bad_videos=False)
    assert dataset[(0, 1)]["skipped"] == []
    with pytest.raises(VideoReadError, match="empty file"):
        dataset[(0, 0)]


def test_too_short_videos_are_skipped(corpus):
    source = open_videos([corpus["one_frame.mp4"], corpus["short.mp4"], corpus["good.mp4"]], backend="pyav")
    dataset = ClipDataset(source, num_frames=8, frame_stride=4, size=16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sample = dataset[(0, 0)]
    assert [str(w.message).split(";")[0] for w in caught] == [
        f"skipping video {corpus['one_frame.mp4']}: too short: 1 frame, a clip needs 8",
        f"skipping video {corpus['short.mp4']}: too short: 5 frames, a clip needs 8",
    ]
    assert sample["meta"].index == 2
    assert [reason for _, reason in sample["skipped"]] == [
        "too short: 1 frame, a clip needs 8", "too short: 5 frames, a clip needs 8"]


def test_a_dataset_of_bad_videos_stops_with_a_clear_error(corpus):
    paths = [corpus[n] for n in ("text.mp4", "short.mp4", "truncated.mp4", "frames_corrupt")]
    dataset = ClipDataset(open_videos(paths, backend="pyav"), num_frames=8, frame_stride=2, size=16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(NoUsableVideosError) as info:
            dataset[(0, 1)]
    message = str(info.value)
    assert "none of the 4 videos" in message and "mosic check-data" in message
    assert "short.mp4: too short: 5 frames" in message and "text.mp4: not a video file" in message
    assert re.search(r"frames_corrupt: frame 0000[06]\.jpg is (truncated or corrupt|not a readable image)", message)
    assert len([w for w in caught if issubclass(w.category, BadVideoWarning)]) == 4
    assert isinstance(info.value, RuntimeError)
    if "fork" in torch.multiprocessing.get_all_start_methods():  # the trainer sees the same type
        with pytest.raises(NoUsableVideosError, match="none of the 4 videos"):
            _load(dataset, 1)


def test_awkward_formats_make_training_clips(corpus):
    names = ["gray8.mkv", "gray16.mkv", "rgba_png.mov", "rgb48_png.mov", "odd_33x17.mkv", "vfr.mp4",
             "huge_4096x2160.mp4", "frames_gray16", "frames_rgba", "frames_odd", "frames_cmyk"]
    source = open_videos([corpus[n] for n in names], backend="pyav")
    dataset = ClipDataset(source, num_frames=3, frame_stride=2, size=24)
    with warnings.catch_warnings():
        warnings.simplefilter("error", BadVideoWarning)
        batch = collate_clips([dataset[(0, i)] for i in range(len(names))])
    assert batch["frames"].shape == (len(names), 3, 3, 24, 24) and batch["skipped"] == []
    assert [m.index for m in batch["meta"]] == list(range(len(names)))
