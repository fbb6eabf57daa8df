"""Tracks and query_grid (mosic.tracks), the core type every tracker returns."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import mosic
from helpers.fuzz import FUZZ, raises_readably
from mosic.tracks import Tracks, query_grid


# ---- fuzzing (hypothesis, tests/helpers/fuzz.py)


@FUZZ
@given(
    xy_shape=st.lists(st.integers(0, 3), min_size=1, max_size=5),
    visible_shape=st.lists(st.integers(0, 3), min_size=0, max_size=4),
    visible_dtype=st.sampled_from([torch.bool, torch.uint8, torch.float32]),
)
def test_tracks_shapes(xy_shape, visible_shape, visible_dtype):
    xy, visible = torch.zeros(xy_shape), torch.ones(visible_shape, dtype=visible_dtype)
    if len(xy_shape) == 4 and xy_shape[-1] == 2 and visible_shape == xy_shape[:-1]:
        tracks = Tracks(xy, visible)
        assert tracks.visible.dtype == torch.bool and tracks.visible.shape == tracks.xy.shape[:-1]
        both = Tracks.cat([tracks, tracks], dim=2)
        assert both.xy.shape[2] == 2 * xy_shape[2] and both.visible.shape == both.xy.shape[:-1]
    else:
        with pytest.raises(ValueError, match=r"Tracks\.(xy|visible) must be"):
            Tracks(xy, visible)


@FUZZ
@given(height=st.integers(1, 600), width=st.integers(1, 600), grid=st.integers(-2, 24), frame=st.integers(0, 30))
def test_query_grid(height, width, grid, frame):
    if grid < 1:
        with pytest.raises(ValueError, match="grid_size must be an int >= 1"):
            query_grid(height, width, grid, frame)
        return
    q = query_grid(height, width, grid, frame)
    assert q.shape == (grid * grid, 3) and q.dtype == torch.float32 and torch.isfinite(q).all()
    assert (q[:, 0] == frame).all()
    assert (q[:, 1] >= -0.5).all() and (q[:, 1] <= width - 0.5).all()  # inside the image extent
    assert (q[:, 2] >= -0.5).all() and (q[:, 2] <= height - 0.5).all()
    cells = q[:, 1:].reshape(grid, grid, 2)  # row-major: y outer, x inner
    assert (cells[:, 1:, 0] > cells[:, :-1, 0]).all() and (cells[1:, :, 1] > cells[:-1, :, 1]).all()
    # the centre of the grid is the centre of the image
    assert torch.allclose(q[:, 1:].mean(0), torch.tensor([(width - 1) / 2, (height - 1) / 2]), atol=1e-3)


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda: Tracks("xy", "visible"), id="tracks-non-tensor"),
        pytest.param(lambda: Tracks(torch.zeros(1, 2, 3, 2, dtype=torch.long), torch.ones(1, 2, 3, dtype=torch.bool)), id="tracks-int-xy"),
        pytest.param(lambda: query_grid(32, 32, 2.5), id="query_grid-float-size"),
        pytest.param(lambda: query_grid(0, 32, 2), id="query_grid-empty-image"),
    ],
)
def test_gaps_found_by_fuzzing_now_fail_readably(call):
    """Found by the fuzz tests above: each used to fail deep inside (or not at all)."""
    raises_readably(call)


def test_tracks_and_query_grid_are_checked():
    with pytest.raises(ValueError, match=r"Tracks.xy must be \(B, T, N, 2\), got \(2, 3, 4\)"):
        Tracks(torch.zeros(2, 3, 4), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"Tracks.visible must be \(B, T, N\) = \(2, 3, 4\), got \(2, 3\)"):
        Tracks(torch.zeros(2, 3, 4, 2), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="grid_size must be an int >= 1, got 0"):
        mosic.query_grid(32, 32, 0)


def test_query_grid_sits_on_patch_centres():
    grid = query_grid(224, 224, 16)
    assert grid.shape == (256, 3) and (grid[:, 0] == 0).all()
    centres = torch.arange(16) * 14 + 6.5
    assert torch.allclose(grid[:16, 1], centres) and torch.allclose(grid[::16, 2], centres)
