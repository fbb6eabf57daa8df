"""A non-finite loss or gradient skips the update with a warning; too many in a row stop
the run and leave the last checkpoint as it was."""

import pytest
import torch

from conftest import tiny_config
from mosic import PostPretrainer
from mosic.data.synthetic import SyntheticVideos
from mosic.train.nonfinite import NonFiniteLossError
from mosic.objectives.mosic import MoSiCObjective


def poison_steps(monkeypatch, trainer, bad_steps):
    """Make the loss NaN (so every gradient is NaN too) at the given 1-based steps."""
    original = MoSiCObjective.forward

    def forward(self, inputs, teacher):
        out = original(self, inputs, teacher)
        if trainer.step + 1 in bad_steps:
            out.loss = out.loss * float("nan")
            out.metrics["loss"] = out.metrics["loss"] * float("nan")
        return out

    monkeypatch.setattr(MoSiCObjective, "forward", forward)


def snapshot(trainer):
    return {k: v.clone() for k, v in trainer.learner.state_dict().items()}


def test_a_nan_step_is_skipped_and_training_goes_on(monkeypatch):
    trainer = PostPretrainer(config=tiny_config(**{"train.max_steps": 4}))
    poison_steps(monkeypatch, trainer, {2, 3})
    states = []
    with pytest.warns(RuntimeWarning, match=r"step 2: the loss or a gradient is not finite; the update was skipped \(1 in a row"):
        trainer.fit(SyntheticVideos(num_videos=8, num_frames=12, size=32, seed=0),
                    callbacks=[lambda t, step, m: states.append(snapshot(t))])
    assert trainer.step == 4
    assert [r["nonfinite"] for r in trainer.history] == [0.0, 1.0, 1.0, 0.0]
    for name in states[0]:  # steps 2 and 3 changed nothing, steps 1 and 4 did
        assert torch.equal(states[1][name], states[0][name]), name
        assert torch.equal(states[2][name], states[0][name]), name
    assert any(not torch.equal(states[3][n], states[2][n]) for n in states[0])
    assert all(torch.isfinite(v).all() for v in trainer.learner.state_dict().values())
    # Adam's step counter did not advance on skipped steps
    assert all(int(s["step"]) == 2 for s in trainer.optimizer.state.values())


def test_too_many_in_a_row_stop_the_run_and_keep_the_last_checkpoint(monkeypatch, tmp_path):
    trainer = PostPretrainer(config=tiny_config(**{"train.max_steps": 8, "train.checkpoint_every": 2,
                                                   "train.max_nonfinite_steps": 3}))
    poison_steps(monkeypatch, trainer, set(range(3, 100)))
    with pytest.warns(RuntimeWarning), pytest.raises(NonFiniteLossError, match=r"3 steps in a row \(up to step 5\).*step_0000004.*is unchanged"):
        trainer.fit(SyntheticVideos(num_videos=8, num_frames=12, size=32, seed=0), out_dir=tmp_path)
    # step 4's checkpoint was written after two skipped steps: it holds step 2's weights
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_0000004"
    checkpoint = tmp_path / "checkpoints" / "step_0000004"
    loaded = PostPretrainer.load(checkpoint)
    assert all(torch.isfinite(v).all() for v in loaded.learner.state_dict().values())
    for name, value in trainer.learner.state_dict().items():
        assert torch.equal(loaded.learner.state_dict()[name], value), name


def test_fused_adamw_skips_on_the_device_without_reading_the_flag():
    trainer = PostPretrainer(config=tiny_config())
    trainer._prepare_optimizer(4)
    params = [p for p in trainer.learner.parameters() if p.requires_grad]
    trainer.optimizer = torch.optim.AdamW(params, lr=1e-2, fused=True)  # the CUDA configuration, on CPU
    for p in params:
        p.grad = torch.ones_like(p)
    before = [p.detach().clone() for p in params]
    trainer._guarded_optimizer_step(torch.tensor(True))
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert all(float(trainer.optimizer.state[p]["step"]) == 0 for p in params)
    assert not hasattr(trainer.optimizer, "found_inf")
    trainer._guarded_optimizer_step(torch.tensor(False))
    assert all(not torch.equal(p, b) for p, b in zip(params, before))
    assert all(float(trainer.optimizer.state[p]["step"]) == 1 for p in params)
