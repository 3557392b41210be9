"""Interest discovery: DPC-KNN clustering of item tokens (docs/design.md §4), exact or approximate."""

from missrec_recbole.interests.approx import ApproxParams, DPCKNNState, approx_params
from missrec_recbole.interests.dpc_knn import EXACT_MAX_TOKENS, DPCKNNResult, dpc_knn, n_interests

__all__ = ["ApproxParams", "DPCKNNResult", "DPCKNNState", "EXACT_MAX_TOKENS", "approx_params", "dpc_knn",
           "n_interests"]
