"""Tests for the FAISS-backed DPC-KNN (missrec_recbole.interests.dpc_knn).

The reference below is written directly from the definitions with a full float64 distance matrix
(no kNN shortcut); the exact mode must match it exactly (centers, assignment) and rho/delta to
1e-9 relative.  The approximate mode is checked against the exact mode on clustered data (>= 95%
of the centers) and on degenerate inputs.
"""

from __future__ import annotations

import math
import tracemalloc

import faiss
import numpy as np
import pytest
import torch

from missrec_recbole.interests import (EXACT_MAX_TOKENS, DPCKNNResult, DPCKNNState, approx_params, dpc_knn,
                                       n_interests)
from missrec_recbole.interests.exact import _Data, _denser_sqdist, _refined_search

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


def check_equal(res: DPCKNNResult, ref: dict, exact_peaks: bool = True):
    assert res.rho.dtype == np.float64 and res.delta.dtype == np.float64
    assert res.centers.dtype == np.int64 and res.assignment.dtype == np.int64
    np.testing.assert_allclose(res.rho, ref["rho"], rtol=1e-9, atol=0)
    np.testing.assert_allclose(res.delta, ref["delta"], rtol=1e-9, atol=0)
    np.testing.assert_array_equal(res.centers, ref["centers"])
    np.testing.assert_array_equal(res.assignment, ref["assignment"])
    if exact_peaks:
        assert res.n_peaks == ref["n_peaks"]


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


