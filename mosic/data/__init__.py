"""Video sources (files, frame folders, synthetic), training clips and view transforms."""

from .clips import ClipDataset, ClipMeta, ClipTooShortError, collate_clips
from .readers import ConcatSource, FrameFolderSource, VideoFileSource, VideoReadError, open_videos
from .source import GroundTruth, VideoSource
from .synthetic import SyntheticVideos
from .transforms import ViewTransform, random_resized_crop

__all__ = [
    "ClipDataset",
    "ClipMeta",
    "ClipTooShortError",
    "ConcatSource",
    "FrameFolderSource",
    "GroundTruth",
    "SyntheticVideos",
    "VideoFileSource",
    "VideoReadError",
    "VideoSource",
    "ViewTransform",
    "collate_clips",
    "open_videos",
    "random_resized_crop",
]
