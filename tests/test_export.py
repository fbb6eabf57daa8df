"""`mosic export`: the post-pretrained backbone loads in timm, transformers and torch.hub format
with identical features, without mosic."""

import json
import shutil

import pytest
import torch

import mosic
from conftest import TINY_VIT, tiny_config
from helpers.untrusted import REFUSED, evil_file
from mosic.data.synthetic import SyntheticVideos
from mosic.export import export_backbone

SMALL_REG = dict(depth=2, embed_dim=48, num_heads=2, img_size=56)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 2-step post-pretraining run of a small DINOv2-R (4 registers, patch 14, 56 px)."""
    out = tmp_path_factory.mktemp("run")
    config = tiny_config(
        **{
            "backbone.name": "dinov2r-s14",
            "backbone.kwargs": SMALL_REG,
            "backbone.train_blocks": "all",
            "data.size": 56,
            "train.max_steps": 2,
            "train.checkpoint_every": 2,
            "train.out_dir": str(out),
            "train.ema_momentum": 0.5,
        }
    )
    trainer = mosic.PostPretrainer(config=config)
    trainer.fit(SyntheticVideos(num_videos=4, num_frames=12, size=56, seed=0))
    return out, trainer


def images(seed=0, size=56):
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_timm_export_loads_in_timm_with_identical_features(run_dir, tmp_path):
    import timm

    run, trainer = run_dir
    out = export_backbone(run, tmp_path / "timm", format="timm")
    expected = trainer.teacher.eval().patch_tokens(images())
    local = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    got = local.forward_features(images())[:, 5:].reshape(expected.shape)
    assert torch.equal(got, expected)
    config = json.loads((out / "config.json").read_text())
    overlay = timm.create_model(
        config["architecture"],
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(out / "model.safetensors")),
        **config["model_args"],
    ).eval()
    assert torch.equal(overlay.forward_features(images())[:, 5:].reshape(expected.shape), expected)
    info = json.loads((out / "mosic.json").read_text())
    assert info["model"] == "teacher" and info["step"] == 2 and info["backbone"] == "dinov2r-s14"


def test_hf_export_loads_with_automodel(run_dir, tmp_path):
    from transformers import AutoModel

    run, trainer = run_dir
    out = export_backbone(run, tmp_path / "hf", format="hf")
    model = AutoModel.from_pretrained(str(out)).eval()
    assert type(model).__name__ == "Dinov2WithRegistersModel"
    expected = trainer.teacher.eval().patch_tokens(images())
    with torch.no_grad():
        got = model(pixel_values=images()).last_hidden_state[:, 5:].reshape(expected.shape)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


def test_torchhub_export_is_the_official_format_and_reloads(run_dir, tmp_path):
    run, trainer = run_dir
    out = export_backbone(run, tmp_path / "hub", format="torchhub", model="student")
    state = torch.load(out / "model.pth", weights_only=True)
    assert {"register_tokens", "mask_token", "cls_token", "pos_embed"} <= set(state)
    assert state["pos_embed"].shape == (1, 1 + 16, 48)  # the official format keeps the CLS position
    reloaded = mosic.create_backbone("dinov2r-s14", weights=out / "model.pth", **SMALL_REG).eval()
    expected = trainer.student.eval().patch_tokens(images())
    assert torch.allclose(reloaded.patch_tokens(images()), expected, atol=1e-6)
    load = json.loads((out / "mosic.json").read_text())["load"]
    assert "torch.hub.load('facebookresearch/dinov2', 'dinov2_vits14_reg'" in load


def test_student_and_teacher_exports_differ(run_dir, tmp_path):
    from safetensors.torch import load_file

    run, _ = run_dir
    teacher = load_file(export_backbone(run, tmp_path / "t", format="timm") / "model.safetensors")
    student = load_file(export_backbone(run, tmp_path / "s", format="timm", model="student") / "model.safetensors")
    assert teacher.keys() == student.keys()
    assert any(not torch.equal(teacher[k], student[k]) for k in teacher)


def test_hf_provider_backbone_exports_to_timm(tmp_path):
    import timm

    torch.manual_seed(0)
    backbone = mosic.create_backbone("dinov2-s14", source="hf", pretrained=False, **SMALL_REG).eval()
    out = export_backbone(backbone, tmp_path, format="timm")
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    expected = backbone.patch_tokens(images())
    got = model.forward_features(images())[:, 1:].reshape(expected.shape)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


def test_eva_exports_to_timm_only(tmp_path):
    import timm

    torch.manual_seed(0)
    backbone = mosic.create_backbone("eva-clip-b16", pretrained=False, depth=2, embed_dim=64, num_heads=2, img_size=64)
    out = export_backbone(backbone.eval(), tmp_path / "timm", format="timm")
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = images(size=64)
    assert torch.equal(model.forward_features(x)[:, 1:].reshape(2, 4, 4, 64), backbone.patch_tokens(x))
    with pytest.raises(ValueError, match="no Hugging Face transformers model"):
        export_backbone(backbone, tmp_path / "hf", format="hf")
    with pytest.raises(ValueError, match="no official torch.hub model"):
        export_backbone(backbone, tmp_path / "hub", format="torchhub")
    with pytest.raises(ValueError, match="unknown export format"):
        export_backbone(backbone, tmp_path / "x", format="onnx")


def test_export_command(run_dir, tmp_path, capsys):
    from mosic.cli import main

    run, _ = run_dir
    assert main(["export", str(run), str(tmp_path / "hf"), "--format", "hf"]) == 0
    assert "wrote the teacher in hf format" in capsys.readouterr().out
    assert (tmp_path / "hf" / "config.json").is_file() and (tmp_path / "hf" / "model.safetensors").is_file()
    assert main(["export", str(tmp_path / "missing"), str(tmp_path / "x")]) == 2


# ---- untrusted export folders (tests/helpers/untrusted.py)


#: a tiny DINO (it has an official torch.hub format, so it exports to every format)
TINY_DINO = {**TINY_VIT, "depth": 1}


@pytest.fixture(scope="module")
def hub_export(tmp_path_factory):
    """A tiny DINO exported in torch.hub format: model.pth (plain tensors), model.safetensors, mosic.json."""
    from mosic.export import export_backbone

    torch.manual_seed(0)
    backbone = mosic.create_backbone("dino-s16", pretrained=False, **TINY_DINO).eval()
    out = export_backbone(backbone, tmp_path_factory.mktemp("export") / "hub", format="torchhub")
    return backbone, out


def test_export_round_trip_loads_safely(hub_export, tmp_path):
    from mosic.eval.features import resolve_backbone

    backbone, out = hub_export
    images = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    expected = backbone.patch_tokens(images)
    fresh = mosic.create_backbone("dino-s16", pretrained=False, **TINY_DINO).eval()
    fresh.load_weights(out / "model.pth")  # plain tensors: torch.load(weights_only=True) reads them
    assert torch.equal(fresh.patch_tokens(images), expected)
    assert torch.equal(resolve_backbone(out).patch_tokens(images), expected)


def test_tampered_export_folders_are_refused(hub_export, tmp_path, marker):
    from mosic.eval.features import resolve_backbone

    _, source = hub_export
    out = tmp_path / "tampered"
    shutil.copytree(source, out)
    evil_file(out / "model.pth", marker)
    fresh = mosic.create_backbone("dino-s16", pretrained=False, **TINY_DINO)
    with pytest.raises(ValueError, match=REFUSED):
        fresh.load_weights(out / "model.pth")
    evil_file(out / "model.safetensors", marker)  # what resolve_backbone reads
    with pytest.raises(ValueError, match=r"cannot read the safetensors file .*model\.safetensors"):
        resolve_backbone(out)
    info = json.loads((source / "mosic.json").read_text())
    shutil.copy(source / "model.safetensors", out / "model.safetensors")
    for bad, match in (
        ("not json", r"mosic\.json is not a readable"),
        (json.dumps([1, 2]), "must hold a JSON object"),
        (json.dumps({**info, "backbone": "os.system"}), "not registered"),
        (json.dumps({**info, "spec": {**info["spec"], "depth": "2; rm -rf /"}}), "spec values must be positive ints"),
    ):
        (out / "mosic.json").write_text(bad)
        with pytest.raises(ValueError, match=match):
            resolve_backbone(out)
