"""ObjectiveInputs (mosic.objectives.base): what every objective receives, checked where it is built."""

import pytest
import torch

from mosic.objectives import MoSiCObjective, ObjectiveInputs
from mosic.tracks import Tracks


def objective_inputs(b=2, t=3, h=2, w=2, d=8, n=4, **changes):
    fields = dict(
        student_tokens=torch.randn(b, 1, h, w, d),
        teacher_tokens=torch.randn(b, t, h, w, d),
        tracks=Tracks(torch.rand(b, t, n, 2) * 8, torch.ones(b, t, n, dtype=torch.bool)),
        patch_size=4,
    )
    fields.update(changes)
    return ObjectiveInputs(**fields)


def test_objective_inputs_accept_consistent_shapes_and_run():
    obj = MoSiCObjective(embed_dim=8, num_prototypes=3, projection_dim=4, head_hidden_dims=())
    out = obj(objective_inputs(student_token_mask=torch.zeros(2, 1, 2, 2, dtype=torch.bool)), teacher=obj)
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"tracks": Tracks(torch.zeros(3, 3, 4, 2), torch.ones(3, 3, 4, dtype=torch.bool))},
         r"tracks.xy must be \(B, T, N, 2\) = \(2, 3, N, 2\) float pixels, B and T as in teacher_tokens \(2, 3, 2, 2, 8\), got torch.float32 \(3, 3, 4, 2\)"),
        ({"tracks": Tracks(torch.zeros(2, 5, 4, 2), torch.ones(2, 5, 4, dtype=torch.bool))}, r"tracks.xy must be \(B, T, N, 2\) = \(2, 3, N, 2\)"),
        ({"student_tokens": torch.zeros(3, 1, 2, 2, 8)}, r"student_tokens must be \(B, S, h, w, D\) = \(2, S, 2, 2, 8\) like teacher_tokens"),
        ({"student_tokens": torch.zeros(2, 1, 3, 2, 8)}, r"student_tokens must be \(B, S, h, w, D\) = \(2, S, 2, 2, 8\)"),
        ({"student_tokens": torch.zeros(2, 2, 2, 8)}, r"student_tokens must be \(B, S, h, w, D\) float, got torch.float32 \(2, 2, 2, 8\)"),
        ({"teacher_tokens": torch.zeros(2, 3, 2, 2)}, r"teacher_tokens must be \(B, T, h, w, D\) float"),
        ({"teacher_tokens": torch.zeros(2, 3, 2, 2, 8, dtype=torch.uint8)}, r"teacher_tokens must be \(B, T, h, w, D\) float, got torch.uint8"),
        ({"patch_size": 0}, r"patch_size must be an int > 0"),
        ({"student_frames": (5,)}, r"student_frames must be a tuple of clip frame indices in \[0, T=3\), got \(5,\)"),
        ({"student_frames": (0, 1)}, r"student_tokens holds 1 frames but student_frames lists 2"),
        ({"student_token_mask": torch.zeros(2, 1, 2, 2)}, r"student_token_mask must be None or \(B, S, h, w\) = \(2, 1, 2, 2\) bool, got torch.float32"),
        ({"student_view_tokens": torch.zeros(2, 2, 2, 5)}, r"student_view_tokens must be None or \(B=2, h', w', D=8\) float"),
        ({"views": []}, r"views must be None or one ViewTransform per clip \(B=2\), got 0"),
    ],
)
def test_objective_inputs_must_agree(changes, match):
    with pytest.raises(ValueError, match="ObjectiveInputs: " + match):
        objective_inputs(**changes)
    with pytest.raises(TypeError, match="tracks must be mosic.Tracks"):
        objective_inputs(tracks=(torch.zeros(2, 3, 4, 2), torch.ones(2, 3, 4)))
