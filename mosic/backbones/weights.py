"""Loading local weight files safely and strictly.

Weight files are untrusted input. ``.safetensors`` files hold only tensors and are read as
such; ``.pth``/``.pt``/``.bin`` pickles are read only with ``torch.load(weights_only=True)``,
which unpickles tensors and plain containers and nothing else. A pickle that would need
arbitrary code (a ``__reduce__`` calling a function, a custom class) is refused with a
:class:`UnsafeWeightsError` that names the file and says how to convert it; mosic never
retries with ``weights_only=False``.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import torch
from torch import nn

__all__ = ["UnsafeWeightsError", "load_state_dict_file", "load_state_dict_strict", "read_state_dict"]

_WRAPPER_KEYS = ("state_dict", "model", "module", "teacher", "student")

#: how to turn a trusted pickle into a file mosic reads (ends every refusal)
CONVERT_HINT = (
    "If you trust the file, convert it once in a trusted environment to safetensors "
    "(from safetensors.torch import save_file; save_file({k: v.contiguous() for k, v in state_dict.items()}, "
    "'weights.safetensors')) or to a plain state dict of tensors (torch.save(model.state_dict(), 'weights.pth')), "
    "and pass that file."
)


class UnsafeWeightsError(ValueError):
    """A weights file that cannot be read without running arbitrary code (or at all); the message
    names the file, the reason and how to convert it."""


def _looks_like_safetensors(path: Path) -> bool:
    """safetensors layout: an 8-byte little-endian header length, then a JSON header ``{...``."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        size = path.stat().st_size
    except OSError:
        return False
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return 8 + length <= size


def _refused_global(exc: BaseException) -> str | None:
    """The Python object a refused pickle asked for (``posix.system``), from torch.load's error."""
    match = re.search(r"GLOBAL\s+([\w.]+)", str(exc))
    return match.group(1) if match else None


def _torch_reason(exc: BaseException) -> str:
    """The informative line of torch.load's error, without its advice to load unsafely."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if line.startswith("Unsupported") or "WeightsUnpickler error: Unsupported" in line:
            return line.split("WeightsUnpickler error: ")[-1][:200]
    return lines[0][:200] if lines else type(exc).__name__


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # SafetensorError: bad header, truncated file
        raise UnsafeWeightsError(
            f"cannot read the safetensors file {path}: {type(exc).__name__}: {exc}. The file is corrupt, "
            "truncated or not a safetensors file; download or export it again."
        ) from exc


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a ``.safetensors`` file or a ``.pth``/``.pt``/``.bin`` file.

    Pickle files are read with ``torch.load(weights_only=True)``: a file that needs
    arbitrary code to unpickle is refused (:class:`UnsafeWeightsError`, a ``ValueError``).
    A safetensors file is recognised by its content whatever its suffix. Common wrappers
    (``{"model": ...}``, ``{"state_dict": ...}``) and DDP's ``module.`` prefix are removed.
    """
    if not isinstance(path, (str, Path)) and not hasattr(path, "__fspath__"):
        raise TypeError(f"read_state_dict: path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        obj: object = _read_safetensors(path)
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle.UnpicklingError and friends
            name = _refused_global(exc)
            if name is not None:
                raise UnsafeWeightsError(
                    f"refusing to load {path}: it is a pickle that needs arbitrary code to unpickle (it references "
                    f"the Python object {name}, which is not a tensor or a plain container). "
                    "mosic reads pickled weights only with torch.load(weights_only=True) (tensors and plain "
                    "containers) and never unpickles arbitrary objects: loading such a file could run any code. "
                    + CONVERT_HINT
                ) from exc
            raise UnsafeWeightsError(
                f"cannot read {path} with torch.load(weights_only=True): {type(exc).__name__}: {_torch_reason(exc)}. "
                "The file is corrupt, truncated or not a weights file (mosic reads .safetensors and "
                ".pth/.pt/.bin state dicts). " + CONVERT_HINT
            ) from exc
    while isinstance(obj, dict) and len(obj) == 1 and next(iter(obj)) in _WRAPPER_KEYS:
        obj = next(iter(obj.values()))
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise ValueError(
            f"{path} does not contain a state dict (name -> tensor), got {_describe_object(obj)}. " + CONVERT_HINT
        )
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def _describe_object(obj: object) -> str:
    if isinstance(obj, dict):
        kinds = sorted({f"{type(k).__name__} -> {type(v).__name__}" for k, v in list(obj.items())[:50]})
        return f"a dict of {', '.join(kinds[:5]) or 'nothing'}"
    return f"a {type(obj).__name__}"


def load_state_dict_strict(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, hint: str | None = None
) -> None:
    """``model.load_state_dict(state, strict=True)`` with an error that lists the problems.

    ``hint`` ends the error message (by default: check the architecture and the key format).
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if own[k].shape != state[k].shape
    )
    if missing or unexpected or mismatched:
        parts = [f"weights from {source} do not match {type(model).__name__}:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if items:
                shown = ", ".join(items[:10]) + (f", ... ({len(items)} in all)" if len(items) > 10 else "")
                parts.append(f"  {title} keys: {shown}")
        parts.append(
            hint
            or f"Check that the architecture matches the checkpoint and that the file is in {type(model).__name__}'s "
            "key format (Backbone.load_weights detects and converts the formats of mosic.backbones.formats)."
        )
        raise ValueError("\n".join(parts))
    model.load_state_dict(state, strict=True)


def load_state_dict_file(model: nn.Module, path: str | Path) -> None:
    """Strictly load a local weights file into ``model``."""
    load_state_dict_strict(model, read_state_dict(path), str(path))
