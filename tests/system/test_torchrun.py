"""`mosic fit` under torchrun, as users launch it: one machine with 2 processes, and two
"machines" (two torchrun launchers with --nnodes 2 on localhost) joined by rendezvous."""

import json
import os
import socket
import subprocess
import sys

import torch
from safetensors import safe_open

from conftest import tiny_config

VIDEOS = "synthetic:num_videos=8,num_frames=12,size=32,seed=0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp_path, name):
    config = tiny_config(**{"train.max_steps": 2, "train.out_dir": str(tmp_path / name), "train.device": "cpu"})
    path = tmp_path / f"{name}.yaml"
    config.save(path)
    return path


def launcher(*flags: str, config) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *flags, "-m", "mosic", "fit", "--config", str(config), "--videos", VIDEOS]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def read_run(run):
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]  # rank 0 logs once per step, not once per process
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_0000002"
    return [m["loss"] for m in metrics]


def single_process_losses(tmp_path):
    from mosic import PostPretrainer
    from mosic.data.video_files import open_videos

    trainer = PostPretrainer(config=tiny_config(**{"train.max_steps": 2}))
    trainer.fit(open_videos(VIDEOS))
    return [r["loss"] for r in trainer.history]


def test_torchrun_two_processes_on_one_machine(tmp_path):
    config = write_config(tmp_path, "one-node")
    cmd = launcher("--standalone", "--nproc-per-node", "2", config=config)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("done: 2 steps") == 1
    losses = read_run(tmp_path / "one-node")
    assert torch.allclose(torch.tensor(losses), torch.tensor(single_process_losses(tmp_path)), rtol=1e-4)


def test_torchrun_two_nodes_by_rendezvous(tmp_path):
    config = write_config(tmp_path, "two-nodes")
    port = free_port()
    common = ["--nnodes", "2", "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port)]
    nodes = [
        subprocess.Popen(
            launcher(*common, "--node-rank", str(rank), config=config),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=300) for node in nodes]
    for node, (_, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-3000:]
    assert outputs[0][0].count("done: 2 steps") == 1 and "done" not in outputs[1][0]
    losses = read_run(tmp_path / "two-nodes")
    assert torch.allclose(torch.tensor(losses), torch.tensor(single_process_losses(tmp_path)), rtol=1e-4)


def test_torchrun_tracks_a_cache_in_parallel_like_one_process(tmp_path):
    from mosic.cli import main

    args = ["--tracker", "oracle", "--grid", "4", "--device", "cpu", "--no-progress", "data.num_frames=4", "data.frame_stride=2"]
    assert main(["track", VIDEOS, "--out", str(tmp_path / "one"), *args]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "mosic"]
    result = subprocess.run(
        [*cmd, "track", VIDEOS, "--out", str(tmp_path / "two"), *args], capture_output=True, text=True, timeout=300, env=ENV
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("tracked 8 of 8 videos") == 1
    one, two = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("one", "two"))
    assert two["complete"] and not list((tmp_path / "two").glob("manifest.part-*"))
    # the same videos, fingerprints, starts and tracks, in video order (file hashes differ:
    # safetensors writes its metadata dict in a per-process hash order)
    strip = lambda entries: [{k: v for k, v in e.items() if k != "sha256"} for e in entries]  # noqa: E731
    assert strip(two["videos"]) == strip(one["videos"])
    for entry in one["videos"]:
        with safe_open(tmp_path / "one" / entry["file"], "pt") as a, safe_open(tmp_path / "two" / entry["file"], "pt") as b:
            assert a.metadata() == b.metadata() and a.keys() == b.keys()
            for key in a.keys():
                assert torch.equal(a.get_tensor(key), b.get_tensor(key)), (entry["name"], key)


def test_shutdown_destroys_the_process_group_and_is_a_no_op_without_one(tmp_path):
    import torch.distributed as tdist

    from mosic import distributed

    distributed.shutdown()  # nothing to tear down
    tdist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    assert distributed.is_distributed()
    distributed.shutdown()  # the CLI's exit path: barrier, then destroy (gloo must not outlive the run)
    assert not distributed.is_distributed()
    distributed.shutdown()
