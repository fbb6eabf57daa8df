"""Small MoSiC objectives and moving tracks on 12 x 12 images (3 x 3 patches of P = 4 px)."""

import torch

from mosic.objectives import MoSiCObjective, ObjectiveInputs
from mosic.tracks import Tracks


P = 4  # patch size: 3 x 3 patches of 12 x 12 images


GRID = torch.tensor([[x * P + 1.5, y * P + 1.5] for y in range(3) for x in range(3)])  # (9, 2) patch centres


def small(**kwargs):
    torch.manual_seed(0)
    return MoSiCObjective(embed_dim=8, num_prototypes=5, projection_dim=4, head_hidden_dims=(16,), **kwargs)


def inputs_with(xy, visible, teacher, student):
    return ObjectiveInputs(student, teacher, Tracks(xy, visible), P)


def moving_tracks(b=2, t=4):
    """Every point moves one patch to the right per frame (wrapping), all visible."""
    xy = GRID.expand(b, t, 9, 2).clone()
    for k in range(t):
        xy[:, k, :, 0] = (GRID[:, 0] + P * k) % (3 * P)
    return xy, torch.ones(b, t, 9, dtype=torch.bool)
