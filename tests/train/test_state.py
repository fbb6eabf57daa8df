"""The train state (mosic.train.state): save and restore of weights, optimizer, schedule
and every RNG, and the resume checkpoint lookup."""

import random

import numpy as np
import pytest
import torch

from conftest import tiny_config
from mosic import PostPretrainer
from mosic.data.clips import ClipDataset, collate_clips
from mosic.train.state import TrainState, find_resume_checkpoint, rng_state, set_rng_state


def trained(synthetic, steps=2):
    trainer = PostPretrainer(config=tiny_config())
    trainer._prepare_optimizer(4)
    ds = ClipDataset(synthetic, num_frames=4, frame_stride=2, size=32)
    for step in range(steps):
        trainer.train_step(collate_clips([ds[(step, i)] for i in range(4)]))
        trainer.step += 1
    return trainer


def test_rng_state_round_trips_torch_python_and_numpy():
    tensors, meta = rng_state()
    expected = (torch.rand(3), random.random(), np.random.rand(2))
    set_rng_state(tensors, meta)
    again = (torch.rand(3), random.random(), np.random.rand(2))
    assert torch.equal(expected[0], again[0]) and expected[1] == again[1] and np.array_equal(expected[2], again[2])


def test_a_saved_state_restores_weights_optimizer_schedule_step_and_rng(synthetic, tmp_path):
    source = trained(synthetic)
    assert isinstance(source.state, TrainState) and source.state.step == source.step == 2
    source.save(tmp_path / "ckpt")
    draws = torch.rand(4)  # what the RNG gives right after the save

    target = PostPretrainer(config=tiny_config(**{"train.seed": 7}))
    target._prepare_optimizer(4)
    target.state.restore(tmp_path / "ckpt", with_optimizer=True)
    assert target.step == 2
    assert torch.equal(torch.rand(4), draws)
    for key, value in source.state.tensors().items():
        assert torch.equal(target.state.tensors()[key], value), key
    assert target.scheduler.state_dict() == source.scheduler.state_dict()
    a, b = source.optimizer.state_dict()["state"], target.optimizer.state_dict()["state"]
    assert a.keys() == b.keys() and all(torch.equal(a[k]["exp_avg"], b[k]["exp_avg"]) for k in a)


def test_the_checkpoint_keys_are_student_and_teacher_prefixed(synthetic):
    keys = PostPretrainer(config=tiny_config()).state.tensors().keys()
    assert {k.split(".")[0] for k in keys} == {"student", "teacher"}
    no_ema = PostPretrainer(config=tiny_config(**{"train.ema": False})).state.tensors().keys()
    assert {k.split(".")[0] for k in no_ema} == {"student"}


def test_resume_lookup(tmp_path):
    with pytest.raises(ValueError, match="resume=True needs out_dir"):
        find_resume_checkpoint(True, None)
    assert find_resume_checkpoint(True, tmp_path) is None  # nothing saved yet: start fresh
