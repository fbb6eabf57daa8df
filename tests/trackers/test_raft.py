"""The RAFT tracker (mosic.trackers.raft): chaining flows into tracks, the working resolution, weights."""

import urllib.error

import pytest
import torch

import mosic
from helpers.untrusted import REFUSED, evil_file
from helpers.videos import translation_video
from mosic.trackers import raft
from mosic.trackers.raft import RaftTracker, RaftWeightsUnavailableError, chain_flows, sample_flow, working_size


def _constant_flows(b, t, h, w, d):
    fwd = torch.zeros(b, t - 1, 2, h, w)
    fwd[:, :, 0], fwd[:, :, 1] = d
    return fwd, -fwd


# ----------------------------------------------------------------------------- chaining


def test_sample_flow_uses_pixel_centres():
    h, w = 6, 9
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    flow = torch.stack([2 * xs + 1, -3 * ys])[None]  # linear in the pixel-centre coordinates
    xy = torch.tensor([[[0.0, 0.0], [8.0, 5.0], [3.25, 1.5], [7.9, 0.1]]])
    out = sample_flow(flow, xy)
    assert torch.allclose(out, torch.stack([2 * xy[..., 0] + 1, -3 * xy[..., 1]], -1), atol=1e-5)
    # past the outer centres: the border value
    assert torch.allclose(sample_flow(flow, torch.tensor([[[-0.5, 5.5], [11.0, -2.0]]])),
                          torch.tensor([[[1.0, -15.0], [17.0, 0.0]]]))


def test_chain_flows_recovers_a_translation_exactly():
    b, t, h, w = 2, 5, 32, 40
    d = (1.5, -0.75)
    fwd, bwd = _constant_flows(b, t, h, w, d)
    queries = torch.tensor([[0.0, 5.0, 20.0], [0.0, 10.3, 25.6]]).expand(b, -1, -1)
    tracks = chain_flows(fwd, bwd, queries)
    expected = queries[:, None, :, 1:] + torch.arange(t, dtype=torch.float32)[None, :, None, None] * torch.tensor(d)
    assert torch.allclose(tracks.xy, expected, atol=1e-4) and tracks.visible.all()


def test_chain_flows_point_leaving_the_frame_stays_invisible_and_is_extrapolated():
    t, h, w = 6, 16, 16
    fwd, bwd = _constant_flows(1, t, h, w, (2.0, 0.0))
    tracks = chain_flows(fwd, bwd, torch.tensor([[[0.0, 10.0, 8.0], [0.0, 2.0, 8.0]]]))
    # point 0: x = 10, 12, 14, 16 (out: > 15.5), 18, 20
    assert tracks.visible[0, :, 0].tolist() == [True, True, True, False, False, False]
    assert torch.allclose(tracks.xy[0, :, 0, 0], torch.tensor([10.0, 12, 14, 16, 18, 20]))
    assert tracks.visible[0, :, 1].all()


def test_chain_flows_flags_an_occluder_and_never_recovers():
    t, h, w = 6, 32, 32
    fwd, bwd = _constant_flows(1, t, h, w, (1.0, 0.0))
    # an occluder over x in [12, 16) on frame 3: the backward flow 3 -> 2 there points elsewhere
    bwd[0, 2, :, :, 12:16] = torch.tensor([3.0, 2.0])[:, None, None]
    tracks = chain_flows(fwd, bwd, torch.tensor([[[0.0, 10.0, 8.0], [0.0, 2.0, 8.0]]]))
    assert tracks.visible[0, :, 0].tolist() == [True, True, True, False, False, False]  # x = 13 on frame 3
    assert torch.allclose(tracks.xy[0, :, 0, 0], torch.arange(10.0, 16.0))  # still follows the flow
    assert tracks.visible[0, :, 1].all()  # x = 5 on frame 3, away from the occluder
    # a small disagreement stays within the tolerance (0.01 (|f|^2 + |b|^2) + 0.5)
    bwd[0, 2, :, :, 12:16] = torch.tensor([-1.5, 0.3])[:, None, None]
    assert chain_flows(fwd, bwd, torch.tensor([[[0.0, 10.0, 8.0]]])).visible.all()


def test_chain_flows_tracks_backward_before_the_query_frame():
    t, h, w = 5, 32, 32
    fwd, bwd = _constant_flows(1, t, h, w, (1.0, 2.0))
    queries = torch.tensor([[[3.0, 10.0, 12.0], [0.0, 4.0, 4.0]]])
    tracks = chain_flows(fwd, bwd, queries)
    steps = torch.arange(t, dtype=torch.float32) - 3
    expected = torch.stack([10 + steps, 12 + 2 * steps], -1)
    assert torch.allclose(tracks.xy[0, :, 0], expected) and tracks.visible.all()
    forward_only = chain_flows(fwd, bwd, queries, track_backward=False)
    assert forward_only.visible[0, :, 0].tolist() == [False, False, False, True, True]
    assert torch.allclose(forward_only.xy[0, :3, 0], torch.tensor([10.0, 12.0]).expand(3, 2))


