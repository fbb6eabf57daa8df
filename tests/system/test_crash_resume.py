"""Crash safety with real processes: ``mosic fit`` is SIGKILLed during training and at
three points inside a checkpoint write, then resumed with ``mosic fit --resume``.

After every kill the previous checkpoint loads, the killed writer's temporary folder is
never taken for a checkpoint (and is gone after the resumed run), and the resumed run
ends with bit-for-bit the weights, EMA teacher, optimizer moments, schedule and step of
an uninterrupted run of the same config.

All runs start together (the killed ones and the reference) and each resume starts as
soon as its run is killed: the file costs about two process start-ups of wall time
(9 processes, ~65 s of CPU).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, tiny_config
from mosic import PostPretrainer
from mosic.checkpoint import resolve_checkpoint

VIDEOS = "synthetic:num_videos=8,num_frames=12,size=32,seed=0"
STEPS = 8
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1"}
TIMEOUT = 300

#: ``mosic fit`` with one fault armed by CRASH_FAULT; the test process sends the SIGKILL
DRIVER = r'''
import os, sys, time
from pathlib import Path

fault = os.environ.get("CRASH_FAULT", "")
ready = Path(os.environ["CRASH_READY"])


def hang():
    """Signal the test that the process is at the fault, and wait for its SIGKILL."""
    ready.touch()
    time.sleep(3600)


if fault:
    import mosic.checkpoint as ck
    import mosic.train.trainer as tr

    kind, _, arg = fault.partition(":")
    tmp = f".step_{int(arg):07d}.tmp-" if kind != "delay" else None
    if kind == "delay":  # slow steps down so the test can kill between checkpoints
        train_step = tr.PostPretrainer.train_step

        def slow_step(self, batch):
            time.sleep(float(arg))
            return train_step(self, batch)

        tr.PostPretrainer.train_step = slow_step
    elif kind == "tensors":  # half of the tensors file is on disk
        save_file = ck.save_file

        def torn_save(tensors, filename, *args, **kwargs):
            save_file(tensors, filename, *args, **kwargs)
            if tmp in filename:
                with open(filename, "r+b") as f:
                    f.truncate(os.path.getsize(filename) // 2)
                    os.fsync(f.fileno())
                hang()

        ck.save_file = torn_save
    elif kind == "fsync":  # every file written, not yet fsynced nor renamed into place
        fsync = ck._fsync

        def slow_fsync(path):
            if tmp in str(path):
                hang()
            fsync(path)

        ck._fsync = slow_fsync
    elif kind == "latest":  # the checkpoint renamed into place, `latest` not yet updated
        update_latest = ck.update_latest
        name = f"step_{int(arg):07d}"

        def late_update(folder, new, keep):
            if new == name:
                hang()
            update_latest(folder, new, keep)

        ck.update_latest = tr.update_latest = late_update
    else:
        raise SystemExit(f"unknown CRASH_FAULT {fault!r}")

from mosic.cli import main

sys.exit(main())
'''

#: (fault, what it kills, the checkpoint `latest` names after the kill)
SCENARIOS = {
    "training": ("delay:0.4", "between checkpoints, once metrics.jsonl shows step 3", None),
    "torn-tensors": ("tensors:4", "with half of step 4's tensors file written", "step_0000002"),
    "before-rename": ("fsync:4", "with all of step 4's files written, before the rename", "step_0000002"),
    "before-latest": ("latest:4", "after step 4 is renamed into place, before `latest` moves", "step_0000002"),
}


def fit_command(config, run, *extra, driver=None):
    head = [sys.executable, str(driver)] if driver else [sys.executable, "-m", "mosic"]
    return [*head, "fit", "--config", str(config), "--videos", VIDEOS, f"train.out_dir={run}", *extra]


def metrics_step(run: Path) -> int:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(line)["step"] for line in lines if line.endswith("}")]
    return max(steps, default=0)


def hidden(run: Path) -> list[str]:
    """Temporary entries (.NAME.tmp-PID and the like) in the run's checkpoint folder."""
    return sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("."))


def final_checkpoint(run: Path):
    folder = run / "checkpoints" / f"step_{STEPS:07d}"
    return load_file(str(folder / "tensors.safetensors")), json.loads((folder / "state.json").read_text())


