"""UniSRec baseline: shapes, MoE formula, gradients and freezing, learning, checkpoint transfer."""

import pytest
import torch
import torch.nn.functional as F
from recbole.data import data_preparation

from missrec_recbole.baselines import run_unisrec
from missrec_recbole.config_schema import ConfigError
from missrec_recbole.data import MISSRecDataset
from missrec_recbole.model import UniSRec
from missrec_recbole.quick_start import build_config
from missrec_recbole.trainer import CheckpointError, read_checkpoint
from tests.conftest import assert_same_loss_and_grads, loss_and_grads, tiny_overrides, write_dataset


@pytest.fixture
def built(tiny_dataset, tmp_path):
    def make(**extra):
        overrides = tiny_overrides(data_path=str(tiny_dataset), checkpoint_dir=str(tmp_path / "saved"), **extra)
        config = build_config("Tiny", extra.pop("stage", "finetune"), config_dict=overrides, model_class=UniSRec)
        dataset = MISSRecDataset(config)
        train, _, test = data_preparation(config, dataset)
        torch.manual_seed(0)
        return UniSRec(config, dataset), train, dataset

    return make


def _batch(loader):
    return next(iter(loader))


@pytest.mark.parametrize("mode", ["inductive", "transductive"])
def test_output_shapes(built, mode):
    model, train, dataset = built(mode=mode)
    batch = _batch(train)
    model.eval()
    with torch.no_grad():
        assert model.forward(batch["item_id_list"], batch["item_length"]).shape == (len(batch), 32)
        full = model.full_sort_predict(batch)
        assert full.shape == (len(batch), dataset.item_num)
        assert model.predict(batch).shape == (len(batch),)
        assert torch.allclose(model.predict(batch), full[torch.arange(len(batch)), batch["item_id"]], atol=1e-5)
        assert (full[:, 1:].abs() <= 1 + 1e-5).all()  # cosine scores
    model.train()
    assert torch.isfinite(model.calculate_loss(batch))


def test_text_only_dataset_and_features_in_recbole_order(built):
    model, _, dataset = built()
    assert list(dataset.features) == ["text"]
    assert torch.equal(model.text_features, dataset.features["text"])
    assert not model.text_features[0].any()


def test_moe_matches_per_expert_formula(built):
    """v = sum_k g_k (x - b_k) W_k, g = softmax(x W_2); gating noise only in training."""
    model, _, _ = built(mode="inductive")
    moe = model.moe_adaptor
    with torch.no_grad():
        moe.whitening_bias.normal_()
        x = model.text_features[1:6]
        moe.eval()
        gates = torch.softmax(x @ moe.gate.weight.T, dim=-1)
        expected = sum(gates[:, k:k + 1] * ((x - moe.whitening_bias[k]) @ moe.whitening_weight[k])
                       for k in range(moe.n_experts))
        assert torch.allclose(moe(x), expected, atol=1e-5)
        assert torch.allclose(model.item_representations(torch.arange(1, 6)), expected, atol=1e-5)
        moe.train()
        moe.dropout.threshold = 0  # isolate the gating noise
        noisy = [moe.gates(x) for _ in range(2)]
    assert not torch.allclose(noisy[0], noisy[1]) and torch.allclose(noisy[0].sum(-1), torch.ones(5))
    assert moe.n_experts == 8 and gates.shape == (5, 8)


def test_rows_do_not_depend_on_the_batch(built):
    """Length buckets and cutting to the longest sequence are exact: a row alone = the row in a batch."""
    model, train, _ = built()
    model.eval()
    batch = _batch(train)
    seq, lengths = batch["item_id_list"], batch["item_length"]
    with torch.no_grad():
        model.length_buckets = 8
        together = model.forward(seq, lengths)
        model.length_buckets = 1
        assert torch.allclose(model.forward(seq, lengths), together, atol=1e-5)
        alone = torch.cat([model.forward(seq[i:i + 1], lengths[i:i + 1]) for i in range(4)])
    model.length_buckets = 8
    assert len(model._length_buckets(lengths)) > 1
    assert torch.allclose(alone, together[:4], atol=1e-5)


def test_inductive_and_transductive_parameter_sets(built):
    inductive = {n for n, _ in built(mode="inductive")[0].named_parameters()}
    transductive = {n for n, _ in built(mode="transductive")[0].named_parameters()}
    assert transductive - inductive == {"item_embedding.weight"} and inductive <= transductive
    assert {"moe_adaptor.whitening_bias", "moe_adaptor.whitening_weight", "moe_adaptor.gate.weight",
            "moe_adaptor.noise.weight", "position_embedding.weight"} <= inductive
    assert any(n.startswith("trm_encoder.layer.1.") for n in inductive)  # 2 layers