def test_working_size():
    assert working_size(64, 64) == (128, 128)
    assert working_size(240, 320) == (240, 320)
    assert working_size(250, 333) == (256, 336)
    assert working_size(100, 300) == (128, 384)
    assert working_size(64, 64, 256) == (256, 256)
    with pytest.raises(ValueError, match="multiples of 8"):
        working_size(64, 64, (130, 128))


def _shift_flow_fn(max_shift: int = 5):
    """Exact flow of globally translated images: the integer shift minimising the interior error."""

    def flow_fn(img1, img2):
        p, _, h, w = img1.shape
        m = max_shift
        inner = img1[:, :, m:-m, m:-m]
        shifts = [(dx, dy) for dx in range(-m, m + 1) for dy in range(-m, m + 1)]
        errs = torch.stack([(img2[:, :, m + dy : h - m + dy, m + dx : w - m + dx] - inner).abs().mean((1, 2, 3))
                            for dx, dy in shifts], 1)  # (P, shifts)
        best = torch.tensor(shifts, dtype=torch.float32)[errs.argmin(1)]  # (P, 2)
        return best[:, :, None, None].expand(p, 2, h, w).clone()

    return flow_fn


def test_raft_tracker_maps_coordinates_through_the_working_resolution():
    # 64 px video, RAFT works at 128 px: a shift of 2 px/frame is 4 px/frame there
    video = translation_video(dx=2, dy=-1, num_frames=4, size=64)
    tracker = RaftTracker(flow_fn=_shift_flow_fn(), batch_pairs=4)
    queries = torch.tensor([[[0.0, 20.0, 30.0], [1.0, 33.3, 40.7]]])
    tracks = tracker(video, queries)
    steps = torch.arange(4, dtype=torch.float32)
    assert torch.allclose(tracks.xy[0, :, 0], torch.stack([20 + 2 * steps, 30 - steps], -1), atol=1e-4)
    assert torch.allclose(tracks.xy[0, :, 1], torch.stack([33.3 + 2 * (steps - 1), 40.7 - (steps - 1)], -1), atol=1e-4)
    assert tracks.visible.all() and tracks.xy.dtype == torch.float32


def test_raft_small_random_weights_runs_end_to_end():
    tracker = mosic.create_tracker("raft-small", weights=False, iters=2, batch_pairs=2)
    assert isinstance(tracker, RaftTracker) and tracker.name == "raft-small"
    video = translation_video(dx=1, dy=0, num_frames=2, size=64)  # 2 flows (forward, backward) at 128 px
    queries = mosic.query_grid(64, 64, 4)[None]
    tracks = tracker.to("cpu")(video, queries)
    assert tracks.xy.shape == (1, 2, 16, 2) and tracks.visible.shape == (1, 2, 16)
    assert tracks.visible.dtype == torch.bool and torch.isfinite(tracks.xy).all()
    assert torch.equal(tracks.xy[:, 0], queries[..., 1:])


def test_raft_weights_offline_and_local_file(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(raft, "_download_state_dict", offline)
    with pytest.raises(RaftWeightsUnavailableError, match="weights=.*'lk'") as info:
        RaftTracker(model="small")
    assert isinstance(info.value, RuntimeError)

    from torchvision.models.optical_flow import raft_small

    net = raft_small(weights=None)
    torch.save(net.state_dict(), tmp_path / "raft_small.pth")
    tracker = RaftTracker(model="small", weights=str(tmp_path / "raft_small.pth"))
    assert all(torch.equal(a, b) for a, b in zip(tracker.model.state_dict().values(), net.state_dict().values()))
    with pytest.raises(ValueError, match="do not match"):
        RaftTracker(model="large", weights=tmp_path / "raft_small.pth")


# ---- untrusted files: weights load only through safetensors or torch.load(weights_only=True) (tests/helpers/untrusted.py)


def test_raft_local_weights_refuse_code(tmp_path, marker):
    path = evil_file(tmp_path / "raft_small.pth", marker)
    with pytest.raises(ValueError, match=REFUSED):
        mosic.create_tracker("raft-small", weights=str(path))


def test_raft_hub_cache_file_refuses_code(tmp_path, monkeypatch):
    from mosic.trackers.raft import _weights_enum

    marker = tmp_path / "PWNED"
    hub = tmp_path / "hub"
    url = _weights_enum("small").url
    evil_file(hub / "checkpoints" / url.rsplit("/", 1)[-1], marker)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    try:
        mosic.create_tracker("raft-small", weights=None, progress=False)
    except Exception:
        pass
    assert not marker.exists(), "the RAFT hub-cache path unpickled arbitrary code"
