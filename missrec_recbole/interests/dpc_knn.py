"""DPC-KNN (density peaks clustering on k nearest neighbours) without an N x N matrix.

Two modes (:func:`dpc_knn`, ``mode=``): **exact** (this module; equal to the brute-force
definition below, O(N^2 d) time with FAISS flat search) and **approx** for large N
(:mod:`missrec_recbole.interests.approx`: IVF cell join; timings in benchmarks/README.md); ``mode="auto"`` picks exact up to ``exact_max_tokens`` (:data:`EXACT_MAX_TOKENS`) tokens.
The rest of this docstring describes the definitions and the exact algorithm.

MISSRec (Wang et al., MM 2023) discovers interests by clustering all item tokens with DPC-KNN
(density peaks clustering, Rodriguez & Laio 2014, with the kNN density of Du et al. 2016); see
docs/design.md §4.  For tokens t_1..t_N (Euclidean distances, ``kNN(i)`` = the k nearest
neighbours of i, excluding i itself but including duplicates of i at distance 0):

* ``rho_i = exp(-(1/k) * sum_{j in kNN(i)} ||t_i - t_j||^2)``                   (local density)
* *j is denser than i*  :=  ``rho_j > rho_i`` or (``rho_j == rho_i`` and ``j < i``), compared as
  ``log rho`` (which never underflows, unlike ``exp`` once distances are large).
  This is a strict total order, so ties in rho are broken deterministically by index.
* ``delta_i = min_{j denser than i} ||t_i - t_j||``; for the densest point (no denser j)
  ``delta_i = max_j ||t_i - t_j||``.
* centers = the K points with the largest ``rho * delta`` (ties: smaller index first), in that
  order; every token is assigned to its nearest center (ties: the center earlier in ``centers``).

Algorithm (memory O(N*k + N*d) plus blocks of bounded size, never an N x N array):

1. kNN with a FAISS exact flat index (``IndexFlatL2``) on a centred, power-of-two-scaled float32
   copy, asking for ``k + 1 + margin`` neighbours.  The squared distances of all returned pairs are
   recomputed exactly in float64 from the difference vectors, the self index is removed wherever
   it appears, and the list is re-ranked by (distance, index).  A rigorous a-priori bound on the
   float32 error certifies for each row that no point outside the returned candidates can be
   closer than the k-th kept one; uncertified rows are searched again with twice as many
   neighbours (at worst all N), so the k smallest distances are always exact.
2. The nearest denser point of i is the first denser point of its own sorted kNN list whenever
   that list contains one (every point closer than it is in the list).  Only *local peaks*
   (no denser point in the list, about N/k of them) need a wider search: ``block_size`` peaks at
   a time against the denser points only (points stored in density order, so that is a prefix),
   with a float32 matmul, then every candidate within the error bound of the minimum is
   recomputed exactly.  The densest point's maximal distance is computed exactly.
3. Assignment: the token itself (distance 0 if it is a center) and its exact kNN list decide
   whenever the best candidate center is strictly closer than the k-th neighbour (then every
   point at least as close is a candidate) -- most tokens when K is a large fraction of N.  The
   other tokens are searched with an ``IndexFlatL2`` over the center vectors, a few nearest
   centers per token, exact recomputation and the same certification (strict, because of the
   tie rule).

Memory: the tokens, a centred float32 working copy (N*d*4 bytes) and, for the peak search, a
density-ordered one, the kNN lists (N*k), and blocks of at most 256 MiB (peak search) or
``block_size x m`` (re-searches); no float64 copy of the matrix (float32 input stays float32;
exact float64 values are formed for a few rows or pairs at a time).

Exactness guarantee: every distance that enters ``rho``, ``delta``, the center ranking or the
assignment is ``sqrt(sum((x_i - x_j)**2))`` evaluated in float64 on the input values (float32
input is widened exactly), i.e. the same value a brute-force float64 numpy implementation gets
with the same formula; FAISS/BLAS float32 results are only used to choose candidates and every
pruning step is justified by a worst-case float32 error bound.  Hence the result equals the
brute-force definition above (up to the float64 rounding of that formula).  Only *which* of
several points tied exactly at the k-th distance ends up in a kNN list is unspecified; rho and
delta do not depend on it (only ``n_peaks`` can).
"""

from __future__ import annotations

