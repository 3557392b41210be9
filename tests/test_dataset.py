"""MISSRecDataset: feature remap to RecBole ids, missing-modality mask, and one clear error per bad input."""

import numpy as np
import pytest

from missrec_recbole.data import DatasetFormatError, MISSRecDataset, validate_dataset
from tests.conftest import SHARED, tiny_overrides, write_dataset


def _raw(folder, name, suffix, dim=16):
    return np.fromfile(folder / f"{name}.{suffix}", dtype=np.float32).reshape(-1, dim)


def test_feature_rows_follow_recbole_internal_ids(tiny_dataset, tiny_config):
    dataset = MISSRecDataset(tiny_config())
    text = _raw(tiny_dataset / "Tiny", "Tiny", "feat1CLS")
    tokens = dataset.field2id_token["item_id"]
    assert tokens[0] == "[PAD]" and not dataset.features["text"][0].any()
    assert dataset.features["text"].shape == (dataset.item_num, 16)
    for internal in range(1, dataset.item_num):  # every item's own row, not row `internal`
        assert np.array_equal(dataset.features["text"][internal].numpy(), text[int(tokens[internal])])
    known = dataset.field2token_id["item_id"]["12"]
    assert np.array_equal(dataset.features["image"][known].numpy(), _raw(tiny_dataset / "Tiny", "Tiny", "feat3CLS")[12])


def test_missing_image_mask(tiny_config):
    dataset = MISSRecDataset(tiny_config())
    ids = dataset.field2token_id["item_id"]
    missing = {i for i in range(1, dataset.item_num) if not dataset.present["image"][i]}
    assert missing == {ids["3"], ids["7"]}
    assert dataset.present["text"][1:].all() and not dataset.present["text"][0]


@pytest.mark.parametrize("modalities", [["text"], ["image"]])
def test_single_modality(tiny_config, modalities):
    dataset = MISSRecDataset(tiny_config(modalities=modalities))
    assert list(dataset.features) == modalities


def _error(tiny_config, **extra):
    with pytest.raises(DatasetFormatError) as info:
        MISSRecDataset(tiny_config(**extra))
    return str(info.value)


def test_missing_file(tiny_dataset, tiny_config):
    (tiny_dataset / "Tiny" / "Tiny.feat3CLS").unlink()
    assert "Tiny.feat3CLS: feature file not found" in _error(tiny_config, modalities=["text", "image"])
    (tiny_dataset / "Tiny" / "Tiny.valid.inter").unlink()
    assert "Tiny.valid.inter: interaction file not found" in _error(tiny_config, modalities=["text"])


def test_dim_flag_must_agree_with_the_file(tiny_config):
    message = _error(tiny_config, text_dim=17)
    assert "Tiny.feat1CLS: holds 16-d features" in message and "text_dim=17" in message
    assert "Change --text_dim to 16, or leave it out" in message


def test_row_count_differs_from_item_count(tiny_dataset, tiny_config):
    path = tiny_dataset / "Tiny" / "Tiny.feat3CLS"
    path.write_bytes(path.read_bytes()[: 39 * 16 * 4])
    message = _error(tiny_config)
    assert "Tiny.feat3CLS: size 2496 bytes (39 rows of image_dim=16) is not 40 items x a whole number" in message


@pytest.mark.parametrize("dims", [(256, 512), (384, 384), (768, 512)])
def test_feature_widths_come_from_the_files(tmp_path, dims):
    """No --text_dim / --image_dim: each width is file size / (4 x items), and the model is built with it."""
    from missrec_recbole.model import MISSRec
    from missrec_recbole.quick_start import build_config

    folder = write_dataset(tmp_path, n_items=40, dim=dims[0])
    image = np.random.default_rng(1).normal(size=(40, dims[1])).astype(np.float32)
    image.tofile(folder / "Tiny.feat3CLS")
    overrides = tiny_overrides(data_path=str(tmp_path), checkpoint_dir=str(tmp_path / "saved"))
    del overrides["text_dim"], overrides["image_dim"]
    config = build_config("Tiny", config_dict=overrides)
    dataset = MISSRecDataset(config)
    assert (config["text_dim"], config["image_dim"], config["modalities"]) == (*dims, ["text", "image"])
    model = MISSRec(config, dataset)
    assert model.adapters["text"].in_features == dims[0] and model.adapters["image"].in_features == dims[1]


