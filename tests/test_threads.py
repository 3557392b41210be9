"""Two threads give the same numbers every time: no training step depends on how the threads meet."""

import pytest
import torch
from recbole.data import data_preparation

from missrec_recbole.data import MISSRecDataset
from missrec_recbole.model import MISSRec, UniSRec
from missrec_recbole.model.base import take_rows
from missrec_recbole.quick_start import build_config
from tests.conftest import assert_same_tensors, loss_and_grads, threads, tiny_overrides, write_dataset


def test_take_rows_gives_the_one_thread_index_gradients_with_two_threads():
    """``take_rows`` = ``x[index]`` with a backward pass that sums repeated rows in index order at any thread count:
    with one thread the same bits as advanced indexing, with two the same again, run after run (big enough for
    PyTorch's parallel path: advanced indexing's backward then adds with atomics, in no fixed order)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 300, generator=generator, requires_grad=True)
    index = torch.randint(0, 2000, (512, 50), generator=generator)
    index[:, 30:] = 0  # padding: one row repeated thousands of times, as in real batches
    upstream = torch.randn(512, 50, 300, generator=generator)

    def gradient(select):
        x.grad = None
        select(x, index).backward(upstream)
        return x.grad.clone()

    with threads(1):
        reference = gradient(lambda x, index: x[index])
        assert torch.equal(gradient(take_rows), reference)
    assert torch.equal(take_rows(x, index), x[index])
    with threads(2):
        assert all(torch.equal(gradient(take_rows), reference) for _ in range(5))


@pytest.mark.gpu
def test_take_rows_on_cuda_repeats_its_gradients():
    """On CUDA ``take_rows`` keeps advanced indexing, whose backward sorts the indices (index_add_ there would add
    with atomics): the same gradients every time, and the CPU's values."""
    x = torch.randn(2000, 300, generator=torch.Generator().manual_seed(0))
    index = torch.randint(0, 2000, (512, 50), generator=torch.Generator().manual_seed(1))
    index[:, 30:] = 0
    upstream = torch.randn(512, 50, 300, generator=torch.Generator().manual_seed(2))

    def gradient(device):
        leaf = x.to(device).requires_grad_()
        take_rows(leaf, index.to(device)).backward(upstream.to(device))
        return leaf.grad.cpu()

    on_gpu = gradient("cuda")
    assert all(torch.equal(gradient("cuda"), on_gpu) for _ in range(5))
    assert torch.allclose(on_gpu, gradient("cpu"), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_class, stage, extra", [
    (MISSRec, "finetune", {"item_adapter": "moe"}),  # transductive: the ID embedding too
    (MISSRec, "finetune", {"item_fusion": "stack", "mode": "inductive"}),
    (MISSRec, "pretrain", {"item_adapter": "moe"}),
    (UniSRec, "finetune", {}),
    (UniSRec, "pretrain", {}),
], ids=["missrec-moe", "missrec-stack", "missrec-pretrain", "unisrec", "unisrec-pretrain"])
def test_a_training_step_repeats_bit_for_bit_with_two_threads(tmp_path, model_class, stage, extra):
    """The same seed, batch and weights give the same loss and gradients at two threads, every time. Longer
    histories, one length bucket and a hidden size of 128 make the item-token gathers big enough for PyTorch's
    parallel paths (with advanced indexing in their place this failed)."""
    write_dataset(tmp_path, n_users=200, seq_len=(12, 20))
    config = build_config("Tiny", stage, model_class=model_class, config_dict=tiny_overrides(
        data_path=str(tmp_path), checkpoint_dir=str(tmp_path / "saved"), hidden_size=128, train_batch_size=256,
        length_buckets=1, **extra))
    dataset = MISSRecDataset(config)
    train, _, _ = data_preparation(config, dataset)
    torch.manual_seed(0)
    model = model_class(config, dataset)
    if hasattr(model, "refresh_interests"):
        model.refresh_interests()
    model.train()
    batch = next(iter(train))
    with threads(2):
        first_loss, first_grads = loss_and_grads(model, batch)
        for _ in range(3):
            loss, grads = loss_and_grads(model, batch)
            assert torch.equal(loss, first_loss)
            assert_same_tensors(grads, first_grads)


def test_a_fine_tuning_run_repeats_bit_for_bit_with_two_threads(tmp_path):
    """Two whole runs (interest refreshes, training, validation, test) at two threads, the same seed: the same
    weights to the last bit in the best checkpoint, and the same metrics."""
    from missrec_recbole.quick_start import finetune

    write_dataset(tmp_path, n_users=200, seq_len=(12, 20))

    def run(name):
        options = tiny_overrides(data_path=str(tmp_path), checkpoint_dir=str(tmp_path / name), hidden_size=128,
                                 train_batch_size=256, item_adapter="moe", epochs=2)
        with threads(2):
            result = finetune("Tiny", config_dict=options)
        weights = torch.load(result["model_file"], weights_only=True)["state_dict"]
        return weights, {split: dict(result[split]) for split in ("valid", "test")}

    (weights, metrics), (weights_again, metrics_again) = run("first"), run("second")
    assert metrics == metrics_again and metrics["valid"]["ndcg@10"] > 0
    assert_same_tensors(weights, weights_again)
