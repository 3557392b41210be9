"""Inference API: recommend from original ids, unseen/new items, export + exact retrieve-then-rerank,
CLI, cold-start benchmark helpers, and one clear error per kind of bad input."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import time
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
from recbole.data import data_preparation

from missrec_recbole.data import MISSRecDataset
from missrec_recbole.inference import (CheckpointMismatchError, DuplicateItemError, EmptyHistoryError,
                                       ExportedIndex, ExportError, FeatureDimError, FeatureError, InferenceError,
                                       MISSRecPredictor, TransductiveModeError, UnknownItemError)
from missrec_recbole.cli import recommend as cli_run
from missrec_recbole.inference.cli import main as cli_main
from missrec_recbole.model import MISSRec
from missrec_recbole.quick_start import build_config
from missrec_recbole.trainer import CheckpointError, MISSRecTrainer, save_pretrained
from tests.conftest import SHARED, tiny_overrides, write_dataset

ROOT = Path(__file__).resolve().parents[1]
DIM = 16


def _write_text(folder: Path, name: str, n_items: int):
    with open(folder / f"{name}.text", "w", encoding="utf-8") as handle:
        handle.write("item_id:token\ttext:token_seq\n")
        handle.writelines(f"ITEM{i}\tGadget number {i}, very useful.\n" for i in range(n_items))


def _config(root, name="Tiny", **extra):
    return build_config(name, config_dict=tiny_overrides(data_path=str(root), checkpoint_dir=str(root / "saved"),
                                                         **extra))


def _train(root, name="Tiny", **extra) -> str:
    """Train briefly and return RecBole's best-model checkpoint (what `quick_start.finetune` writes)."""
    config = _config(root, name, epochs=1, **extra)
    dataset = MISSRecDataset(config)
    train, valid, _ = data_preparation(config, dataset)
    torch.manual_seed(0)
    trainer = MISSRecTrainer(config, MISSRec(config, dataset))
    trainer.fit(train, valid, saved=True)
    return trainer.saved_model_file


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny (40 items, ITEM5 never in any .inter file, images missing for 3 and 7) + trained checkpoints."""
    root = tmp_path_factory.mktemp("inference")
    folder = write_dataset(root, dim=DIM)
    _write_text(folder, "Tiny", 40)
    return {"root": root, "inductive": _train(root, mode="inductive"),
            "transductive": _train(root, mode="transductive")}


def _untrained_checkpoint(root, name, mode) -> str:
    """A best-model checkpoint in the trainer's format (checkpoint.save_trained's keys) for random weights:
    exporting and retrieval must be exact whatever the weights, so the export test skips training."""
    from missrec_recbole.compat import plain
    from missrec_recbole.files import atomic_torch_save

    config = _config(root, name, mode=mode)
    torch.manual_seed(1)
    model = MISSRec(config, MISSRecDataset(config))
    with torch.no_grad():  # initialisation std 0.02 makes every vector alike; spread them out
        for parameter in model.parameters():
            parameter.mul_(25.0 if parameter.dim() > 1 else 1.0)
    model.refresh_interests()
    path = root / f"{name}-{mode}.pth"
    atomic_torch_save({"config": plain(config.final_config_dict), "epoch": 0, "state_dict": model.state_dict(),
                       "other_parameter": model.other_parameter()}, path)
    return str(path)


@pytest.fixture(scope="module")
def larger(tmp_path_factory):
    """A larger generated dataset for the export test (400 items, ~12% missing images)."""
    root = tmp_path_factory.mktemp("inference_large")
    missing = tuple(range(3, 400, 8))
    write_dataset(root, "Large", n_items=400, n_users=120, dim=DIM, missing_image=missing, seed=3, seq_len=(5, 12))
    return {"root": root, **{mode: _untrained_checkpoint(root, "Large", mode) for mode in ("inductive",
                                                                                         "transductive")}}


def _load(tiny, mode="inductive", **kwargs):
    return MISSRecPredictor.load(tiny[mode], "Tiny", data_path=tiny["root"], **kwargs)


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


# ----------------------------------------------------------------------------- bad input
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


def test_checkpoint_dataset_mismatch_is_a_clear_error(tiny, tmp_path):
    write_dataset(tiny["root"], "Other", n_items=50, dim=DIM, seed=5)
    with pytest.raises(CheckpointMismatchError, match="trained on dataset 'Tiny', not 'Other'"):
        MISSRecPredictor.load(tiny["inductive"], "Other", data_path=tiny["root"])
    # same name, other items (the dataset changed since training)
    write_dataset(tmp_path, "Tiny", n_items=50, dim=DIM, seed=5)
    with pytest.raises(CheckpointMismatchError, match="ID embedding has 40 rows.*has 50"):
        MISSRecPredictor.load(tiny["transductive"], "Tiny", data_path=tmp_path)
    with pytest.raises(CheckpointMismatchError, match="interest map covers 40 items.*has 50"):
        MISSRecPredictor.load(tiny["inductive"], "Tiny", data_path=tmp_path)
    # other feature dims
    write_dataset(tmp_path / "narrow", "Tiny", dim=DIM // 2)
    with pytest.raises(CheckpointMismatchError, match=r"trained with text_dim=16 but this run has text_dim=8; the "
                                                      r"dataset's feature files give this width"):
        MISSRecPredictor.load(tiny["inductive"], "Tiny", data_path=tmp_path / "narrow")
    # a missing dataset stays a dataset error
    from missrec_recbole.data import DatasetFormatError
    with pytest.raises(DatasetFormatError, match="dataset folder not found"):
        MISSRecPredictor.load(tiny["inductive"], "Tiny", data_path=tmp_path / "nowhere")
    # a configuration that contradicts the checkpoint
    with pytest.raises(CheckpointMismatchError, match="hidden_size=32 but this run has hidden_size=64"):
        MISSRecPredictor.load(tiny["inductive"], "Tiny", data_path=tiny["root"], config_dict={"hidden_size": 64})
    with pytest.raises(CheckpointMismatchError, match="mode='inductive' but this run has mode='transductive'"):
        MISSRecPredictor.load(tiny["inductive"], "Tiny", data_path=tiny["root"], config_dict={"mode": "transductive"})
    assert issubclass(CheckpointMismatchError, CheckpointError)
    with pytest.raises(CheckpointError, match="checkpoint file not found"):
        MISSRecPredictor.load(tmp_path / "none.pth", "Tiny", data_path=tiny["root"])


def test_pretrained_checkpoint_is_used_zero_shot_on_another_dataset(tiny, tmp_path):
    rec = _load(tiny)
    path = save_pretrained(rec.model, rec.config, tmp_path / "pretrained.pth", epoch=1)
    write_dataset(tmp_path, "Fresh", n_items=30, dim=DIM, seed=9)
    other = MISSRecPredictor.load(path, "Fresh", data_path=tmp_path)
    assert other.model.has_interest_map and other.n_items == 30  # interests computed on load; ITEM5 unseen
    assert len(other.recommend(["ITEM1", "ITEM2"], k=5)) == 5


def test_every_checkpoint_kind_goes_through_the_one_loader(tiny, tmp_path):
    """Pre-trained, trained and resume files are told apart by the loader; a resume file also serves as a trained
    model (it holds every weight and the interest map), another model's checkpoint is refused by name."""
    from missrec_recbole.trainer import Checkpoint
    rec = _load(tiny)
    pretrained = save_pretrained(rec.model, rec.config, tmp_path / "pretrained.pth", epoch=1)
    resume = tiny["inductive"][: -len(".pth")] + "-resume.pth"
    kinds = {Checkpoint.read(path).kind for path in (pretrained, tiny["inductive"], resume)}
    assert kinds == {"pretrained", "trained", "resume"}
    from_resume = MISSRecPredictor.load(resume, "Tiny", data_path=tiny["root"])
    assert from_resume.recommend(["ITEM1", "ITEM2"], k=5) == rec.recommend(["ITEM1", "ITEM2"], k=5)
    content = torch.load(pretrained, weights_only=True)
    content["config"]["model"] = "UniSRec"
    torch.save(content, tmp_path / "unisrec.pth")
    with pytest.raises(CheckpointMismatchError, match="a UniSRec checkpoint; the predictor serves MISSRec"):
        MISSRecPredictor.load(tmp_path / "unisrec.pth", "Tiny", data_path=tiny["root"])


