"""Broken and awkward video inputs: every case decodes right or raises a VideoReadError that
says why (mosic.data.diagnosis, through the decoders and sources). Skipping bad videos during
training is tested in tests/data/test_clips.py.

The corpus (tests/helpers/bad_videos.py) is written into a temporary folder once per module.
"""

import pickle
import re
import shutil

import numpy as np
import pytest

from helpers.bad_videos import CASE_BY_NAME, CASES, IS_ROOT, write_corpus
from mosic.data.decoders import available_backends
from mosic.data.video_files import FrameFolderSource, VideoFileSource
from mosic.errors import VideoReadError

try:
    import decord  # noqa: F401

    HAS_DECORD = True
except ImportError:
    HAS_DECORD = False
HAS_TORCHCODEC = "torchcodec" in available_backends()
pytestmark = pytest.mark.filterwarnings("ignore::mosic.data.decoders.InexactDecoderWarning")

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
    from mosic.data.decoders import PyAVBackend, TorchCodecBackend, available_backends

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
    from mosic.data.decoders import available_backends

    for backend in available_backends():
        assert VideoFileSource([corpus["good.mp4"]], backend=backend).verify(0) == 24
        with pytest.raises(VideoReadError, match="truncated or corrupt"):
            VideoFileSource([corpus["corrupt.mp4"]], backend=backend).verify(0)
    assert FrameFolderSource([corpus["frames_odd"]]).verify(0) == 12
