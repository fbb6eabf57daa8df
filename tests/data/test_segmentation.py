"""The segmentation dataset protocols (mosic.data.segmentation) and its synthetic datasets."""

import numpy as np
import pytest

from mosic.data.segmentation import SegmentationDataset, SyntheticSegmentation, SyntheticVideoSegmentation, VideoSegmentationDataset


def test_synthetic_datasets_follow_the_protocols():
    images = SyntheticSegmentation(num_images=5, size=32, frames_per_video=2)
    assert isinstance(images, SegmentationDataset) and len(images) == 5 and images.num_classes == 5
    sample = images[4]
    assert sample.image.shape == (32, 32, 3) and sample.image.dtype == np.uint8
    assert sample.mask.dtype == np.int64 and sample.mask.max() < images.num_classes
    videos = SyntheticVideoSegmentation(num_videos=2, num_frames=6, size=32)
    assert isinstance(videos, VideoSegmentationDataset)
    assert videos.read_masks(1, [0, 5]).shape == (2, 32, 32) and videos.annotated_frames(1) == list(range(6))
    with pytest.raises(IndexError):
        images[5]
