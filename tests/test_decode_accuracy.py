"""Every decoder mosic picks returns the frame it is asked for, and tracks belong to the frames
trained on: checked on the decode-accuracy corpus (mosic.data.stamped), whose frames show
their own index.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mosic.data.readers import VideoFileSource, VideoReadError, available_backends, make_backend
from mosic.data.stamped import (
    CORPUS,
    audit_backend,
    read_stamp,
    read_stamps,
    reference_stamps,
    stamped_frame,
    write_decode_corpus,
)

pytestmark = pytest.mark.filterwarnings("ignore::mosic.data.readers.InexactDecoderWarning")
USABLE = available_backends()
EXACT = [
    "pyav",
    pytest.param("torchcodec", marks=pytest.mark.skipif("torchcodec" not in USABLE, reason="torchcodec or FFmpeg's libraries missing")),
]  # fmt: skip
HELPER = Path(__file__).parent / "helpers" / "stamp_runs.py"
ROOT = Path(__file__).resolve().parents[1]


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


def _run(*args, timeout=600):
    result = subprocess.run(
        [sys.executable, str(HELPER), *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{args[0]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def _check_clips(record, references, cached):
    assert record["steps"] == 2 and len(record["clips"]) == 6
    for clip in record["clips"]:
        reference = references[Path(clip["video"]).name]
        expected = [reference[k] for k in clip["frame_indices"]]
        assert clip["stamps"] == expected, clip  # the step got exactly the frames it was told it got
        if cached:
            # every point's cached track carries the stamp of the frame it was tracked on
            assert all(set(row) == {stamp} for row, stamp in zip(clip["track_stamps"], expected)), clip


@pytest.mark.slow
def test_track_then_fit_in_new_processes_loads_and_tracks_belong_to_the_frames(tmp_path):
    videos = tmp_path / "videos"
    files = write_decode_corpus(videos, num_frames=120, size=(96, 96))  # square: crop (1, 1) is the whole frame
    references = {p.name: reference_stamps(p) for p in files.values()}
    cache = tmp_path / "cache"
    _run("track", videos, cache, "pyav")
    manifest = json.loads((cache / "manifest.json").read_text())
    assert {v["decoder"] for v in manifest["videos"]} == {"pyav"}
    for backend in USABLE:  # the cache was built with PyAV; every exact backend trains from it
        if backend == "decord":
            continue
        for seed in (0, 1, 2):
            out = tmp_path / f"{backend}-{seed}.json"
            _run("fit", videos, cache, backend, seed, out)
            _check_clips(json.loads(out.read_text()), references, cached=True)
    out = tmp_path / "in-step.json"
    _run("fit", videos, "none", "pyav", 0, out)  # tracking inside the step
    _check_clips(json.loads(out.read_text()), references, cached=False)


# ----------------------------------------------------------------------------- hangs


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