def test_all_item_vectors_cached_while_serving(built):
    """The base class's cache (as MISSRec's): kept in eval mode, dropped by training, by a weight update and by
    ``load_state_dict``; never while training."""
    model, _, _ = built(mode="transductive")
    model.eval()
    with torch.no_grad():
        first = model.item_representations()
        assert model.item_representations() is first and model.eval().item_representations() is first
        model.item_embedding.weight[1] += 1.0  # in place, as an optimizer step
        updated = model.item_representations()
        assert updated is not first and not torch.equal(updated[1], first[1])
        model.load_state_dict(model.state_dict())
        assert model.item_representations() is not updated
        model.train()
        assert model._item_cache is None and model.item_representations() is not model.item_representations()


def test_one_transformer_layer_and_the_text_modality(built):
    """n_layers: 1 is a valid UniSRec (only MISSRec's encoder + decoder needs 2); a dataset loaded without its text
    features is refused by name."""
    model, train, _ = built(n_layers=1)
    assert not any(n.startswith("trm_encoder.layer.1.") for n, _ in model.named_parameters())
    assert torch.isfinite(model.calculate_loss(_batch(train)))
    with pytest.raises(ConfigError, match="option 'modalities': UniSRec reads text features, Tiny is loaded with "
                                          r"\['image'\]"):
        built(modalities=["image"], image_suffix="feat3CLS")


def _grads(model, batch):
    model.train()
    model.zero_grad()
    loss = model.calculate_loss(batch)
    sum(loss).backward() if isinstance(loss, tuple) else loss.backward()
    return {n: p.grad for n, p in model.named_parameters()}


def test_gradients_reach_adapter_and_transformer(built):
    model, train, _ = built(mode="transductive")
    grads = _grads(model, _batch(train))
    for name in ("moe_adaptor.whitening_bias", "moe_adaptor.whitening_weight", "moe_adaptor.gate.weight",
                 "moe_adaptor.noise.weight", "item_embedding.weight", "position_embedding.weight",
                 "trm_encoder.layer.0.multi_head_attention.query.weight",
                 "trm_encoder.layer.1.feed_forward.dense_1.weight", "LayerNorm.weight"):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name


@pytest.mark.parametrize("mode", ["inductive", "transductive"])
def test_adapter_only_freezes_everything_else(built, mode):
    model, train, _ = built(mode=mode)
    trainable = model.freeze_for_finetune()
    grads = _grads(model, _batch(train))
    moe = {n for n in grads if n.startswith("moe_adaptor.")}
    expected = moe | ({"item_embedding.weight"} if mode == "transductive" else set())
    assert {n for n, g in grads.items() if g is not None and g.abs().sum() > 0} == expected
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected
    assert trainable == sum(p.numel() for n, p in model.named_parameters() if n in expected)


def test_unfreeze_adds_whole_modules_to_the_adapter(built):
    model, train, _ = built(mode="inductive")
    model.freeze_for_finetune(("trm_encoder",))
    grads = _grads(model, _batch(train))
    changed = {n for n, g in grads.items() if g is not None and g.abs().sum() > 0}
    assert changed == {n for n in grads if n.startswith(("moe_adaptor.", "trm_encoder."))}
    for module in UniSRec.UNFREEZABLE:  # every name the option offers trains something
        model.freeze_for_finetune((module,))
        assert any(p.requires_grad for n, p in model.named_parameters() if n.startswith(module + ".")), module


def test_finetune_loss_is_cross_entropy_over_all_real_items(built):
    """l = -log softmax_i(cos(s, v_i) / tau) over items 1..N-1 (0 is padding, never a candidate)."""
    model, train, _ = built(mode="inductive")
    batch = _batch(train)
    model.eval()
    with torch.no_grad():
        seq = model.forward(batch["item_id_list"], batch["item_length"])
        cosine = F.normalize(seq, dim=-1) @ F.normalize(model.item_representations()[1:], dim=-1).T
        expected = F.cross_entropy(cosine / 0.07, batch["item_id"] - 1)
        assert torch.isclose(model.calculate_loss(batch), expected, atol=1e-5)


def test_pretrain_loss_parts(built):
    model, train, _ = built(stage="pretrain", mode="inductive", loss_candidates="batch")
    batch = _batch(train)
    model.train()
    loss_si, loss_ss = model.calculate_loss(batch)
    assert torch.isfinite(loss_si) and torch.isfinite(loss_ss) and 0 < loss_ss < model.lam * 2 * len(batch)
    grads = _grads(model, batch)
    assert grads["moe_adaptor.whitening_weight"].abs().sum() > 0


def test_augmented_view_differs_and_keeps_lengths_valid(built):
    model, train, _ = built(stage="pretrain", item_drop_ratio=0.5, item_drop_coefficient=1.0)
    batch = _batch(train)
    model.eval()  # no dropout: the only randomness is the augmentation
    with torch.no_grad():
        plain = F.normalize(model.forward(batch["item_id_list"], batch["item_length"]), dim=-1)
        view = F.normalize(model.augmented_view(batch["item_id_list"], batch["item_length"]), dim=-1)
        model.item_drop_coefficient = 0.0  # feature dropout only
        features = F.normalize(model.augmented_view(batch["item_id_list"], batch["item_length"]), dim=-1)
    assert torch.isfinite(view).all() and ((plain * view).sum(-1) < 1 - 1e-4).any()
    assert ((plain * features).sum(-1) < 1 - 1e-4).all()


