"""The student and its EMA teacher (mosic.train.student_teacher)."""

import pytest
import torch

from mosic.train.student_teacher import ema_update_


# ---- the fused _foreach_lerp_ EMA == a per-parameter mul_/add_ loop (fp32 and bf16)


def _ulp_bf16(x: torch.Tensor) -> torch.Tensor:
    """Spacing of bf16 numbers (8 significant bits) around |x|, in float64."""
    exponent = torch.floor(torch.log2(x.abs().clamp_min(2.0**-126)))
    return torch.pow(2.0, exponent - 7)


@pytest.mark.parametrize("momentum", [0.0, 0.99, 1.0])
def test_foreach_ema_equals_per_parameter_loop(momentum):
    g = torch.Generator().manual_seed(3)
    shapes = [(), (1,), (7,), (5, 3), (2, 3, 4), (0, 4), (33, 17)]
    dtypes = [torch.float32, torch.bfloat16]
    specs = [(s, d) for d in dtypes for s in shapes]
    teacher = [torch.randn(s, generator=g).to(d) for s, d in specs]
    student = [(t.float() + 0.1 * torch.randn(t.shape, generator=g)).to(t.dtype) for t in teacher]
    student_before = [s.clone() for s in student]
    exact = [(momentum * t.double() + (1 - momentum) * s.double()) for t, s in zip(teacher, student)]
    loop = [t.clone() for t in teacher]
    for t, s in zip(loop, student):
        t.mul_(momentum).add_(s, alpha=1 - momentum)
    fused = [t.clone() for t in teacher]
    ids = [id(t) for t in fused]
    ema_update_(fused, student, momentum)  # fp32 and bf16 tensors in one call

    assert [id(t) for t in fused] == ids  # in place
    assert all(torch.equal(s, b) for s, b in zip(student, student_before))
    for (shape, dtype), f, lp, ref, t, s in zip(specs, fused, loop, exact, teacher, student):
        assert f.dtype == dtype and f.shape == torch.Size(shape)
        if momentum == 1.0:  # the teacher stays put, bit for bit
            assert torch.equal(f, t) and torch.equal(lp, t), (shape, dtype)
        elif momentum == 0.0:  # the teacher becomes the student, bit for bit
            assert torch.equal(f, s) and torch.equal(lp, s), (shape, dtype)
        elif dtype == torch.float32:
            torch.testing.assert_close(f, lp, rtol=1e-6, atol=1e-6)
            assert ((f.double() - ref).abs() < 1e-6).all(), shape
        else:  # bf16: the loop rounds twice, the fused lerp once (in fp32)
            ulp = _ulp_bf16(ref)
            assert ((f.double() - ref).abs() <= ulp).all(), shape
            assert ((f.double() - lp.double()).abs() <= 2 * ulp).all(), shape


# ---- StudentTeacher: the teacher copy, its pairs, the EMA and the hooks ------------------


def _student_teacher(ema=True, train_blocks=1):
    from conftest import TINY_VIT
    from mosic import create_backbone
    from mosic.objectives.mosic import MoSiCObjective
    from mosic.train.learner import Learner
    from mosic.train.student_teacher import StudentTeacher

    torch.manual_seed(0)
    backbone = create_backbone("vit-tiny", pretrained=False, **TINY_VIT)
    backbone.set_trainable(train_blocks)
    objective = MoSiCObjective(backbone.embed_dim, num_prototypes=8, projection_dim=16, head_hidden_dims=(32,))
    return StudentTeacher(Learner(backbone, objective), ema=ema)


def test_the_teacher_shares_the_frozen_tensors_and_copies_the_trainable_ones():
    model = _student_teacher()
    student, teacher = dict(model.student.named_parameters()), dict(model.teacher.named_parameters())
    assert student.keys() == teacher.keys() and model.has_ema
    for name, param in student.items():
        if param.requires_grad:
            assert teacher[name] is not param and torch.equal(teacher[name], param), name
        else:
            assert teacher[name] is param, name  # held once in memory
    assert not any(p.requires_grad for p in model.teacher.parameters())
    pair_ids = {(id(t), id(s)) for t, s in model.pairs}
    assert pair_ids == {(id(teacher[n]), id(p)) for n, p in student.items() if p.requires_grad}


def test_update_teacher_moves_only_the_trainable_pairs_by_the_ema_formula():
    model = _student_teacher()
    with torch.no_grad():
        for p in model.student.parameters():
            if p.requires_grad:
                p.add_(1.0)
    before = {n: p.clone() for n, p in model.teacher.named_parameters()}
    model.update_teacher(0.75)
    student = dict(model.student.named_parameters())
    for name, param in model.teacher.named_parameters():
        if student[name].requires_grad:
            expected = 0.75 * before[name] + 0.25 * student[name]
            if name == "objective.prototypes.weight":  # then renormalised by the teacher objective's hook
                expected = torch.nn.functional.normalize(expected, dim=-1)
            torch.testing.assert_close(param, expected, atol=1e-6, rtol=0)
        else:
            assert torch.equal(param, before[name]), name
    norms = model.teacher.objective.prototypes.weight.norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))  # the teacher's prototypes renormalised


def test_without_ema_the_teacher_is_the_student_and_the_update_changes_nothing():
    model = _student_teacher(ema=False)
    assert model.teacher is model.student and not model.has_ema and model.learners() == [model.student]
    before = {k: v.clone() for k, v in model.student.state_dict().items()}
    model.update_teacher(0.5)
    assert all(torch.equal(v, before[k]) for k, v in model.student.state_dict().items())
    assert {k.split(".")[0] for k in model.state_tensors()} == {"student"}
