"""Atomic writes (missrec_recbole.files): checkpoints, results, progress files and datasets are never half-written."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from missrec_recbole import files


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "results.json"
    files.write_json(target, {"ndcg@10": np.float32(0.5)})
    assert json.loads(target.read_text()) == {"ndcg@10": 0.5}

    def fail_halfway(handle):
        handle.write(b'{"ndcg@10": ')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        files.atomic_write(target, fail_halfway)
    assert json.loads(target.read_text()) == {"ndcg@10": 0.5}  # the reader still sees the complete old file
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # and no temp file is left


def test_atomic_torch_save_loads_with_weights_only(tmp_path):
    target = tmp_path / "sub" / "model.pth"  # the folder is created
    files.atomic_torch_save({"weight": torch.ones(2), "epoch": 3}, target)
    loaded = torch.load(target, weights_only=True)
    assert loaded["epoch"] == 3 and torch.equal(loaded["weight"], torch.ones(2))
    assert [p.name for p in target.parent.iterdir()] == ["model.pth"]


def test_atomic_write_gives_the_mode_open_would(tmp_path):
    """Not the temp file's private 0o600: a result or image written by us is as readable as one written by open()."""
    (tmp_path / "plain").write_bytes(b"x")
    files.atomic_write(tmp_path / "atomic", lambda handle: handle.write(b"x"))
    assert (tmp_path / "atomic").stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777


def test_atomic_directory_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "D"
    (target / "images").mkdir(parents=True)
    (target / "images" / "a.jpg").write_bytes(b"x")
    (target / "D.feat1CLS").write_bytes(b"old")
    with pytest.raises(RuntimeError, match="interrupted"), files.atomic_directory(target) as tmp:
        (tmp / "D.feat1CLS").write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert (target / "D.feat1CLS").read_bytes() == b"old" and (target / "images" / "a.jpg").is_file()
    with files.atomic_directory(target, keep_subfolders=True) as tmp:
        (tmp / "D.feat3CLS").write_bytes(b"new")
    assert sorted(p.name for p in target.iterdir()) == ["D.feat3CLS", "images"]  # stale files gone, images kept
    with files.atomic_directory(target) as tmp:
        (tmp / "D.inter").write_bytes(b"")
    assert [p.name for p in target.iterdir()] == ["D.inter"]
    assert [p.name for p in tmp_path.iterdir()] == ["D"]  # no temp folders left


def test_atomic_directory_keeps_a_target_another_process_completed(tmp_path, monkeypatch):
    """keep_existing=True keeps the target (asked after the block); a lost rename race is settled by it too."""
    target = tmp_path / "D"
    target.mkdir()
    (target / "theirs").write_bytes(b"")
    with files.atomic_directory(target, keep_existing=lambda: True) as tmp:
        (tmp / "ours").write_bytes(b"")
    assert [p.name for p in target.iterdir()] == ["theirs"] and [p.name for p in tmp_path.iterdir()] == ["D"]

    real_replace = os.replace

    def another_process_wins(src, dst):  # their folder lands on target between our two renames
        if Path(dst) == target and Path(src).name.startswith(".tmp-D-"):
            target.mkdir()
            (target / "theirs2").write_bytes(b"")
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", another_process_wins)
    answers = iter([False, True])  # replace what is there; after the lost race, keep theirs
    with files.atomic_directory(target, keep_existing=lambda: next(answers)) as tmp:
        (tmp / "ours").write_bytes(b"")
    assert [p.name for p in target.iterdir()] == ["theirs2"] and [p.name for p in tmp_path.iterdir()] == ["D"]
    with pytest.raises(OSError), files.atomic_directory(target) as tmp:  # nobody to keep it: the error
        (tmp / "ours").write_bytes(b"")