import math
import operator
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from fractions import Fraction

import faiss
import numpy as np
import torch

from missrec_recbole.interests.approx import ApproxParams, DPCKNNState, approx_dpc, approx_params, torch_threads
from missrec_recbole.interests.density import density_order, log_density, top_centers

try:  # limits numpy's BLAS pool (used by the peak search) to n_threads as well
    from threadpoolctl import threadpool_limits as _threadpool_limits
except ImportError:  # pragma: no cover - optional
    _threadpool_limits = None

__all__ = ["DPCKNNResult", "DPCKNNState", "ApproxParams", "EXACT_MAX_TOKENS", "dpc_knn", "n_interests"]

#: ``mode="auto"`` runs the exact algorithm up to this many tokens and the approximate one above.
#: Exact costs O(N^2 d): a few seconds at 20k x 300 on 2 cores (2-3x more with the generic kernels
#: FAISS's bundled OpenBLAS picks on recent CPUs), about where the approximate mode starts to pay;
#: ``dpc_exact_max_tokens`` in props/MISSRec.yaml is the model's setting.
EXACT_MAX_TOKENS = 20_000

_U32 = 2.0**-24  # unit roundoff of float32
_CHUNK_ELEMS = 1 << 18  # float64 elements per temporary in the exact pair distances (2 MiB)
_PEAK_ELEMS = 1 << 26  # float32 scores per block of the peak search (256 MiB)


