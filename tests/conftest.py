import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download
torch.set_num_threads(2)

#: a ViT small enough for CPU tests: 32 px images, 4x4 patches of 8 px
TINY_VIT = {"patch_size": 8, "img_size": 32, "depth": 2, "embed_dim": 48, "num_heads": 2}


def tiny_config(**overrides):
    """A RunConfig dict for fast CPU training runs on synthetic videos."""
    from mosic.config import RunConfig

    base = {
        "backbone": {"name": "vit-tiny", "pretrained": False, "train_blocks": 1, "kwargs": dict(TINY_VIT)},
        "tracker": {"name": "oracle", "grid_size": 4},
        "objective": {"name": "mosic", "head_hidden_dims": [32], "projection_dim": 16, "num_prototypes": 8},
        "data": {"num_frames": 4, "frame_stride": 2, "size": 32, "global_batch_size": 4, "num_workers": 0},
        "optim": {"backbone_lr": 1e-3, "head_lr": 1e-3},
        "train": {"max_steps": 4, "log_every": 1, "checkpoint_every": 2, "progress": False, "mask_ratio": 0.25},
    }
    return RunConfig.from_dict(base).with_overrides(overrides)


@pytest.fixture
def synthetic():
    from mosic.data.synthetic import SyntheticVideos

    return SyntheticVideos(num_videos=8, num_frames=12, size=32, seed=0)


@pytest.fixture
def marker(tmp_path):
    """Where a malicious pickle (tests/helpers/untrusted.py) would create a file; the test fails if it does."""
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "a malicious pickle was executed"


@pytest.fixture
def single_threaded():
    """torch and faiss each bring an OpenMP runtime; on a busy 2-core machine their spinning
    worker threads make every tiny K-means take 0.1-5 s. One thread each: milliseconds."""
    import faiss

    threads = faiss.omp_get_max_threads(), torch.get_num_threads()
    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads[0])
    torch.set_num_threads(threads[1])


ROOT = Path(__file__).resolve().parents[1]


def run_example(script: str, *args: str, timeout: int = 300) -> str:
    """Run ``examples/<script> --smoke <args>`` as a user does (a subprocess, offline); its stdout."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), "--smoke", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, f"{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def load_example(name: str):
    """Import ``examples/<name>.py`` as a module (its registrations run)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