# ----------------------------------------------------------------------------- export
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


# ----------------------------------------------------------------------------- CLI
def test_cli_prints_a_table_with_text(tiny, capsys):
    rows = cli_main(["-p", tiny["inductive"], "-d", "Tiny", f"--data_path={tiny['root']}",
                     "--history", "ITEM1,ITEM2", "-k", "4"])
    out = capsys.readouterr().out
    assert len(rows) == 4
    lines = out.strip().splitlines()
    assert lines[1].split() == ["rank", "item", "id", "score", "text"]
    assert lines[3].split()[:2] == ["1", rows[0][0]] and f"Gadget number {rows[0][0][4:]}" in lines[3]
    assert cli_run(["-p", tiny["inductive"], "-d", "Tiny", f"--data_path={tiny['root']}",
                    "--history", "ITEM1,NOPE"]) == 1
    assert "error: unknown item id(s): 'NOPE'" in capsys.readouterr().err
    assert cli_run(["-p", tiny["transductive"], "-d", "Tiny", f"--data_path={tiny['root']}", "--history", "ITEM5"]) == 1
    assert "allow_feature_only" in capsys.readouterr().err
    assert cli_run(["-p", tiny["transductive"], "-d", "Tiny", f"--data_path={tiny['root']}", "--history", "ITEM5",
                    "--allow_feature_only"]) == 0