def test_text_only_dataset_runs_text_only(tmp_path):
    from missrec_recbole.quick_start import build_config

    folder = write_dataset(tmp_path, dim=24)
    (folder / "Tiny.feat3CLS").unlink()
    overrides = tiny_overrides(data_path=str(tmp_path), checkpoint_dir=str(tmp_path / "saved"))
    del overrides["text_dim"], overrides["image_dim"]
    config = build_config("Tiny", config_dict=overrides)
    assert list(MISSRecDataset(config).features) == ["text"]
    assert config["modalities"] == ["text"] and config["text_dim"] == 24
    (folder / "Tiny.feat1CLS").unlink()
    with pytest.raises(DatasetFormatError, match="no feature file .*Tiny.feat1CLS.*Tiny.feat3CLS"):
        validate_dataset(build_config("Tiny", config_dict=overrides))


def test_width_without_item2index_uses_the_largest_item_index(tmp_path):
    from missrec_recbole.quick_start import build_config

    folder = write_dataset(tmp_path, dim=8)
    (folder / "Tiny.item2index").unlink()
    overrides = tiny_overrides(data_path=str(tmp_path), text_dim=None, image_dim=None)
    config = build_config("Tiny", config_dict=overrides)
    validate_dataset(config)
    assert (config["text_dim"], config["image_dim"]) == (8, 8)


def test_nan_features(tiny_dataset, tiny_config):
    path = tiny_dataset / "Tiny" / "Tiny.feat1CLS"
    data = _raw(tiny_dataset / "Tiny", "Tiny", "feat1CLS")
    data[9, 2] = np.nan
    data.tofile(path)
    assert "Tiny.feat1CLS: 1 rows contain NaN/inf (first: item index 9)" in _error(tiny_config)


def test_item_index_out_of_range(tiny_dataset, tiny_config):
    path = tiny_dataset / "Tiny" / "Tiny.test.inter"
    path.write_text(path.read_text() + "999\t1 2\t40\n")
    assert "Tiny.test.inter: item index 40 is out of range (the dataset has 40 items)" in _error(tiny_config)


def test_non_integer_item(tiny_dataset, tiny_config):
    path = tiny_dataset / "Tiny" / "Tiny.train.inter"
    path.write_text(path.read_text() + "999\t1 B00X\t4\n")
    assert "Tiny.train.inter: item token 'B00X' is not a non-negative integer item index" in _error(tiny_config)


def test_malformed_header(tiny_dataset, tiny_config):
    path = tiny_dataset / "Tiny" / "Tiny.train.inter"
    lines = path.read_text().splitlines(True)
    path.write_text("user_id:token\titem_id_list:token\titem_id:token\n" + "".join(lines[1:]))
    assert "Tiny.train.inter: malformed header" in _error(tiny_config)


def test_history_longer_than_max_length(tiny_dataset, tiny_config):
    message = _error(tiny_config, MAX_ITEM_LIST_LENGTH=3)
    assert "Tiny.train.inter" in message and "longer than MAX_ITEM_LIST_LENGTH=3" in message


def test_bad_modalities(tiny_config):
    from missrec_recbole.config_schema import ConfigError

    with pytest.raises(ConfigError, match="option 'modalities': got \\['audio'\\], must be a non-empty subset"):
        tiny_config(modalities=["audio"])  # the option schema rejects it before the dataset is read


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/datasets not present")
def test_scientific_mm_loads():
    from missrec_recbole.quick_start import build_config

    dataset = MISSRecDataset(build_config("Scientific-mm", config_dict={"data_path": str(SHARED), "state": "ERROR"}))
    assert dataset.item_num == 1586 and len(dataset.inter_feat) == 10928 + 2928 + 2928
    raw = np.fromfile(SHARED / "Scientific-mm" / "Scientific-mm.feat3CLS", dtype=np.float32).reshape(-1, 512)
    internal = dataset.field2token_id["item_id"]["100"]
    assert np.array_equal(dataset.features["image"][internal].numpy(), raw[100])
