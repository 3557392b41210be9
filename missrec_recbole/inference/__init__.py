"""Inference for trained MISSRec models: recommend from original item ids, add new items without
training (inductive cold start), export item vectors + FAISS indexes for serving.

See :mod:`.predictor` (:class:`MISSRecPredictor`; new items join the model through
``MISSRec.assign_interests`` / ``MISSRec.append_items``), :mod:`.export` (files and the exact retrieve-then-rerank for the dynamic fusion) and
:mod:`.cli` (``python recommend.py``).
"""

from missrec_recbole.inference.errors import (CheckpointMismatchError, DuplicateItemError, EmptyHistoryError,
                                              ExportError, FeatureDimError, FeatureError, InferenceError, ItemIdError,
                                              TransductiveModeError, UnknownItemError)
from missrec_recbole.inference.export import ExportedIndex, export_predictor
from missrec_recbole.inference.predictor import MISSRecPredictor

__all__ = ["MISSRecPredictor", "ExportedIndex", "export_predictor", "InferenceError", "EmptyHistoryError",
           "UnknownItemError", "FeatureError", "FeatureDimError", "DuplicateItemError", "ItemIdError", "TransductiveModeError",
           "CheckpointMismatchError", "ExportError"]
