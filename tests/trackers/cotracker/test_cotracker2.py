"""CoTracker2 (mosic.trackers.cotracker.cotracker2): official state-dict format, equivalence
with the official online predictor, and the tracker plumbing.

Golden outputs (tests/fixtures/cotracker2_golden.pt) come from the official
facebookresearch/co-tracker code at 82e02e8 (``CoTrackerOnlinePredictor(v2=True,
window_len=8)`` driven over the video as ``online_demo.py`` drives it), run once outside
this repository in float32 with the weights of :func:`seeded_state` (a recipe that needs
no reference code) at a small model resolution (96x128 instead of 384x512: on 2 CPU cores
the CNN alone takes ~1.8 s per frame at 384x512; the architecture does not depend on the
resolution, only the ``pos_emb`` table does, and the model computes it). The video is 14
frames of 50x70 (three windows, the last one padded), with queries on frames 0 to 13.
tests/fixtures/cotracker2_state_dict_shapes.json lists the keys and shapes of the official
``CoTracker2(window_len=8)`` state dict (the format of ``cotracker2.pth``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import mosic
from mosic.trackers.cotracker import CoTrackerWeightsUnavailable
from mosic.trackers.cotracker.cotracker2 import CoTracker2, CoTracker2Tracker

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
SMALL = (96, 128)  # model resolution of the golden test
PLUMB = (64, 96)  # model resolution of the plumbing tests
TOL_XY = 1e-3  # px of the input video; measured 1.2e-5 against the official code
TOL_VIS = 1e-4  # visibility probability; measured < 2e-6


def seeded_state(shapes: dict[str, list[int]], seed: int, flow_head_gain: float = 0.05) -> dict[str, torch.Tensor]:
    """Deterministic CoTracker2 weights for golden tests, without the reference code.

    Over the keys in sorted order (the fixed sin/cos buffers ``time_emb`` and ``pos_emb``
    skipped: the model computes them), one stream of numpy PCG64(seed) doubles u in
    [-1, 1), z = u * sqrt(3) (std 1), in C order per tensor: virtual tracks z; matrices and
    convolutions z / sqrt(fan_in) (times ``flow_head_gain`` for ``flow_head``);
    ``norm.weight`` and ``norm_context.weight`` 1 + 0.1 z; other vectors (biases) 0.05 z.
    The sin/cos flow-embedding columns 2..129 of ``updateformer.input_transform.weight``
    (frequency 31.25 k rad per feature pixel, k = ((c - 2) mod 64) // 2) are divided by
    max(31.25 k, 1): undamped, random weights make the model chaotic (a 1e-3 change of
    the input moved tracks by pixels), damped they keep it well conditioned. Float32.
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    out = {}
    for name in sorted(shapes):
        if name in ("time_emb", "pos_emb"):
            continue
        shape = tuple(shapes[name])
        z = (rng.random(math.prod(shape)) * 2.0 - 1.0).reshape(shape) * math.sqrt(3.0)
        if name.endswith("virual_tracks"):
            v = z
        elif len(shape) == 1:
            v = 1.0 + 0.1 * z if name == "norm.weight" or name.endswith("norm_context.weight") else 0.05 * z
        else:
            gain = flow_head_gain if "flow_head" in name else 1.0
            v = z * (gain / math.sqrt(math.prod(shape[1:])))
            if name == "updateformer.input_transform.weight":
                k = (np.arange(128) % 64) // 2
                v[:, 2:130] /= np.maximum(31.25 * k, 1.0)
        out[name] = torch.from_numpy(np.ascontiguousarray(v)).float()
    return out


@pytest.fixture(scope="module")
def official() -> dict:
    return json.loads((FIXTURES / "cotracker2_state_dict_shapes.json").read_text())


@pytest.fixture(scope="module")
def golden() -> dict:
    return torch.load(FIXTURES / "cotracker2_golden.pt", weights_only=True)


@pytest.fixture(scope="module")
def seeded(official, golden) -> dict[str, torch.Tensor]:
    return seeded_state(official["shapes"], golden["seed"])


def make_tracker(seeded: dict[str, torch.Tensor], resolution=PLUMB, **kwargs) -> CoTracker2Tracker:
    tracker = CoTracker2Tracker(weights=False, device="cpu", model_resolution=resolution, **kwargs)
    own = tracker.model.state_dict()
    tracker.model.load_state_dict({**seeded, "time_emb": own["time_emb"], "pos_emb": own["pos_emb"]})
    return tracker


def official_like_state(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """A state dict with the official keys and shapes, tensor i filled with i / 1000.

    Each tensor is a stride-0 view of a one-element storage, so the file stays tiny.
    """
    return {k: torch.full((), i / 1000.0).expand(*shape) for i, (k, shape) in enumerate(shapes.items())}


# ----------------------------------------------------------------- state-dict format


def test_official_keys_and_shapes_load_strictly(official, tmp_path):
    model = CoTracker2()
    own = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert own == official["shapes"]  # same keys, same order, same shapes
    assert len(own) == official["num_tensors"] == 321
    assert sum(p.numel() for p in model.parameters()) == official["num_parameters"] == 45_458_787
    assert own["time_emb"] == [1, 8, 456] and own["pos_emb"] == [1, 456, 96, 128]

    path = tmp_path / "cotracker2.pth"
    torch.save({"model": official_like_state(official["shapes"])}, path)  # the official wrapper
    keys = list(official["shapes"])
    for resolution in [(384, 512), PLUMB]:
        tracker = CoTracker2Tracker(weights=path, device="cpu", model_resolution=resolution)
        state = tracker.model.state_dict()
        for key in ("updateformer.flow_head.weight", "fnet.conv1.weight", "vis_predictor.0.bias", "time_emb"):
            assert torch.all(state[key] == keys.index(key) / 1000.0), key
        if resolution == PLUMB:  # the file's 96x128 pos_emb replaced by the model's own table
            assert tuple(state["pos_emb"].shape) == (1, 456, 16, 24)
            assert torch.equal(state["pos_emb"], CoTracker2(model_resolution=PLUMB).pos_emb)


def test_wrong_or_missing_keys_are_listed(official, tmp_path):
    state = official_like_state(official["shapes"])
    del state["updateformer.flow_head.bias"]
    state["updateformer.flow_head.bias_typo"] = torch.zeros(130)
    state["vis_predictor.0.weight"] = torch.zeros(2, 128)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    for resolution in [(384, 512), PLUMB]:
        with pytest.raises(ValueError) as info:
            CoTracker2Tracker(weights=path, device="cpu", model_resolution=resolution)
        message = str(info.value)
        assert "missing keys: updateformer.flow_head.bias" in message
        assert "unexpected keys: updateformer.flow_head.bias_typo" in message
        assert "vis_predictor.0.weight: file (2, 128) vs model (1, 128)" in message
        assert "cotracker2.pth" in message


def test_offline_without_weights_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CoTrackerWeightsUnavailable) as info:
        mosic.create_tracker("cotracker2", model_resolution=PLUMB)
    message = str(info.value)
    assert "cotracker2.pth" in message and "huggingface.co/facebook/cotracker" in message
    assert "CC BY-NC 4.0" in message and "weights=" in message
    with pytest.raises(CoTrackerWeightsUnavailable):  # default resolution: the same error
        CoTracker2Tracker(device="cpu")


def test_embedding_tables_match_official(golden):
    model = CoTracker2()
    assert torch.allclose(model.time_emb, golden["time_emb_w8"], atol=1e-6)
    assert torch.allclose(model.pos_emb[0, ::19, ::15, ::17], golden["pos_emb_384x512_sub"], atol=1e-6)
    from mosic.trackers.cotracker.blocks import get_2d_embedding

    assert torch.allclose(get_2d_embedding(golden["flow_emb_in"], 64, True), golden["flow_emb_out"], atol=1e-6)


# ------------------------------------------------------------ official equivalence


def test_tracker_matches_official_online_predictor(golden, seeded):
    assert tuple(golden["model_resolution"]) == SMALL
    tracker = make_tracker(seeded, SMALL)
    captured = {}
    handle = tracker.model.register_forward_hook(lambda mod, inp, out: captured.update(vis=out[1]))
    video, queries = golden["video"], golden["queries"]
    tracks = tracker(video, queries)
    handle.remove()
    b, t, _, h, w = video.shape
    assert (h, w) != SMALL and tracks.xy.shape == (b, t, queries.shape[1], 2)
    # positions in input pixels, on every frame (also those before a query frame, where the
    # official online predictor reports the model's estimate as well)
    assert (tracks.xy - golden["xy"]).abs().max().item() < TOL_XY
    assert (captured["vis"] - golden["vis_prob"]).abs().max().item() < TOL_VIS
    started = torch.arange(t)[None, :, None] >= queries[:, None, :, 0].long()
    clear = (golden["vis_prob"] - golden["threshold"]).abs() > TOL_VIS
    assert torch.equal(tracks.visible[clear], (golden["visible"] & started)[clear])
    assert not tracks.visible[~started].any()  # invisible before the query frame
    assert 0.2 < tracks.visible[started].float().mean() < 0.8  # the golden case exercises both


# ------------------------------------------------------------------------- plumbing


def _plumbing_video(seed: int, t: int = 10, h: int = 40, w: int = 52) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, 12, 16, generator=gen)
    big = torch.nn.functional.interpolate(base, size=(h + 2 * t, w + 2 * t), mode="bilinear", align_corners=False)[0]
    frames = [
        big[:, i : i + h, 2 * i : 2 * i + w] if 2 * i + w <= big.shape[-1] else big[:, i : i + h, -w:] for i in range(t)
    ]
    return (torch.stack(frames) * 255).round().to(torch.uint8)


