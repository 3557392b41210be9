"""The package installs like any package: the props ship in the wheel, data_path defaults to ./dataset of the
current directory, and a wheel installed away from the checkout trains on the demo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from missrec_recbole import config as configuration
from missrec_recbole.model import MISSRec
from missrec_recbole.released import RELEASED

ROOT = Path(__file__).resolve().parents[1]
BUILD_FILES = ("setup.cfg", "pyproject.toml", "README.md")  # what setuptools reads besides the package


def test_props_live_inside_the_package():
    import missrec_recbole

    assert configuration.PROPS == Path(missrec_recbole.__file__).resolve().parent / "props"
    assert (configuration.PROPS / "common.yaml").is_file()


def test_default_data_path_is_dataset_of_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = configuration.build_config("Demo-D", model_class=MISSRec)
    assert Path(config["data_path"]) == tmp_path.resolve() / "dataset" / "Demo-D"


def _build_wheel(out: Path) -> Path:
    """The wheel of a copy of the checkout (pip builds in place: build/ and *.egg-info stay out of the checkout)."""
    source = out / "source"
    source.mkdir()
    for name in BUILD_FILES:
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "missrec_recbole", source / "missrec_recbole",
                    ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
                   check=True, capture_output=True, timeout=600)
    return next(out.glob("missrec_recbole-*.whl"))


def _clean_env() -> dict:
    """The environment without anything that puts the checkout on the path."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    return {**env, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_wheel_installs_and_trains_on_the_demo_away_from_the_checkout(tmp_path):
    wheel = _build_wheel(tmp_path)
    shipped = {Path(n).name for n in zipfile.ZipFile(wheel).namelist() if "/props/" in n}
    assert shipped == {p.name for p in configuration.PROPS.glob("*.yaml")}
    released = {Path(n).name for n in zipfile.ZipFile(wheel).namelist() if "/released/" in n}
    assert set(RELEASED.values()) <= released, "the released checkpoints must ship in the wheel (-p NAME)"
    # torch, RecBole and FAISS come from the system site-packages (no download); the wheel's own copy of the
    # package is installed into the venv and shadows the checkout's editable install (a meta-path finder that
    # comes after the venv's site-packages)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    python, missrec = venv / "bin" / "python", venv / "bin" / "missrec"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", str(wheel)],
                   check=True, capture_output=True, timeout=600)
    work = tmp_path / "work"
    work.mkdir()
    where = subprocess.run([str(python), "-c", "import missrec_recbole; print(missrec_recbole.__file__)"],
                           cwd=work, env=_clean_env(), capture_output=True, text=True, check=True)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout
    out = subprocess.run([str(missrec), "train", "-d", "Demo-D", "--epochs=1", "--hidden_size=32", "--inner_size=64",
                          "--n_heads=2", "--state=ERROR"], cwd=work, env=_clean_env(), capture_output=True,
                         text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Demo-D (transductive, from scratch), 1 epochs" in out.stdout
    assert (work / "dataset" / "Demo-D" / "Demo-D.train.inter").is_file()  # generated on first use, here
