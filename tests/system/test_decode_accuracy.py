"""Tracks belong to the frames trained on, across processes: ``mosic track`` then ``mosic fit``
run as separate processes (tests/helpers/stamp_runs.py) on the decode-accuracy corpus
(mosic.data.stamped), whose frames show their own index."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mosic.data.decoders import available_backends
from mosic.data.stamped import reference_stamps, write_decode_corpus

pytestmark = pytest.mark.filterwarnings("ignore::mosic.data.decoders.InexactDecoderWarning")
USABLE = available_backends()


HELPER = Path(__file__).resolve().parents[1] / "helpers" / "stamp_runs.py"


ROOT = Path(__file__).resolve().parents[2]


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
