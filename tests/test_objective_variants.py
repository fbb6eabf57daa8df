"""static vs mosic vs mosic-propagated, weighted sums of objectives, presets and the Table 6 fields."""

import math

import pytest
import torch

import mosic
from conftest import tiny_config
from mosic.config import ConfigError, RunConfig, list_presets
from mosic.objectives import (
    CompositeObjective,
    MoSiCObjective,
    ObjectiveInputs,
    build_objective,
    parse_objective_expression,
)
from mosic.trackers import Tracks

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


def test_static_ignores_the_tracks_and_equals_mosic_on_still_points():
    torch.manual_seed(1)
    teacher, student = torch.randn(2, 4, 3, 3, 8), torch.randn(2, 1, 3, 3, 8)
    static = small(target="still")
    xy, visible = moving_tracks()
    other_visible = torch.rand(2, 4, 9) > 0.5
    other_visible[:, 0] = True
    a = static(inputs_with(xy, visible, teacher, student), teacher=static).loss
    b = static(inputs_with(xy + torch.randn_like(xy) * 3 * (torch.arange(4) > 0).view(1, 4, 1, 1), other_visible, teacher, student), teacher=static).loss
    assert torch.equal(a, b)  # later positions and visibility are never read

    still = GRID.expand(2, 4, 9, 2).clone()
    reference = small()
    reference.load_state_dict(static.state_dict())
    expected = reference(inputs_with(still, torch.ones(2, 4, 9, dtype=torch.bool), teacher, student), teacher=reference).loss
    assert torch.allclose(a, expected)
    assert not static.uses_tracks and reference.uses_tracks
    assert not mosic.create_objective("static", embed_dim=8).uses_tracks


def test_tracked_and_propagated_agree_on_a_still_video_and_differ_when_points_move():
    torch.manual_seed(2)
    frame = torch.randn(2, 1, 3, 3, 8)
    still_video = frame.expand(2, 4, 3, 3, 8)
    tracked, propagated = small(target="tracked"), small(target="propagated")
    propagated.load_state_dict(tracked.state_dict())
    still = GRID.expand(2, 4, 9, 2).clone()
    ones = torch.ones(2, 4, 9, dtype=torch.bool)
    same = inputs_with(still, ones, still_video, frame)
    assert torch.allclose(tracked(same, teacher=tracked).loss, propagated(same, teacher=propagated).loss)

    # moving points over a video whose content moves with them: the tracked target is the
    # frame-0 content carried along, so both targets agree again ...
    xy, visible = moving_tracks()
    moving_video = torch.stack([frame[:, 0].roll(k, dims=2) for k in range(4)], 1)
    moved = inputs_with(xy, visible, moving_video, frame)
    assert torch.allclose(tracked(moved, teacher=tracked).loss, propagated(moved, teacher=propagated).loss, atol=1e-6)
    # ... but on a still video the tracked target reads other content: the two differ
    drift = inputs_with(xy, visible, still_video, frame)
    assert not torch.allclose(tracked(drift, teacher=tracked).loss, propagated(drift, teacher=propagated).loss)


@pytest.mark.parametrize("target", ["tracked", "propagated", "still"])
def test_gradients_reach_the_student_and_its_head_never_the_teacher(target):
    student_obj, teacher_obj = small(target=target), small(target=target)
    teacher_obj.requires_grad_(False)
    xy, visible = moving_tracks()
    teacher_tokens = torch.randn(2, 4, 3, 3, 8, requires_grad=True)
    student_tokens = torch.randn(2, 1, 3, 3, 8, requires_grad=True)
    out = student_obj(inputs_with(xy, visible, teacher_tokens, student_tokens), teacher=teacher_obj)
    out.loss.backward()
    assert student_tokens.grad is not None and student_tokens.grad.abs().sum() > 0
    assert teacher_tokens.grad is None
    assert all(p.grad is not None for p in student_obj.parameters())
    assert all(p.grad is None for p in teacher_obj.parameters())


