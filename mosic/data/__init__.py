"""Video sources (files, frame folders, synthetic), training clips and view transforms."""

from ..errors import VideoReadError
from .check import check_videos
from .clips import BadVideoWarning, ClipDataset, ClipMeta, ClipTooShortError, NoUsableVideosError, collate_clips
from .image_segmentation import ADE20K, COCOStuff, DatasetLayoutError, MaskValueError, PascalVOC
from .prepared import PreparedFrames, PreparedSettings, StalePreparedError, prepare_frames
from .source import GroundTruth, VideoSource
from .synthetic import SyntheticVideos
from .transforms import ViewTransform, random_resized_crop
from .video_files import ConcatSource, FrameFolderSource, VideoFileSource, open_videos
from .video_segmentation import DAVIS, MissingAnnotationError, YouTubeVOS

__all__ = [
    "ADE20K",
    "BadVideoWarning",
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
    "NoUsableVideosError",
    "PascalVOC",
    "PreparedFrames",
    "PreparedSettings",
    "StalePreparedError",
    "SyntheticVideos",
    "VideoFileSource",
    "VideoReadError",
    "VideoSource",
    "ViewTransform",
    "YouTubeVOS",
    "check_videos",
    "collate_clips",
    "open_videos",
    "prepare_frames",
    "random_resized_crop",
]
