"""DPC-KNN search backend on FAISS's inverted file (``IndexIVFFlat``), for ``benchmarks/dpc_knn.py --ivf-compare``.

Not part of the package: measured against the package's approximate backend (``interests/ivf.py``), it was faster
at 100k tokens but took 1.7-2x the CPU time and ~5x the memory at 1M (benchmarks/README.md), so the package keeps
one approximate backend and this one stays here, beside the benchmark that repeats the comparison. It plugs into
the package's one DPC-KNN driver (``interests.driver.cluster``) like the package's backends.

What is approximate is only *which* pairs of tokens are compared: every distance that enters rho, delta, the
center ranking or the assignment is the float32 squared distance of two tokens from their difference vector
(what ``IndexIVFFlat`` computes), so a list is exact whenever it holds the right tokens.

1. **Coarse quantizer**: ``faiss.Kmeans`` with ``nlist`` centroids on a sample of ``kmeans_sample`` tokens,
   started from the previous refresh's centroids when there are any (:class:`DPCKNNState`); every token's
   ``max(nprobe, 1)`` nearest cells are computed once and reused by the index and all searches.
2. **kNN**: an ``IndexIVFFlat`` over the tokens; every token searches its ``nprobe`` nearest cells for
   ``n_cand + 1`` neighbours, queries in cell order (consecutive queries read the same lists), re-ranked by
   (distance, id) with self dropped. Tokens whose cells hold too few tokens search all tokens.
3. **Nearest denser token** of the local peaks: the first denser token among their 64 nearest in their
   ``nprobe`` cells, then among their 256 nearest in their ``nprobe_wide`` cells, then over all denser tokens
   (a prefix of the density order, in chunks).
4. **Nearest center** of tokens without a center among their candidates: an ``IndexIVFFlat`` over the centers
   on the same quantizer, searched in ``nprobe`` then ``nprobe_wide`` cells, then all centers.

Memory: the tokens (read in place when C-contiguous float32, else one float32 copy), the index's copy of them
(N*d*4 bytes; freed before the centers' index is built), the candidate lists and cell lists (N * (n_cand +
nprobe) ids and distances), the k-means sample: no N x N array.
"""

from __future__ import annotations

import time

import faiss
import numpy as np
from faiss.contrib.ivf_tools import add_preassigned

from missrec_recbole.interests.driver import SearchBackend, check_finite
from missrec_recbole.interests.ivf_params import ApproxParams, DPCKNNState

_QUERY_BLOCK = 16384  # queries per FAISS call
_SCAN_CHUNK = 65536  # density-ordered tokens per chunk of the exhaustive denser-token scan


