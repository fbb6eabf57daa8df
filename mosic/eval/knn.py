"""k-nearest-neighbour search over a memory of vectors (faiss), for retrieval evaluations.

:class:`NearestNeighbors` wraps three faiss set-ups behind ``add`` / ``search``:

* ``index="exact"``: ``IndexFlatIP`` (or ``IndexFlatL2``), brute force, exact. Cost per
  query is O(M * D); fine up to about a million memory vectors on a CPU and several
  million on a GPU.
* ``index="ivf"``: ``IndexIVFFlat``. A k-means coarse quantiser with ``nlist`` cells
  (default ``4 * sqrt(M)``) is trained on a sample of the memory; a query scans only the
  ``nprobe`` cells nearest to it. Vectors are stored uncompressed, so the scores returned
  are exact inner products / distances; only *which* vectors get scanned is
  approximate. Search cost ~ ``nprobe / nlist`` of exact search (plus the coarse
  assignment); recall@k rises with ``nprobe`` and equals exact search at
  ``nprobe = nlist``. The default ``nprobe=64`` scans 64 of ~12,600 cells (~0.5%) of a
  10M-vector memory, ~200x less work than exact search; recall depends on how clustered
  the features are (patch features cluster well, random vectors do not), so compare
  against ``index="exact"`` on a sample of queries before trusting a setting, and raise
  ``nprobe`` when neighbours matter more than speed.
* ``index="auto"``: exact below ``auto_threshold`` vectors (1e6), IVF above.

The index is built lazily: :meth:`add` buffers vectors until the first :meth:`search`
(or an explicit :meth:`build`), since ``"auto"`` and IVF training need the whole
memory. Vectors added after the build go straight into the index.

GPU: with ``use_gpu="auto"`` the index moves to all GPUs (``faiss.index_cpu_to_all_gpus``)
when this faiss build has GPU support (``faiss.get_num_gpus() > 0``) and torch sees CUDA;
``use_gpu=True`` insists on it, ``False`` stays on the CPU.
"""

from __future__ import annotations

import math
from typing import Literal

import faiss
import numpy as np
import torch

IndexKind = Literal["exact", "ivf", "auto"]

#: memories at least this large get an IVF index under ``index="auto"``
AUTO_THRESHOLD = 1_000_000
#: training points per IVF cell (faiss warns below 39; k-means cost grows with it)
TRAIN_POINTS_PER_LIST = 64


def _as_float32(x, dim: int, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"{what} must be (N, {dim}) float32, got shape {x.shape}")
    return x


def gpu_available() -> bool:
    """True when faiss was built with GPU support, sees a GPU, and torch sees CUDA."""
    return hasattr(faiss, "index_cpu_to_all_gpus") and faiss.get_num_gpus() > 0 and torch.cuda.is_available()


