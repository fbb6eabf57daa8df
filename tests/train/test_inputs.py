"""A step's inputs (mosic.train.inputs): micro-batches, token masks, StepInputs slices."""

import pytest
import torch

from mosic.config import ConfigError
from mosic.data.clips import ClipMeta
from mosic.data.transforms import ViewTransform
from mosic.tracks import Tracks
from mosic.train.inputs import StepInputs, micro_batches, token_masks


@pytest.mark.parametrize("batch,k", [(4, 1), (4, 4), (7, 3), (10, 4), (5, 2)])
def test_micro_batches_cover_the_batch_in_order_with_sizes_one_apart(batch, k):
    chunks = micro_batches(batch, k)
    assert len(chunks) == k
    covered = [i for c in chunks for i in range(batch)[c]]
    assert covered == list(range(batch))
    sizes = [c.stop - c.start for c in chunks]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_more_micro_batches_than_clips_is_a_config_error():
    with pytest.raises(ConfigError, match="accumulation_steps=5 exceeds the 4 clips"):
        micro_batches(4, 5)


def metas(*seeds):
    return [ClipMeta("clip", 0, [0, 1], ViewTransform.identity(8, 8), sample_seed=s) for s in seeds]


def test_token_masks_drop_the_ratio_of_tokens_the_same_on_every_student_frame():
    masks = token_masks(metas(1, 2, 1), frames=3, h=4, w=5, ratio=0.25)
    assert masks.shape == (3, 3, 4, 5) and masks.dtype == torch.bool and masks.device.type == "cpu"
    assert masks.flatten(2).sum(-1).tolist() == [[5, 5, 5]] * 3  # round(0.25 * 20)
    assert torch.equal(masks[:, 0], masks[:, 2])  # one mask per clip, shared by its frames
    assert torch.equal(masks[0], masks[2])  # the clip's seed decides it
    assert not torch.equal(masks[0], masks[1])
    assert token_masks(metas(1), frames=1, h=4, w=5, ratio=0.0) is None


def test_a_micro_batch_slices_the_students_inputs_and_keeps_the_whole_batch_for_the_teacher():
    b, t = 4, 3
    images = torch.randn(b, t, 3, 8, 8)
    tracks = Tracks(torch.zeros(b, t, 2, 2), torch.ones(b, t, 2, dtype=torch.bool))
    mask = torch.zeros(b, 1, 2, 2, dtype=torch.bool)
    mask[2] = True
    inputs = StepInputs(images, tracks, (0,), images[:, [0]], mask, views=None, view_images=torch.randn(b, 3, 8, 8))
    part = inputs.micro_batch(slice(2, 4))
    assert torch.equal(part.student_images, images[2:4, [0]])
    assert torch.equal(part.token_mask, mask[2:4]) and torch.equal(part.view_images, inputs.view_images[2:4])
    assert part.images is images and part.tracks is tracks and part.student_frames == (0,)
    assert inputs.student_images.shape[0] == b  # the original is unchanged
