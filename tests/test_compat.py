"""Each RecBole 1.2.1 workaround: the failure without it, and that the package's fix removes it."""

import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from recbole.config import Config
from recbole.data.dataset import Dataset
from recbole.utils import FeatureType

from missrec_recbole import compat


def test_numpy_aliases(monkeypatch):
    for name in compat._NUMPY_ALIASES:
        monkeypatch.delattr(np, name, raising=False)
    with pytest.raises(AttributeError):
        Config.compatibility_settings(None)
    compat.restore_numpy_aliases()
    Config.compatibility_settings(None)  # what RecBole runs in every Config()


@pytest.mark.slow
def test_quick_start_imports_with_pinned_setuptools():
    code = "import missrec_recbole, recbole.quick_start; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]


def _fake_dataset(frame, types):
    return SimpleNamespace(feat_name_list=["inter_feat"], inter_feat=frame, field2type=types,
                           logger=SimpleNamespace(debug=lambda *a: None))


def test_fill_nan_really_fills():
    def frame():
        return pd.DataFrame({"user": [1.0, np.nan, 3.0], "rating": [1.0, np.nan, 3.0]})  # after remap

    types = {"user": FeatureType.TOKEN, "rating": FeatureType.FLOAT}
    broken = _fake_dataset(frame(), types)
    compat.ORIGINALS["fill_nan"](broken)
    assert broken.inter_feat["rating"].isna().any()  # pandas 3: the chained inplace fillna did nothing
    fixed = _fake_dataset(frame(), types)
    compat.fill_nan(fixed)
    assert fixed.inter_feat["rating"].tolist() == [1.0, 2.0, 3.0]
    assert fixed.inter_feat["user"].tolist() == [1, 0, 3]


def _remap_input():
    frame = pd.DataFrame({"item_id_list": [np.array(["7", "3"]), np.array(["3"]), np.array(["9", "7", "3"])],
                          "item_id": ["3", "9", "1"]})
    remap_list = [(frame, "item_id", FeatureType.TOKEN), (frame, "item_id_list", FeatureType.TOKEN_SEQ)]
    dataset = SimpleNamespace(field2id_token={}, field2token_id={})
    dataset._concat_remaped_tokens = lambda rl: Dataset._concat_remaped_tokens(dataset, rl)
    return dataset, frame, remap_list


def test_remap_of_token_seq_fields():
    dataset, _, remap_list = _remap_input()
    with pytest.raises(ValueError):
        compat.ORIGINALS["remap"](dataset, remap_list)
    dataset, frame, remap_list = _remap_input()
    compat.remap(dataset, remap_list)
    tokens = dataset.field2id_token["item_id"]
    assert [tokens[i] for i in frame["item_id"]] == ["3", "9", "1"]
    assert [[tokens[i] for i in seq] for seq in frame["item_id_list"]] == [["7", "3"], ["3"], ["9", "7", "3"]]


def _fake_trainer(tmp_path, tiny_config):
    model = torch.nn.Linear(3, 2)
    model.other_parameter = dict
    return SimpleNamespace(config=tiny_config(), cur_step=5, best_valid_score=np.float64(0.25), model=model,
                           optimizer=torch.optim.Adam(model.parameters()), saved_model_file=str(tmp_path / "m.pth"),
                           logger=SimpleNamespace(info=lambda *a: None))


