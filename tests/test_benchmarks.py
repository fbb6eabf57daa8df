"""Smoke runs of benchmarks/components.py and benchmarks/data_loading.py in tiny settings."""

import importlib.util
import math
import sys

import pytest

from conftest import ROOT, TINY_VIT


def load_benchmark(name: str):
    """Import ``benchmarks/<name>.py`` as a module (benchmarks/ is not a package)."""
    key = f"mosic_benchmark_{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module


def test_components_times_and_flops(tmp_path):
    components = load_benchmark("components")
    kwargs = ",".join(f"{k}={v}" for k, v in TINY_VIT.items())
    out = tmp_path / "components.json"
    result = components.main(
        [
            "--backbone", "vit-tiny", "--backbone-kwargs", kwargs, "--frames", "4", "--size", "32", "--grid", "4",
            "--prototypes", "8", "--head-hidden", "32", "--projection-dim", "16", "--batch", "2", "--repeats", "3",
            "--tracker-kwargs", "model_resolution=64x96,iters=1", "--json", str(out),
        ]
    )  # fmt: skip
    assert out.is_file()
    times = result["times_s"]
    assert len(times) == 9 and all(seconds > 0 for seconds in times.values())
    # the parts, timed one by one, add up to about the step (loose, and on the fastest of the
    # rounds: other processes' bursts of load on a shared CPU hit single calls)
    fastest = {name: min(values) for name, values in result["all_times_s"].items()}
    assert sum(v for name, v in fastest.items() if name != "train_step") < 3 * fastest["train_step"]
    assert 0 < result["sinkhorn_percent_of_step"] < 100
    assert result["projection"]["total_steps"] == 432 and result["projection"]["unit"] == "CPU-hours"
    assert result["projection"]["hours"] > 0

    flops = result["flops"]
    assert flops["mosic_step"] > 0
    assert flops["reference_cached"] > flops["mosic_step"]
    assert flops["reference_with_tracker"] > flops["reference_cached"]
    assert 0 < flops["tracker_fraction"] < 1
    # the tracker is the whole difference between the two reference steps
    assert flops["reference_with_tracker"] - flops["reference_cached"] == flops["tracker"]
    # the counted components are the step's FLOPs (Sinkhorn, EMA, AdamW count none)
    assert math.isclose(sum(flops["components"].values()), flops["mosic_step"], rel_tol=0.05)
    assert flops["components"]["Sinkhorn (B*T*N x K, fp32)"] == 0


def test_data_loading_rates_and_workers_needed(tmp_path):
    data_loading = load_benchmark("data_loading")
    result = data_loading.main(
        [
            "--videos", "3", "--video-frames", "12", "--width", "96", "--height", "64", "--clip-frames", "4",
            "--stride", "2", "--size", "32", "--workers", "0", "1", "--repeats", "1", "--batch", "2",
            "--step-clips-per-s", "1000", "--dir", str(tmp_path),
        ]
    )  # fmt: skip
    assert result["videos"]["mp4_mib_per_video"] > 0 and result["videos"]["jpeg_kib_per_frame"] > 0
    readers = result["readers"]
    for reader in ("pyav", "frames"):
        assert all(rate > 0 for rate in readers[reader]["clips_per_s"].values()), reader
        assert set(readers[reader]["clips_per_s"]) == {0, 1}
    decord = readers["decord"]
    assert "error" in decord or all(rate > 0 for rate in decord["clips_per_s"].values())
    assert all(rate > 0 for rate in readers["prepared"]["clips_per_s"].values())  # mosic prepare, then no decoding
    preparation = result["preparation"]
    assert preparation["videos_prepared_now"] == 3 and preparation["frames_per_video"] == 6  # frames 0, 2, ..., 10
    assert preparation["stored_size"] == [51, 76] and preparation["mib_per_video"] > 0
    needed = result["targets"]["--step-clips-per-s 1000"]["workers_needed"]
    for reader in ("pyav", "frames", "prepared"):
        per_worker = readers[reader]["per_worker"][1]
        assert needed[reader] == math.ceil(1000 / per_worker) >= 1
    # the videos are reused when the settings match
    again = data_loading.main(
        [
            "--readers", "frames", "--videos", "3", "--video-frames", "12", "--width", "96", "--height", "64",
            "--clip-frames", "4", "--stride", "2", "--size", "32", "--workers", "0", "--repeats", "1",
            "--dir", str(tmp_path),
        ]
    )  # fmt: skip
    assert again["videos"] == result["videos"]



