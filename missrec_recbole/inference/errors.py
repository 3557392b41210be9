"""Errors of the inference API: one class per kind of bad input, each message names what is wrong."""

from __future__ import annotations

from missrec_recbole.errors import InputError
from missrec_recbole.trainer.checkpoint import CheckpointError, CheckpointMismatchError  # noqa: F401 (re-exported)


class InferenceError(InputError):
    """Base class of every error raised by :mod:`missrec_recbole.inference`."""


class EmptyHistoryError(InferenceError):
    """A history with no items (MISSRec needs at least one item to build a user vector)."""


class HistoryInputError(InferenceError):
    """The command line's history: --history and --history_file together or neither, or a history file that is
    missing, not UTF-8 or empty."""


class UnknownItemError(InferenceError):
    """An item id that is not in the predictor's catalogue (the message lists the ids and why)."""


class FeatureError(InferenceError):
    """Bad features for new items: wrong row count, NaN/inf, unknown modality, no modality at all."""


class FeatureDimError(FeatureError):
    """Features whose width differs from the checkpoint's ``text_dim`` / ``image_dim``."""


class ItemIdError(InferenceError):
    """A new item id that is empty or contains a tab or line break (unusable in the id files)."""


class DuplicateItemError(InferenceError):
    """``add_items`` with an id that is already in the catalogue (or twice in the same call)."""


class TransductiveModeError(InferenceError):
    """New items for a transductive model, which has no ID embedding for them.

    Pass ``allow_feature_only=True`` to score them from their features only (zero ID embedding).
    """


class ExportError(InferenceError):
    """An export folder that is missing files or was written by another format version."""
