"""MISSRecTrainer: evaluation numbers, tie rule, interest refresh, freezing, checkpoints."""

import math
import os

import pytest
import torch
from recbole.data import data_preparation
from recbole.evaluator import Collector, Evaluator

from missrec_recbole.config_schema import ConfigError
from missrec_recbole.data import MISSRecDataset
from missrec_recbole.evaluation import pessimistic_ties
from missrec_recbole.model import MISSRec
from missrec_recbole.trainer import (CheckpointError, MISSRecTrainer, load_pretrained,
                                     read_checkpoint, save_pretrained)
from tests.conftest import write_dataset


def _brute_force(scores, targets, k):
    """Recall@k and NDCG@k from the definitions: rank = 1 + #other items scoring >= the target."""
    recall = ndcg = 0.0
    for row, target in zip(scores.tolist(), targets):
        rank = 1 + sum(1 for j, s in enumerate(row) if j != target and s >= row[target])
        recall += rank <= k
        ndcg += 1 / math.log2(rank + 1) if rank <= k else 0.0
    return recall / len(targets), ndcg / len(targets)


def test_recbole_metrics_equal_brute_force(tiny_config):
    config = tiny_config(topk=[1, 3, 10])
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (40, 12), generator=generator).float()  # many ties
    scores[:, 0] = float("-inf")  # padding item
    targets = torch.randint(1, 12, (40,), generator=generator)
    scores[0] = torch.arange(12.0)
    targets[0] = 2  # rank 10 exactly (items 2..11 score >= it): in @10, and not in @3 (off-by-one check)
    scores[1] = torch.arange(12.0)
    targets[1] = 1  # rank 11: out of @10
    positive_u = torch.arange(40)
    collector = Collector(config)
    collector.eval_batch_collect(pessimistic_ties(scores.clone(), positive_u, targets), None, positive_u, targets)
    result = Evaluator(config).evaluate(collector.get_data_struct())
    for k in (1, 3, 10):
        recall, ndcg = _brute_force(scores, targets.tolist(), k)
        assert result[f"recall@{k}"] == pytest.approx(recall, abs=1e-4)
        assert result[f"ndcg@{k}"] == pytest.approx(ndcg, abs=1e-4)


def test_pessimistic_ties_ranks_target_after_equal_scores():
    scores = torch.tensor([[float("-inf"), 0.5, 0.5, 0.5, 0.1], [float("-inf"), 0.2, 0.9, 0.2, 0.2]])
    out = pessimistic_ties(scores.clone(), torch.tensor([0, 1]), torch.tensor([2, 3]))
    assert (out[0, [1, 3]] > out[0, 2]).all() and out[0, 4] < out[0, 2]
    assert (out[1, [1, 2, 4]] > out[1, 3]).all()
    assert out[0, 2] == 0.5 and out[1, 3] == 0.2  # targets untouched


def _setup(tiny_config, **extra):
    config = tiny_config(**extra)
    dataset = MISSRecDataset(config)
    train, valid, test = data_preparation(config, dataset)
    torch.manual_seed(0)
    return config, MISSRec(config, dataset), train, valid, test


def test_interest_map_refreshed_before_every_epoch(tiny_config):
    config, model, train, valid, _ = _setup(tiny_config, epochs=3, stopping_step=10)
    trainer = MISSRecTrainer(config, model)
    trainer.fit(train, valid, saved=False)
    assert len(trainer.interest_refresh_seconds) == 3


def test_pretrain_writes_checkpoint_every_save_step(tiny_config):
    config, model, train, _, _ = _setup(tiny_config, stage="pretrain", mode="inductive", loss_candidates="batch",
                                        epochs=3, save_step=2)
    paths = MISSRecTrainer(config, model).pretrain(train)
    assert [os.path.basename(p).rsplit("-", 1)[1] for p in paths] == ["epoch2.pth", "epoch3.pth"]
    checkpoint = torch.load(paths[-1], weights_only=True)
    assert checkpoint["epoch"] == 3 and checkpoint["config"]["hidden_size"] == 32
    assert not any(k.startswith("item_embedding") for k in checkpoint["state_dict"])


def test_checkpoint_loads_into_dataset_with_other_item_count(tiny_config, tmp_path):
    config, model, *_ = _setup(tiny_config)
    path = save_pretrained(model, config, tmp_path / "ckpt.pth", epoch=1)
    write_dataset(tmp_path, "Other", n_items=70, seed=4)
    other_config = tiny_config(dataset="Other")
    from missrec_recbole.quick_start import build_config
    from tests.conftest import tiny_overrides

    other_config = build_config("Other", config_dict=tiny_overrides(data_path=str(tmp_path),
                                                                     checkpoint_dir=str(tmp_path / "s")))
    other = MISSRec(other_config, MISSRecDataset(other_config))
    assert other.n_items != model.n_items
    load_pretrained(other, other_config, path)
    for key, value in model.transferable_state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key


