"""MISSRec model: shapes, fusion, missing modalities, interest dedup, exact last-token decoding, gradients."""

import pytest
import torch

from missrec_recbole.config_schema import ConfigError
from missrec_recbole.data import MISSRecDataset
from missrec_recbole.model import MISSRec
from missrec_recbole.model.missrec import distinct_per_row
from tests.conftest import assert_same_loss_and_grads, assert_same_tensors, loss_and_grads


@pytest.fixture
def built(tiny_config):
    def make(**extra):
        config = tiny_config(**extra)
        dataset = MISSRecDataset(config)
        from recbole.data import data_preparation

        train, _, test = data_preparation(config, dataset)
        torch.manual_seed(0)
        return MISSRec(config, dataset), train, test, dataset

    return make


def _batch(loader):
    return next(iter(loader))


@pytest.mark.parametrize("mode", ["inductive", "transductive"])
@pytest.mark.parametrize("fusion", ["add", "stack"])
def test_output_shapes(built, mode, fusion):
    model, train, test, dataset = built(mode=mode, item_fusion=fusion)
    batch = _batch(train)
    model.eval()
    assert model.forward(batch["item_id_list"], batch["item_length"]).shape == (len(batch), 32)
    assert model.full_sort_predict(batch).shape == (len(batch), dataset.item_num)
    assert model.predict(batch).shape == (len(batch),)
    full = model.full_sort_predict(batch)
    assert torch.allclose(model.predict(batch), full[torch.arange(len(batch)), batch["item_id"]], atol=1e-5)
    model.train()
    assert torch.isfinite(model.calculate_loss(batch))


def test_pretrain_loss_has_three_parts(built):
    model, train, _, _ = built(stage="pretrain", mode="inductive", loss_candidates="batch")
    parts = model.calculate_loss(_batch(train))
    assert len(parts) == 3 and all(torch.isfinite(p) for p in parts)


def test_fused_score_between_mean_and_max(built):
    model, train, _, _ = built()
    model.eval()
    with torch.no_grad():
        model.fusion_beta.fill_(3.0)
        batch = _batch(train)
        seq = model.forward(batch["item_id_list"], batch["item_length"])
        candidates, present = model.candidate_tokens()
        fused = model.fused_scores(seq, candidates, present)
        per_modality = torch.einsum("bd,nmd->bnm", torch.nn.functional.normalize(seq, dim=-1), candidates)
    both = present.all(dim=1)
    both[0] = False
    mean, top = per_modality.mean(-1)[:, both], per_modality.max(-1).values[:, both]
    assert (fused[:, both] >= mean - 1e-6).all() and (fused[:, both] <= top + 1e-6).all()
    assert (fused[:, both] > mean + 1e-4).any()  # beta > 0 really leans towards the max


def test_missing_image_item_scores_text_only(built):
    model, train, _, dataset = built(mode="inductive")
    model.eval()
    missing = dataset.field2token_id["item_id"]["3"]
    with torch.no_grad():
        batch = _batch(train)
        seq = model.forward(batch["item_id_list"], batch["item_length"])
        scores = model.full_sort_predict(batch)[:, missing]
        text = model.adapters["text"](model.text_features[missing])
        expected = torch.nn.functional.normalize(seq, dim=-1) @ torch.nn.functional.normalize(text, dim=0)
    assert torch.allclose(scores, expected, atol=1e-5)


def test_missing_modality_is_masked_not_bias(built):
    model, _, _, dataset = built(mode="inductive")
    missing = dataset.field2token_id["item_id"]["3"]
    tokens, present = model.item_tokens(torch.tensor([missing]))
    assert present.tolist() == [[True, False]] and not tokens[0, 1].any()


def test_distinct_per_row_hand_made():
    ids = torch.tensor([[4, 2, 4, -1, 2, 9], [1, 1, 1, 1, -1, -1], [-1, -1, -1, -1, -1, -1], [0, 3, 0, 5, 3, 7]])
    distinct, mask = distinct_per_row(ids)
    rows = [row[m].tolist() for row, m in zip(distinct, mask)]
    assert rows == [[2, 4, 9], [1], [], [0, 3, 5, 7]]
    assert distinct.shape == (4, 4) and (distinct[~mask] == -1).all()


