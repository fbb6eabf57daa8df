"""Weight formats: detection, conversion to/from timm keys, loading with reports.

Every equivalence test uses small models whose EVERY parameter is random (layer scales
and norm weights in [0.5, 1.5], the rest N(0, 0.1^2)), so that each mapped tensor changes
the output (tests/helpers/backbones.py). Patch tokens are compared at the native 56 px (4 x 4 patches of 14 px) with
atol 1e-5 (measured: 0.0, the same float operations run on the same values).
"""

import logging
import re

import pytest
import torch

from mosic.backbones.formats import (
    FORMATS,
    LoadReport,
    detect_format,
    from_timm,
    load_backbone_weights,
    to_timm,
)
from helpers.backbones import (
    ARCHS,
    ATOL,
    eva_backbone,
    file_in_format,
    hf_state,
    hub_state,
    images,
    open_clip_text_keys,
    save,
    timm_backbone,
)


# the test's own writers of each format, from the documented facts (not from formats.py): tests/helpers/backbones.py
DETECTED = {"hf-legacy": "hf", "hf-5": "hf", "hf-classifier": "hf"}
CASES = [
    (fmt, kind)
    for fmt in ("timm", "torchhub", "hf-legacy", "hf-5", "hf-classifier", "open_clip", "prefixed")
    for kind in ARCHS
]


@pytest.fixture(scope="module")
def originals():
    return {kind: timm_backbone(kind) for kind in ARCHS}


@pytest.mark.parametrize("fmt,kind", CASES)
def test_each_format_is_detected_loads_and_reproduces_the_patch_tokens(tmp_path, originals, fmt, kind):
    original = originals[kind]
    state, prefix = file_in_format(fmt, kind, original.model.state_dict())
    assert detect_format(state) == (DETECTED.get(fmt, fmt), prefix)
    path = save(state, tmp_path / ("w.safetensors" if kind == "small" else "w.pth"))
    fresh = timm_backbone(kind, seed=5)
    x = images()
    assert not torch.allclose(fresh.patch_tokens(x), original.patch_tokens(x), atol=1e-2)
    report = load_backbone_weights(fresh, path)
    assert isinstance(report, LoadReport)
    assert (report.source, report.format, report.prefix) == (path, DETECTED.get(fmt, fmt), prefix)
    assert report.num_loaded == len(original.model.state_dict())
    with torch.no_grad():
        assert torch.allclose(fresh.patch_tokens(x), original.patch_tokens(x), atol=ATOL)


def test_hub_and_hf_writers_agree_with_timm_and_transformers(tmp_path, originals):
    """The test's own format writers are right: timm's hub converter maps the hub file back
    to the timm model, and transformers loads the legacy HF file (its conversion mapping)
    into the same weights as the transformers-5 names."""
    from timm.models.vision_transformer import checkpoint_filter_fn
    from transformers import Dinov2Model

    from mosic.backbones.hf_dinov2 import hf_config

    for kind, original in originals.items():
        timm_state = original.model.state_dict()
        hub, _ = file_in_format("torchhub", kind, timm_state)
        by_timm = checkpoint_filter_fn(dict(hub), original.model)
        assert set(by_timm) == set(timm_state)
        assert all(torch.allclose(by_timm[k], timm_state[k], atol=1e-7) for k in timm_state)
    spec = originals["giant"].spec
    legacy, _ = file_in_format("hf-legacy", "giant", originals["giant"].model.state_dict())
    hf_config(spec).save_pretrained(tmp_path)
    save(legacy, tmp_path / "model.safetensors")
    loaded = Dinov2Model.from_pretrained(tmp_path).state_dict()
    new, _ = file_in_format("hf-5", "giant", originals["giant"].model.state_dict())
    assert set(loaded) == set(new)
    assert all(torch.equal(loaded[k], new[k]) for k in new)


@pytest.mark.parametrize("kind", list(ARCHS))
def test_from_timm_matches_the_installed_libraries(originals, kind):
    """Keys and shapes of from_timm's output equal those of the real models."""
    from transformers import Dinov2Model, Dinov2WithRegistersModel

    from mosic.backbones.hf_dinov2 import hf_config

    original = originals[kind]
    spec, timm_state = original.spec, original.model.state_dict()
    hf_model = (Dinov2WithRegistersModel if spec.num_registers else Dinov2Model)(hf_config(spec))
    hf_shapes = {k: v.shape for k, v in hf_model.state_dict().items()}
    for reference in (None, list(hf_shapes)):
        converted = from_timm(timm_state, spec, "hf", reference_keys=reference)
        assert {k: v.shape for k, v in converted.items()} == hf_shapes
    legacy = hf_state(timm_state, True, spec.mlp == "swiglu", bool(spec.num_registers), torch.zeros(1, 1, 96))
    assert from_timm(timm_state, spec, "hf", reference_keys=list(legacy)).keys() == legacy.keys()
    hub = from_timm(timm_state, spec, "torchhub")
    assert hub.keys() == hub_state(timm_state, bool(spec.num_registers), spec.mlp == "swiglu", torch.zeros(1, 1, 96)).keys()