def test_checkpoint_with_other_dims_is_a_clear_error(tiny_config, tmp_path):
    config, model, *_ = _setup(tiny_config)
    path = save_pretrained(model, config, tmp_path / "ckpt.pth", epoch=1)
    wider_config, wider, *_ = _setup(tiny_config, hidden_size=48)
    with pytest.raises(CheckpointError, match="hidden_size=32 but this run has hidden_size=48"):
        load_pretrained(wider, wider_config, path)


def test_checkpoint_write_is_atomic_and_safe(tiny_config, tmp_path, monkeypatch):
    config, model, *_ = _setup(tiny_config)
    path = tmp_path / "out" / "ckpt.pth"
    save_pretrained(model, config, path, epoch=1)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(RuntimeError):
        save_pretrained(model, config, path, epoch=2)
    assert path.read_bytes() == before and os.listdir(path.parent) == ["ckpt.pth"]
    assert read_checkpoint(path)["epoch"] == 1
    (tmp_path / "bad.pth").write_bytes(before[: len(before) // 2])
    with pytest.raises(CheckpointError, match="bad.pth: not a readable MISSRec checkpoint"):
        read_checkpoint(tmp_path / "bad.pth")


@pytest.mark.parametrize("unfreeze", [("item_decoder",), ("position_embedding", "interest_encoder")])
def test_unfreeze_trains_the_named_modules_as_well(tiny_config, unfreeze):
    config, model, train, _, _ = _setup(tiny_config)
    adapters_only = model.freeze_for_finetune()
    n_trainable = model.freeze_for_finetune(unfreeze)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    prefixes = MISSRec.FINETUNE_TRAINABLE + tuple(f"{m}." for m in unfreeze)
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith(prefixes)}
    assert any(n.startswith(f"{unfreeze[-1]}.") for n in trainable) and n_trainable > adapters_only
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    MISSRecTrainer(config, model)._train_epoch(train, 0)
    for name, parameter in model.named_parameters():
        assert (not torch.equal(before[name], parameter)) == (name in trainable), name
    with pytest.raises(ConfigError, match="unfreeze: 'decoder' is not a module of MISSRec .* choose from "
                                          "position_embedding, interest_encoder, item_decoder"):
        model.freeze_for_finetune(("decoder",))


def test_finetune_freezes_all_but_adapters(tiny_config, tmp_path):
    config, model, train, _, _ = _setup(tiny_config)
    path = save_pretrained(model, config, tmp_path / "ckpt.pth", epoch=1)
    config, model, train, _, _ = _setup(tiny_config)
    load_pretrained(model, config, path)
    n_trainable = model.freeze_for_finetune()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"adapters.text.weight", "adapters.text.bias", "adapters.image.weight", "adapters.image.bias",
                         "item_embedding.weight", "fusion_beta", "input_layer_norm.weight", "input_layer_norm.bias"}
    assert n_trainable == sum(p.numel() for n, p in model.named_parameters() if n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = MISSRecTrainer(config, model)
    trainer._train_epoch(train, 0)
    for name, parameter in model.named_parameters():
        changed = not torch.equal(before[name], parameter)
        assert changed == (name in trainable), name


def test_pretrain_logs_loss_parts_to_tensorboard(tiny_config, tmp_path, monkeypatch):
    """L_si, lambda*L_ss and gamma*L_reg go to TensorBoard as Loss/Train0..2, one point per epoch."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)  # RecBole writes ./log_tensorboard/<run>
    config, model, train, _, _ = _setup(tiny_config, stage="pretrain", mode="inductive", loss_candidates="batch",
                                        epochs=2, save_step=2)
    trainer = MISSRecTrainer(config, model)
    trainer.pretrain(train)
    trainer.tensorboard.flush()
    (run,) = (tmp_path / "log_tensorboard").iterdir()
    events = EventAccumulator(str(run))
    events.Reload()
    parts = [[e.value for e in events.Scalars(f"Loss/Train{i}")] for i in range(3)]
    assert all(len(values) == 2 for values in parts)
    for epoch in range(2):
        assert sum(p[epoch] for p in parts) == pytest.approx(trainer.train_loss_dict[epoch], rel=1e-5)
    assert all(v > 0 for v in parts[0]) and all(v != 0 for v in parts[1])
