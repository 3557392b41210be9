"""MISSRec: multi-modal interest-aware sequence representation (Wang et al., ACM MM 2023).

Equations refer to the paper as restated in docs/design.md §3:
- adapters       e_i^m = W_m Dropout(x_i^m) + b_m, m in {text, image}; absent modalities are masked out;
- item tokens    e_i = sum_m e_i^m (+ ID) ("add") or the modality tokens interleaved ("stack");
- interests      DPC-KNN over all item tokens, refreshed by the trainer before each epoch;
                 a sequence's interest tokens = its distinct interests, each its center token;
- encoder        memory = Encoder(interest tokens); decoder: causal item tokens attend to memory;
                 s_u = decoder output at the last item;
- fusion         w_m = softmax_m(beta * s_m), score = sum_m w_m s_m, s_m = cos(s_u, e_i^m);
- losses         L_si (sequence-item InfoNCE), L_ss (two item-drop views), L_reg (interest
                 diversity: mean pairwise cosine similarity of a sequence's memory tokens).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from missrec_recbole.interests import DPCKNNState, dpc_knn, n_interests, nearest_center
from missrec_recbole.model.base import (FeatureSequentialRecommender, MoEAdapter, evaluating, rows_in_buckets,
                                         take_rows)

MODALITY_INDEX = {"text": 0, "image": 1}


def distinct_per_row(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Deduplicate each row of ``ids`` (negative = padding), vectorised over the batch.

    Returns ``(distinct, mask)``: [B, K_max] ids sorted ascending per row, padded with -1, and a
    mask of the real entries. Deduplication removes the imbalance between frequent and rare
    interests (paper, interest-aware encoding).
    """
    big = torch.iinfo(ids.dtype).max
    ordered, _ = torch.sort(torch.where(ids < 0, big, ids), dim=1)
    is_new = ordered != big
    is_new[:, 1:] &= ordered[:, 1:] != ordered[:, :-1]
    slot = torch.cumsum(is_new, dim=1) - 1
    width = max(int(is_new.sum(dim=1).max()), 1)
    distinct = ids.new_full((ids.shape[0], width + 1), -1)
    # entries that are not new all go to the spare last column, which is cut off afterwards
    distinct.scatter_(1, torch.where(is_new, slot, width), torch.where(is_new, ordered, -1))
    distinct = distinct[:, :width]
    return distinct, distinct >= 0


