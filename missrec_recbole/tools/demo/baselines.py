"""Two reference rankings on a generated (or any) domain: popularity and a feature heuristic."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from missrec_recbole.data.atomic_files import (HISTORY, SPLITS, TARGET, USER, feature_path, inter_path,
                                               read_feature_file, read_inter)
from missrec_recbole.evaluation import metrics_from_ranks, pessimistic_ranks
from missrec_recbole.tools.demo.settings import IMAGE_SUFFIX, TEXT_SUFFIX


def _rows(path: Path) -> tuple[np.ndarray, list[list[int]], np.ndarray]:
    """Users, histories and targets of an .inter file that holds item indices."""
    frame = read_inter(path)[0]
    return (frame[USER].astype(np.int64).to_numpy(), [[int(i) for i in h.split()] for h in frame[HISTORY]],
            frame[TARGET].astype(np.int64).to_numpy())


def load_domain(domain_dir: str | Path, name: str | None = None, feature_dim: int = 512) -> dict:
    """Load a domain (docs/data.md format, item indices) into numpy arrays (for checks and baselines):
    ``{split: (users, histories, targets)}`` and the ``text`` / ``image`` feature matrices."""
    domain_dir = Path(domain_dir)
    name = name or domain_dir.name
    out = {split: _rows(inter_path(domain_dir, name, split)) for split in SPLITS}
    for key, suffix in (("text", TEXT_SUFFIX), ("image", IMAGE_SUFFIX)):
        out[key] = read_feature_file(feature_path(domain_dir, name, suffix), feature_dim, key)
    return out


def ndcg_pessimistic(scores: np.ndarray, targets: np.ndarray, k: int) -> float:
    targets = np.asarray(targets)
    ranks = pessimistic_ranks(scores, np.arange(len(targets)), targets)
    return metrics_from_ranks(ranks, ks=(k,))[f"ndcg@{k}"]


def baseline_ndcg(domain_dir: str | Path, name: str | None = None, split: str = "test", k: int = 10, last_n: int = 3,
                  feature_dim: int = 512, exclude_history: bool = False) -> dict[str, float]:
    """NDCG@k of two reference rankings over all items, pessimistic ties.

    ``popularity``: item frequency in the training part of the sequences.
    ``feature``: cosine between each item's [text/||text||, image/||image||] (missing image = 0)
    and the mean of that vector over the last ``last_n`` history items.
    With ``exclude_history`` the history items are removed from the ranking.
    """
    d = load_domain(domain_dir, name, feature_dim)
    n_items = d["text"].shape[0]
    # training part of each sequence = longest train history + its target = the valid history
    _, v_hist, _ = d["valid"]
    pop = np.zeros(n_items)
    for h in v_hist:
        np.add.at(pop, h, 1.0)
    _, hists, targets = d[split]

    def norm(a):
        n = np.linalg.norm(a, axis=1, keepdims=True)
        return np.divide(a, n, out=np.zeros_like(a, dtype=np.float64), where=n > 0)

    feat = np.concatenate([norm(d["text"].astype(np.float64)), norm(d["image"].astype(np.float64))], 1)
    feat_n = norm(feat)
    query = np.stack([feat[h[-last_n:]].mean(0) for h in hists])
    s_feat = norm(query) @ feat_n.T
    s_pop = np.tile(pop, (len(targets), 1))
    if exclude_history:
        for r, h in enumerate(hists):
            s_feat[r, h] = -np.inf
            s_pop[r, h] = -np.inf
    return {"popularity": ndcg_pessimistic(s_pop, targets, k), "feature": ndcg_pessimistic(s_feat, targets, k)}
