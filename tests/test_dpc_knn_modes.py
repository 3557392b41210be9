"""DPC-KNN's auto/exact/approx modes: approximate vs exact (>= 95% of the centers), degenerate inputs, density."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

from missrec_recbole.interests import EXACT_MAX_TOKENS, DPCKNNState, approx_params, dpc_knn, n_interests
from tests.dpc_knn_helpers import _blobs, _gauss, dataset, ref_dpc, ref_sqdist


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
