"""Synthetic videos for tests: smooth random textures, their translations, edited sources."""

import numpy as np
import torch
import torch.nn.functional as F

from mosic.data.track_cache import clip_starts
from mosic.tracks import query_grid


def texture(size: int, seed: int = 0) -> np.ndarray:
    """(size, size, 3) uint8 smooth random texture (blurred noise, contrast stretched)."""
    rng = np.random.default_rng(seed)
    noise = torch.from_numpy(rng.random((1, 3, size, size)).astype(np.float32))
    blurred = F.avg_pool2d(F.avg_pool2d(noise, 3, 1, 1, count_include_pad=False), 3, 1, 1, count_include_pad=False)
    x = (blurred - blurred.mean()) / blurred.std() * 50 + 128
    return x[0].permute(1, 2, 0).clamp(0, 255).round().to(torch.uint8).numpy()


def translation_video(dx: int, dy: int, num_frames: int = 6, size: int = 64, seed: int = 0) -> torch.Tensor:
    """(1, T, 3, size, size): a random texture whose content moves by (dx, dy) px per frame."""
    margin = 2 * max(abs(dx), abs(dy)) * num_frames + 8
    tex = texture(size + 2 * margin, seed)
    frames = [tex[margin - dy * t :, margin - dx * t :][:size, :size] for t in range(num_frames)]
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)[None].contiguous()


def video_and_clips(frames=20, clip_len=6, stride=2, step=2, size=(40, 56), seed=0):
    g = torch.Generator().manual_seed(seed)
    video = torch.randint(0, 256, (frames, 3, *size), generator=g, dtype=torch.uint8)
    video = torch.nn.functional.avg_pool2d(video.float(), 3, 1, 1).to(torch.uint8)  # some spatial structure
    starts = clip_starts(frames, clip_len, stride, step)
    clip_frames = torch.tensor([[s + stride * k for k in range(clip_len)] for s in starts])
    queries = query_grid(*size, 5).expand(len(starts), -1, -1).clone()
    queries[:, ::3, 0] = 2.0  # some queries after frame 0
    return video, clip_frames, queries


class Edited:
    """The same videos with video 0's pixels changed (re-encoded, edited...)."""

    def __init__(self, source):
        self.source = source

    def __len__(self):
        return len(self.source)

    def __getattr__(self, name):
        return getattr(self.source, name)

    def read_frames(self, index, frame_indices):
        frames = self.source.read_frames(index, frame_indices)
        return 255 - frames if index == 0 else frames
