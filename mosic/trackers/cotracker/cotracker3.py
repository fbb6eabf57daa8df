"""CoTracker3 (offline and online), state-dict compatible with the official checkpoints.

An independent implementation of Karaev et al., *CoTracker3: Simpler and Better Point
Tracking by Pseudo-Labelling Real Videos* (2024), written from the architecture of
facebookresearch/co-tracker (commit 82e02e8). The parameter names and shapes are those of
``scaled_offline.pth`` / ``scaled_online.pth`` (188 tensors, 25.4 M parameters; the
``time_emb`` buffer is (1, 60, 1110) offline and (1, 16, 1110) online). Those checkpoints
are CC BY-NC 4.0 (non-commercial); see :mod:`mosic.trackers.cotracker.weights`.

Model in brief: every frame goes through a CNN (:class:`~.blocks.BasicEncoder`) to
128-d L2-normalised features at 1/4 resolution, pooled into a 4-level pyramid. Each
query keeps the features of the 7x7 patch around it in its query frame; at every
iteration and frame the 7x7 patch around the current estimate is correlated with it
(a 49x49 volume per level, embedded by ``corr_mlp``), concatenated with the visibility
and confidence logits and a sin/cos encoding of the motion to the neighbouring frames,
and the update transformer predicts increments of position, visibility and confidence.

Differences from the official code (same numbers, up to float round-off):

* batched over videos (the official offline model fails for B > 1, co-tracker issue 163);
* ``point_chunk`` bounds memory: the per-point work (correlation, per-track attention,
  MLPs) runs a chunk of points at a time, while the virtual tracks still read all points,
  so the output does not depend on the chunk size;
* frames are resized to ``model_resolution`` inside :meth:`CoTracker3Base.encode`, a
  chunk of frames at a time; the online model pads the feature maps instead of the video;
* ``amp_dtype`` runs the convolutions, MLPs and transformer under autocast while the
  sampling, the correlation inputs, the coordinates and the logits stay float32;
* the online model (:class:`CoTracker3Online`) processes a whole video in one call with
  the official sliding windows, also for videos shorter than half a window (the official
  ``forward`` returns zeros for T <= window_len / 2);
* nothing seeds torch at import.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import (
    BasicEncoder,
    carried_frames,
    check_query_frames,
    num_sliding_windows,
    EfficientUpdateFormer,
    Mlp,
    get_1d_sincos_pos_embed_from_grid,
    local_correlation,
    posenc,
    sample_local_patches,
    sample_query_support,
)

__all__ = ["CoTracker3Base", "CoTracker3Offline", "CoTracker3Online"]


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class CoTracker3Base(nn.Module):
    """Shared architecture of the offline and online CoTracker3 models.

    Args:
        window_len: length of the ``time_emb`` buffer (60 offline, 16 online).
        stride: feature stride (4).
        corr_radius: radius of the support and correlation patches (3: 7x7).
        corr_levels: pyramid levels (4).
        num_virtual_tracks: virtual tracks of the update transformer (64).
        model_resolution: (H, W) the frames are resized to (384, 512). Coordinates in
            and out of :meth:`forward` are pixels of this resolution.
        add_space_attn: use the virtual-track (cross-point) layers.
        linear_layer_for_vis_conf: separate visibility/confidence head (True).
    """

    def __init__(
        self,
        window_len: int = 8,
        stride: int = 4,
        corr_radius: int = 3,
        corr_levels: int = 4,
        num_virtual_tracks: int = 64,
        model_resolution: Sequence[int] = (384, 512),
        add_space_attn: bool = True,
        linear_layer_for_vis_conf: bool = True,
    ):
        super().__init__()
        self.window_len = window_len
        self.stride = stride
        self.corr_radius = corr_radius
        self.corr_levels = corr_levels
        self.hidden_dim = 256
        self.latent_dim = 128
        self.num_virtual_tracks = num_virtual_tracks
        self.model_resolution = (int(model_resolution[0]), int(model_resolution[1]))
        if self.model_resolution[0] % stride or self.model_resolution[1] % stride:
            raise ValueError(f"model_resolution {self.model_resolution} must be a multiple of the stride {stride}")
        self.add_space_attn = add_space_attn
        self.linear_layer_for_vis_conf = linear_layer_for_vis_conf
        self.fnet = BasicEncoder(input_dim=3, output_dim=self.latent_dim, stride=stride)
        p = (2 * corr_radius + 1) ** 2
        # visibility, confidence, 256 per correlation level, posenc of 4 motion components
        self.input_dim = 2 + 256 * corr_levels + 4 * (1 + 2 * 10)
        self.updateformer = EfficientUpdateFormer(
            space_depth=3,
            time_depth=3,
            input_dim=self.input_dim,
            hidden_size=384,
            output_dim=4,
            mlp_ratio=4.0,
            num_virtual_tracks=num_virtual_tracks,
            add_space_attn=add_space_attn,
            linear_layer_for_vis_conf=linear_layer_for_vis_conf,
        )
        self.corr_mlp = Mlp(in_features=p * p, hidden_features=384, out_features=256)
        grid = torch.linspace(0, window_len - 1, window_len)
        self.register_buffer("time_emb", get_1d_sincos_pos_embed_from_grid(self.input_dim, grid))

    @property
    def compute_dtype(self) -> torch.dtype:
        """dtype of the parameters (float32 normally); features, coordinates and logits use it."""
        return self.corr_mlp.fc1.weight.dtype

    def forward(
        self,
        video: torch.Tensor,
        queries: torch.Tensor,
        iters: int = 6,
        point_chunk: int | None = None,
        frames_per_chunk: int = 16,
        amp_dtype: torch.dtype | None = None,
        add_space_attn: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Track queries jointly through whole videos: :meth:`encode`, then the subclass's
        ``forward_features`` (everything that depends on the queries).

        Args:
            video: (B, T, 3, H, W) values 0..255, normally at ``model_resolution``
                (other sizes are resized, the coordinates stay those of ``model_resolution``).
            queries: (B, N, 3) rows (t, x, y), x and y in ``model_resolution`` pixels.
            iters: refinement iterations (the predictors use 6).
            point_chunk: points processed together in the per-point parts (exact).
        Returns:
            coords (B, T, N, 2) pixels, visibility and confidence probabilities (B, T, N).
        """
        pyramid = self.encode(video, frames_per_chunk, amp_dtype)
        return self.forward_features(pyramid, queries, iters, point_chunk, amp_dtype, add_space_attn)

    # ----------------------------------------------------------------- features

    def encode(
        self,
        video: torch.Tensor,
        frames_per_chunk: int = 16,
        amp_dtype: torch.dtype | None = None,
    ) -> list[torch.Tensor]:
        """Feature pyramid of a video.

        Args:
            video: (B, T, 3, H, W), values 0..255 (any dtype). Frames not at
                ``model_resolution`` are resized (bilinear, align_corners=True) first.
            frames_per_chunk: frames per CNN call (memory only).
        Returns:
            ``corr_levels`` tensors (:attr:`compute_dtype`) (B, T, 128, H/4/2^l, W/4/2^l), the first
            L2-normalised over channels, the others 2x2 average-pooled from it.
        """
        b, t = video.shape[:2]
        hm, wm = self.model_resolution
        dtype = self.compute_dtype
        feats = []
        for frames in video.reshape(b * t, *video.shape[2:]).split(frames_per_chunk):
            x = frames.to(dtype)
            if tuple(x.shape[-2:]) != (hm, wm):
                x = F.interpolate(x, (hm, wm), mode="bilinear", align_corners=True)
            x = 2 * (x / 255.0) - 1.0
            with _autocast(x.device, amp_dtype):
                f = self.fnet(x)
            f = f.to(dtype)
            f = f / torch.sqrt(torch.clamp(torch.sum(f * f, dim=1, keepdim=True), min=1e-12))
            feats.append(f)
        fmap = torch.cat(feats).reshape(b, t, self.latent_dim, hm // self.stride, wm // self.stride)
        pyramid = [fmap]
        for _ in range(self.corr_levels - 1):
            pooled = F.avg_pool2d(fmap.reshape(b * t, *fmap.shape[2:]), 2, stride=2)
            fmap = pooled.reshape(b, t, *pooled.shape[1:])
            pyramid.append(fmap)
        return pyramid

    def query_support(
        self, pyramid: Sequence[torch.Tensor], frames: torch.Tensor, coords: torch.Tensor
    ) -> list[torch.Tensor]:
        """Per level, (B, N, 49, 128) features of the 7x7 patch around each query.

        ``frames`` (B, N) integer query frames, ``coords`` (B, N, 2) in level-0 feature pixels.
        """
        return [
            sample_query_support(fmap, frames, coords / 2**i, self.corr_radius) for i, fmap in enumerate(pyramid)
        ]

    def time_embedding(self, t: int) -> torch.Tensor:
        """(1, t, D): the ``time_emb`` buffer, linearly resampled when t differs from its length."""
        emb = self.time_emb
        if t == emb.shape[1]:
            return emb
        return F.interpolate(emb.float().permute(0, 2, 1), size=t, mode="linear").permute(0, 2, 1)

    def _motion_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        """(B, T, N, 2) feature-pixel tracks -> (B, T, N, 84) encoding of the motion to t-1 and t+1."""
        to_next = F.pad(coords[:, :-1] - coords[:, 1:], (0, 0, 0, 0, 0, 1))
        to_prev = F.pad(coords[:, 1:] - coords[:, :-1], (0, 0, 0, 0, 1, 0))
        hm, wm = self.model_resolution
        scale = torch.tensor([wm / self.stride, hm / self.stride], device=coords.device, dtype=coords.dtype)
        return posenc(torch.cat([to_next / scale, to_prev / scale], dim=-1), min_deg=0, max_deg=10)

    # ----------------------------------------------------------------- refinement

    def refine(
        self,
        pyramid: Sequence[torch.Tensor],
        support: Sequence[torch.Tensor],
        coords: torch.Tensor,
        vis: torch.Tensor,
        conf: torch.Tensor,
        iters: int = 6,
        point_chunk: int | None = None,
        amp_dtype: torch.dtype | None = None,
        add_space_attn: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``iters`` updates of tracks over the frames of ``pyramid``.

        Args:
            pyramid: per level (B, T, C, h, w).
            support: per level (B, N, 49, C) query patch features.
            coords: (B, T, N, 2) initial positions in level-0 feature pixels.
            vis, conf: (B, T, N) initial visibility and confidence logits.
        Returns:
            coords (B, T, N, 2) feature pixels, vis and conf logits (B, T, N), in :attr:`compute_dtype`.
        """
        t, n = coords.shape[1:3]
        device = coords.device
        chunk = n if point_chunk is None else max(1, int(point_chunk))
        time_emb = self.time_embedding(t).to(device)
        dtype = self.compute_dtype
        coords, vis, conf = coords.to(dtype), vis.to(dtype), conf.to(dtype)
        for _ in range(iters):
            coords = coords.detach()
            motion = self._motion_encoding(coords)
            tokens = []
            for s in range(0, n, chunk):
                c = coords[:, :, s : s + chunk]
                corr_embs = []
                for i, fmap in enumerate(pyramid):
                    patches = sample_local_patches(fmap, c / 2**i, self.corr_radius)
                    with _autocast(device, amp_dtype):
                        corr = local_correlation(patches, support[i][:, s : s + chunk])
                        corr_embs.append(self.corr_mlp(corr).to(dtype))
                sl = slice(s, s + chunk)
                x = torch.cat([vis[:, :, sl, None], conf[:, :, sl, None], *corr_embs, motion[:, :, sl]], dim=-1)
                x = x.permute(0, 2, 1, 3)  # B n T D
                x = x + time_emb
                with _autocast(device, amp_dtype):
                    tokens.append(self.updateformer.input_transform(x))
            tokens = torch.cat(tokens, dim=1) if len(tokens) > 1 else tokens[0]
            with _autocast(device, amp_dtype):
                delta = self.updateformer.forward_tokens(tokens, add_space_attn=add_space_attn, point_chunk=chunk)
            delta = delta.to(dtype).permute(0, 2, 1, 3)  # B T N 4
            coords = coords + delta[..., :2]
            vis = vis + delta[..., 2]
            conf = conf + delta[..., 3]
        return coords, vis, conf

    def _check_queries(self, queries: torch.Tensor, t: int) -> torch.Tensor:
        return check_query_frames(queries[..., 0].long(), t)


class CoTracker3Offline(CoTracker3Base):
    """Offline CoTracker3: all frames of a video in one window (``scaled_offline.pth``)."""

    def __init__(self, window_len: int = 60, **kwargs):
        super().__init__(window_len=window_len, **kwargs)

    def forward_features(
        self,
        pyramid: Sequence[torch.Tensor],
        queries: torch.Tensor,
        iters: int = 6,
        point_chunk: int | None = None,
        amp_dtype: torch.dtype | None = None,
        add_space_attn: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward` from the video's feature pyramid (:meth:`encode`): everything that
        depends on the queries. The pyramid depends on each frame alone, so clips that share
        frames can share it (``pyramid[level][:, frame_indices]``)."""
        b, t = pyramid[0].shape[:2]
        n = queries.shape[1]
        frames = self._check_queries(queries, t)
        q = queries[..., 1:3].to(self.compute_dtype) / self.stride
        support = self.query_support(pyramid, frames, q)
        coords = q[:, None].expand(b, t, n, 2)
        zeros = torch.zeros(b, t, n, device=pyramid[0].device, dtype=q.dtype)
        coords, vis, conf = self.refine(
            pyramid, support, coords, zeros, zeros, iters, point_chunk, amp_dtype, add_space_attn
        )
        return coords * self.stride, torch.sigmoid(vis), torch.sigmoid(conf)


class CoTracker3Online(CoTracker3Base):
    """Online CoTracker3 (``scaled_online.pth``): overlapping windows of ``window_len`` frames.

    :meth:`forward` processes a whole video in one call, exactly as the official model's
    sliding-window ``forward``: windows start every ``window_len // 2`` frames; a window
    starts from the previous window's estimates on the overlapping frames for the points
    queried before the overlap ends (the last overlapping estimate repeated over the new
    frames), from the query position otherwise; points queried after the window end take
    part with zero query features. The video is padded at the end by repeating its last
    frame so that the last window is full.
    """

    def __init__(self, window_len: int = 16, **kwargs):
        super().__init__(window_len=window_len, **kwargs)

    def num_windows(self, t: int) -> int:
        return num_sliding_windows(t, self.window_len)

    def forward_features(
        self,
        pyramid: Sequence[torch.Tensor],
        queries: torch.Tensor,
        iters: int = 6,
        point_chunk: int | None = None,
        amp_dtype: torch.dtype | None = None,
        add_space_attn: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward` from the video's feature pyramid (see :meth:`CoTracker3Offline.forward_features`)."""
        b, t = pyramid[0].shape[:2]
        n = queries.shape[1]
        s = self.window_len
        step = s // 2
        overlap = s - step
        frames = self._check_queries(queries, t)
        q = queries[..., 1:3].to(self.compute_dtype) / self.stride
        support = self.query_support(pyramid, frames, q)
        windows = self.num_windows(t)
        total = (windows - 1) * step + s
        if total > t:  # repeat the last frame (its features: the CNN works per frame)
            pyramid = [torch.cat([f, f[:, -1:].expand(-1, total - t, -1, -1, -1)], dim=1) for f in pyramid]

        coords_out = q.new_zeros(b, t, n, 2)
        vis_out = q.new_zeros(b, t, n)
        conf_out = q.new_zeros(b, t, n)
        coords = q[:, None].expand(b, s, n, 2)
        vis = q.new_zeros(b, s, n)
        conf = q.new_zeros(b, s, n)
        for ind in range(0, windows * step, step):
            if ind > 0:
                copy = (frames < ind + overlap)[:, None, :]  # B 1 N
                coords = torch.where(copy[..., None], carried_frames(coords_out, ind, overlap, s) / self.stride, coords)
                vis = torch.where(copy, carried_frames(vis_out, ind, overlap, s), vis)
                conf = torch.where(copy, carried_frames(conf_out, ind, overlap, s), conf)
            active = (frames < ind + s).to(support[0].dtype)[:, :, None, None]  # B N 1 1
            c, v, cf = self.refine(
                [f[:, ind : ind + s] for f in pyramid],
                [sup * active for sup in support],
                coords,
                vis,
                conf,
                iters,
                point_chunk,
                amp_dtype,
                add_space_attn,
            )
            keep = min(t - ind, s)
            coords_out[:, ind : ind + keep] = c[:, :keep] * self.stride
            vis_out[:, ind : ind + keep] = v[:, :keep]
            conf_out[:, ind : ind + keep] = cf[:, :keep]
        return coords_out, torch.sigmoid(vis_out), torch.sigmoid(conf_out)
