import json
import os

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from conftest import tiny_config
from mosic import PostPretrainer
from mosic.data.clips import ClipDataset, collate_clips
from mosic.data.synthetic import SyntheticVideos
from mosic.ema import ema_momentum, ema_update_


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
