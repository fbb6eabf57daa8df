"""The objective examples: a registered custom objective, and the objective comparison (smoke)."""

import json
import math

import pytest
import torch
from conftest import load_example, run_example


def test_register_custom_objective_smoke(tmp_path):
    out = run_example("register_custom_objective.py", "--out", str(tmp_path / "run"))
    assert "mosic-soft" in out.splitlines()[0]
    assert "trained 3 steps with mosic-soft" in out
    assert "reloaded from" in out and "SoftMoSiC" in out
    assert (tmp_path / "run" / "checkpoints" / "latest").is_file()


def test_soft_targets_become_mosic_hard_targets_when_sharpened():
    from mosic.objectives import MoSiCObjective, ObjectiveInputs
    from mosic.trackers import Tracks

    example = load_example("register_custom_objective")
    torch.manual_seed(0)
    hard = MoSiCObjective(embed_dim=8, num_prototypes=5, projection_dim=4, head_hidden_dims=(16,))
    soft = example.SoftMoSiC(embed_dim=8, num_prototypes=5, projection_dim=4, head_hidden_dims=(16,), target_sharpness=200.0)
    soft.load_state_dict(hard.state_dict())
    grid = torch.tensor([[x * 4 + 1.5, y * 4 + 1.5] for y in range(3) for x in range(3)])
    xy = (grid + torch.randn(2, 3, 9, 2)).clamp(0, 11)
    xy[:, 0] = grid
    visible = torch.rand(2, 3, 9) > 0.3
    visible[:, 0] = True
    inputs = ObjectiveInputs(torch.randn(2, 1, 3, 3, 8), torch.randn(2, 3, 3, 3, 8), Tracks(xy, visible), 4)
    assert torch.allclose(soft(inputs, teacher=soft).loss, hard(inputs, teacher=hard).loss, atol=1e-3)
    soft.target_sharpness = 1.0  # Sinkhorn's own soft codes: a different cross-entropy
    assert not torch.allclose(soft(inputs, teacher=soft).loss, hard(inputs, teacher=hard).loss, atol=1e-3)


@pytest.mark.slow
def test_objective_comparison_smoke(tmp_path):
    out = run_example("objective_comparison.py", "--out", str(tmp_path), timeout=600)
    rows = json.loads((tmp_path / "results.json").read_text())
    assert set(rows) == {"before", "mosic", "mosic-propagated", "mosic-still", "spacetime-kmeans", "correspondence"}
    for name, row in rows.items():
        assert 0 <= row["dataset_miou"] <= 100 and 0 <= row["clip_miou"] <= 100, name
        assert 0 <= row["track_consistency"] <= 100, name
    assert 0 < rows["before"]["target_difference"] <= 100
    assert "| mosic-still |" in out and "tracked and static targets differ" in out
    diagnosed = run_example("objective_comparison.py", "--diagnose", str(tmp_path / "mosic"), str(tmp_path / "mosic-still"))
    assert "| before |" in diagnosed and "| mosic-still |" in diagnosed and "NMI(target, position)" in diagnosed


def test_normalized_mutual_information_on_known_cases():
    example = load_example("objective_comparison")
    nmi = example.normalized_mutual_information
    a = [0, 0, 1, 1, 2, 2]
    assert nmi(a, [5, 5, 7, 7, 9, 9]) == pytest.approx(1.0)  # the same partition, other names
    assert nmi([0, 1, 0, 1], [0, 0, 1, 1]) == pytest.approx(0.0, abs=1e-12)  # independent
    # b is a function of a (a coarsening): I(a; b) = H(b)
    h_a, h_b = math.log(3), -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert nmi(a, [0, 0, 0, 0, 1, 1]) == pytest.approx(2 * h_b / (h_a + h_b))
