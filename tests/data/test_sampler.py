"""The epoch sampler (mosic.data.sampler): resumable at any step, disjoint across ranks."""

import itertools

import pytest

from mosic.data.sampler import EpochSampler


def take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


@pytest.mark.parametrize("start", [0, 1, 3, 7])
def test_starting_at_a_step_equals_skipping_that_many_batches(start):
    data = list(range(10))
    whole = EpochSampler(data, num_replicas=1, rank=0, seed=3, batch_size=3)
    assert whole.steps_per_epoch == 3 and len(whole) == 9  # the last partial batch is dropped
    resumed = EpochSampler(data, num_replicas=1, rank=0, seed=3, batch_size=3)
    resumed.start_step = start
    assert take(resumed, 12) == take(whole, 3 * start + 12)[3 * start :]


def test_every_epoch_is_a_new_permutation_and_ranks_never_share_a_video():
    data = list(range(12))
    ranks = [EpochSampler(data, num_replicas=2, rank=r, seed=0, batch_size=3) for r in range(2)]
    assert ranks[0].steps_per_epoch == 2
    streams = [take(s, 12) for s in ranks]  # two epochs of 6 items per rank
    for epoch in range(2):
        seen = [{i for e, i in stream if e == epoch} for stream in streams]
        assert len(seen[0]) == len(seen[1]) == 6 and not seen[0] & seen[1]
    first = [i for e, i in streams[0] if e == 0]
    second = [i for e, i in streams[0] if e == 1]
    assert first != second


def test_fewer_items_than_a_batch_gives_no_steps_and_an_empty_stream():
    sampler = EpochSampler(list(range(2)), num_replicas=1, rank=0, seed=0, batch_size=3)
    assert sampler.steps_per_epoch == 0 and take(sampler, 5) == []
