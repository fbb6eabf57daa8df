"""Labelled data for evaluation: image and video segmentation datasets, and synthetic ones.

Two protocols:

* :class:`SegmentationDataset`: images with semantic masks (Pascal VOC, ADE20K,
  COCO-Stuff/Things, or :class:`SyntheticSegmentation`). ``dataset[i]`` is a
  :class:`SegmentationSample`: ``image`` (H, W, 3) uint8 RGB, ``mask`` (H, W) int64
  class ids in ``[0, num_classes)`` with :data:`IGNORE_INDEX` (255) for unlabelled pixels.
* :class:`VideoSegmentationDataset`: videos with instance masks (DAVIS-17, YouTube-VOS,
  or :class:`SyntheticVideoSegmentation`): the :class:`~mosic.data.VideoSource` methods
  plus ``read_masks(index, frames)`` -> (T, H, W) int64 (0 background, i >= 1 object i,
  :data:`IGNORE_INDEX` unlabelled) and ``annotated_frames(index)``.

The synthetic datasets are built from :class:`~mosic.data.SyntheticVideos`, so every
evaluation protocol runs offline, in the tests and in the demo.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from .synthetic import SyntheticVideos

#: mask value of unlabelled pixels (Pascal VOC's convention), never a class
IGNORE_INDEX = 255


@dataclass
class SegmentationSample:
    """One labelled image: ``image`` (H, W, 3) uint8 RGB, ``mask`` (H, W) int64, ``name``."""

    image: np.ndarray
    mask: np.ndarray
    name: str


@runtime_checkable
class SegmentationDataset(Protocol):
    """Images with semantic masks; class 0 is background where the dataset has one."""

    num_classes: int
    class_names: Sequence[str]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> SegmentationSample: ...


@runtime_checkable
class VideoSegmentationDataset(Protocol):
    """Videos with per-frame instance masks (a :class:`~mosic.data.VideoSource` plus masks)."""

    def __len__(self) -> int: ...

    def video_name(self, index: int) -> str: ...

    def num_frames(self, index: int) -> int: ...

    def read_frames(self, index: int, frame_indices: Sequence[int]) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB."""
        ...

    def read_masks(self, index: int, frame_indices: Sequence[int]) -> np.ndarray:
        """(T, H, W) int64: 0 background, i >= 1 object i, IGNORE_INDEX unlabelled."""
        ...

    def annotated_frames(self, index: int) -> list[int]:
        """Frames that have masks (all for DAVIS; every 5th for YouTube-VOS train)."""
        ...


