"""`python -m missrec_recbole.tools.prepare`: a read-only dataset folder -> a checked, writable copy with features."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from missrec_recbole.data import validate_dataset
from missrec_recbole.command import run_command
from missrec_recbole.tools.prepare import main, prepare_dataset, shared_image_rows
from tests.conftest import SHARED, write_dataset


def _text_only_source(root, name="Shop", n_items=30):
    folder = write_dataset(root, name, n_items=n_items, dim=8)
    for suffix in ("feat1CLS", "feat3CLS"):
        (folder / f"{name}.{suffix}").unlink()
    kinds = ["gel ink pen", "stapler", "printer paper", "desk lamp", "notebook"]
    with open(folder / f"{name}.text", "w", encoding="utf-8") as handle:
        handle.write("item_id:token\ttext:token_seq\n")
        handle.writelines(f"ITEM{i}\t{kinds[i % 5]} model {i}\n" for i in range(n_items) if i != 4)  # ITEM4: no text
    return folder


def _read_only(folder):
    for path in [*folder.iterdir(), folder]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def test_prepare_copies_computes_text_features_and_checks(tmp_path, capsys):
    source = _text_only_source(tmp_path / "src")
    _read_only(source)
    before = sorted(p.name for p in source.iterdir())
    assert main([str(source), "-o", str(tmp_path / "out")]) == 0
    out = tmp_path / "out" / "Shop"
    assert sorted(p.name for p in out.iterdir()) == sorted(before + ["Shop.feat1CLS"])
    assert sorted(p.name for p in source.iterdir()) == before  # the source is untouched
    assert all(os.access(p, os.W_OK) for p in out.iterdir())
    features = np.fromfile(out / "Shop.feat1CLS", dtype="<f4").reshape(30, -1)
    assert features.shape[1] == 256 and not features[4].any() and np.abs(features[[0, 1, 5]]).sum(1).all()
    printed = capsys.readouterr().out
    assert "Shop: checked: 30 items, text 256-d" in printed and "prepared" in printed
    assert not list((tmp_path / "out").glob(".tmp-*"))

    from missrec_recbole.quick_start import build_config  # runs with no dim or modality flag

    config = build_config("Shop", config_dict={"data_path": str(tmp_path / "out"), "state": "ERROR"})
    assert validate_dataset(config).n_items == 30
    assert config["modalities"] == ["text"] and config["text_dim"] == 256


def test_a_failed_prepare_leaves_nothing(tmp_path, capsys):
    source = _text_only_source(tmp_path / "src")
    train = source / "Shop.train.inter"
    train.write_text(train.read_text() + "99\t1 2\t777\n")  # out of range
    assert run_command(main, [str(source), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "Shop.train.inter: item index 777 is out of range" in err and "Traceback" not in err
    assert not list((tmp_path / "out").iterdir())
    assert run_command(main, [str(tmp_path / "nowhere"), "-o", str(tmp_path / "out")]) == 1
    assert "no nowhere.train.inter here" in capsys.readouterr().err


def test_image_rows_are_taken_for_shared_items_only(tmp_path):
    other = write_dataset(tmp_path / "other", "Other", n_items=10, dim=4)
    (other / "Other.item2index").write_text("".join(f"ITEM{i + 10}\t{i}\n" for i in range(10)))
    source = _text_only_source(tmp_path / "src")
    out = prepare_dataset(source, tmp_path / "out", image_features_from=other, log=lambda message: None)
    image = np.fromfile(out / "Shop.feat3CLS", dtype="<f4").reshape(30, 4)
    theirs = np.fromfile(other / "Other.feat3CLS", dtype="<f4").reshape(10, 4)
    np.testing.assert_array_equal(image[10:20], theirs)
    assert not image[:10].any() and not image[20:].any()
    rows, found = shared_image_rows(out / "Shop.item2index", other / "Other.item2index", other / "Other.feat3CLS")
    assert found == 10 and rows.shape == (30, 4)


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "Office").is_dir(), reason="../shared/datasets not present")
def test_prepare_office_from_the_shared_folder(tmp_path):
    out = prepare_dataset(SHARED / "Office", tmp_path, log=lambda message: None)
    assert (out / "Office.feat1CLS").stat().st_size == 2420 * 256 * 4
