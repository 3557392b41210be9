"""Export: exact retrieve-then-rerank equals the full ranking; approximate indexes; bad exports."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest
import torch

from missrec_recbole.inference import ExportedIndex, ExportError, MISSRecPredictor
from tests.conftest import write_dataset
from tests.inference_helpers import DIM, _untrained_checkpoint


@pytest.fixture(scope="module")
def larger(tmp_path_factory):
    """A larger generated dataset for the export test (400 items, ~12% missing images)."""
    root = tmp_path_factory.mktemp("inference_large")
    missing = tuple(range(3, 400, 8))
    write_dataset(root, "Large", n_items=400, n_users=120, dim=DIM, missing_image=missing, seed=3, seq_len=(5, 12))
    return {"root": root, **{mode: _untrained_checkpoint(root, "Large", mode) for mode in ("inductive",
                                                                                         "transductive")}}


def _assert_same_top(got, want, full_scores, row_of, tol=2e-5):
    """Same top-k up to float ties: each returned item's exact score equals the reference score at that rank."""
    assert len(got) == len(want)
    for (item, score), (_, reference) in zip(got, want):
        assert abs(score - reference) <= tol
        assert abs(float(full_scores[row_of[item]]) - reference) <= tol


@pytest.mark.parametrize("mode", ["inductive", "transductive"])
def test_export_retrieve_then_rerank_reproduces_full_ranking(larger, tmp_path, mode):
    """Per-modality FAISS top-C + exact fused re-ranking (C doubled until certified) = the model's full top-k,
    for every user, whatever the fusion beta (the checkpoint's, mean-like 0, max-like 25)."""
    rec = MISSRecPredictor.load(larger[mode], "Large", data_path=larger["root"])
    for beta in (None, 0.0, 25.0):
        if beta is not None:
            with torch.no_grad():
                rec.model.fusion_beta.fill_(beta)
        _check_export(rec, tmp_path / f"export-{beta}", mode)


def _check_export(rec, folder, mode):
    manifest_path = rec.export(folder)
    manifest = json.loads(manifest_path.read_text())
    assert manifest["modalities"] == ["text", "image"] and manifest["dim"] == 32
    assert manifest["item_ids"] == rec.item_ids and manifest["mode"] == mode
    assert manifest["fusion"]["beta"] == pytest.approx(rec.model.fusion_beta.item())
    assert manifest["temperature"] == pytest.approx(0.07)
    vectors = np.load(folder / "vectors_text.npy")
    assert vectors.shape == (rec.n_items, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    present = np.load(folder / "present.npy")
    image_index = faiss.read_index(str(folder / "index_image.faiss"))
    assert image_index.ntotal == present[:, 1].sum() < rec.n_items  # items without an image are not indexed
    assert isinstance(faiss.downcast_index(image_index.index), faiss.IndexFlatIP)

    index = ExportedIndex.load(folder)
    histories = [h for h in (rec.item_ids[i:i + 1 + i % 7] for i in range(0, rec.n_items - 8, 3))]
    k = 10
    want = rec.recommend_batch(histories, k=k)
    got = index.search(rec.user_vectors(histories), k=k, candidates_start=k, exclude=histories)
    full = rec.score(histories)[:, 1:].numpy()
    row_of = {item: row for row, item in enumerate(rec.item_ids)}
    for g, w, f in zip(got, want, full):
        _assert_same_top(g, w, f, row_of)
    identical = np.mean([[i for i, _ in g] == [i for i, _ in w] for g, w in zip(got, want)])
    assert identical >= 0.95
    # retrieval prunes: most users are certified before every item is retrieved
    assert np.mean(np.array(index.last_candidates) < rec.n_items) > 0.5
    # without exclusions too (default start C = max(4k, 50))
    got = index.search(rec.user_vectors(histories[:20]), k=k)
    want = rec.recommend_batch(histories[:20], k=k, exclude_history=False)
    for g, w, f in zip(got, want, full[:20]):
        _assert_same_top(g, w, f, row_of)


def test_export_errors(tmp_path):
    with pytest.raises(ExportError, match="manifest not found"):
        ExportedIndex.load(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ExportError, match="format 'other'"):
        ExportedIndex.load(tmp_path)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_export_recall(larger, tmp_path, kind):
    rec = MISSRecPredictor.load(larger["inductive"], "Large", data_path=larger["root"])
    histories = [rec.item_ids[i:i + 1 + i % 5] for i in range(0, rec.n_items - 6, 4)]
    users = rec.user_vectors(histories)
    exact = [[i for i, _ in r] for r in rec.recommend_batch(histories, k=10)]
    rec.export(tmp_path / kind, approximate=kind)
    manifest = json.loads((tmp_path / kind / "manifest.json").read_text())
    assert manifest["approximate"]["kind"] == kind and "approximate" in manifest["index_type"]
    index = ExportedIndex.load(tmp_path / kind)
    found = index.search(users, k=10, candidates_start=20, exclude=histories)
    recall = np.mean([len({i for i, _ in f} & set(e)) / 10 for f, e in zip(found, exact)])
    assert recall >= 0.8  # random vectors, 10 lists, C=20: the worst case for an index
    reference = rec.score(histories)
    for row, result in enumerate(found):  # the fused scores are exact
        for item, score in result:
            assert abs(score - float(reference[row, rec._internal[item]])) < 1e-4
    if kind == "ivf":  # every list probed: the candidates are exact, so is the top-10 (with a wide C)
        rec.export(tmp_path / "all", approximate="ivf", nprobe=10_000)
        found = ExportedIndex.load(tmp_path / "all").search(users, k=10, candidates_start=200, exclude=histories)
        assert [[i for i, _ in f] for f in found] == exact


def test_approximate_export_bad_kind_is_a_clear_error(larger, tmp_path):
    rec = MISSRecPredictor.load(larger["inductive"], "Large", data_path=larger["root"])
    with pytest.raises(ExportError, match="approximate='flat'"):
        rec.export(tmp_path, approximate="flat")


def test_default_nprobe_is_a_sixteenth_of_the_lists_within_8_and_128():
    from missrec_recbole.inference.export import default_nprobe, ivf_lists

    assert [default_nprobe(n) for n in (5, 100, 256, 1264, 2048, 4000)] == [5, 8, 16, 79, 128, 128]
    assert default_nprobe(ivf_lists(1_000_000)) == 128  # 4,000 lists: 128 probed, not 250