def test_batch_and_chunking_do_not_change_tracks(seeded):
    # 10 frames: two windows; the query on frame 9 is outside the first window (masked
    # cross-point attention) and inside the second (unmasked, chunked path)
    videos = torch.stack([_plumbing_video(0), _plumbing_video(1)])
    queries = torch.tensor(
        [
            [[0, 5.0, 6.0], [0, 30.2, 20.5], [2, 12.0, 33.0], [9, 40.0, 10.0], [5, 25.5, 25.5]],
            [[0, 8.0, 9.0], [9, 3.0, 30.5], [0, 45.0, 35.0], [3, 22.0, 2.0], [0, 50.5, 38.5]],
        ]
    )
    tracker = make_tracker(seeded, iters=1, max_points_per_chunk=None)
    joint = tracker(videos, queries)
    singles = [tracker(videos[i : i + 1], queries[i : i + 1]) for i in range(2)]
    tracker.max_points_per_chunk = 3  # 1 point per chunk and video
    chunked = tracker(videos, queries)
    for i, single in enumerate(singles):
        assert (joint.xy[i] - single.xy[0]).abs().max() < 1e-4
        assert torch.equal(joint.visible[i], single.visible[0])
    assert (joint.xy - chunked.xy).abs().max() < 1e-4
    assert torch.equal(joint.visible, chunked.visible)
    started = torch.arange(10)[None, :, None] >= queries[:, None, :, 0].long()
    assert not joint.visible[~started].any()


