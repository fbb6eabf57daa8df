import subprocess
import sys

import yaml

from mosic.cli import main


def test_list_and_config(capsys):
    assert main(["list", "backbones"]) == 0
    assert "vit-tiny" in capsys.readouterr().out.split()
    assert main(["list", "trackers", "ora*"]) == 0
    assert capsys.readouterr().out.split() == ["oracle"]
    assert main(["config", "train.max_steps=3"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["train"]["max_steps"] == 3


def test_fit_from_a_config_file_on_synthetic_videos_errors_clearly_on_real_ones(tmp_path):
    from conftest import tiny_config

    cfg = tiny_config(**{"train.out_dir": str(tmp_path / "run")})
    cfg.save(tmp_path / "run.yaml")
    (tmp_path / "empty").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "mosic.cli", "fit", "--config", str(tmp_path / "run.yaml"), "--videos", str(tmp_path / "empty")],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "neither" in result.stderr or "no video" in result.stderr.lower(), result.stderr[-2000:]
