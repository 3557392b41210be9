"""The pessimistic tie rule, the one place every evaluator takes it from (docs/design.md §5).

Items without IDs can share feature vectors and hence scores exactly; ``torch.topk`` would order such ties
arbitrarily. Under the pessimistic rule a target ranks after every other item scoring >= it:
rank = 1 + #{j != target : score_j >= score_target} = #{j : score_j >= score_target}.

- :class:`TieRuleEvaluation`: a RecBole ``Trainer`` mixin applying the config's ``tie_rule`` in full ranking
  (MISSRecTrainer, and :class:`TieRuleTrainer` = RecBole's Trainer with it, for any other RecBole model);
- :func:`pessimistic_ranks` and :func:`metrics_from_ranks`: the same rule on a score matrix (numpy or torch),
  for evaluators outside RecBole's loop (benchmark rank files, demo baselines, cold-start benchmark).
"""

from __future__ import annotations

import numpy as np
import torch
from recbole.trainer import Trainer


def pessimistic_ties(scores: torch.Tensor, positive_u: torch.Tensor, positive_i: torch.Tensor) -> torch.Tensor:
    """``scores`` with every other item whose score equals a target's raised to the next float above it, so that
    RecBole's top-k ranks the target after them: its rank becomes 1 + #items scoring >= it, deterministically."""
    positive_u, positive_i = positive_u.to(scores.device), positive_i.to(scores.device)  # the loader's are on the host
    target = scores[positive_u, positive_i]
    tied = scores[positive_u] == target[:, None]
    bump = torch.zeros(scores.shape, dtype=torch.int32, device=scores.device)
    bump.index_put_((positive_u,), tied.to(torch.int32), accumulate=True)
    bump[positive_u, positive_i] = 0
    return torch.where(bump > 0, torch.nextafter(scores, torch.full_like(scores, float("inf"))), scores)


def pessimistic_ranks(scores, rows, targets):
    """Rank of each target (1-based) = number of items in its score row scoring >= it, itself included.
    ``scores`` [users, items], ``rows``/``targets`` the row and item of each case; numpy arrays or tensors."""
    target = scores[rows, targets]
    return (scores[rows] >= target[:, None]).sum(1)


def case_ndcg(ranks, k: int) -> np.ndarray:
    """NDCG@k of each case (one target per case) from 1-based ranks."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)


def metrics_from_ranks(ranks, ks=(10, 50)) -> dict:
    """Recall@k and NDCG@k (one target per case) from 1-based ranks."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out = {}
    for k in ks:
        out[f"recall@{k}"] = float((ranks <= k).mean())
        out[f"ndcg@{k}"] = float(case_ndcg(ranks, k).mean())
    return out


class TieRuleEvaluation:
    """Trainer mixin (put it before RecBole's ``Trainer``): full-ranking evaluation with ``config['tie_rule']``."""

    def _full_sort_batch_eval(self, batched_data):
        interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
        if self.config["tie_rule"] == "pessimistic":
            scores = pessimistic_ties(scores, positive_u, positive_i)
        return interaction, scores, positive_u, positive_i


class TieRuleTrainer(TieRuleEvaluation, Trainer):
    """RecBole's Trainer with the tie rule (the benchmark evaluates RecBole's SASRec with it)."""
