"""Files someone else made are untrusted: weights load only through safetensors or
``torch.load(weights_only=True)``, configs through safe YAML, and track caches carry checksums.

Every test plants a pickle whose ``__reduce__`` would create a marker file (through
``os.system``) if anything unpickled it, feeds it to a loader entry point, and checks that
the marker never appears and that the error names the file, says arbitrary pickle is
refused and says how to convert the file.
"""

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import mosic
from conftest import TINY_VIT
from mosic.backbones.weights import UnsafeWeightsError, read_state_dict
from mosic.config import ConfigError, RunConfig

REFUSED = r"(?s)refusing to load .*arbitrary code.*safetensors.*plain state dict"
#: a tiny DINO (it has an official torch.hub format, so it exports to every format)
TINY_DINO = {**TINY_VIT, "depth": 1}


class Payload:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "a malicious pickle was executed"


def evil_file(path: Path, marker: Path, kind: str = "torch") -> Path:
    """A weights-looking file holding the payload: torch.save's zip format or a plain pickle."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "torch":
        torch.save({"patch_embed.proj.weight": torch.zeros(1), "state": Payload(marker)}, path)
    else:  # a plain pickle (its tensors would be refused first, as torch.storage._load_from_bytes)
        with open(path, "wb") as f:
            pickle.dump({"patch_embed.proj.weight": Payload(marker)}, f, protocol=2)
    return path


def test_the_payload_works_when_unpickled(tmp_path):
    """The test is meaningful: plain pickle.load of the file does create the marker."""
    marker = tmp_path / "PWNED"
    path = evil_file(tmp_path / "evil.bin", marker, kind="pickle")
    with open(path, "rb") as f:
        pickle.load(f)
    assert marker.exists()


@pytest.mark.parametrize("name,kind", [("w.pth", "torch"), ("w.pt", "torch"), ("pytorch_model.bin", "pickle"), ("w.ckpt", "torch")])
def test_read_state_dict_refuses_code_and_explains(tmp_path, marker, name, kind):
    path = evil_file(tmp_path / name, marker, kind)
    with pytest.raises(UnsafeWeightsError, match=REFUSED) as info:
        read_state_dict(path)
    message = str(info.value)
    assert str(path) in message  # names the file
    assert "weights_only=True" in message and "never" in message
    assert "the Python object posix.system" in message  # says what the file asked for
    assert "add_safe_globals" not in message and "weights_only` set to `False`" not in message  # no unsafe advice


def test_backbone_entry_points_refuse_code(tmp_path, marker):
    path = evil_file(tmp_path / "backbone.pth", marker)
    with pytest.raises(ValueError, match=REFUSED):
        mosic.create_backbone("vit-tiny", pretrained=str(path), **TINY_VIT)
    with pytest.raises(ValueError, match=REFUSED):
        mosic.BACKBONES.create("vit-tiny", weights=path, **TINY_VIT)
    backbone = mosic.create_backbone("vit-tiny", pretrained=False, **TINY_VIT)
    with pytest.raises(ValueError, match=REFUSED):
        backbone.load_weights(path)
    from mosic.backbones.formats import load_backbone_weights

    with pytest.raises(ValueError, match=REFUSED):
        load_backbone_weights(backbone, path, strict=False)


def test_a_pickle_named_safetensors_is_refused(tmp_path, marker):
    path = evil_file(tmp_path / "model.safetensors", marker)
    with pytest.raises(UnsafeWeightsError, match=r"cannot read the safetensors file .*model\.safetensors"):
        read_state_dict(path)


def test_safetensors_content_is_read_whatever_the_suffix(tmp_path):
    tensors = {"a": torch.arange(3.0)}
    save_file(tensors, str(tmp_path / "weights.bin"))
    assert torch.equal(read_state_dict(tmp_path / "weights.bin")["a"], tensors["a"])


def test_corrupt_and_non_state_dict_files_are_reported(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"\x00not a checkpoint at all")
    with pytest.raises(UnsafeWeightsError, match=r"cannot read .*junk\.pth.*corrupt, truncated or not a weights file"):
        read_state_dict(tmp_path / "junk.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match=r"list\.pth does not contain a state dict \(name -> tensor\), got a list"):
        read_state_dict(tmp_path / "list.pth")
    with pytest.raises(TypeError, match="path must be a str or os.PathLike"):
        read_state_dict(123)


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


def test_raft_local_weights_refuse_code(tmp_path, marker):
    path = evil_file(tmp_path / "raft_small.pth", marker)
    with pytest.raises(ValueError, match=REFUSED):
        mosic.create_tracker("raft-small", weights=str(path))


def test_raft_hub_cache_file_refuses_code(tmp_path, monkeypatch):
    from mosic.trackers.raft import _weights_enum

    marker = tmp_path / "PWNED"
    hub = tmp_path / "hub"
    url = _weights_enum("small").url
    evil_file(hub / "checkpoints" / url.rsplit("/", 1)[-1], marker)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    try:
        mosic.create_tracker("raft-small", weights=None, progress=False)
    except Exception:
        pass
    assert not marker.exists(), "the RAFT hub-cache path unpickled arbitrary code"


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


def fake_checkpoint(folder: Path, marker: Path, tensors_file: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / "state.json").write_text(json.dumps({"format_version": 1, "step": 1}))
    (folder / "config.yaml").write_text(f"train:\n  seed: !!python/object/apply:os.system ['touch {marker}']\n")
    if tensors_file:
        save_file({"x": torch.zeros(1)}, str(folder / "tensors.safetensors"))
    else:
        evil_file(folder / "tensors.safetensors", marker)
    return folder


def test_tampered_checkpoints_and_runs_do_not_run_code(tmp_path, marker):
    from mosic.checkpoint import CheckpointError, load_checkpoint
    from mosic.eval.features import resolve_backbone
    from mosic.export import export_backbone

    pickled = fake_checkpoint(tmp_path / "a" / "step_0000001", marker, tensors_file=False)
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(pickled)
    with pytest.raises(CheckpointError):
        resolve_backbone(pickled)
    # a checkpoint whose config.yaml would run code: safe YAML refuses the tag
    evil_config = fake_checkpoint(tmp_path / "b" / "step_0000001", marker)
    with pytest.raises(Exception, match="python/object/apply"):
        mosic.PostPretrainer.load(evil_config)
    with pytest.raises(Exception, match="python/object/apply"):
        export_backbone(evil_config, tmp_path / "out")


def test_config_yaml_with_python_tags_is_refused(tmp_path, marker):
    path = tmp_path / "evil.yaml"
    path.write_text(f"train:\n  seed: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match=r"(?s)evil\.yaml.*python/object/apply:os\.system.*safe_load.*refused"):
        RunConfig.load(path)
    with pytest.raises(ConfigError, match="python/object"):
        RunConfig.from_file(path)
    with pytest.raises(ConfigError, match=r"(?s)the override .*python/name.*refused"):
        RunConfig().with_overrides(["train.device=!!python/name:os.system"])
    (tmp_path / "broken.yaml").write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml is not valid YAML"):
        RunConfig.load(tmp_path / "broken.yaml")
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match=r"binary\.yaml: a config must be UTF-8"):
        RunConfig.load(tmp_path / "binary.yaml")
    with pytest.raises(ConfigError, match="python/object"):
        RunConfig.from_yaml(path.read_text(), "checkpoint config.yaml")


# ----------------------------------------------------------------------------- track cache
# (test_track_cache.py already covers a file with flipped bytes and an edited video)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    from mosic.data.synthetic import SyntheticVideos
    from mosic.trackers.cache import CacheSettings, write_track_cache
    from mosic.trackers.oracle import OracleTracker

    settings = CacheSettings(
        tracker="oracle", weights="none", grid_size=4, num_frames=4, frame_stride=2, start_step=3, track_size=384
    )
    out = tmp_path_factory.mktemp("cache")
    write_track_cache(SyntheticVideos(num_videos=2, num_frames=12, size=32, seed=0), OracleTracker(), out, settings)
    return out


def open_cache(path):
    from mosic.data.synthetic import SyntheticVideos
    from mosic.trackers.cache import TrackCache

    return TrackCache(path, SyntheticVideos(num_videos=2, num_frames=12, size=32, seed=0))


def test_a_swapped_valid_track_file_fails_its_checksum(cache_dir, tmp_path):
    """A well-formed file of another video (so it parses) is caught by the checksum, and the
    message gives both digests and how to repair the cache."""
    from mosic.trackers.cache import StaleCacheError

    copy = tmp_path / "cache"
    shutil.copytree(cache_dir, copy)
    shutil.copy(copy / "tracks" / "000001.safetensors", copy / "tracks" / "000000.safetensors")
    cache = open_cache(copy)
    with pytest.raises(StaleCacheError, match=r"(?s)000000\.safetensors does not match its checksum.*sha256 [0-9a-f]{16}.*records [0-9a-f]{16}.*mosic track"):
        cache.load(0, 0)
    cache.load(1, 0)  # the untouched video still loads
    (copy / "tracks" / "000001.safetensors").unlink()
    with pytest.raises(StaleCacheError, match=r"000001\.safetensors .* is missing"):
        open_cache(copy).load(1, 0)


def test_a_tampered_manifest_is_reported(cache_dir, tmp_path):
    from mosic.trackers.cache import StaleCacheError

    copy = tmp_path / "cache"
    shutil.copytree(cache_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    outside = dict(manifest, videos=[{**manifest["videos"][0], "file": "../../etc/passwd"}, manifest["videos"][1]])
    (copy / "manifest.json").write_text(json.dumps(outside))
    with pytest.raises(StaleCacheError, match=r"names the track file '\.\./\.\./etc/passwd', outside the cache folder"):
        open_cache(copy)
    missing = dict(manifest, videos=[{k: v for k, v in manifest["videos"][0].items() if k != "sha256"}, manifest["videos"][1]])
    (copy / "manifest.json").write_text(json.dumps(missing))
    with pytest.raises(StaleCacheError, match=r"video entry 0 needs 'sha256'"):
        open_cache(copy)
    (copy / "manifest.json").write_text(json.dumps(dict(manifest, settings={"tracker": "oracle"})))
    with pytest.raises(StaleCacheError, match=r"'settings' must hold exactly"):
        open_cache(copy)
    (copy / "manifest.json").write_text("[1, 2, 3]")
    with pytest.raises(StaleCacheError, match="not a track cache manifest"):
        open_cache(copy)
