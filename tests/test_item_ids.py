"""Original item ids in .inter files: with NAME.item2index, a dataset may name its items by their original ids
instead of their indices; the loader and the tools read both the same way, one kind per file."""

from __future__ import annotations

import numpy as np
import pytest

from missrec_recbole.data import DatasetFormatError, MISSRecDataset, validate_dataset
from missrec_recbole.data.dataset import dataset_item_ids
from missrec_recbole.quick_start import build_config
from tests.conftest import HEADER, tiny_overrides, write_dataset

SPLITS = ("train", "valid", "test")
# validate_dataset(...).fingerprint of write_dataset(root) before original ids were read: datasets written with
# indices (every existing one) must keep it, and so their resume checks and benchmark run hashes
INDEX_FINGERPRINT = "9049a2ae96e424ed"


def _item2index(folder, name):
    lines = (folder / f"{name}.item2index").read_text().split()
    return dict(zip(lines[1::2], lines[0::2]))  # index -> original id


def _with_original_ids(folder, name="Tiny", splits=SPLITS):
    """Rewrite ``splits`` of a dataset written with indices to name every item by its original id."""
    original = _item2index(folder, name)
    for split in splits:
        path = folder / f"{name}.{split}.inter"
        lines = path.read_text().splitlines()
        rows = [line.split("\t") for line in lines[1:]]
        path.write_text(lines[0] + "\n" + "".join(f"{user}\t{' '.join(original[i] for i in history.split())}"
                                                  f"\t{original[target]}\n" for user, history, target in rows))
    return folder


@pytest.fixture
def both(tmp_path):
    """The same generated dataset written with indices (``index``) and with original ids (``original``)."""
    roots = {kind: tmp_path / kind for kind in ("index", "original")}
    for root in roots.values():
        write_dataset(root)
    _with_original_ids(roots["original"] / "Tiny")
    return roots


def _config(root, **extra):
    return build_config("Tiny", config_dict=tiny_overrides(data_path=str(root), checkpoint_dir=str(root / "saved"),
                                                           **extra))


def _error(root) -> str:
    with pytest.raises(DatasetFormatError) as info:
        validate_dataset(_config(root))
    return str(info.value)


def test_original_ids_load_as_their_indices(both):
    assert "ITEM" in (both["original"] / "Tiny" / "Tiny.train.inter").read_text()
    index, original = (MISSRecDataset(_config(both[kind])) for kind in ("index", "original"))
    assert original.files.item_ids is not None and index.files.item_ids is None
    assert list(original.field2id_token["item_id"]) == list(index.field2id_token["item_id"])
    for field in ("item_id", "item_id_list", "user_id"):
        assert _column(original, field) == _column(index, field)
    for m in ("text", "image"):
        assert np.array_equal(original.features[m].numpy(), index.features[m].numpy())


def _column(dataset, field) -> list:
    """A column of the loaded interactions (RecBole's internal ids), histories as lists."""
    return [np.asarray(value).tolist() for value in dataset.inter_feat[field]]


def test_datasets_written_with_indices_read_as_before(both):
    files = validate_dataset(_config(both["index"]))
    assert files.fingerprint == INDEX_FINGERPRINT and files.item_ids is None
    assert validate_dataset(_config(both["original"])).fingerprint != INDEX_FINGERPRINT  # its own files


@pytest.mark.slow
def test_training_gives_identical_results_both_ways(both):
    from missrec_recbole.quick_start import finetune

    results = [finetune("Tiny", config_dict=tiny_overrides(data_path=str(both[kind]), epochs=2,
                                                           checkpoint_dir=str(both[kind] / "saved")))
               for kind in ("index", "original")]
    assert results[0]["valid"] == results[1]["valid"] and results[0]["test"] == results[1]["test"]


def _replace_token(path, line: int, old: str, new: str):
    lines = path.read_text().splitlines(True)
    assert old in lines[line - 1].split("\t")[1].split()
    user, history, target = lines[line - 1].rstrip("\n").split("\t")
    history = " ".join(new if token == old else token for token in history.split())
    lines[line - 1] = f"{user}\t{history}\t{target}\n"
    path.write_text("".join(lines))


def test_an_id_missing_from_item2index_names_file_line_and_id(both):
    path = both["original"] / "Tiny" / "Tiny.valid.inter"
    first = path.read_text().splitlines()[3].split("\t")[1].split()[0]
    _replace_token(path, 4, first, "B004756YJA")
    assert ("Tiny.valid.inter: item token 'B004756YJA' is not a non-negative integer item index nor an original id "
            "of Tiny.item2index, line 4") in _error(both["original"])


