"""CoTracker2, state-dict compatible with the official ``cotracker2.pth``, and the ``cotracker2`` tracker.

An independent implementation of Karaev et al., *CoTracker: It is Better to Track
Together* (ECCV 2024), version 2 (the sliding-window model of facebookresearch/co-tracker,
commit 82e02e8). Module names and shapes are those of ``cotracker2.pth`` (321 tensors,
45.5 M parameters; buffers ``time_emb`` (1, 8, 456) and ``pos_emb`` (1, 456, 96, 128)).
The checkpoint is CC BY-NC 4.0 (non-commercial); see :mod:`mosic.trackers.cotracker.weights`.

Model in brief. Frames are resized to ``model_resolution`` (384x512), normalised to
[-1, 1] and encoded by a CNN (:class:`~.blocks.BasicEncoder`) into 128-d features at
stride 4, pooled into a 4-level pyramid. A query keeps the feature at its position in
its query frame. The video is processed in windows of 8 frames every 4 frames; in each
window the tracks are refined 6 times: per point and frame, the correlation of the track
feature with the 7x7 neighbourhood (x-major) around the current estimate at every level
(196 values), a sin/cos embedding of the motion since the window's first frame (130), the
track feature (128), the track mask and the visibility logit (2) are summed with a
positional embedding of the point's position in the window's first frame and a time
embedding (456), and the update transformer (time attention per track, 64 virtual tracks
across points) predicts position increments and track-feature updates; the visibility
logit is read from the final track feature. A window starts from the previous window's
estimates on the 4 overlapping frames (the last repeated over the new frames) for points
queried before the overlap ends; points queried after a window ends take part in it with
zero features and are masked out of the cross-point attention.

Differences from the official code (same numbers up to float round-off):

* :meth:`CoTracker2.forward` processes a whole video in one call, with the windows of the
  official online predictor fed the video as ``online_demo.py`` feeds it (identical to the
  official offline ``forward`` of CoTracker2, which uses the same windows); videos shorter
  than 5 frames get one window (the official code returns zeros or nothing);
* batched over videos (B > 1) and chunked over points (``point_chunk``): only per-point
  work is chunked (correlations, per-track attention, MLPs, the point-to-virtual reads);
  the virtual tracks read every point at once, so the result does not depend on the chunk;
* correlations are computed from bilinearly sampled 7x7 feature patches (the dot product
  commutes with bilinear interpolation, so this equals sampling the full correlation
  volume, which is never built: memory grows with points x 49, not points x H x W);
* the frames are encoded window by window (memory does not grow with the video length);
* the attention mask is explicit (the official ``CrossAttnBlock`` guesses from its length
  whether a mask is over queries or keys, which misreads it when exactly 64 points are tracked);
* ``amp_dtype`` runs the CNN and the transformer under autocast (bf16 on GPUs) while
  sampling, correlations, coordinates, the residual stream and the logits stay float32;
* nothing seeds torch at import.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...backbones.weights import load_state_dict_strict
from ..base import register_tracker
from ..catalog import CARDS
from .blocks import (
    BasicEncoder,
    carried_frames,
    check_query_frames,
    num_sliding_windows,
    EfficientUpdateFormer,
    get_1d_sincos_pos_embed_from_grid,
    get_2d_embedding,
    get_2d_sincos_pos_embed,
    sample_features4d,
    sample_local_patches,
    sample_query_support,
)
from .tracker import CoTrackerTrackerBase
from .weights import WEIGHT_URLS, load_cotracker_weights, resolve_state_dict

__all__ = ["CoTracker2", "CoTracker2Tracker"]

#: the resolution cotracker2.pth was trained at (its ``pos_emb`` covers its stride-4 grid)
OFFICIAL_RESOLUTION = (384, 512)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None or dtype in (torch.float32, torch.float64):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class CoTracker2(nn.Module):
    """The CoTracker2 network (``cotracker2.pth`` format).

    Args:
        window_len: frames per sliding window (8); windows start every ``window_len // 2``.
        stride: feature stride (4).
        corr_levels: correlation pyramid levels (4).
        corr_radius: radius of the correlation neighbourhood (3: 7x7).
        num_virtual_tracks: virtual tracks of the update transformer (64).
        model_resolution: (H, W) frames are resized to; coordinates in and out of
            :meth:`forward` are pixels of this resolution. ``pos_emb`` covers its stride-4 grid.
        add_space_attn: use the cross-point (virtual-track) layers.
    """

    def __init__(
        self,
        window_len: int = 8,
        stride: int = 4,
        corr_levels: int = 4,
        corr_radius: int = 3,
        num_virtual_tracks: int = 64,
        model_resolution: Sequence[int] = OFFICIAL_RESOLUTION,
        add_space_attn: bool = True,
    ):
        super().__init__()
        if window_len < 2 or window_len % 2:
            raise ValueError(f"window_len must be even and >= 2, got {window_len}")
        self.window_len = window_len
        self.stride = stride
        self.corr_levels = corr_levels
        self.corr_radius = corr_radius
        self.hidden_dim = 256
        self.latent_dim = 128
        self.num_virtual_tracks = num_virtual_tracks
        self.add_space_attn = add_space_attn
        self.model_resolution = (int(model_resolution[0]), int(model_resolution[1]))
        hm, wm = self.model_resolution
        if hm % stride or wm % stride:
            raise ValueError(f"model_resolution {self.model_resolution} must be a multiple of the stride {stride}")
        if min(hm, wm) // stride < 2 ** (corr_levels - 1):
            raise ValueError(f"model_resolution {self.model_resolution} is too small for {corr_levels} pyramid levels")
        self.fnet = BasicEncoder(input_dim=3, output_dim=self.latent_dim, stride=stride)
        p = (2 * corr_radius + 1) ** 2
        # flow embedding (2 + 2 * 64), correlations, track feature, track mask + visibility
        self.input_dim = (2 + 2 * 64) + corr_levels * p + self.latent_dim + 2
        self.updateformer = EfficientUpdateFormer(
            space_depth=6,
            time_depth=6,
            input_dim=self.input_dim,
            hidden_size=384,
            output_dim=self.latent_dim + 2,
            mlp_ratio=4.0,
            num_virtual_tracks=num_virtual_tracks,
            add_space_attn=add_space_attn,
        )
        grid = torch.arange(window_len, dtype=torch.float32)
        self.register_buffer("time_emb", get_1d_sincos_pos_embed_from_grid(self.input_dim, grid))
        self.register_buffer("pos_emb", get_2d_sincos_pos_embed(self.input_dim, (hm // stride, wm // stride)))
        self.norm = nn.GroupNorm(1, self.latent_dim)
        self.track_feat_updater = nn.Sequential(nn.Linear(self.latent_dim, self.latent_dim), nn.GELU())
        self.vis_predictor = nn.Sequential(nn.Linear(self.latent_dim, 1))

    @property
    def compute_dtype(self) -> torch.dtype:
        """dtype of the parameters (float32 normally): features, coordinates and logits use it."""
        return self.vis_predictor[0].weight.dtype

    # ------------------------------------------------------------------ pieces

    def encode(
        self, frames: torch.Tensor, frames_per_chunk: int = 8, amp_dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """(M, 3, H, W) frames, values 0..255 (any dtype, any size) -> (M, 128, H'/4, W'/4) features.

        Frames not at ``model_resolution`` (H', W') are resized first (bilinear,
        ``align_corners=True``, on the 0..255 values, as the official predictors do).
        """
        hm, wm = self.model_resolution
        dtype = self.compute_dtype
        out = []
        for x in frames.split(max(1, frames_per_chunk)):
            x = x.to(dtype)
            if tuple(x.shape[-2:]) != (hm, wm):
                x = F.interpolate(x, (hm, wm), mode="bilinear", align_corners=True)
            x = 2 * (x / 255.0) - 1.0
            with _autocast(x.device, amp_dtype):
                f = self.fnet(x)
            out.append(f.to(dtype))
        return torch.cat(out)

    def pyramid(self, fmaps: torch.Tensor) -> list[torch.Tensor]:
        """(B, S, C, h, w) -> ``corr_levels`` maps, each 2x2 average-pooled from the previous."""
        b, s = fmaps.shape[:2]
        levels = [fmaps]
        for _ in range(self.corr_levels - 1):
            pooled = F.avg_pool2d(levels[-1].flatten(0, 1), 2, stride=2)
            levels.append(pooled.reshape(b, s, *pooled.shape[1:]))
        return levels

    def correlations(self, pyramid: Sequence[torch.Tensor], feats: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """Correlation features: (B, S, n, C) track features at (B, S, n, 2) positions -> (B, S, n, L * 49).

        Level l holds feats . fmap_l / sqrt(C) bilinearly sampled (border padding) on the 7x7
        grid of offsets around coords / 2^l, x-major (:func:`~.blocks.support_offsets`).
        """
        scale = 1.0 / math.sqrt(feats.shape[-1])
        out = []
        for i, fmap in enumerate(pyramid):
            patches = sample_local_patches(fmap, coords / 2**i, self.corr_radius)  # B S n P C
            out.append(torch.einsum("bsnpc,bsnc->bsnp", patches, feats) * scale)
        return torch.cat(out, dim=-1)

    def window(
        self,
        pyramid: Sequence[torch.Tensor],
        coords: torch.Tensor,
        track_feat: torch.Tensor,
        vis: torch.Tensor,
        track_mask: torch.Tensor,
        active: torch.Tensor,
        iters: int = 6,
        point_chunk: int | None = None,
        amp_dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``iters`` refinements of the tracks of one window.

        Args:
            pyramid: per level (B, S, C, h, w) features of the window's frames.
            coords: (B, S, N, 2) initial positions in level-0 feature pixels.
            track_feat: (B, N, C) query features (zero for inactive points).
            vis: (B, S, N) initial visibility logits.
            track_mask: (B, S, N) frames of a track that this window updates.
            active: (B, N) points that take part in the cross-point attention.
        Returns:
            coords (B, S, N, 2) feature pixels and visibility logits (B, S, N).
        """
        b, s, n, _ = coords.shape
        device = coords.device
        dtype = self.compute_dtype
        chunk = n if point_chunk is None else max(1, int(point_chunk))
        c = self.latent_dim
        coords = coords.to(dtype)
        feats = track_feat.to(dtype)[:, None].expand(b, s, n, c)
        mask_vis = torch.stack([track_mask.to(dtype), vis.to(dtype)], dim=-1)  # B S N 2
        pos = sample_features4d(self.pos_emb.to(dtype).expand(b, -1, -1, -1), coords[:, 0])[:, :, None]  # B N 1 E
        time = self.time_emb.to(dtype)[:, None, :s]  # 1 1 S E
        mask = None if bool(active.all()) else active[:, None, :].expand(b, s, n).reshape(b * s, n)
        tf_amp = amp_dtype
        for _ in range(iters):
            coords = coords.detach()
            flows = coords - coords[:, :1]
            tokens = []
            for lo in range(0, n, chunk):
                sl = slice(lo, lo + chunk)
                corr = self.correlations(pyramid, feats[:, :, sl], coords[:, :, sl])
                flow_emb = get_2d_embedding(flows[:, :, sl].reshape(b, -1, 2), 64, cat_coords=True)
                x = torch.cat(
                    [
                        flow_emb.to(dtype).reshape(b, s, -1, flow_emb.shape[-1]),
                        corr,
                        feats[:, :, sl],
                        mask_vis[:, :, sl],
                    ],
                    dim=-1,
                ).permute(0, 2, 1, 3)  # B n S D
                x = x + pos[:, sl] + time
                with _autocast(device, amp_dtype):
                    tokens.append(self.updateformer.input_transform(x).to(dtype))
            tokens = torch.cat(tokens, dim=1) if len(tokens) > 1 else tokens[0]
            with _autocast(device, tf_amp):
                delta = self.updateformer.forward_tokens(
                    tokens, mask=mask, add_space_attn=self.add_space_attn, point_chunk=chunk
                )
            delta = delta.to(dtype).permute(0, 2, 1, 3)  # B S N 130
            coords = coords + delta[..., :2]
            update = self.track_feat_updater(self.norm(delta[..., 2:].reshape(-1, c))).reshape(b, s, n, c)
            feats = feats + update
        return coords, self.vis_predictor(feats)[..., 0]

    def num_windows(self, t: int) -> int:
        return num_sliding_windows(t, self.window_len)

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        video: torch.Tensor,
        queries: torch.Tensor,
        iters: int = 6,
        point_chunk: int | None = None,
        frames_per_chunk: int = 8,
        amp_dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, None]:
        """Track queries through whole videos with the official sliding windows.

        Args:
            video: (B, T, 3, H, W) values 0..255, normally at ``model_resolution`` (other
                sizes are resized; the coordinates stay those of ``model_resolution``).
            queries: (B, N, 3) rows (t, x, y): integer frame, ``model_resolution`` pixels.
            iters: refinements per window (the predictors use 6).
            point_chunk: points processed together in the per-point parts (exact).
            frames_per_chunk: frames per CNN call (memory only).
            amp_dtype: autocast dtype for the CNN and the transformer (None: none).
        Returns:
            coords (B, T, N, 2) pixels, visibility probabilities (B, T, N), and ``None``
            (CoTracker2 has no confidence).
        """
        b, t = video.shape[:2]
        n = queries.shape[1]
        s = self.window_len
        step = s // 2
        overlap = s - step
        device = video.device
        dtype = self.compute_dtype
        frames = check_query_frames(queries[..., 0].round().long(), t)
        q = queries[..., 1:3].to(dtype) / self.stride  # B N 2 feature pixels
        windows = self.num_windows(t)

        coords_out = q.new_zeros(b, t, n, 2)
        vis_out = q.new_zeros(b, t, n)
        if n == 0:
            return coords_out, vis_out, None
        coords = q[:, None].expand(b, s, n, 2)
        vis = torch.full((b, s, n), 10.0, device=device, dtype=dtype)
        track_feat = q.new_zeros(b, n, self.latent_dim)
        have_feat = torch.zeros(b, n, dtype=torch.bool, device=device)
        fmaps = None  # (B, S, C, h, w) of the current window
        for ind in range(0, windows * step, step):
            # features of the window's frames: new ones encoded, the overlap reused, the
            # frames past the end repeat the last frame (the CNN works frame by frame)
            first_new = ind if fmaps is None else ind + overlap
            new = [f for f in range(first_new, ind + s) if f < t]
            enc = None
            if new:
                enc = self.encode(video[:, new].flatten(0, 1), frames_per_chunk, amp_dtype)
                enc = enc.reshape(b, len(new), *enc.shape[1:])
            parts = [] if fmaps is None else [fmaps[:, step:]]
            if enc is not None:
                parts.append(enc)
            fmaps = torch.cat(parts, dim=1)
            if fmaps.shape[1] < s:
                fmaps = torch.cat([fmaps, fmaps[:, -1:].expand(-1, s - fmaps.shape[1], -1, -1, -1)], dim=1)
            pyramid = self.pyramid(fmaps)

            # query features, taken in the first window that contains the query frame
            take = (frames >= ind) & (frames < min(ind + s, t)) & ~have_feat
            if bool(take.any()):
                local = (frames - ind).clamp(0, s - 1)
                sampled = sample_query_support(fmaps, local, q, 0)[:, :, 0]  # B N C
                track_feat = torch.where(take[..., None], sampled, track_feat)
                have_feat = have_feat | take

            if ind > 0:
                # points queried before the overlap ends start from the previous estimates
                # on the overlap, the last one repeated over the new frames
                copy = (frames < ind + overlap)[:, None, :]  # B 1 N
                coords = torch.where(copy[..., None], carried_frames(coords_out, ind, overlap, s) / self.stride, coords)
                vis = torch.where(copy, carried_frames(vis_out, ind, overlap, s), vis)
            active = frames < ind + s  # B N
            track_mask = frames[:, None, :] <= torch.arange(ind, ind + s, device=device)[None, :, None]
            if ind > 0:
                track_mask[:, :overlap] = False
            c, v = self.window(
                pyramid,
                coords,
                track_feat * active[..., None].to(dtype),
                vis,
                track_mask,
                active,
                iters=iters,
                point_chunk=point_chunk,
                amp_dtype=amp_dtype,
            )
            keep = min(t - ind, s)
            coords_out[:, ind : ind + keep] = c[:, :keep] * self.stride
            vis_out[:, ind : ind + keep] = v[:, :keep]
        return coords_out, torch.sigmoid(vis_out), None


