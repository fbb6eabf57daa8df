"""The train state: what a checkpoint holds beside the config, and its save and restore.

Weights (``student.*``, ``teacher.*``), the optimizer's moments, the schedule, the step and
every RNG (torch, CUDA, Python, NumPy), so that a resumed run equals an uninterrupted one.
The folder format and its atomic writing are :mod:`mosic.checkpoint`'s.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import checkpoint
from .. import distributed as dist
from .student_teacher import StudentTeacher


@dataclass
class TrainState:
    """The mutable state of a run: ``model`` (student and teacher), ``optimizer`` and
    ``scheduler`` (None before :meth:`PostPretrainer.fit` builds them), ``step`` (steps
    taken) and ``total_steps`` (the schedule's length)."""

    model: StudentTeacher
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    step: int = 0
    total_steps: int | None = None

    def tensors(self) -> dict[str, torch.Tensor]:
        return self.model.state_tensors()

    def save(self, path: str | Path, config_yaml: str) -> Path:
        """Write weights, optimizer, schedule, RNG and config to the folder ``path`` atomically."""
        tensors = self.tensors()
        state: dict[str, Any] = {"step": self.step, "total_steps": self.total_steps}
        if self.optimizer is not None:
            opt_tensors, opt_meta = checkpoint.optimizer_to_checkpoint(self.optimizer)
            tensors.update(opt_tensors)
            state["optimizer"] = opt_meta
            state["scheduler"] = self.scheduler.state_dict()
        rng_tensors, state["rng"] = rng_state()
        tensors.update(rng_tensors)
        return checkpoint.save_checkpoint(path, tensors, state, config_yaml)

    def save_checkpoint(self, run_dir: Path, config_yaml: str, keep: int) -> None:
        """Rank 0 writes ``run_dir/checkpoints/step_N`` and moves ``latest``; every process
        must call this (a sharded optimizer first gathers its moments on rank 0)."""
        if hasattr(self.optimizer, "consolidate_state_dict"):  # ZeroRedundancyOptimizer
            self.optimizer.consolidate_state_dict(to=0)
        if not dist.is_main_process():
            return
        folder = run_dir / "checkpoints"
        name = f"step_{self.step:07d}"
        self.save(folder / name, config_yaml)
        checkpoint.update_latest(folder, name, keep)

    def restore(self, path: Path, with_optimizer: bool) -> None:
        """Load the weights strictly (and, ``with_optimizer``, the optimizer, schedule and
        RNG states) from the checkpoint folder ``path``."""
        tensors, state, _ = checkpoint.load_checkpoint(path)
        checkpoint.load_module_state(self.model.student, tensors, "student.", path)
        if self.model.has_ema:
            checkpoint.load_module_state(self.model.teacher, tensors, "teacher.", path)
        self.step = int(state["step"])
        if with_optimizer and self.optimizer is not None and "optimizer" in state:
            self.optimizer.load_state_dict(checkpoint.optimizer_from_checkpoint(tensors, state["optimizer"]))
            self.scheduler.load_state_dict(state["scheduler"])
            set_rng_state(tensors, state["rng"])


def find_resume_checkpoint(resume: bool | str | Path, run_dir: Path | None) -> Path | None:
    """The checkpoint ``resume`` names: a path, or with True the newest in ``run_dir``
    (None when there is none yet)."""
    if not isinstance(resume, bool):
        return checkpoint.resolve_checkpoint(resume)
    if run_dir is None:
        raise ValueError("resume=True needs out_dir (or pass the checkpoint path as resume=...)")
    return checkpoint.latest_checkpoint(run_dir)


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """Every RNG's state: tensors (torch, each CUDA device) and JSON (Python, NumPy)."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()
    meta = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    return tensors, meta


def set_rng_state(tensors: dict, meta: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = meta["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
