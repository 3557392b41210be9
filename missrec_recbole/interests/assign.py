"""Nearest-center assignment for tokens added after clustering (new items at inference time)."""

from __future__ import annotations

import numpy as np
import torch


def nearest_center(tokens: torch.Tensor, centers: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Position of each token's nearest center (L2 in float64; ties -> smaller position)."""
    c = centers.double().cpu().numpy()
    c_sq = (c * c).sum(axis=1)
    out = []
    t_all = tokens.double().cpu().numpy()
    for start in range(0, len(t_all), chunk):
        t = t_all[start:start + chunk]
        # ||t - c||^2 = ||t||^2 - 2 t.c + ||c||^2; argmin does not need ||t||^2. Candidates within a
        # tiny margin of the minimum are recomputed exactly from the differences (deterministic ties).
        approx = c_sq[None, :] - 2.0 * t @ c.T
        best = approx.min(axis=1, keepdims=True)
        scale = 1e-9 * (np.abs(best) + (t * t).sum(axis=1, keepdims=True) + c_sq.max(initial=0.0) + 1.0)
        near = approx <= best + scale
        rows = np.argmax(near, axis=1)  # the only candidate where there is just one
        for r in np.flatnonzero(near.sum(axis=1) > 1):
            cand = np.flatnonzero(near[r])
            exact = ((c[cand] - t[r]) ** 2).sum(axis=1)
            rows[r] = cand[np.argmin(exact)]  # argmin returns the first minimum: smaller position
        out.append(rows.astype(np.int64))
    return torch.from_numpy(np.concatenate(out) if out else np.zeros(0, dtype=np.int64))