class FaissIVFSearch(SearchBackend):
    """The approximate searches (module docstring) over tokens ``x`` [N, d] (finite); FAISS's own threads."""

    mode = "approx"
    certified = False

    def __init__(self, x: np.ndarray, params: ApproxParams, state: DPCKNNState | None):
        x32 = np.ascontiguousarray(x, dtype=np.float32)  # no copy for C-contiguous float32 input
        if x32 is not x:
            check_finite(x32, "tokens contain values outside the float32 range (approximate mode works in float32)")
        super().__init__(x32, state)
        self.p = params
        self.index = None

    # ------------------------------------------------------------------ the three searches
    def knn(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        x, p = self.x, self.p
        n, d = x.shape
        m = min(max(p.n_cand, k), n - 1)
        t0 = time.perf_counter()
        self.cent, warm, iters = self._train(x)
        self.nlist = self.cent.shape[0]
        self.timings["kmeans_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        self.quantizer = faiss.IndexFlatL2(d)
        self.quantizer.add(self.cent)
        self.nprobe = min(p.nprobe, self.nlist)
        self.cell_d2, self.cells = self.quantizer.search(x, self.nprobe)
        self.index = faiss.IndexIVFFlat(self.quantizer, d, self.nlist)
        add_preassigned(self.index, x, np.ascontiguousarray(self.cells[:, 0]))
        self.timings["coarse_s"] = time.perf_counter() - t1
        self.info.update(nlist=self.nlist, nprobe=self.nprobe, n_cand=m, cells=self.nlist, warm_start=warm,
                         kmeans_iters=iters)

        nbr = np.empty((n, m), dtype=np.int64)
        nd2 = np.empty((n, m), dtype=np.float32)
        by_cell = np.argsort(self.cells[:, 0], kind="stable")  # consecutive queries read the same lists
        for s in range(0, n, _QUERY_BLOCK):
            q = by_cell[s : s + _QUERY_BLOCK]
            d2, ids = _search(self.index, x[q], m + 1, self.cells[q], self.cell_d2[q])
            nbr[q], nd2[q] = _ranked(ids, d2, m, self_ids=q)
        short = np.flatnonzero(nbr[:, -1] < 0)  # their cells hold fewer than m other tokens
        self.info["knn_full_search"] = int(short.size)
        if short.size:
            _, ids = faiss.knn(x[short], x, m + 1)
            nbr[short], nd2[short] = _ranked(ids, _sqdist(x, x[short], ids), m, self_ids=short)
        return nbr, nd2

    def nearest_denser(self, points: np.ndarray, order: np.ndarray, rank: np.ndarray) -> np.ndarray:
        self.info["peaks_list"] = int(points.size)
        out = np.full(points.size, np.inf)
        todo = np.arange(points.size)
        for nprobe, kk in ((self.nprobe, 64), (min(self.nlist, self.p.nprobe_wide), 256)):
            if not todo.size:
                break
            q = points[todo]
            cell_d2, cells = self._cells(q, nprobe)
            d2, ids = _search(self.index, self.x[q], min(kk, self.x.shape[0]), cells, cell_d2)
            denser = (ids >= 0) & (rank[np.maximum(ids, 0)] < rank[q][:, None])
            found = denser.any(axis=1)
            out[todo[found]] = d2[np.arange(q.size), denser.argmax(axis=1)][found]  # (sorted by distance)
            todo = todo[~found]
        self.info["peaks_global"] = int(todo.size)
        if todo.size:
            out[todo] = _denser_scan(self.x, points[todo], order, rank)
        return out

    def nearest_center(self, queries: np.ndarray, centers: np.ndarray) -> np.ndarray:
        self.info["assign_list_miss"] = int(queries.size)
        self.index = None  # the tokens' index is done with: free its copy before the centers' is built
        out = np.full(queries.size, -1, dtype=np.int64)
        if not queries.size:
            return out
        xc = np.ascontiguousarray(self.x[centers])
        index = faiss.IndexIVFFlat(self.quantizer, self.x.shape[1], self.nlist)
        add_preassigned(index, xc, np.ascontiguousarray(self.cells[centers, 0]))
        todo = np.arange(queries.size)
        for nprobe in (self.nprobe, min(self.nlist, self.p.nprobe_wide)):
            if not todo.size:
                break
            q = queries[todo]
            cell_d2, cells = self._cells(q, nprobe)
            d2, ids = _search(index, self.x[q], min(4, centers.size), cells, cell_d2)
            best = _ranked(ids, d2, 1)[0][:, 0]
            out[todo[best >= 0]] = best[best >= 0]
            todo = todo[best < 0]
        self.info["assign_global"] = int(todo.size)
        if todo.size:
            _, ids = faiss.knn(self.x[queries[todo]], xc, min(4, centers.size))
            out[todo] = _ranked(ids, _sqdist(self.x, self.x[queries[todo]], centers[ids]), 1)[0][:, 0]
        return out

    def finish(self, timings: dict) -> DPCKNNState:
        return DPCKNNState.after_run(self.state, self.cent, self.info, timings)

    def close(self) -> None:
        self.index = None

    # ------------------------------------------------------------------ helpers
    def _train(self, x: np.ndarray) -> tuple[np.ndarray, bool, int]:
        """(centroids, warm-started?, Lloyd iterations): from the previous refresh's centroids when their
        width is d and there are at most N of them (their number is then nlist), else from a random start."""
        p, state = self.p, self.state
        n, d = x.shape
        init = None
        if state is not None and state.centroids is not None and state.centroids.ndim == 2 \
                and state.centroids.shape[1] == d and 1 <= state.centroids.shape[0] <= n:
            init = np.ascontiguousarray(state.centroids, dtype=np.float32)
        nlist = init.shape[0] if init is not None else min(p.nlist, n)
        iters = p.warm_iters if init is not None else p.kmeans_iters
        if init is not None and iters == 0:
            return init, True, 0
        rng = np.random.default_rng(p.seed)
        s = min(n, max(p.kmeans_sample, nlist))
        sample = x[np.sort(rng.choice(n, size=s, replace=False))] if s < n else x
        km = faiss.Kmeans(d, nlist, niter=max(iters, 1), seed=p.seed, max_points_per_centroid=max(1, -(-s // nlist)),
                          min_points_per_centroid=1)
        km.train(sample, init_centroids=init)
        return km.centroids, init is not None, max(iters, 1)

    def _cells(self, q: np.ndarray, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """(squared distances, ids) of the ``nprobe`` cells nearest to the tokens ``q``."""
        if nprobe <= self.cells.shape[1]:
            return self.cell_d2[q, :nprobe], self.cells[q, :nprobe]
        return self.quantizer.search(self.x[q], nprobe)


def _search(index, xq: np.ndarray, kk: int, cells: np.ndarray, cell_d2: np.ndarray):
    """``index.search_preassigned`` in the given cells: (squared distances, ids), -1 / inf where fewer found."""
    index.nprobe = cells.shape[1]
    return index.search_preassigned(xq, kk, cells, cell_d2)


def _ranked(ids: np.ndarray, d2: np.ndarray, m: int, self_ids: np.ndarray | None = None):
    """Rows sorted by (distance, id), the row's own id dropped (``self_ids``), m kept; -1 / inf last."""
    d2 = np.where(ids < 0, np.inf, d2).astype(np.float32)
    if self_ids is not None:
        d2[ids == self_ids[:, None]] = np.inf
    key = np.where(ids < 0, np.iinfo(np.int64).max, ids)
    o = np.lexsort((key, d2), axis=-1)[:, :m]
    ids, d2 = np.take_along_axis(ids, o, -1), np.take_along_axis(d2, o, -1)
    ids[~np.isfinite(d2)] = -1
    return ids, d2


def _sqdist(x: np.ndarray, xq: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """float32 ``||xq[r] - x[ids[r, j]]||^2`` from the difference vectors (as IndexIVFFlat); inf where ids < 0."""
    diff = x[np.maximum(ids, 0)] - xq[:, None, :]
    out = np.einsum("ijk,ijk->ij", diff, diff)
    out[ids < 0] = np.inf
    return out


def _denser_scan(x: np.ndarray, q: np.ndarray, order: np.ndarray, rank: np.ndarray, kk: int = 4) -> np.ndarray:
    """Squared distance from each token of ``q`` to its nearest denser token over *all* denser tokens (a few
    queries): ``faiss.knn`` on chunks of the density order, the ``kk`` best of a chunk re-ranked exactly."""
    r = rank[q]
    best = np.full(q.size, np.inf)
    xq = x[q]
    top = int(r.max())
    for c0 in range(0, top, _SCAN_CHUNK):
        c1 = min(c0 + _SCAN_CHUNK, top)
        cols = order[c0:c1]
        xb = x[cols]
        whole = np.flatnonzero(r >= c1)  # the whole chunk is denser than these
        if whole.size:
            _, ids = faiss.knn(xq[whole], xb, min(kk, cols.size))
            best[whole] = np.minimum(best[whole], _sqdist(x, xq[whole], cols[ids]).min(axis=1))
        for i in np.flatnonzero((r > c0) & (r < c1)):  # the chunk holding the query's own rank
            w = int(r[i]) - c0
            _, ids = faiss.knn(xq[i : i + 1], xb[:w], min(kk, w))
            best[i] = min(best[i], float(_sqdist(x, xq[i : i + 1], cols[ids]).min()))
    return best
