"""Checkpoint faults: a full disk (simulated at each write, and a real 1 MiB tmpfs), damaged
checkpoints, a `latest` that names a missing folder, and what killed writers leave behind; tampered checkpoints never run code."""

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import mosic
import mosic.checkpoint as ck
from conftest import tiny_config
from helpers.untrusted import evil_file
from mosic import PostPretrainer
from mosic.checkpoint import (
    CheckpointError,
    CheckpointWarning,
    CheckpointWriteError,
    latest_checkpoint,
    load_module_state,
    remove_stale,
    resolve_checkpoint,
)
from mosic.data.synthetic import SyntheticVideos

VIDEOS = "synthetic:num_videos=8,num_frames=12,size=32,seed=0"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run folder with checkpoints step_0000002 and step_0000004 (latest)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    PostPretrainer(config=tiny_config()).fit(SyntheticVideos(num_videos=8, num_frames=12, size=32, seed=0), out_dir=run)
    return run


@pytest.fixture
def run(trained, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def listing(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def latest(run: Path) -> str:
    return (run / "checkpoints" / "latest").read_text().strip()


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# ---- a full disk ---------------------------------------------------------------------------
def _fail_in_safetensors(monkeypatch):
    """safetensors writes part of the file, then reports the OS error as a SafetensorError."""

    def save(tensors, filename, *args, **kwargs):
        save_file(tensors, filename, *args, **kwargs)
        with open(filename, "r+b") as f:
            f.truncate(os.path.getsize(filename) // 3)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(ck, "save_file", save)


def _fail_writing_state(monkeypatch):
    real_open = open

    def fake_open(path, mode="r", *args, **kwargs):
        if "w" in mode and Path(path).name == ck.STATE:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(ck, "open", fake_open, raising=False)


def _fail_at_fsync(monkeypatch):  # delayed allocation (XFS, NFS) reports a full disk at fsync
    monkeypatch.setattr(ck.os, "fsync", disk_full)


@pytest.mark.parametrize(
    "fault", [_fail_in_safetensors, _fail_writing_state, _fail_at_fsync], ids=["tensors", "state", "fsync"]
)
def test_a_full_disk_is_a_clear_error_and_leaves_no_partial_checkpoint(run, monkeypatch, fault):
    trainer = PostPretrainer.load(run)
    before = load_file(str(run / "checkpoints" / "step_0000004" / ck.TENSORS))
    fault(monkeypatch)
    trainer.step = 6
    with pytest.raises(CheckpointWriteError) as caught:
        trainer.save_checkpoint(run)
    monkeypatch.undo()
    error = caught.value
    assert isinstance(error, OSError) and isinstance(error, CheckpointError) and error.errno == errno.ENOSPC
    message = str(error)
    assert "disk full" in message and str(run / "checkpoints") in message and "step_0000006" in message
    assert "free space" in message.lower() and "untouched" in message
    # no partial file or folder; the previous checkpoint and `latest` are as they were
    assert listing(run) == ["latest", "step_0000002", "step_0000004"]
    assert latest(run) == "step_0000004"
    after = load_file(str(run / "checkpoints" / "step_0000004" / ck.TENSORS))
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert PostPretrainer.load(run).step == 4


def test_a_full_disk_when_moving_latest_keeps_the_old_latest(run, monkeypatch):
    trainer = PostPretrainer.load(run)
    trainer.step = 6
    _fail_writing_latest = ck._write_text

    def write_text(path, text):
        if path.name.startswith(".latest.tmp-"):
            _fail_writing_latest(path, "step_00")  # a torn temporary file...
            disk_full()
        _fail_writing_latest(path, text)

    monkeypatch.setattr(ck, "_write_text", write_text)
    with pytest.raises(CheckpointWriteError, match="disk full.*the latest pointer"):
        trainer.save_checkpoint(run)
    assert latest(run) == "step_0000004"  # ...never replaces `latest`
    assert listing(run) == ["latest", "step_0000002", "step_0000004", "step_0000006"]


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 1 MiB filesystem (tmpfs); skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mount)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or result.returncode})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_really_full_disk_stops_mosic_fit_with_a_message(tiny_disk, tmp_path, capsys):
    from mosic.cli import main

    config = tmp_path / "tiny.yaml"
    tiny_config(**{"train.max_steps": 4, "train.device": "cpu"}).save(config)
    run = tiny_disk / "run"
    # step 2's checkpoint (~0.8 MiB) fits on the 1 MiB disk, step 4's does not
    assert main(["fit", "--config", str(config), "--videos", VIDEOS, f"train.out_dir={run}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mosic fit: error: [Errno 28] disk full"), err
    assert str(run / "checkpoints") in err and "step_0000004" in err and "needs about" in err
    assert listing(run) == ["latest", "step_0000002"] and latest(run) == "step_0000002"
    assert PostPretrainer.load(run).step == 2


# ---- damaged checkpoints -------------------------------------------------------------------
def _truncate(folder):
    path = folder / ck.TENSORS
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _rewrite_tensors(folder, change):
    tensors = load_file(str(folder / ck.TENSORS))
    change(tensors)
    save_file(tensors, str(folder / ck.TENSORS))


def _rename_a_key(tensors):
    key = next(k for k in tensors if k.startswith("student.") and k.endswith("weight"))
    tensors[key.replace("weight", "weights")] = tensors.pop(key)


def _reshape_a_tensor(tensors):
    key = next(k for k in tensors if k.startswith("student.") and k.endswith("weight") and tensors[k].dim() == 2)
    tensors[key] = tensors[key][:, :-1].contiguous()


DAMAGE = {
    "truncated tensors": (_truncate, CheckpointError, r"tensors\.safetensors is damaged"),
    "missing state.json": (lambda f: (f / ck.STATE).unlink(), CheckpointError, r"missing state\.json"),
    "missing tensors": (lambda f: (f / ck.TENSORS).unlink(), CheckpointError, r"missing tensors\.safetensors"),
    "state.json not JSON": (lambda f: (f / ck.STATE).write_text('{"step": 4, '), CheckpointError, r"state\.json is damaged"),
    "wrong keys": (lambda f: _rewrite_tensors(f, _rename_a_key), CheckpointError, r"unexpected keys: .*weights"),
    "wrong shape": (lambda f: _rewrite_tensors(f, _reshape_a_tensor), CheckpointError, r"shape mismatch"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_checkpoint_is_an_error_naming_the_file_and_what_to_do(run, damage):
    change, error, pattern = DAMAGE[damage]
    folder = run / "checkpoints" / "step_0000004"
    change(folder)
    with pytest.raises(error, match=pattern) as caught:
        PostPretrainer.load(folder)
    message = str(caught.value)
    assert str(folder) in message
    if damage in ("wrong keys", "wrong shape"):  # what to do: the model does not fit this checkpoint
        assert "config.yaml" in message
    else:  # what to do: delete it, and the run resumes from step 2
        assert f"delete the folder {folder}" in message and "step_0000002" in message
        shutil.rmtree(folder)
        with pytest.warns(CheckpointWarning, match="step_0000004.*missing"):
            assert PostPretrainer.load(run).step == 2


@pytest.mark.parametrize("change", [_rename_a_key, _reshape_a_tensor], ids=["wrong keys", "wrong shape"])
def test_load_module_state_says_which_tensors_do_not_fit(run, change):
    folder = run / "checkpoints" / "step_0000004"
    tensors = load_file(str(folder / ck.TENSORS))
    change(tensors)
    trainer = PostPretrainer(config=tiny_config())
    pattern = r"(?s)tensors\.safetensors \(student\) do not match.*(unexpected|shape mismatch) keys"
    with pytest.raises(CheckpointError, match=pattern) as caught:
        load_module_state(trainer.learner, tensors, "student.", folder)
    assert "config.yaml" in str(caught.value)  # what to do


# ---- `latest` and the folders around it ----------------------------------------------------
def test_latest_naming_a_missing_folder_falls_back_to_the_newest_complete_one(run, synthetic):
    shutil.rmtree(run / "checkpoints" / "step_0000004")
    with pytest.warns(CheckpointWarning, match="names 'step_0000004', which is missing.*step_0000002"):
        assert resolve_checkpoint(run) == run / "checkpoints" / "step_0000002"
    # resume=True continues from there and moves `latest` on
    with pytest.warns(CheckpointWarning):
        trainer = PostPretrainer(config=tiny_config()).fit(synthetic, out_dir=run, resume=True)
    assert trainer.step == 4 and latest(run) == "step_0000004"


def test_latest_with_nothing_to_fall_back_to_is_an_error(run):
    for name in ("step_0000002", "step_0000004"):
        shutil.rmtree(run / "checkpoints" / name)
    with pytest.raises(CheckpointError, match="names 'step_0000004', which is missing or incomplete.*no other complete"):
        resolve_checkpoint(run)


def test_checkpoints_without_latest_and_fresh_runs(run, tmp_path):
    (run / "checkpoints" / "latest").unlink()
    with pytest.warns(CheckpointWarning, match="no latest file; using the newest complete checkpoint"):
        assert resolve_checkpoint(run) == run / "checkpoints" / "step_0000004"
    with pytest.warns(CheckpointWarning):
        assert latest_checkpoint(run) == run / "checkpoints" / "step_0000004"
    assert latest_checkpoint(tmp_path / "new") is None
    (tmp_path / "new" / "checkpoints").mkdir(parents=True)
    assert latest_checkpoint(tmp_path / "new") is None
    with pytest.raises(CheckpointError, match="no mosic checkpoint"):
        resolve_checkpoint(tmp_path / "new")


def test_leftovers_of_killed_writers_are_ignored_then_removed(run):
    checkpoints = run / "checkpoints"
    dead = dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # a complete-looking temporary folder of a dead writer, a torn `latest`, a half
        # deleted checkpoint, a live writer's folder, and a checkpoint whose replacement was killed
        shutil.copytree(checkpoints / "step_0000004", checkpoints / f".step_0000009.tmp-{dead}")
        (checkpoints / f".latest.tmp-{dead}").write_text("step_00")
        (checkpoints / f".step_0000001.del-{dead}").mkdir()
        (checkpoints / f".step_0000010.tmp-{live.pid}").mkdir()
        os.replace(checkpoints / "step_0000002", checkpoints / f".step_0000002.old-{dead}")
        assert resolve_checkpoint(run) == checkpoints / "step_0000004"  # never a hidden folder
        (checkpoints / "latest").unlink()
        with pytest.warns(CheckpointWarning):
            assert resolve_checkpoint(run) == checkpoints / "step_0000004"

        removed = remove_stale(checkpoints)
        assert sorted(p.name for p in removed) == sorted(
            [f".step_0000009.tmp-{dead}", f".latest.tmp-{dead}", f".step_0000001.del-{dead}"]
        )
        assert listing(run) == [f".step_0000010.tmp-{live.pid}", "step_0000002", "step_0000004"]
        assert PostPretrainer.load(checkpoints / "step_0000002").step == 2  # put back whole
    finally:
        live.kill()
        live.wait()
    trainer = PostPretrainer.load(checkpoints / "step_0000004")
    trainer.step = 6
    trainer.save_checkpoint(run)  # every save first removes dead writers' leftovers
    assert listing(run) == ["latest", "step_0000004", "step_0000006"]


def test_a_failed_replacement_keeps_the_old_checkpoint(run, monkeypatch):
    trainer = PostPretrainer.load(run / "checkpoints" / "step_0000002")
    before = load_file(str(run / "checkpoints" / "step_0000004" / ck.TENSORS))
    trainer.step = 4  # rewrite step 4 (a resume from step 2 does)
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(Path(src).name)
        if len(calls) == 2:  # the new folder into place, after the old one was moved aside
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_replace(src, dst)

    monkeypatch.setattr(ck.os, "replace", replace)
    with pytest.raises(CheckpointWriteError, match="could not write checkpoint step_0000004.*Input/output error"):
        trainer.save_checkpoint(run)
    monkeypatch.undo()
    assert calls[0] == "step_0000004" and calls[1].startswith(".step_0000004.tmp-")
    assert listing(run) == ["latest", "step_0000002", "step_0000004"]
    after = load_file(str(run / "checkpoints" / "step_0000004" / ck.TENSORS))
    assert all(torch.equal(after[k], before[k]) for k in before)


# ---- untrusted checkpoints and runs (tests/helpers/untrusted.py)


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
