"""Untrusted files: a pickle whose ``__reduce__`` would create a marker file (through ``os.system``)
if anything unpickled it. Tests feed it to a loader entry point and check that the marker never
appears (the ``marker`` fixture of tests/conftest.py) and that the error names the file, says
arbitrary pickle is refused and says how to convert the file."""

import os
import pickle
from pathlib import Path

import torch


REFUSED = r"(?s)refusing to load .*arbitrary code.*safetensors.*plain state dict"


class Payload:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def evil_file(path: Path, marker: Path, kind: str = "torch") -> Path:
    """A weights-looking file holding the payload: torch.save's zip format or a plain pickle."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "torch":
        torch.save({"patch_embed.proj.weight": torch.zeros(1), "state": Payload(marker)}, path)
    else:  # a plain pickle (its tensors would be refused first, as torch.storage._load_from_bytes)
        with open(path, "wb") as f:
            pickle.dump({"patch_embed.proj.weight": Payload(marker)}, f, protocol=2)
    return path
