"""Nearest-neighbour search (mosic.eval.knn): faiss exact and IVF search against brute force."""

import math

import numpy as np
import pytest
import torch

from mosic.eval.knn import NearestNeighbors


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute_force(q, m, k):
    scores, indices = torch.topk(torch.from_numpy(q) @ torch.from_numpy(m).T, k, dim=1)
    return scores.numpy(), indices.numpy()


def test_exact_search_matches_brute_force_in_chunks():
    rng = np.random.default_rng(0)
    memory, queries = _unit(rng, 600, 32), _unit(rng, 50, 32)
    knn = NearestNeighbors(32, index="exact", use_gpu=False, query_chunk=7)
    knn.add(memory[:250])
    knn.add(torch.from_numpy(memory[250:]))  # tensors too; ids continue
    scores, indices = knn.search(queries, 10)
    ref_scores, ref_indices = _brute_force(queries, memory, 10)
    assert knn.kind == "exact" and len(knn) == 600
    assert scores.shape == indices.shape == (50, 10) and indices.dtype == np.int64
    np.testing.assert_array_equal(indices, ref_indices)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def test_ivf_with_all_lists_probed_equals_exact_and_auto_picks_by_size():
    rng = np.random.default_rng(1)
    memory, queries = _unit(rng, 800, 16), _unit(rng, 40, 16)
    exact = NearestNeighbors(16, index="exact", use_gpu=False)
    exact.add(memory)
    ivf = NearestNeighbors(16, index="ivf", nlist=16, nprobe=16, use_gpu=False)
    ivf.add(memory)
    s_exact, i_exact = exact.search(queries, 5)
    s_ivf, i_ivf = ivf.search(queries, 5)
    assert ivf.kind == "ivf" and ivf.nlist == 16 and ivf.nprobe == 16
    np.testing.assert_array_equal(i_ivf, i_exact)
    np.testing.assert_allclose(s_ivf, s_exact, atol=1e-5)

    # default nlist ~ 4 sqrt(M); nprobe is clamped to it
    default = NearestNeighbors(16, index="ivf", use_gpu=False)
    default.add(memory)
    default.build()
    assert default.nlist == round(4 * math.sqrt(800)) and default.nprobe == min(64, default.nlist)

    auto = NearestNeighbors(16, index="auto", use_gpu=False)
    auto.add(memory)
    auto.build()
    assert auto.kind == "exact"  # far below 1e6 vectors
    big = NearestNeighbors(16, index="auto", use_gpu=False, auto_threshold=500)
    big.add(memory)
    big.build()
    assert big.kind == "ivf"


def test_knn_more_neighbours_than_memory_and_errors():
    rng = np.random.default_rng(2)
    knn = NearestNeighbors(8, use_gpu=False)
    with pytest.raises(ValueError, match="empty"):
        knn.search(_unit(rng, 2, 8), 1)
    knn.add(_unit(rng, 3, 8))
    scores, indices = knn.search(_unit(rng, 2, 8), 5)
    assert (indices[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()
    knn.add(_unit(rng, 2, 8))  # after the build: straight into the index
    assert knn.search(_unit(rng, 1, 8), 5)[1].min() >= 0
    with pytest.raises(ValueError, match=r"\(N, 8\)"):
        knn.add(np.zeros((2, 4), np.float32))
