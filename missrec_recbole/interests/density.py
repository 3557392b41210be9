"""Density order and center choice shared by the exact and approximate DPC-KNN.

The kNN density ``rho = exp(-mean squared kNN distance)`` underflows to 0 for every token once
squared distances exceed ~745 (e.g. unit-scale tokens scaled by 24); every token then ties and
the centers fall back to index order. Both are therefore ranked by ``log rho = -mean squared kNN
distance`` and ``log(rho * delta) = log rho + log delta``: the same order wherever exp() does not
underflow, and never degenerate.
"""

from __future__ import annotations

import numpy as np


def log_density(knn_d2: np.ndarray, k: int) -> np.ndarray:
    """``log rho`` of every token from its squared kNN distances [N, >= k] (float64)."""
    return -(knn_d2[:, :k].sum(axis=1, dtype=np.float64) / k)


def density_order(log_rho: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, rank): tokens densest first (ties: smaller index first) and each token's position."""
    n = log_rho.size
    order = np.lexsort((np.arange(n), -log_rho))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    return order, rank


def top_centers(log_rho: np.ndarray, delta: np.ndarray, n_centers: int) -> np.ndarray:
    """The ``n_centers`` tokens of largest ``rho * delta`` (ties: smaller index first), ranked in log space."""
    with np.errstate(divide="ignore"):  # delta = 0 (duplicates): log 0 = -inf, last like rho * 0
        log_score = log_rho + np.log(delta)
    return np.lexsort((np.arange(log_rho.size), -log_score))[:n_centers].astype(np.int64)