def test_outputs_are_in_input_pixels(seeded):
    # with a zero flow head the tracks stand still: the output is the query position,
    # mapped to 64x96 model pixels and back to the 45x70 input
    state = dict(seeded)
    state["updateformer.flow_head.weight"] = torch.zeros(130, 384)
    state["updateformer.flow_head.bias"] = torch.zeros(130)
    tracker = make_tracker(state, iters=1)
    video = _plumbing_video(2, t=3, h=45, w=70)[None]
    queries = torch.tensor([[[0, 0.0, 0.0], [1, 69.0, 44.0], [2, 33.3, 12.7], [0, 51.0, 2.5]]])
    tracks = tracker(video, queries)
    expected = queries[:, None, :, 1:].expand(1, 3, 4, 2)
    assert (tracks.xy - expected).abs().max() < 1e-4
    # and a track that moves by d model pixels moves by d (W - 1) / (W' - 1) input pixels
    state["updateformer.flow_head.bias"] = torch.zeros(130)
    state["updateformer.flow_head.bias"][0] = 0.25  # +0.25 feature px = +1 model px per iteration
    tracker = make_tracker(state, iters=1)
    tracks = tracker(video, queries[:, :1])
    assert torch.allclose(tracks.xy[0, :, 0, 0], torch.full((3,), 69 / 95), atol=1e-4)
    assert torch.allclose(tracks.xy[0, :, 0, 1], torch.zeros(3), atol=1e-4)


