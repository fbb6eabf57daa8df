"""Tracker cards (mosic.trackers.card, mosic.trackers.catalog): one per registered tracker, the
weights the download code uses, the stamped instance names, and ``mosic list trackers -v``."""

import hashlib

import pytest
import torch

import mosic
from mosic.cli import main
from mosic.trackers import TRACKERS, TrackerCard
from mosic.trackers.card import TrackerInput, TrackerWeights, WeightsChecksumError
from mosic.trackers.catalog import CARDS

BUILTIN = ["cotracker2", "cotracker3", "cotracker3-online", "lk", "oracle", "raft", "raft-small"]


def builtin_trackers():
    return [n for n in mosic.list_trackers() if TRACKERS.get(n).factory.__module__.startswith("mosic.")]


def test_every_builtin_tracker_has_a_complete_card():
    assert builtin_trackers() == BUILTIN
    for name in BUILTIN:
        card = TRACKERS.card(name)
        assert isinstance(card, TrackerCard) and card is CARDS[name] and card.name == name
        assert card.licence and card.paper and card.description and card.family
        assert card.mode in ("online", "offline") and card.online == (card.mode == "online")
        assert isinstance(card.input, TrackerInput)
        assert (card.input.dtype, card.input.color, card.input.value_range) == ("uint8", "RGB", (0, 255))
        assert card.input.resolution and card.input.model_input
        if name in ("lk", "oracle"):
            assert card.weights is None and card.licence == "no weights"
        else:
            assert card.weights.url.startswith("https://") and card.weights.filename.endswith(".pth")
    assert not CARDS["cotracker3"].online and CARDS["cotracker3-online"].online
    assert CARDS["oracle"].input.needs_clip_metadata and not CARDS["lk"].input.needs_clip_metadata
    for name in ("cotracker3", "cotracker3-online", "cotracker2"):
        assert "CC BY-NC 4.0" in CARDS[name].licence and "non-commercial" in CARDS[name].licence


def test_the_download_code_reads_the_weight_urls_from_the_cards():
    from torchvision.models.optical_flow import Raft_Large_Weights, Raft_Small_Weights

    from mosic.trackers.cotracker.weights import TRACKER_NAMES, WEIGHT_URLS

    assert {v: CARDS[n].weights.url for v, n in TRACKER_NAMES.items()} == WEIGHT_URLS
    assert WEIGHT_URLS["cotracker3_offline"].endswith("/scaled_offline.pth")
    # RAFT downloads through torchvision's enum: the same files, whose names carry the sha256 prefix
    for name, enum in (("raft", Raft_Large_Weights.C_T_V2), ("raft-small", Raft_Small_Weights.C_T_V2)):
        weights = CARDS[name].weights
        assert weights.url == enum.url and weights.filename.split("-")[-1] == f"{weights.sha256}.pth"


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("raft", {"weights": False}),
        ("raft-small", {"weights": False}),
        ("cotracker3", {"weights": False, "model_resolution": (32, 32), "device": "cpu"}),
        ("cotracker3-online", {"weights": False, "model_resolution": (32, 32), "device": "cpu"}),
        ("cotracker2", {"weights": False, "model_resolution": (32, 32), "device": "cpu"}),
        ("lk", {}),
        ("oracle", {}),
    ],
)
def test_the_registry_stamps_the_name_and_direct_construction_agrees(name, kwargs):
    tracker = mosic.create_tracker(name, **kwargs)
    assert tracker.name == name
    entry = TRACKERS.get(name)
    direct = entry.factory(**{**entry.defaults, **kwargs})  # the class, called as a user would
    assert type(direct) is type(tracker) and direct.name == name


def test_direct_construction_names_the_variant():
    from mosic.trackers.cotracker import CoTracker3Tracker
    from mosic.trackers.raft import RaftTracker

    assert RaftTracker(weights=False).name == "raft" and RaftTracker(model="small", weights=False).name == "raft-small"
    assert CoTracker3Tracker(weights=False, model_resolution=(32, 32), device="cpu").name == "cotracker3"
    assert CoTracker3Tracker(weights=False, online=True, model_resolution=(32, 32), device="cpu").name == "cotracker3-online"


def test_list_trackers_verbose_prints_the_cards(capsys):
    assert main(["list", "trackers", "-v"]) == 0
    out = capsys.readouterr().out
    for name in BUILTIN:
        card = CARDS[name]
        assert f"{name}: " in out and card.licence in out and card.paper in out
        if card.weights is not None:
            assert card.weights.url in out
    assert "sha256: 1bb1363a" in out and "not published" in out and "uint8 RGB 0..255" in out
    assert main(["list", "trackers", "raft*", "-v"]) == 0
    out = capsys.readouterr().out
    assert "raft_small_C_T_V2-01064c6d.pth" in out and "cotracker" not in out
    assert main(["list", "trackers"]) == 0
    listed = capsys.readouterr().out.split()  # every registered name (other tests may register their own)
    assert listed == mosic.list_trackers() and set(builtin_trackers()) <= set(listed)


def test_weights_verify_checks_the_sha256_or_its_prefix(tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    url = "https://example.org/w.pth"
    TrackerWeights(url=url, description="x").verify(path)  # none recorded: nothing to check
    TrackerWeights(url=url, sha256=digest, description="x").verify(path)
    TrackerWeights(url=url, sha256=digest[:8], description="x").verify(path)
    with pytest.raises(WeightsChecksumError, match="corrupt or not the official one"):
        TrackerWeights(url=url, sha256="0" * 64, description="x").verify(path)
    with pytest.raises(ValueError, match="hex digits"):
        TrackerWeights(url=url, sha256="xyz", description="x")


def test_a_cached_cotracker_file_is_checked_against_its_card(tmp_path, monkeypatch):
    from mosic.trackers.cotracker import weights as ct_weights

    (tmp_path / "checkpoints").mkdir()
    torch.save({"w": torch.zeros(1)}, tmp_path / "checkpoints" / "scaled_offline.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert set(ct_weights.download_state_dict("cotracker3_offline")) == {"w"}  # no sha256 on the card
    card = CARDS["cotracker3"].weights.model_copy(update={"sha256": "0" * 64})
    monkeypatch.setattr(ct_weights, "official_weights", lambda name: card)
    with pytest.raises(WeightsChecksumError, match="scaled_offline.pth"):
        ct_weights.download_state_dict("cotracker3_offline")


def test_a_card_must_carry_the_name_it_is_registered_under():
    from mosic.registry import Registry

    with pytest.raises(ValueError, match="registered with the card of 'raft'"):
        Registry("tracker").register("not-raft", card=CARDS["raft"])(object)
