import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

import mosic
from conftest import tiny_config
from helpers.bad_videos import colour_frames, write_video
from mosic import PostPretrainer
from mosic.data.clips import ClipDataset, NoUsableVideosError, collate_clips
from mosic.data.synthetic import SyntheticVideos
from mosic.train.student_teacher import ema_momentum, ema_update_


def make_trainer(**overrides):
    return PostPretrainer(config=tiny_config(**overrides))


def batch_of(source, n=4, num_frames=4):
    ds = ClipDataset(source, num_frames=num_frames, frame_stride=2, size=32)
    return collate_clips([ds[(0, i)] for i in range(n)])


def test_student_runs_only_on_frame_zero_and_teacher_on_all(synthetic):
    trainer = make_trainer()
    trainer._prepare_optimizer(4)
    seen = {}
    for role, learner in (("student", trainer.learner), ("teacher", trainer.teacher_learner)):
        learner.backbone.model.patch_embed.register_forward_hook(
            lambda m, inp, out, role=role: seen.setdefault(role, []).append(inp[0].shape[0])
        )
    trainer.train_step(batch_of(synthetic, n=4, num_frames=4))
    assert seen == {"student": [4], "teacher": [16]}  # B=4 clips: 4 student images, 4 x 4 teacher


def test_loss_decreases_on_a_fixed_batch(synthetic):
    trainer = make_trainer(**{"train.mask_ratio": 0.0})
    trainer._prepare_optimizer(1000)
    batch = batch_of(synthetic)
    losses = [float(trainer.train_step(batch)["loss"]) for _ in range(15)]
    assert losses[-1] < 0.7 * losses[0], losses


def test_ema_update_formula_and_frozen_parameters(synthetic):
    a, b = [torch.ones(3), torch.zeros(2)], [torch.zeros(3), torch.ones(2)]
    ema_update_(a, b, 0.9)
    assert torch.allclose(a[0], torch.full((3,), 0.9)) and torch.allclose(a[1], torch.full((2,), 0.1))
    assert ema_momentum(0.99, 0, 100, "cosine") == pytest.approx(0.99)
    assert ema_momentum(0.99, 99, 100, "cosine") == pytest.approx(1.0)

    trainer = make_trainer(**{"train.ema_momentum": 0.9})
    trainer._prepare_optimizer(4)
    before_teacher = {k: v.clone() for k, v in trainer.teacher_learner.state_dict().items()}
    trainer.train_step(batch_of(synthetic))
    student = trainer.learner.state_dict()
    teacher = trainer.teacher_learner.state_dict()
    for name, param in trainer.learner.named_parameters():
        if param.requires_grad:
            assert torch.allclose(teacher[name], 0.9 * before_teacher[name] + 0.1 * student[name], atol=1e-6), name
        else:
            assert torch.equal(teacher[name], student[name]), name  # frozen: identical, never averaged
    assert not any(p.requires_grad for p in trainer.teacher_learner.parameters())


def test_only_the_last_blocks_train():
    trainer = make_trainer(**{"backbone.train_blocks": 1})
    trainable = {n for n, p in trainer.student.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("model.blocks.1.", "model.norm.")) for n in trainable)


def test_fit_writes_checkpoints_metrics_and_loads_back(tmp_path, synthetic):
    trainer = make_trainer().fit(synthetic, out_dir=tmp_path)
    assert trainer.step == 4
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4]
    assert {"loss", "agreement", "visible_fraction", "clips_per_s", "lr_backbone"} <= set(lines[0])
    assert (tmp_path / "config.yaml").is_file()
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_0000004"
    loaded = PostPretrainer.load(tmp_path)
    assert loaded.step == 4
    for a, b in zip(loaded.teacher.state_dict().values(), trainer.teacher.state_dict().values()):
        assert torch.equal(a, b)
    assert loaded.config == trainer.config.with_overrides({"backbone.pretrained": False})


