"""`python -m missrec_recbole.tools.from_recbole`: a RecBole atomic dataset -> MISSRec atomic files with item texts."""

from __future__ import annotations

import pytest

from missrec_recbole.cli import missrec
from missrec_recbole.command import run_command
from missrec_recbole.data import validate_dataset
from missrec_recbole.tools.amazon import RawDataError
from missrec_recbole.tools.from_recbole import convert_recbole, main, recbole_example
from missrec_recbole.tools.prepare import prepare_dataset

INTER = """user_id:token\titem_id:token\trating:float\ttimestamp:float
u1\tA\t5\t30
u1\tB\t4\t10
u1\tC\t3\t20
u1\tB\t1\t40
u1\tD\t2\t50
u2\tC\t5\t1
u2\tA\t5\t2
u2\tD\t5\t2
u3\tA\t1\t7
u3\tE\t1\t8
u3\tB\t1\t9
u3\tD\t1\t10
"""
ITEM = """item_id:token\ttitle:token_seq\tyear:token\tprice:float
A\tRed pen\t2001\t1.5
B\tBlue &amp; green stapler\t\t2.0
C\tDesk lamp.\t1999\t9.0
D\tPaper\t2003\t3.0
"""


def _source(root, inter=INTER, item=ITEM, name="Shop"):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / f"{name}.inter").write_text(inter, encoding="utf-8")
    (folder / f"{name}.item").write_text(item, encoding="utf-8")
    return folder


def _rows(path):
    return [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()[1:]]


def _ids(path):
    return [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]


def test_order_dedup_texts_and_leave_one_out(tmp_path):
    stats = convert_recbole(_source(tmp_path / "src"), tmp_path / "out" / "Shop", kcore=1)
    out = tmp_path / "out" / "Shop"
    # E has no item row: its interaction is dropped; u1's second B (t=40) duplicates the first (t=10)
    assert (stats.duplicates, stats.items_without_text, stats.users, stats.items) == (1, 1, 3, 4)
    assert _ids(out / "Shop.user2index") == [["u1", "0"], ["u2", "1"], ["u3", "2"]]
    # items numbered by first appearance; u1 by time: B C A D; u2: C, then A and D tie at t=2 (by id: A first)
    assert _ids(out / "Shop.item2index") == [["B", "0"], ["C", "1"], ["A", "2"], ["D", "3"]]
    assert _rows(out / "Shop.train.inter") == [["0", "0", "1"]]
    assert _rows(out / "Shop.valid.inter") == [["0", "0 1", "2"], ["1", "1", "2"], ["2", "2", "0"]]
    assert _rows(out / "Shop.test.inter") == [["0", "0 1 2", "3"], ["1", "1 2", "3"], ["2", "2 0", "3"]]
    # default text fields: the token and token_seq ones (not the float price); entities unescaped, empty parts left out
    assert dict(_rows(out / "Shop.text")) == {"A": "Red pen. 2001.", "B": "Blue & green stapler.",
                                              "C": "Desk lamp. 1999.", "D": "Paper. 2003."}
    assert not (out / "Shop.images").exists()


def test_chosen_fields_names_and_items_without_text(tmp_path):
    source = _source(tmp_path / "src", INTER.replace("user_id:token", "uid:token").replace("timestamp", "t"))
    convert_recbole(source, tmp_path / "out" / "S", name="Other", text_fields=["title"], user_field="uid",
                    time_field="t", kcore=1, keep_items_without_text=True)
    texts = dict(_rows(tmp_path / "out" / "S" / "Other.text"))
    assert texts["A"] == "Red pen." and texts["E"] == ""  # kept with an empty text (an all-zero feature row)


@pytest.mark.parametrize("inter, item, kwargs, message", [
    (INTER.replace("timestamp:float", "time:float"), ITEM, {}, "no field 'timestamp'.*--time_field"),
    (INTER.replace("u2\tC\t5\t1", "u2\tC\t5\tsoon"), ITEM, {}, "line 7: timestamp 'soon' is not a number"),
    (INTER.replace("item_id:token", "item_id"), ITEM, {}, "header field 'item_id' has no type"),
    (INTER, ITEM, {"text_fields": ["genre"]}, "Shop.item: no field 'genre'.*--text_fields"),
    (INTER, ITEM.replace("title:token_seq\tyear:token", "title:float\tyear:float"), {}, "no token or token_seq"),
    (INTER, ITEM, {"kcore": 5}, "no user is left after 5-core"),
])
def test_bad_input_names_the_file_and_the_fix(tmp_path, inter, item, kwargs, message):
    with pytest.raises(RawDataError, match=message):
        convert_recbole(_source(tmp_path / "src", inter, item), tmp_path / "out" / "Shop", **{"kcore": 1, **kwargs})
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing half-written


def test_command_line(tmp_path, capsys):
    source = _source(tmp_path / "src")
    assert missrec(["from_recbole", str(source), "-o", str(tmp_path / "out" / "Shop"), "--kcore", "1"]) == 0
    assert "3 users, 4 items" in capsys.readouterr().out
    assert run_command(main, [str(tmp_path / "nowhere"), "-o", str(tmp_path / "o2" / "X")]) == 1
    assert "nowhere.inter: file not found" in capsys.readouterr().err
    # a path that does not exist is an error even when its last part names a dataset RecBole ships
    assert run_command(main, [str(tmp_path / "raw" / "ml-100k"), "-o", str(tmp_path / "o3" / "X")]) == 1
    assert "raw/ml-100k/ml-100k.inter: file not found" in capsys.readouterr().err


@pytest.mark.slow
def test_recbole_ml_100k_becomes_a_checked_text_dataset(tmp_path):
    """RecBole's bundled ml-100k: converted (5-core), then prepared with the offline text encoder and loaded."""
    assert recbole_example("ml-100k") is not None
    stats = convert_recbole("ml-100k", tmp_path / "raw" / "ml-100k")
    assert (stats.users, stats.items, stats.interactions) == (943, 1349, 99287)
    texts = dict(_rows(tmp_path / "raw" / "ml-100k" / "ml-100k.text"))
    assert texts["1"] == "Toy Story. 1995. Animation Children's Comedy."
    prepare_dataset(tmp_path / "raw" / "ml-100k", tmp_path / "data", log=lambda *_: None)
    from missrec_recbole.quick_start import build_config

    config = build_config("ml-100k", config_dict={"data_path": str(tmp_path / "data"), "state": "ERROR"})
    files = validate_dataset(config)
    assert config["modalities"] == ["text"] and config["text_dim"] == 256 and files is not None


@pytest.mark.parametrize("name", ["ml-100k", "Shop"])
def test_data_path_holds_for_every_dataset_name(tmp_path, name):
    """RecBole itself reads a dataset named ml-100k from its bundled copy whatever data_path says; ours does not."""
    from missrec_recbole.quick_start import build_config

    config = build_config(name, config_dict={"data_path": str(tmp_path), "state": "ERROR"})
    assert config["data_path"] == str(tmp_path / name)
