import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from helpers.fuzz import FLOATS, FUZZ
from mosic.points import sample_at_points


def coordinate_tokens(h, w):
    """(1, h, w, 2) tokens whose features are (column, row)."""
    rows, cols = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    return torch.stack([cols, rows], -1).unsqueeze(0)


def patch_centre(j, p):
    return j * p + (p - 1) / 2


def test_point_moving_right_is_read_from_the_right_column():
    p, h, w = 8, 4, 6
    tokens = coordinate_tokens(h, w)
    xs = torch.tensor([patch_centre(j, p) for j in range(w)])
    xy = torch.stack([xs, torch.full_like(xs, patch_centre(1, p))], -1).unsqueeze(0)  # row 1, moving right
    for mode in ("nearest", "bilinear"):
        feats = sample_at_points(tokens, xy, p, mode)[0]
        assert torch.allclose(feats[:, 0], torch.arange(w).float(), atol=1e-5), mode  # column follows x
        assert torch.allclose(feats[:, 1], torch.ones(w), atol=1e-5), mode  # row stays 1 (y)


def test_point_moving_down_is_read_from_the_lower_row():
    p = 14
    tokens = coordinate_tokens(5, 3)
    ys = torch.tensor([patch_centre(i, p) for i in range(5)])
    xy = torch.stack([torch.full_like(ys, patch_centre(2, p)), ys], -1).unsqueeze(0)
    feats = sample_at_points(tokens, xy, p, "nearest")[0]
    assert torch.allclose(feats[:, 1], torch.arange(5).float())
    assert torch.allclose(feats[:, 0], torch.full((5,), 2.0))


def test_bilinear_interpolates_between_patch_centres():
    p = 8
    tokens = coordinate_tokens(4, 4)
    xy = torch.tensor([[[patch_centre(1, p) + p / 4, patch_centre(2, p)]]])
    assert torch.allclose(sample_at_points(tokens, xy, p, "bilinear"), torch.tensor([[[1.25, 2.0]]]))


def test_gather_equals_upsample_then_index():
    """The fast path equals the authors' upsample-to-pixels-then-index (with x, y the right way round)."""
    torch.manual_seed(0)
    b, h, w, d, p = 2, 5, 7, 3, 8
    tokens = torch.randn(b, h, w, d)
    up = F.interpolate(tokens.permute(0, 3, 1, 2), scale_factor=p, mode="bilinear", align_corners=False)
    xy = torch.stack([torch.randint(0, w * p, (b, 50)), torch.randint(0, h * p, (b, 50))], -1)
    expected = torch.stack([up[i, :, xy[i, :, 1], xy[i, :, 0]].t() for i in range(b)])
    assert torch.allclose(sample_at_points(tokens, xy.float(), p, "bilinear"), expected, atol=1e-5)


def test_bf16_tokens_are_read_at_exact_fp32_positions():
    # token value = its column index (exact in bf16); bilinear reads give x in patch units
    h = w = 16
    tokens = torch.arange(w, dtype=torch.float32).expand(1, h, w)[..., None].bfloat16()
    xy = torch.stack([torch.linspace(7.0, 216.0, 97), torch.full((97,), 100.0)], -1)[None]
    read = sample_at_points(tokens, xy, 14, "bilinear")
    assert read.dtype == torch.float32
    expected = (xy[0, :, 0] - 6.5) / 14  # pixel x -> fractional patch-centre index
    assert torch.allclose(read[0, :, 0], expected, atol=1e-4)  # a bf16 grid is off by up to ~0.06


# ---- fuzzing (hypothesis, tests/helpers/fuzz.py)


