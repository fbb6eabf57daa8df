import copy
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from conftest import tiny_config
from mosic import PostPretrainer
from mosic.data import SyntheticVideos
from mosic.objectives import OBJECTIVES, ObjectiveInputs, SpaceTimeKMeansObjective
from mosic.objectives.spacetime_kmeans import batched_kmeans, sinusoidal_position_encoding_3d
from mosic.trackers import Tracks

TAU = 0.1
SMALL_HEAD = {"projection_dim": 4, "head_hidden_dims": ()}  # cheap to build


def inputs_for(student, teacher, mask=None):
    """ObjectiveInputs for (B, 1, h, w, D) student and (B, T, h, w, D) teacher tokens (tracks unused)."""
    b, t = teacher.shape[:2]
    tracks = Tracks(torch.zeros(b, t, 1, 2), torch.ones(b, t, 1, dtype=torch.bool))
    return ObjectiveInputs(student, teacher, tracks, patch_size=8, student_token_mask=mask)


def planted_points(sizes, dim, seed, spread=0.02):
    """Points of well-separated Gaussian blobs (one per size) in random order, and their blob ids."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(sizes), dim, generator=g) * 3
    ids = torch.cat([torch.full((s,), i) for i, s in enumerate(sizes)])
    ids = ids[torch.randperm(len(ids), generator=g)]
    return centres[ids] + spread * torch.randn(len(ids), dim, generator=g), ids


def matches_up_to_permutation(found, planted):
    """The contingency table's best one-to-one matching covers every point."""
    table = np.zeros((int(planted.max()) + 1, int(found.max()) + 1), dtype=np.int64)
    np.add.at(table, (planted.numpy(), found.numpy()), 1)
    rows, cols = linear_sum_assignment(-table)
    return table[rows, cols].sum() == len(planted)


# ---- k-means ------------------------------------------------------------------------------
def test_batched_kmeans_recovers_planted_clusters_in_each_clip():
    x0, ids0 = planted_points([30, 10, 50, 30], dim=6, seed=1)
    x1, ids1 = planted_points([25, 25, 40, 30], dim=6, seed=2)
    assign, centres = batched_kmeans(torch.stack([x0, x1]), 4, 20, torch.Generator().manual_seed(0))
    assert assign.shape == (2, 120) and centres.shape == (2, 4, 6)
    assert matches_up_to_permutation(assign[0], ids0)
    assert matches_up_to_permutation(assign[1], ids1)
    # the centres are the blob means
    for b, (x, ids) in enumerate(((x0, ids0), (x1, ids1))):
        for k in range(4):
            assert torch.allclose(centres[b, k], x[assign[b] == k].mean(0), atol=1e-5)


def test_batched_kmeans_is_deterministic_for_a_seed():
    x = torch.randn(3, 64, 5, generator=torch.Generator().manual_seed(0))
    a, _ = batched_kmeans(x, 4, 10, torch.Generator().manual_seed(7))
    b, _ = batched_kmeans(x, 4, 10, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_batched_kmeans_survives_identical_points():
    assign, centres = batched_kmeans(torch.ones(2, 10, 3), 3, 5, torch.Generator().manual_seed(0))
    assert torch.isfinite(centres).all() and (assign >= 0).all() and (assign < 3).all()


# ---- position code --------------------------------------------------------------------------
def test_position_encoding_shape_range_and_distinct_codes():
    pe = sinusoidal_position_encoding_3d(3, 4, 5, 24)
    assert pe.shape == (3, 4, 5, 24)
    assert pe.min() >= -1 and pe.max() <= 1
    flat = pe.reshape(-1, 24)
    d = torch.cdist(flat, flat)
    assert (d + torch.eye(60) * 1e3).min() > 1e-3  # every position its own code
    # along an axis, the code distance grows with the coordinate distance (no wrap-around)
    row = pe[0, 0]  # the 5 columns of one row
    dist_from_first = (row - row[0]).norm(dim=-1)
    assert (dist_from_first[1:] > dist_from_first[:-1]).all()
    with pytest.raises(ValueError, match="multiple of 6"):
        sinusoidal_position_encoding_3d(2, 2, 2, 8)


def _connected(points: set[tuple[int, int, int]]) -> bool:
    """Whether a set of (t, y, x) grid cells is connected through its 6-neighbourhood."""
    start = next(iter(points))
    seen, todo = {start}, [start]
    while todo:
        t, y, x = todo.pop()
        for dt, dy, dx in ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)):
            n = (t + dt, y + dy, x + dx)
            if n in points and n not in seen:
                seen.add(n)
                todo.append(n)
    return len(seen) == len(points)


