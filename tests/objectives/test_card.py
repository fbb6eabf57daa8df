"""Objective cards (mosic.objectives.card, mosic.objectives.catalog), the stamped names, the
``static`` alias of ``mosic-still`` and ``mosic list objectives -v``."""

import pytest

import mosic
from mosic.cli import main
from mosic.objectives import OBJECTIVES, MoSiCObjective, ObjectiveCard, build_objective
from mosic.objectives.catalog import CARDS

BUILTIN = ["correspondence", "mosic", "mosic-propagated", "mosic-still", "spacetime-kmeans"]


def test_every_builtin_objective_has_a_card_that_agrees_with_the_objective():
    assert [n for n in mosic.list_objectives() if OBJECTIVES.get(n).factory.__module__.startswith("mosic.")] == BUILTIN
    for name in BUILTIN:
        card = OBJECTIVES.card(name)
        assert isinstance(card, ObjectiveCard) and card is CARDS[name] and card.name == name
        assert card.description and card.paper
        objective = mosic.create_objective(name, embed_dim=8)
        assert objective.name == name
        assert card.uses_tracks == objective.uses_tracks, name
        assert card.student_frames == tuple(objective.student_frames), name
        assert card.student_view == objective.student_view, name
    assert not CARDS["mosic-still"].uses_tracks and CARDS["mosic"].uses_tracks
    assert CARDS["correspondence"].student_view and CARDS["correspondence"].student_frames == ()


def test_static_is_an_alias_of_mosic_still():
    assert "static" not in mosic.list_objectives() and "static" in OBJECTIVES
    assert OBJECTIVES.aliases() == {"static": "mosic-still"}
    assert OBJECTIVES.canonical("static") == "mosic-still" and OBJECTIVES.card("static") is CARDS["mosic-still"]
    old = mosic.create_objective("static", embed_dim=8)
    assert isinstance(old, MoSiCObjective) and old.target == "still" and not old.uses_tracks
    assert old.name == "mosic-still"  # the canonical name, also through the alias
    assert MoSiCObjective(8, target="still").name == "mosic-still" and MoSiCObjective(8).name == "mosic"
    # in a weighted sum the term keeps the name it was written with (metrics, checkpoint keys)
    total = build_objective("mosic + 0.25 static", 8)
    assert set(total.terms) == {"mosic", "static"} and total.terms["static"].name == "mosic-still"
    assert total.name == "mosic + 0.25 static"
    with pytest.raises(ValueError, match="names a term twice"):
        build_objective("mosic-still + 0.5 static", 8)


def test_unknown_objective_names_suggest_names_and_aliases():
    with pytest.raises(KeyError) as info:
        mosic.create_objective("mosic-stil", embed_dim=8)
    assert "Did you mean: 'mosic-still'" in str(info.value)
    with pytest.raises(KeyError, match=r"Did you mean: 'static'.*static \(= mosic-still\)"):
        mosic.create_objective("statc", embed_dim=8)


def test_static_still_works_in_a_config():
    config = mosic.RunConfig().with_overrides(["objective.name=static"])
    assert config.objective.name == "static"
    config = mosic.RunConfig().with_overrides(["objective.name=mosic + 0.5 static"])
    assert config.objective.name == "mosic + 0.5 static"


def test_list_objectives_verbose_prints_the_cards(capsys):
    assert main(["list", "objectives", "-v"]) == 0
    out = capsys.readouterr().out
    for name in BUILTIN:
        assert f"{name}: {CARDS[name].description}" in out and CARDS[name].paper in out
    assert "aliases: static" in out and "no tracker runs" in out
    assert main(["list", "objectives"]) == 0
    assert capsys.readouterr().out.split() == mosic.list_objectives()