class MISSRec(FeatureSequentialRecommender):
    """MISSRec for RecBole. Needs a :class:`~missrec_recbole.data.MISSRecDataset`."""

    # trained when fine-tuning from a checkpoint: adapters, beta, input LayerNorm, ID embedding
    FINETUNE_TRAINABLE = ("adapters.", "fusion_beta", "input_layer_norm.", "item_embedding.")
    ITEM_MODULES = ("adapters", "item_embedding")  # what the candidate vectors are computed from
    # what `unfreeze` may train as well (partial fine-tuning)
    UNFREEZABLE = ("position_embedding", "interest_encoder", "item_decoder")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.gamma = config["gamma"]
        self.interest_ratio = config["interest_ratio"]
        self.dpc_k = config["dpc_k"]
        # threads of the DPC-KNN call only (option name historical, docs/design.md §4); null: torch's thread count
        self.dpc_threads = config["faiss_threads"] or torch.get_num_threads()
        self.dpc_mode = config["dpc_mode"]
        self.dpc_exact_max_tokens = config["dpc_exact_max_tokens"]
        self.dpc_warm_start = config["dpc_warm_start"]
        self._dpc_state = None  # approximate-mode IVF quantizer of the last refresh (see other_parameter)
        self._row_stores = {}  # name -> storage with spare rows that a growing catalogue appends into
        self.shared_item_tokens = config["shared_item_tokens"]
        self._step_tokens = None  # (item -> row, {m: adapter outputs}) of the training step, see _item_tokens_of_step
        self._reset_interest_map()

    def _build_item_adapters(self, config, dataset):
        self.modalities = list(dataset.modalities)
        # Frozen features and presence masks, in RecBole's internal item order (not saved: dataset-specific).
        for m in self.modalities:
            self.register_buffer(f"{m}_features", dataset.features[m], persistent=False)
            self.register_buffer(f"{m}_present", dataset.present[m], persistent=False)
        self.adapters = nn.ModuleDict({m: self._adapter(config, config[f"{m}_dim"]) for m in self.modalities})
        self.adapter_dropout = nn.Dropout(config["adaptor_dropout_prob"])

    def _build_sequence_encoder(self, config):
        self.item_fusion = config["item_fusion"]
        self.modality_embedding = nn.Embedding(2, self.hidden_size) if self.item_fusion == "stack" else None
        self.input_layer_norm = nn.LayerNorm(self.hidden_size, eps=config["layer_norm_eps"])
        self.input_dropout = nn.Dropout(config["hidden_dropout_prob"])
        layer_args = dict(d_model=self.hidden_size, nhead=config["n_heads"], dim_feedforward=config["inner_size"],
                          dropout=config["hidden_dropout_prob"], activation=config["hidden_act"],
                          layer_norm_eps=config["layer_norm_eps"], batch_first=True)
        n_encoder = config["n_layers"] // 2  # n_layers >= 2 (the schema's limit for MISSRec): one of each at least
        self.interest_encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(**layer_args), n_encoder,
                                                      enable_nested_tensor=False)
        self.item_decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer_args),
                                                  config["n_layers"] - n_encoder)
        self.fusion_beta = nn.Parameter(torch.tensor(float(config["fusion_beta"])))

    def _adapter(self, config, feature_dim: int) -> nn.Module:
        """One modality's adapter: linear (the paper) or UniSRec's MoE of whitening experts (``item_adapter: moe``).
        Its dropout is ``adapter_dropout``, applied outside so that interest refreshes see no dropout."""
        if config["item_adapter"] == "moe":
            return MoEAdapter(feature_dim, self.hidden_size, config["n_exps"], 0.0, config["gating_noise"])
        return nn.Linear(feature_dim, self.hidden_size)

    # ------------------------------------------------------------------ item tokens
    def _features(self, m):
        return getattr(self, f"{m}_features")

    def _present(self, m):
        return getattr(self, f"{m}_present")

    def modality_tokens(self, items: torch.Tensor, m: str) -> torch.Tensor:
        """Adapter output e_i^m for item ids of any shape (computed once per distinct item)."""
        distinct, inverse = torch.unique(items, return_inverse=True)
        return take_rows(self._adapted(distinct, m), inverse)

    def _adapted(self, items: torch.Tensor, m: str) -> torch.Tensor:
        """e^m of each of ``items`` [n] (adapter dropout in training): read from the training step's shared pass
        when there is one (``shared_item_tokens``), else one adapter call over these rows."""
        if self._step_tokens is not None:
            row, tokens = self._step_tokens
            return take_rows(tokens[m], row[items])
        return rows_in_buckets(self.adapters[m], self.adapter_dropout(self._features(m)[items]))

    @contextmanager
    def _item_tokens_of_step(self, interaction):
        """With ``shared_item_tokens`` (an approximate speed option): the adapters run once per training step, over
        every item the step reads (:meth:`_step_items`), and the sequences, their augmented views, the interest
        centers and the candidates all read those outputs: one adapter dropout draw per item and step instead of
        one per use. Without it every use runs the adapters itself (the exact default)."""
        if not (self.shared_item_tokens and self.training):
            yield
            return
        items = self._step_items(interaction)
        row = torch.zeros(self.n_items, dtype=torch.long, device=items.device)
        row[items] = torch.arange(len(items), device=items.device)
        self._step_tokens = row, {m: self._adapted(items, m) for m in self.modalities}
        try:
            yield
        finally:
            self._step_tokens = None

    def _step_items(self, interaction) -> torch.Tensor:
        """Every item a training step reads item tokens of: all items with ``loss_candidates: all``; else the
        sequences' items (their views drop some), the targets and the center items of the sequences' interests."""
        if self.loss_candidates == "all":
            return torch.arange(self.n_items, device=self.device)
        self.ensure_interest_map()
        item_seq = interaction[self.ITEM_SEQ]
        interests = self.item_interest[item_seq].flatten()
        centers = self.center_item[interests[interests >= 0]]
        return torch.unique(torch.cat([item_seq.flatten(), interaction[self.POS_ITEM_ID], centers]))

    def present(self, items: torch.Tensor) -> torch.Tensor:
        """[..., M] bool: which modalities each item has (padding has none)."""
        return torch.stack([self._present(m)[items] for m in self.modalities], dim=-1)

    def item_tokens(self, items: torch.Tensor,
                    modality_tokens: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-modality tokens [..., M, d] (absent modalities zeroed; + ID in transductive mode) and presence.
        ``modality_tokens``: the adapter outputs of ``items`` ({m: [..., d]}), if already computed."""
        present = self.present(items)
        tokens = torch.stack([self.modality_tokens(items, m) if modality_tokens is None else modality_tokens[m]
                              for m in self.modalities], dim=-2)
        tokens = tokens * present.unsqueeze(-1)
        return tokens, present

    def _id_embedding(self, items):
        return self.item_embedding(items) if self.transductive else 0.0

    # ------------------------------------------------------------------ interests
    def _reset_interest_map(self):
        self.center_item = torch.zeros(0, dtype=torch.long)
        self.center_modality = torch.zeros(0, dtype=torch.long)
        self.item_interest = torch.zeros(0, dtype=torch.long)

    def other_parameter(self):
        """The interest map goes into RecBole's checkpoints, so a reloaded best model uses its own map;
        so does the approximate mode's warm-start quantizer, so a resumed run refreshes exactly as an
        uninterrupted one."""
        state = self._dpc_state
        centroids = None if state is None else state.centroids
        return {"center_item": self.center_item, "center_modality": self.center_modality,
                "item_interest": self.item_interest,
                "dpc_centroids": torch.zeros(0) if centroids is None else torch.from_numpy(centroids),
                "dpc_refreshes": torch.tensor(0 if state is None else state.refreshes)}

    def load_other_parameter(self, para):
        if para:
            device = self.device
            for key in ("center_item", "center_modality", "item_interest"):
                setattr(self, key, para[key].to(device))
            if "dpc_refreshes" in para:  # absent in checkpoints written before it was saved
                centroids = para["dpc_centroids"].cpu().numpy()
                refreshes = int(para["dpc_refreshes"])
                self._dpc_state = DPCKNNState(centroids=centroids if centroids.size else None,
                                              refreshes=refreshes) if refreshes else None

    def _apply(self, fn, recurse=True):
        """``.to()``/``.cuda()``/``.cpu()`` move the interest map as well: it is kept in plain attributes (its shape
        changes at every refresh; checkpoints carry it through ``other_parameter``), which Module does not move."""
        super()._apply(fn, recurse)  # also drops the cached item vectors
        self._row_stores = {}  # the buffers are new tensors now; the old storages would only hold memory
        for key in ("center_item", "center_modality", "item_interest"):
            setattr(self, key, fn(getattr(self, key)))
        return self

    @property
    def has_interest_map(self) -> bool:
        return self.item_interest.shape[0] == self.n_items

    def ensure_interest_map(self) -> None:
        """Discover the interests now if the model has no map for its items yet (a new model's first use)."""
        if not self.has_interest_map:
            self.refresh_interests()

    @torch.no_grad()
    def refresh_interests(self) -> dict:
        """Run DPC-KNN over every present text/image token of every item; store item -> interest.

        K = ceil(interest_ratio * N) for N tokens. Uses the current adapters without dropout.
        ``dpc_mode`` / ``dpc_exact_max_tokens`` choose exact or approximate DPC-KNN, ``faiss_threads``
        its threads (during the call only). With ``dpc_warm_start`` the approximate mode starts its IVF quantizer from the
        previous refresh's (saved with the interest map, so a resumed run continues from it too): a
        fixed seed gives the same interests for the same sequence of refreshes.
        Returns a small summary (tokens, interests, mode) for logging.
        """
        device = self.device
        tokens, owner_item, owner_modality = [], [], []
        with evaluating(self):
            for m in self.modalities:
                items = torch.nonzero(self._present(m)).squeeze(1)
                tokens.append(self.adapters[m](self._features(m)[items]))
                owner_item.append(items)
                owner_modality.append(torch.full_like(items, self.modalities.index(m)))
        owner_item, owner_modality = torch.cat(owner_item), torch.cat(owner_modality)
        points = torch.cat(tokens).float().cpu().numpy()
        result = dpc_knn(points, n_interests(len(points), self.interest_ratio), k=self.dpc_k,
                         n_threads=self.dpc_threads, mode=self.dpc_mode,
                         exact_max_tokens=self.dpc_exact_max_tokens,
                         state=self._dpc_state if self.dpc_warm_start else None)
        self._dpc_state = result.state if self.dpc_warm_start else None
        centers = torch.from_numpy(result.centers).to(device)
        self.center_item = owner_item[centers]
        self.center_modality = owner_modality[centers]
        item_interest = torch.full((self.n_items, len(self.modalities)), -1, dtype=torch.long, device=device)
        item_interest[owner_item, owner_modality] = torch.from_numpy(result.assignment).to(device)
        self.item_interest = item_interest
        return {"tokens": len(points), "interests": len(centers), "mode": result.mode}

    def _center_token_vectors(self, interests: torch.Tensor) -> torch.Tensor:
        """Token e^m of the center item of each interest in ``interests`` [n] -> [n, d]."""
        items, modality = self.center_item[interests], self.center_modality[interests]
        tokens = torch.zeros(len(interests), self.hidden_size, device=interests.device)
        for index, m in enumerate(self.modalities):
            chosen = modality == index
            if chosen.any():
                tokens[chosen] = self._adapted(items[chosen], m).to(tokens.dtype)  # a lower precision under autocast
        return tokens

    def interest_tokens(self, item_seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Distinct interest tokens of each sequence [B, K_max, d] and their mask."""
        self.ensure_interest_map()
        ids, mask = distinct_per_row(self.item_interest[item_seq].flatten(1))
        interests, inverse = torch.unique(ids.clamp(min=0), return_inverse=True)
        return take_rows(self._center_token_vectors(interests), inverse) * mask.unsqueeze(-1), mask

    # ------------------------------------------------------------------ growing the catalogue
    @torch.no_grad()
    def adapter_tokens(self, features: dict) -> dict:
        """Adapter outputs e^m = W_m x^m + b_m (no dropout) of every row of new items' ``features`` {m: [n, dim_m]},
        on the model's device: computed once by ``add_items`` for both :meth:`assign_interests` (its present rows)
        and the cached item vectors of :meth:`append_items` (one call over the same rows as :meth:`modality_tokens`
        makes for the new items, so the same values)."""
        with evaluating(self):
            return {m: rows_in_buckets(self.adapters[m], features[m].to(self.device)) for m in self.modalities}

    @torch.no_grad()
    def assign_interests(self, features: dict, present: dict, tokens: dict | None = None) -> torch.Tensor:
        """Interests of new items' modality tokens [n, M] (-1 = absent), centers kept fixed.

        Each present token e^m = W_m x^m + b_m (no dropout) goes to its nearest existing center, the
        rule DPC-KNN uses for every token: existing items keep their interests, so scores of histories
        without new items do not change (``refresh_interests`` would re-cluster everything).
        ``tokens``: the :meth:`adapter_tokens` of ``features``, if already computed.
        """
        device = self.device
        n = len(next(iter(present.values())))
        result = torch.full((n, len(self.modalities)), -1, dtype=torch.long, device=device)
        if n == 0:
            return result
        with evaluating(self):
            centers = self._center_token_vectors(torch.arange(len(self.center_item), device=device))
            for index, m in enumerate(self.modalities):
                rows = torch.nonzero(present[m].to(device)).squeeze(1)
                if len(rows):
                    chosen = (self.adapters[m](features[m][rows.cpu()].to(device)) if tokens is None
                              else tokens[m] if len(rows) == n else tokens[m][rows])
                    result[rows, index] = nearest_center(chosen, centers).to(device)
        return result

    @torch.no_grad()
    def append_items(self, features: dict, present: dict, interests: torch.Tensor,
                     tokens: dict | None = None) -> torch.Tensor:
        """Append items after the last internal id; returns their ids.

        ``features`` [n, dim_m] and ``present`` [n] per modality, ``interests`` [n, M] (see
        :meth:`assign_interests`), ``tokens`` their :meth:`adapter_tokens` if already computed. Transductive
        mode: new items get zero ID embeddings, i.e. they are scored from their features only.
        """
        if not self.has_interest_map:
            raise RuntimeError("append_items needs the interest map (call refresh_interests first)")
        device = self.device
        # in eval mode the old items' vectors are built now if they are not cached yet, so that the new ones are
        # appended to them: otherwise the next call would compute the whole grown catalogue's (47 s at 1M items)
        cached = None if self.training else self.candidate_tokens()
        n_old, n_new = self.n_items, len(interests)
        for m in self.modalities:
            for name, rows in ((f"{m}_features", features[m]), (f"{m}_present", present[m])):
                setattr(self, name, self._append_rows(name, getattr(self, name), rows.to(device)))
        self.item_interest = self._append_rows("item_interest", self.item_interest, interests.to(device))
        if self.transductive:
            old = self.item_embedding
            grown = nn.Embedding(n_old + n_new, old.embedding_dim, padding_idx=0).to(device)
            grown.weight.data.zero_()
            grown.weight.data[:n_old] = old.weight.data
            grown.weight.requires_grad = old.weight.requires_grad
            self.item_embedding = grown
        self.n_items = n_old + n_new
        new_items = torch.arange(n_old, n_old + n_new, device=device)
        self._extend_item_cache(cached, new_items, tokens)
        return new_items

    def _append_rows(self, name: str, current: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``torch.cat([current, rows])``, in amortised linear time: the rows go into a storage kept with spare
        capacity (doubled when full), and the result is a view of it. Catalogues that grow by many ``add_items``
        calls would otherwise copy every earlier row at every call (quadratic; at 1M items in 100k steps ~36 GB
        copied). The spare rows are never written before use, so they cost address space, not memory."""
        n, extra = len(current), len(rows)
        store, used = self._row_stores.get(name, (None, 0))
        # reuse only the storage ``current`` is the filled start of (not a tensor replaced or moved since)
        if (store is None or used != n or store.data_ptr() != current.data_ptr() or len(store) < n + extra
                or store.dtype != current.dtype or store.device != current.device):
            store = current.new_empty((max(n + extra, 2 * n), *current.shape[1:]))
            store[:n] = current
        store[n:n + extra] = rows
        self._row_stores[name] = (store, n + extra)
        return store[:n + extra]

    # ------------------------------------------------------------------ encoder-decoder
    def _input(self, tokens):
        return self.input_dropout(self.input_layer_norm(tokens))

    def _sequence_tokens(self, item_seq, item_seq_len):
        """Decoder inputs: one token per item ("add") or per present modality ("stack")."""
        positions = torch.arange(item_seq.shape[1], device=item_seq.device).expand_as(item_seq)
        tokens, present = self.item_tokens(item_seq)
        if self.item_fusion == "add":
            fused = tokens.sum(dim=-2) + self._id_embedding(item_seq) + self.position_embedding(positions)
            return fused, item_seq_len
        batch, length, n_mod, _ = tokens.shape
        modality_ids = torch.tensor([MODALITY_INDEX[m] for m in self.modalities], device=item_seq.device)
        stacked = (tokens + self.modality_embedding(modality_ids)
                   + (self._id_embedding(item_seq) + self.position_embedding(positions)).unsqueeze(-2))
        stacked = stacked.reshape(batch, length * n_mod, -1)
        valid = (present & (positions < item_seq_len[:, None]).unsqueeze(-1)).reshape(batch, -1)
        order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)
        stacked = torch.gather(stacked, 1, order.unsqueeze(-1).expand_as(stacked))
        return stacked, valid.sum(dim=1)

    def _decode_last(self, tokens, lengths, memory, memory_padding):
        """Causal decoder output at each sequence's last token, [B, d].

        Equal to running ``self.item_decoder`` with a causal mask and taking the last valid
        position, but the last layer computes only that one query: with causal attention the
        last token attends to exactly the valid tokens, so the other L-1 queries are not needed.
        """
        length = tokens.shape[1]
        padding = torch.arange(length, device=tokens.device)[None, :] >= lengths[:, None]
        *lower, last = self.item_decoder.layers
        if lower:
            causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=tokens.device), diagonal=1)
            for layer in lower:
                tokens = layer(tokens, memory, tgt_mask=causal, tgt_key_padding_mask=padding,
                               memory_key_padding_mask=memory_padding)
        query = self.gather_indexes(tokens, (lengths - 1).clamp(min=0)).unsqueeze(1)
        attended = last.self_attn(query, tokens, tokens, key_padding_mask=padding, need_weights=False)[0]
        x = last.norm1(query + last.dropout1(attended))
        attended = last.multihead_attn(x, memory, memory, key_padding_mask=memory_padding, need_weights=False)[0]
        x = last.norm2(x + last.dropout2(attended))
        x = last.norm3(x + last.dropout3(last.linear2(last.dropout(last.activation(last.linear1(x))))))
        return x.squeeze(1)

    def _forward_dense(self, item_seq, item_seq_len):
        """One padded block: s_u [B, d], plus the memory tokens and their mask (for L_reg)."""
        interests, interest_mask = self.interest_tokens(item_seq)
        memory = self.interest_encoder(self._input(interests), src_key_padding_mask=~interest_mask)
        tokens, lengths = self._sequence_tokens(item_seq, item_seq_len)
        return self._decode_last(self._input(tokens), lengths, memory, ~interest_mask), memory, interest_mask

    def forward(self, item_seq, item_seq_len):
        """Sequence representation s_u [B, d]."""
        return self.encode(item_seq, item_seq_len)[0]

    def encode(self, item_seq, item_seq_len, with_diversity: bool = False):
        """(s_u [B, d], L_reg or None): with ``with_diversity`` (pre-training) also L_reg, the pair-weighted mean
        similarity of the memory tokens. Rows are processed in length buckets (exactly the same result as one padded
        block: every row is computed independently of the others)."""
        seq_output = item_seq.new_zeros(len(item_seq), self.hidden_size, dtype=torch.float)
        similarity_sum, pairs = seq_output.new_zeros(()), 0
        for rows in self._row_groups(item_seq_len):
            width = int(item_seq_len[rows].max())
            output, memory, mask = self._run_rows(self._forward_dense, item_seq[rows, :width], item_seq_len[rows])
            seq_output = seq_output.index_put((rows,), output.to(seq_output.dtype))  # (autocast: any precision)
            if with_diversity:
                bucket_sum, bucket_pairs = self.interest_similarity(memory, mask)
                similarity_sum, pairs = similarity_sum + bucket_sum, pairs + bucket_pairs
        return seq_output, (similarity_sum / max(pairs, 1) if with_diversity else None)

    # ------------------------------------------------------------------ scores
    def candidate_tokens(self, items=None):
        """Normalised per-modality candidate vectors [N, M, d] and presence [N, M]; all items if None.

        In eval mode the all-items result is cached until the catalogue or the weights change (a switch to
        training, ``load_state_dict``, ``.to()``, or any in-place update of an item weight, seen through the
        tensors' version counters): serving computes the item vectors once, not per call."""
        if items is not None:
            return self._candidate_tokens(items)
        cached = self._cached_items()
        if cached is not None:
            return cached
        result = self._candidate_tokens(torch.arange(self.n_items, device=self.device))
        self._keep_items(result)
        return result

    def _candidate_tokens(self, items, modality_tokens: dict | None = None):
        """``modality_tokens``: the adapter outputs of ``items`` ({m: [n, d]}), if already computed."""
        tokens, present = self.item_tokens(items, modality_tokens)
        if self.transductive:
            tokens = tokens + self.item_embedding(items).unsqueeze(-2) * present.unsqueeze(-1)
        return F.normalize(tokens, dim=-1), present

    def _extend_item_cache(self, cached, new_items: torch.Tensor, modality_tokens: dict | None = None) -> None:
        """After ``append_items``: the vectors of the old items do not change (their weights are kept, copied
        into a grown ID embedding), so a cache valid before it only needs the new items' vectors appended."""
        self._item_cache = None
        if cached is None or self.training:
            return
        tokens, present = self._candidate_tokens(new_items, modality_tokens)
        self._keep_items((self._append_rows("cached_tokens", cached[0], tokens),
                          self._append_rows("cached_present", cached[1], present)))

    def fused_scores(self, seq_output, candidates, present, pairwise=False):
        """Dynamic user-adaptive fusion: sum_m softmax_m(beta * s_m) * s_m over present modalities.

        ``pairwise=False``: scores of every sequence against every candidate, [B, N].
        ``pairwise=True``: candidate b for sequence b only, [B].
        """
        return self.fuse(*self.modality_scores(seq_output, candidates, present, pairwise))

    def modality_scores(self, seq_output, candidates, present, pairwise=False):
        """The per-modality matching scores s_m = cos(s_u, e^m) [B, N, M] ([B, M] pairwise) and where the
        modality is present (same shape); :meth:`fuse` turns them into :meth:`fused_scores`."""
        seq = F.normalize(seq_output, dim=-1)
        if pairwise:
            return torch.einsum("bd,bmd->bm", seq, candidates), present
        per_modality = torch.einsum("bd,nmd->bnm", seq, candidates)
        return per_modality, present.unsqueeze(0).expand_as(per_modality)

    def fuse(self, per_modality, mask):
        """Fused scores from :meth:`modality_scores`, row by row: fusing a subset of the rows gives the same bits
        as fusing all of them and taking the subset (the predictor's certified top-k relies on it)."""
        if per_modality.shape[-1] == 1:
            return self._single_modality_scores(per_modality, mask)
        return self._softmax_fusion(per_modality, mask)

    def _softmax_fusion(self, per_modality, mask):
        logits = (self.fusion_beta * per_modality).masked_fill(~mask, float("-inf"))
        weights = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # items with no modality score 0
        return (weights * per_modality).sum(dim=-1)

    def _single_modality_scores(self, per_modality, mask):
        """:meth:`_softmax_fusion` with one modality, bit for bit and without the [B, N] softmax pass: the weight of
        a present item is exactly 1 (0 without the modality) and beta's gradient exactly 0. Adding ``0 * beta``
        keeps beta in the graph with that zero gradient, so the optimizer and DDP see it as before."""
        scores = per_modality.squeeze(-1).masked_fill(~mask.squeeze(-1), 0.0)
        return scores + 0.0 * self.fusion_beta

    # ------------------------------------------------------------------ losses
    def sequence_item_loss(self, seq_output, pos_items):
        """L_si: InfoNCE between s_u and its next item, over all items or the batch's targets."""
        if self.loss_candidates == "all":
            candidates, present = self.candidate_tokens()
            scores = self.fused_scores(seq_output, candidates, present)
            return self.all_items_loss(scores / self.temperature, pos_items)
        candidates, present = self.candidate_tokens(pos_items)
        scores = self.fused_scores(seq_output, candidates, present)
        return self.in_batch_loss(scores / self.temperature, pos_items)

    def sequence_sequence_loss(self, item_seq, item_seq_len):
        """L_ss: symmetric InfoNCE between two item-drop views of each sequence."""
        views = [F.normalize(self.forward(*self._item_drop(item_seq, item_seq_len)), dim=-1) for _ in range(2)]
        logits = views[0] @ views[1].T
        tau = self.temperature
        return (self.contrastive_loss(logits / tau) + self.contrastive_loss(logits.T / tau)) / 2

    @staticmethod
    def interest_similarity(memory, mask):
        """Sum and count of pairwise cosine similarities between a sequence's distinct memory tokens.

        L_reg = sum / count over the batch: pushing a sequence's interests apart keeps them diverse.
        """
        normed = F.normalize(memory, dim=-1)
        similarity = normed @ normed.transpose(1, 2)
        pairs = mask[:, :, None] & mask[:, None, :]
        pairs &= ~torch.eye(mask.shape[1], dtype=torch.bool, device=mask.device)
        return similarity[pairs].sum(), int(pairs.sum())

    def calculate_loss(self, interaction):
        """Pre-training: L_si + lambda L_ss + gamma L_reg; fine-tuning: L_si."""
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        pretraining = self.stage == "pretrain"
        with self._item_tokens_of_step(interaction):
            seq_output, loss_reg = self.encode(item_seq, item_seq_len, with_diversity=pretraining)
            loss_si = self.sequence_item_loss(seq_output, interaction[self.POS_ITEM_ID])
            if not pretraining:
                return loss_si
            loss_ss = self.sequence_sequence_loss(item_seq, item_seq_len)
        return loss_si, self.lam * loss_ss, self.gamma * loss_reg

    # ------------------------------------------------------------------ inference
    def predict(self, interaction):
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        candidates, present = self.candidate_tokens(interaction[self.ITEM_ID])
        return self.fused_scores(seq_output, candidates, present, pairwise=True)

    def full_sort_predict(self, interaction):
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        candidates, present = self.candidate_tokens()
        return self.fused_scores(seq_output, candidates, present)