def test_identical_features_split_into_compact_space_time_blocks():
    obj = SpaceTimeKMeansObjective(
        embed_dim=8, num_clusters=4, kmeans_iterations=30, max_cluster_fraction=1.0, position_weight=10.0
    )
    tokens = torch.ones(2, 4, 6, 6, 8)  # every token the same feature: only position can tell them apart
    labels = obj.pseudo_labels(tokens)
    assert labels.shape == (2, 4, 6, 6)
    for clip in labels:
        found = sorted(clip.unique().tolist())
        assert found == [0, 1, 2, 3]  # four non-empty clusters
        for k in found:
            cells = {tuple(c) for c in (clip == k).nonzero().tolist()}
            assert len(cells) < 0.5 * clip.numel() and _connected(cells)


def test_position_weight_zero_clusters_features_only():
    x, ids = planted_points([16, 16, 16, 16], dim=8, seed=3)
    obj = SpaceTimeKMeansObjective(embed_dim=8, num_clusters=4, max_cluster_fraction=1.0, position_weight=0.0)
    labels = obj.pseudo_labels(x.view(1, 4, 4, 4, 8))
    assert matches_up_to_permutation(labels.flatten(), ids)


# ---- the 40% rule ---------------------------------------------------------------------------
@pytest.mark.parametrize("max_fraction", [0.4, 1.0])
def test_over_size_clusters_are_abandoned(max_fraction):
    x, ids = planted_points([30, 10, 10], dim=8, seed=4)  # blob 0: 60% of the 50 tokens
    obj = SpaceTimeKMeansObjective(
        embed_dim=8, num_clusters=3, position_weight=0.0, max_cluster_fraction=max_fraction
    )
    labels = obj.pseudo_labels(x.view(1, 2, 5, 5, 8)).flatten()
    if max_fraction < 0.6:
        assert torch.equal(labels == -1, ids == 0)
        assert labels[ids == 1].unique().numel() == 1 and labels[ids == 2].unique().numel() == 1
        assert labels[ids == 1][0] != labels[ids == 2][0] and (labels[ids > 0] >= 0).all()
    else:
        assert (labels >= 0).all() and matches_up_to_permutation(labels, ids)


# ---- the loss on a hand-built example -------------------------------------------------------
def identity_objective(**kwargs):
    """D = 2 features, a single identity Linear as the head: the affinity is cosine / tau."""
    obj = SpaceTimeKMeansObjective(embed_dim=2, projection_dim=2, head_hidden_dims=(), temperature=TAU, **kwargs)
    with torch.no_grad():
        obj.head.mlp[0].weight.copy_(torch.eye(2))
        obj.head.mlp[0].bias.zero_()
    return obj


REFS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.5]])  # teacher frame 1 (2 x 2 tokens)
REF_LABELS = [0, 1, -1, 1]  # token 2 abandoned
QUERIES = torch.tensor([[1.0, 0.2], [0.3, 1.0], [1.0, 1.0], [-1.0, -0.3]])  # student frame 0
QUERY_LABELS = [0, 1, -1, 0]


def hand_example(query_labels=QUERY_LABELS):
    teacher = torch.zeros(1, 2, 2, 2, 2)
    teacher[0, 0] = QUERIES.view(2, 2, 2) * 2  # unused by the loss (only clustered)
    teacher[0, 1] = REFS.view(2, 2, 2)
    student = QUERIES.view(1, 1, 2, 2, 2).clone()
    labels = torch.tensor([query_labels, REF_LABELS]).view(1, 2, 2, 2)
    return student, teacher, labels


