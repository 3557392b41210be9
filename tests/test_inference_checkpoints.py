"""Checkpoints the predictor and RecBole's loader read: mismatches, kinds, zero-shot use."""

from __future__ import annotations

import pytest
import torch

from missrec_recbole.inference import CheckpointMismatchError, MISSRecPredictor
from missrec_recbole.model import MISSRec
from missrec_recbole.trainer import CheckpointError, MISSRecTrainer, save_pretrained
from tests.conftest import write_dataset
from tests.inference_helpers import DIM, _load


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
