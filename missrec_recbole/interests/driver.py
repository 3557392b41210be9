"""The DPC-KNN pipeline, written once over a search backend (the definitions, and why each step is computed this
way: docs/design.md §4).

kNN lists -> log density -> density order -> delta -> centers -> assignment. The backend answers the three
searches (:class:`SearchBackend`); everything computed from the lists is done here, for every backend:

* tokens are ranked by ``log rho`` and centers by ``log rho + log delta`` (``rho`` itself may underflow to 0);
* delta from the list: a token's nearest denser token is the first denser token of its sorted kNN list when
  the list has one; the other tokens (local peaks) go to the backend;
* assignment from the list: the nearest center among the token itself and its list; an exact backend
  accepts it only when that center is strictly closer than the list's last entry (then every token at least
  as close was seen), an approximate one whenever the list holds a center; the rest go to the backend.
"""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import faiss
import numpy as np
import torch

try:  # limits numpy's BLAS pool as well
    from threadpoolctl import threadpool_limits as _threadpool_limits
except ImportError:  # pragma: no cover - optional
    _threadpool_limits = None

CHUNK_ELEMS = 1 << 18  # float64 elements per temporary of a blocked pass (2 MiB)
_ROWS = 1 << 16  # tokens per block of the list steps


@dataclass
class DPCKNNResult:
    """Output of :func:`~missrec_recbole.interests.dpc_knn`.

    Attributes:
        rho: float64 [N] local density (may underflow to 0); ``log_rho`` its logarithm, by which tokens are ranked.
        delta: float64 [N] distance to the nearest denser token (the maximal distance for the densest one).
        centers: int64 [K] token indices of the centers, by decreasing ``rho * delta`` (ties: smaller index).
        assignment: int64 [N] position in ``centers`` of each token's nearest center (ties: smaller position).
        n_peaks: tokens without a denser token among their k neighbours (including the densest one).
        k: neighbours actually used (``min(k, N - 1)``).
        mode: "exact" or "approx" (the mode run).
        knn: int64 [N, k] the kNN lists (self excluded), sorted by (distance, index); approximate in approx mode.
        timings: seconds per phase: ``knn_s``, ``density_s``, ``delta_s``, ``assign_s`` (approx mode also
            ``kmeans_s`` and ``coarse_s``, both part of ``knn_s``).
        state: approx mode: a ``DPCKNNState`` to pass as ``state=`` to the next refresh; exact mode: the
            ``state`` passed in.
        info: approx mode: parameters and search counts.
    """

    rho: np.ndarray
    delta: np.ndarray
    centers: np.ndarray
    assignment: np.ndarray
    n_peaks: int = 0
    k: int = 0
    mode: str = "exact"
    knn: np.ndarray | None = None
    timings: dict = field(default_factory=dict)
    state: object = None
    info: dict = field(default_factory=dict)
    log_rho: np.ndarray | None = None


