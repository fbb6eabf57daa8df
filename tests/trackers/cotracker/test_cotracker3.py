"""CoTracker3 (mosic.trackers.cotracker): official state-dict format, equivalence with the
official code, and the tracker plumbing.

Golden outputs (tests/fixtures/cotracker3_golden.safetensors) come from the official
facebookresearch/co-tracker code at 82e02e8, run once outside this repository in float64
with the weights of :func:`seeded_state_dict` (a recipe that needs no reference code) at a
small model resolution (64x96 instead of 384x512, to keep CPU tests fast; the architecture
does not depend on it). The official code is not needed to run these tests.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import mosic
from mosic.backbones.weights import load_state_dict_strict
from mosic.trackers.cotracker import (
    CoTracker3Offline,
    CoTracker3Online,
    CoTracker3Tracker,
    CoTrackerWeightsUnavailable,
)
from mosic.trackers.cotracker import weights as ct_weights

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
SMALL = (64, 96)  # model resolution of the golden and plumbing tests


def seeded_state_dict(
    shapes: dict[str, list[int]], seed: int = 0, head_gain: float = 0.1, vis_bias: float = 1.2, conf_bias: float = -0.3
) -> dict[str, torch.Tensor]:
    """Deterministic CoTracker3 weights for golden tests, without the reference code.

    Over the keys in sorted order (``time_emb`` skipped: the model computes it), one
    stream of numpy PCG64(seed) doubles u in [-1, 1) per tensor, in C order: virtual
    tracks u*sqrt(3) (std 1); matrices and convolutions u*sqrt(3)/sqrt(fan_in) (std
    1/sqrt(fan_in); times ``head_gain`` for ``flow_head``/``vis_conf_head``, which keeps
    the random updates small and the dynamics well conditioned); ``norm_context.weight``
    1 + 0.1u; other vectors (biases) 0.02*sqrt(3)*u; then ``vis_bias`` and ``conf_bias``
    are added to ``vis_conf_head.bias`` (so that the scores straddle the predictors' thresholds).
    Stored as float32.
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    out = {}
    for key in sorted(shapes):
        if key == "time_emb":
            continue
        shape = tuple(shapes[key])
        u = rng.random(math.prod(shape)) * 2.0 - 1.0
        if key.endswith("norm_context.weight"):
            out[key] = torch.from_numpy(1.0 + 0.1 * u).float().reshape(shape)
            continue
        if key.endswith("virual_tracks"):
            std = 1.0
        elif len(shape) >= 2:
            std = 1.0 / math.sqrt(math.prod(shape[1:]))
            if "flow_head" in key or "vis_conf_head" in key:
                std *= head_gain
        else:
            std = 0.02
        out[key] = torch.from_numpy(u * math.sqrt(3.0) * std).float().reshape(shape)
    out["updateformer.vis_conf_head.bias"] += torch.tensor([vis_bias, conf_bias])
    return out


def translation_video(texture: torch.Tensor, num_frames: int, height: int, width: int) -> torch.Tensor:
    """(1, T, 3, H, W) uint8: frame t is the crop of ``texture`` (3, Ht, Wt) at x0 = 2t, y0 = t."""
    frames = [texture[:, t : t + height, 2 * t : 2 * t + width] for t in range(num_frames)]
    return torch.stack(frames)[None].contiguous()


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def official_keys() -> dict:
    return json.loads((FIXTURES / "cotracker3_keys.json").read_text())


@pytest.fixture(scope="module")
def golden() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(FIXTURES / "cotracker3_golden.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()  # noqa: SIM118


def _seeded(model: torch.nn.Module, meta: dict[str, str]) -> torch.nn.Module:
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    state = seeded_state_dict(
        shapes, int(meta["seed"]), float(meta["head_gain"]), float(meta["vis_bias"]), float(meta["conf_bias"])
    )
    state["time_emb"] = model.time_emb
    model.load_state_dict(state, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def seeded_models(golden):
    """Offline and online models at the golden resolution with the golden weights."""
    _, meta = golden
    return {
        False: _seeded(CoTracker3Offline(model_resolution=SMALL), meta),
        True: _seeded(CoTracker3Online(model_resolution=SMALL), meta),
    }


def _tracker(online: bool, model: torch.nn.Module | None = None, **kwargs) -> CoTracker3Tracker:
    tracker = CoTracker3Tracker(weights=False, online=online, device="cpu", model_resolution=SMALL, **kwargs)
    if model is not None:
        tracker.model.load_state_dict(model.state_dict())
    return tracker


# ------------------------------------------------------------------ 1. official format


@pytest.mark.parametrize("online", [False, True])
def test_official_keys_and_shapes_load_strictly(official_keys, online):
    shapes = official_keys["shapes_online" if online else "shapes_offline"]
    model = (CoTracker3Online if online else CoTracker3Offline)()
    own = model.state_dict()
    assert len(shapes) == official_keys["num_tensors"] == len(own) == 188
    assert {k: list(v.shape) for k, v in own.items()} == shapes
    assert tuple(own["time_emb"].shape) == ((1, 16, 1110) if online else (1, 60, 1110))
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == official_keys["num_parameters_offline"]
    assert abs(n_params / 1e6 - 25.4) < 0.05

    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    before = model.corr_mlp.fc1.weight.clone()
    assert ct_weights.load_cotracker_weights(model, False, "cotracker3_offline") is model  # False: random init
    assert torch.equal(model.corr_mlp.fc1.weight, before)
    load_state_dict_strict(model, state, "generated")
    assert torch.equal(model.updateformer.virual_tracks, state["updateformer.virual_tracks"])
    assert torch.equal(model.fnet.layer2[0].downsample[0].weight, state["fnet.layer2.0.downsample.0.weight"])


def test_wrong_or_missing_keys_are_listed(official_keys, tmp_path):
    state = {k: torch.zeros(s) for k, s in official_keys["shapes_offline"].items()}
    state["corr_mlp.fc3.weight"] = state.pop("corr_mlp.fc2.weight")  # one missing, one unexpected
    del state["updateformer.virual_tracks"]  # one more missing
    path = tmp_path / "bad.safetensors"
    from safetensors.torch import save_file

    save_file(state, str(path))
    with pytest.raises(ValueError) as err:
        CoTracker3Tracker(weights=path, device="cpu")
    msg = str(err.value)
    assert "missing keys: corr_mlp.fc2.weight, updateformer.virual_tracks" in msg
    assert "unexpected keys: corr_mlp.fc3.weight" in msg and "scaled_offline.pth" in msg


def test_file_cache_licence_and_wrong_variant(official_keys, tmp_path, monkeypatch, capsys):
    """A cached official-format {"model": ...} .pth loads for weights=None without network;
    a local path loads too; the online checkpoint does not fit the offline model."""
    g = torch.Generator().manual_seed(1)
    state = {k: torch.randn(s, generator=g) for k, s in official_keys["shapes_offline"].items()}
    (tmp_path / "checkpoints").mkdir()
    path = tmp_path / "checkpoints" / "scaled_offline.pth"
    torch.save({"model": state}, path)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(ct_weights, "_NOTED", set())
    model = ct_weights.load_cotracker_weights(CoTracker3Offline(), None, "cotracker3_offline")
    assert torch.equal(model.corr_mlp.fc1.weight, state["corr_mlp.fc1.weight"])
    assert "CC BY-NC 4.0" in capsys.readouterr().err
    model = ct_weights.load_cotracker_weights(CoTracker3Offline(), path, "cotracker3_offline")
    assert torch.equal(model.time_emb, state["time_emb"])

    online = {k: torch.zeros(s) for k, s in official_keys["shapes_online"].items()}
    wrong = tmp_path / "scaled_online.pth"
    torch.save(online, wrong)
    with pytest.raises(ValueError, match=r"time_emb: file \(1, 16, 1110\) vs model \(1, 60, 1110\)"):
        ct_weights.load_cotracker_weights(CoTracker3Offline(), wrong, "cotracker3_offline")


# ------------------------------------------------------------------------ 4. no weights


def test_offline_without_weights_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # empty cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CoTrackerWeightsUnavailable) as err:
        mosic.create_tracker("cotracker3")
    msg = str(err.value)
    assert isinstance(err.value, RuntimeError)
    assert 'weights="/path/scaled_offline.pth"' in msg and '"lk"' in msg and "HF_HUB_OFFLINE" in msg

    import urllib.error

    def fail(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fail)
    with pytest.raises(CoTrackerWeightsUnavailable, match="could not be downloaded.*no route to host") as err:
        mosic.create_tracker("cotracker3-online")
    assert 'weights="/path/scaled_online.pth"' in str(err.value)


# --------------------------------------------------------- 2. equivalence with the reference


def _model_inputs(golden, online: bool):
    tensors, meta = golden
    prefix = "online_" if online else "offline_"
    frames = int(meta[prefix + "frames"])
    video = translation_video(tensors["texture"], frames, *SMALL)
    return video, tensors[prefix + "queries"], int(meta[prefix + "iters"]), prefix


@pytest.mark.parametrize("online", [False, True])
def test_model_matches_official_outputs(golden, seeded_models, online):
    """float32 forward vs the official code's float64 outputs (same weights and inputs)."""
    tensors, _ = golden
    video, queries, iters, prefix = _model_inputs(golden, online)
    start = time.perf_counter()
    with torch.no_grad():
        coords, vis, conf = seeded_models[online](video, queries.float(), iters=iters)
    print(f"{prefix} forward {time.perf_counter() - start:.1f}s")
    err = {
        "coords": (coords.double() - tensors[prefix + "coords"]).abs().max().item(),
        "vis": (vis.double() - tensors[prefix + "vis"]).abs().max().item(),
        "conf": (conf.double() - tensors[prefix + "conf"]).abs().max().item(),
    }
    print(prefix, err)
    assert err["coords"] < 1e-3 and err["vis"] < 1e-5 and err["conf"] < 1e-5, err


def test_offline_model_matches_official_outputs_float64(golden, seeded_models):
    """In float64 the implementation equals the official one to round-off."""
    tensors, meta = golden
    video, queries, iters, prefix = _model_inputs(golden, False)
    model = _seeded(CoTracker3Offline(model_resolution=SMALL), meta).double()
    with torch.no_grad():
        coords, vis, conf = model(video, queries, iters=iters)
    assert coords.dtype == torch.float64
    torch.testing.assert_close(coords, tensors[prefix + "coords"], atol=1e-8, rtol=0)
    torch.testing.assert_close(vis, tensors[prefix + "vis"], atol=1e-10, rtol=0)
    torch.testing.assert_close(conf, tensors[prefix + "conf"], atol=1e-10, rtol=0)


@pytest.mark.parametrize("online", [False, True])
def test_tracker_matches_official_predictor(golden, seeded_models, online):
    """The whole tracker (resize, query scaling, support grid, thresholds, snapping) vs the
    official CoTrackerPredictor / CoTrackerOnlinePredictor (the latter fed window by window
    as online_demo.py does) on a 48x80 video; the golden script replaced the predictors'
    hardcoded 6 iterations by ``predictor_iters`` (2) for speed."""
    tensors, meta = golden
    prefix = "pred_online_" if online else "pred_offline_"
    h, w = (int(v) for v in meta["predictor_input_size"].split(","))
    queries = tensors[prefix + "queries"].float()
    frames = tensors[prefix + "xy"].shape[1]
    video = translation_video(tensors["texture"], frames, h, w)
    tracker = _tracker(online, seeded_models[online], iters=int(meta["predictor_iters"]))
    tracks = tracker(video, queries)
    assert tracks.xy.shape == (1, frames, queries.shape[1], 2)
    err = (tracks.xy.double() - tensors[prefix + "xy"]).abs().max().item()
    print(prefix, "xy err (input px)", err)
    assert err < 1e-3
    started = torch.arange(frames)[None, :, None] >= queries[:, None, :, 0]
    official = tensors[prefix + "visible"].bool()
    assert torch.equal(tracks.visible[started], official[started])
    assert not tracks.visible[~started].any()
    assert 0 < official[started].float().mean() < 1  # the thresholds matter in this golden


# ------------------------------------------------------------------------- 3. plumbing


@pytest.fixture(scope="module")
def plumbing_case(golden):
    tensors, _ = golden
    texture = tensors["texture"]
    video = torch.cat([translation_video(texture, 4, 40, 56), translation_video(texture.flip(-1), 4, 40, 56)])
    queries = torch.tensor(
        [
            [[0, 3.0, 4.0], [2, 30.5, 20.0], [3, 55.0, 39.0], [1, 10.0, 30.0], [3, 44.0, 8.0]],
            [[3, 12.0, 9.0], [0, 50.0, 35.5], [1, 0.0, 0.0], [2, 27.0, 19.0], [1, 5.0, 33.0]],
        ]
    )
    return video, queries


def test_batch_and_chunking_do_not_change_tracks(seeded_models, plumbing_case):
    video, queries = plumbing_case
    tracker = _tracker(False, seeded_models[False], max_points_per_chunk=None, iters=2, support_grid_size=3)
    both = tracker(video, queries)
    single = tracker(video[1:], queries[1:])  # the second video alone
    torch.testing.assert_close(both.xy[1:], single.xy, atol=1e-4, rtol=0)
    assert torch.equal(both.visible[1:], single.visible)
    tracker.max_points_per_chunk = 6  # 3 of the 14 points (5 + 9 support) per video per chunk
    chunked = tracker(video, queries)
    torch.testing.assert_close(chunked.xy, both.xy, atol=1e-4, rtol=0)
    assert torch.equal(chunked.visible, both.visible)


def test_queries_after_frame_zero_and_input_pixels(seeded_models, plumbing_case):
    video, queries = plumbing_case
    tracker = _tracker(False, seeded_models[False], visibility_threshold=0.0, iters=2, support_grid_size=3)
    tracks = tracker(video, queries)
    assert tracks.xy.shape == (2, 4, 5, 2) and tracks.visible.shape == (2, 4, 5)
    frames = queries[..., 0].long()
    for b in range(2):
        for n in range(5):
            t = frames[b, n]
            assert not tracks.visible[b, :t, n].any() and tracks.visible[b, t:, n].all()
            torch.testing.assert_close(tracks.xy[b, t, n], queries[b, n, 1:], atol=1e-5, rtol=0)

    # input pixels = model pixels scaled by (W-1)/(W'-1), (H-1)/(H'-1): compare with the model itself
    scale = torch.tensor([(SMALL[1] - 1) / (56 - 1), (SMALL[0] - 1) / (40 - 1)])
    from mosic.trackers.cotracker.blocks import get_points_on_a_grid

    grid = get_points_on_a_grid(3, SMALL)
    model_q = torch.cat([queries[..., :1], queries[..., 1:] * scale], -1)
    model_q = torch.cat([model_q, torch.cat([torch.zeros(1, 9, 1), grid], -1).expand(2, -1, -1)], 1)
    with torch.no_grad():
        coords, _, _ = seeded_models[False](video, model_q, iters=2)
    expected = coords[:, :, :5] / scale
    later = torch.arange(4)[None, :, None] != frames[:, None, :]
    torch.testing.assert_close(tracks.xy[later], expected[later], atol=1e-4, rtol=0)


def test_online_tracker_options_and_registry(plumbing_case):
    video, queries = plumbing_case
    torch.manual_seed(0)
    tracker = mosic.create_tracker("cotracker3-online", weights=False, device="cpu", model_resolution=SMALL, iters=1)
    assert isinstance(tracker, CoTracker3Tracker) and tracker.online and tracker.name == "cotracker3-online"
    assert tracker.visibility_threshold == 0.6 and tracker.use_confidence and tracker.support_grid_size == 0
    offline = CoTracker3Tracker(weights=False, device="cpu", model_resolution=SMALL)
    assert offline.visibility_threshold == 0.9 and not offline.use_confidence and offline.support_grid_size == 6
    assert "cotracker3" in mosic.list_trackers("cotracker3*")
    tracks = tracker(video, queries)  # 4 frames: one (padded) window
    assert tracks.xy.shape == (2, 4, 5, 2) and torch.isfinite(tracks.xy).all()
    assert not tracks.visible[1, :3, 0].any()
    with pytest.raises(ValueError, match="query frames"):
        tracker(video, queries + torch.tensor([4.0, 0, 0]))


def test_default_resolution_runs(plumbing_case):
    """The real 384x512 model resolution on a tiny 2-frame 40x56 clip (random weights)."""
    video, queries = plumbing_case
    torch.manual_seed(0)
    tracker = CoTracker3Tracker(weights=False, device="cpu", iters=1)
    start = time.perf_counter()
    tracks = tracker(video[:1, :2], queries[:1, :2].clamp(max=1))
    print(f"384x512 tracker, T=2, iters=1: {time.perf_counter() - start:.1f}s")
    assert tracks.xy.shape == (1, 2, 2, 2) and torch.isfinite(tracks.xy).all()
    assert tracks.xy.abs().max() < 1000


def test_bf16_autocast_and_empty_queries(seeded_models, plumbing_case):
    """precision="bf16" (autocast; here on CPU) stays close to float32; no queries, no work."""
    video, queries = plumbing_case
    reference = _tracker(False, seeded_models[False], iters=2, support_grid_size=3)
    bf16 = _tracker(False, seeded_models[False], iters=2, support_grid_size=3, precision="bf16")
    assert bf16.amp_dtype() == torch.bfloat16 and reference.amp_dtype() is None  # "auto" is fp32 on CPU
    clip, first = video[:1, :2], queries[:1].clamp(max=1)
    a, b = reference(clip, first), bf16(clip, first)
    assert b.xy.dtype == torch.float32 and torch.isfinite(b.xy).all()
    assert (a.xy - b.xy).abs().max() < 0.5
    empty = reference(video, queries[:, :0])
    assert empty.xy.shape == (2, 4, 0, 2) and empty.visible.shape == (2, 4, 0)


def test_import_does_not_seed_torch():
    import subprocess
    import sys

    code = (
        "import torch; torch.manual_seed(123); a = torch.rand(1); torch.manual_seed(123); "
        "import mosic.trackers.cotracker; assert torch.initial_seed() == 123; assert torch.equal(torch.rand(1), a)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