def test_last_token_decoding_matches_full_decoder(built):
    model, train, _, _ = built(n_layers=4)  # 2 decoder layers: the lower one runs in full
    model.eval()
    batch = _batch(train)
    with torch.no_grad():
        interests, mask = model.interest_tokens(batch["item_id_list"])
        memory = model.interest_encoder(model._input(interests), src_key_padding_mask=~mask)
        tokens, lengths = model._sequence_tokens(batch["item_id_list"], batch["item_length"])
        length = tokens.shape[1]
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)
        padding = torch.arange(length)[None, :] >= lengths[:, None]
        full = model.item_decoder(model._input(tokens), memory, tgt_mask=causal, tgt_key_padding_mask=padding,
                                  memory_key_padding_mask=~mask)
        expected = full[torch.arange(len(batch)), lengths - 1]
        assert torch.allclose(model.forward(batch["item_id_list"], batch["item_length"]), expected, atol=1e-5)


def test_item_drop_keeps_modalities_aligned(built):
    model, train, _, _ = built(item_drop_ratio=0.5)
    batch = _batch(train)
    torch.manual_seed(3)
    dropped, lengths = model._item_drop(batch["item_id_list"], batch["item_length"])
    assert (lengths >= 1).all() and (lengths <= batch["item_length"]).all()
    for row, original, n in zip(dropped, batch["item_id_list"], lengths):
        kept = row[:n].tolist()
        assert all(i > 0 for i in kept) and (row[n:] == 0).all()
        it = iter(original.tolist())
        assert all(any(x == y for y in it) for x in kept)  # a subsequence, order kept
    # text, image and ID tokens all come from the same dropped item sequence
    tokens, present = model.item_tokens(dropped)
    assert (present[:, :, 0] == (dropped > 0)).all()


