"""Phi for images and token maps: apply_views / warp_tokens agree with ViewTransform.points_to_source."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from helpers.fuzz import FUZZ, raises_readably
from mosic.data.transforms import ViewTransform, apply_views, random_resized_crop, warp_tokens

H, W, P = 48, 64, 8  # source images; 6 x 8 patches of 8 px


def views_under_test():
    """Hand-picked crops (down- and up-sampling, flipped or not) and seeded random ones."""
    views = [
        ViewTransform(3, 5, 40, 30, (H, W)),  # upsampled
        ViewTransform(3, 5, 40, 30, (H, W), flip=True),
        ViewTransform(0, 0, W, H, (H, W), flip=True),  # plain flip
        ViewTransform(10, 2, 52, 44, (H // 2, W // 2)),  # downsampled: several samples per pixel
        ViewTransform(7, 9, 33, 21, (H // 2, W // 2), flip=True),
    ]
    rng = np.random.default_rng(0)
    views += [random_resized_crop(rng, H, W, (H, W), scale=(0.3, 1.0), flip_probability=0.5) for _ in range(6)]
    assert any(v.flip for v in views[5:]) and not all(v.flip for v in views[5:])
    return views


def ramp_images(batch):
    """(B, 2, H, W): channel 0 holds each pixel's x, channel 1 its y."""
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    return torch.stack([xs, ys]).expand(batch, 2, H, W).clone()


def view_pixel_grid(out_size):
    out_h, out_w = out_size
    ys, xs = torch.meshgrid(torch.arange(out_h, dtype=torch.float32), torch.arange(out_w, dtype=torch.float32), indexing="ij")
    return torch.stack([xs, ys], -1)  # (out_h, out_w, 2) (x, y)


@pytest.mark.parametrize("view", views_under_test(), ids=lambda v: f"{v.x0},{v.y0},{v.width}x{v.height}->{v.out_size}{'-flip' if v.flip else ''}")
def test_apply_views_reads_each_view_pixel_at_its_source_position(view):
    out = apply_views(ramp_images(1), [view])[0]  # (2, out_h, out_w)
    grid = view_pixel_grid(view.out_size)
    source = view.points_to_source(grid)  # (out_h, out_w, 2)
    # roi_align averages samples over the pixel's footprint, clamped at the image border:
    # compare where the whole footprint lies inside [0, W - 1] x [0, H - 1]
    half_x, half_y = 0.5 * view.width / view.out_size[1], 0.5 * view.height / view.out_size[0]
    inside = (
        (source[..., 0] - half_x >= 0)
        & (source[..., 0] + half_x <= W - 1)
        & (source[..., 1] - half_y >= 0)
        & (source[..., 1] + half_y <= H - 1)
    )
    assert inside.float().mean() > 0.5
    got = out.permute(1, 2, 0)
    torch.testing.assert_close(got[inside], source[inside], atol=1e-4, rtol=0)


def test_apply_views_applies_one_view_per_image():
    views = views_under_test()[5:]
    images = ramp_images(len(views))
    images[:, 0] += torch.arange(len(views), dtype=torch.float32)[:, None, None] * 1000  # tell images apart
    out = apply_views(images, views)
    for i, view in enumerate(views):
        single = apply_views(images[i : i + 1], [view])
        torch.testing.assert_close(out[i : i + 1], single)
        assert float(out[i, 0].mean()) > 1000 * i - 1


def patch_centre_tokens(batch):
    """(B, h, w, 2) tokens whose value is their patch centre (x, y) in pixels."""
    h, w = H // P, W // P
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    centres = torch.stack([xs, ys], -1).float() * P + (P - 1) / 2
    return centres.expand(batch, h, w, 2).clone()


