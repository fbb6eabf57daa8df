import json
import subprocess
import sys

import pytest
import yaml

from mosic.cli import main


def test_list_and_config(capsys):
    assert main(["list", "backbones"]) == 0
    assert "vit-tiny" in capsys.readouterr().out.split()
    assert main(["list", "trackers", "ora*"]) == 0
    assert capsys.readouterr().out.split() == ["oracle"]
    assert main(["config", "train.max_steps=3"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["train"]["max_steps"] == 3


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "mosic.cli", *args], capture_output=True, text=True)


def test_fit_from_a_config_file_with_overrides_then_resume(tmp_path):
    from conftest import tiny_config

    cfg = tiny_config(**{"data.videos": "synthetic:num_videos=8,num_frames=12,size=32"})
    cfg.save(tmp_path / "run.yaml")
    out = tmp_path / "run"
    result = run_cli("fit", "--config", str(tmp_path / "run.yaml"), f"train.out_dir={out}", "train.max_steps=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "done: 2 steps" in result.stdout
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["max_steps"] == 2
    result = run_cli("fit", "--config", str(tmp_path / "run.yaml"), f"train.out_dir={out}", "train.max_steps=3", "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_fit_errors_clearly(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_cli("fit", "--videos", str(tmp_path / "empty"), "backbone.pretrained=false", "backbone.name=vit-tiny")
    assert result.returncode != 0
    assert "neither" in result.stderr or "no video" in result.stderr.lower(), result.stderr[-2000:]
    result = run_cli("fit", "train.max_stepz=3")
    assert result.returncode != 0 and "did you mean max_steps" in result.stderr


def test_synthetic_spec_errors():
    from mosic.data import open_videos

    assert len(open_videos("synthetic:num_videos=3,size=16")) == 3
    with pytest.raises(ValueError, match="key=integer"):
        open_videos("synthetic:num_videos")
    with pytest.raises(ValueError, match="bad synthetic spec"):
        open_videos("synthetic:colour=3")


def test_track_eval_command(tmp_path, capsys):
    import json

    from mosic.cli import main

    out = tmp_path / "eval.json"
    assert main(["track-eval", "--tracker", "oracle", "--num-videos", "2", "--num-frames", "8", "--grid", "4", "--out", str(out)]) == 0
    assert "| oracle | 100.0 | 100.0 | 100.0 |" in capsys.readouterr().out
    assert json.loads(out.read_text())["delta_avg"] == 100.0


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
