"""CoTracker weights (mosic.trackers.cotracker.weights): local files and the torch hub cache are untrusted."""

import pytest
import torch

import mosic
from helpers.untrusted import REFUSED, evil_file


def test_cotracker_weights_refuse_code(tmp_path, marker, monkeypatch):
    from mosic.trackers.cotracker.weights import download_state_dict, load_cotracker_weights

    path = evil_file(tmp_path / "scaled_offline.pth", marker)
    with pytest.raises(ValueError, match=REFUSED):
        load_cotracker_weights(torch.nn.Linear(1, 1), str(path), "cotracker3_offline")
    with pytest.raises(ValueError, match=REFUSED):
        mosic.create_tracker("cotracker3", weights=str(path))
    # a file planted in the torch hub cache, where the official download would be
    hub = tmp_path / "hub"
    evil_file(hub / "checkpoints" / "scaled_offline.pth", marker)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    with pytest.raises(ValueError, match=REFUSED):
        download_state_dict("cotracker3_offline")
    with pytest.raises(ValueError, match="unknown CoTracker variant"):
        load_cotracker_weights(torch.nn.Linear(1, 1), str(path), "cotracker9")