def test_one_file_uses_one_kind(both):
    path = both["original"] / "Tiny" / "Tiny.test.inter"
    first = path.read_text().splitlines()[2].split("\t")[1].split()[0]
    _replace_token(path, 3, first, first.removeprefix("ITEM"))
    message = _error(both["original"])
    assert f"Tiny.test.inter: mixes item indices ('{first.removeprefix('ITEM')}', line 3) and original ids of " \
           "Tiny.item2index ('ITEM" in message and "Write one kind per file" in message


def test_the_files_of_a_dataset_use_one_kind(both):
    _with_original_ids(both["index"] / "Tiny", splits=["train"])
    message = _error(both["index"])
    assert "Tiny.train.inter: holds original item ids, but Tiny.valid.inter holds item indices" in message


def test_the_command_line_gives_one_error_line(both, capsys):
    from missrec_recbole.cli import run_missrec as run

    path = both["original"] / "Tiny" / "Tiny.train.inter"
    path.write_text(path.read_text() + "99\tITEM1 NOPE\tITEM2\n")
    assert run(["-d", "Tiny", f"--data_path={both['original']}", "--epochs=1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "'NOPE'" in err and "Tiny.train.inter" in err


def _numeric_dataset(root, splits: dict) -> None:
    """Three items whose original ids are the integers 1, 2, 3 (index 0, 1, 2)."""
    folder = root / "Num"
    folder.mkdir(parents=True)
    (folder / "Num.item2index").write_text("1\t0\n2\t1\n3\t2\n")
    np.ones((3, 4), dtype="<f4").tofile(folder / "Num.feat1CLS")
    for split, row in splits.items():
        (folder / f"Num.{split}.inter").write_text(HEADER + row)


@pytest.mark.parametrize("valid, kind", [("0\t1 2\t3\n", "original"),  # id 3 is no index: every file holds ids
                                         ("0\t0 1\t2\n", "index")])     # index 0 is no id: every file holds indices
def test_integer_ids_that_read_either_way_follow_the_other_files(tmp_path, valid, kind):
    _numeric_dataset(tmp_path, {"train": "0\t1\t2\n", "valid": valid, "test": "0\t1 2\t1\n"})
    config = build_config("Num", config_dict=tiny_overrides(dim=4, data_path=str(tmp_path), image_dim=None,
                                                            modalities=["text"]))
    files = validate_dataset(config)
    assert (files.item_ids is not None) == (kind == "original")
    assert (dataset_item_ids(tmp_path / "Num", "Num") is not None) == (kind == "original")
    dataset = MISSRecDataset(config)
    first_target = _column(dataset, "item_id")[:1]  # internal id -> the item index (feature row) it stands for
    assert [int(t) for t in dataset.field2id_token["item_id"][first_target]] == [1 if kind == "original" else 2]


def test_tools_agree_both_ways(both, tmp_path, capsys):
    from missrec_recbole.bench.report import train_frequency
    from missrec_recbole.tools.inspect import inspect_dataset
    from missrec_recbole.tools.merge import merge_datasets
    from missrec_recbole.tools.prepare import prepare_dataset
    from missrec_recbole.tools.split_users import split_users

    reports = {kind: inspect_dataset(_config(root)) for kind, root in both.items()}
    assert {**reports["index"], "folder": ""} == {**reports["original"], "folder": ""}
    merged = {kind: merge_datasets(["Tiny"], root, "M", tmp_path / f"merged-{kind}", _config(root))
              for kind, root in both.items()}
    for path in merged["index"].iterdir():
        assert path.read_bytes() == (merged["original"] / path.name).read_bytes(), path.name
    frequency = {kind: train_frequency(root / "Tiny", "Tiny") for kind, root in both.items()}
    assert frequency["index"] == frequency["original"]
    prepared = prepare_dataset(both["original"] / "Tiny", tmp_path / "prepared", log=lambda _: None)
    assert validate_dataset(_config(prepared.parent)).item_ids is not None
    halves = {kind: split_users("Tiny", root, tmp_path / f"halves-{kind}", seed=3) for kind, root in both.items()}
    for half in ("pre", "eval"):
        loaded = [MISSRecDataset(build_config(halves[kind][half], config_dict=tiny_overrides(
            data_path=str(tmp_path / f"halves-{kind}")))) for kind in ("index", "original")]
        assert loaded[1].files.item_ids is not None
        assert _column(loaded[0], "item_id_list") == _column(loaded[1], "item_id_list")
