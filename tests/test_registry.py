import sys
import textwrap

import pytest

import mosic
from mosic.registry import Registry, UnknownNameError


def test_builtin_names_are_listed():
    assert {"vit-tiny", "dinov2-s14"} <= set(mosic.list_backbones())
    assert "oracle" in mosic.list_trackers()
    assert {"mosic", "mosic-propagated"} <= set(mosic.list_objectives())
    assert mosic.list_backbones("dinov2-*") == ["dinov2-b14", "dinov2-g14", "dinov2-l14", "dinov2-s14"]


def test_unknown_name_lists_close_matches():
    with pytest.raises(UnknownNameError) as info:
        mosic.create_backbone("dinov2-s16")
    message = str(info.value)
    assert "unknown backbone 'dinov2-s16'" in message and "Did you mean: 'dinov2-s14'" in message
    with pytest.raises(UnknownNameError, match="oracle"):
        mosic.create_tracker("oracel")
    with pytest.raises(KeyError):  # still a KeyError for callers that catch that
        mosic.create_objective("mosik", embed_dim=8)


def test_decorator_registers_and_defaults_are_overridable():
    registry = Registry("widget")

    @registry.register("small", width=1)
    @registry.register("large", width=10)
    class Widget:
        def __init__(self, width, height=2):
            self.width, self.height = width, height

    assert registry.list() == ["large", "small"]
    assert registry.create("small").width == 1
    assert registry.create("large", width=3, height=4).__dict__ == {"width": 3, "height": 4}

    with pytest.raises(ValueError, match="already registered"):
        registry.register("small")(lambda: None)
    registry.register("small", override=True)(lambda: "new")
    assert registry.create("small") == "new"

    @registry.register
    def gadget():
        return "g"

    assert registry.create("gadget") == "g"


def test_user_tracker_registers_through_the_public_decorator():
    @mosic.register_tracker("test-static-tracker")
    class StaticTracker(mosic.Tracker):
        def track(self, video, queries, *, clips=None):
            import torch

            b, t = video.shape[:2]
            xy = queries[:, None, :, 1:].expand(b, t, -1, 2)
            return mosic.Tracks(xy, torch.ones(xy.shape[:-1], dtype=torch.bool))

    try:
        assert isinstance(mosic.create_tracker("test-static-tracker"), StaticTracker)
    finally:
        mosic.TRACKERS._entries.pop("test-static-tracker")


def test_third_party_entry_points_are_discovered(tmp_path, monkeypatch):
    (tmp_path / "acme_tracker.py").write_text(
        textwrap.dedent(
            """
            class AcmeTracker:
                made = True
            """
        )
    )
    dist_info = tmp_path / "acme_tracker-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-tracker\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text("[mosic.trackers]\nacme = acme_tracker:AcmeTracker\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry("tracker", "mosic.trackers")
    assert "acme" in registry.list()
    assert registry.create("acme").made
    sys.modules.pop("acme_tracker", None)


def test_broken_plugin_warns_instead_of_breaking(tmp_path, monkeypatch):
    dist_info = tmp_path / "broken-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text("[mosic.objectives]\nbroken = no_such_module:Thing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry("objective", "mosic.objectives")
    with pytest.warns(UserWarning, match="could not load objective plugin 'broken'"):
        assert registry.list() == []


# ---- every registry's unknown names list close matches


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


def test_aliases_resolve_to_the_canonical_entry():
    registry = Registry("widget")

    class Widget:
        name = "widget"

        def __init__(self, width=1):
            self.width = width

    registry.register("wide", aliases=("broad", "large"), width=10)(Widget)
    assert registry.list() == ["wide"] and registry.aliases() == {"broad": "wide", "large": "wide"}
    assert "broad" in registry and registry.get("large") is registry.get("wide")
    assert registry.canonical("broad") == "wide" and registry.get("wide").aliases == ("broad", "large")
    made = registry.create("broad", width=3)
    assert made.width == 3 and made.name == "wide"  # the stamped name is the canonical one
    with pytest.raises(ValueError, match="'broad' is already registered"):
        registry.register("broad")(lambda: None)
    with pytest.raises(ValueError, match="'wide' is already registered"):
        registry.register("other", aliases=("wide",))(lambda: None)
    with pytest.raises(UnknownNameError, match=r"Did you mean: 'broad'.*broad \(= wide\)"):
        registry.get("braod")
    registry.register("broad", override=True)(lambda: "new")  # a name replaces the alias
    assert registry.create("broad") == "new" and registry.aliases() == {"large": "wide"}
    assert registry.get("wide").aliases == ("large",)


def test_create_stamps_the_registry_name_on_classes_that_declare_one():
    registry = Registry("widget")

    @registry.register("b-widget", size="b")
    @registry.register("a-widget", size="a")
    class Named:
        name = "a-widget"

        def __init__(self, size="a"):
            self.size = size
            self.name = registry.name_for(type(self), size=size) or self.name

    @registry.register("plain")
    class Plain:
        pass

    assert registry.create("b-widget").name == "b-widget" and Named(size="b").name == "b-widget"
    assert Named().name == "a-widget" and registry.name_for(Named, size="c") is None
    assert "name" not in vars(registry.create("plain"))  # no name attribute: nothing stamped
    assert mosic.create_tracker("lk").name == "lk"
    assert mosic.create_backbone("vit-tiny", pretrained=False, depth=1, embed_dim=32, num_heads=2).name == "vit-tiny"
    assert mosic.create_objective("mosic-propagated", embed_dim=8).name == "mosic-propagated"