def test_fit_with_the_progress_bar(synthetic):
    trainer = make_trainer(**{"train.progress": True, "train.max_steps": 2}).fit(synthetic)
    assert trainer.step == 2 and len(trainer.history) == 2


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path, synthetic):
    full = make_trainer(**{"train.max_steps": 6}).fit(synthetic, out_dir=tmp_path / "full")

    class Interrupt(Exception):
        pass

    def stop_at_3(trainer, step, metrics):
        if step == 3:
            raise Interrupt

    interrupted = make_trainer(**{"train.max_steps": 6, "train.checkpoint_every": 3})
    with pytest.raises(Interrupt):
        interrupted.fit(synthetic, out_dir=tmp_path / "resumed", callbacks=[stop_at_3])
    resumed = make_trainer(**{"train.max_steps": 6, "train.checkpoint_every": 3})
    resumed.fit(synthetic, out_dir=tmp_path / "resumed", resume=True)
    assert resumed.step == 6
    for (name, a), b in zip(full.learner.state_dict().items(), resumed.learner.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(full.teacher_learner.state_dict().values(), resumed.teacher_learner.state_dict().values()):
        assert torch.equal(a, b)
    full_losses = [r["loss"] for r in full.history]
    assert [r["loss"] for r in resumed.history] == full_losses[3:]  # steps 4-6 only


def _ddp_worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        source = SyntheticVideos(num_videos=8, num_frames=12, size=32, seed=0)
        trainer = PostPretrainer(config=tiny_config(**{"train.max_steps": 2}))
        trainer.fit(source)
        if rank == 0:
            torch.save(
                {"losses": [r["loss"] for r in trainer.history], "state": trainer.learner.state_dict()},
                os.path.join(out_dir, "ddp.pt"),
            )
    finally:
        tdist.destroy_process_group()


def test_two_process_ddp_equals_one_process_on_the_same_global_batch(tmp_path, synthetic):
    single = make_trainer(**{"train.max_steps": 2})
    initial = {k: v.clone() for k, v in single.learner.state_dict().items()}
    single.fit(synthetic)
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    # the same global loss at both steps (the second step also checks the first update)
    assert ddp["losses"] == pytest.approx([r["loss"] for r in single.history], rel=1e-5)
    moved = 0
    for name, value in single.learner.state_dict().items():
        update = (value - initial[name]).abs()
        if update.max() == 0:  # frozen
            assert torch.equal(value, ddp["state"][name]), name
            continue
        moved += 1
        # Adam's first steps are ~lr * sign(grad): elements whose gradient is float noise
        # (e.g. the key bias, which softmax ignores) may flip, so compare in aggregate
        difference = (value - ddp["state"][name]).abs()
        assert difference.mean() < 0.05 * update.mean(), name
    assert moved > 0


def test_global_batch_must_divide_and_fit(synthetic):
    with pytest.raises(ValueError, match="fewer than one global batch"):
        make_trainer(**{"data.global_batch_size": 16}).fit(synthetic)


def test_oracle_refuses_real_videos(tmp_path):
    from PIL import Image

    folder = tmp_path / "JPEGImages" / "clip"
    folder.mkdir(parents=True)
    for i in range(6):
        Image.new("RGB", (32, 32), (i * 20, 0, 0)).save(folder / f"{i:05d}.jpg")
    with pytest.raises(ValueError, match="oracle"):
        make_trainer(**{"data.global_batch_size": 1}).fit(tmp_path)


def test_teacher_holds_the_frozen_blocks_once(tmp_path, synthetic):
    trainer = make_trainer(**{"train.max_steps": 2})
    student = dict(trainer.learner.named_parameters())
    teacher = dict(trainer.teacher_learner.named_parameters())
    frozen = [n for n, p in student.items() if not p.requires_grad]
    assert frozen and all(teacher[n] is student[n] for n in frozen)
    assert all(teacher[n] is not p and not teacher[n].requires_grad for n, p in student.items() if p.requires_grad)
    trainer.fit(synthetic, out_dir=tmp_path)  # checkpoints write shared tensors as copies
    loaded = PostPretrainer.load(tmp_path)
    for name, value in trainer.teacher_learner.state_dict().items():
        assert torch.equal(loaded.teacher_learner.state_dict()[name], value), name
    loaded_student = dict(loaded.learner.named_parameters())
    assert all(dict(loaded.teacher_learner.named_parameters())[n] is loaded_student[n] for n in frozen)


def test_resume_rewrites_the_metrics_logged_after_the_checkpoint(tmp_path, synthetic):
    class Interrupt(Exception):
        pass

    def stop_at_3(trainer, step, metrics):
        if step == 3:
            raise Interrupt

    config = {"train.max_steps": 4, "train.checkpoint_every": 2}
    with pytest.raises(Interrupt):
        make_trainer(**config).fit(synthetic, out_dir=tmp_path, callbacks=[stop_at_3])
    steps = lambda: [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert steps() == [1, 2, 3]  # step 3 was logged, its checkpoint never written
    make_trainer(**config).fit(synthetic, out_dir=tmp_path, resume=True)
    assert steps() == [1, 2, 3, 4]


# ---- the trainer's EMA pairs are exactly the trainable parameters; frozen teacher tensors are never written


def _clip_batch(source, n: int = 4):
    ds = ClipDataset(source, num_frames=4, frame_stride=2, size=32)
    return collate_clips([ds[(0, i)] for i in range(n)])


@pytest.mark.parametrize("train_blocks", [0, 1])
def test_trainer_ema_never_writes_frozen_teacher_parameters(train_blocks, synthetic):
    """test_trainer checks frozen teacher values equal the student's; a lerp of equal
    values would leave them equal too. Here: the EMA pairs are exactly the trainable
    parameters, and frozen teacher tensors are never written (version counters)."""
    trainer = PostPretrainer(config=tiny_config(**{"backbone.train_blocks": train_blocks, "train.ema_momentum": 0.5}))
    trainer._prepare_optimizer(4)
    student = dict(trainer.learner.named_parameters())
    teacher = dict(trainer.teacher_learner.named_parameters())
    trainable = [n for n, p in student.items() if p.requires_grad]
    frozen = [n for n, p in student.items() if not p.requires_grad]
    assert frozen and trainable
    if train_blocks == 0:
        assert all(n.startswith("objective.") for n in trainable)
    pairs = trainer.model.pairs
    assert [id(t) for t, _ in pairs] == [id(teacher[n]) for n in trainable]
    assert [id(s) for _, s in pairs] == [id(student[n]) for n in trainable]

    versions = {n: p._version for n, p in teacher.items()}
    initial = {n: p.detach().clone() for n, p in teacher.items()}
    batch = _clip_batch(synthetic)
    for _ in range(2):
        trainer.train_step(batch)
    for n in frozen:
        assert teacher[n]._version == versions[n], f"frozen teacher parameter {n} was written"
        assert torch.equal(teacher[n], initial[n]) and torch.equal(teacher[n], student[n]), n
    for n in trainable:
        assert teacher[n]._version > versions[n], n
    assert any(not torch.equal(teacher[n], initial[n]) for n in trainable)


def test_static_runs_no_tracker(synthetic):
    trainer = mosic.PostPretrainer(config=tiny_config(**{"objective.name": "static", "tracker.name": "cotracker3", "train.max_steps": 1}))
    trainer.fit(synthetic)
    assert trainer._tracker is None  # cotracker3 would need weights: it was never built
    assert math.isfinite(trainer.history[-1]["loss"])


# ---- a training run over a folder with unreadable videos: they are skipped, counted and reported; a folder of nothing but bad videos stops with a clear error


BAD_VIDEOS_CONFIG = {"tracker.name": "lk", "train.max_steps": 3, "data.global_batch_size": 4, "data.num_frames": 4, "data.frame_stride": 2}


def folder_with(tmp_path, good: int, bad: dict[str, bytes]):
    root = tmp_path / "videos"
    root.mkdir()
    for k in range(good):
        write_video(root / f"good_{k}.mp4", colour_frames(24))
    for name, content in bad.items():
        (root / name).write_bytes(content)
    return root


def test_bad_videos_are_skipped_counted_and_reported(tmp_path, capsys):
    root = folder_with(tmp_path, 4, {"broken.mp4": b"this is not a video", "empty.mp4": b""})
    out = tmp_path / "run"
    trainer = PostPretrainer(config=tiny_config(**BAD_VIDEOS_CONFIG))
    with pytest.warns(UserWarning, match="broken.mp4"):
        trainer.fit(root, out_dir=out)
    assert trainer.step == 3  # the run finished, batches stayed full
    assert sorted(Path(name).name for name in trainer.skipped_videos) == ["broken.mp4", "empty.mp4"]
    report = json.loads((out / "skipped_videos.json").read_text())
    assert report == trainer.skipped_videos and all(report.values())  # every skip has a reason
    assert trainer.history[-1]["skipped_videos"] == 2
    printed = capsys.readouterr().out
    assert "2 unreadable videos were skipped" in printed and "skipped_videos.json" in printed


def test_a_folder_of_only_bad_videos_stops_with_a_clear_error(tmp_path):
    root = folder_with(tmp_path, 0, {f"bad_{k}.mp4": b"garbage" * k for k in range(4)})
    trainer = PostPretrainer(config=tiny_config(**BAD_VIDEOS_CONFIG))
    with pytest.warns(UserWarning), pytest.raises(NoUsableVideosError, match="check-data"):
        trainer.fit(root, out_dir=tmp_path / "run")


def test_skipping_can_be_turned_off(tmp_path):
    from mosic.errors import VideoReadError

    root = folder_with(tmp_path, 4, {"broken.mp4": b"this is not a video"})
    trainer = PostPretrainer(config=tiny_config(**BAD_VIDEOS_CONFIG, **{"data.skip_bad_videos": False}))
    with pytest.raises(VideoReadError, match="broken.mp4"):
        trainer.fit(root, out_dir=tmp_path / "run")


def test_mosic_track_records_unreadable_videos_and_training_skips_them(tmp_path, capsys):
    from mosic.cli import main
    from mosic.data.clips import BadVideoWarning
    from mosic.trackers.cache import TrackCache
    from mosic.data.video_files import open_videos

    root = folder_with(tmp_path, 4, {"broken.mp4": b"this is not a video"})
    cache = tmp_path / "cache"
    track = ["track", str(root), "--out", str(cache), "--tracker", "lk", "--grid", "4", "--device", "cpu",
             "--no-progress", "data.num_frames=4", "data.frame_stride=2"]
    with pytest.warns(BadVideoWarning, match="mosic track: skipping .*broken.mp4"):
        assert main(track) == 0
    assert "tracked 4 of 5 videos (1 unreadable, skipped: " in capsys.readouterr().out
    unreadable = TrackCache(cache, open_videos(str(root))).unreadable
    assert [Path(n).name for n in unreadable] == ["broken.mp4"] and all(unreadable.values())
    trainer = PostPretrainer(config=tiny_config(**BAD_VIDEOS_CONFIG, **{"tracker.cache": str(cache)}))
    with pytest.warns(UserWarning, match="broken.mp4"):
        trainer.fit(root, out_dir=tmp_path / "run")
    assert trainer.step == 3 and [Path(n).name for n in trainer.skipped_videos] == ["broken.mp4"]


# ---- the GPU path: fp32 Sinkhorn and loss inside bf16 autocast, and (on a CUDA machine) a training step that never waits for the GPU


def _synthetic_batch(n=4):
    ds = ClipDataset(SyntheticVideos(num_videos=8, num_frames=12, size=32, seed=0), 4, 2, 32)
    return collate_clips([ds[(0, i)] for i in range(n)])


def test_bf16_step_keeps_sinkhorn_and_loss_in_fp32(monkeypatch):
    import mosic.objectives.mosic as objective_module

    seen = {}
    original = objective_module.sinkhorn

    def recording(scores, *args, **kwargs):
        out = original(scores, *args, **kwargs)
        seen["scores"], seen["plan"] = scores.dtype, out.dtype
        return out

    monkeypatch.setattr(objective_module, "sinkhorn", recording)
    trainer = PostPretrainer(config=tiny_config(**{"train.precision": "bf16"}))
    trainer._prepare_optimizer(4)
    linear_dtypes = set()
    for module in trainer.learner.backbone.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(lambda m, i, o: linear_dtypes.add(o.dtype))
    metrics = trainer.train_step(_synthetic_batch())
    assert linear_dtypes == {torch.bfloat16}  # the backbone's matmuls did run in bf16 ...
    assert seen == {"scores": torch.bfloat16, "plan": torch.float32}  # ... Sinkhorn did not
    assert metrics["loss"].dtype == torch.float32 and torch.isfinite(metrics["loss"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_step_never_synchronises_with_the_host():
    trainer = PostPretrainer(config=tiny_config(**{"train.device": "cuda"}))
    trainer._prepare_optimizer(4)
    data = _synthetic_batch()
    data["frames"] = data["frames"].pin_memory()
    trainer.train_step(data)  # warm-up: lazy CUDA initialisation may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        metrics = trainer.train_step(data)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(metrics["loss"]).item()


def test_train_final_norm_false_freezes_the_final_norm_as_the_authors_rule_does():
    trainer = make_trainer(**{"backbone.train_blocks": 1, "backbone.train_final_norm": False})
    norm = {n for n, p in trainer.student.named_parameters() if n.startswith("model.norm.")}
    trained = {n for n, p in trainer.student.named_parameters() if p.requires_grad}
    assert norm and not norm & trained and any(".blocks.1." in n for n in trained)
    default = make_trainer(**{"backbone.train_blocks": 1})
    assert norm <= {n for n, p in default.student.named_parameters() if p.requires_grad}