@dataclass
class DPCKNNResult:
    """Output of :func:`dpc_knn`.

    Attributes:
        rho: float64 [N] local density ``exp(-(1/k) * sum of squared kNN distances)`` (may underflow to 0).
        log_rho: float64 [N] its logarithm, ``-(1/k) * sum of squared kNN distances``: densities and
            centers are ranked by it (never underflows; :mod:`missrec_recbole.interests.density`).
        delta: float64 [N] distance to the nearest denser point (maximal distance for the
            densest point).
        centers: int64 [K] token indices of the centers, by decreasing ``rho * delta``
            (ties: smaller index first).
        assignment: int64 [N] position in ``centers`` (0..K-1) of each token's nearest center
            (ties: the smaller position).
        n_peaks: number of local peaks (points without a denser point in their kNN list,
            including the densest point); these needed the wide delta search.
        k: the number of neighbours actually used (``min(k, N - 1)``).
        mode: "exact" or "approx" (the mode actually run; "auto" resolves to one of them).
        knn: int64 [N, k] the kNN lists (self excluded), sorted by (distance, index); approximate
            lists in approximate mode.
        timings: seconds per phase: ``knn_s``, ``density_s``, ``delta_s``, ``assign_s`` (approximate
            mode also ``kmeans_s`` and ``coarse_s``, both included in ``knn_s``).
        state: approximate mode: a :class:`DPCKNNState` (trained coarse quantizer) to pass as
            ``state=`` to the next refresh; exact mode: the ``state`` that was passed in.
        info: approximate mode: parameters used and search counts (peaks resolved from the lists,
            by cell search, by the global search; likewise for the assignment).
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
    state: DPCKNNState | None = None
    info: dict = field(default_factory=dict)
    log_rho: np.ndarray | None = None


def n_interests(n_tokens: int, interest_ratio: float) -> int:
    """Number of interests ``K = ceil(interest_ratio * n_tokens)``, clipped to ``[1, n_tokens]``.

    The product is evaluated on the decimal value of ``interest_ratio`` (``Fraction(repr(r))``),
    so that e.g. ``n_interests(30, 0.1) == 3`` (plain float arithmetic gives
    ``ceil(3.0000000000000004) == 4``).
    """
    n = operator.index(n_tokens)
    if n < 1:
        raise ValueError(f"n_tokens must be >= 1, got {n}")
    r = float(interest_ratio)
    if not math.isfinite(r) or r <= 0:
        raise ValueError(f"interest_ratio must be a finite number > 0, got {interest_ratio!r}")
    k = math.ceil(Fraction(repr(r)) * n)
    return int(min(max(k, 1), n))


# ----------------------------------------------------------------------------------------------
# helpers


@contextmanager
def _thread_limit(n_threads: int | None):
    if n_threads is None:
        yield
        return
    prev = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n_threads)
    try:
        ctx = _threadpool_limits(limits=n_threads) if _threadpool_limits is not None else nullcontext()
        with ctx:
            yield
    finally:
        faiss.omp_set_num_threads(prev)


class _Data:
    """Original tokens plus the centred, scaled float32 copy used for candidate search."""

    def __init__(self, x: np.ndarray, block_size: int):
        self.x = x  # original values (float32 or float64); exact distances are computed from it
        n, d = x.shape
        self.n, self.d, self.block_size = n, d, block_size
        rows = max(1, _CHUNK_ELEMS // d)

        # mean (float64, blockwise) and max |x|, |x - mean|, checking finiteness on the way
        total = np.zeros(d, dtype=np.float64)
        for s in range(0, n, rows):
            blk = x[s : s + rows]
            if not np.isfinite(blk).all():
                raise ValueError("tokens contain NaN or infinite values")
            total += blk.sum(axis=0, dtype=np.float64)
        mean = total / n
        amax = 0.0
        cmax = 0.0
        for s in range(0, n, rows):
            blk = x[s : s + rows].astype(np.float64)
            amax = max(amax, float(np.abs(blk).max()))
            blk -= mean
            cmax = max(cmax, float(np.abs(blk).max()))
        # power-of-two scale (exact) so that the centred float32 copy has max |value| in (1/2, 1]
        self.scale = math.ldexp(1.0, -math.frexp(cmax)[1]) if cmax > 0 else 1.0
        self.inv_s2 = 1.0 / (self.scale * self.scale)  # exact (power of two)

        x32 = np.empty((n, d), dtype=np.float32)
        nrm = np.empty(n, dtype=np.float64)
        for s in range(0, n, rows):
            blk = x[s : s + rows].astype(np.float64)
            blk -= mean
            blk *= self.scale
            x32[s : s + rows] = blk
            b32 = x32[s : s + rows].astype(np.float64)
            nrm[s : s + rows] = np.einsum("ij,ij->i", b32, b32)
        self.x32 = x32
        self.nrm = nrm  # squared norms of the float32 rows (scaled units)
        self.max_nrm = float(nrm.max())

        # |approx - exact| <= coef * (nrm_i + nrm_j) + absolute  (scaled units), where approx is
        # any float32 evaluation (direct or ||x||^2 + ||y||^2 - 2 x.y, any summation order) on the
        # float32 copy and exact the true distance of the original points.  Derivation:
        # float32 arithmetic <= (2d + 6) u, rounding to float32 <= 4.02 u; doubled for safety.
        self.coef = (4.0 * d + 32.0) * _U32
        eta = math.sqrt(d) * 2.0**-52 * (amax + amax) * self.scale  # centring round-off
        self.abs_err = (d + 8.0) * 2.0**-140 + 8.0 * eta * math.sqrt(self.max_nrm) + 4.0 * eta * eta

    def err(self, rows: np.ndarray, other_max_nrm: float) -> np.ndarray:
        """Bound on the float32 error of the distance from ``rows`` to any point of norm^2 <= other_max_nrm."""
        return self.coef * (self.nrm[rows] + other_max_nrm) + self.abs_err

    def pair_sqdist(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Exact float64 ``sum((x_a - x_b)**2)`` for index arrays a, b (chunked, bounded memory)."""
        a = np.asarray(a, dtype=np.int64).ravel()
        b = np.asarray(b, dtype=np.int64).ravel()
        out = np.empty(a.size, dtype=np.float64)
        step = max(1, _CHUNK_ELEMS // self.d)
        for s in range(0, a.size, step):
            diff = np.subtract(self.x[a[s : s + step]], self.x[b[s : s + step]], dtype=np.float64)
            diff *= diff
            out[s : s + step] = diff.sum(axis=1)
        return out

    def row_max_sqdist(self, i: int) -> float:
        """Exact ``max_j ||x_i - x_j||^2``."""
        xi = self.x[i].astype(np.float64)
        best = 0.0
        step = max(1, _CHUNK_ELEMS // self.d)
        for s in range(0, self.n, step):
            diff = np.subtract(self.x[s : s + step], xi, dtype=np.float64)
            diff *= diff
            best = max(best, float(diff.sum(axis=1).max()))
        return best


def _refined_search(
    data: _Data,
    db_rows: np.ndarray,
    need: int,
    m0: int,
    exclude_self: bool,
    strict: bool,
    queries: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """For every token (or every token in ``queries``), the ``need`` database entries with the
    smallest exact distance; rows follow ``queries`` (default: all tokens, in order).

    ``db_rows`` maps database positions to token indices.  Returns (positions, squared distances)
    of shape [N, need], sorted by (exact distance, position).  A row is accepted when the float32
    error bound proves that no database entry outside the FAISS candidates is closer than
    (``strict``: at least as close as) the last kept one; otherwise it is searched again with twice
    as many candidates (at most the whole database, which is always exact).
    """
    n_db = db_rows.size
    index = faiss.IndexFlatL2(data.d)
    index.add(data.x32[db_rows])
    db_max_nrm = float(data.nrm[db_rows].max())

    queries = np.arange(data.n, dtype=np.int64) if queries is None else np.asarray(queries, np.int64)
    out_pos = np.empty((queries.size, need), dtype=np.int64)
    out_d2 = np.empty((queries.size, need), dtype=np.float64)
    pending = np.arange(queries.size, dtype=np.int64)  # rows of the output
    m = min(m0, n_db)
    first = True
    while pending.size:
        # first pass: all queries in one FAISS call (results are only N x m); re-searches with a
        # larger m go block by block so that memory stays O(block_size * N)
        step = pending.size if first else data.block_size
        failed = []
        for s in range(0, pending.size, step):
            r = pending[s : s + step]
            q = queries[r]
            full = q.size == data.n and bool(np.all(q == np.arange(data.n)))
            dist, pos = index.search(data.x32 if full else data.x32[q], m)  # (no copy of all rows)
            cand = db_rows[pos]  # token indices [B, m]
            d2 = data.pair_sqdist(np.repeat(q, m), cand).reshape(q.size, m)
            if exclude_self:
                d2[cand == q[:, None]] = np.inf  # self may appear anywhere (duplicates)
            order = np.lexsort((pos, d2), axis=-1)[:, :need]
            kpos = np.take_along_axis(pos, order, axis=-1)
            kd2 = np.take_along_axis(d2, order, axis=-1)
            if m >= n_db:
                ok = np.ones(q.size, dtype=bool)
            else:
                # every non-candidate has approx >= dist[:, -1], hence exact >= lb
                lb = np.maximum(dist[:, -1].astype(np.float64) - data.err(q, db_max_nrm), 0.0)
                lb *= data.inv_s2
                ok = kd2[:, -1] < lb if strict else kd2[:, -1] <= lb
            out_pos[r[ok]] = kpos[ok]
            out_d2[r[ok]] = kd2[ok]
            failed.append(r[~ok])
        pending = np.concatenate(failed)
        m = min(2 * m, n_db)
        first = False
    return out_pos, out_d2


def _denser_sqdist(data: _Data, points: np.ndarray, order: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Exact ``min_{j denser than i} ||x_i - x_j||^2`` for each i in ``points`` (none densest).

    ``order`` lists the tokens from densest to least dense, ``rank`` is its inverse.  Works on
    up to ``block_size`` points at a time (fewer when the block would exceed ``_PEAK_ELEMS``
    scores): float32 distances to the denser prefix of ``order`` (one matmul), then exact
    recomputation of every candidate within twice the error bound of the block-row minimum.
    Memory: a density-ordered float32 copy of the tokens (N*d) + a [block x N] block (<= 256 MiB).
    """
    out = np.empty(points.size, dtype=np.float64)
    if points.size == 0:
        return out
    if np.any(rank[points] == 0):
        raise ValueError("the densest point has no denser point")
    by_rank = np.argsort(rank[points], kind="stable")
    pts = points[by_rank]
    xr = data.x32[order]  # density-ordered float32 copy: the denser set of i is xr[:rank[i]]
    nr32 = data.nrm[order].astype(np.float32)
    s = 0
    while s < pts.size:
        e = min(pts.size, s + data.block_size)
        # at most _PEAK_ELEMS float32 scores per block (pts are sorted by rank: the last is widest)
        while e - s > 1 and (e - s) * int(rank[pts[e - 1]]) > _PEAK_ELEMS:
            e = s + (e - s) // 2
        p = pts[s:e]
        r = rank[p]
        ncol = int(r.max())
        g = data.x32[p] @ xr[:ncol].T  # [B, ncol] float32
        g *= np.float32(-2.0)
        g += data.nrm[p].astype(np.float32)[:, None]
        g += nr32[None, :ncol]
        g[np.arange(ncol)[None, :] >= r[:, None]] = np.inf  # not denser
        err = data.err(p, data.max_nrm)
        thr = (g.min(axis=1).astype(np.float64) + 2.0 * err) * (1.0 + 16.0 * _U32)
        thr32 = np.nextafter(thr.astype(np.float32), np.float32(np.inf))  # >= thr
        rows, cols = np.nonzero(g <= thr32[:, None])
        del g
        d2 = data.pair_sqdist(p[rows], order[cols])
        starts = np.searchsorted(rows, np.arange(p.size))  # every row has >= 1 candidate
        out[by_rank[s:e]] = np.minimum.reduceat(d2, starts)
        s = e
    return out


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
    if v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v}")
    return v


# ----------------------------------------------------------------------------------------------


def _as_real_array(tokens) -> np.ndarray:
    x = np.asarray(tokens)
    if x.ndim != 2:
        raise ValueError(f"tokens must be a 2-D array [N, d], got shape {x.shape}")
    n, d = x.shape
    if n == 0:
        raise ValueError("tokens is empty (N == 0)")
    if d == 0:
        raise ValueError("tokens must have at least one feature dimension (d == 0)")
    if x.dtype not in (np.float32, np.float64):
        if np.issubdtype(x.dtype, np.complexfloating) or not (
            np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_
        ):
            raise ValueError(f"tokens must be real-valued, got dtype {x.dtype}")
        # float32 is exact for bools / small integers; otherwise float64
        small = x.dtype == np.bool_ or (
            np.issubdtype(x.dtype, np.integer) and np.iinfo(x.dtype).bits <= 16
        ) or (np.issubdtype(x.dtype, np.floating) and np.finfo(x.dtype).bits <= 32)
        x = x.astype(np.float32 if small else np.float64)
    return x


def _check_finite(x: np.ndarray, what: str = "tokens contain NaN or infinite values") -> None:
    rows = max(1, _CHUNK_ELEMS // x.shape[1])
    for s in range(0, x.shape[0], rows):
        if not np.isfinite(x[s : s + rows]).all():
            raise ValueError(what)


def dpc_knn(
    tokens: np.ndarray,
    n_centers: int,
    k: int = 5,
    n_threads: int | None = None,
    block_size: int = 4096,
    *,
    mode: str = "auto",
    exact_max_tokens: int | None = None,
    state: DPCKNNState | None = None,
    approx: ApproxParams | dict | None = None,
) -> DPCKNNResult:
    """DPC-KNN clustering of ``tokens`` [N, d] into ``n_centers`` interests (MISSRec).

    Definitions (module docstring; MISSRec, DPC-KNN): ``rho_i = exp(-(1/k) sum_{j in kNN(i)}
    ||t_i - t_j||^2)`` with kNN excluding i itself; j is denser than i iff ``rho_j > rho_i`` or
    (``rho_j == rho_i`` and ``j < i``); ``delta_i`` = distance to the nearest denser point (max
    distance for the densest point); centers = the K largest ``rho * delta`` (ties: smaller index
    first); each token goes to its nearest center (ties: earlier center in ``centers``).  A center
    is at distance 0 from itself, so it is assigned to a center at distance 0: itself, unless an
    exact duplicate of it is an earlier center, in which case that one (same tie rule).

    Modes:

    * ``"exact"``: results equal the brute-force definition (every distance is recomputed in
      float64 from the input values; FAISS float32 results only select candidates, certified by an
      error bound), deterministic.  Memory O(N*k + N*d): the inputs, two float32 working copies
      of the tokens, the kNN lists and bounded blocks (<= 256 MiB) -- never an N x N array, never
      a float64 copy of the matrix.  Time O(N^2 d) (FAISS flat kNN), so only for N up to some
      10^4..10^5.
    * ``"approx"``: soft-assigned IVF cell join with exact re-ranking
      (:mod:`missrec_recbole.interests.approx`): ``rho``/``delta``/assignment use exact
      distances, but neighbours, denser points and centers a token never gets compared with are
      missed.  Memory O(N*n_cand + N*d): the tokens are read in place when they are a
      C-contiguous float32 array (otherwise one float32 copy), the candidate lists (~0.3 GiB at
      N = 1M), and per-thread blocks of a few MiB.  Parameters from N: :func:`approx_params`.
    * ``"auto"`` (default): exact for ``N <= exact_max_tokens`` (default :data:`EXACT_MAX_TOKENS`),
      approximate above.

    Args:
        tokens: [N, d] float32/float64 (other real dtypes are converted), finite.
        n_centers: K >= 1; clipped to N.
        k: neighbours for the density; if N <= k, ``k = N - 1`` is used (N == 1: ``rho = 1``,
            ``delta = 0``, the point is the only center).
        n_threads: FAISS/OpenMP, BLAS (via threadpoolctl) and torch thread count for this call;
            the previous settings are restored afterwards.  None: leave as is.
        block_size: exact mode: query rows per block in the peak search and re-searches.
        mode: "auto", "exact" or "approx".
        exact_max_tokens: threshold of ``mode="auto"`` (None: :data:`EXACT_MAX_TOKENS`).
        state: approximate mode: the ``result.state`` of the previous refresh; its coarse quantizer
            is warm-started when d and nlist match (see :class:`DPCKNNState`).  Ignored and passed
            through by the exact mode.
        approx: overrides of the approximate-mode parameters (:class:`ApproxParams` or a dict of
            its fields, e.g. ``{"nprobe": 16}``).

    Raises:
        ValueError: tokens not 2-D, empty, zero-dimensional or non-finite; bad k / n_centers /
            n_threads / block_size / mode / exact_max_tokens / approximate-mode parameters.
    """
    x = _as_real_array(tokens)
    n, d = x.shape
    n_centers = _check_int("n_centers", n_centers, 1)
    k = _check_int("k", k, 1)
    block_size = _check_int("block_size", block_size, 1)
    if n_threads is not None:
        n_threads = _check_int("n_threads", n_threads, 1)
    if mode not in ("auto", "exact", "approx"):
        raise ValueError(f"mode must be 'auto', 'exact' or 'approx', got {mode!r}")
    threshold = EXACT_MAX_TOKENS if exact_max_tokens is None else _check_int(
        "exact_max_tokens", exact_max_tokens, 0)
    if state is not None and not isinstance(state, DPCKNNState):
        raise ValueError(f"state must be a DPCKNNState (result.state) or None, got {type(state).__name__}")
    run = mode if mode != "auto" else ("exact" if n <= threshold else "approx")
    k_used = min(k, n - 1)
    if isinstance(approx, ApproxParams):
        params = approx
    elif approx is None or isinstance(approx, dict):
        params = approx_params(n, max(k_used, 1), **(approx or {}))
    else:
        raise ValueError(f"approx must be an ApproxParams, a dict or None, got {type(approx).__name__}")

    if run == "exact":
        with _thread_limit(n_threads):
            return _exact(x, n_centers, k, block_size, state)
    # approximate mode: n_threads Python worker threads, each running torch single-threaded
    workers = n_threads if n_threads is not None else max(1, torch.get_num_threads())
    with _thread_limit(1), torch_threads(1):
        return _approx(x, n_centers, k, params, state, workers)


def _trivial(n_centers: int, mode: str, state) -> DPCKNNResult:
    return DPCKNNResult(
        rho=np.ones(1), log_rho=np.zeros(1), delta=np.zeros(1), centers=np.zeros(1, dtype=np.int64),
        assignment=np.zeros(1, dtype=np.int64), n_peaks=1, k=0, mode=mode,
        knn=np.zeros((1, 0), dtype=np.int64), state=state,
    )


def _approx(x: np.ndarray, n_centers: int, k: int, params: ApproxParams, state, workers: int) -> DPCKNNResult:
    t0 = time.perf_counter()
    _check_finite(x)
    x32 = np.ascontiguousarray(x, dtype=np.float32)  # no copy for C-contiguous float32 input
    if x32 is not x:
        _check_finite(x32, "tokens contain values outside the float32 range (approximate mode works in float32)")
    n = x.shape[0]
    n_centers = min(n_centers, n)
    k = min(k, n - 1)
    if n == 1:
        return _trivial(n_centers, "approx", state)
    prep = time.perf_counter() - t0
    log_rho, delta, centers, assignment, n_peaks, knn, timings, new_state, info = approx_dpc(
        x32, n_centers, k, params, state, workers)
    timings["knn_s"] += prep
    return DPCKNNResult(rho=np.exp(log_rho), log_rho=log_rho, delta=delta, centers=centers, assignment=assignment, n_peaks=n_peaks,
                        k=k, mode="approx", knn=knn, timings=timings, state=new_state, info=info)


def _exact(x: np.ndarray, n_centers: int, k: int, block_size: int, state) -> DPCKNNResult:
    t = {}
    t0 = time.perf_counter()
    data = _Data(x, block_size)  # also validates finiteness
    n = data.n
    n_centers = min(n_centers, n)
    k = min(k, n - 1)
    if n == 1:
        return _trivial(n_centers, "exact", state)

    # 1. exact kNN (self excluded)
    margin = max(3, k // 2)
    knn, knn_d2 = _refined_search(
        data, np.arange(n, dtype=np.int64), need=k, m0=k + 1 + margin, exclude_self=True,
        strict=False,
    )
    t["knn_s"] = time.perf_counter() - t0

    # 2. density; strict total order "denser": larger log rho, then smaller index
    t0 = time.perf_counter()
    log_rho = log_density(knn_d2, k)
    order, rank = density_order(log_rho)
    t["density_s"] = time.perf_counter() - t0

    # 3. delta: first denser neighbour in the sorted kNN list, wide search for local peaks
    t0 = time.perf_counter()
    denser = rank[knn] < rank[:, None]
    has = denser.any(axis=1)
    first = denser.argmax(axis=1)
    delta2 = np.where(has, knn_d2[np.arange(n), first], 0.0)
    peaks = np.flatnonzero(~has)
    top = int(order[0])
    others = peaks[peaks != top]
    delta2[others] = _denser_sqdist(data, others, order, rank)
    delta2[top] = data.row_max_sqdist(top)
    delta = np.sqrt(delta2)
    t["delta_s"] = time.perf_counter() - t0

    # 4. centers and assignment
    t0 = time.perf_counter()
    centers = top_centers(log_rho, delta, n_centers)
    assignment = _exact_assignment(data, centers, knn, knn_d2)
    t["assign_s"] = time.perf_counter() - t0
    return DPCKNNResult(
        rho=np.exp(log_rho), delta=delta, centers=centers, assignment=assignment, log_rho=log_rho,
        n_peaks=int(peaks.size), k=k, mode="exact", knn=knn, timings=t, state=state,
    )


def _exact_assignment(data: _Data, centers: np.ndarray, knn: np.ndarray, knn_d2: np.ndarray) -> np.ndarray:
    """Nearest center (ties: smaller position in ``centers``) of every token, exactly.

    Shortcut: the candidates {the token itself if it is a center (distance 0)} + its exact kNN
    list (exact float64 distances).  If the best candidate center is *strictly* closer than the
    k-th neighbour, every point at that distance or closer is a candidate, so the best candidate
    (smallest distance, then position) is the answer.  The other tokens (no center in the list, or
    a tie at the k-th distance) are searched with a FAISS flat index over the centers, certified.
    """
    n = data.n
    n_centers = centers.size
    pos = np.full(n, -1, dtype=np.int64)
    pos[centers] = np.arange(n_centers)
    big = np.iinfo(np.int64).max
    out = np.empty(n, dtype=np.int64)
    rows = max(1, _CHUNK_ELEMS // (knn.shape[1] + 1))
    pending = []
    for s in range(0, n, rows):
        cp = np.concatenate([pos[s : s + rows, None], pos[knn[s : s + rows]]], axis=1)
        cd = np.concatenate([np.zeros((cp.shape[0], 1)), knn_d2[s : s + rows]], axis=1)
        cd[cp < 0] = np.inf
        cp[cp < 0] = big
        best = np.lexsort((cp, cd), axis=-1)[:, 0]
        r = np.arange(cp.shape[0])
        ok = cd[r, best] < knn_d2[s : s + rows, -1]
        out[s : s + rows] = cp[r, best]
        pending.append(s + np.flatnonzero(~ok))
    pending = np.concatenate(pending)
    if pending.size:
        p, _ = _refined_search(
            data, centers, need=1, m0=min(4, n_centers), exclude_self=False, strict=True,
            queries=pending,
        )
        out[pending] = p[:, 0]
    return out