def test_memory_chunks_replay_dropout_and_match_the_whole_batch(built, monkeypatch):
    """memory_chunk_rows (as in MISSRec): the Transformer's activations are recomputed in backward per chunk with
    the same dropout masks (= the same chunks with activations kept); without dropout = the whole batch."""
    from missrec_recbole.model import base as module  # the shared row runner calls base.checkpoint

    model, train, _ = built(stage="pretrain", mode="transductive", memory_chunk_rows=5)
    model.train()
    batch = _batch(train)
    assert len(model._row_groups(batch["item_length"])) > len(model._length_buckets(batch["item_length"]))
    calls, checkpoint = [], module.checkpoint
    with monkeypatch.context() as patch:
        patch.setattr(module, "checkpoint", lambda *args, **kwargs: calls.append(1) or checkpoint(*args, **kwargs))
        recomputed = loss_and_grads(model, batch)
    assert len(calls) >= len(model._row_groups(batch["item_length"]))  # each chunk of the sequences and their views
    with monkeypatch.context() as patch:
        patch.setattr(module, "checkpoint", lambda function, *args, **kwargs: function(*args))
        assert_same_loss_and_grads(recomputed, loss_and_grads(model, batch))
    assert recomputed[1]["trm_encoder.layer.0.multi_head_attention.query.weight"].abs().sum() > 0

    no_dropout = {"hidden_dropout_prob": 0.0, "attn_dropout_prob": 0.0, "adaptor_dropout_prob": 0.0}
    model, _, _ = built(stage="pretrain", mode="transductive", memory_chunk_rows=5, **no_dropout)
    model.train()
    chunked = loss_and_grads(model, batch)
    model.memory_chunk_rows = 0
    assert_same_loss_and_grads(chunked, loss_and_grads(model, batch))
    with pytest.raises(ConfigError, match="option 'memory_chunk_rows': got -1"):
        built(memory_chunk_rows=-1)


def test_loss_decreases_on_demo_data(tmp_path):
    """A few optimiser steps on one Demo-D batch reduce the fine-tuning loss."""
    from missrec_recbole.tools.demo import ensure_demo_dataset

    ensure_demo_dataset(tmp_path / "data", ["Demo-D"])
    config = build_config("Demo-D", config_dict=tiny_overrides(512, data_path=str(tmp_path / "data"),
                                                               checkpoint_dir=str(tmp_path)), model_class=UniSRec)
    dataset = MISSRecDataset(config)
    train, _, _ = data_preparation(config, dataset)
    torch.manual_seed(0)
    model = UniSRec(config, dataset)
    batch = _batch(train)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        loss = model.calculate_loss(batch)
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < 0.8 * losses[0], losses


def test_pretrain_then_finetune_other_item_count(tmp_path):
    """Checkpoint from a 40-item dataset loads into a 55-item one; adapter-only keeps the encoder fixed."""
    write_dataset(tmp_path, "Source", n_items=40, seed=1)
    write_dataset(tmp_path, "Target", n_items=55, seed=2)
    overrides = tiny_overrides(checkpoint_dir=str(tmp_path / "saved"), epochs=1)
    pre = run_unisrec("Source", stage="pretrain", mode="inductive", config_dict=overrides, data_path=tmp_path)
    assert pre["checkpoint"].endswith("UniSRec-Source-inductive-epoch1.pth")
    weights = read_checkpoint(pre["checkpoint"])["state_dict"]
    assert "item_embedding.weight" not in weights and "text_features" not in weights

    result = run_unisrec("Target", stage="finetune", mode="transductive", pretrained=pre["checkpoint"],
                         config_dict=overrides, data_path=tmp_path)
    assert result["model"] == "UniSRec" and result["pretrained"] == pre["checkpoint"]
    assert set(result["test"]) == {"recall@5", "recall@10", "ndcg@5", "ndcg@10"}
    assert result["best_epoch"] == 0 and result["epochs"] == 1 and result["seconds_per_epoch"] > 0
    moe = sum(w.numel() for k, w in weights.items() if k.startswith("moe_adaptor."))
    best = torch.load(result["model_file"], map_location="cpu", weights_only=False)["state_dict"]
    n_target = best["item_embedding.weight"].shape[0]
    assert n_target > 40  # more items than the pre-training data (at most 39 + padding)
    assert result["trainable_parameters"] == moe + n_target * 32  # adapter + ID embedding
    for key in ("position_embedding.weight", "trm_encoder.layer.1.feed_forward.dense_2.weight", "LayerNorm.bias"):
        assert torch.equal(best[key], weights[key]), key  # frozen: exactly the pre-trained weights
    assert not torch.equal(best["moe_adaptor.whitening_weight"], weights["moe_adaptor.whitening_weight"])

    with pytest.raises(CheckpointError, match="hidden_size"):
        run_unisrec("Target", stage="finetune", mode="inductive", pretrained=pre["checkpoint"],
                    config_dict={**overrides, "hidden_size": 16}, data_path=tmp_path)
