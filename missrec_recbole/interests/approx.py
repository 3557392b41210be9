"""Approximate DPC-KNN for large N: a cell-partitioned (IVF) kNN join with exact re-ranking.

Same definitions as the exact mode (:mod:`missrec_recbole.interests.dpc_knn`); what is approximate
is only *which* points are looked at:

1. **Coarse partition (IVF)**: ``nlist`` centroids trained by Lloyd's k-means on a random sample
   (or warm-started from the centroids of the previous refresh, see :class:`DPCKNNState`); every
   token goes to its nearest centroid ("cell").  Inverted lists hold token *ids* only -- vectors are
   read from the caller's array, so there is no second copy of the N x d matrix.
2. **kNN join**: all tokens of a cell are searched at once against the tokens of the ``nprobe``
   cells nearest to that cell's centroid (its own cell first): one matrix product per cell
   (bfloat16 on CPUs with AMX/AVX512-BF16, float32 otherwise; vectors centred on the cell
   centroid, which keeps the low-precision product accurate), the ``n_cand + 4`` best per row are
   re-ranked with float32 distances computed from the difference vectors, and the ``n_cand``
   nearest (self excluded, duplicates kept) are kept.  ``rho`` uses the first ``k`` of them.
3. **delta**: the first denser point in a token's candidate list (``n_cand`` > k entries, sorted by
   exact distance).  Tokens without one are searched against the denser tokens of the
   ``nprobe_peak`` nearest cells, then ``4 * nprobe_peak``, and the rest (the true density peaks of
   far-apart clusters) against *all* denser tokens in blocks (denser tokens form a prefix of the
   density order, so block cost is the rank of the query).  The densest token gets its maximal
   distance.
4. **Assignment**: the nearest center in a token's candidate list (a center is its own nearest
   center); the rest are searched against the centers of the nearest cells (widening), and
   finally against all centers in blocks.

Memory: O(N*n_cand + N*d/8 + nlist*d + block temporaries of ~16 MiB), plus a float32 copy of the
tokens only when they are not already a C-contiguous float32 array; no N x N array, no float64 copy
of the matrix.  Work: about ``N*d*(nlist + nprobe*N/nlist)`` multiply-adds for the kNN join, and
the peak/assignment searches, which are small on clustered data.
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace

import faiss
import numpy as np
import torch

__all__ = ["ApproxParams", "DPCKNNState", "approx_params", "approx_dpc"]

_EL_BUDGET = 1 << 22  # elements per [rows x cols] score block (16 MiB in float32)
_EXACT_BUDGET = 1 << 22  # elements per [rows x cand x d] re-ranking block
_ROWS = 1 << 16  # rows per block of the vectorised list post-processing


# ----------------------------------------------------------------------------------------------
# parameters and state


@dataclass(frozen=True)
class ApproxParams:
    """Parameters of the approximate mode (see :func:`approx_params` for the defaults from N).

    Attributes:
        nlist: number of IVF cells (k-means centroids).
        nprobe: cells searched per query cell in the kNN join (its own cell included).
        nprobe_peak: cells searched for the nearest denser point of a local peak, and for the
            nearest center of a token without a center in its candidate list (first round).
        n_cand: candidates kept per token (>= k); more resolve more tokens without extra search.
        kmeans_sample: training sample size of the coarse quantizer.
        kmeans_iters: Lloyd iterations from scratch.
        warm_iters: Lloyd iterations when warm-started from a previous :class:`DPCKNNState`.
        slack: extra candidates per token taken from the fast (bfloat16) product and re-ranked
            with exact float32 distances (``n_cand + 1 + slack`` in all), absorbing its rounding.
        gemm: "auto" (bfloat16 if the CPU has AMX-BF16 or AVX512-BF16, else float32), "bf16" or
            "fp32": precision of the candidate-generating matrix products.
        seed: seed of the k-means sample / initialisation.
    """

    nlist: int
    nprobe: int
    nprobe_peak: int
    n_cand: int
    kmeans_sample: int
    kmeans_iters: int = 10
    warm_iters: int = 3
    slack: int = 4
    gemm: str = "auto"
    seed: int = 0


def approx_params(n: int, k: int, **overrides) -> ApproxParams:
    """Defaults chosen from N (and k); any field can be overridden by keyword.

    * ``nlist = round(2 * sqrt(N))`` (at most N // 32, at least 1): cells of ~sqrt(N)/2 tokens,
      which balances the coarse assignment (N * nlist) against the join (N * nprobe * N / nlist).
    * ``nprobe = 8``, ``nprobe_peak = 16`` (capped at nlist).
    * ``n_cand = max(2k, k + 8)`` (at most N - 1).
    * k-means on ``min(N, 32 * nlist)`` sampled tokens, 10 iterations (3 when warm-started).
    """
    unknown = set(overrides) - {f.name for f in fields(ApproxParams)}
    if unknown:
        raise ValueError(f"unknown approximate-mode parameter(s): {sorted(unknown)}")
    overrides = {key: v for key, v in overrides.items() if v is not None}
    nlist = int(max(1, min(round(2.0 * math.sqrt(n)), n // 32)))
    nlist = int(overrides.pop("nlist", nlist))
    nprobe = int(overrides.pop("nprobe", 8))
    p = ApproxParams(
        nlist=nlist,
        nprobe=nprobe,
        nprobe_peak=int(overrides.pop("nprobe_peak", 2 * nprobe)),
        n_cand=int(overrides.pop("n_cand", max(2 * k, k + 8))),
        kmeans_sample=int(overrides.pop("kmeans_sample", 32 * nlist)),
        **overrides,
    )
    for name in ("nlist", "nprobe", "nprobe_peak", "n_cand", "kmeans_sample"):
        v = getattr(p, name)
        if isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if p.kmeans_iters < 0 or p.warm_iters < 0 or p.slack < 0:
        raise ValueError("kmeans_iters, warm_iters and slack must be >= 0")
    if p.gemm not in ("auto", "bf16", "fp32"):
        raise ValueError(f"gemm must be 'auto', 'bf16' or 'fp32', got {p.gemm!r}")
    return p


@dataclass
class DPCKNNState:
    """Reusable state across refreshes (approximate mode): the trained IVF coarse quantizer.

    Between two epochs only the adapter outputs move, so the cells of the previous refresh are a
    good starting point: the next call runs ``warm_iters`` Lloyd iterations from these centroids
    (on a fresh sample of the *current* tokens) instead of ``kmeans_iters`` from scratch.  This is
    always correct -- any partition gives a valid (approximate) search, and the centroids are
    re-fitted to the current tokens -- and it is used only when d and nlist match.  Everything
    else (cell membership, kNN lists) is recomputed, since every token has moved.

    Attributes:
        centroids: float32 [nlist, d] in token coordinates, or None.
        refreshes: number of approximate runs that produced/updated this state.
        last: summary of the last run (parameters, counts, timings).
    """

    centroids: np.ndarray | None = None
    refreshes: int = 0
    last: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# helpers


def _gemm_dtype(pref: str) -> torch.dtype:
    if pref == "fp32":
        return torch.float32
    if pref == "bf16":
        return torch.bfloat16
    try:
        caps = torch.cpu.get_capabilities()
        fast = bool(caps.get("amx_bf16") or caps.get("avx512_bf16"))
    except Exception:  # pragma: no cover - older torch
        fast = False
    return torch.bfloat16 if fast else torch.float32


@contextmanager
def torch_threads(n_threads: int | None):
    """Set torch's intra-op thread count for the block, restore it afterwards."""
    if n_threads is None:
        yield
        return
    prev = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def _parallel(fn, items, workers: int) -> list:
    """``[fn(i) for i in items]`` on ``workers`` Python threads (torch runs single-threaded inside).

    Independent work items on separate threads instead of intra-op parallelism: the per-cell
    operations are small, and OpenMP barriers on a busy 2-core machine cost more than the work.
    """
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [fn(i) for i in items]

    def run(i):
        # OpenMP thread counts are per thread: make FAISS and torch (oneDNN) single-threaded here
        faiss.omp_set_num_threads(1)
        torch.set_num_threads(1)  # (the process-wide value is already 1 during approx_dpc)
        return fn(i)

    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as ex:
        return list(ex.map(run, items))


class _Groups:
    """Items grouped by cell: ``members(c) = items[off[c]:off[c + 1]]``."""

    def __init__(self, cell_of: np.ndarray, nlist: int, items: np.ndarray | None = None):
        order = np.argsort(cell_of, kind="stable")
        self.items = order if items is None else items[order]
        self.off = np.zeros(nlist + 1, dtype=np.int64)
        np.cumsum(np.bincount(cell_of, minlength=nlist), out=self.off[1:])
        self.sizes = np.diff(self.off)

    def members(self, c: int) -> np.ndarray:
        return self.items[self.off[c] : self.off[c + 1]]

    def union(self, cells: np.ndarray) -> np.ndarray:
        return np.concatenate([self.items[self.off[c] : self.off[c + 1]] for c in cells])


class _Probe:
    """For each cell c, the cells p by increasing ``||cent_c - cent_p||^2 + spread_p`` (own cell
    first), ``spread_p`` = mean squared distance of p's tokens to its centroid: the expected
    squared distance from c's centroid to a token of p.  Plain centroid distance would favour
    "hub" cells -- broad cells whose centroid lies near the mean of many clusters are the nearest
    centroid of nearly every cell in high dimension, yet rarely hold anyone's neighbours."""

    def __init__(self, cent: torch.Tensor, width: int, spread: torch.Tensor | None = None):
        nlist = cent.shape[0]
        self.nlist = nlist
        self.width = min(nlist, width)
        self.spread = spread if spread is not None else torch.zeros(nlist)
        cn = (cent * cent).sum(1)
        rows = []
        step = max(1, _EL_BUDGET // nlist)
        for s in range(0, nlist, step):
            d2 = cn[s : s + step, None] + cn[None, :] - 2.0 * (cent[s : s + step] @ cent.T)
            d2 += self.spread[None, :]
            d2[torch.arange(d2.shape[0]), torch.arange(s, s + d2.shape[0])] = -1.0  # own first
            rows.append(torch.topk(d2, self.width, dim=1, largest=False, sorted=True).indices)
        self.near = torch.cat(rows).numpy()
        self.cent = cent

    def cells(self, c: int, nprobe: int, sizes: np.ndarray, min_items: int) -> np.ndarray:
        """The ``nprobe`` nearest cells of ``c``, more if they hold fewer than ``min_items`` items."""
        row = self.near[c]
        if nprobe <= row.size:
            chosen = row[:nprobe]
            if sizes[chosen].sum() >= min_items:
                return chosen
            cum = np.cumsum(sizes[row])
            j = int(np.searchsorted(cum, min_items))
            if j < row.size:
                return row[: j + 1]
        # wider than the precomputed list: all cells by distance
        d2 = ((self.cent - self.cent[c]) ** 2).sum(1) + self.spread
        d2[c] = -1.0
        full = torch.argsort(d2).numpy()
        if nprobe >= self.nlist:
            return full
        cum = np.cumsum(sizes[full])
        j = max(nprobe - 1, int(np.searchsorted(cum, min_items)))
        return full[: j + 1]


class _Scratch(threading.local):
    """Per-thread reusable work buffers (grown geometrically, never shrunk during a call).

    The per-cell temporaries change size from cell to cell; allocating them afresh fragments
    glibc's per-thread arenas (hundreds of MiB kept) and costs page faults.  Cleared at the end
    of every :func:`approx_dpc` call (worker threads free theirs when they exit).
    """

    def __init__(self):
        self.bufs: dict = {}

    def get(self, name: str, shape: tuple, dtype=torch.float32) -> torch.Tensor:
        n = 1
        for v in shape:
            n *= int(v)
        buf = self.bufs.get(name)
        if buf is None or buf.dtype != dtype or buf.numel() < n:
            old = buf.numel() if buf is not None and buf.dtype == dtype else 0
            buf = torch.empty(max(n, old + old // 2, 1024), dtype=dtype)
            self.bufs[name] = buf
        return buf[:n].view(*shape)


_scratch = _Scratch()

# Matrix products always have one of a few fixed shapes: [QT' x d] x [d x CT] with QT' in
# _ROW_TILES.  oneDNN (torch's bfloat16 matmul) JIT-compiles and caches a kernel per shape (about
# 1 MiB each, kept for the life of the process), so free shapes would cost memory and time.
_CT = 512  # candidate columns per tile
_ROW_TILES = (16, 32, 64, 128)
_QT = _ROW_TILES[-1]


def _pad(n: int, tile: int) -> int:
    return -(-n // tile) * tile


def _rows(x: np.ndarray, ids: np.ndarray) -> torch.Tensor:
    """Fresh float32 tensor x[ids]."""
    return torch.from_numpy(x[ids])


class _Block:
    """Copies of some tokens (``x[ids]`` or ``src``) for one search step, rows padded with zeros
    to a multiple of ``tile``: ``f`` float32 as given (for the exact distances), ``b`` centred on
    ``ctr`` in the product precision, ``n`` the squared norms of ``b``.  In the calling thread's
    scratch buffers ``name`` (fresh tensors if name is None)."""

    __slots__ = ("f", "n", "b", "size")

    def __init__(self, x: np.ndarray | None, ids: np.ndarray | None, ctr: torch.Tensor, dt, name: str | None,
                 tile: int, src: torch.Tensor | None = None):
        size = int(ids.size if ids is not None else src.shape[0])
        d = x.shape[1] if x is not None else src.shape[1]
        rows = _pad(max(size, 1), tile)
        get = _scratch.get if name is not None else (lambda _n, shape, dtype=torch.float32: torch.empty(shape, dtype=dtype))
        f = get(name, (rows, d))
        if ids is not None:  # (index_select is ~3x faster than np.take(out=) here)
            torch.index_select(torch.from_numpy(x), 0, torch.from_numpy(np.asarray(ids, dtype=np.int64)),
                               out=f[:size])
        else:
            f[:size].copy_(src)
        c = get(f"{name}_c", (rows, d))
        torch.sub(f[:size], ctr, out=c[:size])
        c[size:].zero_()
        nrm = get(f"{name}_n", (rows,))
        torch.linalg.vector_norm(c, dim=1, out=nrm)
        nrm.square_()
        if dt == torch.float32:
            b = c
        else:  # (f32 -> bf16 copy is faster than a mixed-type subtraction)
            b = get(f"{name}_b", (rows, d), dt)
            b.copy_(c)
        self.f, self.n, self.b, self.size = f, nrm, b, size


class _Heap:
    """FAISS max-heaps: the ``kk`` smallest scores (and their column ids) of each of ``nq`` rows;
    O(1) per score that does not enter the heap."""

    def __init__(self, nq: int, kk: int):
        self.ids = np.empty((nq, kk), dtype=np.int64)
        self.val = np.empty((nq, kk), dtype=np.float32)
        self.h = faiss.float_maxheap_array_t()
        self.h.nh, self.h.k = nq, kk
        self.h.ids, self.h.val = faiss.swig_ptr(self.ids), faiss.swig_ptr(self.val)
        self.h.heapify()  # ids -1, values +FLT_MAX: +inf scores never enter


def _scan(heap: _Heap, q: _Block, c: _Block, q0: int = 0, j0: int = 0, mask=None) -> None:
    """Add the approximate scores ``||c||^2 - 2 q.c`` (the squared distance minus the row constant
    ``||q||^2``) of every (query, candidate) pair to ``heap`` (rows q0.., column ids j0..), tile
    by tile.  ``mask(sc, s, r, c0, w)`` may set disallowed entries of a tile to +inf."""
    tiles = {}
    for s in range(0, q.size, _QT):
        r = min(_QT, q.size - s)
        rt = next(t for t in _ROW_TILES if t >= r)
        if rt not in tiles:
            tiles[rt] = (_scratch.get("gemm%d" % rt, (rt, _CT), q.b.dtype), _scratch.get("scores%d" % rt, (rt, _CT)))
        g, sc_t = tiles[rt]
        sc = sc_t.numpy()
        qt = q.b[s : s + rt]
        for c0 in range(0, c.size, _CT):
            w = min(_CT, c.size - c0)
            torch.mm(qt, c.b[c0 : c0 + _CT].T, out=g)
            torch.add(c.n[None, c0 : c0 + _CT], g, alpha=-2.0, out=sc_t)
            if w < _CT:
                sc[:, w:] = np.inf
            if mask is not None:
                mask(sc, s, r, c0, w)
            heap.h.addn(_CT, faiss.swig_ptr(sc), j0 + c0, q0 + s, r)


def _exact_sq(q: torch.Tensor, c: torch.Tensor, idx: np.ndarray) -> np.ndarray:
    """float32 ``||q[r] - c[idx[r, j]]||^2`` [b, kk] from the difference vectors (FAISS
    ``fvec_L2sqr_by_idx``: no gathered copy); inf where idx < 0.  q, c: C-contiguous float32."""
    nq, kk = idx.shape
    out = np.empty((nq, kk), dtype=np.float32)
    if nq == 0 or kk == 0:
        return out
    ids = np.ascontiguousarray(np.maximum(idx, 0), dtype=np.int64)
    qn, cn = q[:nq].numpy(), c.numpy()
    assert qn.flags.c_contiguous and cn.flags.c_contiguous
    faiss.fvec_L2sqr_by_idx(faiss.swig_ptr(out), faiss.swig_ptr(qn), faiss.swig_ptr(cn), faiss.swig_ptr(ids),
                            q.shape[1], nq, kk)
    out[idx < 0] = np.inf
    return out


def _finish_rows(q, ids, e, m, exclude_self):
    """Sort candidates by (distance, id), drop self, keep m."""
    if exclude_self:
        e[ids == q[:, None]] = np.inf
    order = np.lexsort((ids, e), axis=-1)[:, :m]
    return np.take_along_axis(ids, order, -1), np.take_along_axis(e, order, -1)


# ----------------------------------------------------------------------------------------------
# coarse quantizer


def _nearest(xs: torch.Tensor | None, x: np.ndarray | None, rows: np.ndarray | None, mu: torch.Tensor,
             cent: torch.Tensor, dt, workers) -> np.ndarray:
    """Nearest centroid (rows of ``cent``, float32, original coordinates) of every row of ``xs``
    (a float32 tensor, already centred on ``mu``) or of ``x[rows]`` (all rows if None), and the
    (approximate) squared distance to it."""
    n = xs.shape[0] if xs is not None else (x.shape[0] if rows is None else rows.size)
    out = np.empty(n, dtype=np.int64)
    dist = np.empty(n, dtype=np.float32)
    step = 4096

    cb = _Block(None, None, mu, dt, None, _CT, src=cent)  # shared, read-only

    def one(s):
        e = min(n, s + step)
        if xs is not None:
            q = _Block(None, None, torch.zeros_like(mu), dt, "query", _QT, src=xs[s:e])
        else:
            ids = np.arange(s, e) if rows is None else rows[s:e]
            q = _Block(x, ids, mu, dt, "query", _QT)
        heap = _Heap(e - s, 1)
        _scan(heap, q, cb)
        out[s:e] = heap.ids[:, 0]
        dist[s:e] = heap.val[:, 0] + q.n[: e - s].numpy()

    _parallel(one, range(0, n, step), workers)
    return out, dist


def _kmeans(x: np.ndarray, rows: np.ndarray | None, ncent: int, sample: int, iters: int,
            init: np.ndarray | None, dt, rng, workers) -> np.ndarray:
    """Lloyd's k-means of x[rows] (all rows if None) on a random sample of ``sample`` rows;
    float32 centroids [ncent, d].  Initialised with ``init`` or with random sample points; empty
    clusters are re-seeded with random sample points."""
    n = x.shape[0] if rows is None else rows.size
    s = min(n, max(sample, ncent))
    idx = np.sort(rng.choice(n, size=s, replace=False)) if s < n else np.arange(n)
    xs = _rows(x, idx if rows is None else rows[idx])
    mu = xs.mean(dim=0)
    xs -= mu
    if init is not None:
        cent = torch.from_numpy(np.array(init, dtype=np.float32)) - mu
    else:
        cent = xs[torch.from_numpy(rng.choice(s, size=ncent, replace=False))].clone()
    zero = torch.zeros_like(mu)
    for _ in range(iters):
        lab = torch.from_numpy(_nearest(xs, None, None, zero, cent, dt, workers)[0])
        sums = torch.zeros_like(cent).index_add_(0, lab, xs)
        cnt = torch.bincount(lab, minlength=ncent)
        empty = torch.nonzero(cnt == 0).squeeze(1)
        cent = sums / cnt.clamp(min=1)[:, None].float()
        if empty.numel():
            cent[empty] = xs[torch.from_numpy(rng.choice(s, size=empty.numel(), replace=False))]
    return (cent + mu).numpy().astype(np.float32)


def _assign(x: np.ndarray, rows: np.ndarray | None, cent: np.ndarray, dt, workers):
    """Nearest centroid of x[rows] (all rows if None) and the squared distance to it."""
    ct = torch.from_numpy(cent)
    return _nearest(None, x, rows, ct.mean(0), ct, dt, workers)


def _split_oversized(x, labels, dist, cent, target: int, p: ApproxParams, dt, rng, workers, rounds: int = 8):
    """Split every cell with more than ``2 * target`` tokens into ceil(size / target) cells by
    k-means on its members (repeated: a split can leave one big cell again).

    Needed because on data with many well-separated clusters (more than nlist), plain k-means
    leaves a few "catch-all" centroids near the mean of many clusters, whose cells are huge, and
    the join costs the square of a cell's size.  ``dist`` (squared distance of each token to its
    centroid) is updated in place.  Returns (labels, centroids, number of splits).
    """
    n_split = 0
    for _ in range(rounds):
        groups = _Groups(labels, cent.shape[0])
        big = np.flatnonzero(groups.sizes > 2 * target)
        if big.size == 0:
            break
        new = [cent]
        nxt = cent.shape[0]
        for c in big:
            mem = groups.members(c)
            nsub = int(math.ceil(mem.size / target))
            sub = _kmeans(x, mem, nsub, 32 * nsub, p.kmeans_iters, None, dt, rng, workers)
            lab, dist[mem] = _assign(x, mem, sub, dt, workers)
            keep = lab == 0
            cent[c] = sub[0]
            labels[mem[~keep]] = nxt - 1 + lab[~keep]
            new.append(sub[1:])
            nxt += nsub - 1
            n_split += 1
        cent = np.concatenate(new)
        sizes = np.bincount(labels, minlength=cent.shape[0])
        if (sizes == 0).any():  # drop empty cells
            keep = np.flatnonzero(sizes)
            remap = np.full(cent.shape[0], -1, dtype=np.int64)
            remap[keep] = np.arange(keep.size)
            labels = remap[labels]
            cent = cent[keep]
    return labels, cent, n_split


# ----------------------------------------------------------------------------------------------
# the three searches


def _knn_join(x, cells: _Groups, probe: _Probe, cent: np.ndarray, p: ApproxParams, m: int, dt, workers):
    """The ``m`` nearest candidates of every token (self excluded), approximate: searched among
    the tokens of the ``nprobe`` cells nearest to its own cell."""
    n = x.shape[0]
    nbr = np.empty((n, m), dtype=np.int32 if n < 2**31 else np.int64)
    nd2 = np.empty((n, m), dtype=np.float32)

    def one(c):
        q = cells.members(c)
        nq = q.size
        cand = cells.union(probe.cells(c, p.nprobe, cells.sizes, m + 1))  # own cell first
        cb = _Block(x, cand, torch.from_numpy(cent[c]), dt, "cand", _CT)
        kk = min(m + 1 + p.slack, cand.size)
        heap = _Heap(nq, kk)
        qv = _Block.__new__(_Block)  # the queries are the first nq candidates
        qv.f, qv.n, qv.b, qv.size = cb.f, cb.n, cb.b, nq
        _scan(heap, qv, cb)
        ex = _exact_sq(cb.f[:nq], cb.f, heap.ids)
        ids, ex = _finish_rows(q, cand[np.maximum(heap.ids, 0)], ex, m, exclude_self=True)
        nbr[q] = ids
        nd2[q] = ex

    busy = np.flatnonzero(cells.sizes)
    _parallel(one, busy[np.argsort(-cells.sizes[busy], kind="stable")], workers)  # big cells first
    return nbr, nd2


def _cell_search(x, queries, q_cell, db: _Groups, db_ids: np.ndarray, probe: _Probe, cent, nprobe,
                 dt, workers, rank=None, kk=4):
    """Nearest database item for each query among the db items of the ``nprobe`` cells nearest
    to the query's cell.

    ``db`` groups db *positions* by cell; ``db_ids`` maps positions to token ids.  With ``rank``,
    only items denser than the query (rank smaller) count.  Returns (best position or -1, exact
    float32 squared distance or inf); ties go to the smaller position.

    Organised by *database* cell: each db cell is loaded once and compared with every query
    whose probe list contains it (the queries are usually few: local peaks, tokens without a
    center among their candidates), so the tokens are read ~once instead of nprobe times.
    """
    nq = queries.size
    best_pos = np.full(nq, -1, dtype=np.int64)
    best_d2 = np.full(nq, np.inf, dtype=np.float32)
    if nq == 0:
        return best_pos, best_d2
    groups = _Groups(q_cell, probe.nlist, np.arange(nq))
    qcells = np.flatnonzero(groups.sizes)
    plist = [probe.cells(c, nprobe, db.sizes, 1) for c in qcells]
    pair_q = np.repeat(qcells, [len(pc) for pc in plist])
    pair_p = np.concatenate(plist)
    by_db = _Groups(pair_p, probe.nlist, pair_q)  # db cell -> query cells probing it
    qrank = rank[queries] if rank is not None else None
    big = np.iinfo(np.int64).max
    lock = threading.Lock()

    def one(pc):
        qpos = np.concatenate([groups.members(c) for c in by_db.members(pc)])
        cpos = db.members(pc)
        mask = None
        if rank is not None:
            crank = rank[db_ids[cpos]]
            keep = crank < qrank[qpos].max()
            cpos, crank = cpos[keep], crank[keep]
            qr = qrank[qpos]

            def mask(sc, s, r, c0, w):
                sc[:r, :w][crank[None, c0 : c0 + w] >= qr[s : s + r, None]] = np.inf

        if cpos.size == 0:
            return
        ctr = torch.from_numpy(cent[pc])
        cb = _Block(x, db_ids[cpos], ctr, dt, "cand", _CT)
        for s in range(0, qpos.size, 4096):  # a "hub" cell can be probed by most queries
            qs = qpos[s : s + 4096]
            qb = _Block(x, queries[qs], ctr, dt, "query", _QT)
            heap = _Heap(qs.size, min(kk, cpos.size))
            _scan(heap, qb, cb, mask=None if mask is None else
                  (lambda sc, s2, r, c0, w, s=s: mask(sc, s + s2, r, c0, w)))
            ex = _exact_sq(qb.f[: qs.size], cb.f, heap.ids)
            pos = np.where(heap.ids >= 0, cpos[np.maximum(heap.ids, 0)], big)
            pos, ex = _finish_rows(None, pos, ex, 1, exclude_self=False)
            pos, ex = pos[:, 0], ex[:, 0]
            with lock:
                better = (ex < best_d2[qs]) | ((ex == best_d2[qs]) & (pos < best_pos[qs]))
                better &= np.isfinite(ex)
                best_d2[qs[better]] = ex[better]
                best_pos[qs[better]] = pos[better]

    busy = np.flatnonzero(by_db.sizes)
    _parallel(one, busy[np.argsort(-db.sizes[busy], kind="stable")], workers)
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
            qb = _Block(x, queries[qi], mu, dt, "query", _QT)
            heap = _Heap(qi.size, kk)
            for c0 in range(int(bounds[j]), int(bounds[j + 1]), cblock):
                c1 = min(int(bounds[j + 1]), c0 + cblock)
                cb = _Block(x, cols[c0:c1], mu, dt, "cand", _CT)
                mask = None
                if lim is not None:
                    def mask(sc, s2, r, cc0, w, c0=c0):
                        sc[:r, :w][np.arange(c0 + cc0, c0 + cc0 + w)[None, :] >= lim[s2 : s2 + r, None]] = np.inf
                _scan(heap, qb, cb, j0=c0, mask=mask)
            return heap.ids

        pos = np.concatenate(_parallel(part, range(bounds.size - 1), workers), axis=1)
        valid = pos >= 0
        a = np.repeat(queries[qi], pos.shape[1])
        b = cols[np.where(valid, pos, 0)].ravel()
        diff = x[a].astype(np.float64) - x[b]
        ex = np.einsum("ij,ij->i", diff, diff).reshape(pos.shape).astype(np.float32)
        ex[~valid] = np.inf
        pos_s, ex_s = _finish_rows(queries[qi], np.where(valid, pos, big), ex, 1, False)
        ok = np.isfinite(ex_s[:, 0])
        best_pos[qi[ok]] = pos_s[ok, 0]
        best_d2[qi[ok]] = ex_s[ok, 0]
    return best_pos, best_d2


def _max_sqdist(x, i: int) -> float:
    xi = torch.from_numpy(x[i].astype(np.float32))
    best = 0.0
    step = max(1, _EL_BUDGET // x.shape[1])
    for s in range(0, x.shape[0], step):
        diff = torch.from_numpy(x[s : s + step]) - xi
        best = max(best, float(torch.einsum("ij,ij->i", diff, diff).max()))
    return best


# ----------------------------------------------------------------------------------------------


def approx_dpc(x: np.ndarray, n_centers: int, k: int, p: ApproxParams, state: DPCKNNState | None,
               workers: int = 1):
    """Approximate DPC-KNN (see :func:`_approx_dpc`); frees the scratch buffers afterwards."""
    try:
        return _approx_dpc(x, n_centers, k, p, state, workers)
    finally:
        _scratch.bufs.clear()


def _approx_dpc(x, n_centers, k, p, state, workers):
    """Approximate DPC-KNN on a C-contiguous, finite float32 array x [N, d] (N >= 2, 1 <= k < N).

    Returns (rho, delta, centers, assignment, n_peaks, knn [N, k], timings, state).
    """
    n, d = x.shape
    dt = _gemm_dtype(p.gemm)
    rng = np.random.default_rng(p.seed)
    nlist = min(p.nlist, n)
    p = replace(p, nlist=nlist)
    m = min(max(p.n_cand, k), n - 1)
    t = {}
    info: dict = {"nlist": nlist, "nprobe": p.nprobe, "nprobe_peak": p.nprobe_peak, "n_cand": m,
                  "gemm": str(dt).replace("torch.", "")}

    # 1. coarse quantizer (k-means, warm-started from the previous refresh when possible, then
    #    oversized cells split), cells, kNN join
    t0 = time.perf_counter()
    init = None
    if state is not None and state.centroids is not None and state.centroids.ndim == 2 \
            and state.centroids.shape[1] == d and nlist <= state.centroids.shape[0] <= n:
        init = state.centroids
    if init is not None:
        cent = _kmeans(x, None, init.shape[0], p.kmeans_sample, p.warm_iters, init, dt, rng, workers)
    elif nlist > 1:
        cent = _kmeans(x, None, nlist, p.kmeans_sample, p.kmeans_iters, None, dt, rng, workers)
    else:
        cent = x.mean(axis=0, dtype=np.float64)[None, :].astype(np.float32)
    info.update(warm_start=init is not None, kmeans_iters=p.warm_iters if init is not None else p.kmeans_iters)
    t["kmeans_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    labels, dist = _assign(x, None, cent, dt, workers)
    target = max(m + 1, int(math.ceil(n / nlist)))
    labels, cent, n_split = _split_oversized(x, labels, dist, cent, target, p, dt, rng, workers)
    cells = _Groups(labels, cent.shape[0])
    info.update(cells=int(cent.shape[0]), split=n_split, max_cell=int(cells.sizes.max()))
    ct = torch.from_numpy(cent)
    spread = np.bincount(labels, weights=dist, minlength=cent.shape[0]) / np.maximum(cells.sizes, 1)
    probe = _Probe(ct - ct.mean(0), max(4 * p.nprobe_peak, 64), torch.from_numpy(spread.astype(np.float32)))
    del dist
    t["coarse_s"] = time.perf_counter() - t1
    nbr, nd2 = _knn_join(x, cells, probe, cent, p, m, dt, workers)
    t["knn_s"] = time.perf_counter() - t0

    # 2. density
    t0 = time.perf_counter()
    rho = np.exp(-(nd2[:, :k].sum(axis=1, dtype=np.float64) / k))
    order = np.lexsort((np.arange(n), -rho))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    t["density_s"] = time.perf_counter() - t0

    # 3. delta
    t0 = time.perf_counter()
    has = np.empty(n, dtype=bool)
    delta2 = np.empty(n, dtype=np.float64)
    n_peaks = 0
    for s in range(0, n, _ROWS):  # row blocks: bounded temporaries
        e = min(n, s + _ROWS)
        denser = rank[nbr[s:e]] < rank[s:e, None]
        has[s:e] = denser.any(axis=1)
        n_peaks += int((~denser[:, :k].any(axis=1)).sum())
        delta2[s:e] = np.where(has[s:e], nd2[s:e][np.arange(e - s), denser.argmax(axis=1)], np.inf)
    top = int(order[0])
    pending = np.flatnonzero(~has)
    pending = pending[pending != top]
    info["peaks_list"] = int(pending.size)
    nprobe = p.nprobe_peak
    rounds = 0
    while pending.size and nprobe < probe.nlist // 2 and rounds < 2:
        _, d2 = _cell_search(x, pending, labels[pending], cells, np.arange(n), probe, cent, nprobe, dt,
                             workers, rank=rank)
        ok = np.isfinite(d2)
        delta2[pending[ok]] = d2[ok]
        pending = pending[~ok]
        nprobe *= 4
        rounds += 1
    info["peaks_global"] = int(pending.size)
    if pending.size:
        _, d2 = _global_search(x, pending, order, rank[pending], dt, workers)
        delta2[pending] = d2
    delta2[top] = _max_sqdist(x, top)
    delta = np.sqrt(delta2)
    t["delta_s"] = time.perf_counter() - t0

    # 4. centers and assignment
    t0 = time.perf_counter()
    score = rho * delta
    centers = np.lexsort((np.arange(n), -score))[:n_centers].astype(np.int64)
    n_centers = centers.size
    pos = np.full(n, -1, dtype=np.int64)
    pos[centers] = np.arange(n_centers)
    big = np.iinfo(np.int64).max
    assignment = np.empty(n, dtype=np.int64)
    for s in range(0, n, _ROWS):  # the token itself (if a center) and its candidates
        e = min(n, s + _ROWS)
        cand_pos = np.concatenate([pos[s:e, None], pos[nbr[s:e]]], axis=1)
        cand_d = np.concatenate([np.zeros((e - s, 1), np.float32), nd2[s:e]], axis=1)
        cand_d[cand_pos < 0] = np.inf
        cand_pos[cand_pos < 0] = big
        first = np.lexsort((cand_pos, cand_d), axis=-1)[:, 0]
        assignment[s:e] = cand_pos[np.arange(e - s), first]
    pending = np.flatnonzero(assignment == big)
    info["assign_list_miss"] = int(pending.size)
    if pending.size:
        ccells = _Groups(labels[centers], probe.nlist, np.arange(n_centers))
        nprobe = p.nprobe_peak
        rounds = 0
        while pending.size and nprobe < probe.nlist // 2 and rounds < 2:
            bp, _ = _cell_search(x, pending, labels[pending], ccells, centers, probe, cent, nprobe, dt, workers)
            ok = bp >= 0
            assignment[pending[ok]] = bp[ok]
            pending = pending[~ok]
            nprobe *= 4
            rounds += 1
        info["assign_global"] = int(pending.size)
        if pending.size:
            bp, _ = _global_search(x, pending, centers, None, dt, workers)
            assignment[pending] = bp
    t["assign_s"] = time.perf_counter() - t0

    new_state = DPCKNNState(centroids=cent, refreshes=(state.refreshes if state is not None else 0) + 1,
                            last={**info, **{key: round(v, 3) for key, v in t.items()}})
    return rho, delta, centers, assignment, n_peaks, nbr[:, :k].astype(np.int64), t, new_state, info
