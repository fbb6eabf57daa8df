"""Training clips: frame sampling, the shared view transform, and batching."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import UntrackedStartError, VideoReadError
from ..tracks import Tracks
from .source import GroundTruth, VideoSource
from .transforms import ViewTransform, random_resized_crop, tracks_in_view


class ClipTooShortError(ValueError):
    """The video has fewer frames than a clip needs."""


class NoUsableVideosError(RuntimeError):
    """Not one video of the dataset gives a training clip (all unreadable or too short)."""


class BadVideoWarning(UserWarning):
    """A video was skipped during training (issued once per video per process)."""


@dataclass
class ClipMeta:
    """Where a training clip came from; travels with the batch (one per clip).

    Attributes:
        video: the source's video name.
        index: index of the video in the source.
        frame_indices: source frame numbers of the clip's T frames.
        transform: source pixels -> view pixels.
        sample_seed: seed of this sample's randomness (crop, token mask).
        ground_truth: exact annotations for synthetic videos, else None.
    """

    video: str
    index: int
    frame_indices: list[int]
    transform: ViewTransform
    sample_seed: int
    ground_truth: GroundTruth | None = None


def effective_stride(num_available: int, num_frames: int, stride: int) -> int:
    """``stride``, or the largest stride that fits a clip of ``num_frames`` into a short video."""
    return max(1, min(stride, (num_available - 1) // max(1, num_frames - 1)))


def clip_frame_indices(
    num_available: int, num_frames: int, stride: int, rng: np.random.Generator, video: str = "video"
) -> list[int]:
    """T frame numbers ``start + stride * k`` from a random start.

    A video too short for ``stride`` uses the largest stride that fits; one with fewer
    than ``num_frames`` frames raises :class:`ClipTooShortError`.
    """
    if num_available < num_frames:
        raise ClipTooShortError(
            f"{video} has {num_available} frames but a clip needs {num_frames}; "
            "lower data.num_frames or remove the video"
        )
    stride = effective_stride(num_available, num_frames, stride)
    span = stride * (num_frames - 1) + 1
    start = int(rng.integers(0, num_available - span + 1))
    return [start + stride * k for k in range(num_frames)]


def sample_seed(seed: int, epoch: int, index: int, attempt: int = 0) -> int:
    """Seed of item (epoch, index) of a :class:`ClipDataset` with ``seed``; ``attempt`` k >= 1
    is the seed of its k-th substitute."""
    entropy = [seed, epoch, index] + ([attempt] if attempt else [])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def draw_start(rng: np.random.Generator, starts: Sequence[int]) -> int:
    """The clip start a sample with a track cache draws first from its ``rng`` (one rule for
    the dataset and for planning which starts a run reads)."""
    return starts[int(rng.integers(len(starts)))]


class ClipDataset(Dataset):
    """Random clips of a :class:`VideoSource`, one per video per epoch.

    Item i of epoch e (``dataset[(e, i)]``, or ``dataset[i]`` for the epoch set with
    :meth:`set_epoch`) is a deterministic function of (seed, e, i): the same clip and
    view whatever the worker count, process count or resume point.

    Returns dicts ``{"frames": (T, 3, size, size) uint8, "meta": ClipMeta, "skipped": [...]}``.
    With a ``track_cache`` (:class:`mosic.data.track_cache.TrackCache`) clips start at the
    cached starts and the dict also holds ``"tracks"``: the cached tracks mapped into the view.
    With ``prepared`` (:class:`mosic.data.prepared.PreparedFrames`, ``mosic prepare``) frames are
    read from the prepared store instead of decoded, and clips start on its lattice of starts
    (like a track cache's, drawn the same way); the crop is drawn in source pixels as without
    it, so ``meta.transform`` and tracks are the same, and only the resampling of pixels differs.

    Bad videos: with ``skip_bad_videos`` (the default) a video that cannot be read
    (:class:`~mosic.errors.VideoReadError`) or is shorter than a clip
    (:class:`ClipTooShortError`) is replaced by the next video, index + 1, + 2, ... (mod the
    number of videos), whose clip is drawn from a seed of the original key, so a key gives
    the same sample in every process and on resume, and batches keep their size.
    ``sample["skipped"]`` lists ``(video name, reason)`` of the videos passed over (empty
    normally); each bad video is reported once per process with a :class:`BadVideoWarning`.
    Videos that cannot be opened or are too short are remembered and passed over without
    another try; a video that failed on one clip is tried again for other clips (a clip
    elsewhere in it may read fine, and the outcome of a key must not depend on the process
    that read it). When no video gives a clip, :class:`NoUsableVideosError`.
    """

    def __init__(
        self,
        source: VideoSource,
        num_frames: int = 12,
        frame_stride: int = 6,
        size: int | tuple[int, int] = 224,
        crop_scale: tuple[float, float] = (0.4, 1.0),
        flip_probability: float = 0.0,
        seed: int = 0,
        track_cache: Any = None,
        skip_bad_videos: bool = True,
        prepared: Any = None,
    ):
        if len(source) == 0:
            raise ValueError("the video source is empty")
        self.source = source
        self.num_frames = num_frames
        self.frame_stride = frame_stride
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.crop_scale = tuple(crop_scale)
        self.flip_probability = flip_probability
        self.seed = seed
        self.track_cache = track_cache
        self.skip_bad_videos = skip_bad_videos
        self.prepared = prepared
        self.epoch = 0
        self._unusable: dict[int, str] = {}  # video index -> reason; never usable, in this process
        self._warned: set[int] = set()  # videos this process has warned about

    def __len__(self) -> int:
        return len(self.source)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def sample_seed(self, epoch: int, index: int, attempt: int = 0) -> int:
        """Seed of item (epoch, index); ``attempt`` k >= 1 is the seed of its k-th substitute."""
        return sample_seed(self.seed, epoch, index, attempt)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        if not self.skip_bad_videos:
            sample = self._clip(index, self.sample_seed(epoch, index))
            sample["skipped"] = []
            return sample
        skipped: list[tuple[str, str]] = []
        count = len(self.source)
        for attempt in range(count):
            candidate = (index + attempt) % count
            reason = self._unusable.get(candidate) or self._never_usable(candidate)
            if reason is None:
                try:
                    sample = self._clip(candidate, self.sample_seed(epoch, index, attempt))
                except (VideoReadError, ClipTooShortError) as error:
                    reason = getattr(error, "reason", str(error))  # another clip of it may read: no memo
                    self._warn(candidate, reason, getattr(error, "path", None))
                except UntrackedStartError:
                    if attempt == 0:  # the run's own clip: the cache was planned for other runs
                        raise
                    reason = "its substitute clip's start is not in the track cache (planned for other runs)"
                else:
                    sample["skipped"] = skipped
                    return sample
            skipped.append((self.source.video_name(candidate), reason))
        shown = "\n".join(f"  {name}: {reason}" for name, reason in skipped[:5])
        more = f"\n  ... and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        raise NoUsableVideosError(
            f"none of the {count} videos gives a training clip of {self.num_frames} frames:\n{shown}{more}\n"
            "`mosic check-data VIDEOS` lists every video and why it is unusable"
        )

    def _never_usable(self, index: int) -> str | None:
        """Why video ``index`` can give no clip at all (it cannot be opened, or is shorter than a
        clip), remembered and warned about once; None when it may."""
        try:
            available = (self.prepared or self.source).num_frames(index)  # a prepared store: no probe
        except VideoReadError as error:
            reason, where = error.reason, error.path
        else:
            if available >= self.num_frames:
                return None
            plural = "s" * (available != 1)
            reason, where = f"too short: {available} frame{plural}, a clip needs {self.num_frames}", None
        self._unusable[index] = reason
        self._warn(index, reason, where)
        return reason

    def _warn(self, index: int, reason: str, where: str | None = None) -> None:
        if index in self._warned:
            return
        self._warned.add(index)
        name = self.source.video_name(index)
        if where and where != name:
            name = f"{name} ({where})"
        warnings.warn(
            f"skipping video {name}: {reason}; another video's clip takes its place "
            "(`mosic check-data` lists every bad video)",
            BadVideoWarning,
        )

    def _clip(self, index: int, seed: int) -> dict[str, Any]:
        """The sample of video ``index`` drawn with ``seed``."""
        rng = np.random.default_rng(seed)
        name = self.source.video_name(index)
        cache, prepared = self.track_cache, self.prepared
        if cache is None and prepared is None:
            frame_indices = clip_frame_indices(self.source.num_frames(index), self.num_frames, self.frame_stride, rng, name)
        else:
            # drawn from every start a clip could have, whether or not this cache tracked it
            # (a cache planned for some runs holds only their starts): the same clip either way
            lattice = cache if cache is not None else prepared
            starts, stride = lattice.candidate_starts(index), lattice.stride(index)
            start = draw_start(rng, starts)
            frame_indices = [start + stride * k for k in range(self.num_frames)]
        if prepared is None:
            frames = torch.from_numpy(np.ascontiguousarray(self.source.read_frames(index, frame_indices)))
            frames = frames.permute(0, 3, 1, 2)  # (T, 3, H, W)
            height, width = frames.shape[-2:]
        else:
            height, width = prepared.source_size(index)  # the crop is drawn in source pixels either way
        transform = random_resized_crop(rng, height, width, self.size, self.crop_scale, flip_probability=self.flip_probability)
        if prepared is None:
            view = transform.apply_to_frames(frames).contiguous()
        else:
            view = prepared.read_view(index, frame_indices, transform)
        meta = ClipMeta(name, index, frame_indices, transform, seed, self.source.ground_truth(index))
        sample = {"frames": view, "meta": meta}
        if cache is not None:
            sample["tracks"] = tracks_in_view(cache.load(index, frame_indices[0]), transform)
        return sample


def collate_clips(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack frames to (B, T, 3, H, W) (and cached tracks to a batch); keep metadata as a list.

    ``batch["skipped"]`` concatenates the samples' ``(video name, reason)`` lists of bad videos
    passed over (see :class:`ClipDataset`).
    """
    batch = {
        "frames": torch.stack([s["frames"] for s in samples]),
        "meta": [s["meta"] for s in samples],
        "skipped": [item for s in samples for item in s.get("skipped", ())],
    }
    if "tracks" in samples[0]:
        batch["tracks"] = Tracks.cat([s["tracks"] for s in samples])
    return batch
