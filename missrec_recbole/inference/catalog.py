"""Model-level helpers for a growing item catalogue (no change to :class:`MISSRec` itself).

MISSRec keeps its frozen item features, presence masks, interest map and (transductive) ID
embedding in RecBole's internal item order. New items are appended after the last internal id:

* features / presence rows are concatenated to the ``{m}_features`` / ``{m}_present`` buffers;
* interests: each present modality token ``e_i^m = W_m x_i^m + b_m`` (no dropout) is assigned to its
  **nearest existing interest center** (Euclidean distance, float64, ties -> the center listed first),
  which is exactly the assignment rule DPC-KNN uses for every token (``dpc_knn``), applied with the
  centers fixed: the new items do not move or add centers, so existing items keep their interests and
  the scores of histories without new items do not change. A full ``refresh_interests()`` would
  re-cluster everything instead;
* transductive mode: the ID embedding grows by zero rows, i.e. new items are scored from their
  features only (``e_i = e_i^text + e_i^image + 0``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn


def _device(model) -> torch.device:
    return model.position_embedding.weight.device


@torch.no_grad()
def modality_tokens(model, m: str, features: torch.Tensor) -> torch.Tensor:
    """Adapter output ``W_m x + b_m`` for raw feature rows (no dropout), [n, d]."""
    return model.adapters[m](features.to(_device(model)))


@torch.no_grad()
def center_tokens(model) -> torch.Tensor:
    """Token vectors of the current interest centers, [K, d] (same computation as ``interest_tokens``)."""
    tokens = torch.zeros(len(model.center_item), model.hidden_size, device=_device(model))
    for index, m in enumerate(model.modalities):
        chosen = model.center_modality == index
        if chosen.any():
            tokens[chosen] = modality_tokens(model, m, model._features(m)[model.center_item[chosen]])
    return tokens


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


@torch.no_grad()
def assign_interests(model, features: dict, present: dict) -> torch.Tensor:
    """Interest of each present modality token of new items: nearest existing center. [n, M], -1 = absent."""
    n = len(next(iter(present.values())))
    result = torch.full((n, len(model.modalities)), -1, dtype=torch.long, device=_device(model))
    if n == 0:
        return result
    centers = center_tokens(model)
    for index, m in enumerate(model.modalities):
        rows = torch.nonzero(present[m].to(_device(model))).squeeze(1)
        if len(rows):
            tokens = modality_tokens(model, m, features[m][rows.cpu()])
            result[rows, index] = nearest_center(tokens, centers).to(_device(model))
    return result


@torch.no_grad()
def append_items(model, features: dict, present: dict, interests: torch.Tensor) -> torch.Tensor:
    """Append items to ``model`` (features [n, dim_m] and presence [n] per modality, interests [n, M]).

    Returns their new internal ids. The model must already have an interest map.
    """
    if not model.has_interest_map:
        raise RuntimeError("append_items needs the model's interest map (call refresh_interests first)")
    device = _device(model)
    n_old = model.n_items
    n_new = len(interests)
    for m in model.modalities:
        setattr(model, f"{m}_features", torch.cat([model._features(m), features[m].to(device)]))
        setattr(model, f"{m}_present", torch.cat([model._present(m), present[m].to(device)]))
    model.item_interest = torch.cat([model.item_interest, interests.to(device)])
    if model.transductive:
        old = model.item_embedding
        grown = nn.Embedding(n_old + n_new, old.embedding_dim, padding_idx=0).to(device)
        grown.weight.data.zero_()
        grown.weight.data[:n_old] = old.weight.data
        grown.weight.requires_grad = old.weight.requires_grad
        model.item_embedding = grown
    model.n_items = n_old + n_new
    model._item_token_cache = None
    return torch.arange(n_old, n_old + n_new, device=device)
