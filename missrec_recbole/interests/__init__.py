"""Interest discovery: exact DPC-KNN clustering of item tokens (DESIGN.md section 3)."""

from missrec_recbole.interests.dpc_knn import DPCKNNResult, dpc_knn, n_interests

__all__ = ["DPCKNNResult", "dpc_knn", "n_interests"]
