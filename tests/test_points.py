import torch
import torch.nn.functional as F

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
