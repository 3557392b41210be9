"""Approximate DPC-KNN for large N: a soft-assigned IVF kNN join with exact re-ranking.

Same definitions as the exact mode (:mod:`missrec_recbole.interests.dpc_knn`); what is approximate
is only *which* pairs of tokens are compared.  Every distance that enters rho, delta, the center
ranking or the assignment is the float32 distance of the two tokens computed from their
difference vector (FAISS ``fvec_L2sqr_by_idx``), so a kNN list is exact whenever it holds the
right tokens.

1. **Coarse quantizer (IVF)**: ``nlist`` centroids trained by Lloyd's k-means on a random sample
   (or warm-started from the centroids of the previous refresh, see :class:`DPCKNNState`); cells
   holding more than twice the mean number of sample points are split by k-means on their
   sample points (on data with more clusters than cells, plain k-means leaves "catch-all"
   centroids near the mean of many clusters whose cells are huge, and a cell's join costs the
   square of its size).  Every token then gets its nearest cells, ranked by squared distance to
   the centroid + ``spread_weight`` * the cell's spread (mean squared distance of its tokens to
   its centroid), which keeps broad "hub" cells -- near in high dimension to everything, rarely
   holding anyone's neighbours -- out of the lists.  Inverted lists hold token *ids* only:
   vectors are read from the caller's array, so there is no second copy of the N x d matrix.
2. **kNN join** (soft assignment): every token belongs to its first ``spill`` cells, and within
   each cell all pairs are compared -- tiles of bfloat16 matrix products (CPUs with AMX /
   AVX512-BF16; float32 otherwise) on vectors centred on the cell's centroid, the ``n_cand + 1 +
   slack`` best per token kept by FAISS heaps and re-ranked with exact float32 distances.  A
   token's ``spill`` lists are merged (repeats dropped) into its ``n_cand`` nearest candidates
   (self excluded, duplicates kept); ``rho`` uses the first ``k``.  Two tokens are compared iff
   they share one of their ``spill`` nearest cells -- with ``spill = 3`` this finds >= 99.9% of
   the true neighbours on clustered data at ~3x the cost of ``spill = 1``, where neighbours on
   either side of a cell boundary are lost.
3. **delta**: the first denser token in a token's candidate list (sorted by distance: exact
   whenever the list is).  Tokens without one (local peaks) are searched against the denser
   tokens listed in their ``nprobe`` nearest cells, then in the ``nprobe_wide`` cells nearest to
   their own cell, and the rest (density peaks of isolated clusters, a few dozen) against *all*
   denser tokens in blocks (the denser tokens are a prefix of the density order).  The densest
   token gets its maximal distance.
4. **Assignment**: the nearest center among the token itself (a center is its own nearest
   center) and its candidates; the rest are searched against the centers listed in the same
   cells (two rounds as for delta), then against all centers.  These searches are organised by
   database cell, so each token is read about once however many queries search its cell.

Execution: ``workers`` Python threads, each running torch and FAISS single-threaded (no OpenMP
barriers, which cost more than the small per-cell operations on a busy 2-core machine), with
per-thread reusable buffers, and matrix products of a few fixed tile shapes (oneDNN compiles and
caches a kernel per shape, ~1 MiB each).

Memory: the tokens (read in place when they are a C-contiguous float32 array, else one float32
copy), O(N * spill * n_cand) candidate lists during the join (int32 ids + float32 distances;
~0.3 GiB at N = 1M), O(N * nprobe) cell lists and O(N) per-token arrays, the k-means sample
(``32 * nlist`` rows) and per-thread blocks of a few MiB -- no N x N array, no float64 copy of
the matrix (1M x 512 float32 tokens: ~0.4 GiB on top of their 2 GiB).  Work: about
``N * d * (nlist + spill^2 * N / cells)`` multiply-adds for the partition and the join; the
delta / assignment searches are small on clustered data.
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

from missrec_recbole.interests.density import density_order, log_density, top_centers

__all__ = ["ApproxParams", "DPCKNNState", "approx_params", "approx_dpc"]

_EL_BUDGET = 1 << 22  # elements per [rows x cols] score block (16 MiB in float32)
_ROWS = 1 << 16  # rows per block of the vectorised list post-processing


# ----------------------------------------------------------------------------------------------
# parameters and state


@dataclass(frozen=True)
class ApproxParams:
    """Parameters of the approximate mode (see :func:`approx_params` for the defaults from N).

    Attributes:
        nlist: number of IVF cells trained by k-means (oversized cells are split afterwards).
        spill: cells per token in the kNN join: every token belongs to the ``spill`` cells
            nearest to it (distance to the centroid + ``spread_weight`` * the cell's spread), and
            all pairs of tokens sharing a cell are compared.
        spread_weight: weight of a cell's spread (mean squared distance of its tokens to its
            centroid) when ranking cells for a token; > 0 keeps broad "hub" cells out.
        nprobe: cells searched per token in the first round of the peak / assignment searches
            (its nearest ones); the second round searches ``nprobe_wide`` cells.
        nprobe_wide: cells of the second round (the cells nearest to the token's own cell).
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
    n_cand: int
    kmeans_sample: int
    spill: int = 3
    spread_weight: float = 0.5
    nprobe: int = 4
    nprobe_wide: int = 32
    kmeans_iters: int = 10
    warm_iters: int = 3
    slack: int = 16
    gemm: str = "auto"
    seed: int = 0


def approx_params(n: int, k: int, **overrides) -> ApproxParams:
    """Defaults chosen from N (and k); any field can be overridden by keyword.

    * ``nlist = round(2 * sqrt(N))`` (at most N // 32, at least 1): cells of ~sqrt(N)/2 tokens
      (more after splits); with ``spill = 3`` a token is compared with ~3 * 3 * sqrt(N)/2 others
      (it and its partners each sit in 3 cells), and the coarse assignment costs N * nlist -- the
      two are of the same order.
    * ``n_cand = max(2k, k + 8)`` (at most N - 1); ``spill = 3``, ``spread_weight = 0.5``,
      ``nprobe = 4``, ``nprobe_wide = 32``.
    * k-means on ``min(N, 32 * nlist)`` sampled tokens, 10 iterations (3 when warm-started).
    """
    unknown = set(overrides) - {f.name for f in fields(ApproxParams)}
    if unknown:
        raise ValueError(f"unknown approximate-mode parameter(s): {sorted(unknown)}")
    overrides = {key: v for key, v in overrides.items() if v is not None}
    nlist = int(overrides.pop("nlist", max(1, min(round(2.0 * math.sqrt(n)), n // 32))))
    p = ApproxParams(
        nlist=nlist,
        n_cand=int(overrides.pop("n_cand", max(2 * k, k + 8))),
        kmeans_sample=int(overrides.pop("kmeans_sample", 32 * nlist)),
        **overrides,
    )
    for name in ("nlist", "spill", "nprobe", "nprobe_wide", "n_cand", "kmeans_sample"):
        v = getattr(p, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if p.kmeans_iters < 0 or p.warm_iters < 0 or p.slack < 0 or not p.spread_weight >= 0:
        raise ValueError("kmeans_iters, warm_iters, slack and spread_weight must be >= 0")
    if p.gemm not in ("auto", "bf16", "fp32"):
        raise ValueError(f"gemm must be 'auto', 'bf16' or 'fp32', got {p.gemm!r}")
    return p


@dataclass
class DPCKNNState:
    """Reusable state across refreshes (approximate mode): the trained IVF coarse quantizer.

    Between two epochs only the adapter outputs move, so the cells of the previous refresh are a
    good starting point: the next call runs ``warm_iters`` Lloyd iterations from these centroids
    (on a fresh sample of the *current* tokens) instead of ``kmeans_iters`` from a random start.
    This is always correct -- any partition gives a valid (approximate) search, the centroids are
    re-fitted to the current tokens, and cells that grew too big are split again -- and it is
    used whenever d matches (and there are between nlist and N centroids).  Nothing else is
    reused: every token has moved, so cell membership, kNN lists, densities and centers are
    recomputed.  ``benchmarks/dpc_knn.py`` measures what it saves (``approx-refresh-*`` rows).

    Attributes:
        centroids: float32 [cells, d] in token coordinates (after splits), or None.
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
             cent: torch.Tensor, dt, workers, kk: int = 1):
    """Nearest centroid (rows of ``cent``, float32, original coordinates) of every row of ``xs``
    (a float32 tensor, already centred on ``mu``) or of ``x[rows]`` (all rows if None), and the
    (approximate) squared distance to it; with kk > 1 the kk nearest, [n, kk], nearest first."""
    n = xs.shape[0] if xs is not None else (x.shape[0] if rows is None else rows.size)
    kk = min(kk, cent.shape[0])
    out = np.empty((n, kk), dtype=np.int64)
    dist = np.empty((n, kk), dtype=np.float32)
    step = 4096

    cb = _Block(None, None, mu, dt, None, _CT, src=cent)  # shared, read-only

    def one(s):
        e = min(n, s + step)
        if xs is not None:
            q = _Block(None, None, torch.zeros_like(mu), dt, "query", _QT, src=xs[s:e])
        else:
            ids = np.arange(s, e) if rows is None else rows[s:e]
            q = _Block(x, ids, mu, dt, "query", _QT)
        heap = _Heap(e - s, kk)
        _scan(heap, q, cb)
        if kk > 1:
            heap.h.reorder()  # ascending
        out[s:e] = heap.ids
        dist[s:e] = heap.val + q.n[: e - s].numpy()[:, None]

    _parallel(one, range(0, n, step), workers)
    return (out[:, 0], dist[:, 0]) if kk == 1 else (out, dist)


def _lloyd(xs: torch.Tensor, cent: torch.Tensor, iters: int, dt, rng, workers):
    """Lloyd iterations on the (centred) sample xs from ``cent``; empty clusters are re-seeded
    with random sample points.  Returns (centroids, labels of xs w.r.t. them)."""
    n = xs.shape[0]
    zero = torch.zeros(xs.shape[1])
    for _ in range(iters):
        lab = torch.from_numpy(_nearest(xs, None, None, zero, cent, dt, workers)[0])
        sums = torch.zeros_like(cent).index_add_(0, lab, xs)
        cnt = torch.bincount(lab, minlength=cent.shape[0])
        empty = torch.nonzero(cnt == 0).squeeze(1)
        cent = sums / cnt.clamp(min=1)[:, None].float()
        if empty.numel():
            cent[empty] = xs[torch.from_numpy(rng.choice(n, size=empty.numel(), replace=False))]
    return cent, _nearest(xs, None, None, zero, cent, dt, workers)[0]


def _train_quantizer(x: np.ndarray, p: ApproxParams, init: np.ndarray | None, dt, rng, workers):
    """Coarse quantizer: k-means on a random sample (from ``init`` if given), then every cell
    holding more than twice the mean number of sample points is split by k-means on its sample
    points (repeatedly).  Returns (float32 centroids [cells, d], number of splits).

    The splits matter on data with many well-separated clusters (more than nlist): plain k-means
    leaves "catch-all" centroids near the mean of many clusters, whose cells are huge, and a
    cell's join costs the square of its size.
    """
    n = x.shape[0]
    s = min(n, max(p.kmeans_sample, p.nlist))
    idx = np.sort(rng.choice(n, size=s, replace=False)) if s < n else np.arange(n)
    xs = _rows(x, idx)
    mu = xs.mean(dim=0)
    xs -= mu
    if init is not None:
        cent = torch.from_numpy(np.array(init, dtype=np.float32)) - mu
        cent, lab = _lloyd(xs, cent, p.warm_iters, dt, rng, workers)
    else:
        cent = xs[torch.from_numpy(rng.choice(s, size=min(p.nlist, s), replace=False))].clone()
        cent, lab = _lloyd(xs, cent, p.kmeans_iters, dt, rng, workers)
    target = s / max(1, min(p.nlist, s))
    n_split = 0
    for _ in range(8):
        cnt = np.bincount(lab, minlength=cent.shape[0])
        big = np.flatnonzero(cnt > max(2.0 * target, 4.0))
        if big.size == 0:
            break
        parts = [cent]
        for c in big:
            mem = np.flatnonzero(lab == c)
            nsub = int(math.ceil(mem.size / target))
            sub0 = xs[torch.from_numpy(mem[rng.choice(mem.size, size=nsub, replace=False)])].clone()
            sub, sub_lab = _lloyd(xs[torch.from_numpy(mem)], sub0, p.kmeans_iters, dt, rng, workers)
            cent[c] = sub[0]
            moved = sub_lab > 0
            lab[mem[moved]] = sum(part.shape[0] for part in parts) - 1 + sub_lab[moved]
            parts.append(sub[1:])
            n_split += 1
        cent = torch.cat(parts)
    keep = np.flatnonzero(np.bincount(lab, minlength=cent.shape[0]) > 0)  # drop empty cells
    return (cent[torch.from_numpy(keep)] + mu).numpy().astype(np.float32), n_split


def _cell_lists(x: np.ndarray, cent: np.ndarray, p: ApproxParams, dt, workers):
    """Every token's nearest cells, ranked by squared distance to the centroid + spread_weight *
    the cell's spread (mean squared distance of the tokens nearest to it).  Returns (near
    [N, max(spill, nprobe)] cell ids best first, spread [cells])."""
    ct = torch.from_numpy(cent)
    width = min(cent.shape[0], max(p.spill, p.nprobe) + 2)
    ids, d2 = _nearest(None, x, None, ct.mean(0), ct, dt, workers, kk=width)
    ids, d2 = ids.reshape(x.shape[0], -1), d2.reshape(x.shape[0], -1)
    spread = np.bincount(ids[:, 0], weights=d2[:, 0], minlength=cent.shape[0])
    spread /= np.maximum(np.bincount(ids[:, 0], minlength=cent.shape[0]), 1)
    spread = spread.astype(np.float32)
    for s in range(0, x.shape[0], _ROWS):
        key = d2[s : s + _ROWS] + p.spread_weight * spread[ids[s : s + _ROWS]]
        order = np.argsort(key, axis=1, kind="stable")
        ids[s : s + _ROWS] = np.take_along_axis(ids[s : s + _ROWS], order, 1)
    return ids[:, : min(width, max(p.spill, p.nprobe))].copy(), spread


# ----------------------------------------------------------------------------------------------
# the three searches


def _knn_join(x, near: np.ndarray, ncells: int, cent: np.ndarray, p: ApproxParams, m: int, dt, workers):
    """The ``m`` nearest candidates of every token (self excluded), approximate: every token is
    in the ``spill`` cells first in its row of ``near``, and all pairs of tokens sharing a cell
    are compared (one all-pairs block per cell); the per-cell lists are merged per token.

    Returns (ids int32 [N, m], float32 squared distances [N, m]) sorted by (distance, id); -1 /
    inf where fewer than m candidates were seen (tiny cells; see :func:`_approx_dpc`).
    """
    n = x.shape[0]
    t = min(p.spill, near.shape[1])
    lists = _Groups(near[:, :t].ravel(), ncells)  # items: token * t + slot
    part_ids = np.full((n, t, m), -1, dtype=np.int32 if n < 2**31 else np.int64)
    part_d2 = np.full((n, t, m), np.inf, dtype=np.float32)

    def one(c):
        f = lists.members(c)
        tok, slot = f // t, f % t
        cb = _Block(x, tok, torch.from_numpy(cent[c]), dt, "cand", _CT)
        kk = min(m + 1 + p.slack, tok.size)
        heap = _Heap(tok.size, kk)
        _scan(heap, cb, cb)
        ex = _exact_sq(cb.f, cb.f, heap.ids)
        ids, ex = _finish_rows(tok, np.where(heap.ids >= 0, tok[np.maximum(heap.ids, 0)], -1), ex, m,
                               exclude_self=True)
        ids[~np.isfinite(ex)] = -1
        w = ids.shape[1]
        part_ids[tok, slot, :w] = ids
        part_d2[tok, slot, :w] = ex

    busy = np.flatnonzero(lists.sizes)
    _parallel(one, busy[np.argsort(-lists.sizes[busy], kind="stable")], workers)  # big cells first
    nbr = np.empty((n, m), dtype=part_ids.dtype)
    nd2 = np.empty((n, m), dtype=np.float32)
    for s in range(0, n, _ROWS):  # merge the t lists of each token (drop repeated ids)
        e = min(n, s + _ROWS)
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


def _cell_search(x, queries, qcells: np.ndarray, db: _Groups, db_ids: np.ndarray, cent, dt, workers,
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
    by_db = _Groups(qcells.ravel(), db.sizes.size, np.repeat(np.arange(nq), qcells.shape[1]))
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
        cb = _Block(x, db_ids[cpos], ctr, dt, "cand", _CT)
        for s in range(0, qpos.size, 4096):
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
                    def limit_mask(sc, s2, r, cc0, w, c0=c0):  # column c0 + cc0 + j allowed iff < limit
                        sc[:r, :w][np.arange(c0 + cc0, c0 + cc0 + w)[None, :] >= lim[s2 : s2 + r, None]] = np.inf

                    mask = limit_mask
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
            qb = _Block(x, q, mu, dt, "query", _QT)
            heap = _Heap(q.size, kk)
            for c0 in range(int(bounds[j]), int(bounds[j + 1]), cblock):
                c1 = min(int(bounds[j + 1]), c0 + cblock)
                _scan(heap, qb, _Block(x, np.arange(c0, c1), mu, dt, "cand", _CT), j0=c0)
            return heap.ids

        ids = np.concatenate(_parallel(part, range(bounds.size - 1), workers), axis=1)
        ex = _exact_sq(torch.from_numpy(x[q]), xt, ids)
        ids, ex = _finish_rows(q, ids, ex, m, exclude_self=True)
        out_i[s : s + q.size], out_d[s : s + q.size] = ids, ex
    return out_i, out_d


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

    Returns (log rho, delta, centers, assignment, n_peaks, knn [N, k], timings, state).
    """
    n, d = x.shape
    dt = _gemm_dtype(p.gemm)
    rng = np.random.default_rng(p.seed)
    nlist = min(p.nlist, n)
    p = replace(p, nlist=nlist)
    m = min(max(p.n_cand, k), n - 1)
    t = {}
    info: dict = {"nlist": nlist, "spill": p.spill, "nprobe": p.nprobe, "n_cand": m,
                  "gemm": str(dt).replace("torch.", "")}

    # 1. coarse quantizer (k-means, warm-started from the previous refresh when possible, then
    #    oversized cells split), every token's nearest cells, kNN join
    t0 = time.perf_counter()
    init = None
    if state is not None and state.centroids is not None and state.centroids.ndim == 2 \
            and state.centroids.shape[1] == d and 1 <= state.centroids.shape[0] <= n:
        init = state.centroids
    if nlist > 1 or init is not None:
        cent, n_split = _train_quantizer(x, p, init, dt, rng, workers)
    else:
        cent, n_split = x.mean(axis=0, dtype=np.float64)[None, :].astype(np.float32), 0
    info.update(warm_start=init is not None, kmeans_iters=p.warm_iters if init is not None else p.kmeans_iters)
    t["kmeans_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    near, spread = _cell_lists(x, cent, p, dt, workers)
    ncells = cent.shape[0]
    labels = near[:, 0]
    ct = torch.from_numpy(cent)
    probe = _Probe(ct - ct.mean(0), min(ncells, p.nprobe_wide), torch.from_numpy(spread))
    info.update(cells=int(ncells), split=n_split, max_cell=int(np.bincount(labels, minlength=ncells).max()))
    t["coarse_s"] = time.perf_counter() - t1
    nbr, nd2 = _knn_join(x, near, ncells, cent, p, m, dt, workers)
    short = np.flatnonzero(nbr[:, -1] < 0)  # tokens whose cells are tiny: search everything
    info["knn_full_search"] = int(short.size)
    if short.size:
        nbr[short], nd2[short] = _global_knn(x, short, m, p, dt, workers)
    t["knn_s"] = time.perf_counter() - t0

    # 2. density
    t0 = time.perf_counter()
    log_rho = log_density(nd2, k)
    order, rank = density_order(log_rho)
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
    t_sp = min(p.spill, near.shape[1])
    db_all = _Groups(near[:, :t_sp].ravel(), ncells, np.repeat(np.arange(n), t_sp))
    for qcells in (lambda q: near[q, : p.nprobe], lambda q: probe.near[labels[q]]):
        if not pending.size:
            break
        _, d2 = _cell_search(x, pending, qcells(pending), db_all, np.arange(n), cent, dt, workers, rank=rank)
        ok = np.isfinite(d2)
        delta2[pending[ok]] = d2[ok]
        pending = pending[~ok]
    del db_all
    info["peaks_global"] = int(pending.size)
    if pending.size:
        _, d2 = _global_search(x, pending, order, rank[pending], dt, workers)
        delta2[pending] = d2
    delta2[top] = _max_sqdist(x, top)
    delta = np.sqrt(delta2)
    t["delta_s"] = time.perf_counter() - t0

    # 4. centers and assignment
    t0 = time.perf_counter()
    centers = top_centers(log_rho, delta, n_centers)
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
        db_c = _Groups(near[centers, :t_sp].ravel(), ncells, np.repeat(np.arange(n_centers), t_sp))
        for qcells in (lambda q: near[q, : p.nprobe], lambda q: probe.near[labels[q]]):
            if not pending.size:
                break
            bp, _ = _cell_search(x, pending, qcells(pending), db_c, centers, cent, dt, workers)
            ok = bp >= 0
            assignment[pending[ok]] = bp[ok]
            pending = pending[~ok]
        info["assign_global"] = int(pending.size)
        if pending.size:
            bp, _ = _global_search(x, pending, centers, None, dt, workers)
            assignment[pending] = bp
    t["assign_s"] = time.perf_counter() - t0

    new_state = DPCKNNState(centroids=cent, refreshes=(state.refreshes if state is not None else 0) + 1,
                            last={**info, **{key: round(v, 3) for key, v in t.items()}})
    return log_rho, delta, centers, assignment, n_peaks, nbr[:, :k].astype(np.int64), t, new_state, info
