"""Interest discovery: DPC-KNN clustering of item tokens (docs/design.md §4), exact or approximate."""

from missrec_recbole.interests.dpc_knn import EXACT_MAX_TOKENS, dpc_knn, n_interests
from missrec_recbole.interests.driver import DPCKNNResult
from missrec_recbole.interests.exact import nearest_center
from missrec_recbole.interests.ivf_params import ApproxParams, DPCKNNState, approx_params

__all__ = ["ApproxParams", "DPCKNNResult", "DPCKNNState", "EXACT_MAX_TOKENS", "approx_params", "dpc_knn",
           "n_interests", "nearest_center"]