def expected_loss(queries, refs=REFS):
    """-log Y_hat[label] by hand: softmax over the kept references, then the mass of each cluster."""
    terms = []
    for q in queries:
        zq = QUERIES[q] / QUERIES[q].norm()
        num = {0: 0.0, 1: 0.0}
        for r, label in enumerate(REF_LABELS):
            if label >= 0:
                num[label] += math.exp(float(zq @ (refs[r] / refs[r].norm())) / TAU)
        terms.append(-math.log(num[QUERY_LABELS[q]] / (num[0] + num[1])))
    return sum(terms) / len(terms)


def test_loss_on_a_hand_computed_example():
    obj = identity_objective()
    student, teacher, labels = hand_example()
    obj.pseudo_labels = lambda tokens: labels
    out = obj(inputs_for(student, teacher), teacher=obj)
    expected = expected_loss([0, 1, 3])  # token 2's own label is -1
    assert float(out.loss.detach()) == pytest.approx(expected, abs=1e-5)
    assert float(out.metrics["loss"]) == pytest.approx(expected, abs=1e-5)
    assert float(out.metrics["clusters_kept"]) == 2
    assert float(out.metrics["ignored_fraction"]) == pytest.approx(2 / 8)
    assert 0 <= float(out.metrics["agreement"]) <= 1


def test_the_references_go_through_the_teacher_objectives_head():
    student_obj, teacher_obj = identity_objective(), identity_objective()
    with torch.no_grad():
        teacher_obj.head.mlp[0].weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))  # swaps the two axes
    student, teacher, labels = hand_example()
    student_obj.pseudo_labels = lambda tokens: labels
    out = student_obj(inputs_for(student, teacher), teacher=teacher_obj)
    assert float(out.loss.detach()) == pytest.approx(expected_loss([0, 1, 3], refs=REFS.flip(-1)), abs=1e-5)


def test_frame0_tokens_of_clusters_absent_from_the_references_are_skipped():
    obj = identity_objective(num_clusters=3)
    student, teacher, labels = hand_example(query_labels=[0, 1, -1, 2])  # cluster 2 only on frame 0
    obj.pseudo_labels = lambda tokens: labels
    out = obj(inputs_for(student, teacher), teacher=obj)
    assert float(out.loss.detach()) == pytest.approx(expected_loss([0, 1]), abs=1e-5)


def test_dropped_student_tokens_do_not_contribute():
    obj = identity_objective()
    student, teacher, labels = hand_example()
    obj.pseudo_labels = lambda tokens: labels
    mask = torch.zeros(1, 1, 2, 2, dtype=torch.bool)
    mask[0, 0, 0, 1] = True  # query token 1
    out = obj(inputs_for(student, teacher, mask), teacher=obj)
    assert float(out.loss.detach()) == pytest.approx(expected_loss([0, 3]), abs=1e-5)


def test_gradients_reach_only_the_student():
    torch.manual_seed(0)
    student_obj = SpaceTimeKMeansObjective(embed_dim=8, num_clusters=3, projection_dim=4, head_hidden_dims=(16,))
    teacher_obj = copy.deepcopy(student_obj)
    teacher = torch.randn(2, 3, 4, 4, 8, requires_grad=True)
    student = torch.randn(2, 1, 4, 4, 8, requires_grad=True)
    student_obj(inputs_for(student, teacher), teacher=teacher_obj).loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student_obj.head.parameters())
    assert teacher.grad is None
    assert all(p.grad is None for p in teacher_obj.parameters())