class SyntheticSegmentation:
    """Frames of synthetic videos as a semantic segmentation dataset.

    Image i is frame ``(i % frames_per_video) * frame_stride`` of video
    ``i // frames_per_video`` of ``SyntheticVideos(num_videos, size=size, seed=seed)``;
    its mask holds the exact class ids (0 background, 1..num_classes objects).
    """

    def __init__(
        self,
        num_images: int = 64,
        size: int = 64,
        seed: int = 0,
        frames_per_video: int = 4,
        frame_stride: int = 6,
        num_classes: int = 4,
    ):
        if num_images < 1 or frames_per_video < 1 or frame_stride < 1:
            raise ValueError(
                f"num_images, frames_per_video and frame_stride must be >= 1, got {num_images}, "
                f"{frames_per_video}, {frame_stride}"
            )
        self.frames_per_video = frames_per_video
        self.frame_stride = frame_stride
        self.num_images = num_images
        videos = -(-num_images // frames_per_video)
        self.videos = SyntheticVideos(
            num_videos=videos, num_frames=frames_per_video * frame_stride, size=size, seed=seed, num_classes=num_classes
        )
        self.num_classes = num_classes + 1
        self.class_names = ["background", *(f"class{c}" for c in range(1, num_classes + 1))]

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> SegmentationSample:
        if not 0 <= index < self.num_images:
            raise IndexError(f"image {index} out of range for {self.num_images} images")
        video, k = divmod(index, self.frames_per_video)
        frame = [k * self.frame_stride]
        image = self.videos.read_frames(video, frame)[0]
        mask = self.videos.ground_truth(video).class_masks(frame)[0].astype(np.int64)
        return SegmentationSample(image, mask, f"{self.videos.video_name(video)}/{frame[0]:05d}")

    def __repr__(self) -> str:
        return (
            f"SyntheticSegmentation(num_images={self.num_images}, size={self.videos.size[0]}, "
            f"seed={self.videos.seed}, frames_per_video={self.frames_per_video})"
        )


class SyntheticVideoSegmentation(SyntheticVideos):
    """:class:`~mosic.data.SyntheticVideos` with the DAVIS-style instance-mask interface."""

    def read_masks(self, index: int, frame_indices: Sequence[int]) -> np.ndarray:
        return self.ground_truth(index).instance_masks(frame_indices).astype(np.int64)

    def read_class_masks(self, index: int, frame_indices: Sequence[int]) -> np.ndarray:
        """(T, H, W) int64 semantic classes (0 background); synthetic videos only."""
        return self.ground_truth(index).class_masks(frame_indices).astype(np.int64)

    def annotated_frames(self, index: int) -> list[int]:
        return list(range(self.num_frames(index)))


#: dataset kinds for :func:`open_segmentation_dataset`: name -> (module, class, kind, default split per role)
DATASETS: dict[str, tuple[str, str, str, dict]] = {
    "voc": ("image_segmentation", "PascalVOC", "image", {"train": "trainaug", "val": "val"}),
    "ade20k": ("image_segmentation", "ADE20K", "image", {"train": "training", "val": "validation"}),
    "coco-things": ("image_segmentation", "COCOStuff", "image", {"train": "train2017", "val": "val2017", "variant": "things"}),
    "coco-stuff": ("image_segmentation", "COCOStuff", "image", {"train": "train2017", "val": "val2017", "variant": "stuff27"}),
    "davis": ("video_segmentation", "DAVIS", "video", {"train": "train", "val": "val"}),
    "ytvos": ("video_segmentation", "YouTubeVOS", "video", {"train": "train", "val": "valid"}),
    "synthetic": ("", "SyntheticSegmentation", "image", {}),
    "synthetic-video": ("", "SyntheticVideoSegmentation", "video", {}),
}


def open_segmentation_dataset(spec: str, role: str = "val", split: str | None = None):
    """A dataset from a command-line spec.

    ``"voc:/data/VOCdevkit/VOC2012"``, ``"ade20k:ROOT"``, ``"coco-things:ROOT"``,
    ``"coco-stuff:ROOT"``, ``"davis:ROOT"``, ``"ytvos:ROOT"``, or
    ``"synthetic"`` / ``"synthetic-video"`` with optional arguments
    (``"synthetic:num_images=64,size=64,seed=0"``). ``role`` ("train" or "val") picks the
    protocol's usual split (VOC: trainaug / val ...); ``split`` overrides it. Synthetic
    validation data uses another seed than synthetic training data unless one is given.
    """
    import importlib

    import yaml

    kind, _, rest = spec.partition(":")
    if kind not in DATASETS:
        import difflib

        close = difflib.get_close_matches(kind, list(DATASETS), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(f"unknown dataset {kind!r} in {spec!r}; {hint}known: {', '.join(DATASETS)} (e.g. voc:/data/VOC2012)")
    module, name, _, defaults = DATASETS[kind]
    if kind.startswith("synthetic"):
        args = {}
        for item in filter(None, rest.split(",")):
            key, eq, value = item.partition("=")
            if not eq:
                raise ValueError(f"synthetic dataset arguments look like key=value, got {item!r} in {spec!r}")
            args[key.strip()] = yaml.safe_load(value)
        args.setdefault("seed", 0 if role == "train" else 10_000)
        if kind == "synthetic-video":
            args.setdefault("num_videos", 8)
            args.setdefault("num_frames", 24)
            args.setdefault("size", 64)
        return SyntheticSegmentation(**args) if kind == "synthetic" else SyntheticVideoSegmentation(**args)
    if not rest:
        raise ValueError(f"{spec!r} needs a root folder, e.g. {kind}:/data/{kind}")
    cls = getattr(importlib.import_module(f"mosic.data.{module}"), name)
    extra = {k: v for k, v in defaults.items() if k not in ("train", "val")}
    return cls(rest, split=split or defaults[role], **extra)