def test_expressions_parse():
    assert parse_objective_expression("mosic") == [(1.0, "mosic")]
    assert parse_objective_expression("mosic + 0.1 correspondence") == [(1.0, "mosic"), (0.1, "correspondence")]
    assert parse_objective_expression("2*mosic-propagated+1e-1 static") == [(2.0, "mosic-propagated"), (0.1, "static")]
    for bad in ("mosic +", "mosic + -1 static", "0.5", "mosic + mosic"):
        with pytest.raises(ValueError):
            parse_objective_expression(bad)


def test_a_sum_is_the_weighted_sum_of_its_terms():
    torch.manual_seed(3)
    xy, visible = moving_tracks()
    inputs = inputs_with(xy, visible, torch.randn(2, 4, 3, 3, 8), torch.randn(2, 1, 3, 3, 8))
    fields = {"num_prototypes": 5, "projection_dim": 4, "head_hidden_dims": [16]}
    total = build_objective("mosic + 0.25 static", 8, fields)
    assert isinstance(total, CompositeObjective)
    assert total.student_frames == (0,) and total.uses_tracks and not total.student_view
    out = total(inputs, teacher=total)
    parts = {name: term(inputs, teacher=term) for name, term in total.terms.items()}
    expected = parts["mosic"].loss + 0.25 * parts["static"].loss
    assert torch.allclose(out.loss, expected)
    assert torch.allclose(out.metrics["loss"], parts["mosic"].metrics["loss"] + 0.25 * parts["static"].metrics["loss"])
    assert torch.allclose(out.metrics["static/loss"], parts["static"].metrics["loss"])
    assert set(out.metrics) >= {"mosic/agreement", "static/clusters_used"}
    # each term owns its head: the checkpoint keys say which
    assert any(k.startswith("terms.static.prototypes") for k in total.state_dict())


def test_sum_kwargs_are_keyed_by_term():
    fields = {"num_prototypes": 5, "projection_dim": 4, "head_hidden_dims": [16]}
    total = build_objective("mosic + 0.5 mosic-propagated", 8, fields, {"mosic-propagated": {"temperature": 0.2}})
    assert total.terms["mosic-propagated"].temperature == 0.2 and total.terms["mosic"].temperature == 0.1
    assert total.terms["mosic-propagated"].target == "propagated"
    with pytest.raises(ValueError, match="keyed by term"):
        build_objective("mosic + 0.5 static", 8, fields, {"temperature": 0.2})
    with pytest.raises(mosic.UnknownNameError, match="mosic"):
        build_objective("mosic + 0.5 statik", 8, fields)


def test_a_sum_trains_end_to_end_and_resumes_from_its_checkpoint(synthetic, tmp_path):
    config = tiny_config(**{"objective.name": "mosic + 0.5 static", "train.max_steps": 2, "train.out_dir": str(tmp_path)})
    trainer = mosic.PostPretrainer(config=config).fit(synthetic)
    assert {"loss", "mosic/loss", "static/loss"} <= set(trainer.history[-1])
    record = trainer.history[-1]
    assert math.isclose(record["loss"], record["mosic/loss"] + 0.5 * record["static/loss"], rel_tol=1e-5)
    loaded = mosic.PostPretrainer.load(tmp_path)
    assert isinstance(loaded.learner.objective, CompositeObjective)
    for (name, a), (_, b) in zip(trainer.learner.state_dict().items(), loaded.learner.state_dict().items()):
        assert torch.equal(a, b), name


def test_static_runs_no_tracker(synthetic):
    trainer = mosic.PostPretrainer(config=tiny_config(**{"objective.name": "static", "tracker.name": "cotracker3", "train.max_steps": 1}))
    trainer.fit(synthetic)
    assert trainer._tracker is None  # cotracker3 would need weights: it was never built
    assert math.isfinite(trainer.history[-1]["loss"])


# ---- Table 6 as config, presets ------------------------------------------------------------


