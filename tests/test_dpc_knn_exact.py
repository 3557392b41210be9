"""The exact DPC-KNN equals the brute-force reference (centers, assignment; rho/delta to 1e-9 relative)."""

from __future__ import annotations

import math
import tracemalloc

import faiss
import numpy as np
import pytest

from missrec_recbole.interests import DPCKNNResult, dpc_knn, n_interests
from missrec_recbole.interests.exact import _Data, _denser_sqdist, _refined_search
from tests.dpc_knn_helpers import DATASETS, TIED, _blobs, _gauss, dataset, ref_dpc, ref_sqdist


def check_equal(res: DPCKNNResult, ref: dict, exact_peaks: bool = True):
    assert res.rho.dtype == np.float64 and res.delta.dtype == np.float64
    assert res.centers.dtype == np.int64 and res.assignment.dtype == np.int64
    np.testing.assert_allclose(res.rho, ref["rho"], rtol=1e-9, atol=0)
    np.testing.assert_allclose(res.delta, ref["delta"], rtol=1e-9, atol=0)
    np.testing.assert_array_equal(res.centers, ref["centers"])
    np.testing.assert_array_equal(res.assignment, ref["assignment"])
    if exact_peaks:
        assert res.n_peaks == ref["n_peaks"]


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
