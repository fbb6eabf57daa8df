"""Label maps (mosic.viz.maps): label colours overlaid on frames."""

import numpy as np
import pytest

from helpers.images import colour_count, grey_frames
from mosic.viz import overlay_labels


@pytest.mark.parametrize("k", [1, 3, 7])
def test_overlay_labels_colour_count_follows_k(k):
    frames = grey_frames(2, 32, 32)
    labels = (np.arange(2 * 4 * 4).reshape(2, 4, 4) % k).astype(np.int64)  # patch-level, 8 px patches
    out = overlay_labels(frames, labels, alpha=0.5)
    assert out.shape == frames.shape
    assert colour_count(out) == k
    assert colour_count(out[0, :8, :8]) == 1 and colour_count(out[0, :8, :16]) == min(k, 2)  # nearest upsampling
    assert (out != 128).any(-1).all()  # every label is tinted, 0 too
    ignored = labels.copy()
    ignored[0, 0, 0] = 255
    assert (overlay_labels(frames, ignored)[0, :8, :8] == 128).all()  # the ignore index stays uncoloured
    with pytest.raises(ValueError, match="labels"):
        overlay_labels(frames, labels[:1].repeat(3, 0))