def test_every_table_6_ablation_is_a_typed_field():
    cfg = RunConfig()
    table6 = {
        "train.mask_ratio": (0.1, 0.4),  # 6a
        "train.ema": (True, False),  # 6b
        "tracker.grid_size": (16, 32),  # 6c
        "data.crop_scale": ((0.4, 1.0), (0.2, 1.0)),  # 6d
        "objective.num_prototypes": (100, 300),  # 6e
        "objective.loss_points": ("visible", "all"),  # 6f
        "data.clip_seconds": (3.2, 0.5),  # 6g
        "data.num_frames": (12, 8),  # 6h
        "train.ema_momentum": (0.99, 0.996),
        "objective.sinkhorn_epsilon": (0.05, 0.03),
        "objective.sinkhorn_iterations": (10, 3),
        "objective.temperature": (0.1, 0.2),
    }
    for key, (default, other) in table6.items():
        section, field = key.split(".")
        assert getattr(getattr(cfg, section), field) == default, key
        changed = cfg.with_overrides({key: other})
        assert getattr(getattr(changed, section), field) == other, key
    with pytest.raises(ConfigError, match="mask_ratio"):
        cfg.with_overrides({"train.mask_ratio": 1.5})
    with pytest.raises(ConfigError, match="loss_points"):
        cfg.with_overrides({"objective.loss_points": "some"})


def test_clip_seconds_sets_the_stride_unless_frame_stride_is_given():
    cfg = RunConfig()
    assert cfg.data.stride == 8  # 3.2 s / 12 frames at 30 fps
    assert cfg.with_overrides({"data.clip_seconds": 0.5}).data.stride == 1
    assert cfg.with_overrides({"data.clip_seconds": 1.6, "data.fps": 60}).data.stride == 8
    assert cfg.with_overrides({"data.frame_stride": 6}).data.stride == 6  # the authors' script


@pytest.mark.parametrize("name", list_presets())
def test_presets_load_and_name_registered_backbones(name):
    cfg = RunConfig.load(name)
    assert cfg.backbone.name in mosic.list_backbones()
    assert cfg.data.global_batch_size == 64 and cfg.data.stride == 8
    assert cfg.train.epochs == {"dino-s16": 100, "dino-s16-ablation": 50}.get(name, 8)
    assert (cfg.optim.backbone_lr, cfg.optim.head_lr, cfg.train.ema_momentum) == (1e-5, 1e-4, 0.99)


def test_presets_cover_the_papers_main_runs_and_unknown_names_say_so():
    assert {"dinov2-s14", "dinov2-b14", "dino-s16", "eva-clip-b14", "dinov2r-b14"} <= set(list_presets())
    with pytest.raises(FileNotFoundError, match="dinov2-s14"):
        RunConfig.load("dinov2-s15")


def test_cli_lists_presets_and_fits_from_a_preset_name(capsys):
    from mosic.cli import main

    assert main(["list", "presets", "-v"]) == 0
    out = capsys.readouterr().out
    assert "dinov2-s14: MoSiC on DINOv2 ViT-S/14" in out
    assert main(["config", "--config", "dino-s16", "objective.name=mosic + 0.5 static"]) == 0
    shown = capsys.readouterr().out
    assert "name: dino-s16" in shown and "epochs: 100" in shown and "mosic + 0.5 static" in shown
    assert main(["config", "--config", "dinov2-s15"]) == 2
    assert "did you mean dinov2-s14" in capsys.readouterr().err


def test_mosic_plus_correspondence_runs_the_student_on_frame_zero_and_on_the_view(synthetic):
    config = tiny_config(**{"objective.name": "mosic + correspondence", "train.max_steps": 1, "data.num_frames": 6})
    trainer = mosic.PostPretrainer(config=config)
    objective = trainer.learner.objective
    assert objective.student_frames == (0,) and objective.student_view and objective.uses_tracks
    calls = []
    trainer.learner.backbone.model.patch_embed.register_forward_hook(lambda m, inp, out: calls.append(inp[0].shape[0]))
    trainer.fit(synthetic)
    assert calls == [4, 4]  # B = 4 clips: frame 0, then Phi(frame 0)
    record = trainer.history[-1]
    assert {"mosic/loss", "correspondence/short_term", "correspondence/long_term"} <= set(record)
    assert math.isclose(record["loss"], record["mosic/loss"] + record["correspondence/loss"], rel_tol=1e-5)
    assert record["correspondence/long_term"] > 0  # T - 1 = 5 >= long_term_gap