@pytest.mark.parametrize("k", [1, 5, 10])
@pytest.mark.parametrize("name", list(DATASETS))
def test_matches_reference(name, k):
    x, d2 = dataset(name)
    n = len(x)
    block = 16 if n <= 400 else 4096
    for n_centers in (n_interests(n, 0.5), max(1, n // 25)):
        res = dpc_knn(x, n_centers, k=k, block_size=block)
        check_equal(res, ref_dpc(d2, n_centers, k), exact_peaks=name not in TIED)
        assert res.k == min(k, n - 1)
        assert res.n_peaks >= 1


@pytest.mark.parametrize("k", [1, 5, 10])
def test_peak_search_exercised_and_exact(k):
    """Many local peaks go through the wide search; check it on *every* non-densest point."""
    x, d2 = dataset("blobs-s5-600x64")
    res = dpc_knn(x, 30, k=k, block_size=37)
    ref = ref_dpc(d2, 30, k)
    assert res.n_peaks == ref["n_peaks"]
    assert res.n_peaks > 5  # the peak path is used (more than just the densest point)
    # run the wide search directly for all points but the densest one
    data = _Data(x, block_size=37)
    order = np.lexsort((np.arange(len(x)), -res.rho))
    rank = np.empty(len(x), np.int64)
    rank[order] = np.arange(len(x))
    pts = np.setdiff1d(np.arange(len(x)), order[:1])
    got = np.sqrt(_denser_sqdist(data, pts, order, rank))
    np.testing.assert_allclose(got, ref["delta"][pts], rtol=1e-9, atol=0)


@pytest.mark.parametrize("name", ["blobs-s4-800x8", "intgrid-400x3", "dups-s6-300x8"])
def test_refined_search_from_minimal_candidates(name):
    """Re-search loop (doubling the candidate count) gives the exact k smallest distances."""
    x, d2 = dataset(name)
    n, k = len(x), 7
    data = _Data(x, block_size=25)
    _, got = _refined_search(data, np.arange(n), need=k, m0=k + 1, exclude_self=True, strict=False)
    nd = d2.copy()
    np.fill_diagonal(nd, np.inf)
    np.testing.assert_array_equal(got, np.sort(nd, axis=1)[:, :k])
    # strict nearest-center search over a subset, ties -> smaller position
    centers = np.random.default_rng(0).permutation(n)[: n // 3]
    pos, _ = _refined_search(data, centers, need=1, m0=1, exclude_self=False, strict=True)
    np.testing.assert_array_equal(pos[:, 0], np.argmin(d2[:, centers], axis=1))


def test_centers_order_and_self_assignment():
    x, d2 = dataset("dups-s6-300x8")
    res = dpc_knn(x, len(x), k=5)  # every point is a center, including duplicates
    score = res.rho * res.delta
    assert np.all(np.diff(score[res.centers]) <= 0)
    assert sorted(res.centers.tolist()) == list(range(len(x)))
    # each center maps to a center at distance 0: the earliest exact duplicate (often itself)
    for p, c in enumerate(res.centers):
        a = res.assignment[c]
        assert d2[c, res.centers[a]] == 0 and a <= p
        dup_pos = [q for q, c2 in enumerate(res.centers) if d2[c, c2] == 0]
        assert a == min(dup_pos)


def test_deterministic_and_dtype_independent():
    x = _blobs(13, 500, 8)
    r1 = dpc_knn(x, 40, k=5)
    r2 = dpc_knn(x.astype(np.float64), 40, k=5, n_threads=1, block_size=3)
    for f in ("rho", "delta", "centers", "assignment"):
        np.testing.assert_array_equal(getattr(r1, f), getattr(r2, f))
    # non-contiguous input works too
    xf = np.asfortranarray(x)
    np.testing.assert_array_equal(dpc_knn(xf, 40, k=5).assignment, r1.assignment)


def test_threads_restored():
    before = faiss.omp_get_max_threads()
    dpc_knn(_gauss(14, 200, 8), 10, n_threads=1)
    assert faiss.omp_get_max_threads() == before


# ----------------------------------------------------------------------------------------------
# degenerate inputs


def test_single_point():
    res = dpc_knn(np.ones((1, 4), np.float32), 3, k=5)
    np.testing.assert_array_equal(res.centers, [0])
    np.testing.assert_array_equal(res.assignment, [0])
    assert res.rho.tolist() == [1.0] and res.delta.tolist() == [0.0] and res.k == 0


@pytest.mark.parametrize("n", [2, 3, 5])
def test_n_at_most_k_uses_n_minus_1(n):
    x = _gauss(15, n, 3)
    res = dpc_knn(x, 2, k=5)
    assert res.k == n - 1
    check_equal(res, ref_dpc(ref_sqdist(x), 2, n - 1))


def test_n_centers_clipped():
    x = _gauss(16, 20, 3)
    res = dpc_knn(x, 100, k=3)
    assert res.centers.shape == (20,)
    np.testing.assert_array_equal(res.centers[res.assignment], np.arange(20))
    check_equal(res, ref_dpc(ref_sqdist(x), 100, 3))


@pytest.mark.parametrize(
    "tokens, kwargs, match",
    [
        (np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 1.0]]), {}, "NaN"),
        (np.array([[0.0, np.inf], [1.0, 1.0]]), {}, "infinite"),
        (np.zeros(5), {}, "2-D"),
        (np.zeros((2, 2, 2)), {}, "2-D"),
        (np.zeros((0, 4)), {}, "empty"),
        (np.zeros((3, 0)), {}, "feature dimension"),
        (np.zeros((3, 2)), {"n_centers": 0}, "n_centers"),
        (np.zeros((3, 2)), {"k": 0}, "k must"),
        (np.zeros((3, 2)), {"block_size": 0}, "block_size"),
        (np.zeros((3, 2)), {"n_threads": 0}, "n_threads"),
        (np.zeros((3, 2), complex), {}, "real-valued"),
    ],
)
def test_invalid_inputs(tokens, kwargs, match):
    kw = {"n_centers": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        dpc_knn(tokens, **kw)


def test_n_interests():
    assert n_interests(10, 0.5) == 5
    assert n_interests(11, 0.5) == 6
    assert n_interests(30, 0.1) == 3  # not ceil(3.0000000000000004)
    assert n_interests(3, 1e-9) == 1
    assert n_interests(3, 2.0) == 3
    assert n_interests(20000, 0.5) == math.ceil(0.5 * 20000)
    with pytest.raises(ValueError, match="n_tokens"):
        n_interests(0, 0.5)
    with pytest.raises(ValueError, match="interest_ratio"):
        n_interests(5, 0.0)


# ----------------------------------------------------------------------------------------------
# memory: nothing of size N x N is allocated


def test_no_n_by_n_allocation():
    n = 3000
    x = _blobs(17, n, 16)
    dpc_knn(x[:100], 5)  # warm up imports / FAISS
    tracemalloc.start()
    try:
        res = dpc_knn(x, n_interests(n, 0.5), k=5, block_size=64)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert res.n_peaks > 1
    assert peak < n * n * 8 / 6, f"peak traced memory {peak / 2**20:.1f} MiB"


# ----------------------------------------------------------------------------------------------
# modes: auto / exact / approx


def _sep_blobs(seed, n, d, n_blobs):
    """Well-separated blobs of varying size and spread (density peaks = blob cores)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_blobs, d)).astype(np.float32) * 4.0
    w = rng.lognormal(0.0, 0.5, n_blobs)
    lab = rng.choice(n_blobs, size=n, p=w / w.sum())
    spread = rng.uniform(0.35, 0.45, n_blobs).astype(np.float32)
    return centers[lab] + rng.standard_normal((n, d)).astype(np.float32) * spread[lab, None]


def _ari(a, b):
    """Adjusted Rand index of two labelings."""
    def pairs(c):
        c = c.astype(np.float64)
        return (c * (c - 1) / 2).sum()
    _, nij = np.unique(a.astype(np.int64) * (int(b.max()) + 1) + b, return_counts=True)
    sa, sb = pairs(np.bincount(a)), pairs(np.bincount(b))
    expected = sa * sb / pairs(np.array([len(a)]))
    return (pairs(nij) - expected) / ((sa + sb) / 2 - expected)


_blob_cache: dict = {}


def _blob_runs():
    """20k tokens in 400 blobs (~N * 0.02): exact and approximate runs for K = 400 and K = N/2."""
    if not _blob_cache:
        x = _sep_blobs(21, 20000, 32, 400)
        for ratio in (0.02, 0.5):
            kc = n_interests(len(x), ratio)
            _blob_cache[ratio] = (dpc_knn(x, kc, k=5, mode="exact"), dpc_knn(x, kc, k=5, mode="approx"))
        _blob_cache["x"] = x
    return _blob_cache


@pytest.mark.slow
@pytest.mark.parametrize("ratio", [0.02, 0.5])
def test_approx_recovers_exact_centers(ratio):
    runs = _blob_runs()
    exact, approx = runs[ratio]
    assert exact.mode == "exact" and approx.mode == "approx"
    kc = exact.centers.size
    assert approx.centers.size == kc and len(np.unique(approx.centers)) == kc
    overlap = np.intersect1d(exact.centers, approx.centers).size / kc
    assert overlap >= 0.95, overlap
    # token -> center token agreement and kNN recall are high as well
    agree = np.mean(exact.centers[exact.assignment] == approx.centers[approx.assignment])
    assert agree >= 0.95, agree
    assert _ari(exact.assignment, approx.assignment) >= 0.95
    recall = np.mean([np.intersect1d(a, e).size for a, e in zip(approx.knn, exact.knn)]) / 5
    assert recall >= 0.95, recall
    # structural invariants of the approximate result
    n = len(runs["x"])
    assert approx.rho.shape == approx.delta.shape == approx.assignment.shape == (n,)
    assert approx.knn.shape == (n, 5) and not np.any(approx.knn == np.arange(n)[:, None])
    np.testing.assert_array_equal(approx.assignment[approx.centers], np.arange(kc))  # centers own themselves
    score = approx.rho * approx.delta
    assert np.all(np.diff(score[approx.centers]) <= 0)
    assert set(approx.timings) >= {"knn_s", "density_s", "delta_s", "assign_s"}


@pytest.mark.slow
def test_approx_warm_start_from_state():
    runs = _blob_runs()
    x, first = runs["x"], runs[0.5][1]
    assert isinstance(first.state, DPCKNNState) and first.state.centroids.shape[1] == x.shape[1]
    rng = np.random.default_rng(5)  # "next epoch": every token moves a little
    lin = np.eye(x.shape[1], dtype=np.float32) + 0.02 * rng.standard_normal((x.shape[1],) * 2).astype(np.float32)
    x2 = x @ lin + 0.05
    kc = n_interests(len(x2), 0.5)
    warm = dpc_knn(x2, kc, k=5, mode="approx", state=first.state)
    assert warm.info["warm_start"] and not first.info["warm_start"]
    assert warm.state.refreshes == first.state.refreshes + 1
    exact = dpc_knn(x2, kc, k=5, mode="exact", state=first.state)
    assert exact.state is first.state  # exact mode passes the state through
    assert np.intersect1d(exact.centers, warm.centers).size / kc >= 0.95


def test_auto_mode_threshold():
    x = _gauss(22, 300, 8)
    assert dpc_knn(x, 10, exact_max_tokens=300).mode == "exact"
    assert dpc_knn(x, 10, exact_max_tokens=299).mode == "approx"
    assert dpc_knn(x, 10).mode == ("exact" if len(x) <= EXACT_MAX_TOKENS else "approx")
    assert EXACT_MAX_TOKENS >= 10000


def test_approx_single_cell_equals_exact():
    """With one cell (small N) the join is a full search: same result as the exact mode."""
    x, d2 = dataset("gauss-s0-50x8")
    res = dpc_knn(x, 10, k=5, mode="approx")
    assert res.info["cells"] == 1
    ref = ref_dpc(d2, 10, 5)
    np.testing.assert_allclose(res.rho, ref["rho"], rtol=1e-5)  # float32 distances
    np.testing.assert_allclose(res.delta, ref["delta"], rtol=1e-5)
    np.testing.assert_array_equal(res.centers, ref["centers"])
    np.testing.assert_array_equal(res.assignment, ref["assignment"])


@pytest.mark.parametrize("mode", ["exact", "approx"])
def test_degenerate_inputs_both_modes(mode):
    # single point
    res = dpc_knn(np.ones((1, 4), np.float32), 3, k=5, mode=mode)
    assert res.centers.tolist() == [0] and res.assignment.tolist() == [0] and res.mode == mode
    # N <= k and N < K
    x = _gauss(23, 4, 3)
    res = dpc_knn(x, 10, k=5, mode=mode)
    assert res.k == 3 and sorted(res.centers.tolist()) == [0, 1, 2, 3]
    np.testing.assert_array_equal(res.centers[res.assignment], np.arange(4))
    # all-identical points: rho = 1, delta = 0, centers 0..K-1, everything assigned to center 0
    res = dpc_knn(np.tile(_gauss(24, 1, 8), (200, 1)), 7, k=5, mode=mode)
    np.testing.assert_array_equal(res.rho, np.ones(200))
    np.testing.assert_array_equal(res.delta, np.zeros(200))
    np.testing.assert_array_equal(res.centers, np.arange(7))
    np.testing.assert_array_equal(res.assignment, np.zeros(200))
    # NaN / inf
    bad = _gauss(25, 100, 4)
    bad[17, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        dpc_knn(bad, 5, mode=mode)
    bad[17, 2] = -np.inf
    with pytest.raises(ValueError, match="infinite"):
        dpc_knn(bad, 5, mode=mode)


def test_approx_float32_overflow_and_dtypes():
    x = _gauss(26, 100, 4, np.float64)
    x[3, 1] = 1e300  # finite in float64, not in float32 (the approximate mode's working precision)
    with pytest.raises(ValueError, match="float32"):
        dpc_knn(x, 5, mode="approx")
    xi = np.random.default_rng(27).integers(0, 3, (80, 4)).astype(np.int16)  # ints are accepted
    a = dpc_knn(xi, 5, mode="approx")
    e = dpc_knn(xi, 5, mode="exact")
    assert a.centers.shape == e.centers.shape == (5,)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "fast"}, "mode must"),
        ({"exact_max_tokens": -1}, "exact_max_tokens"),
        ({"state": "previous"}, "state must"),
        ({"mode": "approx", "approx": {"nprobe": 0}}, "nprobe"),
        ({"mode": "approx", "approx": {"bogus": 1}}, "unknown"),
        ({"mode": "approx", "approx": {"gemm": "fp8"}}, "gemm"),
        ({"mode": "approx", "approx": [1]}, "approx must"),
    ],
)
def test_invalid_mode_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dpc_knn(_gauss(28, 50, 4), 5, **kwargs)


def test_approx_threads_restored_and_deterministic():
    x = _blobs(29, 3000, 16)
    f_before, t_before = faiss.omp_get_max_threads(), torch.get_num_threads()
    r1 = dpc_knn(x, 100, mode="approx", n_threads=2)
    assert faiss.omp_get_max_threads() == f_before and torch.get_num_threads() == t_before
    r2 = dpc_knn(x, 100, mode="approx", n_threads=2)
    for f in ("rho", "delta", "centers", "assignment", "knn"):
        np.testing.assert_array_equal(getattr(r1, f), getattr(r2, f))
    assert approx_params(3000, 5) == approx_params(3000, 5, nprobe=None)
    assert approx_params(10**6, 5).nlist == 2000


# ----------------------------------------------------------------------------------------------
# model wiring: props keys -> MISSRec.refresh_interests -> dpc_knn


def _tiny_model(tiny_config, **extra):
    from missrec_recbole.data import MISSRecDataset
    from missrec_recbole.model import MISSRec

    config = tiny_config(**extra)
    torch.manual_seed(0)
    return MISSRec(config, MISSRecDataset(config))


@pytest.mark.parametrize("extra, mode", [({}, "exact"), ({"dpc_mode": "approx"}, "approx"),
                                         ({"dpc_exact_max_tokens": 10}, "approx")])
def test_model_config_reaches_dpc_knn(tiny_config, monkeypatch, extra, mode):
    import missrec_recbole.model.missrec as missrec_module

    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return dpc_knn(*args, **kwargs)

    monkeypatch.setattr(missrec_module, "dpc_knn", spy)
    model = _tiny_model(tiny_config, faiss_threads=1, **extra)
    first = model.refresh_interests()
    assert first["mode"] == mode and calls[0]["n_threads"] == 1 and calls[0]["state"] is None
    first_map = model.item_interest.clone()
    assert model.refresh_interests()["mode"] == mode  # same adapters: same interests
    assert torch.equal(model.item_interest, first_map)
    # the approximate mode's quantizer is handed to the next refresh
    assert (calls[1]["state"] is not None) == (mode == "approx")


def test_bad_dpc_mode_is_refused_by_the_schema(tiny_config):
    from missrec_recbole.config_schema import ConfigError

    with pytest.raises(ConfigError, match="option 'dpc_mode': got 'fast', must be one of auto, exact, approx"):
        _tiny_model(tiny_config, dpc_mode="fast")


def test_model_warm_start_off_and_deterministic(tiny_config):
    runs = []
    for _ in range(2):
        model = _tiny_model(tiny_config, dpc_mode="approx", dpc_warm_start=False)
        model.refresh_interests()
        assert model._dpc_state is None
        runs.append(model.item_interest.clone())
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("mode", ["exact", "approx"])
def test_density_never_underflows(mode):
    """Unit-scale tokens x 24: exp(-mean squared kNN distance) is 0 for every token, so ranking by it
    degenerates to index order; ranking by its log keeps the real density peaks."""
    x = np.random.default_rng(5).standard_normal((600, 8)) * 24.0
    d2 = ref_sqdist(x)
    res = dpc_knn(x, 12, k=5, mode=mode)
    old = ref_dpc(d2, 12, 5, log_space=False)
    assert np.all(old["rho"] == 0) and old["centers"].tolist()[:3] == [0, 1, 2]  # the silent fallback
    ref = ref_dpc(d2, 12, 5)
    assert np.all(np.isfinite(res.log_rho)) and np.ptp(res.log_rho) > 0
    if mode == "exact":
        np.testing.assert_allclose(res.log_rho, ref["log_rho"], rtol=1e-9)
        np.testing.assert_array_equal(res.centers, ref["centers"])
    else:
        assert np.intersect1d(res.centers, ref["centers"]).size >= 10  # approximate kNN on noise
    assert res.centers.tolist() != list(range(12))


@pytest.mark.parametrize("mode", ["exact", "approx"])
def test_log_density_keeps_the_centers_where_exp_does_not_underflow(mode):
    x = np.random.default_rng(5).standard_normal((600, 8))
    res = dpc_knn(x, 12, k=5, mode=mode)
    assert np.all(res.rho > 0)
    by_exp = np.lexsort((np.arange(len(x)), -(res.rho * res.delta)))[:12]
    np.testing.assert_array_equal(res.centers, by_exp)
    if mode == "exact":
        np.testing.assert_array_equal(res.centers, ref_dpc(ref_sqdist(x), 12, 5, log_space=False)["centers"])


# ----------------------------------------------------------------------------------------------
# pinned output: the exact mode's result on fixed inputs, recorded at commit aecb238 (before the
# exact and approximate pipelines were merged into one driver); any change of the exact path shows here


def _sha(a: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def _pinned_blobs():
    rng = np.random.default_rng(2024)
    c = rng.standard_normal((60, 24)) * 3.0
    lab = rng.integers(0, 60, 3000)
    return (c[lab] + rng.standard_normal((3000, 24)) * rng.uniform(0.3, 1.0, 60)[lab, None]).astype(np.float32)


def _pinned_dups():
    rng = np.random.default_rng(2025)
    base = rng.standard_normal((600, 12))
    x = np.concatenate([base, base[rng.integers(0, 600, 200)]])
    return x[rng.permutation(len(x))]  # float64, 200 exact duplicates


# name: (input, K, k, block_size, sha(centers), sha(assignment), sha(knn) or None (ties), sum log rho, sum delta)
PINNED = {
    "blobs-3000x24-K1500": (_pinned_blobs, 1500, 5, 64, "97eec60f780695cf", "a463fb7e1b66de01", "c7bf3a6558201808",
                            -44009.40998377376, 11008.13586603576),
    "blobs-3000x24-K40": (_pinned_blobs, 40, 5, 64, "3f4d2e147817fba0", "9617fa6bf5f39d22", "c7bf3a6558201808",
                          -44009.40998377376, 11008.13586603576),
    "dups-f64-800x12-K100": (_pinned_dups, 100, 7, 32, "d227fd5343a2d9c0", "23f6d2fa70a1fea6", None,
                             -5229.692173867088, 1460.4913876401451),
}


@pytest.mark.parametrize("name", list(PINNED))
def test_exact_mode_output_pinned(name):
    make, kc, k, block, centers, assignment, knn, log_rho_sum, delta_sum = PINNED[name]
    res = dpc_knn(make(), kc, k=k, block_size=block, mode="exact")
    assert (_sha(res.centers), _sha(res.assignment)) == (centers, assignment), res.centers[:8]
    if knn is not None:
        assert _sha(res.knn) == knn
    assert res.log_rho.sum() == pytest.approx(log_rho_sum, rel=1e-12)
    assert res.delta.sum() == pytest.approx(delta_sum, rel=1e-12)
