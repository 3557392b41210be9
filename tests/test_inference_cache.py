"""Catalogue scale: item vectors computed once and kept in step with weights and added items."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from missrec_recbole.inference import DuplicateItemError
from tests.inference_helpers import _load


def _count_full_computations(model, monkeypatch) -> list:
    """Every computation of all items' vectors (not served from the cache) is recorded."""
    calls = []
    original = model._candidate_tokens

    def counting(items, *given):
        calls.append(len(items))
        return original(items, *given)

    monkeypatch.setattr(model, "_candidate_tokens", counting)
    return calls


def test_item_vectors_are_computed_once_and_give_the_uncached_recommendations(tiny, monkeypatch):
    rec = _load(tiny)
    rec.model._item_cache = None  # loading added the unseen items, which builds the cache
    histories = [["ITEM1", "ITEM2"], ["ITEM10"], ["ITEM3", "ITEM7", "ITEM9"]]
    calls = _count_full_computations(rec.model, monkeypatch)
    cached = [rec.recommend(h, k=8) for h in histories] + rec.recommend_batch(histories, k=8)
    assert calls == [rec.model.n_items]  # once for all calls
    uncached = []
    for h in histories:
        rec.model._item_cache = None
        uncached.append(rec.recommend(h, k=8))
    rec.model._item_cache = None
    assert cached == uncached + rec.recommend_batch(histories, k=8)
    scores = rec.score(histories).masked_fill(~rec.rankable(), float("-inf"))
    for row, h in enumerate(histories):  # against a full stable sort
        scores[row, rec.internal_ids(h)] = float("-inf")
        order = torch.sort(scores[row], descending=True, stable=True).indices[:8]
        assert [i for i, _ in cached[row]] == [rec._ids[int(i)] for i in order]


def test_item_vector_cache_follows_weight_changes(tiny):
    rec = _load(tiny)
    before = rec.recommend(["ITEM1", "ITEM2"], k=40)
    with torch.no_grad():  # an in-place update in eval mode (as an optimizer step would do)
        rec.model.adapters["text"].weight.mul_(-1.0)
    after = rec.recommend(["ITEM1", "ITEM2"], k=40)
    assert after != before
    rec.model._item_cache = None
    assert rec.recommend(["ITEM1", "ITEM2"], k=40) == after


def _new_items(rec, n, seed=0):
    rng = np.random.default_rng(seed)
    model = rec.model
    features = {m: rng.normal(size=(n, model._features(m).shape[1])).astype(np.float32) for m in model.modalities}
    features["image"][::3] = 0.0  # some without an image
    return [f"NEW{seed}-{i}" for i in range(n)], features


@pytest.mark.parametrize("mode", ["inductive", "transductive"])
def test_add_items_appends_vectors_equal_to_a_rebuild(tiny, mode, monkeypatch):
    """Items added in two steps, the cache extended each time, score like the same items added at once and like
    vectors recomputed from scratch; only the new items' vectors are computed."""
    opts = {"allow_feature_only": True} if mode == "transductive" else {}
    ids, features = _new_items(_load(tiny, mode, **opts), 30)
    histories = [["ITEM1", "ITEM2"], ["ITEM10"], [ids[0], "ITEM3"]]
    stepwise = _load(tiny, mode, **opts)
    stepwise.recommend(["ITEM1"])  # builds the cache
    calls = _count_full_computations(stepwise.model, monkeypatch)
    for part in (slice(0, 12), slice(12, 30)):
        stepwise.add_items(ids[part], allow_feature_only=mode == "transductive",
                           **{f"{m}_features": f[part] for m, f in features.items()})
        stepwise.recommend(["ITEM1"])
    assert calls == [12, 18]
    at_once = _load(tiny, mode, **opts)
    at_once.add_items(ids, allow_feature_only=mode == "transductive",
                      **{f"{m}_features": f for m, f in features.items()})
    extended = stepwise.model.candidate_tokens()
    stepwise.model._item_cache = None
    rebuilt = stepwise.model.candidate_tokens()
    assert torch.equal(extended[1], rebuilt[1])
    assert torch.allclose(extended[0], rebuilt[0], atol=1e-6)
    assert torch.allclose(stepwise.score(histories), at_once.score(histories), atol=1e-6)
    assert torch.equal(stepwise.model.item_interest, at_once.model.item_interest)
    assert stepwise.recommend_batch(histories, k=10) == at_once.recommend_batch(histories, k=10)


