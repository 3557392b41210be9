"""Shared fixtures: tiny hand-made datasets in RecBole atomic format, configs for them, trained inference checkpoints,
gradient and tensor comparisons, a thread-count switch."""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import missrec_recbole  # noqa: F401  (applies the RecBole compatibility fixes)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
HEADER = "user_id:token\titem_id_list:token_seq\titem_id:token\n"


def benchmark_script(name: str):
    """``benchmarks/<name>.py`` imported as a module (the scripts are not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need CUDA: without it they are skipped with one clear reason (CI is CPU-only)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def write_dataset(root: Path, name: str = "Tiny", n_items: int = 40, n_users: int = 30, dim: int = 16,
                  missing_image=(3, 7), seed: int = 0, seq_len=(4, 9)) -> Path:
    """Write a small pre-split dataset; returns its folder. Item 5 is never used (not in RecBole's vocab)."""
    rng = np.random.default_rng(seed)
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    usable = [i for i in range(n_items) if i != 5]
    rows = {"train": [], "valid": [], "test": []}
    for user in range(n_users):
        seq = list(rng.choice(usable, size=rng.integers(*seq_len), replace=True))
        for t in range(1, len(seq) - 2):
            rows["train"].append((user, seq[:t], seq[t]))
        rows["valid"].append((user, seq[:-2], seq[-2]))
        rows["test"].append((user, seq[:-1], seq[-1]))
    for split, data in rows.items():
        with open(folder / f"{name}.{split}.inter", "w") as handle:
            handle.write(HEADER)
            for user, hist, target in data:
                handle.write(f"{user}\t{' '.join(map(str, hist))}\t{target}\n")
    text = rng.normal(size=(n_items, dim)).astype(np.float32)
    image = rng.normal(size=(n_items, dim)).astype(np.float32)
    image[list(missing_image)] = 0
    text.tofile(folder / f"{name}.feat1CLS")
    image.tofile(folder / f"{name}.feat3CLS")
    with open(folder / f"{name}.item2index", "w") as handle:
        handle.writelines(f"ITEM{i}\t{i}\n" for i in range(n_items))
    return folder


def tiny_overrides(dim: int = 16, **extra) -> dict:
    """Small, fast model settings for tests."""
    base = {"text_dim": dim, "image_dim": dim, "hidden_size": 32, "inner_size": 64, "n_heads": 2,
            "train_batch_size": 64, "eval_batch_size": 64, "epochs": 2, "stopping_step": 2,
            "checkpoint_dir": None, "dpc_k": 3, "topk": [5, 10], "faiss_threads": 1, "state": "ERROR", "seed": 7}
    base.update(extra)
    return base


@pytest.fixture
def tiny_dataset(tmp_path):
    write_dataset(tmp_path)
    return tmp_path


@pytest.fixture
def tiny_config(tiny_dataset, tmp_path):
    from missrec_recbole.quick_start import build_config

    def make(stage="finetune", **extra):
        overrides = tiny_overrides(data_path=str(tiny_dataset), checkpoint_dir=str(tmp_path / "saved"), **extra)
        return build_config("Tiny", stage, config_dict=overrides)

    return make


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Tiny (40 items, ITEM5 never in any .inter file, images missing for 3 and 7) + trained checkpoints.

    Session-scoped: the tests/test_inference_*.py modules share one training, as the single module they were split
    from did (the fixture was module-scoped there)."""
    from tests.inference_helpers import DIM, _train, _write_text

    root = tmp_path_factory.mktemp("inference")
    folder = write_dataset(root, dim=DIM)
    _write_text(folder, "Tiny", 40)
    return {"root": root, "inductive": _train(root, mode="inductive"),
            "transductive": _train(root, mode="transductive")}


def loss_and_grads(model, batch, seed=3):
    """Loss (summed parts) and parameter gradients of one training step on ``batch``, seeded."""
    model.zero_grad()
    torch.manual_seed(seed)
    loss = model.calculate_loss(batch)
    loss = sum(loss) if isinstance(loss, tuple) else loss  # pre-training returns its loss parts
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@contextlib.contextmanager
def threads(n: int):
    """PyTorch's intra-op thread count set to ``n`` for the block, then back to what it was."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def assert_same_tensors(first: dict, second: dict):
    """The same names and, for each, the same tensor bit for bit (the failure names the tensor)."""
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def assert_same_loss_and_grads(first, second):
    (loss_a, grads_a), (loss_b, grads_b) = first, second
    assert torch.allclose(loss_a, loss_b, atol=1e-6) and grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-6, rtol=1e-4), name
