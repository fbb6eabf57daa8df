"""Token dropping (mosic.backbones.token_drop): which tokens a token mask keeps."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from helpers.fuzz import FUZZ
from mosic.backbones.token_drop import kept_indices


# ---- fuzzing (hypothesis, tests/helpers/fuzz.py)


@FUZZ
@given(b=st.integers(1, 4), h=st.integers(1, 6), w=st.integers(1, 6), drop=st.floats(0, 1), seed=st.integers(0, 2**16))
def test_kept_indices_valid(b, h, w, drop, seed):
    g = torch.Generator().manual_seed(seed)
    k = round(drop * h * w)
    order = torch.rand(b, h * w, generator=g).argsort(1)
    mask = torch.zeros(b, h * w, dtype=torch.bool).scatter(1, order[:, :k], True).view(b, h, w)
    keep = kept_indices(mask, b, h, w)
    assert keep.shape == (b, h * w - k) and keep.dtype == torch.int64
    assert (keep[:, 1:] > keep[:, :-1]).all()  # increasing, so distinct
    for i in range(b):
        assert keep[i].tolist() == torch.nonzero(~mask[i].flatten()).flatten().tolist()


@FUZZ
@given(
    shape=st.lists(st.integers(1, 4), min_size=2, max_size=4),
    dtype=st.sampled_from([torch.bool, torch.uint8, torch.float32]),
    uneven=st.booleans(),
)
def test_kept_indices_invalid(shape, dtype, uneven):
    b, h, w = 2, 3, 3
    mask = torch.zeros(shape, dtype=dtype)
    if tuple(shape) == (b, h, w) and dtype == torch.bool:
        if uneven:
            mask[0, 0, 0] = True  # image 0 drops one token, image 1 none
            with pytest.raises(ValueError, match="same number of tokens"):
                kept_indices(mask, b, h, w)
        else:
            assert kept_indices(mask, b, h, w).shape == (b, h * w)
        return
    with pytest.raises(ValueError, match=r"token_mask must be a bool tensor of shape \(B, h, w\)"):
        kept_indices(mask, b, h, w)


def test_kept_indices_of_an_empty_batch_is_empty():
    assert kept_indices(torch.zeros(0, 2, 2, dtype=torch.bool), 0, 2, 2).shape[0] == 0
