"""The backbone examples run end to end in smoke mode (as a user runs them: subprocesses)."""

import importlib.util
import json
import math
import re

import pytest
from conftest import ROOT, run_example


def test_register_custom_backbone_smoke(tmp_path):
    out = run_example("register_custom_backbone.py", "--out", str(tmp_path))
    for name, cls in (("deit-s16", "TimmViT"), ("plain-vit-p8", "PlainViT")):
        pattern = rf"^created {name}: {cls}, .*training the last 2 \+ final norm = ([\d,]+) of ([\d,]+)"
        created = re.search(pattern, out, re.M)
        assert created, out
        trainable, total = (int(g.replace(",", "")) for g in created.groups())
        assert 0 < trainable < total  # the train-last-2-blocks policy froze the earlier blocks
        trained = re.search(rf"^trained {name}: 3 steps in [\d.]+ s, loss (\S+) -> (\S+)$", out, re.M)
        assert trained, out
        assert all(math.isfinite(float(v)) for v in trained.groups())
        assert f"name: {name}" in (tmp_path / name / "config.yaml").read_text()
        assert (tmp_path / name / "checkpoints" / "latest").is_file()
    assert "paper: Touvron et al." in out  # the card of the timm backbone is printed


@pytest.mark.slow
def test_backbone_ablation_smoke(tmp_path):
    run_example("backbone_ablation.py", "--out", str(tmp_path))
    report = json.loads((tmp_path / "ablation.json").read_text())
    names = ["dino-s16", "dinov2-s14", "dinov2r-s14", "eva-clip-b16"]
    assert [row["backbone"] for row in report["rows"]] == names
    for row in report["rows"]:
        assert row["clip_size"] == (56 if row["patch_size"] == 14 else 64)
        assert row["steps"] == 4 and row["params"] > 0 and row["init"] == "random"
        for phase in ("before", "after"):
            for metric in ("dataset_miou", "clip_miou"):
                assert 0 <= row[phase][metric] <= 100 and math.isfinite(row[phase][metric])
        assert math.isfinite(row["final_loss"]) and row["train_seconds"] > 0
    assert report["recipe"]["tracker"]["name"] == "oracle"
    table = (tmp_path / "ablation.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| backbone")]
    assert [line.split(" | ")[0].lstrip("| ") for line in rows] == names
    assert "issue 6" in table


def test_backbone_ablation_rejects_bad_arguments(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("backbone_ablation", ROOT / "examples" / "backbone_ablation.py")
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    for args, message in (
        (["--videos", str(tmp_path)], "synthetic:"),  # evaluates on synthetic masks
        (["--smoke", "--pretrained"], "do not fit"),
        (["--weights", "dino-s16"], "NAME=PATH"),
        (["--backbones", "dinov2-s41"], "Did you mean"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            ablation.main([*args, "--out", str(tmp_path)])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
