"""Atomic checkpoints: safetensors tensors + JSON state + the run's config.

A checkpoint is a folder::

    step_000500/
        tensors.safetensors   model weights, optimizer moments, RNG states
        state.json            step, epoch, optimizer hyper-parameters, RNG, version
        config.yaml           the RunConfig that produced it

It is written into a temporary folder (``.step_000500.tmp-PID``), every file fsynced,
then renamed into place, so a crash (even SIGKILL or a power cut) leaves either the old
checkpoint or the new one, never a torn one. ``latest`` (a text file naming the newest
checkpoint folder) is replaced atomically. What a killed writer leaves behind (its
``.*.tmp-PID`` folder, or the ``.*.old-PID`` copy of a checkpoint it was replacing) is
never taken for a checkpoint and is removed (or put back) by the next save once that
process is gone. A full disk raises :class:`CheckpointWriteError` (an ``OSError`` with
the errno) saying where and how much space is needed; nothing partial is left behind.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1
TENSORS = "tensors.safetensors"
STATE = "state.json"
CONFIG = "config.yaml"
LATEST = "latest"

#: errnos that mean "the disk (or the quota) is full"
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
#: ``.NAME.KIND-PID``: a writer's temporary folder or file, the checkpoint it is replacing,
#: or one being deleted
_PRIVATE = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old|del)-(?P<pid>\d+)$")


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, damaged or does not fit the model."""


class CheckpointWriteError(OSError, CheckpointError):
    """A checkpoint could not be written (disk full, quota, I/O error). ``errno`` is the
    cause's; the message says where and what to do. Nothing partial was left behind and
    the previous checkpoints and ``latest`` are untouched."""