def test_cli_history_file_takes_ids_with_commas(tiny, tmp_path, capsys):
    """--history_file: one id per line, so an id may hold a comma (here ITEM1 renamed 'ITEM,1' in a copy)."""
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(Path(tiny["root"]) / "Tiny", copy / "Tiny", ignore=shutil.ignore_patterns("saved"))
    item2index = copy / "Tiny" / "Tiny.item2index"
    item2index.write_text(item2index.read_text().replace("ITEM1\t", "ITEM,1\t", 1))
    history = tmp_path / "history.txt"
    history.write_text("ITEM,1\n\n  ITEM2 \n")  # blank lines and surrounding spaces are dropped
    common = ["-p", tiny["inductive"], "-d", "Tiny", "-k", "4"]
    from_file = cli_main(common + [f"--data_path={copy}", "--history_file", str(history)])
    assert "history: ITEM,1, ITEM2" in capsys.readouterr().out
    assert from_file == cli_main(common + [f"--data_path={tiny['root']}", "--history", "ITEM1,ITEM2"])


@pytest.mark.parametrize("arguments, message", [
    (["--history", "ITEM1", "--history_file", "h.txt"], "give the history either as --history ID1,ID2 or as "
                                                        "--history_file PATH (not both)"),
    ([], "give the history either as --history ID1,ID2 or as --history_file PATH (neither was given)"),
    (["--history_file", "missing.txt"], "--history_file missing.txt: file not found"),
    (["--history_file", "empty.txt"], "--history_file empty.txt: holds no item id"),
])
def test_cli_history_errors_come_before_the_checkpoint(tmp_path, monkeypatch, capsys, arguments, message):
    monkeypatch.chdir(tmp_path)
    Path("h.txt").write_text("ITEM1\n")
    Path("empty.txt").write_text("\n  \n")
    assert cli_run(["-p", "no-such-model.pth"] + arguments) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err


@pytest.mark.slow
def test_recommend_script(tiny, tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "recommend.py"), "-p", tiny["transductive"], "-d", "Tiny",
                          f"--data_path={tiny['root']}", "--history", "ITEM3,ITEM4", "-k", "3", "--json",
                          "--export", str(tmp_path / "exp")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads(out.stdout[:out.stdout.rindex("]") + 1])
    assert [r["rank"] for r in rows] == [1, 2, 3] and rows[0]["text"].startswith("Gadget number")
    assert (tmp_path / "exp" / "manifest.json").is_file()


