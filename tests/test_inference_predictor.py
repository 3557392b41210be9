"""Inference API: scores and recommendations from original ids, unseen and newly added items."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from recbole.data import data_preparation

from missrec_recbole.data import MISSRecDataset
from missrec_recbole.inference import MISSRecPredictor, TransductiveModeError, UnknownItemError
from missrec_recbole.inference import predictor as predictor_module
from missrec_recbole.inference.predictor import certified_fused_scores, top_k_stable
from missrec_recbole.inference.cli import main as cli_main
from missrec_recbole.model import MISSRec
from missrec_recbole.quick_start import build_config
from missrec_recbole.trainer import save_pretrained
from tests.conftest import SHARED, tiny_overrides
from tests.inference_helpers import DIM, _config, _load


def _reference_model(path, config, dataset):
    """The checkpoint loaded the way RecBole's trainer reloads its best model."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = MISSRec(config, dataset)
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint["other_parameter"])
    return model.eval()


# ----------------------------------------------------------------------------- scores and ids
@pytest.mark.parametrize("mode", ["inductive", "transductive"])
def test_scores_equal_model_full_ranking_through_original_ids(tiny, mode):
    """Original id -> internal id mapping: the predictor reproduces MISSRec.full_sort_predict on RecBole's test set."""
    config = _config(tiny["root"], mode=mode)
    dataset = MISSRecDataset(config)
    _, _, test = data_preparation(config, dataset)
    model = _reference_model(tiny[mode], config, dataset)
    rec = _load(tiny, mode)
    tokens = dataset.field2id_token["item_id"]
    for interaction, _, _, _ in test:
        with torch.no_grad():
            expected = model.full_sort_predict(interaction)
        histories = [[f"ITEM{tokens[i]}" for i in row[:n]]
                     for row, n in zip(interaction["item_id_list"].tolist(), interaction["item_length"].tolist())]
        got = rec.score(histories)
        assert torch.allclose(got[:, :dataset.item_num], expected, atol=1e-5)
    assert rec.item_ids[:dataset.item_num - 1] == [f"ITEM{t}" for t in tokens[1:]]


def test_recommend_returns_original_ids_sorted_without_history(tiny):
    rec = _load(tiny)
    history = ["ITEM1", "ITEM2", "ITEM9"]
    top = rec.recommend(history, k=10)
    assert len(top) == 10 and all(isinstance(i, str) and i.startswith("ITEM") for i, _ in top)
    scores = [s for _, s in top]
    assert scores == sorted(scores, reverse=True)
    assert not set(history) & {i for i, _ in top} and len({i for i, _ in top}) == 10
    # the same as the full score vector, best first
    full = rec.score([history])[0]
    full[0] = -np.inf
    full[[rec._internal[i] for i in history]] = -np.inf
    assert [rec._ids[int(i)] for i in torch.argsort(full, descending=True, stable=True)[:10]] == [i for i, _ in top]
    # exclude_history=False may return history items; k larger than the catalogue returns everything rankable
    everything = rec.recommend(history, k=1000, exclude_history=False)
    assert len(everything) == rec.n_items and set(history) <= {i for i, _ in everything}
    # batch form = one call per history
    histories = [history, ["ITEM3"], ["ITEM7", "ITEM7", "ITEM30"]]
    batch = rec.recommend_batch(histories, k=5)
    for one, h in zip(batch, histories):
        single = rec.recommend(h, k=5)
        assert [i for i, _ in one] == [i for i, _ in single]
        assert np.allclose([s for _, s in one], [s for _, s in single], atol=1e-5)


