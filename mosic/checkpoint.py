"""Atomic checkpoints: safetensors tensors + JSON state + the run's config.

A checkpoint is a folder::

    step_000500/
        tensors.safetensors   model weights, optimizer moments, RNG states
        state.json            step, epoch, optimizer hyper-parameters, RNG, version
        config.yaml           the RunConfig that produced it

It is written into a temporary folder, every file fsynced, then renamed into place,
so a crash leaves either the old checkpoint or the new one, never a torn one.
``latest`` (a text file naming the newest checkpoint folder) is replaced atomically.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1
TENSORS = "tensors.safetensors"
STATE = "state.json"
CONFIG = "config.yaml"
LATEST = "latest"


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or does not fit the model."""


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], state: dict[str, Any], config_yaml: str) -> Path:
    """Write a checkpoint folder atomically (replacing an existing one at ``path``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        save_file(_unshared(tensors), str(tmp / TENSORS))
        _write_text(tmp / STATE, json.dumps({"format_version": FORMAT_VERSION, **state}, indent=1))
        _write_text(tmp / CONFIG, config_yaml)
        _fsync(tmp / TENSORS)
        _fsync_dir(tmp)
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """(tensors, state, config_yaml) of a checkpoint folder (or a run folder's latest)."""
    path = resolve_checkpoint(path)
    missing = [name for name in (TENSORS, STATE, CONFIG) if not (path / name).is_file()]
    if missing:
        raise CheckpointError(f"{path} is not a complete mosic checkpoint: missing {', '.join(missing)}")
    state = json.loads((path / STATE).read_text())
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint format {state.get('format_version')!r}")
    return load_file(str(path / TENSORS)), state, (path / CONFIG).read_text()


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or the one a run folder's ``latest`` names."""
    path = Path(path)
    if (path / STATE).is_file():
        return path
    latest = path / "checkpoints" / LATEST
    if latest.is_file():
        return path / "checkpoints" / latest.read_text().strip()
    if (path / LATEST).is_file():
        return path / (path / LATEST).read_text().strip()
    raise CheckpointError(f"no mosic checkpoint at {path} (expected {STATE} or checkpoints/{LATEST})")


def update_latest(checkpoints_dir: Path, name: str, keep: int) -> None:
    """Point ``latest`` at ``name`` atomically and delete all but the ``keep`` newest."""
    tmp = checkpoints_dir / f".{LATEST}.tmp-{os.getpid()}"
    _write_text(tmp, name + "\n")
    os.replace(tmp, checkpoints_dir / LATEST)
    _fsync_dir(checkpoints_dir)
    steps = sorted(p for p in checkpoints_dir.glob("step_*") if p.is_dir())
    for old in steps[:-keep]:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)


def optimizer_to_checkpoint(optimizer: torch.optim.Optimizer, prefix: str = "optimizer.") -> tuple[dict, dict]:
    """Split ``optimizer.state_dict()`` into tensors and a JSON-able remainder."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_checkpoint(tensors: dict, meta: dict, prefix: str = "optimizer.") -> dict:
    """Inverse of :func:`optimizer_to_checkpoint`: an ``optimizer.load_state_dict`` input."""
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith(prefix):
            index, key = name[len(prefix) :].split(".", 1)
            state.setdefault(int(index), {})[key] = value
    for name, value in meta["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU tensors safetensors can write: a tensor whose memory an earlier one already
    uses (the teacher's frozen blocks are the student's) is written as its own copy."""
    out, seen = {}, set()
    for key, value in tensors.items():
        value = value.detach().contiguous().cpu()
        storage = value.untyped_storage().data_ptr()
        if storage in seen:
            value = value.clone()
        seen.add(storage)
        out[key] = value
    return out


def _write_text(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        _fsync(path)
    except OSError:  # some filesystems cannot fsync directories
        pass