def test_memory_per_gpu_counts_state_exactly_and_measures_activations():
    memory = load_benchmark("memory_per_gpu")
    (row,) = memory.main(["--backbones", "vit-tiny", "--size", "64", "--worlds", "1", "2", "--per-gpu", "2"])
    from mosic.backbones.base import BACKBONES

    backbone = BACKBONES.create("vit-tiny", pretrained=False)
    backbone.set_trainable(2)
    trained = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
    assert row["trained_params_m"] * 1e6 == trained
    state = row["state_bytes"]
    assert state["AdamW moments"] == 2 * state["gradients"] == 2 * state["teacher weights (trained blocks + head)"]
    assert row["student_activation_mib_per_clip"] > 0
    one, two = row["per_world"][1], row["per_world"][2]
    assert one["state_gib_ddp"] == one["state_gib_zero1"] == two["state_gib_ddp"]
    assert two["state_gib_zero1"] * 2**30 == pytest.approx(one["state_gib_ddp"] * 2**30 - state["AdamW moments"] / 2)


def test_end_to_end_costs_whole_runs(tmp_path):
    """The end-to-end benchmark in a tiny setting: the shared per-frame decomposition is exact
    (track_clips' FLOPs = distinct frames x E + clips x Q), the run counts come from the
    planner, and the scaled instance runs all three pipelines (the CLI's track --for-run, fit)."""
    end_to_end = load_benchmark("end_to_end")
    result = end_to_end.main(
        [
            "--videos", "20", "--video-frames", "40", "--epochs", "2", "--clip-frames", "4", "--stride", "2",
            "--grid", "4", "--cache-grid", "5", "--old-cache-grid", "6", "--source-size", "48", "80",
            "--model-resolution", "64", "96", "--backbone", "vit-tiny", "--size", "32", "--cpu-videos", "2",
            "--cpu-epochs", "1", "--cpu-batch", "2", "--cpu-model-resolution", "64", "96", "--dir", str(tmp_path),
        ]
    )  # fmt: skip
    tracker = result["tracker"]
    check = tracker["shared_check"]
    assert check["measured"] == pytest.approx(check["predicted"], rel=1e-9)
    assert tracker["per_frame"] > 0 and all(q > 0 for q in tracker["query_part"].values())
    assert tracker["clip"][6] > tracker["clip"][5] > tracker["clip"][4] > tracker["clip"][1]
    assert tracker["authors_clip"] < tracker["clip"][4]  # no support grid
    counts = result["counts"]
    assert counts["all_starts"] == 17 and counts["all_frames"] == 20  # range(0, 34, 2); frames 0..38 step 2
    assert 1 <= counts["planned_starts_one_seed"] <= 2 <= counts["clips_per_video_per_run"]
    assert counts["planned_starts_one_seed"] <= counts["planned_starts_five_seeds"] <= counts["all_starts"]
    rows = result["table"]["gflop_per_video"]
    one, sweep = rows["one run"], rows["5 runs, one seed"]
    assert sweep[0] == pytest.approx(5 * one[0]) and sweep[2] < 5 * one[2]  # the cache is built once
    cpu = result["cpu"]
    for name in ("(a) authors", "(b) mosic, tracker in the step", "(c) mosic, cache for the run"):
        assert cpu[name][0] > 0
    assert 0 < cpu["data_cpu_s_per_clip_h264"] < 5 and 0 < cpu["data_cpu_s_per_clip_jpeg"] < 5
