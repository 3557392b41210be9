"""Dataset inspection: statistics on a generated dataset, the loader's own errors on broken ones."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from missrec_recbole.data import DatasetFormatError, validate_dataset
from missrec_recbole.tools.demo import ensure_demo_dataset
from missrec_recbole.tools.inspect import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect")
    ensure_demo_dataset(root, ["Demo-A"])
    return root


@pytest.fixture
def broken(demo, tmp_path):
    shutil.copytree(demo / "Demo-A", tmp_path / "Demo-A")
    return tmp_path, tmp_path / "Demo-A"


def test_statistics_match_the_files(demo, capsys):
    assert main(["-d", "Demo-A", "--data_path", str(demo), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    folder = demo / "Demo-A"
    rows = {s: (folder / f"Demo-A.{s}.inter").read_text().splitlines()[1:] for s in ("train", "valid", "test")}
    n_items = len((folder / "Demo-A.item2index").read_text().splitlines())
    image = np.fromfile(folder / "Demo-A.feat3CLS", dtype="<f4").reshape(n_items, -1)
    lengths = [len(line.split("\t")[1].split()) + 1 for line in rows["test"]]  # demo histories are < 50
    assert report["users"] == len(rows["test"]) == report["users_in_user2index"]
    assert report["items"] == n_items and report["rows"] == {s: len(r) for s, r in rows.items()}
    assert report["interactions"] == sum(lengths)
    assert report["sequence_length"]["min"] == min(lengths) and report["sequence_length"]["max"] == max(lengths)
    missing = int((np.abs(image).sum(1) == 0).sum())
    assert report["modalities"]["image"]["missing"] == missing > 0 and report["modalities"]["text"]["missing"] == 0
    assert report["modalities"]["image"]["missing_share"] == pytest.approx(missing / n_items)
    norms = np.linalg.norm(image[np.abs(image).sum(1) > 0].astype(np.float64), axis=1)
    assert report["modalities"]["image"]["norm"]["mean"] == pytest.approx(norms.mean())
    assert report["items_with_text"] == n_items

    assert main(["-d", "Demo-A", "--data_path", str(demo)]) == 0
    text = capsys.readouterr().out
    assert "passes the loader's checks" in text and f"users         {len(rows['test'])}" in text
    assert f"image Demo-A.feat3CLS: dim 512, missing {missing} of {n_items} items" in text


def _corrupt(folder: Path, how: str) -> None:
    if how == "short feature file":
        path = folder / "Demo-A.feat3CLS"
        path.write_bytes(path.read_bytes()[:-512 * 4])
    elif how == "item out of range":
        path = folder / "Demo-A.test.inter"
        lines = path.read_text().splitlines()
        lines[1] = lines[1].rsplit("\t", 1)[0] + "\t99999"
        path.write_text("\n".join(lines) + "\n")
    elif how == "bad header":
        path = folder / "Demo-A.valid.inter"
        path.write_text("user\titems\ttarget\n" + "".join(path.read_text().splitlines(True)[1:]))
    elif how == "missing file":
        (folder / "Demo-A.train.inter").unlink()


@pytest.mark.parametrize("how, names", [("short feature file", "Demo-A.feat3CLS: size 2275328 bytes is not 1112 items"),
                                        ("item out of range", "Demo-A.test.inter: item index 99999"),
                                        ("bad header", "Demo-A.valid.inter: malformed header"),
                                        ("missing file", "Demo-A.train.inter: interaction file not found")])
def test_broken_dataset_gives_the_loaders_error(broken, how, names, capsys):
    root, folder = broken
    _corrupt(folder, how)
    assert main(["-d", "Demo-A", "--data_path", str(root)]) == 1
    err = capsys.readouterr().err
    from missrec_recbole.quick_start import build_config

    with pytest.raises(DatasetFormatError) as loader:  # exactly the loader's message
        validate_dataset(build_config("Demo-A", config_dict={"data_path": str(root)}))
    assert names in str(loader.value) and f"error: {loader.value}" in err


def test_options_and_missing_dataset(demo, tmp_path, capsys):
    assert main(["-d", "Demo-A", "--data_path", str(demo), "--text_dim=500"]) == 1
    assert "holds 512-d features" in capsys.readouterr().err
    assert main(["-d", "Demo-A", "--data_path", str(demo), "--modalities=[audio]"]) == 1
    assert "must be a non-empty subset of [text, image]" in capsys.readouterr().err
    assert main(["-d", "Demo-A", "--data_path", str(demo), "--modalities=[text]", "--json"]) == 0
    assert list(json.loads(capsys.readouterr().out)["modalities"]) == ["text"]
    assert main(["-d", "Nope", "--data_path", str(tmp_path)]) == 1
    assert "Nope: dataset folder not found" in capsys.readouterr().err


@pytest.mark.slow
def test_module_entry_point_exit_code(broken):
    root, folder = broken
    _corrupt(folder, "item out of range")
    done = subprocess.run([sys.executable, "-m", "missrec_recbole.tools.inspect", "-d", "Demo-A", "--data_path",
                           str(root)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Demo-A.test.inter: item index 99999 is out of range" in done.stderr
    assert done.stdout == ""


def test_load_option_builds_the_dataset(tiny_dataset, capsys):
    assert main(["-d", "Tiny", "--data_path", str(tiny_dataset), "--text_dim=16", "--image_dim=16", "--load"]) == 0
    out = capsys.readouterr().out
    assert "items         40 (39 used in interactions)" in out and "missing 2 of 40 items" in out
