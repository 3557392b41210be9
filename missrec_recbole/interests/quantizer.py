"""Coarse quantizer of the inverted-file backend: k-means cells (oversized ones split), every token's nearest
cells, the cells to probe from each cell, and items grouped by cell."""

from __future__ import annotations

import math

import numpy as np
import torch

from missrec_recbole.interests.ivf_params import ApproxParams
from missrec_recbole.interests.tiles import CT, EL_BUDGET, QT, Block, Heap, parallel, scan

ROWS = 1 << 16  # rows per block of the vectorised list post-processing


class Groups:
    """Items grouped by cell: ``members(c) = items[off[c]:off[c + 1]]``."""

    def __init__(self, cell_of: np.ndarray, nlist: int, items: np.ndarray | None = None):
        order = np.argsort(cell_of, kind="stable")
        self.items = order if items is None else items[order]
        self.off = np.zeros(nlist + 1, dtype=np.int64)
        np.cumsum(np.bincount(cell_of, minlength=nlist), out=self.off[1:])
        self.sizes = np.diff(self.off)

    def members(self, c: int) -> np.ndarray:
        return self.items[self.off[c] : self.off[c + 1]]


class Probe:
    """For each cell c, the cells p by increasing ``||cent_c - cent_p||^2 + spread_p`` (own cell
    first), ``spread_p`` = mean squared distance of p's tokens to its centroid: the expected
    squared distance from c's centroid to a token of p.  Plain centroid distance would favour
    "hub" cells -- broad cells whose centroid lies near the mean of many clusters are the nearest
    centroid of nearly every cell in high dimension, yet rarely hold anyone's neighbours."""

    def __init__(self, cent: torch.Tensor, width: int, spread: torch.Tensor | None = None):
        nlist = cent.shape[0]
        width = min(nlist, width)
        spread = spread if spread is not None else torch.zeros(nlist)
        cn = (cent * cent).sum(1)
        rows = []
        step = max(1, EL_BUDGET // nlist)
        for s in range(0, nlist, step):
            d2 = cn[s : s + step, None] + cn[None, :] - 2.0 * (cent[s : s + step] @ cent.T)
            d2 += spread[None, :]
            d2[torch.arange(d2.shape[0]), torch.arange(s, s + d2.shape[0])] = -1.0  # own first
            rows.append(torch.topk(d2, width, dim=1, largest=False, sorted=True).indices)
        self.near = torch.cat(rows).numpy()


def nearest_cells(xs: torch.Tensor | None, x: np.ndarray | None, rows: np.ndarray | None, mu: torch.Tensor,
             cent: torch.Tensor, dt, workers, kk: int = 1):
    """Nearest centroid (rows of ``cent``, float32, original coordinates) of every row of ``xs``
    (a float32 tensor, already centred on ``mu``) or of ``x[rows]`` (all rows if None), and the
    (approximate) squared distance to it; with kk > 1 the kk nearest, [n, kk], nearest first."""
    n = xs.shape[0] if xs is not None else (x.shape[0] if rows is None else rows.size)
    kk = min(kk, cent.shape[0])
    out = np.empty((n, kk), dtype=np.int64)
    dist = np.empty((n, kk), dtype=np.float32)
    step = 4096

    cb = Block(None, None, mu, dt, None, CT, src=cent)  # shared, read-only

    def one(s):
        e = min(n, s + step)
        if xs is not None:
            q = Block(None, None, torch.zeros_like(mu), dt, "query", QT, src=xs[s:e])
        else:
            ids = np.arange(s, e) if rows is None else rows[s:e]
            q = Block(x, ids, mu, dt, "query", QT)
        heap = Heap(e - s, kk)
        scan(heap, q, cb)
        if kk > 1:
            heap.h.reorder()  # ascending
        out[s:e] = heap.ids
        dist[s:e] = heap.val + q.n[: e - s].numpy()[:, None]

    parallel(one, range(0, n, step), workers)
    return (out[:, 0], dist[:, 0]) if kk == 1 else (out, dist)


def _lloyd(xs: torch.Tensor, cent: torch.Tensor, iters: int, dt, rng, workers):
    """Lloyd iterations on the (centred) sample xs from ``cent``; empty clusters are re-seeded
    with random sample points.  Returns (centroids, labels of xs w.r.t. them)."""
    n = xs.shape[0]
    zero = torch.zeros(xs.shape[1])
    for _ in range(iters):
        lab = torch.from_numpy(nearest_cells(xs, None, None, zero, cent, dt, workers)[0])
        sums = torch.zeros_like(cent).index_add_(0, lab, xs)
        cnt = torch.bincount(lab, minlength=cent.shape[0])
        empty = torch.nonzero(cnt == 0).squeeze(1)
        cent = sums / cnt.clamp(min=1)[:, None].float()
        if empty.numel():
            cent[empty] = xs[torch.from_numpy(rng.choice(n, size=empty.numel(), replace=False))]
    return cent, nearest_cells(xs, None, None, zero, cent, dt, workers)[0]


def train_quantizer(x: np.ndarray, p: ApproxParams, init: np.ndarray | None, dt, rng, workers):
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
    xs = torch.from_numpy(x[idx])  # a fresh copy
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


def cell_lists(x: np.ndarray, cent: np.ndarray, p: ApproxParams, dt, workers):
    """Every token's nearest cells, ranked by squared distance to the centroid + spread_weight *
    the cell's spread (mean squared distance of the tokens nearest to it).  Returns (near
    [N, max(spill, nprobe)] cell ids best first, spread [cells])."""
    ct = torch.from_numpy(cent)
    width = min(cent.shape[0], max(p.spill, p.nprobe) + 2)
    ids, d2 = nearest_cells(None, x, None, ct.mean(0), ct, dt, workers, kk=width)
    ids, d2 = ids.reshape(x.shape[0], -1), d2.reshape(x.shape[0], -1)
    spread = np.bincount(ids[:, 0], weights=d2[:, 0], minlength=cent.shape[0])
    spread /= np.maximum(np.bincount(ids[:, 0], minlength=cent.shape[0]), 1)
    spread = spread.astype(np.float32)
    for s in range(0, x.shape[0], ROWS):
        key = d2[s : s + ROWS] + p.spread_weight * spread[ids[s : s + ROWS]]
        order = np.argsort(key, axis=1, kind="stable")
        ids[s : s + ROWS] = np.take_along_axis(ids[s : s + ROWS], order, 1)
    return ids[:, : min(width, max(p.spill, p.nprobe))].copy(), spread
