"""Parameters and reusable state of the inverted-file DPC-KNN search (:mod:`missrec_recbole.interests.ivf`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np


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

    @classmethod
    def after_run(cls, previous: "DPCKNNState | None", centroids, info: dict, timings: dict) -> "DPCKNNState":
        """The state a run leaves: its centroids, one more refresh than ``previous``, its info and timings."""
        refreshes = (previous.refreshes if previous is not None else 0) + 1
        return cls(centroids=centroids, refreshes=refreshes,
                   last={**info, **{key: round(v, 3) for key, v in timings.items()}})