def test_add_items_of_many_items_is_vectorised(tiny):
    rec = _load(tiny)
    ids, features = _new_items(rec, 20_000)
    before = rec.n_items
    start = time.perf_counter()
    rec.add_items(ids, **{f"{m}_features": f for m, f in features.items()})
    assert time.perf_counter() - start < 10  # was quadratic (a list count per id): ~5 s for 20k
    assert rec.n_items == before + 20_000 and rec.item_ids[-1] == ids[-1] and ids[5000] in rec
    with pytest.raises(DuplicateItemError, match="NEW0-3"):
        rec.add_items(["X", "NEW0-3"], text_features=features["text"][:2])


def test_growing_catalogue_appends_into_spare_rows(tiny):
    """Successive add_items write into storage kept with spare rows (no copy of the earlier rows per call), and
    the grown buffers and cache hold exactly what one concatenation would."""
    ids, features = _new_items(_load(tiny), 24)
    stepwise, at_once = _load(tiny), _load(tiny)
    stepwise.recommend(["ITEM1"])  # builds the cache, which add_items then extends
    model = stepwise.model

    def add(rec, part):
        rec.add_items(ids[part], **{f"{m}_features": f[part] for m, f in features.items()})

    add(stepwise, slice(0, 12))  # first growth: storage for twice the catalogue
    pointers = (model.text_features.data_ptr(), model.item_interest.data_ptr(), model.candidate_tokens()[0].data_ptr())
    add(stepwise, slice(12, 24))
    assert (model.text_features.data_ptr(), model.item_interest.data_ptr(),
            model.candidate_tokens()[0].data_ptr()) == pointers
    add(at_once, slice(0, 24))
    for m in model.modalities:
        assert torch.equal(model._features(m), at_once.model._features(m))
        assert torch.equal(model._present(m), at_once.model._present(m))
    assert torch.equal(model.item_interest, at_once.model.item_interest)
    model_cached = model.candidate_tokens()
    last = torch.arange(model.n_items - 12, model.n_items)  # the last call's items, computed from the features
    assert torch.equal(model_cached[0][last], model._candidate_tokens(last)[0])  # what add_items cached, bit for bit
    model._item_cache = None
    assert torch.allclose(model.candidate_tokens()[0], model_cached[0], atol=1e-6)


def test_appending_to_a_stale_view_does_not_overwrite_newer_rows(tiny):
    model = _load(tiny).model
    first = model._append_rows("x", torch.zeros(4, 2), torch.ones(2, 2))
    second = model._append_rows("x", first, torch.full((1, 2), 2.0))
    assert second.data_ptr() == first.data_ptr()  # appended in place
    branched = model._append_rows("x", first, torch.full((1, 2), 3.0))  # ``first`` no longer ends the storage
    assert branched.data_ptr() != first.data_ptr()
    assert second[-1].tolist() == [2.0, 2.0] and branched[-1].tolist() == [3.0, 3.0]
    assert torch.equal(branched[:6], second[:6])


def test_add_items_before_any_recommendation_leaves_every_vector_cached(tiny, monkeypatch):
    """The old catalogue's vectors are computed once at the first add_items and the new ones appended: the next
    recommendation computes none (at 1M items it used to compute them all: 47 s)."""
    rec = _load(tiny)
    rec.model._item_cache = None  # loading added the unseen items, which builds the cache
    calls = _count_full_computations(rec.model, monkeypatch)
    n_old = rec.model.n_items
    ids, features = _new_items(rec, 10)
    rec.add_items(ids, **{f"{m}_features": f for m, f in features.items()})
    rec.recommend(["ITEM1", ids[0]])
    assert calls == [n_old, 10]
