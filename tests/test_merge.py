"""Merging datasets for pre-training: disjoint items/users, features follow their items, domains stay apart."""

import numpy as np
import pandas as pd
import pytest

from missrec_recbole.data import DatasetFormatError
from missrec_recbole.tools.merge import main, merge_datasets
from missrec_recbole.model import UniSRec
from missrec_recbole.quick_start import build_config
from tests.conftest import tiny_overrides, write_dataset


def _read(folder, name, split):
    return pd.read_csv(folder / f"{name}.{split}.inter", sep="\t", dtype=str)


@pytest.fixture
def two_domains(tmp_path):
    write_dataset(tmp_path, "A", n_items=40, n_users=30, seed=1)
    write_dataset(tmp_path, "B", n_items=25, n_users=12, seed=2)
    (tmp_path / "B" / "B.item2index").unlink()  # item count then comes from the feature rows
    return tmp_path


def test_merge_keeps_domains_apart(two_domains, tmp_path):
    config = build_config("A", "pretrain", config_dict=tiny_overrides(data_path=str(two_domains)))
    out = merge_datasets(["A", "B"], two_domains, "A+B", tmp_path, config)
    text = np.fromfile(out / "A+B.feat1CLS", dtype=np.float32).reshape(-1, 16)
    image = np.fromfile(out / "A+B.feat3CLS", dtype=np.float32).reshape(-1, 16)
    assert len(text) == len(image) == 40 + 25
    for name, offset in (("A", 0), ("B", 40)):
        raw = np.fromfile(two_domains / name / f"{name}.feat1CLS", dtype=np.float32).reshape(-1, 16)
        assert np.array_equal(text[offset:offset + len(raw)], raw)
    assert not image[[3, 7, 43, 47]].any()  # missing images stay missing, at their shifted rows
    for split in ("train", "valid", "test"):
        merged = _read(out, "A+B", split)
        originals = [_read(two_domains / n, n, split) for n in ("A", "B")]
        assert len(merged) == sum(len(o) for o in originals)
        for _, row in merged.iterrows():
            items = [int(i) for i in row["item_id_list:token_seq"].split()] + [int(row["item_id:token"])]
            in_a = [i < 40 for i in items]
            assert all(in_a) or not any(in_a)  # no sequence mixes domains
            assert (int(row["user_id:token"]) < 30) == in_a[0]
        shifted = originals[1]["item_id:token"].astype(int) + 40
        assert merged["item_id:token"].astype(int).iloc[len(originals[0]):].tolist() == shifted.tolist()
    item_map = pd.read_csv(out / "A+B.item2index", sep="\t", header=None)
    assert len(item_map) == 65 and item_map[1].tolist() == list(range(65))
    assert not list(tmp_path.glob(".tmp-*"))


def test_merge_for_a_text_only_model(two_domains, tmp_path):
    """UniSRec's config has no image_dim: merging for its pre-training reads and writes text only."""
    overrides = {k: v for k, v in tiny_overrides(data_path=str(two_domains)).items() if k != "image_dim"}
    config = build_config("A", "pretrain", config_dict=overrides, model_class=UniSRec)
    out = merge_datasets(["A", "B"], two_domains, "A+B", tmp_path, config)
    assert (out / "A+B.feat1CLS").stat().st_size == (40 + 25) * 16 * 4
    assert not (out / "A+B.feat3CLS").exists()


def test_merge_rejects_bad_input_without_output(two_domains, tmp_path):
    (two_domains / "B" / "B.feat3CLS").write_bytes(b"\0" * 10)
    config = build_config("A", "pretrain", config_dict=tiny_overrides(data_path=str(two_domains)))
    with pytest.raises(DatasetFormatError, match="B.feat3CLS"):
        merge_datasets(["A", "B"], two_domains, "A+B", tmp_path / "out", config)
    assert not (tmp_path / "out" / "A+B").exists() and not list((tmp_path / "out").glob(".tmp-*"))


def test_merge_command_line(two_domains, capsys):
    main(["A", "B", "-o", "AB", f"--data_path={two_domains}", "--text_dim=16", "--image_dim=16"])
    assert (two_domains / "AB" / "AB.train.inter").is_file() and "AB" in capsys.readouterr().out