def test_matching_student_scores_lower_than_a_shuffled_one():
    g = torch.Generator().manual_seed(0)
    # four static regions (quadrants) with distinct features, plus noise, over 3 frames
    protos = torch.randn(4, 8, generator=g)
    region = torch.tensor([[0, 0, 1, 1]] * 2 + [[2, 2, 3, 3]] * 2)  # (4, 4)
    teacher = protos[region].expand(1, 3, 4, 4, 8) + 0.05 * torch.randn(1, 3, 4, 4, 8, generator=g)
    obj = SpaceTimeKMeansObjective(
        embed_dim=8, num_clusters=4, max_cluster_fraction=1.0, projection_dim=8, head_hidden_dims=()
    )
    with torch.no_grad():
        obj.head.mlp[0].weight.copy_(torch.eye(8))
        obj.head.mlp[0].bias.zero_()
    same = teacher[:, :1].clone()
    shuffled = same.reshape(1, 1, 16, 8)[:, :, torch.randperm(16, generator=g)].reshape(1, 1, 4, 4, 8)
    loss_same = obj(inputs_for(same, teacher), teacher=obj)
    loss_shuffled = obj(inputs_for(shuffled, teacher), teacher=obj)
    assert float(loss_same.metrics["clusters_kept"]) == 4
    assert float(loss_same.loss.detach()) < 0.5 * float(loss_shuffled.loss.detach())
    assert float(loss_same.metrics["agreement"]) == 1.0


def test_bf16_autocast_gives_an_fp32_loss():
    torch.manual_seed(0)
    obj = SpaceTimeKMeansObjective(embed_dim=8, num_clusters=3, projection_dim=4, head_hidden_dims=(16,))
    teacher = torch.randn(2, 3, 4, 4, 8).bfloat16()
    student = torch.randn(2, 1, 4, 4, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = obj(inputs_for(student, teacher), teacher=obj)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    assert torch.isfinite(student.grad).all()


# ---- options --------------------------------------------------------------------------------
def test_reference_frames_and_bad_options_fail_fast():
    obj = SpaceTimeKMeansObjective(embed_dim=4, num_reference_frames=2, **SMALL_HEAD)
    assert list(obj.reference_frames(5)) == [3, 4]
    assert list(SpaceTimeKMeansObjective(embed_dim=4, **SMALL_HEAD).reference_frames(5)) == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="num_reference_frames"):
        obj.reference_frames(2)
    with pytest.raises(ValueError, match="T >= 2"):
        SpaceTimeKMeansObjective(embed_dim=4, **SMALL_HEAD).reference_frames(1)
    with pytest.raises(ValueError, match="num_clusters"):
        SpaceTimeKMeansObjective(embed_dim=4, num_clusters=1)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="max_cluster_fraction"):
            SpaceTimeKMeansObjective(embed_dim=4, max_cluster_fraction=bad)
    with pytest.raises(ValueError, match="position_dim"):
        SpaceTimeKMeansObjective(embed_dim=4, position_dim=10)
    assert SpaceTimeKMeansObjective(embed_dim=384, **SMALL_HEAD).position_dim == 48
    created = OBJECTIVES.create("spacetime-kmeans", embed_dim=4, num_clusters=3, **SMALL_HEAD)
    assert isinstance(created, SpaceTimeKMeansObjective) and not created.uses_tracks


# ---- end to end -----------------------------------------------------------------------------
def test_two_training_steps_without_a_tracker():
    config = tiny_config(
        **{
            "train.max_steps": 2,
            "objective.kwargs": {"num_clusters": 3, "kmeans_iterations": 5},
        }
    )
    trainer = PostPretrainer(backbone="vit-tiny", objective="spacetime-kmeans", pretrained=False, config=config)
    assert isinstance(trainer.learner.objective, SpaceTimeKMeansObjective)
    assert trainer.learner.objective.num_clusters == 3
    trainer.fit(SyntheticVideos(num_videos=4, num_frames=8, size=32, seed=0))
    assert trainer.step == 2 and len(trainer.history) == 2
    for record in trainer.history:
        assert math.isfinite(record["loss"])
        assert {"clusters_kept", "ignored_fraction", "agreement"} <= set(record)
    assert trainer._tracker is None
