"""The decode watchdog (mosic.data.watchdog): a decoder stuck in native code is abandoned and
training goes on; decoding in a watchdog child stays exact (the decode-accuracy corpus of
mosic.data.stamped)."""

import time

import numpy as np
import pytest
import torch

from mosic.data.decoders import make_backend
from mosic.data.stamped import read_stamps, reference_stamps, write_decode_corpus
from mosic.data.video_files import VideoFileSource
from mosic.errors import VideoReadError

pytestmark = pytest.mark.filterwarnings("ignore::mosic.data.decoders.InexactDecoderWarning")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("decode-corpus")
    files = write_decode_corpus(folder, num_frames=240)
    return {name: (path, reference_stamps(path)) for name, path in files.items()}


class HangingBackend:
    """A decoder stuck in native code: ``sleep`` called through ctypes.PyDLL keeps the GIL, so
    neither signals nor Python threads can interrupt it."""

    name = "hanging"

    def __init__(self, hang_on: str):
        self.hang_on = hang_on
        self.pyav = make_backend("pyav")

    def probe(self, path):
        return self.pyav.probe(path)

    def read(self, path, indices):
        if path.endswith(self.hang_on):
            import ctypes

            ctypes.PyDLL(None).sleep(3600)
        return self.pyav.read(path, indices)


def test_watchdog_abandons_a_hung_decoder_and_goes_on(corpus):
    from mosic.data.watchdog import DecodeTimeoutError, DecodeWatchdog

    good, _ = corpus["h264-vfr"]
    hung, _ = corpus["mpeg4-avi"]
    watchdog = DecodeWatchdog(HangingBackend(hang_on=hung.name), timeout=3)
    assert read_stamps(watchdog.call("read", str(good), np.array([4, 9]))) == [4, 9]
    child = watchdog._child
    started = time.monotonic()
    with pytest.raises(DecodeTimeoutError, match="did not finish within 3 s"):
        watchdog.call("read", str(hung), np.array([1]))
    assert time.monotonic() - started < 20
    assert child.poll() is not None  # the hung process was killed
    assert read_stamps(watchdog.call("read", str(good), np.array([7]))) == [7]  # a new child took over
    with pytest.raises(VideoReadError, match="out of range|requested"):  # the child's errors come back
        watchdog.call("read", str(good), np.array([10_000]))
    watchdog.close()


def test_training_skips_a_video_whose_decoder_hangs(corpus, tmp_path):
    import warnings

    from mosic.data.clips import BadVideoWarning, ClipDataset

    good, reference = corpus["h264-vfr"]
    hung, _ = corpus["mpeg4-avi"]
    source = VideoFileSource([hung, good], backend="pyav", decode_timeout=3)
    source.backend = HangingBackend(hang_on=hung.name)  # the watchdog runs this decoder
    source._watchdog.backend = source.backend
    dataset = ClipDataset(source, num_frames=4, frame_stride=3, size=32, crop_scale=(1, 1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sample = dataset[(0, 0)]
    assert sample["meta"].video == str(good)
    assert [name for name, _ in sample["skipped"]] == [str(hung)]
    assert "did not finish within 3 s" in sample["skipped"][0][1]
    assert any(issubclass(w.category, BadVideoWarning) and "hung" in str(w.message) for w in caught)


def test_watchdog_decodes_exact_frames_in_dataloader_workers(corpus):
    from mosic.data.clips import ClipDataset, collate_clips

    paths = [corpus[name][0] for name in ("h264-open-gop", "mpeg4-avi", "h264-undecodable-start")]
    references = {str(corpus[name][0]): corpus[name][1] for name in ("h264-open-gop", "mpeg4-avi", "h264-undecodable-start")}
    source = VideoFileSource(paths, decode_timeout=30)
    source.num_frames(0)  # the main process has a decoder child too: each worker must start its own
    dataset = ClipDataset(source, num_frames=4, frame_stride=7, size=(96, 160), crop_scale=(1, 1))
    loader = torch.utils.data.DataLoader(
        [(epoch, i) for epoch in range(3) for i in range(3)], batch_size=3, num_workers=2,
        collate_fn=lambda keys: collate_clips([dataset[k] for k in keys]),
    )  # fmt: skip
    clips = 0
    for batch in loader:
        for frames, meta in zip(batch["frames"], batch["meta"]):
            assert read_stamps(frames.numpy()) == [references[meta.video][k] for k in meta.frame_indices]
            clips += 1
    assert clips == 9
