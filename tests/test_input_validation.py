"""Public functions fail fast on malformed inputs, with a message that names the argument
and the expected form (instead of an IndexError or RuntimeError from deep inside torch)."""

import math

import numpy as np
import pytest
import torch

import mosic
from conftest import TINY_VIT
from mosic.config import ConfigError, RunConfig
from mosic.objectives import MoSiCObjective, ObjectiveInputs
from mosic.points import sample_at_points
from mosic.sinkhorn import sinkhorn
from mosic.tracks import Tracks

# ----------------------------------------------------------------------------- sinkhorn


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"scores": [[0.1, 0.2]]}, TypeError, r"scores must be an \(M, K\) float tensor, got list"),
        ({"scores": torch.zeros(2, 3, 4)}, ValueError, r"scores must be an \(M, K\) float tensor .*got torch.float32 \(2, 3, 4\)"),
        ({"scores": torch.zeros(4, 3, dtype=torch.int64)}, ValueError, r"scores must be an \(M, K\) float .*torch.int64"),
        ({"scores": torch.zeros(4, 0)}, ValueError, r"scores must be an \(M, K\) float tensor with K >= 1 .*got torch.float32 \(4, 0\)"),
        ({"epsilon": 0.0}, ValueError, r"epsilon must be a finite number > 0 .*got 0.0"),
        ({"epsilon": -0.05}, ValueError, r"epsilon must be a finite number > 0"),
        ({"epsilon": math.nan}, ValueError, r"epsilon must be a finite number > 0 .*got nan"),
        ({"epsilon": "0.05"}, TypeError, r"epsilon must be a finite number > 0 .*got str"),
        ({"iterations": 0}, ValueError, r"iterations must be an int >= 1 .*got 0"),
        ({"iterations": 2.5}, TypeError, r"iterations must be an int >= 1 .*got float"),
        ({"iterations": True}, TypeError, r"iterations must be an int >= 1 .*got bool"),
        ({"mask": torch.ones(5, dtype=torch.bool)}, ValueError, r"mask must be None or an \(M,\) = \(4,\) bool tensor, got torch.bool \(5,\)"),
        ({"mask": torch.ones(4)}, ValueError, r"mask must be None or an \(M,\) = \(4,\) bool tensor, got torch.float32 \(4,\)"),
        ({"mask": [True] * 4}, ValueError, r"mask must be None or an \(M,\) = \(4,\) bool tensor, got list"),
    ],
)
def test_sinkhorn_rejects_malformed_arguments(kwargs, error, match):
    args = {"scores": torch.zeros(4, 3), "epsilon": 0.05, "iterations": 3, "mask": None, **kwargs}
    with pytest.raises(error, match="sinkhorn: " + match):
        sinkhorn(**args)


def test_sinkhorn_rejects_non_finite_used_rows_on_cpu():
    scores = torch.zeros(4, 3)
    scores[2, 1] = math.nan
    with pytest.raises(ValueError, match=r"sinkhorn: scores must be finite in every used row .*inf/nan in 1 of 4 rows"):
        sinkhorn(scores)
    mask = torch.tensor([True, True, False, True])  # the bad row takes no part: accepted
    q = sinkhorn(scores, mask=mask)
    assert torch.equal(q[2], torch.zeros(3)) and torch.allclose(q[mask].sum(1), torch.ones(3))
    assert sinkhorn(torch.zeros(0, 3)).shape == (0, 3)  # a process without rows (DDP)


# ----------------------------------------------------------------------------- sample_at_points


def test_sample_at_points_message_names_xy_and_its_form():
    with pytest.raises(ValueError, match=r"^sample_at_points: xy must be \(B=2, N, 2\) float pixels \(x, y\), got torch.int64 \(2, 5, 3\)$"):
        sample_at_points(torch.zeros(2, 3, 3, 4), torch.zeros(2, 5, 3, dtype=torch.int64), 8)


