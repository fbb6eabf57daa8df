"""Objective expressions (mosic.objectives.composite): weighted sums of registered objectives."""

import math

import pytest
import torch

import mosic
from conftest import tiny_config
from helpers.objectives import inputs_with, moving_tracks
from mosic.objectives import CompositeObjective, build_objective, parse_objective_expression


def test_objective_expressions():
    with pytest.raises(ValueError, match=r"the weight of 'mosic' in the objective '1e999 mosic' must be finite"):
        mosic.create_objective("1e999 mosic", 8)
    with pytest.raises(TypeError, match="objective name must be a string"):
        mosic.create_objective(3, 8)
    with pytest.raises(ValueError, match="cannot read '-1 mosic'"):
        mosic.create_objective("-1 mosic", 8)


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
