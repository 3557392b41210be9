"""Approximate DPC-KNN search backend: a soft-assigned inverted-file (IVF) kNN join with exact re-ranking.

What is approximate is only *which* pairs of tokens are compared: every distance that enters rho, delta, the
center ranking or the assignment is the float32 distance of two tokens from their difference vector, so a
list is exact whenever it holds the right tokens.

1. **Coarse quantizer** (:mod:`~missrec_recbole.interests.quantizer`): ``nlist`` k-means cells on a sample
   (warm-started from the previous refresh's, :class:`DPCKNNState`), oversized cells split; every token's
   nearest cells ranked by distance to the centroid + ``spread_weight`` * the cell's spread, which keeps broad
   "hub" cells (near everything in high dimension, rarely holding anyone's neighbours) out of the lists.
   Inverted lists hold token ids only: vectors are read from the caller's array.
2. **kNN join** (soft assignment): every token belongs to its first ``spill`` cells and all pairs within a
   cell are compared (:mod:`~missrec_recbole.interests.tiles`); a token's lists are merged into its ``n_cand``
   nearest candidates. Two tokens are compared iff they share one of their ``spill`` nearest cells; with
   ``spill = 1`` neighbours on either side of a cell boundary are lost.
3. **Nearest denser token** of the local peaks: the denser tokens listed in their ``nprobe`` nearest cells,
   then in the ``nprobe_wide`` cells nearest to their own cell, and the rest (peaks of isolated clusters, a
   few dozen) against *all* denser tokens in blocks.
4. **Nearest center** of tokens without a center among their candidates: the centers in the same cells (two
   rounds as for 3), then all centers. Searches 3 and 4 go by database cell, so each token is read about once.

Memory: the tokens (read in place when C-contiguous float32, else one float32 copy), O(N * spill * n_cand)
candidate lists during the join, O(N * nprobe) cell lists, the k-means sample (``32 * nlist`` rows) and
per-thread blocks of a few MiB: no N x N array, no float64 copy of the matrix.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import numpy as np
import torch

from missrec_recbole.interests.driver import SearchBackend, check_finite
from missrec_recbole.interests.ivf_params import ApproxParams, DPCKNNState
from missrec_recbole.interests.quantizer import ROWS, Groups, Probe, cell_lists, train_quantizer
from missrec_recbole.interests.tiles import CT, QT, Block, Heap, exact_sq, finish_rows, gemm_dtype, parallel, scan, scratch


class IVFSearch(SearchBackend):
    """The approximate searches (module docstring) over tokens ``x`` [N, d] (finite), on ``workers`` threads."""

    mode = "approx"
    certified = False

    def __init__(self, x: np.ndarray, params: ApproxParams, state: DPCKNNState | None, workers: int):
        x32 = np.ascontiguousarray(x, dtype=np.float32)  # no copy for C-contiguous float32 input
        if x32 is not x:
            check_finite(x32, "tokens contain values outside the float32 range (approximate mode works in float32)")
        super().__init__(x32, state)
        self.p = replace(params, nlist=min(params.nlist, x32.shape[0]))
        self.workers = workers
        self.dt = gemm_dtype(params.gemm)

    def knn(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Coarse quantizer, every token's nearest cells, kNN join; tokens whose cells are tiny search everything."""
        x, p, dt, workers, state = self.x, self.p, self.dt, self.workers, self.state
        n, d = x.shape
        m = min(max(p.n_cand, k), n - 1)
        info = self.info
        info.update(nlist=p.nlist, spill=p.spill, nprobe=p.nprobe, n_cand=m, gemm=str(dt).replace("torch.", ""))
        t0 = time.perf_counter()
        init = None
        if state is not None and state.centroids is not None and state.centroids.ndim == 2 \
                and state.centroids.shape[1] == d and 1 <= state.centroids.shape[0] <= n:
            init = state.centroids
        if p.nlist > 1 or init is not None:
            cent, n_split = train_quantizer(x, p, init, dt, np.random.default_rng(p.seed), workers)
        else:
            cent, n_split = x.mean(axis=0, dtype=np.float64)[None, :].astype(np.float32), 0
        info.update(warm_start=init is not None, kmeans_iters=p.warm_iters if init is not None else p.kmeans_iters)
        self.timings["kmeans_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        near, spread = cell_lists(x, cent, p, dt, workers)
        ncells = cent.shape[0]
        labels = near[:, 0]
        ct = torch.from_numpy(cent)
        probe = Probe(ct - ct.mean(0), min(ncells, p.nprobe_wide), torch.from_numpy(spread))
        info.update(cells=int(ncells), split=n_split, max_cell=int(np.bincount(labels, minlength=ncells).max()))
        self.timings["coarse_s"] = time.perf_counter() - t1
        nbr, nd2 = _knn_join(x, near, ncells, cent, p, m, dt, workers)
        short = np.flatnonzero(nbr[:, -1] < 0)
        info["knn_full_search"] = int(short.size)
        if short.size:
            nbr[short], nd2[short] = _global_knn(x, short, m, p, dt, workers)
        self.cent, self.near, self.labels, self.probe = cent, near, labels, probe
        return nbr, nd2

    def _rounds(self, queries: np.ndarray, db: Groups, db_ids: np.ndarray, rank=None):
        """Cell searches of ``queries``: their ``nprobe`` nearest cells, then the cells nearest to their own.
        Returns (best db position or -1, squared distance or inf)."""
        best_pos = np.full(queries.size, -1, dtype=np.int64)
        best_d2 = np.full(queries.size, np.inf, dtype=np.float32)
        todo = np.arange(queries.size)
        for qcells in (lambda q: self.near[q, : self.p.nprobe], lambda q: self.probe.near[self.labels[q]]):
            if not todo.size:
                break
            q = queries[todo]
            pos, d2 = _cell_search(self.x, q, qcells(q), db, db_ids, self.cent, self.dt, self.workers, rank=rank)
            ok = pos >= 0 if rank is None else np.isfinite(d2)
            best_pos[todo[ok]], best_d2[todo[ok]] = pos[ok], d2[ok]
            todo = todo[~ok]
        return best_pos, best_d2, todo

    def nearest_denser(self, points: np.ndarray, order: np.ndarray, rank: np.ndarray) -> np.ndarray:
        self.info["peaks_list"] = int(points.size)
        t_sp = min(self.p.spill, self.near.shape[1])
        n = self.x.shape[0]
        db_all = Groups(self.near[:, :t_sp].ravel(), self.cent.shape[0], np.repeat(np.arange(n), t_sp))
        _, d2, todo = self._rounds(points, db_all, np.arange(n), rank=rank)
        del db_all
        self.info["peaks_global"] = int(todo.size)
        if todo.size:
            _, d2[todo] = _global_search(self.x, points[todo], order, rank[points[todo]], self.dt, self.workers)
        return d2

    def nearest_center(self, queries: np.ndarray, centers: np.ndarray) -> np.ndarray:
        self.info["assign_list_miss"] = int(queries.size)
        if not queries.size:
            return np.zeros(0, dtype=np.int64)
        t_sp = min(self.p.spill, self.near.shape[1])
        db_c = Groups(self.near[centers, :t_sp].ravel(), self.cent.shape[0], np.repeat(np.arange(centers.size), t_sp))
        pos, _, todo = self._rounds(queries, db_c, centers)
        self.info["assign_global"] = int(todo.size)
        if todo.size:
            pos[todo], _ = _global_search(self.x, queries[todo], centers, None, self.dt, self.workers)
        return pos

    def finish(self, timings: dict) -> DPCKNNState:
        return DPCKNNState.after_run(self.state, self.cent, self.info, timings)

    def close(self) -> None:
        scratch.bufs.clear()  # this thread's work buffers (worker threads free theirs when they end)


# ----------------------------------------------------------------------------------------------
# the searches


def _knn_join(x, near: np.ndarray, ncells: int, cent: np.ndarray, p: ApproxParams, m: int, dt, workers):
    """The ``m`` nearest candidates of every token (self excluded), approximate: every token is
    in the ``spill`` cells first in its row of ``near``, and all pairs of tokens sharing a cell
    are compared (one all-pairs block per cell); the per-cell lists are merged per token.

    Returns (ids int32 [N, m], float32 squared distances [N, m]) sorted by (distance, id); -1 /
    inf where fewer than m candidates were seen (tiny cells; see :meth:`IVFSearch.knn`).
    """
    n = x.shape[0]
    t = min(p.spill, near.shape[1])
    lists = Groups(near[:, :t].ravel(), ncells)  # items: token * t + slot
    part_ids = np.full((n, t, m), -1, dtype=np.int32 if n < 2**31 else np.int64)
    part_d2 = np.full((n, t, m), np.inf, dtype=np.float32)

    def one(c):
        f = lists.members(c)
        tok, slot = f // t, f % t
        cb = Block(x, tok, torch.from_numpy(cent[c]), dt, "cand", CT)
        kk = min(m + 1 + p.slack, tok.size)
        heap = Heap(tok.size, kk)
        scan(heap, cb, cb)
        ex = exact_sq(cb.f, cb.f, heap.ids)
        ids, ex = finish_rows(tok, np.where(heap.ids >= 0, tok[np.maximum(heap.ids, 0)], -1), ex, m,
                               exclude_self=True)
        ids[~np.isfinite(ex)] = -1
        w = ids.shape[1]
        part_ids[tok, slot, :w] = ids
        part_d2[tok, slot, :w] = ex

    busy = np.flatnonzero(lists.sizes)
    parallel(one, busy[np.argsort(-lists.sizes[busy], kind="stable")], workers)  # big cells first
    nbr = np.empty((n, m), dtype=part_ids.dtype)
    nd2 = np.empty((n, m), dtype=np.float32)
    for s in range(0, n, ROWS):  # merge the t lists of each token (drop repeated ids)
        e = min(n, s + ROWS)
        ids = part_ids[s:e].reshape(e - s, t * m)
        d2 = part_d2[s:e].reshape(e - s, t * m)
        if t > 1:
            o = np.lexsort((d2, ids), axis=-1)  # by id, then distance
            ids, d2 = np.take_along_axis(ids, o, -1), np.take_along_axis(d2, o, -1)
            dup = np.zeros(ids.shape, dtype=bool)
            dup[:, 1:] = ids[:, 1:] == ids[:, :-1]
            d2 = np.where(dup, np.inf, d2)
            ids = np.where(dup, -1, ids)
        o = np.lexsort((np.where(ids < 0, np.iinfo(np.int32).max, ids), d2), axis=-1)[:, :m]
        nbr[s:e] = np.take_along_axis(ids, o, -1)
        nd2[s:e] = np.take_along_axis(d2, o, -1)
    return nbr, nd2


def _cell_search(x, queries, qcells: np.ndarray, db: Groups, db_ids: np.ndarray, cent, dt, workers,
                 rank=None, kk=4):
    """Nearest database item for each query among the db items of the cells in its row of
    ``qcells`` [nq, r].

    ``db`` groups db *positions* by cell; ``db_ids`` maps positions to token ids.  With ``rank``,
    only items denser than the query (rank smaller) count.  Returns (best position or -1, exact
    float32 squared distance or inf); ties go to the smaller position.

    Organised by *database* cell: each db cell is loaded once and compared with every query that
    searches it (the queries are usually few: local peaks, tokens without a center among their
    candidates), so the tokens are read ~once instead of r times.
    """
    nq = queries.size
    best_pos = np.full(nq, -1, dtype=np.int64)
    best_d2 = np.full(nq, np.inf, dtype=np.float32)
    if nq == 0:
        return best_pos, best_d2
    by_db = Groups(qcells.ravel(), db.sizes.size, np.repeat(np.arange(nq), qcells.shape[1]))
    qrank = rank[queries] if rank is not None else None
    big = np.iinfo(np.int64).max
    lock = threading.Lock()

    def one(pc):
        qpos = np.unique(by_db.members(pc))
        cpos = db.members(pc)
        mask = None
        if rank is not None:
            crank = rank[db_ids[cpos]]
            keep = crank < qrank[qpos].max()
            cpos, crank = cpos[keep], crank[keep]
            qr = qrank[qpos]

            def rank_mask(sc, s, r, c0, w):
                sc[:r, :w][crank[None, c0 : c0 + w] >= qr[s : s + r, None]] = np.inf

            mask = rank_mask

        if cpos.size == 0:
            return
        ctr = torch.from_numpy(cent[pc])
        cb = Block(x, db_ids[cpos], ctr, dt, "cand", CT)
        for s in range(0, qpos.size, 4096):
            qs = qpos[s : s + 4096]
            qb = Block(x, queries[qs], ctr, dt, "query", QT)
            heap = Heap(qs.size, min(kk, cpos.size))
            scan(heap, qb, cb, mask=None if mask is None else
                  (lambda sc, s2, r, c0, w, s=s: mask(sc, s + s2, r, c0, w)))
            ex = exact_sq(qb.f[: qs.size], cb.f, heap.ids)
            pos = np.where(heap.ids >= 0, cpos[np.maximum(heap.ids, 0)], big)
            pos, ex = finish_rows(None, pos, ex, 1, exclude_self=False)
            pos, ex = pos[:, 0], ex[:, 0]
            with lock:
                better = (ex < best_d2[qs]) | ((ex == best_d2[qs]) & (pos < best_pos[qs]))
                better &= np.isfinite(ex)
                best_d2[qs[better]] = ex[better]
                best_pos[qs[better]] = pos[better]

    busy = np.flatnonzero(by_db.sizes)
    parallel(one, busy[np.argsort(-db.sizes[busy], kind="stable")], workers)
    return best_pos, best_d2


def _global_search(x, queries, cols: np.ndarray, limit: np.ndarray | None, dt, workers, kk=4):
    """Nearest of ``cols`` (token ids, in order) for each query; with ``limit``, query i only
    considers ``cols[:limit[i]]``.  Blocked over queries and columns (columns split between the
    workers); the ``kk`` best of each worker by the fast product are re-ranked in float64.
    Returns (position in ``cols``, squared distance); ties go to the smaller position."""
    nq = queries.size
    best_pos = np.full(nq, -1, dtype=np.int64)
    best_d2 = np.full(nq, np.inf, dtype=np.float32)
    if nq == 0:
        return best_pos, best_d2
    order = np.argsort(limit, kind="stable") if limit is not None else np.arange(nq)
    mu = torch.from_numpy(x[queries[: min(nq, 1024)]].mean(axis=0))
    qblock, cblock = 2048, 8192
    big = np.iinfo(np.int64).max
    for s in range(0, nq, qblock):
        qi = order[s : s + qblock]
        ncol = int(limit[qi].max()) if limit is not None else cols.size
        lim = limit[qi] if limit is not None else None
        bounds = np.linspace(0, ncol, min(workers, max(1, ncol // cblock)) + 1).astype(np.int64)

        def part(j):
            qb = Block(x, queries[qi], mu, dt, "query", QT)
            heap = Heap(qi.size, kk)
            for c0 in range(int(bounds[j]), int(bounds[j + 1]), cblock):
                c1 = min(int(bounds[j + 1]), c0 + cblock)
                cb = Block(x, cols[c0:c1], mu, dt, "cand", CT)
                mask = None
                if lim is not None:
                    def limit_mask(sc, s2, r, cc0, w, c0=c0):  # column c0 + cc0 + j allowed iff < limit
                        sc[:r, :w][np.arange(c0 + cc0, c0 + cc0 + w)[None, :] >= lim[s2 : s2 + r, None]] = np.inf

                    mask = limit_mask
                scan(heap, qb, cb, j0=c0, mask=mask)
            return heap.ids

        pos = np.concatenate(parallel(part, range(bounds.size - 1), workers), axis=1)
        valid = pos >= 0
        a = np.repeat(queries[qi], pos.shape[1])
        b = cols[np.where(valid, pos, 0)].ravel()
        diff = x[a].astype(np.float64) - x[b]
        ex = np.einsum("ij,ij->i", diff, diff).reshape(pos.shape).astype(np.float32)
        ex[~valid] = np.inf
        pos_s, ex_s = finish_rows(queries[qi], np.where(valid, pos, big), ex, 1, False)
        ok = np.isfinite(ex_s[:, 0])
        best_pos[qi[ok]] = pos_s[ok, 0]
        best_d2[qi[ok]] = ex_s[ok, 0]
    return best_pos, best_d2


def _global_knn(x, rows: np.ndarray, m: int, p: ApproxParams, dt, workers):
    """The m nearest tokens (self excluded) of x[rows] among all tokens, sorted by (distance, id):
    blocked scan of everything (columns split between the workers), re-ranked exactly.  Used
    for the few tokens whose cells are too small to supply m candidates."""
    n = x.shape[0]
    mu = torch.from_numpy(x[rows[: min(rows.size, 1024)]].mean(axis=0))
    kk = min(n, m + 1 + p.slack)
    cblock = 8192
    bounds = np.linspace(0, n, min(workers, max(1, n // cblock)) + 1).astype(np.int64)
    xt = torch.from_numpy(x)
    out_i = np.empty((rows.size, m), dtype=np.int64)
    out_d = np.empty((rows.size, m), dtype=np.float32)
    for s in range(0, rows.size, 2048):
        q = rows[s : s + 2048]

        def part(j, q=q):
            qb = Block(x, q, mu, dt, "query", QT)
            heap = Heap(q.size, kk)
            for c0 in range(int(bounds[j]), int(bounds[j + 1]), cblock):
                c1 = min(int(bounds[j + 1]), c0 + cblock)
                scan(heap, qb, Block(x, np.arange(c0, c1), mu, dt, "cand", CT), j0=c0)
            return heap.ids

        ids = np.concatenate(parallel(part, range(bounds.size - 1), workers), axis=1)
        ex = exact_sq(torch.from_numpy(x[q]), xt, ids)
        ids, ex = finish_rows(q, ids, ex, m, exclude_self=True)
        out_i[s : s + q.size], out_d[s : s + q.size] = ids, ex
    return out_i, out_d
