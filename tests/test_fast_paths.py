"""mosic's fast paths equal the straightforward computations they replace.

* distributed Sinkhorn (column sums all-reduced) == Sinkhorn on the concatenated rows;
* the distributed MoSiC loss, its metrics and DDP-averaged gradients == one process on
  the global batch;
* the fused ``_foreach_lerp_`` EMA == a per-parameter ``mul_``/``add_`` loop, and the
  trainer's EMA never writes frozen teacher parameters;
* the student run on frame 0 only == the student run on all frames, then frame 0 read;
* reading features at points == upsampling to pixels and indexing (nearest, borders).
"""

from __future__ import annotations

import copy
import itertools
import math
import os

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import TINY_VIT, tiny_config
from torch import nn

from mosic import PostPretrainer, create_backbone
from mosic.data.clips import ClipDataset, collate_clips
from mosic.ema import ema_update_
from mosic.learner import Learner
from mosic.objectives import MoSiCObjective, ObjectiveInputs
from mosic.points import sample_at_points
from mosic.sinkhorn import sinkhorn
from mosic.trackers import Tracks

# ---- shared problem builders (used by the test process and the spawned ranks) -------------

EPSILON, ITERATIONS = 0.05, 10
M_ROWS, K_PROTOTYPES = 48, 7


def cosine_scores(m: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(m, 16, generator=g), dim=1)
    p = F.normalize(torch.randn(k, 16, generator=g), dim=1)
    return z @ p.t()


