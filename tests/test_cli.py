"""The entry points: one ``missrec`` argparse with sub-commands, each imported only when it runs; the scripts
(``run_missrec.py``, ``recommend.py``) and ``python -m missrec_recbole.tools.NAME`` keep their names."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from missrec_recbole import cli

ROOT = Path(__file__).resolve().parents[1]
# modules a command brings in; `missrec --help` needs none of them
COMMAND_MODULES = ("missrec_recbole.tools", "missrec_recbole.bench", "missrec_recbole.train",
                   "missrec_recbole.quick_start", "missrec_recbole.inference", "missrec_recbole.model",
                   "missrec_recbole.trainer", "missrec_recbole.interests", "missrec_recbole.data", "recbole.quick_start",
                   "faiss")


def test_missrec_help_imports_no_command_module():
    code = f"""
import contextlib, io, json, sys
from missrec_recbole.cli import missrec
loaded = {{}}
for argv in (["--help"], ["inspect", "--help"]):
    with contextlib.redirect_stdout(io.StringIO()):
        assert missrec(argv) == 0
    loaded[argv[0]] = sorted(m for m in sys.modules if m.startswith({COMMAND_MODULES!r}))
print(json.dumps(loaded))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = json.loads(out.stdout.splitlines()[-1])
    assert loaded["--help"] == []
    assert "missrec_recbole.tools.inspect" in loaded["inspect"]  # a command imports its own module ...
    assert not [m for m in loaded["inspect"] if m.startswith(("missrec_recbole.tools.features", "missrec_recbole.bench",
                                                              "missrec_recbole.tools.demo", "missrec_recbole.train"))]


@pytest.fixture
def recorded(monkeypatch):
    """Every command's module replaced by one that records ``(argv, prog of the parser it got)``."""
    seen = []
    fake = types.ModuleType("fake_command")
    fake.main = lambda argv, parser: seen.append((argv, parser.prog if parser else None))
    monkeypatch.setitem(sys.modules, "fake_command", fake)
    monkeypatch.setattr(cli, "COMMANDS", {name: dataclasses.replace(command, module="fake_command")
                                          for name, command in cli.COMMANDS.items()})
    return seen


def test_missrec_dispatches(recorded, capsys):
    assert cli.missrec(["pretrain", "-d", "Demo-A"]) == 0
    assert cli.missrec(["inspect", "-d", "Demo-A", "--debug", "--text_dim=16"]) == 0
    assert cli.run_missrec(["recommend", "-p", "M.pth"]) == 0
    assert cli.run_missrec(["-d", "X"]) == 0
    assert cli.recommend(["-p", "M.pth"]) == 0
    assert recorded == [(["--stage=pretrain", "-d", "Demo-A"], "missrec pretrain"),
                        (["-d", "Demo-A", "--text_dim=16"], "missrec inspect"),  # --debug: run_command's
                        (["-p", "M.pth"], None), (["-d", "X"], None), (["-p", "M.pth"], None)]
    assert cli.missrec(["--help"]) == 0
    listing = capsys.readouterr().out
    assert all(re.search(rf"^    {name}\s", listing, re.M) for name in cli.COMMANDS), listing
    assert cli.missrec(["nonsense"]) == 2 and cli.missrec([]) == 2 and recorded[5:] == []
    assert "invalid choice: 'nonsense'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_offers_its_arguments(name, capsys):
    assert cli.missrec([name, "--help"]) == 0
    assert capsys.readouterr().out.startswith(f"usage: missrec {name} ")


def test_the_scripts_keep_their_names(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["run_missrec.py"])  # argparse names a standalone parser after sys.argv[0]
    assert cli.run_missrec(["--help"]) == 0 and capsys.readouterr().out.startswith("usage: run_missrec.py ")
    assert cli.run_missrec(["recommend", "--help"]) == 0 and capsys.readouterr().out.startswith("usage: recommend.py ")
    assert cli.recommend(["--help"]) == 0 and capsys.readouterr().out.startswith("usage: recommend.py ")
    assert cli.run_missrec(["--bogus"]) == 2
    assert "run_missrec.py: error: unrecognised argument '--bogus'" in capsys.readouterr().err
