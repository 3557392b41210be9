"""Atomic file writes (missrec_recbole.files): checkpoints, results and progress files are never half-written."""

import json

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