class NearestNeighbors:
    """k-NN search (faiss) over a memory bank of (M, D) float32 vectors.

    Args:
        dim: vector dimension D.
        metric: ``"ip"`` (inner product, cosine on L2-normalised vectors; larger is
            nearer) or ``"l2"`` (squared Euclidean distance; smaller is nearer).
        index: ``"exact"``, ``"ivf"`` or ``"auto"`` (see the module docstring).
        nlist: IVF cells; default ``round(4 * sqrt(M))``, clamped to [1, M].
        nprobe: IVF cells scanned per query (clamped to nlist).
        use_gpu: ``"auto"``, True or False.
        auto_threshold: memory size from which ``"auto"`` picks IVF.
        seed: seeds the IVF training sample and its k-means.
        query_chunk: queries per faiss call, bounding the memory of one search.
    """

    def __init__(
        self,
        dim: int,
        metric: Literal["ip", "l2"] = "ip",
        index: IndexKind = "auto",
        nlist: int | None = None,
        nprobe: int = 64,
        use_gpu: bool | Literal["auto"] = "auto",
        *,
        auto_threshold: int = AUTO_THRESHOLD,
        seed: int = 0,
        query_chunk: int = 65536,
    ):
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if metric not in ("ip", "l2"):
            raise ValueError(f"metric must be 'ip' or 'l2', got {metric!r}")
        if index not in ("exact", "ivf", "auto"):
            raise ValueError(f"index must be 'exact', 'ivf' or 'auto', got {index!r}")
        if nlist is not None and nlist < 1:
            raise ValueError(f"nlist must be >= 1, got {nlist}")
        if nprobe < 1 or query_chunk < 1:
            raise ValueError(f"nprobe and query_chunk must be >= 1, got {nprobe}, {query_chunk}")
        if use_gpu not in ("auto", True, False):
            raise ValueError(f"use_gpu must be 'auto', True or False, got {use_gpu!r}")
        if use_gpu is True and not gpu_available():
            raise RuntimeError(
                "use_gpu=True but faiss has no GPU here (needs a faiss GPU build, faiss.get_num_gpus() > 0 "
                "and torch.cuda.is_available()); pass use_gpu='auto' to fall back to the CPU"
            )
        self.dim, self.metric, self.index_kind = dim, metric, index
        self.nlist, self.nprobe = nlist, nprobe
        self.use_gpu = gpu_available() if use_gpu == "auto" else bool(use_gpu)
        self.auto_threshold, self.seed, self.query_chunk = auto_threshold, seed, query_chunk
        self._pending: list[np.ndarray] = []
        self._index = None
        #: what was built: "exact" or "ivf" (None before :meth:`build`)
        self.kind: str | None = None

    # ------------------------------------------------------------------ memory

    @property
    def ntotal(self) -> int:
        """Vectors in the memory (added so far, built or not)."""
        built = self._index.ntotal if self._index is not None else 0
        return built + sum(len(x) for x in self._pending)

    def __len__(self) -> int:
        return self.ntotal

    def add(self, x: np.ndarray | torch.Tensor) -> None:
        """Add (N, D) vectors to the memory; their ids continue from :attr:`ntotal`."""
        x = _as_float32(x, self.dim, "memory vectors")
        if not len(x):
            return
        if self._index is not None:
            self._index.add(x)
        else:
            self._pending.append(x)

    def build(self) -> NearestNeighbors:
        """Build the index from the vectors added so far (done by the first search)."""
        if self._index is not None:
            return self
        total = self.ntotal
        if total == 0:
            raise ValueError("the memory is empty: add vectors before building or searching")
        kind = self.index_kind
        if kind == "auto":
            kind = "exact" if total < self.auto_threshold else "ivf"
        faiss_metric = faiss.METRIC_INNER_PRODUCT if self.metric == "ip" else faiss.METRIC_L2
        if kind == "exact":
            index = faiss.IndexFlatIP(self.dim) if self.metric == "ip" else faiss.IndexFlatL2(self.dim)
            index = self._to_gpu(index)
        else:
            nlist = self.nlist or round(4 * math.sqrt(total))
            nlist = max(1, min(nlist, total))
            quantizer = faiss.IndexFlatIP(self.dim) if self.metric == "ip" else faiss.IndexFlatL2(self.dim)
            cpu_index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss_metric)
            cpu_index.cp.seed = self.seed
            cpu_index.cp.min_points_per_centroid = 1  # small memories: no "too few points" warning
            cpu_index.cp.max_points_per_centroid = TRAIN_POINTS_PER_LIST
            index = self._to_gpu(cpu_index)
            index.train(self._training_sample(min(total, TRAIN_POINTS_PER_LIST * nlist)))
            self.nlist = nlist
            self._quantizer = quantizer  # the CPU index does not own it; keep it alive
            self._set_nprobe(index, min(self.nprobe, nlist))
        # add chunk by chunk, dropping each buffer: peak memory ~ one copy of the memory
        pending, self._pending = self._pending[::-1], []
        while pending:
            index.add(pending.pop())
        self._index, self.kind = index, kind
        return self

    def _training_sample(self, n: int) -> np.ndarray:
        total = sum(len(x) for x in self._pending)
        if n >= total:
            return np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        rows = np.sort(np.random.default_rng(self.seed).choice(total, n, replace=False))
        offsets = np.cumsum([0] + [len(x) for x in self._pending])
        parts = []
        for i, x in enumerate(self._pending):
            sel = rows[(rows >= offsets[i]) & (rows < offsets[i + 1])] - offsets[i]
            if len(sel):
                parts.append(x[sel])
        return np.ascontiguousarray(np.concatenate(parts))

    def _to_gpu(self, index):
        if not self.use_gpu:
            return index
        # one GPU: a GpuIndex; several: replicas of it (each GPU holds the whole memory)
        return faiss.index_cpu_to_all_gpus(index)

    def _set_nprobe(self, index, nprobe: int) -> None:
        space = faiss.GpuParameterSpace() if self.use_gpu else faiss.ParameterSpace()
        space.set_index_parameter(index, "nprobe", nprobe)
        self.nprobe = nprobe

    # ------------------------------------------------------------------ search

    def search(self, queries: np.ndarray | torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest memory vectors of each query.

        Returns:
            ``scores`` (Q, k) float32 (inner products for ``"ip"``, best first; squared
            distances for ``"l2"``, nearest first) and ``indices`` (Q, k) int64 ids in
            the order added. With ``k > ntotal`` (or an IVF search whose probed cells hold
            fewer than k vectors) missing slots have index -1 and score -inf for
            ``"ip"`` / +inf for ``"l2"``.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = _as_float32(queries, self.dim, "queries")
        self.build()
        scores = np.empty((len(q), k), dtype=np.float32)
        indices = np.empty((len(q), k), dtype=np.int64)
        for start in range(0, len(q), self.query_chunk):
            stop = start + self.query_chunk
            s, i = self._index.search(q[start:stop], k)
            scores[start:stop], indices[start:stop] = s, i
        missing = indices < 0
        if missing.any():
            scores[missing] = -np.inf if self.metric == "ip" else np.inf
        return scores, indices

    def __repr__(self) -> str:
        extra = f", nlist={self.nlist}, nprobe={self.nprobe}" if self.kind == "ivf" else ""
        return (
            f"NearestNeighbors(dim={self.dim}, metric={self.metric!r}, index={self.index_kind!r}, "
            f"built={self.kind!r}, ntotal={self.ntotal}, gpu={self.use_gpu}{extra})"
        )
