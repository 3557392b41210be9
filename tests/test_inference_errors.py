"""Inference API: one clear error per kind of bad history or bad new item."""

from __future__ import annotations

import numpy as np
import pytest

from missrec_recbole.inference import (DuplicateItemError, EmptyHistoryError, FeatureDimError, FeatureError,
                                       InferenceError, UnknownItemError)
from tests.inference_helpers import DIM, _load


def test_bad_histories_are_clear_errors(tiny):
    rec = _load(tiny)
    with pytest.raises(EmptyHistoryError, match="empty history"):
        rec.recommend([])
    with pytest.raises(EmptyHistoryError, match=r"empty history \(history #1\)"):
        rec.recommend_batch([["ITEM1"], []])
    with pytest.raises(UnknownItemError, match="unknown item id.*'NOPE'.*not in Tiny's item ids"):
        rec.recommend(["ITEM1", "NOPE"])
    with pytest.raises(InferenceError, match="must be a list of item ids"):
        rec.recommend("ITEM1")
    with pytest.raises(InferenceError, match="k must be a positive integer"):
        rec.recommend(["ITEM1"], k=0)
    assert issubclass(UnknownItemError, ValueError)


def test_bad_new_items_are_clear_errors(tiny):
    rec = _load(tiny)
    good = np.ones((2, DIM), dtype=np.float32)
    with pytest.raises(FeatureDimError, match=r"text_features has shape \(2, 8\), expected \(2, 16\).*text_dim=16"):
        rec.add_items(["A", "B"], text_features=np.ones((2, 8)))
    with pytest.raises(FeatureDimError, match="image_features"):
        rec.add_items(["A", "B"], text_features=good, image_features=np.ones((2, DIM + 1)))
    with pytest.raises(FeatureError, match="3 rows for 2 item ids"):
        rec.add_items(["A", "B"], text_features=np.ones((3, DIM)))
    with pytest.raises(FeatureError, match="NaN"):
        rec.add_items(["A", "B"], text_features=np.full((2, DIM), np.nan))
    with pytest.raises(FeatureError, match="at least one modality"):
        rec.add_items(["A", "B"])
    with pytest.raises(FeatureError, match="'B' has no features"):
        rec.add_items(["A", "B"], text_features=np.concatenate([good[:1], np.zeros((1, DIM))]))
    with pytest.raises(DuplicateItemError, match="'ITEM1'"):
        rec.add_items(["A", "ITEM1"], text_features=good)
    with pytest.raises(DuplicateItemError, match="'A'"):
        rec.add_items(["A", "A"], text_features=good)
    assert rec.n_items == 40  # nothing was added by the failed calls