@FUZZ
@given(
    b=st.integers(1, 3),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    d=st.integers(1, 5),
    n=st.integers(0, 10),
    patch=st.integers(1, 16),
    dtype=FLOATS,
    seed=st.integers(0, 2**16),
)
def test_sample_at_points_valid(b, h, w, d, n, patch, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(b, h, w, d, generator=g).to(dtype)
    # anywhere, including outside the image (read from the border patch)
    xy = torch.rand(b, n, 2, generator=g) * torch.tensor([w * patch + 20.0, h * patch + 20.0]) - 10
    for mode in ("bilinear", "nearest"):
        out = sample_at_points(tokens, xy.to(dtype), patch, mode)
        assert out.shape == (b, n, d) and out.dtype == torch.float32 and torch.isfinite(out).all()
        lo, hi = tokens.float().amin((1, 2)), tokens.float().amax((1, 2))  # (B, D)
        assert (out >= lo[:, None] - 1e-5).all() and (out <= hi[:, None] + 1e-5).all()  # convex combinations
    # at patch centres: the token itself
    rows = torch.randint(0, h, (b, n), generator=g)
    cols = torch.randint(0, w, (b, n), generator=g)
    centres = torch.stack([cols, rows], -1).float() * patch + (patch - 1) / 2
    expected = tokens.float()[torch.arange(b)[:, None], rows, cols]
    assert torch.equal(sample_at_points(tokens, centres, patch, "nearest"), expected)
    torch.testing.assert_close(sample_at_points(tokens, centres, patch, "bilinear"), expected, atol=1e-5, rtol=1e-5)


@FUZZ
@given(
    tokens_shape=st.lists(st.integers(0, 3), min_size=3, max_size=5),
    xy_shape=st.lists(st.integers(0, 3), min_size=1, max_size=4),
    tokens_dtype=st.sampled_from([torch.float32, torch.int64]),
    xy_dtype=st.sampled_from([torch.float32, torch.float16, torch.int64, torch.int32]),
    patch=st.one_of(st.integers(-1, 9), st.floats(0, 9), st.none()),
    mode=st.sampled_from(["bilinear", "nearest", "bicubic", ""]),
)
def test_sample_at_points_invalid(tokens_shape, xy_shape, tokens_dtype, xy_dtype, patch, mode):
    tokens, xy = torch.zeros(tokens_shape, dtype=tokens_dtype), torch.zeros(xy_shape, dtype=xy_dtype)
    valid = (
        len(tokens_shape) == 4 and tokens_dtype.is_floating_point and min(tokens_shape[1:3]) >= 1
        and len(xy_shape) == 3 and xy_shape[0] == tokens_shape[0] and xy_shape[2] == 2 and xy_dtype.is_floating_point
        and isinstance(patch, int) and patch >= 1 and mode in ("bilinear", "nearest")
    )  # fmt: skip
    if valid:
        assert sample_at_points(tokens, xy, patch, mode).shape == (tokens_shape[0], xy_shape[1], tokens_shape[3])
    else:
        with pytest.raises((ValueError, TypeError), match="sample_at_points: "):
            sample_at_points(tokens, xy, patch, mode)


# ---- malformed inputs fail fast, with a message naming the argument and the expected form


def test_sample_at_points_message_names_xy_and_its_form():
    with pytest.raises(ValueError, match=r"^sample_at_points: xy must be \(B=2, N, 2\) float pixels \(x, y\), got torch.int64 \(2, 5, 3\)$"):
        sample_at_points(torch.zeros(2, 3, 3, 4), torch.zeros(2, 5, 3, dtype=torch.int64), 8)


@pytest.mark.parametrize(
    "tokens,xy,patch,mode,error,match",
    [
        (torch.zeros(2, 3, 4), torch.zeros(2, 5, 2), 8, "bilinear", ValueError, r"tokens must be a \(B, h, w, D\) float patch grid, got torch.float32 \(2, 3, 4\)"),
        (torch.zeros(2, 3, 3, 4, dtype=torch.int32), torch.zeros(2, 5, 2), 8, "bilinear", ValueError, r"tokens must be .*torch.int32"),
        (np.zeros((2, 3, 3, 4)), torch.zeros(2, 5, 2), 8, "bilinear", TypeError, r"tokens must be .*got ndarray"),
        (torch.zeros(2, 0, 3, 4), torch.zeros(2, 5, 2), 8, "bilinear", ValueError, r"tokens must be a \(B, h, w, D\) grid with h, w >= 1, got \(2, 0, 3, 4\)"),
        (torch.zeros(2, 3, 3, 4), torch.zeros(3, 5, 2), 8, "bilinear", ValueError, r"xy must be \(B=2, N, 2\) float pixels \(x, y\), got torch.float32 \(3, 5, 2\)"),
        (torch.zeros(2, 3, 3, 4), torch.zeros(2, 2), 8, "bilinear", ValueError, r"xy must be \(B=2, N, 2\)"),
        (torch.zeros(2, 3, 3, 4), torch.zeros(2, 5, 2), 0, "bilinear", ValueError, r"patch_size must be an int > 0 .*got 0"),
        (torch.zeros(2, 3, 3, 4), torch.zeros(2, 5, 2), 8.0, "bilinear", TypeError, r"patch_size must be an int > 0 .*got float"),
        (torch.zeros(2, 3, 3, 4), torch.zeros(2, 5, 2), 8, "bicubic", ValueError, r"mode must be 'bilinear' or 'nearest', got 'bicubic'"),
    ],
)
def test_sample_at_points_rejects_malformed_arguments(tokens, xy, patch, mode, error, match):
    with pytest.raises(error, match="sample_at_points: " + match):
        sample_at_points(tokens, xy, patch, mode)


# ---- point reads == upsample to pixels, then index (nearest; borders and outside)


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("patch", [8, 14])
def test_point_reads_equal_upsample_then_index_on_the_border_and_outside(mode, patch):
    """test_points covers bilinear at interior pixels; here nearest against nearest
    upsampling, every border pixel, and points outside the image (they read the border)."""
    g = torch.Generator().manual_seed(4)
    b, h, w, d = 2, 3, 5, 4
    height, width = h * patch, w * patch
    tokens = torch.randn(b, h, w, d, generator=g)
    corners = {"align_corners": False} if mode == "bilinear" else {}  # as sample_at_points
    up = F.interpolate(tokens.permute(0, 3, 1, 2), scale_factor=patch, mode=mode, **corners)  # (B, D, H, W)
    xs, ys = torch.arange(width), torch.arange(height)
    border = torch.cat([
        torch.stack([xs, torch.zeros_like(xs)], -1),
        torch.stack([xs, torch.full_like(xs, height - 1)], -1),
        torch.stack([torch.zeros_like(ys), ys], -1),
        torch.stack([torch.full_like(ys, width - 1), ys], -1),
    ])
    interior = torch.stack([torch.randint(0, width, (40,), generator=g), torch.randint(0, height, (40,), generator=g)], -1)
    pixels = torch.cat([border, interior]).expand(b, -1, -1)
    expected = torch.stack([up[i, :, pixels[i, :, 1], pixels[i, :, 0]].t() for i in range(b)])
    torch.testing.assert_close(sample_at_points(tokens, pixels.float(), patch, mode), expected, atol=1e-5, rtol=1e-5)

    # outside the image (within and beyond the half-pixel margin): the nearest border pixel's read
    outside = torch.tensor(
        [[-0.5, 3.0], [-7.0, -9.0], [width - 0.5, 2.0], [width + 30.0, height + 30.0], [4.0, -0.25], [1.0, height + 3.0]]
    )
    clamped = torch.stack([outside[:, 0].round().clamp(0, width - 1), outside[:, 1].round().clamp(0, height - 1)], -1)
    clamped = clamped.long().expand(b, -1, -1)
    expected = torch.stack([up[i, :, clamped[i, :, 1], clamped[i, :, 0]].t() for i in range(b)])
    got = sample_at_points(tokens, outside.expand(b, -1, -1), patch, mode)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    if mode == "nearest":  # nearest reads are token values exactly
        assert torch.isin(got, tokens).all()


# ---- nearest reads at fractional positions == the authors' nearest upsampling + .round() + indexing


@pytest.mark.parametrize("patch", [14, 8, 7])
def test_nearest_reads_at_fractional_positions_equal_nearest_upsampling_then_indexing_the_rounded_pixel(patch):
    """The authors' read (exp_mosic_multigpu.py, `--feature_upsampling nearest` and
    `--teacher_feature_upsampling nearest`): F.interpolate(mode="nearest") to the image size,
    then `clamp(tracks, 0, max(h-1, w-1)).round().long()` and indexing, here [y, x] (they
    index [x, y], a bug mosic does not copy). Exact, at ties (x.5) and outside the image too."""
    g = torch.Generator().manual_seed(7)
    b, h, w, d = 2, 16, 16, 5  # square, as their 224 x 224 crops (their clamp uses max(h-1, w-1))
    size = h * patch
    tokens = torch.randn(b, h, w, d, generator=g)
    up = F.interpolate(tokens.permute(0, 3, 1, 2), size=(size, size), mode="nearest")  # (B, D, H, W)
    inside = torch.rand(b, 300, 2, generator=g) * (size - 1)
    ties = torch.arange(0, size, patch).float() - 0.5  # x.5 at the patch borders: round half to even
    ties = torch.stack([ties, ties.flip(0)], -1).clamp_min(0)
    more_ties = torch.rand(b, 40, 2, generator=g).mul(size).floor() + 0.5
    outside = torch.tensor([[-3.2, 10.0], [size + 4.7, 3.3], [-0.4, size - 0.6], [size - 0.5, -7.0]])
    xy = torch.cat([inside, ties.expand(b, -1, -1), more_ties, outside.expand(b, -1, -1)], 1)
    index = torch.clamp(xy, min=0, max=max(size - 1, size - 1)).round().long()  # their .round().long()
    expected = torch.stack([up[i, :, index[i, :, 1], index[i, :, 0]].t() for i in range(b)])
    assert torch.equal(sample_at_points(tokens, xy, patch, "nearest"), expected)


def test_nearest_reads_round_to_the_pixel_before_choosing_the_patch():
    """x = 13.5 lies between pixel 13 (patch 0) and 14 (patch 1): round half to even gives
    pixel 14, so patch 1, the authors' index; the patch nearest to 13.5 itself is a tie."""
    tokens = coordinate_tokens(1, 3)  # feature 0 = column
    xy = torch.tensor([[[13.5, 0.0], [13.49, 0.0], [27.5, 0.0], [26.5, 0.0]]])
    assert sample_at_points(tokens, xy, 14, "nearest")[0, :, 0].tolist() == [1.0, 0.0, 2.0, 1.0]
