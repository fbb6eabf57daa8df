"""Layers shared by the CoTracker3 and CoTracker2 point trackers.

An independent implementation of the architecture described in Karaev et al.,
*CoTracker: It is Better to Track Together* (ECCV 2024) and *CoTracker3: Simpler and
Better Point Tracking by Pseudo-Labelling Real Videos* (2024). Module and parameter
names follow the official checkpoints (facebookresearch/co-tracker) so that their state
dicts load strictly; the checkpoints themselves are CC BY-NC 4.0 (non-commercial).

Coordinate conventions used by the samplers (the official ones): a position is given in
pixel units of the sampled map, pixel centre (row i, column j) at (x=j, y=i), and maps are
sampled bilinearly with ``align_corners=True`` semantics (x=0 is the centre of the first
column, x=W-1 the centre of the last); outside the map the border value is repeated
unless a padding mode says otherwise.

Contents (names and signatures are kept stable; ``cotracker2.py`` imports them):

* sampling: :func:`bilinear_sampler`, :func:`sample_features4d`, :func:`sample_features5d`,
  :func:`support_offsets`, :func:`sample_query_support`, :func:`sample_local_patches`,
  :func:`local_correlation`, :class:`CorrBlock` (CoTracker2's global-correlation pyramid),
  :func:`get_points_on_a_grid`;
* embeddings: :func:`posenc`, :func:`get_1d_sincos_pos_embed_from_grid`,
  :func:`get_2d_sincos_pos_embed`, :func:`get_2d_embedding`;
* layers: :class:`Mlp`, :class:`ResidualBlock`, :class:`BasicEncoder`, :class:`Attention`,
  :class:`AttnBlock`, :class:`CrossAttnBlock`, :class:`EfficientUpdateFormer`.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Attention",
    "AttnBlock",
    "BasicEncoder",
    "CorrBlock",
    "CrossAttnBlock",
    "EfficientUpdateFormer",
    "Mlp",
    "ResidualBlock",
    "bilinear_sampler",
    "get_1d_sincos_pos_embed_from_grid",
    "get_2d_embedding",
    "get_2d_sincos_pos_embed",
    "get_points_on_a_grid",
    "local_correlation",
    "posenc",
    "sample_features4d",
    "sample_features5d",
    "sample_local_patches",
    "sample_query_support",
    "support_offsets",
]


# --------------------------------------------------------------------------- sampling


def bilinear_sampler(
    input: torch.Tensor, coords: torch.Tensor, align_corners: bool = True, padding_mode: str = "border"
) -> torch.Tensor:
    """``F.grid_sample`` with coordinates in pixel units instead of [-1, 1].

    Args:
        input: (B, C, H, W), or (B, C, T, H, W) for spatio-temporal sampling.
        coords: (B, ..., 2) rows (x, y) for a 4-D ``input``; (B, ..., 3) rows (t, x, y)
            for a 5-D one (note: t first, unlike ``grid_sample``'s (x, y, t)).
        align_corners: True: x in [0, W-1] from the first to the last pixel centre;
            False: x in [0, W] from the left edge to the right edge.
        padding_mode: ``grid_sample``'s padding mode ("border", "zeros", "reflection").
    Returns:
        ``grid_sample``'s output, (B, C, *coords.shape[1:-1]).
    """
    sizes = input.shape[2:]
    if len(sizes) not in (2, 3):
        raise ValueError(f"bilinear_sampler expects a 4-D or 5-D input, got {tuple(input.shape)}")
    if coords.shape[-1] != len(sizes):
        raise ValueError(f"coords must end in {len(sizes)} components, got {tuple(coords.shape)}")
    if len(sizes) == 3:
        coords = coords[..., [1, 2, 0]]  # (t, x, y) -> grid_sample's (x, y, t)
    # grid_sample's last coordinate component indexes the last spatial dim (W), etc.
    dims = list(reversed(sizes))
    if align_corners:
        scale = [2.0 / max(s - 1, 1) for s in dims]
    else:
        scale = [2.0 / s for s in dims]
    grid = coords * torch.tensor(scale, device=coords.device, dtype=coords.dtype) - 1
    return F.grid_sample(input, grid, mode="bilinear", align_corners=align_corners, padding_mode=padding_mode)


def sample_features4d(input: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear features of (B, C, H, W) maps at (B, R, 2) points (x, y) -> (B, R, C)."""
    feats = bilinear_sampler(input, coords[:, :, None])  # B C R 1
    return feats[..., 0].permute(0, 2, 1)


def sample_features5d(input: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Trilinear features of (B, T, C, H, W) maps at (B, R1, R2, 3) points (t, x, y) -> (B, R1, R2, C)."""
    feats = bilinear_sampler(input.permute(0, 2, 1, 3, 4), coords[:, :, :, None])  # B C R1 R2 1
    return feats[..., 0].permute(0, 2, 3, 1)


def support_offsets(radius: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """The (2r+1)^2 integer offsets (dx, dy) of a square patch, **x-major**.

    Row ``(dx + r) * (2r + 1) + (dy + r)`` holds (dx, dy): the x offset varies slowest,
    which is the order of the official checkpoints' correlation features.
    """
    d = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    dx, dy = torch.meshgrid(d, d, indexing="ij")
    return torch.stack([dx, dy], dim=-1).reshape(-1, 2)


def sample_query_support(
    fmaps: torch.Tensor, frames: torch.Tensor, coords: torch.Tensor, radius: int
) -> torch.Tensor:
    """Features of the (2r+1)^2 patch around each query point in its query frame.

    Args:
        fmaps: (B, T, C, H, W) feature maps.
        frames: (B, N) integer query frames in [0, T).
        coords: (B, N, 2) query positions (x, y) in ``fmaps`` pixels.
        radius: patch radius r.
    Returns:
        (B, N, P, C) with P = (2r+1)^2 in :func:`support_offsets` order. Equal to the
        official trilinear sampling at integer t (border padding), computed per frame.
    """
    b, t, c, h, w = fmaps.shape
    n = coords.shape[1]
    offsets = support_offsets(radius, coords.device, coords.dtype)  # P 2
    points = coords[:, :, None, :] + offsets  # B N P 2
    flat = fmaps.reshape(b * t, c, h, w)
    index = (frames.long() + torch.arange(b, device=frames.device)[:, None] * t).reshape(-1)  # B*N
    points = points.reshape(b * n, -1, 2)
    out = torch.empty(b * n, points.shape[1], c, device=fmaps.device, dtype=fmaps.dtype)
    for frame in torch.unique(index).tolist():
        sel = (index == frame).nonzero(as_tuple=True)[0]
        grid = points[sel].reshape(1, -1, 1, 2)
        feats = bilinear_sampler(flat[frame : frame + 1], grid)  # 1 C (n P) 1
        out[sel] = feats[0, :, :, 0].t().reshape(len(sel), -1, c)
    return out.reshape(b, n, -1, c)


def sample_local_patches(fmaps: torch.Tensor, coords: torch.Tensor, radius: int) -> torch.Tensor:
    """Features of the (2r+1)^2 patch around each point in every frame.

    Args:
        fmaps: (B, T, C, H, W) feature maps.
        coords: (B, T, N, 2) positions (x, y) in ``fmaps`` pixels.
    Returns:
        (B, T, N, P, C), border padding, :func:`support_offsets` order.
    """
    b, t, c, h, w = fmaps.shape
    n = coords.shape[2]
    offsets = support_offsets(radius, coords.device, coords.dtype)
    points = (coords[:, :, :, None, :] + offsets).reshape(b * t, n, -1, 2)
    feats = bilinear_sampler(fmaps.reshape(b * t, c, h, w), points)  # BT C N P
    return feats.reshape(b, t, c, n, -1).permute(0, 1, 3, 4, 2)


def local_correlation(patches: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """The 4-D local correlation volume of CoTracker3, flattened.

    Args:
        patches: (B, T, N, P, C) features around the current estimates
            (:func:`sample_local_patches`).
        support: (B, N, P, C) features around the queries (:func:`sample_query_support`).
    Returns:
        (B, T, N, P * P): dot products, index ``p * P + q`` for patch offset p and
        support offset q.
    """
    corr = torch.matmul(patches, support.transpose(-1, -2)[:, None])  # B T N P P
    return corr.flatten(-2)


class CorrBlock:
    """CoTracker2's correlation pyramid: track features against whole feature maps.

    Args:
        fmaps: (B, S, C, H, W) feature maps; ``num_levels`` 2x average-pooled levels.
        num_levels, radius: pyramid depth and sampling radius.
        multiple_track_feats: the track features are split in ``num_levels`` parts,
            one per level.
        padding_mode: ``grid_sample`` padding when sampling the correlation maps.

    Call :meth:`corr` with track features, then :meth:`sample` at the track positions.
    """

    def __init__(
        self,
        fmaps: torch.Tensor,
        num_levels: int = 4,
        radius: int = 4,
        multiple_track_feats: bool = False,
        padding_mode: str = "zeros",
    ):
        b, s, c, h, w = fmaps.shape
        self.S, self.C, self.H, self.W = s, c, h, w
        self.num_levels = num_levels
        self.radius = radius
        self.multiple_track_feats = multiple_track_feats
        self.padding_mode = padding_mode
        self.fmaps_pyramid = [fmaps]
        for _ in range(num_levels - 1):
            pooled = F.avg_pool2d(fmaps.reshape(b * s, c, *fmaps.shape[-2:]), 2, stride=2)
            fmaps = pooled.reshape(b, s, c, *pooled.shape[-2:])
            self.fmaps_pyramid.append(fmaps)
        self.corrs_pyramid: list[torch.Tensor] = []

    def corr(self, targets: torch.Tensor) -> None:
        """Correlate (B, S, N, C') track features with every level's maps."""
        b, s, n, c = targets.shape
        parts = targets.split(c // self.num_levels, dim=-1) if self.multiple_track_feats else None
        c = parts[0].shape[-1] if parts is not None else c
        if c != self.C or s != self.S:
            raise ValueError(f"track features (S={s}, C={c}) do not match the maps (S={self.S}, C={self.C})")
        self.corrs_pyramid = []
        for i, fmaps in enumerate(self.fmaps_pyramid):
            h, w = fmaps.shape[-2:]
            f1 = parts[i] if parts is not None else targets
            corrs = torch.matmul(f1, fmaps.reshape(b, s, c, h * w)).reshape(b, s, n, h, w)
            self.corrs_pyramid.append(corrs / math.sqrt(c))

    def sample(self, coords: torch.Tensor) -> torch.Tensor:
        """(B, S, N, 2) positions (level-0 pixels) -> (B*N, S, L*(2r+1)^2) correlations."""
        b, s, n, _ = coords.shape
        offsets = support_offsets(self.radius, coords.device, coords.dtype)
        out = []
        for i, corrs in enumerate(self.corrs_pyramid):
            h, w = corrs.shape[-2:]
            points = (coords.reshape(b * s * n, 1, 2) / 2**i + offsets).reshape(b * s * n, 1, -1, 2)
            sampled = bilinear_sampler(corrs.reshape(b * s * n, 1, h, w), points, padding_mode=self.padding_mode)
            out.append(sampled.reshape(b, s, n, -1))
        out = torch.cat(out, dim=-1)
        return out.permute(0, 2, 1, 3).reshape(b * n, s, -1).float()


def get_points_on_a_grid(
    size: int,
    extent: Sequence[float],
    center: Sequence[float] | None = None,
    device: torch.device | str | None = "cpu",
) -> torch.Tensor:
    """The official support/query grid: (1, size*size, 2) points (x, y), row-major.

    ``size`` x ``size`` points cover an (H, W) = ``extent`` rectangle centred at
    ``center`` = (cy, cx) (default: the middle), leaving a margin of W/64 at the border.
    """
    h, w = float(extent[0]), float(extent[1])
    if size == 1:
        return torch.tensor([w / 2, h / 2], device=device)[None, None]
    cy, cx = (h / 2, w / 2) if center is None else (float(center[0]), float(center[1]))
    margin = w / 64
    ys = torch.linspace(margin - h / 2 + cy, h / 2 + cy - margin, size, device=device)
    xs = torch.linspace(margin - w / 2 + cx, w / 2 + cx - margin, size, device=device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1).reshape(1, -1, 2)


# ------------------------------------------------------------------------- embeddings


def posenc(x: torch.Tensor, min_deg: int, max_deg: int) -> torch.Tensor:
    """``x`` followed by sin and cos of ``x * 2**k`` for k in [min_deg, max_deg).

    The frequency-major layout (k outer, component inner; all sines, then all cosines)
    is the one the CoTracker3 checkpoints expect: D -> D + 2 * D * (max_deg - min_deg).
    """
    if min_deg == max_deg:
        return x
    scales = 2.0 ** torch.arange(min_deg, max_deg, device=x.device, dtype=x.dtype)
    xb = (x[..., None, :] * scales[:, None]).flatten(-2)
    return torch.cat([x, torch.sin(xb), torch.sin(xb + 0.5 * math.pi)], dim=-1)


def get_1d_sincos_pos_embed_from_grid(embed_dim: int, pos: torch.Tensor) -> torch.Tensor:
    """Transformer sin/cos embedding of positions ``pos`` (any shape, M values) -> (1, M, D) float32.

    The first D/2 channels are sin(pos * w_k), the last D/2 cos(pos * w_k), with
    w_k = 10000 ** (-2k / D); computed in float64.
    """
    if embed_dim % 2:
        raise ValueError(f"embed_dim must be even, got {embed_dim}")
    omega = 1.0 / 10000 ** (torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0))
    out = pos.reshape(-1).to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)[None].float()


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int | tuple[int, int]) -> torch.Tensor:
    """2-D sin/cos embedding of an (H, W) grid -> (1, D, H, W).

    The first D/2 channels encode the column (x), the last D/2 the row (y), each as
    :func:`get_1d_sincos_pos_embed_from_grid` (CoTracker2's ``pos_emb`` buffer).
    """
    gh, gw = grid_size if isinstance(grid_size, tuple) else (grid_size, grid_size)
    ys, xs = torch.meshgrid(torch.arange(gh, dtype=torch.float32), torch.arange(gw, dtype=torch.float32), indexing="ij")
    emb = torch.cat(
        [get_1d_sincos_pos_embed_from_grid(embed_dim // 2, xs), get_1d_sincos_pos_embed_from_grid(embed_dim // 2, ys)],
        dim=2,
    )
    return emb.reshape(1, gh, gw, embed_dim).permute(0, 3, 1, 2)


def get_2d_embedding(xy: torch.Tensor, C: int, cat_coords: bool = True) -> torch.Tensor:
    """CoTracker2's flow embedding of (B, N, 2) vectors -> (B, N, 2C [+ 2]).

    For each of x and y: C channels alternating sin(v * f_k), cos(v * f_k) with
    f_k = 2k * 1000 / C; the raw (x, y) first when ``cat_coords``.
    """
    b, n, d = xy.shape
    if d != 2:
        raise ValueError(f"get_2d_embedding expects (B, N, 2), got {tuple(xy.shape)}")
    freq = torch.arange(0, C, 2, device=xy.device, dtype=torch.float32) * (1000.0 / C)
    parts = []
    for v in (xy[..., 0:1], xy[..., 1:2]):
        arg = v * freq  # in xy's dtype (at least float32); the embedding itself is float32
        parts.append(torch.stack([torch.sin(arg), torch.cos(arg)], dim=-1).reshape(b, n, C).float())
    pe = torch.cat(parts, dim=2)
    if cat_coords:
        pe = torch.cat([xy, pe], dim=2)
    return pe


# ----------------------------------------------------------------------------- layers


class Mlp(nn.Module):
    """Linear -> activation -> Linear (no dropout at inference)."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        bias: bool = True,
    ):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _norm2d(kind: str, channels: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(num_groups=channels // 8, num_channels=channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}")


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with a (possibly strided, 1x1-projected) skip connection."""

    def __init__(self, in_planes: int, planes: int, norm_fn: str = "group", stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.norm1 = _norm2d(norm_fn, planes)
        self.norm2 = _norm2d(norm_fn, planes)
        if stride == 1:
            self.downsample = None
        else:
            self.norm3 = _norm2d(norm_fn, planes)
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride), self.norm3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.relu(self.norm2(self.conv2(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return self.relu(x + y)


class BasicEncoder(nn.Module):
    """The CNN feature encoder: (B, 3, H, W) in [-1, 1] -> (B, output_dim, H/stride, W/stride).

    A 7x7 stride-2 stem and four stages of two residual blocks (widths D/2, 3D/4, D, D;
    strides 1, 2, 2, 2) whose outputs are bilinearly resized (align_corners=True) to
    1/stride of the input, concatenated and fused by a 3x3 and a 1x1 convolution.
    Instance norm throughout (per image, so frames are independent).
    """

    def __init__(self, input_dim: int = 3, output_dim: int = 128, stride: int = 4):
        super().__init__()
        self.stride = stride
        self.norm_fn = "instance"
        self.in_planes = output_dim // 2
        self.norm1 = nn.InstanceNorm2d(self.in_planes)
        self.norm2 = nn.InstanceNorm2d(output_dim * 2)
        self.conv1 = nn.Conv2d(input_dim, self.in_planes, kernel_size=7, stride=2, padding=3)
        self.relu1 = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(output_dim // 2, stride=1)
        self.layer2 = self._make_layer(output_dim // 4 * 3, stride=2)
        self.layer3 = self._make_layer(output_dim, stride=2)
        self.layer4 = self._make_layer(output_dim, stride=2)
        self.conv2 = nn.Conv2d(output_dim * 3 + output_dim // 4, output_dim * 2, kernel_size=3, padding=1)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(output_dim * 2, output_dim, kernel_size=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, dim: int, stride: int = 1) -> nn.Sequential:
        layers = nn.Sequential(
            ResidualBlock(self.in_planes, dim, self.norm_fn, stride=stride),
            ResidualBlock(dim, dim, self.norm_fn, stride=1),
        )
        self.in_planes = dim
        return layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = self.relu1(self.norm1(self.conv1(x)))
        a = self.layer1(x)
        b = self.layer2(a)
        c = self.layer3(b)
        d = self.layer4(c)
        size = (h // self.stride, w // self.stride)
        feats = [F.interpolate(f, size, mode="bilinear", align_corners=True) for f in (a, b, c, d)]
        x = self.relu2(self.norm2(self.conv2(torch.cat(feats, dim=1))))
        return self.conv3(x)


def _mask_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention bias: 0 where ``mask`` is True, the most negative finite value elsewhere.

    Like the official code, a fully masked row therefore attends uniformly.
    """
    return (~mask).to(dtype) * torch.finfo(dtype).min


class Attention(nn.Module):
    """Multi-head (cross-)attention with a fused key/value projection.

    Args:
        query_dim: width of the queries (and of the output).
        context_dim: width of the keys/values source (default ``query_dim``).
        num_heads, dim_head: heads and per-head width; the scale is dim_head ** -0.5.
        qkv_bias: biases on the q and kv projections.
    """

    def __init__(
        self,
        query_dim: int,
        context_dim: int | None = None,
        num_heads: int = 8,
        dim_head: int = 48,
        qkv_bias: bool = False,
    ):
        super().__init__()
        inner_dim = dim_head * num_heads
        context_dim = query_dim if context_dim is None else context_dim
        self.scale = dim_head**-0.5
        self.heads = self.num_heads = num_heads
        self.dim_head = dim_head
        self.to_q = nn.Linear(query_dim, inner_dim, bias=qkv_bias)
        self.to_kv = nn.Linear(context_dim, inner_dim * 2, bias=qkv_bias)
        self.to_out = nn.Linear(inner_dim, query_dim)

    def project_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, heads, N2, dim_head) of a (B, N2, Dc) context."""
        b, n2, _ = context.shape
        k, v = self.to_kv(context).chunk(2, dim=-1)
        k = k.reshape(b, n2, self.heads, self.dim_head).transpose(1, 2)
        v = v.reshape(b, n2, self.heads, self.dim_head).transpose(1, 2)
        return k, v

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        attn_bias: torch.Tensor | None = None,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x (B, N1, Dq), context (B, N2, Dc), attn_bias broadcastable to (B, heads, N1, N2).

        ``kv``: keys and values from :meth:`project_kv`, instead of ``context``.
        """
        b, n1, _ = x.shape
        q = self.to_q(x).reshape(b, n1, self.heads, self.dim_head).transpose(1, 2)
        k, v = kv if kv is not None else self.project_kv(x if context is None else context)
        if attn_bias is not None and attn_bias.dtype != q.dtype:
            # clamp first: float32's most negative value is -inf in bf16, and a fully masked
            # row would then turn into NaN instead of attending uniformly
            attn_bias = attn_bias.clamp(min=torch.finfo(q.dtype).min).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, scale=self.scale)
        return self.to_out(out.transpose(1, 2).reshape(b, n1, -1))


def _tanh_gelu() -> nn.Module:
    return nn.GELU(approximate="tanh")


class AttnBlock(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)); x + mlp(LN(x)) (LayerNorms without affine)."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        attn_class: Callable[..., nn.Module] = Attention,
        mlp_ratio: float = 4.0,
        **block_kwargs,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = attn_class(hidden_size, num_heads=num_heads, qkv_bias=True, **block_kwargs)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio), act_layer=_tanh_gelu)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, N, D); mask (B, N) bool: token i attends to j iff both are True."""
        bias = None
        if mask is not None:
            bias = _mask_bias(mask[:, None, :, None] & mask[:, None, None, :], x.dtype)
        x = x + self.attn(self.norm1(x), attn_bias=bias)
        return x + self.mlp(self.norm2(x))


class CrossAttnBlock(nn.Module):
    """Pre-norm cross-attention block: x + attn(LN(x), LN_affine(context)); x + mlp(LN(x))."""

    def __init__(self, hidden_size: int, context_dim: int, num_heads: int = 1, mlp_ratio: float = 4.0, **block_kwargs):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.norm_context = nn.LayerNorm(hidden_size)
        self.cross_attn = Attention(
            hidden_size, context_dim=context_dim, num_heads=num_heads, qkv_bias=True, **block_kwargs
        )
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio), act_layer=_tanh_gelu)

    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised and projected keys/values of ``context``, reusable over chunks of ``x``."""
        return self.cross_attn.project_kv(self.norm_context(context))

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x (B, N1, D) attends to context (B, N2, Dc) (or to ``kv`` from :meth:`context_kv`).

        Args:
            mask: (B, N1) bool; rows of x that are False attend uniformly (the official
                behaviour of a masked query row).
            context_mask: (B, N2) bool; context tokens that are False are not attended to.

        The official block takes one ``mask`` and guesses its meaning from its length
        (rows if it equals N1, keys otherwise); here the two are explicit.
        """
        bias = None
        if mask is not None:
            bias = _mask_bias(mask[:, None, :, None], x.dtype)
        if context_mask is not None:
            cbias = _mask_bias(context_mask[:, None, None, :], x.dtype)
            bias = cbias if bias is None else (bias + cbias).clamp(min=torch.finfo(x.dtype).min)
        if kv is None:
            kv = self.context_kv(context)
        x = x + self.cross_attn(self.norm1(x), attn_bias=bias, kv=kv)
        return x + self.mlp(self.norm2(x))


def _chunked(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, dim: int, chunk: int | None) -> torch.Tensor:
    """``fn(x)`` applied to slices of ``x`` along ``dim`` (fn must act on them independently)."""
    if chunk is None or x.shape[dim] <= chunk:
        return fn(x)
    return torch.cat([fn(part) for part in x.split(chunk, dim=dim)], dim=dim)


class EfficientUpdateFormer(nn.Module):
    """The CoTracker track-update transformer with virtual tracks.

    Tokens are (B, N, T, D): one per point and frame. Each of ``time_depth`` layers
    attends over time within each track; every ``time_depth // space_depth`` layers the
    ``num_virtual_tracks`` learned virtual tracks first read all points of a frame
    (virtual2point), attend among themselves (virtual), and are then read back by the
    points (point2virtual). Points therefore only interact through the virtual tracks.

    ``point_chunk`` (in :meth:`forward` / :meth:`forward_tokens`) processes the
    per-point parts (time attention, MLPs, point2virtual) a chunk of points at a time;
    the virtual tracks still read all points, so the result does not depend on it.

    Args mirror the official constructor; CoTracker3 uses space_depth=time_depth=3,
    input_dim=1110, output_dim=4 and ``linear_layer_for_vis_conf=True`` (2 flow outputs
    from ``flow_head``, visibility and confidence from ``vis_conf_head``); CoTracker2
    uses 6/6, 456, output_dim=130 and a single ``flow_head``.
    """

    def __init__(
        self,
        space_depth: int = 6,
        time_depth: int = 6,
        input_dim: int = 320,
        hidden_size: int = 384,
        num_heads: int = 8,
        output_dim: int = 130,
        mlp_ratio: float = 4.0,
        num_virtual_tracks: int = 64,
        add_space_attn: bool = True,
        linear_layer_for_vis_conf: bool = False,
    ):
        super().__init__()
        self.out_channels = 2
        self.num_heads = num_heads
        self.hidden_size = hidden_size
        self.input_transform = nn.Linear(input_dim, hidden_size, bias=True)
        self.linear_layer_for_vis_conf = linear_layer_for_vis_conf
        if linear_layer_for_vis_conf:
            self.flow_head = nn.Linear(hidden_size, output_dim - 2, bias=True)
            self.vis_conf_head = nn.Linear(hidden_size, 2, bias=True)
        else:
            self.flow_head = nn.Linear(hidden_size, output_dim, bias=True)
        self.num_virtual_tracks = num_virtual_tracks
        # (sic) the checkpoints' name
        self.virual_tracks = nn.Parameter(torch.randn(1, num_virtual_tracks, 1, hidden_size))
        self.add_space_attn = add_space_attn
        self.time_blocks = nn.ModuleList(
            [AttnBlock(hidden_size, num_heads, mlp_ratio=mlp_ratio) for _ in range(time_depth)]
        )
        if add_space_attn:
            self.space_virtual_blocks = nn.ModuleList(
                [AttnBlock(hidden_size, num_heads, mlp_ratio=mlp_ratio) for _ in range(space_depth)]
            )
            self.space_point2virtual_blocks = nn.ModuleList(
                [CrossAttnBlock(hidden_size, hidden_size, num_heads, mlp_ratio=mlp_ratio) for _ in range(space_depth)]
            )
            self.space_virtual2point_blocks = nn.ModuleList(
                [CrossAttnBlock(hidden_size, hidden_size, num_heads, mlp_ratio=mlp_ratio) for _ in range(space_depth)]
            )
            if time_depth < space_depth:
                raise ValueError("time_depth must be >= space_depth")
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.flow_head.weight, std=0.001)
        if self.linear_layer_for_vis_conf:
            nn.init.trunc_normal_(self.vis_conf_head.weight, std=0.001)

    def _space_layer(self, i: int) -> bool:
        if not hasattr(self, "space_virtual_blocks"):
            return False
        return i % (len(self.time_blocks) // len(self.space_virtual_blocks)) == 0

    def forward(
        self,
        input_tensor: torch.Tensor,
        mask: torch.Tensor | None = None,
        add_space_attn: bool = True,
        point_chunk: int | None = None,
    ) -> torch.Tensor:
        """(B, N, T, input_dim) -> (B, N, T, output_dim).

        Args:
            mask: optional (B*T, N) bool (CoTracker2's attention mask): False points are
                not read by the virtual tracks, and attend uniformly to them.
            add_space_attn: False skips the virtual-track layers.
            point_chunk: points per chunk for the per-point computations (exact).
        """
        tokens = _chunked(self.input_transform, input_tensor, 1, point_chunk)
        return self.forward_tokens(tokens, mask=mask, add_space_attn=add_space_attn, point_chunk=point_chunk)

    def forward_tokens(
        self,
        tokens: torch.Tensor,
        mask: torch.Tensor | None = None,
        add_space_attn: bool = True,
        point_chunk: int | None = None,
    ) -> torch.Tensor:
        """:meth:`forward` from (B, N, T, hidden) tokens (``input_transform`` already applied)."""
        b, n, t, d = tokens.shape
        virtual = self.virual_tracks.to(tokens.dtype).expand(b, -1, t, -1)
        nv = virtual.shape[1]

        def time_block(block: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
            return lambda x: block(x.reshape(-1, t, d)).reshape(b, -1, t, d)

        j = 0
        for i, block in enumerate(self.time_blocks):
            tokens = _chunked(time_block(block), tokens, 1, point_chunk)
            virtual = time_block(block)(virtual)
            if add_space_attn and self._space_layer(i):
                points = tokens.permute(0, 2, 1, 3).reshape(b * t, n, d)  # (B T) N D
                virt = virtual.permute(0, 2, 1, 3).reshape(b * t, nv, d)
                virt = self.space_virtual2point_blocks[j](virt, points, context_mask=mask)
                virt = self.space_virtual_blocks[j](virt)
                p2v = self.space_point2virtual_blocks[j]
                kv = p2v.context_kv(virt)
                if mask is None:
                    points = _chunked(lambda p, p2v=p2v, kv=kv: p2v(p, kv=kv), points, 1, point_chunk)
                else:
                    points = p2v(points, mask=mask, kv=kv)
                tokens = points.reshape(b, t, n, d).permute(0, 2, 1, 3)
                virtual = virt.reshape(b, t, nv, d).permute(0, 2, 1, 3)
                j += 1

        def head(x: torch.Tensor) -> torch.Tensor:
            out = self.flow_head(x)
            if self.linear_layer_for_vis_conf:
                out = torch.cat([out, self.vis_conf_head(x)], dim=-1)
            return out

        return _chunked(head, tokens, 1, point_chunk)


def num_sliding_windows(num_frames: int, window_len: int) -> int:
    """Windows of ``window_len`` frames starting every ``window_len // 2`` that cover a video."""
    step = window_len // 2
    return max(1, math.ceil((num_frames - window_len) / step) + 1)


def carried_frames(x: torch.Tensor, start: int, overlap: int, length: int) -> torch.Tensor:
    """Frames ``start .. start + overlap - 1`` of (B, T, ...) ``x``, the last one repeated up to
    ``length`` frames: a sliding window's estimates carried into the next window."""
    prev = x[:, start : start + overlap]
    return torch.cat([prev, prev[:, -1:].expand(-1, length - overlap, *prev.shape[2:])], dim=1)


def check_query_frames(frames: torch.Tensor, t: int) -> torch.Tensor:
    """``frames`` (B, N) integer query frames; raise unless all lie in [0, t)."""
    if frames.numel() and (frames.min() < 0 or frames.max() >= t):
        raise ValueError(f"query frames must be in [0, {t - 1}], got {frames.min().item()}..{frames.max().item()}")
    return frames