@pytest.mark.parametrize(
    "tokens,xy,patch,mode,error,match",
    [
        (torch.zeros(2, 3, 4), torch.zeros(2, 5, 2), 8, "bilinear", ValueError, r"tokens must be a \(B, h, w, D\) float patch grid, got torch.float32 \(2, 3, 4\)"),
        (torch.zeros(2, 3, 3, 4, dtype=torch.int32), torch.zeros(2, 5, 2), 8, "bilinear", ValueError, r"tokens must be .*torch.int32"),
        (np.zeros((2, 3, 3, 4)), torch.zeros(2, 5, 2), 8, "bilinear", TypeError, r"tokens must be .*got ndarray"),
        (torch.zeros(2, 0, 3, 4), torch.zeros(2, 5, 2), 8, "bilinear", ValueError, r"tokens must be a \(B, h, w, D\) grid with h, w >= 1, got \(2, 0, 3, 4\)"),
        (torch.zeros(2, 3, 3, 4), torch.zeros(3, 5, 2), 8, "bilinear", ValueError, r"xy must be \(B=2, N, 2\) float pixels \(x, y\), got torch.float32 \(3, 5, 2\)"),
        (torch.zeros(2, 3, 3, 4), torch.zeros(2, 2), 8, "bilinear", ValueError, r"xy must be \(B=2, N, 2\)"),
        (torch.zeros(2, 3, 3, 4), torch.zeros(2, 5, 2), 0, "bilinear", ValueError, r"patch_size must be an int > 0 .*got 0"),
        (torch.zeros(2, 3, 3, 4), torch.zeros(2, 5, 2), 8.0, "bilinear", TypeError, r"patch_size must be an int > 0 .*got float"),
        (torch.zeros(2, 3, 3, 4), torch.zeros(2, 5, 2), 8, "bicubic", ValueError, r"mode must be 'bilinear' or 'nearest', got 'bicubic'"),
    ],
)
def test_sample_at_points_rejects_malformed_arguments(tokens, xy, patch, mode, error, match):
    with pytest.raises(error, match="sample_at_points: " + match):
        sample_at_points(tokens, xy, patch, mode)


