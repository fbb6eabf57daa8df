"""Every decoder mosic picks returns the frame it is asked for: checked on the decode-accuracy
corpus (mosic.data.stamped), whose frames show their own index. Tracks belonging to the frames
trained on, across processes: tests/system/test_decode_accuracy.py; the decode watchdog:
tests/data/test_watchdog.py.
"""

import numpy as np
import pytest
import torch

from mosic.data.decoders import available_backends, make_backend
from mosic.data.stamped import (
    CORPUS,
    audit_backend,
    read_stamp,
    reference_stamps,
    stamped_frame,
    write_decode_corpus,
)
from mosic.data.video_files import VideoFileSource

pytestmark = pytest.mark.filterwarnings("ignore::mosic.data.decoders.InexactDecoderWarning")
USABLE = available_backends()
EXACT = [
    "pyav",
    pytest.param("torchcodec", marks=pytest.mark.skipif("torchcodec" not in USABLE, reason="torchcodec or FFmpeg's libraries missing")),
]  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("decode-corpus")
    files = write_decode_corpus(folder, num_frames=240)
    return {name: (path, reference_stamps(path)) for name, path in files.items()}


def test_stamps_survive_compression_and_resizing():
    for k in (0, 1, 5, 517, 1023):
        frame = stamped_frame(k, 96, 160)
        assert read_stamp(frame) == k
        resized = torch.nn.functional.interpolate(
            torch.from_numpy(frame).permute(2, 0, 1)[None].float(), size=(48, 48), mode="bilinear", antialias=True
        )[0]
        assert read_stamp(resized.round().byte().numpy()) == k  # (3, H, W) works too
    assert read_stamp(np.full((96, 160, 3), 128, np.uint8)) == -1  # no stamp: unreadable, not 0
    with pytest.raises(ValueError, match="index"):
        stamped_frame(1024)


def test_the_corpus_is_what_it_claims(corpus):
    import av

    for name, (path, reference) in corpus.items():
        assert -1 not in reference, name
        if name == "h264-undecodable-start":
            assert reference == list(range(30, 240))  # frames 0..29 cannot decode: their references are cut
        else:
            assert reference == list(range(240)), name
    with av.open(str(corpus["avi-overreported"][0])) as container:
        assert container.streams.video[0].frames == 480  # the header says twice what the file holds
    with av.open(str(corpus["h264-bframes-long-gop"][0])) as container:
        packets = [p for p in container.demux(container.streams.video[0]) if p.size]
        assert sum(p.is_keyframe for p in packets) == 2  # 120-frame GOPs
        assert any(p.pts != p.dts for p in packets)  # B-frames: decode order is not presentation order


@pytest.mark.parametrize("backend", EXACT)
@pytest.mark.parametrize("name", list(CORPUS))
def test_backend_is_exact_on_the_corpus(corpus, name, backend):
    path, reference = corpus[name]
    result = audit_backend(path, backend, clips=24, seed=1, reference=reference)
    assert result["count"] == len(reference)  # the frames that really decode, not the header's count
    assert result["wrong"] == [], result["wrong"][:5]


def test_auto_is_exact_and_decord_is_not(corpus):
    assert make_backend("auto").name == "pyav"
    if "decord" not in USABLE:
        pytest.skip("decord is not installed")
    # what the docs say decord gets wrong; if a decord release fixes it, this test says so
    for name in ("h264-open-gop", "mpeg4-avi", "h264-undecodable-start"):
        path, reference = corpus[name]
        assert audit_backend(path, "decord", clips=24, seed=1, reference=reference)["wrong"], name


def test_fingerprint_depends_on_the_file_not_on_decode_history(corpus, tmp_path):
    from mosic.trackers.cache import video_fingerprint

    path, _ = corpus["h264-open-gop"]
    fresh = {b: video_fingerprint(VideoFileSource([path], backend=b), 0) for b in USABLE}
    used = VideoFileSource([path], backend="pyav")
    used.read_frames(0, [200, 3, 117, 239])  # decode history must not matter
    assert set(fresh.values()) == {video_fingerprint(used, 0)}
    changed = tmp_path / "changed" / path.name  # same name, other content: must not match
    changed.parent.mkdir()
    changed.write_bytes(corpus["h264-bframes-long-gop"][0].read_bytes())
    same = tmp_path / "same" / path.name
    same.parent.mkdir()
    same.write_bytes(path.read_bytes())
    assert VideoFileSource([same]).content_fingerprint(0) == VideoFileSource([path]).content_fingerprint(0)
    assert VideoFileSource([changed]).content_fingerprint(0) != VideoFileSource([same]).content_fingerprint(0)