def test_gradient_reaches_adapters_and_interests(built):
    model, train, _, _ = built()
    model.train()
    model.calculate_loss(_batch(train)).backward()
    for name in ("adapters.text.weight", "adapters.image.weight", "fusion_beta", "item_embedding.weight",
                 "interest_encoder.layers.0.linear1.weight", "input_layer_norm.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_interest_map_covers_every_present_token(built):
    model, _, _, dataset = built(interest_ratio=0.25)
    info = model.refresh_interests()
    n_tokens = int(dataset.present["text"].sum() + dataset.present["image"].sum())
    assert info["tokens"] == n_tokens and info["interests"] == -(-n_tokens // 4)
    assert ((model.item_interest >= 0) == torch.stack([dataset.present["text"], dataset.present["image"]], 1)).all()
    centers = model.center_item, model.center_modality
    assert (model.item_interest[centers] == torch.arange(len(centers[0]))).all()  # a center is its own interest


def test_length_buckets_give_the_same_result(built):
    model, train, _, _ = built()
    model.eval()
    batch = next(iter(train))
    with torch.no_grad():
        model.length_buckets = 1
        dense, dense_reg = model.encode(batch["item_id_list"], batch["item_length"], with_diversity=True)
        model.length_buckets = 8
        bucketed, bucketed_reg = model.encode(batch["item_id_list"], batch["item_length"], with_diversity=True)
    assert len(model._length_buckets(batch["item_length"])) > 1
    assert torch.allclose(dense, bucketed, atol=1e-5) and torch.allclose(dense_reg, bucketed_reg, atol=1e-6)


def test_memory_chunks_replay_dropout_in_the_backward_pass(built, monkeypatch):
    """memory_chunk_rows recomputes activations in backward (torch.utils.checkpoint) with the same
    dropout masks: loss and gradients equal those of the same chunks with activations kept."""
    from missrec_recbole.model import base as module  # the shared row runner calls base.checkpoint

    model, train, _, _ = built(stage="pretrain", mode="inductive", loss_candidates="batch", memory_chunk_rows=5)
    model.refresh_interests()
    model.train()
    batch = _batch(train)
    assert len(model._row_groups(batch["item_length"])) > len(model._length_buckets(batch["item_length"]))
    recomputed = loss_and_grads(model, batch)
    monkeypatch.setattr(module, "checkpoint", lambda function, *args, **kwargs: function(*args))
    kept = loss_and_grads(model, batch)
    assert recomputed[1]["adapters.text.weight"].abs().sum() > 0
    assert_same_loss_and_grads(recomputed, kept)


def test_memory_chunks_change_nothing_without_dropout(built):
    """Without dropout, chunked pre-training gives the loss and gradients of the whole batch; off in eval."""
    no_dropout = {"hidden_dropout_prob": 0.0, "adaptor_dropout_prob": 0.0}
    model, train, _, _ = built(stage="pretrain", mode="inductive", loss_candidates="batch", **no_dropout)
    model.refresh_interests()
    model.train()
    batch = _batch(train)
    whole = loss_and_grads(model, batch)
    model.memory_chunk_rows = 5
    assert_same_loss_and_grads(whole, loss_and_grads(model, batch))
    model.eval()
    assert len(model._row_groups(batch["item_length"])) == len(model._length_buckets(batch["item_length"]))


@pytest.mark.parametrize("bad", [-1, 2.5, "big", None])
def test_memory_chunk_rows_is_checked(built, bad):
    """The schema checks it (0 is off; null is not another spelling of it): the model reads it as given."""
    with pytest.raises(ConfigError, match=f"option 'memory_chunk_rows': got {bad!r}, must be an integer >= 0"):
        built(memory_chunk_rows=bad)


def test_moe_item_adapter(built, tmp_path):
    """item_adapter: moe gives each modality UniSRec's MoE of whitening experts: scores stay consistent, the experts
    learn, fine-tuning keeps them trainable, interest refreshes see no gating noise, and a checkpoint of the other
    adapter kind (or one written before the option existed, i.e. linear) is refused by name, so is another expert
    count (but not on a linear checkpoint, which has no experts)."""
    from missrec_recbole.model.base import MoEAdapter
    from missrec_recbole.trainer.checkpoint import CheckpointMismatchError, load_pretrained, save_pretrained

    model, train, _, dataset = built(item_adapter="moe", n_exps=3, mode="inductive")
    assert all(isinstance(adapter, MoEAdapter) for adapter in model.adapters.values())
    batch = _batch(train)
    model.eval()
    full = model.full_sort_predict(batch)
    assert torch.allclose(model.predict(batch), full[torch.arange(len(batch)), batch["item_id"]], atol=1e-5)
    model.train()
    model.calculate_loss(batch).backward()
    for name in ("adapters.text.whitening_weight", "adapters.text.gate.weight", "adapters.image.whitening_bias"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    model.refresh_interests()
    first = model.item_interest.clone()
    model.refresh_interests()
    assert torch.equal(first, model.item_interest)  # gating noise is a training-time perturbation only
    model.freeze_for_finetune()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "adapters.text.whitening_weight" in trainable and "interest_encoder.layers.0.linear1.weight" not in trainable

    linear, _, _, linear_data = built(mode="inductive")
    path = save_pretrained(linear, linear_data.config, tmp_path / "linear.pth", epoch=1)
    with pytest.raises(CheckpointMismatchError, match="item_adapter='linear' but this run has item_adapter='moe'"):
        load_pretrained(model, dataset.config, path)
    content = torch.load(path, weights_only=True)
    del content["config"]["item_adapter"]  # as written before the option existed
    torch.save(content, tmp_path / "older.pth")
    with pytest.raises(CheckpointMismatchError, match="item_adapter='linear'"):
        load_pretrained(model, dataset.config, tmp_path / "older.pth")
    load_pretrained(linear, linear_data.config, tmp_path / "older.pth")
    more_experts, _, _, more_data = built(item_adapter="moe", n_exps=4, mode="inductive")
    moe_path = save_pretrained(model, dataset.config, tmp_path / "moe.pth", epoch=1)
    with pytest.raises(CheckpointMismatchError, match="n_exps=3 but this run has n_exps=4; leave n_exps out"):
        load_pretrained(more_experts, more_data.config, moe_path)
    other_count, _, _, other_data = built(n_exps=4, mode="inductive")  # the linear adapter has no experts
    load_pretrained(other_count, other_data.config, path)


@pytest.mark.parametrize("stage", ["finetune", "pretrain"])
def test_single_modality_scores_and_moe_shift_are_bit_exact(built, monkeypatch, stage):
    """The speed-ups of the text-only score (no softmax over one modality) and of the MoE experts' shift (+ -shift)
    give the loss and every gradient of the general formulas bit for bit, fusion beta's zero gradient included,
    and the same parameters after optimizer steps."""
    from missrec_recbole.model.base import MoEAdapter

    def reference_experts(self, x):
        weight = self.whitening_weight.transpose(0, 1).reshape(x.shape[-1], -1)
        whitened = (x @ weight).view(-1, self.n_experts, self.hidden_size)
        return whitened - torch.einsum("gD,gDd->gd", self.whitening_bias, self.whitening_weight)

    def train_steps(model, batches):
        state = {k: v.clone() for k, v in model.state_dict().items()}
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        results = []
        for batch in batches:
            optimizer.zero_grad()
            results.append(loss_and_grads(model, batch))
            optimizer.step()
        params = {n: p.detach().clone() for n, p in model.named_parameters()}
        model.load_state_dict(state)
        return results, params

    extra = {"stage": "pretrain", "mode": "inductive", "loss_candidates": "batch"} if stage == "pretrain" else {}
    model, train, _, _ = built(modalities=["text"], item_adapter="moe", **extra)
    model.refresh_interests()
    model.train()
    batches = [batch for batch, _ in zip(train, range(3))]
    fast, fast_params = train_steps(model, batches)
    monkeypatch.setattr(MISSRec, "_single_modality_scores", MISSRec._softmax_fusion)
    monkeypatch.setattr(MoEAdapter, "experts", reference_experts)
    reference, reference_params = train_steps(model, batches)
    for (loss_a, grads_a), (loss_b, grads_b) in zip(fast, reference):
        assert torch.equal(loss_a, loss_b)
        assert_same_tensors(grads_a, grads_b)
        assert grads_a["fusion_beta"] == 0
    assert_same_tensors(fast_params, reference_params)


def test_evaluating_gives_eval_mode_and_restores_the_mode_even_when_the_block_fails():
    from missrec_recbole.model.base import evaluating

    module = torch.nn.Sequential(torch.nn.Dropout(0.5))
    with pytest.raises(ValueError):
        with evaluating(module):
            assert not module.training and not module[0].training
            raise ValueError
    assert module.training and module[0].training
    module.eval()
    with evaluating(module):
        pass
    assert not module.training


NO_DROPOUT = {"hidden_dropout_prob": 0.0, "adaptor_dropout_prob": 0.0}


@pytest.mark.parametrize("stage, candidates", [("pretrain", "batch"), ("finetune", "all"), ("finetune", "batch")])
@pytest.mark.parametrize("mode, fusion", [("inductive", "add"), ("transductive", "stack")])
def test_shared_item_tokens_compute_the_same_loss_without_dropout(built, stage, candidates, mode, fusion):
    """shared_item_tokens changes only how often adapter dropout is drawn: without dropout, one adapter pass per
    step read by every use (sequences, views, interest centers, candidates) gives the loss and gradients of the
    per-use passes."""
    model, train, _, _ = built(stage=stage, loss_candidates=candidates, mode=mode, item_fusion=fusion, **NO_DROPOUT)
    model.refresh_interests()
    model.train()
    batch = _batch(train)
    per_use = loss_and_grads(model, batch)
    model.shared_item_tokens = True
    shared = loss_and_grads(model, batch)
    assert shared[1]["adapters.text.weight"].abs().sum() > 0
    assert_same_loss_and_grads(per_use, shared)
    assert model._step_tokens is None  # nothing of the step outlives it


@pytest.mark.parametrize("stage, candidates", [("pretrain", "batch"), ("finetune", "all")])
def test_shared_item_tokens_run_each_adapter_once_per_step(built, stage, candidates):
    model, train, _, _ = built(stage=stage, loss_candidates=candidates, item_adapter="moe")
    model.refresh_interests()
    model.train()
    calls = []
    for m, adapter in model.adapters.items():
        adapter.register_forward_hook(lambda module, args, output, m=m: calls.append((m, len(args[0]))))
    batch = _batch(train)
    per_use_loss = loss_and_grads(model, batch)[0]
    assert len(calls) > 2 * len(model.modalities)
    calls.clear()
    model.shared_item_tokens = True
    shared_loss = loss_and_grads(model, batch)[0]
    assert sorted(m for m, _ in calls) == sorted(model.modalities)
    expected_rows = model.n_items if candidates == "all" else len(model._step_items(batch))
    assert {rows for _, rows in calls} == {expected_rows}
    assert not torch.equal(per_use_loss, shared_loss)  # approximate: other dropout draws (and MoE gating noise)
    model.eval()
    calls.clear()
    with torch.no_grad():
        model.full_sort_predict(batch)
    assert model._step_tokens is None and calls  # evaluation runs the adapters itself


def test_shared_item_tokens_refuse_memory_chunks(built):
    with pytest.raises(ConfigError, match="'shared_item_tokens' and 'memory_chunk_rows'"):
        built(shared_item_tokens=True, memory_chunk_rows=8)
