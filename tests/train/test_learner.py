"""The Learner (mosic.train.learner): the student run on frame 0 only == the student run on all
frames, then frame 0 read (tokens, loss, metrics and gradients)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from conftest import TINY_VIT
from helpers.tracks import random_tracks
from mosic import create_backbone
from mosic.objectives import MoSiCObjective, ObjectiveInputs
from mosic.train.inputs import StepInputs
from mosic.train.learner import Learner


def tiny_learner(seed: int = 0) -> Learner:
    torch.manual_seed(seed)
    backbone = create_backbone("vit-tiny", pretrained=False, **TINY_VIT)
    backbone.set_trainable("all")
    objective = MoSiCObjective(backbone.embed_dim, num_prototypes=8, projection_dim=16, head_hidden_dims=(32,))
    return Learner(backbone, objective)


def clip_problem(b: int = 2, t: int = 3, drop: int = 4):
    g = torch.Generator().manual_seed(1)
    size, grid = TINY_VIT["img_size"], TINY_VIT["img_size"] // TINY_VIT["patch_size"]
    images = torch.randn(b, t, 3, size, size, generator=g)
    mask = torch.zeros(b, t, grid * grid, dtype=torch.bool)
    for i in range(b):
        for j in range(t):  # a different mask on every frame
            mask[i, j, torch.randperm(grid * grid, generator=g)[:drop]] = True
    tracks = random_tracks(g, b, t, 12, size)
    return images, mask.view(b, t, grid, grid), tracks


@pytest.mark.parametrize("train", [False, True])
def test_student_tokens_of_frame_zero_alone_equal_all_frames_then_frame_zero(train):
    learner = tiny_learner().train(train)
    images, mask, _ = clip_problem()
    with torch.no_grad():
        alone = learner.tokens(images[:, [0]])
        full = learner.tokens(images)
        alone_masked = learner.tokens(images[:, [0]], mask[:, [0]])
        full_masked = learner.tokens(images, mask)
    assert alone.shape == (2, 1, 4, 4, 48)
    torch.testing.assert_close(alone, full[:, [0]], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone_masked, full_masked[:, [0]], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(alone_masked, alone, atol=1e-2)  # the mask changes the tokens
    assert torch.equal(alone_masked[mask[:, [0]]], torch.zeros_like(alone_masked[mask[:, [0]]]))
    assert not torch.allclose(full[:, [0]], full[:, [1]], atol=1e-2)  # frames differ


@pytest.mark.parametrize("masked", [False, True])
def test_mosic_loss_and_gradients_from_frame_zero_alone_equal_the_all_frames_path(masked):
    student = tiny_learner(0).train()
    teacher = copy.deepcopy(student).requires_grad_(False).eval()
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.01 * torch.randn_like(p))
    images, mask, tracks = clip_problem()
    mask = mask if masked else None
    with torch.no_grad():
        teacher_tokens = teacher.tokens(images)

    # fast path (the trainer's): the student runs on frame 0 only
    student_inputs = StepInputs(images, tracks, (0,), images[:, [0]], None if mask is None else mask[:, [0]])
    fast = student(student_inputs, teacher_tokens, teacher.objective)
    fast.loss.backward()
    fast_grads = {n: p.grad.clone() for n, p in student.named_parameters()}
    student.zero_grad(set_to_none=True)

    # reference: the student on all T frames, the objective reads frame 0
    t = images.shape[1]
    inputs = ObjectiveInputs(
        student.tokens(images, mask), teacher_tokens, tracks, student.backbone.patch_size,
        student_token_mask=mask, student_frames=tuple(range(t)),
    )
    reference = student.objective(inputs, teacher=teacher.objective)
    reference.loss.backward()

    torch.testing.assert_close(fast.loss, reference.loss, atol=1e-5, rtol=1e-5)
    for key, value in reference.metrics.items():
        torch.testing.assert_close(fast.metrics[key], value, atol=1e-5, rtol=1e-5, msg=key)
    assert math.isfinite(float(fast.loss.detach())) and float(fast.loss.detach()) > 0
    checked = 0
    for name, p in student.named_parameters():
        if p.grad is None:  # unused by this objective in both paths
            assert fast_grads[name] is None, name
            continue
        scale = p.grad.abs().max()
        torch.testing.assert_close(fast_grads[name], p.grad, atol=1e-5 * max(float(scale), 1e-3), rtol=1e-4, msg=name)
        checked += bool(scale > 0)
    assert checked > 10  # the backbone blocks, patch embedding and the head all got gradients
    assert student.backbone.model.patch_embed.proj.weight.grad.abs().max() > 0
