"""DPC-KNN (density peaks clustering on k nearest neighbours) of item tokens, without an N x N matrix.

The definitions (rho, "denser", delta, centers, assignment) are stated once, in docs/design.md §4. This module
checks the input, picks the mode and runs the one pipeline (:mod:`~missrec_recbole.interests.driver`) over a
search backend: :mod:`~missrec_recbole.interests.exact` (equal to the brute-force definition) or
:mod:`~missrec_recbole.interests.ivf` (inverted-file approximation for large N).
"""

from __future__ import annotations

import math
import operator
from fractions import Fraction

import numpy as np
import torch

from missrec_recbole.interests.driver import DPCKNNResult, check_finite, cluster, single_token, thread_limit
from missrec_recbole.interests.exact import ExactSearch
from missrec_recbole.interests.ivf import IVFSearch
from missrec_recbole.interests.ivf_params import ApproxParams, DPCKNNState, approx_params

__all__ = ["DPCKNNResult", "EXACT_MAX_TOKENS", "dpc_knn", "n_interests"]

#: ``mode="auto"`` runs the exact algorithm up to this many tokens and the approximate one above (exact costs
#: O(N^2 d); benchmarks/README.md has the crossover); ``dpc_exact_max_tokens`` in props/MISSRec.yaml is the
#: model's setting.
EXACT_MAX_TOKENS = 20_000


def n_interests(n_tokens: int, interest_ratio: float) -> int:
    """Number of interests ``K = ceil(interest_ratio * n_tokens)``, clipped to ``[1, n_tokens]``.

    The product is evaluated on the decimal value of ``interest_ratio`` (``Fraction(repr(r))``),
    so that e.g. ``n_interests(30, 0.1) == 3`` (plain float arithmetic gives
    ``ceil(3.0000000000000004) == 4``).
    """
    n = operator.index(n_tokens)
    if n < 1:
        raise ValueError(f"n_tokens must be >= 1, got {n}")
    r = float(interest_ratio)
    if not math.isfinite(r) or r <= 0:
        raise ValueError(f"interest_ratio must be a finite number > 0, got {interest_ratio!r}")
    k = math.ceil(Fraction(repr(r)) * n)
    return int(min(max(k, 1), n))


def dpc_knn(
    tokens: np.ndarray,
    n_centers: int,
    k: int = 5,
    n_threads: int | None = None,
    block_size: int = 4096,
    *,
    mode: str = "auto",
    exact_max_tokens: int | None = None,
    state: DPCKNNState | None = None,
    approx: ApproxParams | dict | None = None,
) -> DPCKNNResult:
    """DPC-KNN clustering of ``tokens`` [N, d] into ``n_centers`` interests (docs/design.md §4).

    A center is at distance 0 from itself, so it is assigned to itself, unless an exact duplicate of it is an
    earlier center (same tie rule).

    Modes:

    * ``"exact"``: equal to the brute-force float64 definition, deterministic; memory O(N*k + N*d) (never an
      N x N array), time O(N^2 d), so for N up to some 10^4..10^5.
    * ``"approx"``: inverted-file search with exact re-ranking; neighbours, denser tokens and centers a token
      is never compared with are missed. Memory O(N*n_cand + N*d); parameters from N: :func:`approx_params`.
    * ``"auto"`` (default): exact for ``N <= exact_max_tokens`` (default :data:`EXACT_MAX_TOKENS`), else approx.

    Args:
        tokens: [N, d] float32/float64 (other real dtypes are converted), finite.
        n_centers: K >= 1; clipped to N.
        k: neighbours for the density; if N <= k, ``k = N - 1`` is used (N == 1: ``rho = 1``, ``delta = 0``,
            the token is the only center).
        n_threads: threads of this call (exact: FAISS/OpenMP, BLAS and torch; approx: worker threads, each
            single-threaded); the previous settings are restored afterwards. None: leave as is (approx: torch's
            thread count).
        block_size: exact mode: query rows per block in the peak search and re-searches.
        mode: "auto", "exact" or "approx".
        exact_max_tokens: threshold of ``mode="auto"`` (None: :data:`EXACT_MAX_TOKENS`).
        state: approximate mode: the ``result.state`` of the previous refresh, whose coarse quantizer is
            warm-started when d matches (:class:`DPCKNNState`). Passed through by the exact mode.
        approx: overrides of the approximate-mode parameters (:class:`ApproxParams` or a dict of its fields).

    Raises:
        ValueError: tokens not 2-D, empty, zero-dimensional or non-finite; bad k / n_centers / n_threads /
            block_size / mode / exact_max_tokens / approximate-mode parameters.
    """
    x = _as_real_array(tokens)
    n = x.shape[0]
    n_centers = _check_int("n_centers", n_centers, 1)
    k = _check_int("k", k, 1)
    block_size = _check_int("block_size", block_size, 1)
    if n_threads is not None:
        n_threads = _check_int("n_threads", n_threads, 1)
    if mode not in ("auto", "exact", "approx"):
        raise ValueError(f"mode must be 'auto', 'exact' or 'approx', got {mode!r}")
    threshold = EXACT_MAX_TOKENS if exact_max_tokens is None else _check_int(
        "exact_max_tokens", exact_max_tokens, 0)
    if state is not None and not isinstance(state, DPCKNNState):
        raise ValueError(f"state must be a DPCKNNState (result.state) or None, got {type(state).__name__}")
    run = mode if mode != "auto" else ("exact" if n <= threshold else "approx")
    k = min(k, n - 1)
    if isinstance(approx, ApproxParams):
        params = approx
    elif approx is None or isinstance(approx, dict):
        params = approx_params(n, max(k, 1), **(approx or {}))
    else:
        raise ValueError(f"approx must be an ApproxParams, a dict or None, got {type(approx).__name__}")
    check_finite(x)
    if n == 1:
        return single_token(run, state)
    n_centers = min(n_centers, n)

    if run == "exact":
        with thread_limit(n_threads):
            return cluster(lambda: ExactSearch(x, block_size, state), n_centers, k)
    # worker threads, each running FAISS and torch single-threaded (tiles.parallel)
    workers = n_threads if n_threads is not None else max(1, torch.get_num_threads())
    with thread_limit(1):
        return cluster(lambda: IVFSearch(x, params, state, workers), n_centers, k)


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
    if v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v}")
    return v


def _as_real_array(tokens) -> np.ndarray:
    x = np.asarray(tokens)
    if x.ndim != 2:
        raise ValueError(f"tokens must be a 2-D array [N, d], got shape {x.shape}")
    n, d = x.shape
    if n == 0:
        raise ValueError("tokens is empty (N == 0)")
    if d == 0:
        raise ValueError("tokens must have at least one feature dimension (d == 0)")
    if x.dtype not in (np.float32, np.float64):
        if np.issubdtype(x.dtype, np.complexfloating) or not (
            np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_
        ):
            raise ValueError(f"tokens must be real-valued, got dtype {x.dtype}")
        # float32 is exact for bools / small integers; otherwise float64
        small = x.dtype == np.bool_ or (
            np.issubdtype(x.dtype, np.integer) and np.iinfo(x.dtype).bits <= 16
        ) or (np.issubdtype(x.dtype, np.floating) and np.finfo(x.dtype).bits <= 32)
        x = x.astype(np.float32 if small else np.float64)
    return x
