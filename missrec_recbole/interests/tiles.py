"""Tiled candidate search of the inverted-file backend: fixed-shape matrix products (bfloat16 where the CPU
has AMX / AVX512-BF16) feeding FAISS's per-row max-heaps, exact float32 re-ranking, and the worker threads.

Work runs on ``workers`` Python threads, each with torch and FAISS single-threaded (OpenMP barriers cost
more than the small per-cell operations on a busy 2-core machine), with per-thread reusable buffers.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np
import torch

EL_BUDGET = 1 << 22  # elements per [rows x cols] score block (16 MiB in float32)


def gemm_dtype(pref: str) -> torch.dtype:
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


def parallel(fn, items, workers: int) -> list:
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
        torch.set_num_threads(1)  # (the process-wide value is already 1 during a run)
        return fn(i)

    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as ex:
        return list(ex.map(run, items))


class _Scratch(threading.local):
    """Per-thread reusable work buffers (grown geometrically, never shrunk during a call).

    The per-cell temporaries change size from cell to cell; allocating them afresh fragments
    glibc's per-thread arenas (hundreds of MiB kept) and costs page faults.  Cleared at the end
    of every run (``IVFSearch.close``) (worker threads free theirs when they exit).
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


scratch = _Scratch()

# Matrix products always have one of a few fixed shapes: [QT' x d] x [d x CT] with QT' in
# ROW_TILES.  oneDNN (torch's bfloat16 matmul) JIT-compiles and caches a kernel per shape (about
# 1 MiB each, kept for the life of the process), so free shapes would cost memory and time.
CT = 512  # candidate columns per tile
ROW_TILES = (16, 32, 64, 128)
QT = ROW_TILES[-1]


def _pad(n: int, tile: int) -> int:
    return -(-n // tile) * tile


class Block:
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
        get = scratch.get if name is not None else (lambda _n, shape, dtype=torch.float32: torch.empty(shape, dtype=dtype))
        f = get(name, (rows, d))
        if ids is not None:  # (index_select: faster than np.take(out=) here, benchmarks/README.md)
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


class Heap:
    """FAISS max-heaps: the ``kk`` smallest scores (and their column ids) of each of ``nq`` rows;
    O(1) per score that does not enter the heap."""

    def __init__(self, nq: int, kk: int):
        self.ids = np.empty((nq, kk), dtype=np.int64)
        self.val = np.empty((nq, kk), dtype=np.float32)
        self.h = faiss.float_maxheap_array_t()
        self.h.nh, self.h.k = nq, kk
        self.h.ids, self.h.val = faiss.swig_ptr(self.ids), faiss.swig_ptr(self.val)
        self.h.heapify()  # ids -1, values +FLT_MAX: +inf scores never enter


def scan(heap: Heap, q: Block, c: Block, q0: int = 0, j0: int = 0, mask=None) -> None:
    """Add the approximate scores ``||c||^2 - 2 q.c`` (the squared distance minus the row constant
    ``||q||^2``) of every (query, candidate) pair to ``heap`` (rows q0.., column ids j0..), tile
    by tile.  ``mask(sc, s, r, c0, w)`` may set disallowed entries of a tile to +inf."""
    tiles = {}
    for s in range(0, q.size, QT):
        r = min(QT, q.size - s)
        rt = next(t for t in ROW_TILES if t >= r)
        if rt not in tiles:
            tiles[rt] = (scratch.get("gemm%d" % rt, (rt, CT), q.b.dtype), scratch.get("scores%d" % rt, (rt, CT)))
        g, sc_t = tiles[rt]
        sc = sc_t.numpy()
        qt = q.b[s : s + rt]
        for c0 in range(0, c.size, CT):
            w = min(CT, c.size - c0)
            torch.mm(qt, c.b[c0 : c0 + CT].T, out=g)
            torch.add(c.n[None, c0 : c0 + CT], g, alpha=-2.0, out=sc_t)
            if w < CT:
                sc[:, w:] = np.inf
            if mask is not None:
                mask(sc, s, r, c0, w)
            heap.h.addn(CT, faiss.swig_ptr(sc), j0 + c0, q0 + s, r)


def exact_sq(q: torch.Tensor, c: torch.Tensor, idx: np.ndarray) -> np.ndarray:
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


def finish_rows(q, ids, e, m, exclude_self):
    """Sort candidates by (distance, id), drop self, keep m."""
    if exclude_self:
        e[ids == q[:, None]] = np.inf
    order = np.lexsort((ids, e), axis=-1)[:, :m]
    return np.take_along_axis(ids, order, -1), np.take_along_axis(e, order, -1)
