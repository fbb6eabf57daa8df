"""Scale features equal the plain single-process step: gradient accumulation, DDP with
2 and 4 gloo processes, the sharded optimizer (ZeRO-1), resume on another number of
processes, and torch.compile."""

import os

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from conftest import tiny_config
from mosic import PostPretrainer
from mosic.config import ConfigError
from mosic.data.clips import ClipDataset, collate_clips
from mosic.data.synthetic import SyntheticVideos


def make_trainer(**overrides):
    return PostPretrainer(config=tiny_config(**overrides))


def one_batch(n=4):
    source = SyntheticVideos(num_videos=8, num_frames=12, size=32, seed=0)
    ds = ClipDataset(source, num_frames=4, frame_stride=2, size=32, seed=0)
    return collate_clips([ds[(0, i)] for i in range(n)])


def first_step_gradients(**overrides):
    trainer = make_trainer(**overrides)
    trainer._prepare_optimizer(4)
    metrics = trainer.train_step(one_batch())
    grads = {n: p.grad.clone() for n, p in trainer.learner.named_parameters() if p.requires_grad}
    return {k: float(v) for k, v in metrics.items()}, grads


@pytest.mark.parametrize(
    "overrides",
    [
        {"train.mask_ratio": 0.25},  # token masks are sliced with the micro-batches
        {  # the student's view too
            "objective.name": "mosic + 0.5 correspondence",
            "objective.kwargs": {"correspondence": {"long_term_gap": 2}},
            "train.mask_ratio": 0.0,
        },
    ],
    ids=["mosic-masked", "mosic+correspondence"],
)
@pytest.mark.parametrize("steps", [2, 3, 4])
def test_accumulation_gives_the_whole_batch_gradient(overrides, steps):
    metrics, grads = first_step_gradients(**overrides)
    metrics_k, grads_k = first_step_gradients(**overrides, **{"train.accumulation_steps": steps})
    assert metrics_k == pytest.approx(metrics, rel=1e-5, abs=1e-7)
    assert grads.keys() == grads_k.keys() and len(grads) > 4
    for name, g in grads.items():
        assert g.abs().max() > 0, name
        torch.testing.assert_close(grads_k[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_accumulation_never_holds_more_than_a_micro_batch_in_the_student():
    trainer = make_trainer(**{"train.accumulation_steps": 2})
    trainer._prepare_optimizer(4)
    seen = {}
    for role, learner in (("student", trainer.learner), ("teacher", trainer.teacher_learner)):
        learner.backbone.model.patch_embed.register_forward_hook(
            lambda m, inp, out, role=role: seen.setdefault(role, []).append((inp[0].shape[0], torch.is_grad_enabled()))
        )
    trainer.train_step(one_batch())
    # teacher: 2 chunks of 2 clips x 4 frames, no grad; student: 2 clips without grad, twice,
    # then 2 clips with grad, twice
    assert seen["teacher"] == [(8, False), (8, False)]
    assert seen["student"] == [(2, False), (2, False), (2, True), (2, True)]


def test_accumulation_must_fit_the_per_process_batch():
    with pytest.raises(ConfigError, match="accumulation_steps=8 exceeds the 4 clips"):
        trainer = make_trainer(**{"train.accumulation_steps": 8})
        trainer.fit(SyntheticVideos(num_videos=8, num_frames=12, size=32, seed=0))


def test_compiled_backbone_computes_the_same_step():
    # the "eager" backend runs dynamo's capture and graph breaks without code generation
    _, grads = first_step_gradients()
    _, compiled = first_step_gradients(**{"train.compile": True, "train.compile_backend": "eager"})
    for name, g in grads.items():
        torch.testing.assert_close(compiled[name], g, rtol=1e-5, atol=1e-7, msg=name)


# ---- several processes (gloo on CPU) -----------------------------------------------------
def _worker(rank, world, init_file, out_dir, overrides, stop_at, resume):
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        source = SyntheticVideos(num_videos=8, num_frames=12, size=32, seed=0)
        trainer = PostPretrainer(config=tiny_config(**overrides))

        class Stop(Exception):
            pass

        def stop(trainer, step, metrics):
            if step == stop_at:
                raise Stop

        try:
            trainer.fit(source, out_dir=os.path.join(out_dir, "run"), resume=resume, callbacks=[stop])
        except Stop:
            pass
        local = getattr(trainer.optimizer, "optim", trainer.optimizer)  # ZeRO's local AdamW
        moments = sum(t.numel() for s in local.state.values() for t in s.values() if t.ndim > 0)
        torch.save({"moments": moments}, os.path.join(out_dir, f"rank{rank}.pt"))
        if rank == 0:
            torch.save(
                {"losses": [r["loss"] for r in trainer.history], "state": trainer.learner.state_dict()},
                os.path.join(out_dir, "result.pt"),
            )
        tdist.barrier()  # every rank has written its results before any tears down
    finally:
        tdist.destroy_process_group()


def spawn(tmp_path, name, world, overrides, stop_at=None, resume=False):
    out = tmp_path / name
    out.mkdir(exist_ok=True)
    init = out / f"init-{os.getpid()}-{int(resume)}"
    try:
        mp.spawn(_worker, args=(world, str(init), str(out), overrides, stop_at, resume), nprocs=world, join=True)
    except mp.ProcessExitedException as exc:
        # gloo once aborted a finished worker at interpreter exit ("terminate called without
        # an active exception", SIGABRT) in CI; the results were complete. Anything earlier
        # leaves a result file missing and fails below.
        if exc.signal_name != "SIGABRT" or not all((out / f"rank{r}.pt").is_file() for r in range(world)):
            raise
    result = torch.load(out / "result.pt", weights_only=True)
    result["moments"] = [torch.load(out / f"rank{r}.pt", weights_only=True)["moments"] for r in range(world)]
    return result


def assert_same_training(reference: PostPretrainer, initial: dict, state: dict, losses: list, first: int = 0):
    """Equal losses; parameters equal up to Adam's sign flips on float-noise gradients
    (compared in aggregate, as in test_trainer's DDP test)."""
    assert losses == pytest.approx([r["loss"] for r in reference.history][first:], rel=1e-4)
    moved = 0
    for name, value in reference.learner.state_dict().items():
        update = (value - initial[name]).abs()
        if update.max() == 0:
            assert torch.equal(value, state[name]), name
            continue
        moved += 1
        assert (value - state[name]).abs().mean() < 0.05 * update.mean(), name
    assert moved > 0


STEPS = {"train.max_steps": 4, "train.checkpoint_every": 2, "data.global_batch_size": 4}


@pytest.fixture(scope="module")
def single_process_run():
    source = SyntheticVideos(num_videos=8, num_frames=12, size=32, seed=0)
    trainer = make_trainer(**STEPS)
    initial = {k: v.clone() for k, v in trainer.learner.state_dict().items()}
    trainer.fit(source)
    return trainer, initial


def test_four_processes_equal_one_on_the_same_global_batch(tmp_path, single_process_run):
    reference, initial = single_process_run
    result = spawn(tmp_path, "ddp4", 4, STEPS)
    assert_same_training(reference, initial, result["state"], result["losses"])


def test_two_processes_with_accumulation_and_a_sharded_optimizer_equal_one(tmp_path, single_process_run):
    reference, initial = single_process_run
    overrides = {**STEPS, "train.accumulation_steps": 2, "train.shard_optimizer": True}
    result = spawn(tmp_path, "zero2", 2, overrides)
    assert_same_training(reference, initial, result["state"], result["losses"])
    # each process holds only part of the AdamW moments; together exactly all of them
    plain = sum(t.numel() for s in reference.optimizer.state.values() for t in s.values() if t.ndim > 0)
    assert sum(result["moments"]) == plain
    assert all(0 < m < plain for m in result["moments"])


def test_resume_on_a_different_number_of_processes(tmp_path, single_process_run):
    """Two processes (sharded optimizer) train 2 of 4 steps and checkpoint; one process
    resumes to step 4: the same as training 4 steps in one process."""
    reference, initial = single_process_run
    overrides = {**STEPS, "train.shard_optimizer": True}
    spawn(tmp_path, "elastic", 2, overrides, stop_at=2)
    run = tmp_path / "elastic" / "run"
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_0000002"
    source = SyntheticVideos(num_videos=8, num_frames=12, size=32, seed=0)
    resumed = make_trainer(**overrides).fit(source, out_dir=run, resume=True)
    assert resumed.step == 4
    assert_same_training(
        reference, initial, resumed.learner.state_dict(), [r["loss"] for r in resumed.history], first=2
    )


def test_the_paper_scale_example_config_is_the_preset_plus_run_settings():
    from conftest import ROOT

    from mosic.config import RunConfig

    example = RunConfig.load(ROOT / "examples" / "paper_scale_8gpu.yaml")
    preset = RunConfig.load("dinov2-b14")
    run_specific = {
        "data.videos": "data/ytvos/train_all_frames/JPEGImages",
        "data.num_workers": 8,
        "tracker.cache": "data/ytvos/tracks",
        "tracker.kwargs": {"weights": "checkpoints/scaled_offline.pth"},
        "train.out_dir": "runs/ytvos-dinov2-b14",
        "train.checkpoint_every": 54,
    }
    assert example == preset.with_overrides(run_specific)
    assert example.data.global_batch_size == 64 and example.data.stride == 8  # 8 clips per GPU on 8 GPUs
