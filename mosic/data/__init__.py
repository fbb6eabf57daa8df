"""Video sources (files, frame folders, synthetic), training clips and view transforms."""

from .clips import ClipDataset, ClipMeta, ClipTooShortError, collate_clips
from .image_segmentation import ADE20K, COCOStuff, DatasetLayoutError, MaskValueError, PascalVOC
from .readers import ConcatSource, FrameFolderSource, VideoFileSource, VideoReadError, open_videos
from .source import GroundTruth, VideoSource
from .synthetic import SyntheticVideos
from .transforms import ViewTransform, random_resized_crop
from .video_segmentation import DAVIS, MissingAnnotationError, YouTubeVOS

__all__ = [
    "ADE20K",
    "COCOStuff",
    "ClipDataset",
    "ClipMeta",
    "ClipTooShortError",
    "ConcatSource",
    "DAVIS",
    "DatasetLayoutError",
    "FrameFolderSource",
    "GroundTruth",
    "MaskValueError",
    "MissingAnnotationError",
    "PascalVOC",
    "SyntheticVideos",
    "VideoFileSource",
    "VideoReadError",
    "VideoSource",
    "ViewTransform",
    "YouTubeVOS",
    "collate_clips",
    "open_videos",
    "random_resized_crop",
]