def test_recbole_checkpoints_load_with_weights_only(tmp_path, tiny_config):
    """Fix 4: RecBole's stock Trainer writes MISSRecTrainer's best-model file (plain config, atomic); our trainer
    defines the method itself rather than relying on the global fix."""
    from recbole.trainer import Trainer

    from missrec_recbole.trainer import MISSRecTrainer

    trainer = _fake_trainer(tmp_path, tiny_config)
    compat.ORIGINALS["save_checkpoint"](trainer, 3, verbose=False)
    with pytest.raises(Exception, match="[Ww]eights only"):
        torch.load(trainer.saved_model_file, weights_only=True)
    assert Trainer._save_checkpoint is compat.save_checkpoint
    assert "_save_checkpoint" in vars(MISSRecTrainer) and MISSRecTrainer._save_checkpoint is not compat.save_checkpoint
    compat.save_checkpoint(trainer, 3, verbose=False)
    checkpoint = torch.load(trainer.saved_model_file, weights_only=True)
    assert checkpoint["epoch"] == 3 and checkpoint["config"]["model"] == "MISSRec"
    assert checkpoint["best_valid_score"] == 0.25
    assert torch.equal(checkpoint["state_dict"]["weight"], trainer.model.weight)
    assert not list(tmp_path.glob(".tmp-*"))  # atomic write leaves no temp file


def test_recbole_load_data_and_model_hands_the_file_to_ours_unread(monkeypatch):
    """Fix 9: RecBole's loader becomes ours, which reads the file once; compat itself reads nothing."""
    import missrec_recbole.quick_start as quick_start

    monkeypatch.setattr(torch, "load", lambda *a, **kw: pytest.fail("compat read the checkpoint itself"))
    monkeypatch.setattr(quick_start, "load_data_and_model", lambda path: ("ours", path))
    assert compat.load_data_and_model("model.pth") == ("ours", "model.pth")


@pytest.mark.slow
def test_anomaly_detection_switched_off():
    probe = "import torch, {}; import recbole.model.sequential_recommender; print(torch.is_anomaly_enabled())"
    plain = subprocess.run([sys.executable, "-c", probe.format("numpy")], capture_output=True, text=True, timeout=300)
    ours = subprocess.run([sys.executable, "-c", probe.format("missrec_recbole")], capture_output=True, text=True,
                          timeout=300)
    assert "True" in plain.stdout  # RecBole's sine.py switches it on
    assert ours.stdout.strip().endswith("False"), ours.stderr[-2000:]


def test_pre_split_dataset_loads(tmp_path, tiny_config):
    from missrec_recbole.data import MISSRecDataset

    dataset = MISSRecDataset(tiny_config())
    assert dataset.inter_num > 0 and dataset.item_num > 1


def test_benchmark_presets_lengths_per_row():
    def dataset():
        frame = pd.DataFrame({"item_id": [3, 9, 1], "item_id_list": [np.array([7, 3]), np.array([3]),
                                                                      np.array([9, 7, 3])]})
        fake = SimpleNamespace(config={"LIST_SUFFIX": "_list"}, inter_feat=frame, item_list_length_field="item_length",
                               item_id_list_field="item_id_list", set_field_property=lambda *a: None)
        return fake

    broken = dataset()
    compat.ORIGINALS["benchmark_presets"](broken)
    assert broken.inter_feat["item_length"].tolist() == [3, 3, 3]  # pandas 3: agg(len) is the column length
    fixed = dataset()
    compat.benchmark_presets(fixed)
    assert fixed.inter_feat["item_length"].tolist() == [2, 1, 3]


def test_ensure_dir_tolerates_a_concurrent_creator(tmp_path, monkeypatch):
    """Fix 6: another process creates the folder between RecBole's exists-check and makedirs."""
    import importlib

    existing = tmp_path / "log"
    existing.mkdir()
    monkeypatch.setattr(os.path, "exists", lambda path: False)  # the check ran before the other process
    with pytest.raises(FileExistsError):
        compat.ORIGINALS["ensure_dir"](str(existing))
    for name in compat._ENSURE_DIR_USERS:
        importlib.import_module(name).ensure_dir(str(existing))  # no error
    monkeypatch.undo()
    compat.ensure_dir(str(tmp_path / "a" / "b"))
    assert (tmp_path / "a" / "b").is_dir()


