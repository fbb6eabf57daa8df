"""Every protocol end to end on synthetic data, through `mosic eval` (small sizes)."""

import json

import numpy as np
import pytest
from PIL import Image

from mosic.cli import main
from mosic.eval.protocols import PROTOCOLS, run_protocol

BACKBONE = ["--backbone", "vit-tiny"] + [
    a for kv in ("pretrained=false", "patch_size=8", "img_size=32", "depth=1") for a in ("--backbone-arg", kv)
]
IMAGES = "synthetic:num_images=8,size=32"
VIDEOS = "synthetic-video:num_videos=2,num_frames=8,size=32"
OPTIONS = {
    "in-context": ["fractions=[0.25,1.0]", "seeds=[0,1]"],
    "linear": ["epochs=2"],
    "overclustering": ["ks=[null,16]"],
    "video-clustering": [],
    "label-propagation": [],
}


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_protocol_runs_from_the_command_line(protocol, tmp_path, capsys):
    data = IMAGES if PROTOCOLS[protocol][0] == "image" else VIDEOS
    args = ["eval", protocol, *BACKBONE, "--data", data, "--out", str(tmp_path), "--figures", "2"]
    args += [a for option in OPTIONS[protocol] for a in ("--set", option)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["protocol"] == protocol and report["metrics"], report
    assert f"# {protocol}: vit-tiny" in printed and (tmp_path / "results.md").is_file()
    for key, value in report["metrics"].items():
        if ("miou" in key or key.startswith(("j", "f"))) and not key.endswith(("decay", "fps")):
            assert 0.0 <= value <= 100.0, (key, value)
    pngs = sorted(tmp_path.glob("*.png"))
    if protocol == "linear":
        assert [p.name for p in pngs] == ["predictions.png"]  # the probe's own predictions
    assert pngs, "no figure written"
    figure = np.asarray(Image.open(pngs[0]))
    assert figure.ndim == 3 and figure.shape[0] > 64 and figure.std() > 5


def test_expected_metrics_per_protocol():
    tiny = {"pretrained": False, "patch_size": 8, "img_size": 32, "depth": 1}
    video = run_protocol("video-clustering", "vit-tiny", data=VIDEOS, backbone_kwargs=tiny)
    assert {"dataset_miou", "clip_miou", "frame_miou"} <= set(video["metrics"])
    davis = run_protocol("label-propagation", "vit-tiny", data=VIDEOS, backbone_kwargs=tiny)
    assert {"jf_mean", "j_mean", "j_recall", "f_mean", "f_recall"} <= set(davis["metrics"])
    hb = run_protocol("in-context", "vit-tiny", data=IMAGES, backbone_kwargs=tiny, fractions=[1.0], seeds=[0])
    assert set(hb["metrics"]) == {"miou@1/1", "miou_std@1/1"}


def test_compare_two_reports_and_bad_requests(tmp_path, capsys):
    for name, depth in (("a", 1), ("b", 2)):
        args = ["eval", "overclustering", "--backbone", "vit-tiny", "--backbone-arg", "pretrained=false",
                "--backbone-arg", "patch_size=8", "--backbone-arg", "img_size=32", "--backbone-arg", f"depth={depth}",
                "--data", IMAGES, "--set", "ks=[null]", "--out", str(tmp_path / name)]
        assert main(args) == 0
    capsys.readouterr()
    assert main(["eval", "--compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    table = capsys.readouterr().out
    assert "| miou@K=classes |" in table and " - " in table
    assert main(["eval", "overclustering", "--backbone", "vit-tiny", "--data", "vocc:/nowhere"]) == 2
    assert "did you mean voc" in capsys.readouterr().err
    assert main(["eval", "label-propagation", *BACKBONE, "--data", IMAGES]) == 2
    assert "needs videos" in capsys.readouterr().err
    assert main(["eval", "overclustering", "--backbone", "vit-tiny", "--data", "voc:/nowhere"]) == 2
    assert "VOC2012" in capsys.readouterr().err  # the error names the expected layout
