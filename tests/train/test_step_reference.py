"""benchmarks/step_vs_reference.py: the reference step is a fair baseline (its EMA leaves the
frozen weights it shares with the student alone, so repeats measure the same step)."""

import sys
from pathlib import Path

import torch

from conftest import TINY_VIT

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from step_vs_reference import paper_setting, reference_step  # noqa: E402


def test_reference_step_keeps_frozen_weights_and_moves_the_teacher_by_ema():
    trainer, batch = paper_setting("vit-tiny", dict(TINY_VIT, depth=3), 4, 32, 4, 2, 0.0, "cpu")
    student, teacher = trainer.learner, trainer.teacher_learner
    frozen = {n: p.detach().clone() for n, p in student.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in teacher.named_parameters() if dict(student.named_parameters())[n].requires_grad}
    assert frozen and trainable  # the setting has both kinds
    for _ in range(3):
        reference_step(trainer, batch["frames"], batch["tracks"], None)
    for name, before in frozen.items():
        assert torch.equal(dict(student.named_parameters())[name], before), name  # was x 0.99**3 before the fix
    students = dict(student.named_parameters())
    moved = [n for n, before in trainable.items() if not torch.equal(dict(teacher.named_parameters())[n], before)]
    assert moved  # the teacher follows the student ...
    name = moved[0]
    assert not torch.equal(dict(teacher.named_parameters())[name], students[name])  # ... by EMA, not a copy
