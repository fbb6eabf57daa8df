"""Phi for images and token maps: apply_views / warp_tokens agree with ViewTransform.points_to_source."""

import numpy as np
import pytest
import torch

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