class SearchBackend:
    """The searches of one DPC-KNN run over the tokens ``x`` [N, d] (N >= 2).

    ``mode`` names the result's mode; ``certified`` is True when the kNN lists are exact (the list
    assignment is then accepted only where it is provably right). ``timings`` and ``info`` are merged into the
    result; ``state`` is what the next refresh may start from.
    """

    mode = "exact"
    certified = True

    def __init__(self, x: np.ndarray, state=None):
        self.x = x
        self.state = state
        self.timings: dict = {}
        self.info: dict = {}

    def knn(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Each token's nearest tokens, self excluded: (ids [N, m], squared distances [N, m]), m >= k,
        sorted by (distance, id)."""
        raise NotImplementedError

    def nearest_denser(self, points: np.ndarray, order: np.ndarray, rank: np.ndarray) -> np.ndarray:
        """Squared distance from each of ``points`` to its nearest denser token (``rank`` smaller;
        ``order`` lists the tokens densest first, ``rank`` is its inverse). The densest token is never asked."""
        raise NotImplementedError

    def nearest_center(self, queries: np.ndarray, centers: np.ndarray) -> np.ndarray:
        """Position in ``centers`` (token ids) of each query token's nearest center (ties: smaller position)."""
        raise NotImplementedError

    def finish(self, timings: dict):
        """The result's ``state`` once the run is complete (default: the state passed in)."""
        return self.state

    def close(self) -> None:
        """Release work buffers (called when the run ends, also on error)."""


def cluster(make_backend, n_centers: int, k: int) -> DPCKNNResult:
    """DPC-KNN on N >= 2 validated tokens: ``make_backend()`` gives the :class:`SearchBackend` (built inside
    the timed kNN phase), 1 <= k < N, 1 <= n_centers <= N."""
    t = {}
    t0 = time.perf_counter()
    backend = make_backend()
    try:
        knn, knn_d2 = backend.knn(k)
        t["knn_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        log_rho = -(knn_d2[:, :k].sum(axis=1, dtype=np.float64) / k)
        order, rank = density_order(log_rho)
        t["density_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        delta2, peaks, n_peaks = delta_from_lists(knn, knn_d2, rank, k)
        top = int(order[0])
        peaks = peaks[peaks != top]
        delta2[peaks] = backend.nearest_denser(peaks, order, rank)
        delta2[top] = max_sqdist(backend.x, top)
        delta = np.sqrt(delta2)
        t["delta_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        centers = top_centers(log_rho, delta, n_centers)
        assignment, pending = assign_from_lists(centers, knn, knn_d2, backend.certified)
        assignment[pending] = backend.nearest_center(pending, centers)
        t["assign_s"] = time.perf_counter() - t0

        timings = {**backend.timings, **t}
        return DPCKNNResult(rho=np.exp(log_rho), log_rho=log_rho, delta=delta, centers=centers, assignment=assignment,
                            n_peaks=n_peaks, k=k, mode=backend.mode, knn=knn[:, :k].astype(np.int64), timings=timings,
                            state=backend.finish(timings), info=backend.info)
    finally:
        backend.close()


def single_token(mode: str, state) -> DPCKNNResult:
    """N == 1: the token is the only center (rho = 1, delta = 0)."""
    return DPCKNNResult(rho=np.ones(1), log_rho=np.zeros(1), delta=np.zeros(1), centers=np.zeros(1, dtype=np.int64),
                        assignment=np.zeros(1, dtype=np.int64), n_peaks=1, k=0, mode=mode,
                        knn=np.zeros((1, 0), dtype=np.int64), state=state)


# ----------------------------------------------------------------------------------------------
# the steps on the kNN lists


def density_order(log_rho: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, rank): tokens densest first (ties: smaller index first) and each token's position."""
    n = log_rho.size
    order = np.lexsort((np.arange(n), -log_rho))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    return order, rank


def delta_from_lists(knn: np.ndarray, knn_d2: np.ndarray, rank: np.ndarray, k: int):
    """(squared delta [N] float64, inf where the list has no denser token; those tokens; n_peaks counted on
    the first k entries)."""
    n = rank.size
    delta2 = np.empty(n, dtype=np.float64)
    has = np.empty(n, dtype=bool)
    n_peaks = 0
    for s in range(0, n, _ROWS):  # row blocks: bounded temporaries
        e = min(n, s + _ROWS)
        denser = rank[knn[s:e]] < rank[s:e, None]
        has[s:e] = denser.any(axis=1)
        n_peaks += int((~denser[:, :k].any(axis=1)).sum())
        delta2[s:e] = np.where(has[s:e], knn_d2[s:e][np.arange(e - s), denser.argmax(axis=1)], np.inf)
    return delta2, np.flatnonzero(~has), n_peaks


def top_centers(log_rho: np.ndarray, delta: np.ndarray, n_centers: int) -> np.ndarray:
    """The ``n_centers`` tokens of largest ``rho * delta`` (ties: smaller index first), ranked in log space."""
    with np.errstate(divide="ignore"):  # delta = 0 (duplicates): log 0 = -inf, last like rho * 0
        log_score = log_rho + np.log(delta)
    return np.lexsort((np.arange(log_rho.size), -log_score))[:n_centers].astype(np.int64)


def assign_from_lists(centers: np.ndarray, knn: np.ndarray, knn_d2: np.ndarray, certified: bool):
    """Nearest center among each token itself (distance 0 if it is a center) and its list (ties: smaller
    position). Returns (assignment [N], tokens still to search): with ``certified`` those whose best candidate
    is not strictly closer than their list's last entry, else those without a center in their list."""
    n = knn.shape[0]
    pos = np.full(n, -1, dtype=np.int64)
    pos[centers] = np.arange(centers.size)
    big = np.iinfo(np.int64).max
    out = np.empty(n, dtype=np.int64)
    ok = np.empty(n, dtype=bool)
    for s in range(0, n, _ROWS):
        e = min(n, s + _ROWS)
        cand = np.concatenate([pos[s:e, None], pos[knn[s:e]]], axis=1)
        cand_d2 = np.concatenate([np.zeros((e - s, 1), knn_d2.dtype), knn_d2[s:e]], axis=1)
        cand_d2[cand < 0] = np.inf
        cand[cand < 0] = big
        best = np.lexsort((cand, cand_d2), axis=-1)[:, 0]
        r = np.arange(e - s)
        out[s:e] = cand[r, best]
        ok[s:e] = cand_d2[r, best] < knn_d2[s:e, -1] if certified else cand[r, best] != big
    return out, np.flatnonzero(~ok)


# ----------------------------------------------------------------------------------------------
# shared by the backends


def max_sqdist(x: np.ndarray, i: int) -> float:
    """Exact ``max_j ||x_i - x_j||^2`` (float64)."""
    xi = x[i].astype(np.float64)
    best = 0.0
    step = max(1, CHUNK_ELEMS // x.shape[1])
    for s in range(0, x.shape[0], step):
        diff = np.subtract(x[s : s + step], xi, dtype=np.float64)
        diff *= diff
        best = max(best, float(diff.sum(axis=1).max()))
    return best


def check_finite(x: np.ndarray, what: str = "tokens contain NaN or infinite values") -> None:
    rows = max(1, CHUNK_ELEMS // x.shape[1])
    for s in range(0, x.shape[0], rows):
        if not np.isfinite(x[s : s + rows]).all():
            raise ValueError(what)


@contextmanager
def thread_limit(n_threads: int | None):
    """FAISS (OpenMP), BLAS and torch use ``n_threads`` inside the block (None: unchanged); restored after, so a
    DPC-KNN call leaves the caller's (training's) thread settings as they were."""
    if n_threads is None:
        yield
        return
    prev_omp, prev_torch = faiss.omp_get_max_threads(), torch.get_num_threads()
    faiss.omp_set_num_threads(n_threads)
    torch.set_num_threads(n_threads)
    try:
        with _threadpool_limits(limits=n_threads) if _threadpool_limits is not None else nullcontext():
            yield
    finally:
        faiss.omp_set_num_threads(prev_omp)
        torch.set_num_threads(prev_torch)
