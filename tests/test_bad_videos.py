"""Broken and awkward video inputs: every case decodes right or raises a VideoReadError that
says why; during training a bad video is skipped, warned about once, and replaced by another
video's clip, reproducibly.

The corpus (tests/bad_videos.py) is written into a temporary folder once per module.
"""

import pickle
import re
import shutil
import warnings

import numpy as np
import pytest
import torch
from bad_videos import CASE_BY_NAME, CASES, IS_ROOT, write_corpus

from mosic.data.clips import BadVideoWarning, ClipDataset, NoUsableVideosError, collate_clips
from mosic.data.readers import FrameFolderSource, VideoFileSource, VideoReadError, available_backends, open_videos

try:
    import decord  # noqa: F401

    HAS_DECORD = True
except ImportError:
    HAS_DECORD = False
HAS_TORCHCODEC = "torchcodec" in available_backends()
pytestmark = pytest.mark.filterwarnings("ignore::mosic.data.readers.InexactDecoderWarning")

NOISE = re.compile(r"Traceback|Check failed|\[Errno|\.cc:\d|avcodec_|0x[0-9a-f]{6}")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def _params():
    for case in CASES:
        backends = ["pyav", "torchcodec", "decord", "auto"] if case.kind == "file" else ["frames"]
        for backend in backends:
            marks = []
            if backend == "decord" and not HAS_DECORD:
                marks.append(pytest.mark.skip(reason="decord is not installed"))
            if backend == "torchcodec" and not HAS_TORCHCODEC:
                marks.append(pytest.mark.skip(reason="torchcodec or FFmpeg's shared libraries are missing"))
            if case.name == "frames_unreadable" and IS_ROOT:
                marks.append(pytest.mark.skip(reason="running as root: chmod 000 does not stop reads "
                                                     "(frames_corrupt covers unreadable frames)"))
            yield pytest.param(case.name, backend, id=f"{case.name}-{backend}", marks=marks)


def _source(path, backend):
    return FrameFolderSource([path]) if backend == "frames" else VideoFileSource([path], backend=backend)


def _read_all(source, case):
    count = source.num_frames(0)
    ks = [0, count - 1] if case.size[0] > 1000 else list(range(count))  # the 4K video: two frames
    return count, ks, source.read_frames(0, ks)


@pytest.mark.parametrize("name, backend", list(_params()))
def test_every_case_decodes_or_says_why(corpus, name, backend):
    case = CASE_BY_NAME[name]
    source = _source(corpus[name], backend)
    if case.expect == "error":
        with pytest.raises(VideoReadError) as info:
            _read_all(source, case)
        error = info.value
        pattern = case.decord_reason if backend == "decord" and case.decord_reason else case.reason
        assert re.search(pattern, error.reason), error.reason
        assert not NOISE.search(error.reason), f"raw decoder noise in {error.reason!r}"
        assert "\n" not in error.reason and "corrupt" in str(error)
        assert pickle.loads(pickle.dumps(error)).reason == error.reason
        return
    try:
        count, ks, frames = _read_all(source, case)
    except VideoReadError as error:  # some decord builds refuse exotic pixel formats, and say so
        if backend == "decord" and case.decord_may_fail:
            pytest.skip(f"decord cannot read {name}: {error.reason}")
        raise
    width, height = case.size
    assert count == case.frames
    assert frames.shape == (len(ks), height, width, 3) and frames.dtype == np.uint8
    if width > 1000:
        frames = frames[:, ::16, ::16]  # the 4K video: compare a subsample
    expected = np.stack([case.expected_rgb(k) for k in ks]).astype(int)  # (T, 3)
    error = np.abs(frames.astype(int) - expected[:, None, None]).max(axis=(1, 2, 3))
    assert (error <= case.tolerance).all(), f"frames {ks} of {name} are off by {error.tolist()}"
    if case.expected_rgb.__name__ == "_rgb_of_gray":  # gray -> three equal channels
        assert (frames[..., 0] == frames[..., 1]).all() and (frames[..., 1] == frames[..., 2]).all()


