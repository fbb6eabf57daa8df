"""Distributed training's fast paths (mosic.distributed, gloo ranks launched by this test)
equal the straightforward single-process computations they replace:

* distributed Sinkhorn (column sums all-reduced) == Sinkhorn on the concatenated rows;
* the distributed MoSiC loss, its metrics and DDP-averaged gradients == one process on
  the global batch.
"""

from __future__ import annotations

import copy
import itertools
import os

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from helpers.tracks import random_tracks
from mosic.objectives import MoSiCObjective, ObjectiveInputs
from mosic.sinkhorn import sinkhorn

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