def _load_weights(model: CoTracker2, weights: str | os.PathLike | bool | None, progress: bool = True) -> CoTracker2:
    """Strictly load ``weights`` (see :func:`~.weights.load_cotracker_weights`).

    At a ``model_resolution`` other than 384x512 the file's ``pos_emb`` (a fixed sin/cos
    table of the 96x128 feature grid, not learned) is replaced by the model's own table.
    """
    if weights is False or model.model_resolution == OFFICIAL_RESOLUTION:
        return load_cotracker_weights(model, weights, "cotracker2", progress=progress)
    if weights is True:
        weights = None
    state = dict(resolve_state_dict(weights, "cotracker2", progress=progress))
    own = model.pos_emb
    if "pos_emb" in state and state["pos_emb"].ndim == 4 and state["pos_emb"].shape[:2] == own.shape[:2]:
        state["pos_emb"] = own.detach().clone()
    source = str(weights) if weights is not None else WEIGHT_URLS["cotracker2"]
    hint = (
        f"The 'cotracker2' tracker expects the official cotracker2.pth ({WEIGHT_URLS['cotracker2']}); "
        "scaled_offline.pth / scaled_online.pth are for 'cotracker3' / 'cotracker3-online'."
    )
    load_state_dict_strict(model, state, source, hint=hint)
    return model