def _feat_loader(tmp_path):
    """A fake dataset whose ``_load_feat`` reads an .inter file with an empty ``token_seq`` cell."""
    path = tmp_path / "x.inter"
    path.write_text("user_id:token\titem_id_list:token_seq\titem_id:token\n1\t3 4\t5\n2\t\t6\n")
    config = {"field_separator": "\t", "seq_separator": " ", "encoding": "utf-8", "seq_len": None}
    fake = SimpleNamespace(config=config, field2source={}, field2type={}, field2seqlen={}, field2bucketnum={},
                           logger=SimpleNamespace(warning=lambda *a: None, debug=lambda *a: None),
                           _get_load_and_unload_col=lambda source: (None, None))
    return fake, str(path)


def test_load_feat_fills_empty_sequences(tmp_path):
    broken, path = _feat_loader(tmp_path)
    with pytest.raises(AttributeError, match="'float' object has no attribute 'split'"):
        compat.ORIGINALS["load_feat"](broken, path, "inter")  # pandas 3: the chained inplace fillna did nothing
    fixed, path = _feat_loader(tmp_path)
    frame = compat.load_feat(fixed, path, "inter")
    assert [list(seq) for seq in frame["item_id_list"]] == [["3", "4"], []]
    assert fixed.field2seqlen["item_id_list"] == 2
    assert Dataset._load_feat is compat.load_feat


def test_config_dict_strings_are_read_as_literals_not_executed(tmp_path):
    """Fix 8: RecBole eval()s every string of a config_dict; ours reads literals only."""
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').close() or 'x'"
    compat.ORIGINALS["convert_config_dict"](None, {"data_path": code})
    assert marker.exists()  # RecBole ran the string as Python
    marker.unlink()
    values = compat.convert_config_dict(None, {"data_path": code, "topk": "[5, 10]", "flag": "True", "lr": "1e-3",
                                               "name": "abc", "off": "false", "none": "None"})
    assert not marker.exists() and values == {"data_path": code, "topk": [5, 10], "flag": True, "lr": 0.001,
                                              "name": "abc", "off": False, "none": None}


@pytest.mark.slow
def test_recbole_metrics_import_sklearn_only_when_called():
    probe = ("import sys, {}; import recbole.evaluator.metrics as m; print('sklearn' in sys.modules); "
             "print(m.sk_auc([0, 0.5, 1], [0, 0.8, 1]), m.mean_absolute_error([1, 2], [2, 4]), "
             "m.mean_squared_error([1, 2], [2, 4])); import sklearn.metrics; print(sklearn.metrics.roc_auc_score)")
    plain = subprocess.run([sys.executable, "-c", probe.format("numpy")], capture_output=True, text=True, timeout=300)
    ours = subprocess.run([sys.executable, "-c", probe.format("missrec_recbole")], capture_output=True, text=True,
                          timeout=300)
    assert plain.returncode == 0 and ours.returncode == 0, ours.stderr[-2000:]
    plain_lines, our_lines = plain.stdout.splitlines(), ours.stdout.splitlines()
    assert plain_lines[0] == "True"  # RecBole's metrics module imports scikit-learn
    assert our_lines[0] == "False", ours.stdout
    assert our_lines[1] == plain_lines[1] == "0.65 1.5 2.5"  # the real scikit-learn functions on first call
    assert our_lines[2].startswith("<function roc_auc_score")  # the real module afterwards


def test_metrics_stand_in_is_removed_after_the_import(monkeypatch):
    for name in (compat.RECBOLE_METRICS, compat.SKLEARN_METRICS):
        monkeypatch.delitem(sys.modules, name, raising=False)
    seen = {}
    monkeypatch.setattr(compat.importlib, "import_module",
                        lambda name: seen.setdefault(name, sys.modules[compat.SKLEARN_METRICS]))
    compat.import_metrics_without_sklearn()
    assert compat.SKLEARN_METRICS not in sys.modules
    assert seen[compat.RECBOLE_METRICS].auc.__name__ == "auc"