# ----------------------------------------------------------------------------- objectives


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


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"temperature": 0.0}, r"temperature must be a finite number > 0, got 0.0"),
        ({"sinkhorn_epsilon": -1.0}, r"sinkhorn_epsilon must be a finite number > 0"),
        ({"sinkhorn_iterations": 0}, r"sinkhorn_iterations must be an int >= 1, got 0"),
        ({"head_hidden_dims": (16, 0)}, r"every entry of hidden_dims \(head_hidden_dims\) must be a positive int, got 0"),
        ({"head_hidden_dims": 16}, r"hidden_dims must be a sequence of positive ints"),
        ({"embed_dim": 0}, r"in_dim \(the backbone's embed_dim\) must be a positive int, got 0"),
        ({"projection_dim": -4}, r"out_dim \(projection_dim\) must be a positive int"),
        ({"num_prototypes": 0}, r"num_prototypes must be a positive int, got 0"),
        ({"loss_points": "some"}, r"loss_points must be 'visible' or 'all'"),
    ],
)
def test_mosic_objective_arguments(kwargs, match):
    args = {"embed_dim": 8, "num_prototypes": 3, "projection_dim": 4, "head_hidden_dims": (), **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        MoSiCObjective(**args)


def test_objective_expressions():
    with pytest.raises(ValueError, match=r"the weight of 'mosic' in the objective '1e999 mosic' must be finite"):
        mosic.create_objective("1e999 mosic", 8)
    with pytest.raises(TypeError, match="objective name must be a string"):
        mosic.create_objective(3, 8)
    with pytest.raises(ValueError, match="cannot read '-1 mosic'"):
        mosic.create_objective("-1 mosic", 8)


# ----------------------------------------------------------------------------- registries


@pytest.mark.parametrize(
    "create,name,close",
    [
        (mosic.create_backbone, "dinov2-s16", "'dinov2-s14'"),
        (mosic.create_tracker, "cotraker3", "'cotracker3'"),
        (lambda name: mosic.create_objective(name, 8), "mosic-propagate", "'mosic-propagated'"),
        (lambda name: mosic.create_objective(name, 8), "mosic + 0.1 corespondence", "'correspondence'"),
    ],
)
def test_unknown_names_list_close_matches(create, name, close):
    with pytest.raises(mosic.UnknownNameError, match=f"unknown .*Did you mean: .*{close}"):
        create(name)


# ----------------------------------------------------------------------------- backbones


@pytest.fixture(scope="module")
def tiny_backbone():
    return mosic.create_backbone("vit-tiny", pretrained=False, **{**TINY_VIT, "depth": 1})


def test_backbone_images_are_checked(tiny_backbone):
    with pytest.raises(ValueError, match=r"images must be \(B, 3, H, W\) float.*got torch.float32 \(3, 32, 32\)"):
        tiny_backbone.patch_tokens(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match=r"images must be \(B, 3, H, W\) float.*got torch.float32 \(1, 4, 32, 32\)"):
        tiny_backbone.patch_tokens(torch.zeros(1, 4, 32, 32))
    with pytest.raises(ValueError, match="not divisible by the patch size 8"):
        tiny_backbone.patch_tokens(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"token_mask must be a bool tensor of shape \(B, h, w\) = \(2, 4, 4\)"):
        tiny_backbone.patch_tokens(torch.zeros(2, 3, 32, 32), token_mask=torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="preprocess expects uint8 frames"):
        tiny_backbone.preprocess(torch.zeros(1, 3, 32, 32))


def test_backbone_rejects_uint8_images_readably(tiny_backbone):
    with pytest.raises(ValueError, match=r"images must be .*float.*preprocess"):
        tiny_backbone.patch_tokens(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_weights_and_features_arguments(tiny_backbone):
    from mosic.backbones.formats import load_backbone_weights
    from mosic.eval.features import dense_features, resolve_backbone

    with pytest.raises(ValueError, match=r"a state dict must map str names to tensors; not so for \['a'\]"):
        load_backbone_weights(tiny_backbone, {"a": 1.0})
    with pytest.raises(TypeError, match="prefix must be None or a str"):
        load_backbone_weights(tiny_backbone, {}, prefix=3)
    images = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="dense_features: batch_size must be an int >= 1, got 0"):
        dense_features(tiny_backbone, images, batch_size=0)
    with pytest.raises(ValueError, match=r"dense_features: size must be None, an int or \(H, W\) ints, got 'big'"):
        dense_features(tiny_backbone, images, size="big")
    with pytest.raises(ValueError, match=r"dense_features: images must be \(N, H, W, 3\) uint8 RGB, got \(2, 32, 32\)"):
        dense_features(tiny_backbone, images[..., 0])
    with pytest.raises(TypeError, match="dense_features: backbone must be a mosic Backbone"):
        dense_features("vit-tiny", images)
    with pytest.raises(TypeError, match="resolve_backbone: spec must be a Backbone"):
        resolve_backbone(3.5)
    assert dense_features(tiny_backbone, images, size=(np.int64(16), 32)).shape == (2, 2, 4, 48)


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "data,match",
    [
        ({"train": {"seed": -1}}, r"train\.seed: Input should be greater than or equal to 0 \(got -1\)"),
        ({"optim": {"betas": [0.9, 1.0]}}, r"optim\.betas: .*betas must be two numbers in \[0, 1\)"),
        ({"train": {"device": "gpu0"}}, r"train\.device: .*device must be 'auto' or a torch device .*got 'gpu0'"),
        ({"backbone": {"train_blocks": -1}}, r"backbone\.train_blocks: Input should be greater than or equal to 0 or Input should be 'all' \(got -1\)"),
        ({"objective": {"head_hidden_dims": [64, 0]}}, r"objective\.head_hidden_dims\.1: Input should be greater than or equal to 1"),
        ({"objective": {"temperature": math.inf}}, r"objective\.temperature: Input should be a finite number \(got inf\)"),
        ({"data": {"clip_seconds": math.nan}}, r"data\.clip_seconds: Input should be a finite number"),
        ({"data": {"crop_scale": [0.9, 0.2]}}, r"data\.crop_scale: .*0 < low <= high <= 1"),
        ({"objective": {"name": "mosic - static"}}, r"objective\.name: .*cannot read 'mosic - static'"),
        ({"objective": {"name": "1e400 mosic"}}, r"objective\.name: .*must be finite"),
        ({"tracker": {"grid_size": 0}}, r"tracker\.grid_size: Input should be greater than or equal to 1"),
        ({"data": {"num_frames": "many"}}, r"data\.num_frames: Input should be a valid integer"),
        ({"train": {"max_step": 3}}, r"train\.max_step: unknown key"),
        ([1, 2], r"a config must be a mapping of sections"),
    ],
)
def test_bad_config_values_name_the_field(data, match):
    with pytest.raises(ConfigError, match=match):
        RunConfig.from_dict(data)


def test_bad_overrides_are_config_errors():
    with pytest.raises(ConfigError, match="overrides must be a dict"):
        RunConfig().with_overrides("train.seed=1")
    with pytest.raises(ConfigError, match="override keys must be strings"):
        RunConfig().with_overrides({1: 2})
    with pytest.raises(ConfigError, match=r"override 3 must look like section.key=value"):
        RunConfig().with_overrides([3])
    with pytest.raises(ConfigError, match=r"the override 'train.seed=\[1' is not valid YAML"):
        RunConfig().with_overrides(["train.seed=[1"])
    with pytest.raises(TypeError, match="spec must be a file path or a preset name"):
        RunConfig.load(42)


def test_tracks_and_query_grid_are_checked():
    with pytest.raises(ValueError, match=r"Tracks.xy must be \(B, T, N, 2\), got \(2, 3, 4\)"):
        Tracks(torch.zeros(2, 3, 4), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"Tracks.visible must be \(B, T, N\) = \(2, 3, 4\), got \(2, 3\)"):
        Tracks(torch.zeros(2, 3, 4, 2), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="grid_size must be an int >= 1, got 0"):
        mosic.query_grid(32, 32, 0)