@pytest.fixture(scope="module")
def crashed(tmp_path_factory):
    """Kill one run per scenario, keep a copy of each run folder as the kill left it,
    resume them all, and return {scenario: (run, snapshot, resume result)} and the
    uninterrupted reference run."""
    tmp = tmp_path_factory.mktemp("crash")
    config = tmp / "tiny.yaml"
    tiny_config(**{"train.max_steps": STEPS, "train.checkpoint_every": 2, "train.device": "cpu"}).save(config)
    driver = tmp / "driver.py"
    driver.write_text(DRIVER)

    def start(cmd, **env):
        return subprocess.Popen(cmd, cwd=ROOT, env={**ENV, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    reference = start(fit_command(config, tmp / "reference"))
    runs = {}
    for name, (fault, _, _) in SCENARIOS.items():
        run, ready = tmp / name, tmp / f"{name}.ready"
        runs[name] = (run, ready, start(fit_command(config, run, driver=driver), CRASH_FAULT=fault, CRASH_READY=str(ready)))

    def at_fault(name, run, ready):
        return metrics_step(run) >= 3 if name == "training" else ready.exists()

    # kill each run at its fault, keep a copy of the run folder as the kill left it, and
    # resume it at once with the plain CLI (while the others still run)
    resumed, deadline = {}, time.monotonic() + TIMEOUT
    while len(resumed) < len(runs):
        for name, (run, ready, process) in runs.items():
            if name in resumed:
                continue
            if process.poll() is not None:
                out, err = process.communicate()
                raise AssertionError(f"{name}: the run ended (rc {process.returncode}) before its fault:\n{err[-3000:]}")
            if at_fault(name, run, ready):
                process.send_signal(signal.SIGKILL)
                process.communicate(timeout=60)
                assert process.returncode == -signal.SIGKILL
                snapshot = tmp / f"{name}-as-killed"
                shutil.copytree(run, snapshot, symlinks=True)
                resumed[name] = (snapshot, start(fit_command(config, run, "--resume")))
        if time.monotonic() > deadline:
            for _, _, process in runs.values():
                process.kill()
            raise AssertionError(f"timed out waiting for the faults of {sorted(set(runs) - set(resumed))}")
        time.sleep(0.05)
    results = {}
    for name, (snapshot, process) in resumed.items():
        out, err = process.communicate(timeout=TIMEOUT)
        results[name] = (runs[name][0], snapshot, process.returncode, out, err)
    out, err = reference.communicate(timeout=TIMEOUT)
    assert reference.returncode == 0, err[-3000:]
    return results, tmp / "reference"


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_sigkilled_run_resumes_to_the_uninterrupted_parameters(crashed, scenario):
    results, reference = crashed
    run, snapshot, returncode, out, err = results[scenario]
    _, where, expected_latest = SCENARIOS[scenario]

    # as the kill left it: `latest` names a complete checkpoint and it loads
    latest = (snapshot / "checkpoints" / "latest").read_text().strip()
    if expected_latest is not None:
        assert latest == expected_latest, where
    else:  # killed at step >= 3, before the run could finish
        assert latest in {"step_0000002", "step_0000004", "step_0000006"}, latest
    loaded = PostPretrainer.load(snapshot)
    assert loaded.step == int(latest.split("_")[1])
    assert resolve_checkpoint(snapshot) == snapshot / "checkpoints" / latest
    if scenario in ("torn-tensors", "before-rename"):
        # the kill landed inside the write: its temporary folder is there, and is no checkpoint
        leftovers = hidden(snapshot)
        assert len(leftovers) == 1 and leftovers[0].startswith(".step_0000004.tmp-"), leftovers
        assert not (snapshot / "checkpoints" / "step_0000004").exists()
        tensors_file = snapshot / "checkpoints" / leftovers[0] / "tensors.safetensors"
        if scenario == "torn-tensors":
            assert tensors_file.stat().st_size < (snapshot / "checkpoints" / latest / "tensors.safetensors").stat().st_size
    if scenario == "before-latest":  # step 4 is complete, but `latest` was never moved to it
        assert (snapshot / "checkpoints" / "step_0000004" / "state.json").is_file()

    # `mosic fit --resume` finishes, removes the killed writer's leftovers, and reaches the
    # uninterrupted run's tensors and state bit for bit
    assert returncode == 0, f"{out[-2000:]}\n{err[-3000:]}"
    assert f"done: {STEPS} steps" in out
    assert hidden(run) == []
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step_{STEPS:07d}"
    expected_tensors, expected_state = final_checkpoint(reference)
    tensors, state = final_checkpoint(run)
    assert tensors.keys() == expected_tensors.keys()
    for key, value in expected_tensors.items():  # student, EMA teacher, optimizer moments
        if not key.startswith("rng."):
            assert torch.equal(tensors[key], value), key
    assert {k: v for k, v in state.items() if k != "rng"} == {k: v for k, v in expected_state.items() if k != "rng"}


def test_sigkilled_run_resumes_to_the_uninterrupted_rng_state(crashed):
    results, reference = crashed
    expected_tensors, expected_state = final_checkpoint(reference)
    for run, *_ in results.values():
        tensors, state = final_checkpoint(run)
        assert torch.equal(tensors["rng.torch"], expected_tensors["rng.torch"])
        assert state["rng"] == expected_state["rng"]