def sinkhorn_cases(world: int) -> dict[str, tuple[torch.Tensor, torch.Tensor | None, list[int], int]]:
    """name -> (scores (M, K), row mask or None, row boundaries of the ranks, iterations)."""
    scores = cosine_scores(M_ROWS, K_PROTOTYPES, seed=11)
    even = [M_ROWS * r // world for r in range(world + 1)]
    uneven = [0, 5, M_ROWS] if world == 2 else [0, 1, 20, 29, M_ROWS]
    mask = torch.arange(M_ROWS) % 3 != 1
    mask[M_ROWS - 4 :] = False  # the last rank ends on masked rows
    if world == 4:
        mask[0] = False  # rank 0's only row is masked: it contributes nothing
    return {
        "even": (scores, None, even, ITERATIONS),
        "uneven": (scores, None, uneven, ITERATIONS),
        "masked_uneven": (scores, mask, uneven, ITERATIONS),
        "masked_even_long": (scores, mask, even, 60),
        "one_rank_empty": (scores, None, [0, *[M_ROWS] * world], ITERATIONS),  # ranks 1.. hold no rows
    }


B_CLIPS, T_FRAMES, GRID, DIM, PATCH, N_POINTS = 4, 3, 4, 8, 4, 10

LOSS_CASES = {
    "tracked": {"target": "tracked"},
    "propagated": {"target": "propagated"},
    "all_points_mean_over_all": {"target": "tracked", "loss_points": "all", "mean_over_all": True},
}


def random_tracks(g: torch.Generator, b: int, t: int, n: int, size: int) -> Tracks:
    """Random walks from random frame-0 points (some leave the image), ~30% invisible
    entries, including on frame 0 (those points take no part)."""
    start = torch.rand(b, 1, n, 2, generator=g) * (size - 1)
    steps = torch.randn(b, t - 1, n, 2, generator=g) * (size / 6)
    xy = torch.cat([start, start + steps.cumsum(1)], 1)
    visible = torch.rand(b, t, n, generator=g) > 0.3
    return Tracks(xy, visible)


class StemAndObjective(nn.Module):
    """A linear "backbone" on fixed features plus the objective: what DDP wraps in the
    trainer (the Learner), so its parameter gradients are what DDP averages."""

    def __init__(self, objective: MoSiCObjective):
        super().__init__()
        self.stem = nn.Linear(DIM, DIM)
        self.objective = objective

    def forward(self, features, token_mask, teacher_tokens, tracks, teacher):
        tokens = self.stem(features) * (~token_mask).unsqueeze(-1)  # dropped tokens are zeros
        tokens.retain_grad()
        inputs = ObjectiveInputs(tokens, teacher_tokens, tracks, PATCH, student_token_mask=token_mask)
        return self.objective(inputs, teacher=teacher), tokens


def loss_problem(case: str):
    """The same student, teacher and global batch in every process."""
    torch.manual_seed(5)
    student = StemAndObjective(
        MoSiCObjective(DIM, num_prototypes=6, projection_dim=8, head_hidden_dims=(16,), **LOSS_CASES[case])
    )
    teacher = copy.deepcopy(student.objective).requires_grad_(False)
    with torch.no_grad():  # an EMA teacher is close to, not equal to, the student
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
        teacher.prototypes.normalize_()
    g = torch.Generator().manual_seed(6)
    features = torch.randn(B_CLIPS, 1, GRID, GRID, DIM, generator=g)
    teacher_tokens = torch.randn(B_CLIPS, T_FRAMES, GRID, GRID, DIM, generator=g)
    tracks = random_tracks(g, B_CLIPS, T_FRAMES, N_POINTS, GRID * PATCH)
    token_mask = torch.zeros(B_CLIPS, 1, GRID * GRID, dtype=torch.bool)
    for i in range(B_CLIPS):
        token_mask[i, 0, torch.randperm(GRID * GRID, generator=g)[:3]] = True
    token_mask = token_mask.view(B_CLIPS, 1, GRID, GRID)
    return student, teacher, features, token_mask, teacher_tokens, tracks


def run_loss(case: str, rank: int = 0, world: int = 1) -> dict[str, torch.Tensor]:
    """Loss, metrics and gradients on this rank's clips; under DDP when ``world > 1``."""
    student, teacher, features, token_mask, teacher_tokens, tracks = loss_problem(case)
    per_rank = B_CLIPS // world
    clips = slice(rank * per_rank, (rank + 1) * per_rank)
    module = student
    if world > 1:
        module = nn.parallel.DistributedDataParallel(student)
    out, tokens = module(features[clips], token_mask[clips], teacher_tokens[clips], tracks[clips], teacher)
    out.loss.backward()
    result = {f"metric.{k}": v.detach().clone() for k, v in out.metrics.items()}
    result["rank_loss"] = out.loss.detach().clone()
    result["token_grad"] = tokens.grad.clone()
    result.update({f"grad.{n}": p.grad.clone() for n, p in student.named_parameters()})
    return result


def _distributed_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results: dict[str, torch.Tensor] = {}
        for name, (scores, mask, bounds, iterations) in sinkhorn_cases(world).items():
            rows = slice(bounds[rank], bounds[rank + 1])
            results[f"sinkhorn.{name}"] = sinkhorn(
                scores[rows], EPSILON, iterations, None if mask is None else mask[rows]
            )
        for case in LOSS_CASES:
            for key, value in run_loss(case, rank, world).items():
                results[f"loss.{case}.{key}"] = value
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        tdist.destroy_process_group()


def launch(worker, world: int, folder) -> None:
    """``worker(rank, world, init_file, folder)`` in ``world`` processes (gloo, file:// init).

    Forked where that is safe (a platform with fork, CUDA not initialised in this process):
    spawned ranks re-import torch and mosic, 5-10 s per process on a busy 2-core machine,
    forked ones start at once. The ranks only run CPU ops, with one thread each.
    """
    fork = "fork" in mp.get_all_start_methods() and not torch.cuda.is_initialized()
    method = "fork" if fork else "spawn"
    mp.start_processes(worker, args=(world, str(folder / "init"), str(folder)), nprocs=world, join=True, start_method=method)


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory):
    """world size -> every rank's results, from one launch of the ranks per world size."""
    cache: dict[int, list[dict[str, torch.Tensor]]] = {}

    def results(world: int) -> list[dict[str, torch.Tensor]]:
        if world not in cache:
            folder = tmp_path_factory.mktemp(f"world{world}")
            launch(_distributed_worker, world, folder)
            cache[world] = [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(world)]
        return cache[world]

    return results


# ---- 1. distributed Sinkhorn == single-process Sinkhorn ---------------------------------------


