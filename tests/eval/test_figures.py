"""Figures of evaluations (mosic.eval.figures): segmentations and video clusters over the frames."""

import numpy as np
from PIL import Image

from mosic.data.segmentation import IGNORE_INDEX, SyntheticSegmentation, SyntheticVideoSegmentation
from mosic.eval.figures import overlay, palette, save_segmentation_figure, save_video_clusters_figure


def test_figures_have_the_expected_size_and_show_the_labels(tmp_path):
    data = SyntheticSegmentation(num_images=2, size=32)
    images = [data[i].image for i in range(2)]
    masks = [data[i].mask for i in range(2)]
    path = save_segmentation_figure(images, masks, masks, tmp_path / "pred.png", scale=2)
    figure = np.asarray(Image.open(path))
    pad, caption = 4, 14
    assert figure.shape == (pad + 2 * (64 + caption + pad), pad + 3 * (64 + pad), 3)
    assert figure.std() > 10  # not blank
    blended = overlay(images[0], masks[0])
    labelled = masks[0] != 0
    assert not np.array_equal(blended[labelled], images[0][labelled])  # objects are tinted
    ignored = masks[0].copy()
    ignored[:8] = IGNORE_INDEX
    assert np.array_equal(overlay(images[0], ignored)[:8], images[0][:8])  # ignore stays untinted
    assert len({tuple(c) for c in palette(16)}) == 16

    videos = SyntheticVideoSegmentation(num_videos=1, num_frames=4, size=32)
    frames = videos.read_frames(0, range(4))
    clusters = np.random.default_rng(0).integers(0, 5, (4, 4, 4))
    path = save_video_clusters_figure(frames, clusters, tmp_path / "video.png", masks=videos.read_masks(0, range(4)))
    assert np.asarray(Image.open(path)).shape[1] == pad + 4 * (64 + pad)