def test_conversions_are_exact_where_lossless(corpus):
    """16-bit frames are scaled (65535 -> 255), not clipped; alpha is dropped, not blended."""
    gray16 = FrameFolderSource([corpus["frames_gray16"]]).read_frames(0, [0, 11])
    assert gray16[0].min() == gray16[0].max() == 20 and gray16[1].max() == 20 + 9 * 11
    rgba = FrameFolderSource([corpus["frames_rgba"]]).read_frames(0, [3])
    assert rgba[0, 0, 0].tolist() == [10 + 27, 40 + 21, 230 - 24]


def test_variable_frame_rate_reads_by_decode_order(corpus):
    for backend in ["pyav"] + (["decord"] if HAS_DECORD else []):
        source = VideoFileSource([corpus["vfr.mp4"]], backend=backend)
        ks = [17, 3, 4, 23, 0]
        means = source.read_frames(0, ks).reshape(len(ks), -1, 3).mean(axis=1)
        palette = np.stack([CASE_BY_NAME["vfr.mp4"].expected_rgb(k) for k in range(24)]).astype(float)
        assert np.linalg.norm(means[:, None] - palette[None], axis=-1).argmin(axis=1).tolist() == ks


def test_unreadable_frame_folder_listing_and_deleted_files(corpus, tmp_path):
    folder = tmp_path / "gone"
    shutil.copytree(corpus["frames_gray"], folder)
    video = tmp_path / "gone.mp4"
    shutil.copy(corpus["good.mp4"], video)
    frames, files = FrameFolderSource([folder]), VideoFileSource([video], backend="pyav")
    shutil.rmtree(folder)
    video.unlink()
    with pytest.raises(VideoReadError, match="cannot be listed"):
        frames.num_frames(0)
    with pytest.raises(VideoReadError) as info:
        files.num_frames(0)
    assert info.value.reason == "the file does not exist (any more)"


def test_permission_denied_is_reported_as_such(corpus, monkeypatch):
    """What a non-root user gets for a chmod 000 frame (root reads it anyway)."""
    import PIL.Image

    def denied(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(PIL.Image, "open", denied)
    with pytest.raises(VideoReadError) as info:
        FrameFolderSource([corpus["frames_gray"]]).read_frames(0, [2])
    assert info.value.reason == "frame 00002.png cannot be read (permission denied)"


def test_torchcodec_falls_back_to_pyav_when_it_fails(corpus, monkeypatch):
    from mosic.data.readers import PyAVBackend, TorchCodecBackend, available_backends

    if "torchcodec" not in available_backends():
        pytest.skip("torchcodec or FFmpeg's shared libraries are missing")

    def broken(self, path):
        raise VideoReadError(path, "truncated or corrupt: torchcodec failed")

    monkeypatch.setattr(TorchCodecBackend, "_decoder", broken)
    source = VideoFileSource([corpus["good.mp4"]], backend="torchcodec")
    assert source.num_frames(0) == 24 and source.read_frames(0, [5]).shape == (1, 48, 64, 3)
    monkeypatch.setattr(PyAVBackend, "read", lambda self, path, indices: (_ for _ in ()).throw(VideoReadError(path, "pyav too")))
    with pytest.raises(VideoReadError, match="pyav too"):
        VideoFileSource([corpus["good.mp4"]], backend="torchcodec").read_frames(0, [5])


def test_verify_decodes_every_frame(corpus):
    from mosic.data.readers import available_backends

    for backend in available_backends():
        assert VideoFileSource([corpus["good.mp4"]], backend=backend).verify(0) == 24
        with pytest.raises(VideoReadError, match="truncated or corrupt"):
            VideoFileSource([corpus["corrupt.mp4"]], backend=backend).verify(0)
    assert FrameFolderSource([corpus["frames_odd"]]).verify(0) == 12


# ----------------------------------------------------------------------------- training-time skipping


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
