"""Exact DPC-KNN search backend: FAISS flat search on float32 proposes, float64 decides.

1. kNN with a FAISS exact flat index (``IndexFlatL2``) on a centred, power-of-two-scaled float32 copy, asking
   for ``k + 1 + margin`` neighbours. The squared distances of all returned pairs are recomputed in float64
   from the difference vectors, the self index is removed wherever it appears, and each list is re-ranked by
   (distance, index). A rigorous a-priori bound on the float32 error certifies for each row that no token
   outside the candidates can be closer than the k-th kept one; uncertified rows are searched again with twice
   as many neighbours (at worst all N), so the k smallest distances are always exact.
2. Nearest denser token of the local peaks (no denser token in their list, about N/k of them): ``block_size``
   peaks at a time against the denser tokens only (a prefix of the tokens in density order), one float32
   matrix product, then every candidate within the error bound of the minimum recomputed exactly.
3. Nearest center of the tokens the list cannot decide: an ``IndexFlatL2`` over the centers, a few nearest
   per token, exact recomputation and the same certification (strict, because of the tie rule).

Every distance that enters rho, delta, the center ranking or the assignment is ``sum((x_i - x_j)**2)`` in
float64 on the input values (float32 input is widened exactly), the value a brute-force float64
implementation gets; FAISS/BLAS float32 results only choose candidates, and every pruning step is justified by
a worst-case float32 error bound. Only *which* of several tokens tied exactly at the k-th distance ends up in a
list is unspecified; rho and delta do not depend on it (``n_peaks`` can).

Memory: the tokens, a centred float32 copy (N*d*4 bytes) and, for the peak search, a density-ordered one, the
lists (N*k), blocks of at most 256 MiB (peak search) or ``block_size x m`` (re-searches); never an N x N array
nor a float64 copy of the matrix.
"""

from __future__ import annotations

import math

import faiss
import numpy as np
import torch

from missrec_recbole.interests.driver import CHUNK_ELEMS, SearchBackend, check_finite

_U32 = 2.0**-24  # unit roundoff of float32
_PEAK_ELEMS = 1 << 26  # float32 scores per block of the peak search (256 MiB)


class _Data:
    """Original tokens plus the centred, scaled float32 copy used for candidate search."""

    def __init__(self, x: np.ndarray, block_size: int):
        self.x = x  # original values (float32 or float64); exact distances are computed from it
        n, d = x.shape
        self.n, self.d, self.block_size = n, d, block_size
        rows = max(1, CHUNK_ELEMS // d)

        # mean (float64, blockwise) and max |x|, |x - mean| (x is finite: checked before)
        total = np.zeros(d, dtype=np.float64)
        for s in range(0, n, rows):
            total += x[s : s + rows].sum(axis=0, dtype=np.float64)
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
        step = max(1, CHUNK_ELEMS // self.d)
        for s in range(0, a.size, step):
            diff = np.subtract(self.x[a[s : s + step]], self.x[b[s : s + step]], dtype=np.float64)
            diff *= diff
            out[s : s + step] = diff.sum(axis=1)
        return out


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


class ExactSearch(SearchBackend):
    """The exact searches (module docstring) over tokens ``x`` [N, d] (float32 or float64, finite)."""

    mode = "exact"
    certified = True

    def __init__(self, x: np.ndarray, block_size: int = 4096, state=None):
        super().__init__(x, state)
        self.data = _Data(x, block_size)

    def knn(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        n = self.data.n
        return _refined_search(self.data, np.arange(n, dtype=np.int64), need=k, m0=k + 1 + max(3, k // 2),
                               exclude_self=True, strict=False)

    def nearest_denser(self, points: np.ndarray, order: np.ndarray, rank: np.ndarray) -> np.ndarray:
        return _denser_sqdist(self.data, points, order, rank)

    def nearest_center(self, queries: np.ndarray, centers: np.ndarray) -> np.ndarray:
        if queries.size == 0:
            return np.zeros(0, dtype=np.int64)
        pos, _ = _refined_search(self.data, centers, need=1, m0=min(4, centers.size), exclude_self=False,
                                 strict=True, queries=queries)
        return pos[:, 0]


def nearest_center(tokens: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Position of each token's nearest center (exact, ties -> smaller position), on the host: DPC-KNN's
    assignment rule for tokens added after clustering (new items at inference time)."""
    t = tokens.detach().float().cpu().numpy()
    if t.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long)
    c = centers.detach().cpu()
    c = (c if c.dtype == torch.float64 else c.float()).numpy()  # float32 tokens are widened exactly
    x = np.concatenate([c, t])
    check_finite(x, "token or center vectors contain NaN or infinite values")
    search = ExactSearch(x, block_size=4096)
    n_c = c.shape[0]
    return torch.from_numpy(search.nearest_center(np.arange(n_c, x.shape[0]), np.arange(n_c)))