@pytest.mark.parametrize("kind", list(ARCHS))
@pytest.mark.parametrize("fmt", ["timm", "torchhub", "hf-legacy", "hf-5", "open_clip"])
def test_timm_to_format_and_back_is_exact(originals, kind, fmt):
    original = originals[kind]
    spec, timm_state = original.spec, original.model.state_dict()
    reference = None
    if fmt == "hf-legacy":
        reference = list(hf_state(timm_state, True, spec.mlp == "swiglu", bool(spec.num_registers), torch.zeros(1, 1, 96)))
    written = from_timm(timm_state, spec, fmt.split("-")[0], reference_keys=reference)
    detected, prefix = detect_format(written)
    back, ignored = to_timm(written, spec, detected, prefix)
    assert back.keys() == timm_state.keys()
    assert all(torch.equal(back[k], timm_state[k]) for k in timm_state)
    assert ignored == (["mask token `mask_token` (1 tensor)"] if fmt == "torchhub" else
                       ["mask token `embeddings.mask_token` (1 tensor)"] if fmt.startswith("hf") else [])


def test_hf_5_names_split_the_packed_swiglu_gate_first(originals):
    timm_state = originals["giant"].model.state_dict()
    hf = from_timm(timm_state, originals["giant"].spec, "hf")
    fc1 = timm_state["blocks.0.mlp.fc1.weight"]
    assert torch.equal(hf["encoder.layer.0.mlp.gate_proj.weight"], fc1[: fc1.shape[0] // 2])
    assert torch.equal(hf["encoder.layer.0.mlp.up_proj.weight"], fc1[fc1.shape[0] // 2 :])


def test_eva_loads_from_timm_open_clip_and_prefixed_files(tmp_path, originals):
    original = eva_backbone()
    timm_state = original.model.state_dict()
    text = {"text." + k: v for k, v in open_clip_text_keys().items() if k != "logit_scale"}
    files = {
        "timm": timm_state,
        "open_clip": {**{"visual.trunk." + k: v for k, v in timm_state.items()}, **text,
                      "logit_scale": torch.ones([]), "visual.trunk.head.weight": torch.randn(16, 64)},
        "prefixed": {**{"feature_extractor.model." + k: v for k, v in timm_state.items()},
                     "prototypes": torch.randn(8, 16)},
    }
    x = images(64)
    for fmt, state in files.items():
        fresh = eva_backbone(seed=3)
        report = load_backbone_weights(fresh, save(state, tmp_path / f"{fmt}.safetensors"))
        assert report.format == fmt
        with torch.no_grad():
            assert torch.allclose(fresh.patch_tokens(x), original.patch_tokens(x), atol=ATOL)
    written = from_timm(timm_state, original.spec, "open_clip")
    back, _ = to_timm(written, original.spec, *detect_format(written))
    assert all(torch.equal(back[k], v) for k, v in timm_state.items()) and back.keys() == timm_state.keys()
    dinov2_hf, _ = file_in_format("hf-5", "small", originals["small"].model.state_dict())
    with pytest.raises(ValueError, match="EVA-02 weights come in timm, open_clip or prefixed"):
        to_timm(dinov2_hf, original.spec, "hf")
    with pytest.raises(ValueError, match="EVA-02 has no 'hf' format"):
        from_timm(timm_state, original.spec, "hf")


def test_ignored_parts_are_reported_and_logged(originals, caplog):
    state, _ = file_in_format("open_clip", "small", originals["small"].model.state_dict())
    text = len(open_clip_text_keys())
    fresh = timm_backbone("small", seed=2)
    with caplog.at_level(logging.INFO, logger="mosic"):
        report = load_backbone_weights(fresh, state)
    assert report.ignored == [f"open_clip text tower ({text} tensors)", "CLIP image projection `visual.trunk.head.*` (2 tensors)"]
    assert "open_clip text tower" in caplog.text and "visual.trunk.head" in caplog.text
    state, _ = file_in_format("prefixed", "small", originals["small"].model.state_dict())
    assert load_backbone_weights(fresh, state).ignored == ["`mlp_head.*` (3 tensors)", "`prototypes` (1 tensor)"]
    state, _ = file_in_format("hf-classifier", "small", originals["small"].model.state_dict())
    assert load_backbone_weights(fresh, state).ignored == [
        "classifier head `classifier.*` (2 tensors)", "mask token `dinov2.embeddings.mask_token` (1 tensor)"]


def test_several_backbones_need_a_prefix_and_chunked_hub_blocks_load(originals):
    """A DINOv2 training checkpoint: student and teacher, blocks in chunks (blocks.C.N.)."""
    original = originals["small"]
    hub, _ = file_in_format("torchhub", "small", original.model.state_dict())
    # 2 chunks of 1 block: chunk C holds block C (DINOv2's BlockChunk keeps global indices)
    chunked = {re.sub(r"^blocks\.(\d+)\.", r"blocks.\1.\1.", k): v for k, v in hub.items()}
    assert any(k.startswith("blocks.1.1.") for k in chunked)
    state = {f"{who}.backbone.{k}": v for who in ("student", "teacher") for k, v in chunked.items()}
    state["teacher.dino_head.last_layer.weight"] = torch.randn(4, 8)
    with pytest.raises(ValueError, match=r"several backbones.*'student\.backbone\.'.*'teacher\.backbone\.'.*prefix="):
        detect_format(state)
    fresh = timm_backbone("small", seed=4)
    report = load_backbone_weights(fresh, state, prefix="teacher.backbone.")
    assert (report.format, report.prefix) == ("prefixed", "teacher.backbone.")
    assert "`teacher.dino_head.*` (1 tensor)" in report.ignored
    x = images()
    with torch.no_grad():
        assert torch.allclose(fresh.patch_tokens(x), original.patch_tokens(x), atol=ATOL)
    with pytest.raises(ValueError, match="no backbone under prefix 'model.'"):
        detect_format(state, prefix="model.")


def test_unrecognised_files_list_the_formats_and_some_keys():
    with pytest.raises(ValueError) as info:
        detect_format({"encoder.conv1.weight": torch.zeros(1), "fc.bias": torch.zeros(1)})
    message = str(info.value)
    assert "encoder.conv1.weight" in message and all(name in message for name in FORMATS)


def test_strict_load_lists_missing_unexpected_and_mismatched_keys(originals):
    state = dict(originals["small"].model.state_dict())
    del state["norm.bias"]
    state["blocks.0.extra.weight"] = torch.zeros(1)
    state["pos_embed"] = torch.zeros(1, 5, 96)
    with pytest.raises(ValueError) as info:
        load_backbone_weights(timm_backbone("small", seed=1), state)
    message = str(info.value)
    assert re.search(r"missing keys: norm\.bias", message)
    assert re.search(r"unexpected keys: blocks\.0\.extra\.weight", message)
    assert re.search(r"shape mismatch keys: pos_embed: file \(1, 5, 96\) vs model \(1, 17, 96\)", message)
    assert "read as 'timm' format" in message
    # a registers file into a model without registers
    reg, _ = file_in_format("torchhub", "reg4", originals["reg4"].model.state_dict())
    with pytest.raises(ValueError) as info:
        load_backbone_weights(timm_backbone("small", seed=1), reg)
    assert "unexpected keys: reg_token" in str(info.value) and "read as 'torchhub' format" in str(info.value)


def test_non_strict_load_warns_and_loads_what_matches(originals):
    state = dict(originals["small"].model.state_dict())
    del state["norm.bias"]
    state["extra.weight"] = torch.zeros(1)
    fresh = timm_backbone("small", seed=1)
    before = fresh.model.norm.bias.clone()
    with pytest.warns(UserWarning, match=r"missing \(1\): norm\.bias.*unexpected \(1\): extra\.weight"):
        report = load_backbone_weights(fresh, state, strict=False)
    assert (report.missing, report.unexpected, report.num_loaded) == (["norm.bias"], ["extra.weight"], len(state) - 1)
    assert torch.equal(fresh.model.norm.bias, before)
    assert torch.equal(fresh.model.norm.weight, originals["small"].model.norm.weight)


def test_pickles_needing_code_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"patch_embed.proj.weight": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="weights_only"):
        load_backbone_weights(timm_backbone("small"), tmp_path / "evil.pth")
