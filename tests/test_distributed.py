"""Multi-process data parallelism (torchrun, gloo): gradients really synchronise.

2 processes x batch B must give the same parameters as 1 process x batch 2B. The workers use SGD:
with Adam, parameters whose true gradient is exactly zero (e.g. attention key biases, to which
softmax is invariant) step by ±lr on float noise, so any two summation orders differ by ~lr there.
"""

import os
import subprocess
from pathlib import Path

import pytest
import torch

from missrec_recbole.trainer import distributed
from tests.conftest import tiny_overrides, write_dataset

pytestmark = pytest.mark.slow  # trains in subprocesses (quick tier: -m "not slow")

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "ddp_worker.py"


def _torchrun(nproc: int, *args) -> subprocess.CompletedProcess:
    command = [*distributed.torchrun_command(nproc), *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def even_dataset(tmp_path_factory):
    """30 users and an even number of training rows: both processes get equal halves of every batch."""
    root = tmp_path_factory.mktemp("ddp-data")
    folder = write_dataset(root)
    train = folder / "Tiny.train.inter"
    lines = train.read_text().splitlines(keepends=True)
    if (len(lines) - 1) % 2:
        train.write_text("".join(lines[:-1]))
    return root


@pytest.fixture(scope="module")
def runs(even_dataset, tmp_path_factory):
    out = {}
    for nproc in (1, 2):
        folder = tmp_path_factory.mktemp(f"ddp-{nproc}")
        _torchrun(nproc, WORKER, folder, even_dataset, "finetune", 2, 32)
        out[nproc] = [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(nproc)]
    return out


def test_two_processes_equal_one_process_with_double_batch(runs):
    (single,), (rank0, rank1) = runs[1], runs[2]
    assert single["world_size"] == 1 and rank0["world_size"] == 2
    moved = max((single["params"][n] - single["initial"][n]).abs().max().item() for n in single["params"])
    assert moved > 1e-2  # the comparison below is not vacuous
    for name, value in single["params"].items():
        assert torch.equal(rank0["params"][name], rank1["params"][name]), name
        assert torch.allclose(rank0["params"][name], value, atol=1e-5, rtol=0), name


def test_interest_map_identical_on_all_ranks(runs):
    (single,), (rank0, rank1) = runs[1], runs[2]
    for key, value in rank0["interest_map"].items():
        assert torch.equal(value, rank1["interest_map"][key]), key
        assert torch.equal(value, single["interest_map"][key]), key


def test_metrics_are_reduced_over_ranks(runs):
    """Each rank scores half of the users; the averaged metrics equal single-process evaluation
    (up to RecBole rounding every rank's metrics to 4 decimals before averaging)."""
    (single,), (rank0, rank1) = runs[1], runs[2]
    assert rank0["valid"] == rank1["valid"]
    for metric, value in single["valid"].items():
        assert abs(rank0["valid"][metric] - value) <= 1e-4, metric
    assert rank0["trainer_file"] == rank1["trainer_file"]


def test_torchrun_pretraining_command(even_dataset, tmp_path):
    """The README's command: only rank 0 writes checkpoints and prints them."""
    saved = tmp_path / "saved"
    overrides = tiny_overrides(data_path=str(even_dataset), checkpoint_dir=str(saved), epochs=2, save_step=1,
                               mode="inductive", train_batch_size=32)
    args = [f"--{key}={value}" for key, value in overrides.items() if value is not None]
    done = _torchrun(2, ROOT / "run_missrec.py", "--stage=pretrain", "-d", "Tiny",
                     *[a.replace(" ", "") for a in args])
    printed = [line for line in done.stdout.splitlines() if line.endswith(".pth")]
    assert [Path(p).name for p in printed] == ["MISSRec-Tiny-inductive-epoch1.pth", "MISSRec-Tiny-inductive-epoch2.pth"]
    assert sorted(p.name for p in saved.glob("*epoch*.pth")) == [Path(p).name for p in printed]
    assert len(list(saved.glob("*-resume.pth"))) == 1