@pytest.mark.parametrize("beta", [-3.0, 0.0, 1.0, 20.0])
def test_certified_fusion_gives_the_full_fusions_top_k_bit_for_bit(tiny, beta):
    """recommend fuses only the items whose best modality score can reach the top k: the same ids and the same
    float scores as fusing every item, also with ties, missing modalities, blocked items and C doubling."""
    model = _load(tiny).model
    model.fusion_beta.data.fill_(beta)
    generator = torch.Generator().manual_seed(7)
    per_modality = torch.rand(4, 3000, 2, generator=generator) * 2 - 1
    per_modality[:, 1500:2000] = per_modality[:, :500]  # exact ties across any candidate boundary
    per_modality[:, :, 1] = torch.where(torch.rand(4, 3000, generator=generator) < 0.3,
                                        per_modality[:, :, 0] * 0.5, per_modality[:, :, 1])  # a weak second modality
    present = torch.rand(3000, 2, generator=generator) > 0.1  # some items miss one modality, a few both
    per_modality[:, 2900:, 0], present[2900:] = 0.99, torch.tensor([True, False])  # the best items, all tied:
    # the fused score of a one-modality item is its bound, so only "k-th > C-th bound + margin" sees them tie
    mask = present.unsqueeze(0).expand_as(per_modality)
    blocked = torch.rand(4, 3000, generator=generator) < 0.05
    with torch.no_grad():
        full = model.fuse(per_modality, mask).masked_fill(blocked, float("-inf"))
        for k in (1, 10, 50, 3000):
            expected = top_k_stable(full, k)
            for start in (1, 4, 64, 5000):
                got = top_k_stable(certified_fused_scores(model.fuse, per_modality, mask, blocked, k, start), k)
                for (ev, ec), (gv, gc) in zip(expected, got):
                    assert torch.equal(ev, gv) and torch.equal(ec, gc), (k, start)


def test_recommend_with_few_first_candidates_equals_fusing_every_item(tiny, monkeypatch):
    rec = _load(tiny)
    histories = [["ITEM1", "ITEM2", "ITEM9"], ["ITEM3"], ["ITEM7", "ITEM30"], ["ITEM4", "ITEM5"]]
    monkeypatch.setattr(predictor_module, "CANDIDATES_START", 10_000)  # more than the catalogue: every item fused
    cases = [(k, ex) for k in (1, 5, 40) for ex in (True, False)]

    def recommendations():  # a batch and a single history (its scores may differ from the batch's in the last bit)
        return [(rec.recommend_batch(histories, k=k, exclude_history=ex),
                 rec.recommend(histories[0], k=k, exclude_history=ex)) for k, ex in cases]

    everything = recommendations()
    for start in (1, 3):
        monkeypatch.setattr(predictor_module, "CANDIDATES_START", start)
        assert recommendations() == everything


def test_dataset_and_data_path_default_to_the_checkpoints(tiny):
    rec = MISSRecPredictor.load(tiny["inductive"])
    assert rec.dataset_name == "Tiny" and rec.n_items == 40
    assert rec.recommend(["ITEM1"], k=3) == _load(tiny).recommend(["ITEM1"], k=3)


def test_long_history_keeps_last_items(tiny):
    rec = _load(tiny)
    rec.max_length = 3
    long = ["ITEM1", "ITEM2", "ITEM3", "ITEM4", "ITEM6"]
    assert torch.allclose(rec.score([long]), rec.score([long[-3:]]))
    assert {i for i, _ in rec.recommend(long, k=40)}.isdisjoint(long)  # the whole history is excluded


# ----------------------------------------------------------------------------- unseen and new items
def test_unseen_dataset_item_is_rankable_in_inductive_mode_only(tiny):
    inductive = _load(tiny, "inductive")
    assert "ITEM5" in inductive and inductive.item_ids[-1] == "ITEM5"  # never in an .inter file
    assert "ITEM5" in {i for i, _ in inductive.recommend(["ITEM1"], k=1000)}
    inductive.recommend(["ITEM5", "ITEM1"], k=3)  # usable in a history too

    transductive = _load(tiny, "transductive")
    assert "ITEM5" not in transductive
    with pytest.raises(UnknownItemError, match="'ITEM5' is in Tiny.item2index but not in this model's catalogue.*"
                                               "allow_feature_only=True"):
        transductive.recommend(["ITEM1", "ITEM5"])
    feature_only = _load(tiny, "transductive", allow_feature_only=True)
    assert "ITEM5" in feature_only
    embedding = feature_only.model.item_embedding.weight
    assert embedding.shape[0] == feature_only.n_items + 1 and torch.all(embedding[feature_only._internal["ITEM5"]] == 0)


def test_nearest_center_assignment_equals_dpc_knn_assignment(tiny):
    """New tokens use DPC-KNN's own rule (nearest center) with the centers fixed: on existing items it
    reproduces the interest map of a fresh refresh exactly."""
    model = _load(tiny).model
    model.refresh_interests()
    items = torch.arange(1, model.n_items)
    features = {m: model._features(m)[items] for m in model.modalities}
    present = {m: model._present(m)[items] for m in model.modalities}
    assert torch.equal(model.assign_interests(features, present), model.item_interest[items])


