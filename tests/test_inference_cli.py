"""The recommend CLI and recommend.py: the printed table, history files, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from missrec_recbole.cli import recommend as cli_run
from missrec_recbole.inference.cli import main as cli_main
from tests.inference_helpers import ROOT


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