# ----------------------------------------------------------------------------- cold-start benchmark helpers
def _cold_start_module():
    spec = importlib.util.spec_from_file_location("cold_start", ROOT / "benchmarks" / "cold_start.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cold_split_removes_every_interaction_of_cold_items(tiny, tmp_path):
    cold_start = _cold_start_module()
    folder = tiny["root"] / "Tiny"
    cold = cold_start.choose_cold_items(folder, "Tiny", 0.1, seed=1)
    assert len(cold) == 4 and 5 not in cold  # 10% of the 39 used items; ITEM5 is never used
    assert np.array_equal(cold, cold_start.choose_cold_items(folder, "Tiny", 0.1, seed=1))
    name, stats = cold_start.make_cold_dataset(folder, "Tiny", tmp_path, cold)
    for split in ("train", "valid", "test"):
        rows = cold_start.read_rows(tmp_path / name / f"{name}.{split}.inter")
        assert rows and not {int(i) for _, h, t in rows for i in [*h, t]} & set(cold.tolist())
        originals = cold_start.read_rows(folder / f"Tiny.{split}.inter")
        assert stats[split]["kept"] == len(rows) == sum(1 for _, h, t in originals
                                                        if t not in cold and set(h) - set(cold.tolist()))
    config = _config(tmp_path, name)
    dataset = MISSRecDataset(config)
    assert not set(dataset.field2id_token["item_id"][1:].astype(int)) & set(cold.tolist())
    assert (tmp_path / name / f"{name}.feat1CLS").resolve() == (folder / "Tiny.feat1CLS").resolve()


def test_cold_start_seeds_add_up_across_invocations(tmp_path, monkeypatch):
    """Finished seeds (same settings) are skipped and kept, seeds run elsewhere are merged in, and a file from other
    settings is refused instead of overwritten."""
    cold_start = _cold_start_module()
    ran = []

    def fake_run_seed(args, overrides, seed, work):
        ran.append(seed)
        metrics = {m: seed / 10000 for m in ("recall@10", "ndcg@10", "recall@50", "ndcg@50")}
        groups = {g: metrics for g in ("cold_targets", "warm_targets", "all")}
        return {"seed": seed, "cold_test_cases": 3, "timings": {"cold_train_seconds": 1.0},
                "results": {**{m: groups for m in ("cold_model", "warm_model", "feature_knn")},
                            "random": {"recall@10": 0.1}}}

    monkeypatch.setattr(cold_start, "run_seed", fake_run_seed)
    monkeypatch.chdir(tmp_path)  # main() moves into its work dir; restored after the test
    out = tmp_path / "cold.json"
    common = ["-d", "Tiny", "--data_path", str(tmp_path), "--work_dir", str(tmp_path / "work"), "--out", str(out),
              "--epochs=2"]
    cold_start.main(common + ["--seeds", "1"])
    cold_start.main(common + ["--seeds", "2"])  # e.g. another invocation beside the first
    result = cold_start.main(common + ["--seeds", "1", "2", "3"])
    assert ran == [1, 2, 3] and result["seeds"] == [1, 2, 3]
    assert json.loads(out.read_text())["summary"]["cold_model"]["all"]["recall@10"]["mean"] == pytest.approx(0.0002)
    with pytest.raises(SystemExit, match="other settings.*pass another --out"):
        cold_start.main(common[:-1] + ["--epochs=3", "--seeds", "4"])
    assert ran == [1, 2, 3]


def test_cold_start_models_survive_a_stop(tmp_path, monkeypatch):
    """Inside a seed, a trained model is read back instead of retrained, a stopped one continues from the resume file
    it left (which goes once the model is done), and a record from other settings is refused."""
    from missrec_recbole import quick_start

    cold_start = _cold_start_module()
    calls = []

    def fake_finetune(dataset, config_files=None, config_dict=None, resume=None, resume_file=None):
        calls.append((dataset, resume))
        if dataset == "Tiny" and resume is None:  # the warm model's first attempt is stopped after an epoch
            Path(resume_file).write_bytes(b"state")
            raise KeyboardInterrupt
        return {"test": {"ndcg@10": 0.5}, "model_file": str(saved / f"{dataset}.pth"), "resume_file": resume_file}

    monkeypatch.setattr(quick_start, "finetune", fake_finetune)
    saved = tmp_path / "saved"
    saved.mkdir()
    settings = {"checkpoint_dir": str(saved), "seed": 1}
    cold = cold_start.train_once(tmp_path, "cold", "Tiny-cold", [], settings)
    with pytest.raises(KeyboardInterrupt):
        cold_start.train_once(tmp_path, "warm", "Tiny", [], settings)
    (resume,) = tmp_path.glob("*-resume.pth")
    # the next invocation: the cold model is read back, the warm one continues from its resume file
    assert cold_start.train_once(tmp_path, "cold", "Tiny-cold", [], settings) == json.loads(json.dumps(cold))
    warm = cold_start.train_once(tmp_path, "warm", "Tiny", [], settings)
    assert calls == [("Tiny-cold", None), ("Tiny", None), ("Tiny", str(resume))]
    assert warm["test"] == {"ndcg@10": 0.5} and not resume.exists()
    with pytest.raises(SystemExit, match="other settings: pass another --work_dir"):
        cold_start.train_once(tmp_path, "warm", "Tiny", [], {**settings, "seed": 2})


@pytest.mark.slow
def test_cold_start_runs_end_to_end_with_widths_from_the_files(tiny, tmp_path, monkeypatch):
    """The whole protocol on Tiny, no --text_dim/--image_dim given (the script reads the cold items' features with
    the widths the files give, as every run does)."""
    cold_start = _cold_start_module()
    monkeypatch.chdir(tmp_path)
    result = cold_start.main(["-d", "Tiny", "--data_path", str(tiny["root"]), "--work_dir", str(tmp_path / "work"),
                              "--out", str(tmp_path / "cold.json"), "--seeds", "1", "--epochs=1", "--hidden_size=32",
                              "--inner_size=64", "--n_heads=2", "--train_batch_size=64", "--eval_batch_size=64",
                              "--dpc_k=3", "--faiss_threads=1", "--state=ERROR", "--topk=[5,10]"])
    run = result["per_seed"][0]
    assert run["n_cold_items"] == 4 and run["cold_test_cases"] > 0
    for model in ("cold_model", "warm_model", "feature_knn"):
        assert 0 <= run["results"][model]["cold_targets"]["recall@10"] <= 1


def test_cold_start_metrics_match_brute_force():
    cold_start = _cold_start_module()
    scores = np.array([[0.0, 0.5, 0.5, 0.9, 0.1], [0.0, 0.2, 0.3, 0.3, 0.4]])
    valid = np.array([False, True, True, True, True])
    metrics = cold_start.pessimistic_metrics(scores, np.array([1, 3]), valid, ks=(1, 3))
    # row 0: items scoring >= 0.5 are 1, 2, 3 -> rank 3; row 1: 2, 3, 4 -> rank 3
    assert metrics["recall@1"] == 0 and metrics["recall@3"] == 1
    assert metrics["ndcg@3"] == pytest.approx(1 / np.log2(4))


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


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["inductive", "transductive"])
def test_recbole_load_data_and_model_reads_our_checkpoints(tiny, mode):
    """RecBole's own loader (patched by compat, weights_only loading kept) gives back the trained model: the same
    weights, interest map and test metrics as the checkpoint's own run."""
    from recbole.quick_start import load_data_and_model

    from missrec_recbole import compat
    from missrec_recbole.quick_start import load_data_and_model as ours

    assert load_data_and_model is compat.load_data_and_model
    config, model, dataset, _, _, test = load_data_and_model(tiny[mode])
    saved = torch.load(tiny[mode], map_location="cpu", weights_only=True)
    assert type(model) is MISSRec and config["mode"] == mode and model.n_items == dataset.item_num
    for key, value in saved["state_dict"].items():
        assert torch.equal(model.state_dict()[key], value), key
    assert all(torch.equal(model.other_parameter()[key], value) for key, value in saved["other_parameter"].items())
    again = ours(tiny[mode])[1]
    first = MISSRecTrainer(config, model).evaluate(test, load_best_model=False)
    assert first == MISSRecTrainer(config, again).evaluate(test, load_best_model=False)
    other = "transductive" if mode == "inductive" else "inductive"  # every weight is loaded: the mode must match
    with pytest.raises(CheckpointMismatchError, match=f"mode='{mode}' but this run has mode='{other}'"):
        ours(tiny[mode], config_dict={"mode": other})


# ----------------------------------------------------------------------------- catalogue scale
def _count_full_computations(model, monkeypatch) -> list:
    """Every computation of all items' vectors (not served from the cache) is recorded."""
    calls = []
    original = model._candidate_tokens

    def counting(items):
        calls.append(len(items))
        return original(items)

    monkeypatch.setattr(model, "_candidate_tokens", counting)
    return calls


def test_item_vectors_are_computed_once_and_give_the_uncached_recommendations(tiny, monkeypatch):
    rec = _load(tiny)
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
