"""The FAISS ``IndexIVFFlat`` backend of the comparison benchmark (``benchmarks/dpc_knn_faiss.py``, measured against
the package's approximate backend, not shipped: docs/design.md §4) still runs on the package's DPC-KNN driver and
finds the exact mode's centers, cold and warm-started."""

from __future__ import annotations

import numpy as np

from missrec_recbole.interests import DPCKNNState, approx_params, dpc_knn, n_interests
from missrec_recbole.interests.driver import cluster, thread_limit
from tests.conftest import benchmark_script


def _faiss_search():
    return benchmark_script("dpc_knn_faiss").FaissIVFSearch


def test_faiss_backend_finds_the_exact_centers_cold_and_warm():
    rng = np.random.default_rng(3)
    blobs = 4.0 * rng.standard_normal((60, 16)).astype(np.float32)
    x = blobs[rng.integers(0, 60, 3000)] + rng.standard_normal((3000, 16)).astype(np.float32)
    kc = n_interests(len(x), 0.5)
    exact = dpc_knn(x, kc, k=5, mode="exact")
    search, params = _faiss_search(), approx_params(len(x), 5)
    assert params.nlist > 1  # a real inverted file, not one cell holding everything
    with thread_limit(1):
        cold = cluster(lambda: search(x, params, None), kc, 5)
        warm = cluster(lambda: search(x, params, cold.state), kc, 5)
    assert cold.mode == warm.mode == "approx"
    assert not cold.info["warm_start"] and warm.info["warm_start"]
    assert isinstance(warm.state, DPCKNNState) and warm.state.refreshes == 2
    for result in (cold, warm):
        assert np.intersect1d(exact.centers, result.centers).size / kc >= 0.95
        np.testing.assert_array_equal(result.assignment[result.centers], np.arange(kc))  # centers own themselves