def test_bf16_autocast_stays_close_and_finite(seeded):
    # 14 frames: the point queried on frame 12 is masked out of the first windows' attention,
    # whose bias must stay finite in bf16 (a -inf row would give NaN)
    video = _plumbing_video(3, t=14)[None]
    queries = torch.tensor([[[0, 5.0, 6.0], [0, 30.2, 20.5], [12, 12.0, 33.0]]])
    fp32 = make_tracker(seeded, iters=1, precision="fp32")(video, queries)
    bf16_tracker = make_tracker(seeded, iters=1, precision="bf16")
    assert bf16_tracker.amp_dtype() == torch.bfloat16
    bf16 = bf16_tracker(video, queries)
    assert torch.isfinite(bf16.xy).all()
    assert (bf16.xy - fp32.xy).abs().max() < 0.5


def test_registry_options_and_short_videos(seeded):
    assert "cotracker2" in mosic.list_trackers()
    tracker = mosic.create_tracker("cotracker2", weights=False, device="cpu", model_resolution=PLUMB, iters=1)
    assert isinstance(tracker, CoTracker2Tracker) and tracker.name == "cotracker2"
    assert tracker.visibility_threshold == 0.6 and tracker.support_grid_size == 0 and not tracker.snap_queries
    video = _plumbing_video(4, t=3)[None]
    queries = torch.tensor([[[0, 5.0, 6.0], [2, 30.0, 20.0]]])
    tracks = tracker(video, queries)  # shorter than half a window: one padded window
    assert tracks.xy.shape == (1, 3, 2, 2) and torch.isfinite(tracks.xy).all()
    snap = make_tracker(seeded, iters=1, snap_queries=True, support_grid_size=3)
    tracks = snap(video, queries)
    assert torch.allclose(tracks.xy[0, 2, 1], queries[0, 1, 1:]) and tracks.visible[0, 2, 1]
    empty = tracker(video, torch.zeros(1, 0, 3))
    assert empty.xy.shape == (1, 3, 0, 2) and empty.visible.shape == (1, 3, 0)
    with pytest.raises(ValueError, match="query frames"):
        tracker(video, torch.tensor([[[3, 5.0, 6.0]]]))
    with pytest.raises(ValueError, match="precision"):
        CoTracker2Tracker(weights=False, model_resolution=PLUMB, precision="fp16")


def test_default_resolution_runs():
    tracker = CoTracker2Tracker(weights=False, device="cpu", iters=1)
    video = torch.randint(0, 256, (1, 2, 3, 30, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    tracks = tracker(video, torch.tensor([[[0, 10.0, 12.0], [1, 3.0, 29.0]]]))
    assert tracks.xy.shape == (1, 2, 2, 2) and torch.isfinite(tracks.xy).all()
    assert not tracks.visible[0, 0, 1]


def test_no_seeding_at_import():
    import subprocess
    import sys

    code = (
        "import torch; torch.manual_seed(123); a = torch.rand(3); torch.manual_seed(123); "
        "import mosic.trackers.cotracker.cotracker2; b = torch.rand(3); assert torch.equal(a, b), 'seeded'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