def test_add_items_inductive_scores_like_an_item_with_the_same_features(tiny):
    rec = _load(tiny)
    rec.model.refresh_interests()  # interests of the current adapters (see the test above)
    histories = [["ITEM1", "ITEM2"], ["ITEM10"], ["ITEM3", "ITEM7"]]
    before = rec.score(histories)
    model = rec.model
    source = rec._internal["ITEM8"]
    text = model.text_features[source].numpy()[None]
    image = model.image_features[source].numpy()[None]
    rec.add_items(["NEW-A", "NEW-B"], text_features=np.concatenate([text, text]),
                  image_features=np.concatenate([image, np.zeros_like(image)]))  # NEW-B: no image
    assert rec.item_ids[-2:] == ["NEW-A", "NEW-B"] and rec.n_items == 42
    after = rec.score(histories)
    assert torch.allclose(after[:, :before.shape[1]], before, atol=1e-6)  # existing items unchanged
    new_a, new_b = rec._internal["NEW-A"], rec._internal["NEW-B"]
    assert torch.allclose(after[:, new_a], after[:, source], atol=1e-6)
    assert torch.equal(model.item_interest[new_a], model.item_interest[source])
    assert model.item_interest[new_b, 1] == -1 and model.item_interest[new_b, 0] == model.item_interest[source, 0]
    assert not torch.allclose(after[:, new_b], after[:, source])
    ranked = {i for i, _ in rec.recommend(["ITEM1"], k=1000)}
    assert {"NEW-A", "NEW-B"} <= ranked
    assert rec.recommend(["NEW-B", "NEW-A"], k=3)  # new items work in histories
    assert len(rec.recommend_batch([["NEW-A"], ["ITEM1"]], k=2)) == 2


def test_add_items_transductive_needs_allow_feature_only(tiny):
    rec = _load(tiny, "transductive")
    features = np.random.default_rng(0).normal(size=(1, DIM)).astype(np.float32)
    with pytest.raises(TransductiveModeError, match="transductive.*allow_feature_only=True"):
        rec.add_items(["NEW"], text_features=features)
    before = rec.score([["ITEM1"]])
    rec.add_items(["NEW"], text_features=features, allow_feature_only=True)
    after = rec.score([["ITEM1"]])
    assert torch.allclose(after[:, :before.shape[1]], before, atol=1e-6)
    assert torch.all(rec.model.item_embedding.weight[rec._internal["NEW"]] == 0)
    assert "NEW" in {i for i, _ in rec.recommend(["ITEM1"], k=1000)}


# ----------------------------------------------------------------------------- real data
@pytest.mark.skipif(not (SHARED / "Scientific-mm").is_dir(), reason="needs ../shared/datasets/Scientific-mm")
def test_scientific_original_asins_and_text(tmp_path, capsys):
    config = build_config("Scientific-mm", config_dict=tiny_overrides(512, data_path=str(SHARED),
                                                                       checkpoint_dir=str(tmp_path), mode="inductive"))
    dataset = MISSRecDataset(config)
    torch.manual_seed(0)
    path = save_pretrained(MISSRec(config, dataset), config, tmp_path / "untrained.pth", epoch=0)
    rec = MISSRecPredictor.load(path, "Scientific-mm", data_path=SHARED)
    asins = [line.split("\t")[0] for line in (SHARED / "Scientific-mm" / "Scientific-mm.item2index").open()]
    assert rec.n_items == 1585 and sorted(rec.item_ids) == sorted(asins)
    # internal id -> item index -> ASIN: the features behind an ASIN are its item2index row
    features = np.fromfile(SHARED / "Scientific-mm" / "Scientific-mm.feat1CLS", dtype="<f4").reshape(-1, 512)
    for asin in ("B00O47ILVA", "B006ATU73A", asins[-1]):
        assert np.array_equal(rec.model.text_features[rec._internal[asin]].numpy(), features[asins.index(asin)])
    top = rec.recommend(["B00O47ILVA", "B006ATU73A"], k=10)
    assert len(top) == 10 and all(len(i) == 10 for i, _ in top)
    assert rec.text_of("B0000223UV").startswith("Gorilla Original Gorilla Glue")
    rows = cli_main(["-p", str(path), "-d", "Scientific-mm", f"--data_path={SHARED}", "--history", "B00O47ILVA",
                     "-k", "3"])
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 6 and rec.text_of(rows[0][0])[:40] in out
