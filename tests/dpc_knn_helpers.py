"""Shared by tests/test_dpc_knn_*.py: DPC-KNN written from its definitions (float64, no kNN shortcut), data sets."""

from __future__ import annotations

import numpy as np

# ----------------------------------------------------------------------------------------------
# brute-force reference


def ref_sqdist(x: np.ndarray) -> np.ndarray:
    """Full [N, N] matrix of sum((x_i - x_j)**2) in float64."""
    x = np.asarray(x).astype(np.float64)
    out = np.empty((len(x), len(x)))
    for i in range(len(x)):
        diff = x[i] - x
        out[i] = (diff * diff).sum(axis=1)
    return out


def ref_dpc(d2: np.ndarray, n_centers: int, k: int, log_space: bool = True):
    """The definitions; ``log_space=False`` ranks by exp() as before (degenerates once exp underflows)."""
    n = d2.shape[0]
    k = min(k, n - 1)
    n_centers = min(n_centers, n)
    if n == 1:
        return dict(rho=np.ones(1), delta=np.zeros(1), centers=np.zeros(1, int),
                    assignment=np.zeros(1, int), n_peaks=1)
    nd = d2.copy()
    np.fill_diagonal(nd, np.inf)  # exclude the point itself (not its duplicates)
    knn_d2 = np.ascontiguousarray(np.sort(nd, axis=1)[:, :k])
    log_rho = -(knn_d2.sum(axis=1) / k)
    rho = np.exp(log_rho)
    dens = log_rho if log_space else rho
    idx = np.arange(n)
    # j denser than i  <=>  rho_j > rho_i or (rho_j == rho_i and j < i)
    denser = (dens[None, :] > dens[:, None]) | ((dens[None, :] == dens[:, None]) & (idx[None, :] < idx[:, None]))
    has = denser.any(axis=1)
    delta2 = np.where(has, np.where(denser, d2, np.inf).min(axis=1), d2.max(axis=1))
    assert has.sum() == n - 1
    delta = np.sqrt(delta2)
    with np.errstate(divide="ignore"):
        score = log_rho + np.log(delta) if log_space else rho * delta
    centers = np.array(sorted(range(n), key=lambda i: (-score[i], i))[:n_centers])
    assignment = np.argmin(d2[:, centers], axis=1)  # first minimum = earlier center
    # local peaks w.r.t. the kNN lists ordered by (distance, index)
    knn = np.lexsort((np.broadcast_to(idx, (n, n)), nd), axis=1)[:, :k]
    n_peaks = int((~denser[idx[:, None], knn].any(axis=1)).sum())
    return dict(rho=rho, log_rho=log_rho, delta=delta, centers=centers, assignment=assignment, n_peaks=n_peaks)


# ----------------------------------------------------------------------------------------------
# data sets


def _gauss(seed, n, d, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(dtype)


def _blobs(seed, n, d, n_blobs=12):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_blobs, d)) * 6.0
    lab = rng.integers(0, n_blobs, n)
    return (centers[lab] + rng.standard_normal((n, d)) * rng.uniform(0.2, 1.0, n_blobs)[lab, None]).astype(np.float32)


def _duplicates(seed, n_base, d):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n_base, d))
    rows = [base, base[rng.integers(0, n_base, n_base // 2)], np.repeat(base[:1], 15, axis=0),
            np.repeat(base[1:4], 3, axis=0)]
    x = np.concatenate(rows)
    return x[rng.permutation(len(x))]  # float64 input


def _grid(seed, n, d, levels=4):
    return np.random.default_rng(seed).integers(0, levels, (n, d)).astype(np.float64)


def _full_grid(side):
    g = np.stack(np.meshgrid(np.arange(side), np.arange(side), indexing="ij"), -1).reshape(-1, 2)
    return g.astype(np.float32)


DATASETS = {
    "gauss-s0-50x8": lambda: _gauss(0, 50, 8),
    "gauss-s1-400x64": lambda: _gauss(1, 400, 64),
    "gauss-s2-1500x8": lambda: _gauss(2, 1500, 8),
    "gauss-s3-1200x64-f64": lambda: _gauss(3, 1200, 64, np.float64),
    "blobs-s4-800x8": lambda: _blobs(4, 800, 8),
    "blobs-s5-600x64": lambda: _blobs(5, 600, 64),
    "dups-s6-300x8": lambda: _duplicates(6, 300, 8),
    "dups-s7-200x64": lambda: _duplicates(7, 200, 64),
    "identical-60x8": lambda: np.tile(_gauss(8, 1, 8), (60, 1)),
    "zeros-30x4": lambda: np.zeros((30, 4), np.float32),
    "intgrid-400x3": lambda: _grid(9, 400, 3),
    "intgrid-300x2-binary": lambda: _grid(10, 300, 2, levels=2),
    "fullgrid-12x12": lambda: _full_grid(12),
    "offset-f32": lambda: (1e4 + 0.05 * _gauss(11, 300, 16, np.float64)).astype(np.float32),
    "tiny-scale": lambda: 1e-30 * _gauss(12, 200, 8, np.float64),
}


TIED = {"dups-s6-300x8", "dups-s7-200x64", "identical-60x8", "zeros-30x4", "intgrid-400x3",
        "intgrid-300x2-binary", "fullgrid-12x12"}


_cache: dict = {}


def dataset(name):
    if name not in _cache:
        x = DATASETS[name]()
        _cache[name] = (x, ref_sqdist(x))
    return _cache[name]
