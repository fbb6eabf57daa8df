"""The tracker examples run end to end in smoke mode (as a user runs them: subprocesses)."""

import json
import math
import re

import pytest
import yaml
from conftest import load_example, run_example

import mosic


def test_register_custom_tracker_smoke(tmp_path):
    out = run_example("register_custom_tracker.py", "--out", str(tmp_path))
    registered = re.search(r"^registered trackers: (.*)$", out, re.M)
    assert registered and "my-flow" in registered.group(1).split(", "), out
    assert "created my-flow: DenseFlowTracker wrapping farneback_flow" in out
    measured = re.search(r"^my-flow on 2 held-out .*: delta_avg (\S+), OA (\S+), AJ (\S+) \(TAP-Vid", out, re.M)
    assert measured, out
    delta, oa, aj = (float(v.rstrip(",")) for v in measured.groups())
    assert 30 < delta <= 100 and 50 < oa <= 100 and 0 < aj <= 100  # real tracking, far above chance
    trained = re.search(
        r"^trained with tracker my-flow \(DenseFlowTracker, (\d+) clips tracked\): 3 steps in [\d.]+ s, "
        r"loss (\S+) -> (\S+)$",
        out,
        re.M,
    )
    assert trained, out
    assert int(trained.group(1)) == 3 * 4  # the trainer's tracker tracked every clip of every step
    assert all(math.isfinite(float(v)) for v in trained.groups()[1:])
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert config["tracker"]["name"] == "my-flow" and config["tracker"]["kwargs"] == {"winsize": 9}
    assert (tmp_path / "checkpoints" / "latest").is_file()


def test_dense_flow_tracker_queries_on_any_frame():
    """The example's tracker follows known translations forwards and backwards from a mid-clip query."""
    import numpy as np
    import torch

    example = load_example("register_custom_tracker")
    shift = np.array([1.5, -0.75], dtype=np.float32)  # (dx, dy) per frame

    def flow(a, b):  # frame k is filled with the value k: the flow from a to b is (b - a) shifts
        steps = float(b[0, 0, 0]) - float(a[0, 0, 0])
        return np.broadcast_to(steps * shift, a.shape[:2] + (2,)).copy()

    tracker = example.DenseFlowTracker(flow)
    video = torch.arange(5, dtype=torch.uint8).view(1, 5, 1, 1, 1).expand(1, 5, 3, 32, 32).contiguous()
    queries = torch.tensor([[[2.0, 10.0, 20.0], [0.0, 30.0, 5.0]]])
    tracks = tracker(video, queries)
    frames = torch.arange(5, dtype=torch.float32)[:, None]
    expected = torch.tensor([10.0, 20.0]) + (frames - 2) * torch.from_numpy(shift)
    assert torch.allclose(tracks.xy[0, :, 0], expected)
    assert tracks.visible[0, :, 0].all()
    # the second point leaves the frame (x > 31.5) after one step and is lost for good
    assert tracks.visible[0, :, 1].tolist() == [True, True, False, False, False]


@pytest.mark.slow
def test_tracker_ablation_smoke(tmp_path):
    run_example("tracker_ablation.py", "--out", str(tmp_path), timeout=240)
    report = json.loads((tmp_path / "tracker_ablation.json").read_text())
    ablation = load_example("tracker_ablation")
    expected = [name for name in ablation.SMOKE_TRACKERS if name in mosic.list_trackers()]
    assert [row["tracker"] for row in report["rows"]] == expected
    assert expected == ["oracle", "lk", "raft-small", "cotracker3"]
    for row in report["rows"]:
        numbers = [*row["tracking"].values(), *row["before"].values(), *row["after"].values(), row["final_loss"]]
        assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers), row
        for key in ("delta_avg", "occlusion_accuracy", "average_jaccard"):
            assert 0 <= row["tracking"][key] <= 100
        assert row["tracking"]["point_frames_per_second"] > 0
        assert row["steps"] == 3 and row["train_seconds"] > 0
        assert row["init"] == {"oracle": "ground truth", "lk": "no weights"}.get(row["tracker"], "random")
        assert (row["note"] != "") == (row["init"] == "random")
        config = yaml.safe_load((tmp_path / row["tracker"] / "config.yaml").read_text())
        assert config["tracker"]["name"] == row["tracker"]  # trained with that tracker, built by name
    oracle = report["rows"][0]
    assert oracle["tracking"]["delta_avg"] == 100.0 and oracle["tracking"]["average_jaccard"] == 100.0
    # one recipe: everything but the tracker is the same in every run
    recipes = []
    for row in report["rows"]:
        config = yaml.safe_load((tmp_path / row["tracker"] / "config.yaml").read_text())
        del config["tracker"]["name"], config["tracker"]["kwargs"], config["train"]["out_dir"]
        recipes.append(config)
    assert all(r == recipes[0] for r in recipes)

    table = (tmp_path / "tracker_ablation.md").read_text()
    lines = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| tracker")]
    assert [line.split(" | ")[0].lstrip("| ") for line in lines] == expected
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")][2:]
        assert all(math.isfinite(float(c)) for c in cells), line
    assert "| oracle | ground truth | 100.0 |" in table
    assert "meaningless" in table  # random-weight learned trackers are flagged


def test_tracker_ablation_rejects_bad_arguments(tmp_path, capsys):
    ablation = load_example("tracker_ablation")
    for args, message in (
        (["--trackers", "lucas-kanade"], "unknown tracker"),
        (["--weights", "raft-small"], "NAME=PATH"),
        (["--trackers", "lk", "--weights", "raft-small=x.pth"], "not in --trackers"),
        (["--trackers", "lk", "--weights", "lk=x.pth"], "takes no weights"),
        (["--trackers", "raft-small", "--weights", f"raft-small={tmp_path / 'missing.pth'}"], "no such file"),
        (["--smoke", "--pretrained"], "do not fit"),
        (["--videos", str(tmp_path)], "oracle"),
        (["--trackers", "raft-small"], "needs weights"),  # learned, no weights, not --smoke: nothing left
    ):
        with pytest.raises(SystemExit) as exit_info:
            ablation.main([*args, "--out", str(tmp_path)])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err, args