@pytest.mark.parametrize("view", views_under_test(), ids=lambda v: f"{v.x0},{v.y0},{v.width}x{v.height}->{v.out_size}{'-flip' if v.flip else ''}")
def test_warp_tokens_reads_each_view_patch_at_its_source_position(view):
    out = warp_tokens(patch_centre_tokens(1), [view], P)[0]  # (h', w', 2)
    out_h, out_w = view.out_size
    assert out.shape == (out_h // P, out_w // P, 2)
    centres = view_pixel_grid((out_h // P, out_w // P)) * P + (P - 1) / 2
    source = view.points_to_source(centres)
    lo = torch.tensor([(P - 1) / 2, (P - 1) / 2])
    hi = torch.tensor([W - P + (P - 1) / 2, H - P + (P - 1) / 2])
    expected = torch.minimum(torch.maximum(source, lo), hi)  # border patches beyond the outer centres
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


def test_flip_view_flips_images_and_tokens_exactly():
    flip = ViewTransform(0, 0, W, H, (H, W), flip=True)
    images = torch.randn(2, 3, H, W)
    torch.testing.assert_close(apply_views(images, [flip, flip]), images.flip(-1), atol=1e-5, rtol=0)
    tokens = torch.randn(2, H // P, W // P, 5)
    torch.testing.assert_close(warp_tokens(tokens, [flip, flip], P), tokens.flip(2), atol=1e-5, rtol=0)


def test_identity_view_leaves_images_and_tokens_unchanged():
    identity = ViewTransform.identity(H, W)
    images = torch.randn(3, 3, H, W)
    torch.testing.assert_close(apply_views(images, [identity] * 3), images, atol=1e-5, rtol=0)
    tokens = torch.randn(3, H // P, W // P, 7)
    torch.testing.assert_close(warp_tokens(tokens, [identity] * 3, P), tokens, atol=1e-5, rtol=0)


def test_points_to_view_inverts_points_to_source():
    xy = torch.rand(50, 2) * torch.tensor([W, H])
    for view in views_under_test():
        torch.testing.assert_close(view.points_to_source(view.points_to_view(xy)), xy, atol=1e-4, rtol=0)
        assert bool(view.inside_view(view.points_to_view(torch.tensor([[view.x0 + 0.0, view.y0 + 0.0]]))).all())


def test_mismatched_batches_and_sizes_raise():
    identity = ViewTransform.identity(H, W)
    with pytest.raises(ValueError, match="B=3"):
        apply_views(torch.zeros(2, 3, H, W), [identity] * 3)
    with pytest.raises(ValueError, match="B=2"):
        apply_views(torch.zeros(3, H, W), [identity] * 2)  # no batch dimension
    with pytest.raises(ValueError, match="out_size"):
        apply_views(torch.zeros(2, 3, H, W), [identity, ViewTransform(0, 0, W, H, (H // 2, W // 2))])
    with pytest.raises(ValueError):
        warp_tokens(torch.zeros(2, H // P, W // P, 4), [identity] * 3, P)


# ---- fuzzing (hypothesis, tests/helpers/fuzz.py)


@FUZZ
@given(
    x0=st.integers(0, 100),
    y0=st.integers(0, 100),
    width=st.integers(1, 300),
    height=st.integers(1, 300),
    out_h=st.integers(1, 300),
    out_w=st.integers(1, 300),
    flip=st.booleans(),
    points=st.lists(st.tuples(st.floats(-50, 500), st.floats(-50, 500)), min_size=1, max_size=8),
)
def test_view_transform_round_trip(x0, y0, width, height, out_h, out_w, flip, points):
    view = ViewTransform(x0, y0, width, height, (out_h, out_w), flip)
    xy = torch.tensor(points, dtype=torch.float64)
    inside = view.points_to_view(xy)
    assert inside.shape == xy.shape and torch.isfinite(inside).all()
    torch.testing.assert_close(view.points_to_source(inside), xy, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(view.points_to_view(view.points_to_source(xy)), xy, atol=1e-9, rtol=1e-9)
    # the crop box's extent is the view's extent
    corners = torch.tensor([[x0 - 0.5, y0 - 0.5], [x0 + width - 0.5, y0 + height - 0.5]], dtype=torch.float64)
    mapped = view.points_to_view(corners)
    centre = torch.tensor([[x0 + (width - 1) / 2, y0 + (height - 1) / 2]], dtype=torch.float64)
    assert view.inside_view(view.points_to_view(centre)).all()
    assert sorted(mapped[:, 0].tolist()) == pytest.approx([-0.5, out_w - 0.5])
    assert sorted(mapped[:, 1].tolist()) == pytest.approx([-0.5, out_h - 0.5])


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda: ViewTransform(0, 0, 0, 10, (10, 10)), id="view-transform-empty-box"),
        pytest.param(lambda: ViewTransform(0, 0, 10, 10, (0, 10)), id="view-transform-empty-output"),
    ],
)
def test_gaps_found_by_fuzzing_now_fail_readably(call):
    """Found by the fuzz tests above: each used to fail deep inside (or not at all)."""
    raises_readably(call)


@pytest.mark.parametrize("flip", [False, True])
def test_view_transform_points_round_trip_and_match_frames(flip):
    tf = ViewTransform(x0=10, y0=4, width=20, height=40, out_size=(20, 10), flip=flip)
    xy = torch.tensor([[12.0, 7.0], [29.0, 43.0], [10.0, 4.0]])
    assert torch.allclose(tf.points_to_source(tf.points_to_view(xy)), xy, atol=1e-5)
    # a 2x2 block of source pixels becomes exactly one view pixel (scale 1/2)
    frames = torch.zeros(1, 3, 60, 40, dtype=torch.uint8)
    frames[0, :, 14:16, 16:18] = 255  # source pixels x 16-17, y 14-15: centre (16.5, 14.5)
    view = tf.apply_to_frames(frames)
    ys, xs = torch.nonzero(view[0, 0] > 128, as_tuple=True)
    expected = tf.points_to_view(torch.tensor([16.5, 14.5]))
    assert (xs.item(), ys.item()) == (round(expected[0].item()), round(expected[1].item()))


def test_random_resized_crop_is_reproducible_and_in_bounds():
    a = random_resized_crop(np.random.default_rng(5), 48, 64, (32, 32), (0.4, 1.0), flip_probability=0.5)
    b = random_resized_crop(np.random.default_rng(5), 48, 64, (32, 32), (0.4, 1.0), flip_probability=0.5)
    assert a == b
    for seed in range(50):
        tf = random_resized_crop(np.random.default_rng(seed), 48, 64, (32, 32), (0.4, 1.0))
        assert 0 <= tf.x0 and tf.x0 + tf.width <= 64 and 0 <= tf.y0 and tf.y0 + tf.height <= 48
        assert 0.4 * 48 * 64 * 0.9 <= tf.width * tf.height
