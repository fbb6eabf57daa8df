import math

import pytest
import torch

from mosic.objectives import MoSiCObjective, ObjectiveInputs
from mosic.trackers import Tracks

E1, E2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
P = 4  # patch size; 2 x 2 patches, 8 x 8 images


def identity_objective(**kwargs):
    """K=2 prototypes e1, e2 and an identity projection, so scores are cosine similarities."""
    obj = MoSiCObjective(embed_dim=2, num_prototypes=2, projection_dim=2, head_hidden_dims=(), **kwargs)
    with torch.no_grad():
        obj.head.mlp[0].weight.copy_(torch.eye(2))
        obj.head.mlp[0].bias.zero_()
        obj.prototypes.weight.copy_(torch.stack([E1, E2]))
    return obj


def hand_built_inputs(a_visible_in_frame_1=True):
    """Point A starts at patch (row 0, col 0) and moves right to patch (0, 1);
    point B stays at patch (1, 1). Teacher frame 0: A's patch e1, B's e2;
    frame 1: A's new patch e2, B's patch e1. The student sees e1 everywhere on frame 0."""
    teacher = torch.zeros(1, 2, 2, 2, 2)  # (B, T, h, w, D)
    teacher[0, 0, 0, 0], teacher[0, 0, 1, 1] = E1, E2
    teacher[0, 1, 0, 1], teacher[0, 1, 1, 1] = E2, E1
    teacher[0, 0, 0, 1], teacher[0, 0, 1, 0] = E1, E2
    teacher[0, 1, 0, 0], teacher[0, 1, 1, 0] = E1, E2
    student = E1.expand(1, 1, 2, 2, 2).clone()
    c0, c1 = 1.5, 5.5  # pixel centres of patch columns/rows 0 and 1
    xy = torch.tensor([[[[c0, c0], [c1, c1]], [[c1, c0], [c1, c1]]]])  # (B, T, N=2, 2) (x, y)
    visible = torch.ones(1, 2, 2, dtype=torch.bool)
    visible[0, 1, 0] = a_visible_in_frame_1
    return ObjectiveInputs(student, teacher, Tracks(xy, visible), P)


# the student scores are (cos/0.1) = (10, 0): -log p(e1) and -log p(e2)
SMALL = math.log1p(math.exp(-10))
LARGE = 10 + SMALL


@pytest.mark.parametrize(
    "target, a_visible, expected",
    [
        ("tracked", True, (SMALL + LARGE + LARGE + SMALL) / 4),  # A: e1 then e2; B: e2 then e1
        ("tracked", False, (SMALL + LARGE + SMALL) / 3),  # A's frame-1 entry drops out
        ("propagated", False, (SMALL + LARGE + LARGE) / 3),  # B keeps its frame-0 e2
    ],
)
def test_loss_on_a_hand_computed_example(target, a_visible, expected):
    obj = identity_objective(target=target)
    out = obj(hand_built_inputs(a_visible), teacher=obj)
    assert math.isclose(float(out.loss.detach()), expected, rel_tol=1e-5)
    assert math.isclose(float(out.metrics["loss"]), expected, rel_tol=1e-5)


def test_mean_over_all_counts_invisible_entries_in_the_denominator():
    obj = identity_objective(mean_over_all=True)
    out = obj(hand_built_inputs(False), teacher=obj)
    assert math.isclose(float(out.loss.detach()), (SMALL + LARGE + SMALL) / 4, rel_tol=1e-5)


def test_tracked_and_propagated_agree_when_nothing_moves():
    torch.manual_seed(0)
    obj = MoSiCObjective(embed_dim=8, num_prototypes=5, projection_dim=4, head_hidden_dims=(16,))
    frame = torch.randn(2, 1, 3, 3, 8)
    grid = torch.tensor([[x * 4 + 1.5, y * 4 + 1.5] for y in range(3) for x in range(3)])
    xy = grid.expand(2, 4, 9, 2).clone()
    inputs = ObjectiveInputs(frame, frame.expand(2, 4, 3, 3, 8), Tracks(xy, torch.ones(2, 4, 9, dtype=torch.bool)), 4)
    tracked = obj(inputs, teacher=obj).loss
    obj.target = "propagated"
    assert torch.allclose(tracked, obj(inputs, teacher=obj).loss)


def test_gradients_reach_only_the_student():
    torch.manual_seed(0)
    student = identity_objective()
    teacher = identity_objective()
    inputs = hand_built_inputs()
    inputs.student_tokens.requires_grad_(True)
    student(inputs, teacher=teacher).loss.backward()
    assert inputs.student_tokens.grad is not None and inputs.student_tokens.grad.abs().sum() > 0
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_points_on_dropped_student_tokens_give_no_prediction():
    obj = identity_objective()
    inputs = hand_built_inputs()
    inputs.student_token_mask = torch.zeros(1, 1, 2, 2, dtype=torch.bool)
    inputs.student_token_mask[0, 0, 1, 1] = True  # B's patch dropped: only A's entries remain
    out = obj(inputs, teacher=obj)
    assert math.isclose(float(out.loss.detach()), (SMALL + LARGE) / 2, rel_tol=1e-5)


def test_prototypes_stay_unit_norm_after_the_hook():
    obj = MoSiCObjective(embed_dim=4, num_prototypes=3, projection_dim=4, head_hidden_dims=())
    with torch.no_grad():
        obj.prototypes.weight.mul_(3.0)
    obj.after_optimizer_step()
    assert torch.allclose(obj.prototypes.weight.norm(dim=1), torch.ones(3))


def test_bad_options_fail_fast():
    with pytest.raises(ValueError, match="loss_points"):
        MoSiCObjective(embed_dim=4, loss_points="some")
    with pytest.raises(ValueError, match="target"):
        MoSiCObjective(embed_dim=4, target="future")