@register_tracker("cotracker2", card=CARDS["cotracker2"])
class CoTracker2Tracker(CoTrackerTrackerBase):
    """CoTracker2 point tracker: the official online predictor over a whole video in one call.

    What a call does (``CoTrackerOnlinePredictor(v2=True, window_len=8)`` driven over the
    whole video as ``online_demo.py`` drives it):

    1. frames are resized to 384x512 (bilinear, ``align_corners=True``) and normalised to
       [-1, 1] inside the model; query positions are scaled by (W' - 1) / (W - 1) and
       (H' - 1) / (H - 1), the outputs by the inverse (pixel centres onto pixel centres);
    2. windows of 8 frames every 4 frames, 6 refinements each (see :class:`CoTracker2`);
       queries may start at any frame;
    3. visible = sigmoid(visibility logit) > ``visibility_threshold`` (0.6, the official
       online predictor; CoTracker2 has no confidence); no support grid and no snapping
       of the query frame (the online predictor's defaults; both are options);
    4. mosic additions: a point is invisible on every frame before its query frame (its
       position there is the model's, not meaningful); videos are batched (B > 1); per-point
       work runs in chunks of ``max_points_per_chunk`` points (over the batch); bf16
       autocast on GPUs (``precision``).

    Points of one video are tracked jointly (the virtual tracks read every point), so a
    track depends on the other queries of its video (and on the support grid, if any), but
    not on ``max_points_per_chunk`` nor on the other videos of the batch: only per-point
    work is chunked, the cross-point reads always see all points, so chunked tracks equal
    one-chunk tracks up to float round-off.

    Args:
        weights: ``None``: the official ``cotracker2.pth`` (CC BY-NC 4.0, non-commercial;
            torch hub cache, else downloaded from Hugging Face); a path to a local
            ``.pth``/``.safetensors`` file, loaded strictly; ``False``: random initialisation.
        device: where the model runs (default CUDA when available); :meth:`to` moves it.
        max_points_per_chunk: points (over the batch) whose per-point work runs together
            (``None``: all); results do not depend on it. A chunk needs about 25 KB per
            point and window frame (the 7x7x128 feature patch of a pyramid level, the
            correlation volume is never built); the joint state of all points (tokens and
            the keys/values the virtual tracks read, about 5 KB per point and window frame)
            is always held.
        visibility_threshold: a point is visible when its visibility probability exceeds it.
        precision: ``"auto"`` (bf16 autocast on CUDA devices that support it, else fp32),
            ``"bf16"`` or ``"fp32"``. Sampling, correlations, coordinates, the transformer's
            residual stream and the logits stay float32.
        support_grid_size: side of a grid of extra points on frame 0 tracked with the
            queries and dropped from the output (0: none; the official offline predictor uses 6).
        snap_queries: report each query at its own position and visible on its query frame.
        iters: refinements per window (6).
        model_resolution: (H, W) frames are resized to; cotracker2.pth was trained at
            (384, 512). Smaller values are for tests (``pos_emb`` is then recomputed).
        frames_per_chunk: frames per CNN call (memory only).
        progress: show the download progress bar.
    """

    name = "cotracker2"

    def __init__(
        self,
        weights: str | os.PathLike | bool | None = None,
        device: str | torch.device | None = None,
        max_points_per_chunk: int | None = 1024,
        visibility_threshold: float = 0.6,
        precision: str = "auto",
        *,
        support_grid_size: int = 0,
        snap_queries: bool = False,
        iters: int = 6,
        model_resolution: Sequence[int] = OFFICIAL_RESOLUTION,
        frames_per_chunk: int = 8,
        progress: bool = True,
    ):
        self.model_resolution = (int(model_resolution[0]), int(model_resolution[1]))
        self.model = _load_weights(CoTracker2(model_resolution=self.model_resolution), weights, progress=progress)
        self._setup(
            device=device,
            max_points_per_chunk=max_points_per_chunk,
            visibility_threshold=visibility_threshold,
            use_confidence=False,
            precision=precision,
            support_grid_size=support_grid_size,
            snap_queries=snap_queries,
            iters=iters,
            frames_per_chunk=frames_per_chunk,
        )