class CheckpointWarning(UserWarning):
    """``latest`` names a checkpoint that is gone; an older complete one is used."""


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], state: dict[str, Any], config_yaml: str) -> Path:
    """Write a checkpoint folder atomically (replacing an existing one at ``path``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent)
    tmp = _private(path, "tmp")
    old = _private(path, "old")
    tensors = _unshared(tensors)
    try:
        _remove(tmp)
        tmp.mkdir()
        try:
            save_file(tensors, str(tmp / TENSORS))
        except SafetensorError as exc:  # safetensors reports I/O errors as "... (os error 28)"
            code = re.search(r"os error (\d+)", str(exc))
            if code is None:
                raise
            raise OSError(int(code[1]), os.strerror(int(code[1])), str(tmp / TENSORS)) from exc
        _write_text(tmp / STATE, json.dumps({"format_version": FORMAT_VERSION, **state}, indent=1))
        _write_text(tmp / CONFIG, config_yaml)
        _fsync(tmp / TENSORS)
        _fsync_dir(tmp)
        if path.exists():
            os.replace(path, old)
            os.replace(tmp, path)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        _remove(tmp)
        if old.exists() and not path.exists():
            os.replace(old, path)  # failed between the two renames: the old checkpoint stays
        if isinstance(exc, OSError) and not isinstance(exc, CheckpointWriteError):
            raise _write_error(exc, path, tensors) from exc
        raise
    _remove(old)
    return path


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """(tensors, state, config_yaml) of a checkpoint folder (or a run folder's latest)."""
    path = resolve_checkpoint(path)
    missing = [name for name in (TENSORS, STATE, CONFIG) if not (path / name).is_file()]
    if missing:
        raise CheckpointError(f"{path} is not a complete mosic checkpoint: missing {', '.join(missing)}; {_advice(path)}")
    try:
        state = json.loads((path / STATE).read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path / STATE} is damaged (not JSON: {exc}); {_advice(path)}") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        version = state.get("format_version") if isinstance(state, dict) else None
        raise CheckpointError(
            f"{path / STATE}: unsupported checkpoint format {version!r} (this mosic reads format {FORMAT_VERSION}); "
            "load it with the mosic version that wrote it"
        )
    try:
        tensors = load_file(str(path / TENSORS))
    except SafetensorError as exc:
        raise CheckpointError(f"{path / TENSORS} is damaged ({exc}); {_advice(path)}") from None
    return tensors, state, (path / CONFIG).read_text()


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or the one a run folder's ``latest`` names.

    When ``latest`` names a folder that is gone or incomplete, or there is no ``latest``
    but there are checkpoint folders, the newest complete checkpoint is used with a
    :class:`CheckpointWarning`.
    """
    path = Path(path)
    if (path / STATE).is_file():
        return path
    if (path / TENSORS).exists():  # a checkpoint folder (a run folder holds config.yaml too)
        raise CheckpointError(f"{path} is not a complete mosic checkpoint: missing {STATE}; {_advice(path)}")
    folders = [f for f in (path / "checkpoints", path) if f.is_dir()]
    for folder in folders:
        latest = folder / LATEST
        if latest.is_file():
            name = latest.read_text().strip()
            if name and _is_complete(folder / name):
                return folder / name
            fallback = _newest_complete(folder)
            if fallback is None:
                raise CheckpointError(
                    f"{latest} names {name!r}, which is missing or incomplete, and {folder} holds no other complete "
                    "checkpoint: start the run again without resuming (or from another checkpoint folder)"
                )
            warnings.warn(
                f"{latest} names {name!r}, which is missing or incomplete; using the newest complete checkpoint "
                f"{fallback}",
                CheckpointWarning,
                stacklevel=2,
            )
            return fallback
    for folder in folders:
        newest = _newest_complete(folder)
        if newest is not None:
            message = f"{folder} has no {LATEST} file; using the newest complete checkpoint {newest}"
            warnings.warn(message, CheckpointWarning, stacklevel=2)
            return newest
    raise CheckpointError(f"no mosic checkpoint at {path} (expected {STATE} or checkpoints/{LATEST})")


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint ``resume=True`` continues from: :func:`resolve_checkpoint` of the run
    folder, or None when it holds no checkpoint yet (a fresh run, or one killed before
    its first checkpoint was complete)."""
    run_dir = Path(run_dir)
    folders = [run_dir / "checkpoints", run_dir]
    if not any((f / LATEST).is_file() or _newest_complete(f) is not None for f in folders if f.is_dir()):
        return None
    return resolve_checkpoint(run_dir)


def update_latest(checkpoints_dir: Path, name: str, keep: int) -> None:
    """Point ``latest`` at ``name`` atomically and delete all but the ``keep`` newest."""
    checkpoints_dir = Path(checkpoints_dir)
    tmp = _private(checkpoints_dir / LATEST, "tmp")
    try:
        _write_text(tmp, name + "\n")
        os.replace(tmp, checkpoints_dir / LATEST)
    except OSError as exc:
        _remove(tmp)
        raise _write_error(exc, checkpoints_dir / LATEST, {}) from exc
    _fsync_dir(checkpoints_dir)
    steps = sorted(p for p in checkpoints_dir.glob("step_*") if p.is_dir())
    for old in steps[:-keep]:
        if old.name != name:
            # renamed first, so a kill in the middle of deleting leaves no half checkpoint in view
            doomed = _private(old, "del")
            try:
                os.replace(old, doomed)
            except OSError:
                continue
            _remove(doomed)


def remove_stale(folder: str | Path) -> list[Path]:
    """Delete what killed writers left in ``folder``: ``.NAME.tmp-PID`` folders and files
    and ``.NAME.del-PID`` folders of processes that are no longer alive. A ``.NAME.old-PID``
    checkpoint (killed between the two renames that replace a checkpoint) is put back as
    ``NAME`` when ``NAME`` is missing, else deleted. Returns the removed paths.

    Liveness is ``kill(pid, 0)`` on this machine: only one process (rank 0) writes a run
    folder's checkpoints, so a leftover of another machine's writer is a dead one's.
    """
    folder = Path(folder)
    removed = []
    try:
        entries = list(folder.iterdir())
    except FileNotFoundError:
        return removed
    for entry in entries:
        match = _PRIVATE.match(entry.name)
        if match is None or _alive(int(match["pid"])):
            continue
        target = folder / match["name"]
        if match["kind"] == "old" and not target.exists() and _is_complete(entry):
            os.replace(entry, target)
            continue
        _remove(entry)
        removed.append(entry)
    return removed


def load_module_state(module: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str, path: str | Path) -> None:
    """Strictly load the ``prefix``-ed tensors of the checkpoint at ``path`` into ``module``;
    missing, unexpected or wrongly shaped tensors raise a :class:`CheckpointError` that
    lists them, names the file and says what to do."""
    from .backbones.weights import load_state_dict_strict

    state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    hint = (
        "The checkpoint does not fit this model: rebuild the trainer from the checkpoint's own config.yaml "
        "(PostPretrainer.load does), pass the same backbone/tracker/objective instances it was trained with, "
        "or resume into a new train.out_dir."
    )
    try:
        load_state_dict_strict(module, state, f"{Path(path) / TENSORS} ({prefix.rstrip('.')})", hint=hint)
    except CheckpointError:
        raise
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None


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


def _private(path: Path, kind: str) -> Path:
    return path.parent / f".{path.name}.{kind}-{os.getpid()}"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def _alive(pid: int) -> bool:
    """Whether another process ``pid`` runs here (our own pid's leftovers are stale: this
    process writes one checkpoint at a time)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return False
    return True


def _is_complete(path: Path) -> bool:
    return all((path / name).is_file() for name in (TENSORS, STATE, CONFIG))


def _newest_complete(folder: Path) -> Path | None:
    for candidate in sorted((p for p in folder.glob("step_*") if p.is_dir()), reverse=True):
        if _is_complete(candidate):
            return candidate
    return None


def _advice(path: Path) -> str:
    """What to do about the damaged checkpoint ``path``."""
    others = [p for p in sorted(path.parent.glob("step_*"), reverse=True) if p != path and _is_complete(p)]
    if others:
        return (
            f"delete the folder {path} to resume from the newest other checkpoint ({others[0].name}), "
            "or load another checkpoint folder"
        )
    return f"delete the folder {path} and start the run again (no other complete checkpoint is next to it)"


def _write_error(exc: OSError, path: Path, tensors: dict[str, torch.Tensor]) -> CheckpointWriteError:
    folder = path.parent
    what = f"checkpoint {path.name}" if path.name != LATEST else f"the {LATEST} pointer"
    untouched = "nothing partial was left behind and the previous checkpoints and latest are untouched"
    if exc.errno in DISK_FULL:
        need = sum(t.numel() * t.element_size() for t in tensors.values())
        try:
            free = f"{_size(shutil.disk_usage(folder).free)} free"
        except OSError:
            free = "free space unknown"
        needs = f"needs about {_size(need)}, " if need else ""
        message = (
            f"disk full ({os.strerror(exc.errno)}) while writing {what} into {folder} ({needs}{free}); "
            f"{untouched}. Free space there, lower train.keep_checkpoints, or point train.out_dir at a larger disk, "
            "then resume (--resume / resume=True)"
        )
    else:
        message = (
            f"could not write {what} into {folder}: {exc.strerror or exc}"
            f"{f' ({exc.filename})' if exc.filename else ''}; {untouched}"
        )
    return CheckpointWriteError(exc.errno or errno.EIO, message)


def _size(nbytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} TiB"
