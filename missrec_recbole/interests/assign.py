"""Nearest-center assignment for tokens added after clustering (new items at inference time)."""

from __future__ import annotations

import numpy as np
import torch

# Relative margin covering float32 rounding of ||c||^2 - 2 t.c (dot products of length up to ~1000): every center
# within it of the float32 minimum is re-checked in float64, so the result is the exact float64 argmin.
FLOAT32_MARGIN = 2e-4


def nearest_center(tokens: torch.Tensor, centers: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
    """Position of each token's nearest center (L2, exact in float64; ties -> smaller position), on the host.

    Distances are ranked with one float32 matrix product per chunk (on the tokens' device); only the centers
    within :data:`FLOAT32_MARGIN` of a row's minimum are recomputed exactly from the differences."""
    c = centers.detach().float().to(tokens.device)
    c_sq = (c * c).sum(dim=1)
    c_sq_max = float(c_sq.max()) if len(c_sq) else 0.0
    c64 = centers.detach().double().cpu().numpy()
    out = []
    for t in tokens.detach().float().split(chunk):
        approx = c_sq[None, :] - 2.0 * (t @ c.T)  # ||t - c||^2 - ||t||^2
        two, which = torch.topk(approx, min(2, approx.shape[1]), dim=1, largest=False)
        best = two[:, :1]
        margin = FLOAT32_MARGIN * (best.abs() + (t * t).sum(dim=1, keepdim=True) + c_sq_max + 1.0)
        rows = which[:, 0].cpu().numpy()  # right where no other center is within the margin
        multi = two[:, -1:] <= best + margin if two.shape[1] > 1 else torch.zeros_like(best, dtype=torch.bool)
        multi = multi.squeeze(1)
        if multi.any():
            near = approx[multi] <= (best + margin)[multi]
            rows[multi.cpu().numpy()] = _exact_among(t[multi].cpu().double().numpy(), c64, near.cpu().numpy())
        out.append(rows.astype(np.int64))
    return torch.from_numpy(np.concatenate(out) if out else np.zeros(0, dtype=np.int64))


def _exact_among(t: np.ndarray, c: np.ndarray, near: np.ndarray) -> np.ndarray:
    """For each row of ``t``, the candidate center (``near``) nearest in float64; ties -> smaller position."""
    row, cand = np.nonzero(near)
    exact = ((c[cand] - t[row]) ** 2).sum(axis=1)
    order = np.lexsort((cand, exact, row))  # by row, then distance, then position
    first = np.r_[True, row[order][1:] != row[order][:-1]]
    return cand[order][first]