@pytest.mark.parametrize("world", [2, 4])
def test_distributed_sinkhorn_equals_single_process_on_all_rows(world, distributed_results):
    ranks = distributed_results(world)
    for name, (scores, mask, bounds, iterations) in sinkhorn_cases(world).items():
        parts = [r[f"sinkhorn.{name}"] for r in ranks]
        assert [p.shape[0] for p in parts] == [hi - lo for lo, hi in itertools.pairwise(bounds)], name
        gathered = torch.cat(parts)
        single = sinkhorn(scores, EPSILON, iterations, mask)
        torch.testing.assert_close(gathered, single, atol=1e-6, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
        assert torch.equal(gathered.argmax(1), single.argmax(1)), name
        if mask is not None:
            assert torch.equal(gathered[~mask], torch.zeros_like(gathered[~mask])), name
        # the all-reduces matter: each rank solving its own rows alone gives another plan
        alone = torch.cat([
            sinkhorn(scores[lo:hi], EPSILON, iterations, None if mask is None else mask[lo:hi])
            for lo, hi in itertools.pairwise(bounds)
        ])
        if name != "one_rank_empty":  # there rank 0 alone *is* the whole problem
            assert (alone - single).abs().max() > 1e-2, name


def test_sinkhorn_of_an_empty_shard_contributes_nothing():
    """A process with no rows returns a (0, K) plan (and, under torch.distributed, still
    joins the all-reduces: the "one_rank_empty" case above)."""
    empty = cosine_scores(M_ROWS, K_PROTOTYPES, seed=11)[:0]
    assert sinkhorn(empty, EPSILON, ITERATIONS).shape == (0, K_PROTOTYPES)


# ---- 2. distributed MoSiC loss, metrics and gradients == single process ------------------------


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("case", list(LOSS_CASES))
def test_distributed_mosic_loss_and_gradients_equal_single_process(world, case, distributed_results):
    prefix = f"loss.{case}."
    ranks = [{k[len(prefix) :]: v for k, v in r.items() if k.startswith(prefix)} for r in distributed_results(world)]
    single = run_loss(case)
    loss = single["metric.loss"]
    # single process: the backpropagated loss is the global mean itself
    torch.testing.assert_close(single["rank_loss"], loss, rtol=1e-6, atol=0)
    # each rank backpropagates loss_sum_r / global_count * world: their mean is the global loss
    rank_losses = torch.stack([r["rank_loss"] for r in ranks])
    assert not torch.allclose(rank_losses, rank_losses[0].expand_as(rank_losses))  # shards differ
    torch.testing.assert_close(rank_losses.mean(), loss, rtol=1e-5, atol=0)
    for key in ("loss", "agreement", "visible_fraction", "clusters_used"):
        for r in ranks:  # every rank logs the global value
            torch.testing.assert_close(r[f"metric.{key}"], single[f"metric.{key}"], rtol=1e-5, atol=1e-7, msg=key)
    # DDP averages parameter gradients: each rank already holds the global-batch gradient
    names = [k for k in single if k.startswith("grad.")]
    assert {"grad.stem.weight", "grad.objective.prototypes.weight"} <= set(names)
    for name in names:
        assert single[name].abs().max() > 0, name
        for r in ranks:
            torch.testing.assert_close(r[name], single[name], rtol=1e-5, atol=1e-6 * single[name].abs().max(), msg=name)
    # the gradient w.r.t. the student tokens, as DDP's averaging weighs it (1/world per rank)
    token_grad = torch.cat([r["token_grad"] for r in ranks]) / world
    scale = single["token_grad"].abs().max()
    assert scale > 0
    torch.testing.assert_close(token_grad, single["token_grad"], rtol=1e-5, atol=1e-6 * scale)


# ---- 3. fused EMA == per-parameter loop; the trainer's EMA skips frozen parameters -------------


def _ulp_bf16(x: torch.Tensor) -> torch.Tensor:
    """Spacing of bf16 numbers (8 significant bits) around |x|, in float64."""
    exponent = torch.floor(torch.log2(x.abs().clamp_min(2.0**-126)))
    return torch.pow(2.0, exponent - 7)


@pytest.mark.parametrize("momentum", [0.0, 0.99, 1.0])
def test_foreach_ema_equals_per_parameter_loop(momentum):
    g = torch.Generator().manual_seed(3)
    shapes = [(), (1,), (7,), (5, 3), (2, 3, 4), (0, 4), (33, 17)]
    dtypes = [torch.float32, torch.bfloat16]
    specs = [(s, d) for d in dtypes for s in shapes]
    teacher = [torch.randn(s, generator=g).to(d) for s, d in specs]
    student = [(t.float() + 0.1 * torch.randn(t.shape, generator=g)).to(t.dtype) for t in teacher]
    student_before = [s.clone() for s in student]
    exact = [(momentum * t.double() + (1 - momentum) * s.double()) for t, s in zip(teacher, student)]
    loop = [t.clone() for t in teacher]
    for t, s in zip(loop, student):
        t.mul_(momentum).add_(s, alpha=1 - momentum)
    fused = [t.clone() for t in teacher]
    ids = [id(t) for t in fused]
    ema_update_(fused, student, momentum)  # fp32 and bf16 tensors in one call

    assert [id(t) for t in fused] == ids  # in place
    assert all(torch.equal(s, b) for s, b in zip(student, student_before))
    for (shape, dtype), f, lp, ref, t, s in zip(specs, fused, loop, exact, teacher, student):
        assert f.dtype == dtype and f.shape == torch.Size(shape)
        if momentum == 1.0:  # the teacher stays put, bit for bit
            assert torch.equal(f, t) and torch.equal(lp, t), (shape, dtype)
        elif momentum == 0.0:  # the teacher becomes the student, bit for bit
            assert torch.equal(f, s) and torch.equal(lp, s), (shape, dtype)
        elif dtype == torch.float32:
            torch.testing.assert_close(f, lp, rtol=1e-6, atol=1e-6)
            assert ((f.double() - ref).abs() < 1e-6).all(), shape
        else:  # bf16: the loop rounds twice, the fused lerp once (in fp32)
            ulp = _ulp_bf16(ref)
            assert ((f.double() - ref).abs() <= ulp).all(), shape
            assert ((f.double() - lp.double()).abs() <= 2 * ulp).all(), shape


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
    pairs = trainer._ema_pairs
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


# ---- 4. the student on frame 0 only == the student on all frames, frame 0 read ----------------


def tiny_learner(seed: int = 0) -> Learner:
    torch.manual_seed(seed)
    backbone = create_backbone("vit-tiny", pretrained=False, **TINY_VIT)
    backbone.set_trainable("all")
    objective = MoSiCObjective(backbone.embed_dim, num_prototypes=8, projection_dim=16, head_hidden_dims=(32,))
    return Learner(backbone, objective)


def clip_problem(b: int = 2, t: int = 3, drop: int = 4):
    g = torch.Generator().manual_seed(1)
    size, grid = TINY_VIT["img_size"], TINY_VIT["img_size"] // TINY_VIT["patch_size"]
    images = torch.randn(b, t, 3, size, size, generator=g)
    mask = torch.zeros(b, t, grid * grid, dtype=torch.bool)
    for i in range(b):
        for j in range(t):  # a different mask on every frame
            mask[i, j, torch.randperm(grid * grid, generator=g)[:drop]] = True
    tracks = random_tracks(g, b, t, 12, size)
    return images, mask.view(b, t, grid, grid), tracks


@pytest.mark.parametrize("train", [False, True])
def test_student_tokens_of_frame_zero_alone_equal_all_frames_then_frame_zero(train):
    learner = tiny_learner().train(train)
    images, mask, _ = clip_problem()
    with torch.no_grad():
        alone = learner.tokens(images[:, [0]])
        full = learner.tokens(images)
        alone_masked = learner.tokens(images[:, [0]], mask[:, [0]])
        full_masked = learner.tokens(images, mask)
    assert alone.shape == (2, 1, 4, 4, 48)
    torch.testing.assert_close(alone, full[:, [0]], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone_masked, full_masked[:, [0]], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(alone_masked, alone, atol=1e-2)  # the mask changes the tokens
    assert torch.equal(alone_masked[mask[:, [0]]], torch.zeros_like(alone_masked[mask[:, [0]]]))
    assert not torch.allclose(full[:, [0]], full[:, [1]], atol=1e-2)  # frames differ


@pytest.mark.parametrize("masked", [False, True])
def test_mosic_loss_and_gradients_from_frame_zero_alone_equal_the_all_frames_path(masked):
    student = tiny_learner(0).train()
    teacher = copy.deepcopy(student).requires_grad_(False).eval()
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.01 * torch.randn_like(p))
    images, mask, tracks = clip_problem()
    mask = mask if masked else None
    with torch.no_grad():
        teacher_tokens = teacher.tokens(images)

    # fast path (the trainer's): the student runs on frame 0 only
    fast = student(images[:, [0]], None if mask is None else mask[:, [0]], teacher_tokens, tracks, teacher.objective, (0,))
    fast.loss.backward()
    fast_grads = {n: p.grad.clone() for n, p in student.named_parameters()}
    student.zero_grad(set_to_none=True)

    # reference: the student on all T frames, the objective reads frame 0
    t = images.shape[1]
    inputs = ObjectiveInputs(
        student.tokens(images, mask), teacher_tokens, tracks, student.backbone.patch_size,
        student_token_mask=mask, student_frames=tuple(range(t)),
    )
    reference = student.objective(inputs, teacher=teacher.objective)
    reference.loss.backward()

    torch.testing.assert_close(fast.loss, reference.loss, atol=1e-5, rtol=1e-5)
    for key, value in reference.metrics.items():
        torch.testing.assert_close(fast.metrics[key], value, atol=1e-5, rtol=1e-5, msg=key)
    assert math.isfinite(float(fast.loss.detach())) and float(fast.loss.detach()) > 0
    checked = 0
    for name, p in student.named_parameters():
        if p.grad is None:  # unused by this objective in both paths
            assert fast_grads[name] is None, name
            continue
        scale = p.grad.abs().max()
        torch.testing.assert_close(fast_grads[name], p.grad, atol=1e-5 * max(float(scale), 1e-3), rtol=1e-4, msg=name)
        checked += bool(scale > 0)
    assert checked > 10  # the backbone blocks, patch embedding and the head all got gradients
    assert student.backbone.model.patch_embed.proj.weight.grad.abs().max() > 0


# ---- 5. point reads == upsample to pixels, then index (nearest; borders and outside) -----------


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("patch", [8, 14])
def test_point_reads_equal_upsample_then_index_on_the_border_and_outside(mode, patch):
    """test_points covers bilinear at interior pixels; here nearest against nearest
    upsampling, every border pixel, and points outside the image (they read the border)."""
    g = torch.Generator().manual_seed(4)
    b, h, w, d = 2, 3, 5, 4
    height, width = h * patch, w * patch
    tokens = torch.randn(b, h, w, d, generator=g)
    corners = {"align_corners": False} if mode == "bilinear" else {}  # as sample_at_points
    up = F.interpolate(tokens.permute(0, 3, 1, 2), scale_factor=patch, mode=mode, **corners)  # (B, D, H, W)
    xs, ys = torch.arange(width), torch.arange(height)
    border = torch.cat([
        torch.stack([xs, torch.zeros_like(xs)], -1),
        torch.stack([xs, torch.full_like(xs, height - 1)], -1),
        torch.stack([torch.zeros_like(ys), ys], -1),
        torch.stack([torch.full_like(ys, width - 1), ys], -1),
    ])
    interior = torch.stack([torch.randint(0, width, (40,), generator=g), torch.randint(0, height, (40,), generator=g)], -1)
    pixels = torch.cat([border, interior]).expand(b, -1, -1)
    expected = torch.stack([up[i, :, pixels[i, :, 1], pixels[i, :, 0]].t() for i in range(b)])
    torch.testing.assert_close(sample_at_points(tokens, pixels.float(), patch, mode), expected, atol=1e-5, rtol=1e-5)

    # outside the image (within and beyond the half-pixel margin): the nearest border pixel's read
    outside = torch.tensor(
        [[-0.5, 3.0], [-7.0, -9.0], [width - 0.5, 2.0], [width + 30.0, height + 30.0], [4.0, -0.25], [1.0, height + 3.0]]
    )
    clamped = torch.stack([outside[:, 0].round().clamp(0, width - 1), outside[:, 1].round().clamp(0, height - 1)], -1)
    clamped = clamped.long().expand(b, -1, -1)
    expected = torch.stack([up[i, :, clamped[i, :, 1], clamped[i, :, 0]].t() for i in range(b)])
    got = sample_at_points(tokens, outside.expand(b, -1, -1), patch, mode)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    if mode == "nearest":  # nearest reads are token values exactly
        assert torch.isin(got, tokens).all()

