"""UniSRec baseline (Hou et al., KDD 2022, "Towards Universal Sequence Representation Learning for
Recommender Systems"), written from the paper for RecBole and this package's datasets.

Notation as in the paper: x_i = frozen text feature of item i (here the dataset's ``text`` feature
file, e.g. ``NAME.feat1CLS``), G experts, d = hidden size, tau = temperature.

- parametric whitening     x~_i^(k) = (x_i - b^(k)) W_1^(k)                       (per expert k)
- MoE-enhanced adapter     v_i = sum_k g_k x~_i^(k),  g = Softmax(x_i W_2 + delta),
                           delta = E * Softplus(x_i W_3), E ~ N(0, 1) (training only)
- transductive mode        v_i <- v_i + e_i (learned item ID embedding), in sequences and as candidates
- sequence encoder         f_j^0 = v_{i_j} + p_j, LayerNorm + dropout, then a causal (SASRec-style)
                           Transformer; s = output at the last position
- scores                   cos(s, v_i) / tau
- pre-training             L_PT = l_SI + lambda * l_SS:
                           l_SI = -log exp(s_j.v_j/tau) / sum_{j' in batch} exp(s_j.v_j'/tau)
                           l_SS = -log exp(s_j.s~_j/tau) / sum_{j' in batch} exp(s_j.s~_j'/tau),
                           s~ = an augmented view of the sequence (item drop, or item-level feature
                           dropout standing in for the paper's word drop: the text features are frozen)
- fine-tuning              l = -log softmax over all items of cos(s, v_i) / tau
- parameter-efficient fine-tuning: freeze everything but the MoE adapter (+ ID embedding when
  transductive); see :meth:`UniSRec.freeze_for_finetune`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.layers import TransformerEncoder

from missrec_recbole.config_schema import ConfigError
from missrec_recbole.model.base import FeatureSequentialRecommender, MoEAdapter, take_rows


class UniSRec(FeatureSequentialRecommender):
    """UniSRec for RecBole. Needs a :class:`~missrec_recbole.data.MISSRecDataset` with a ``text`` modality."""

    # parameter-efficient fine-tuning (paper): the MoE adapter (+ the ID embedding when transductive) trains; the
    # Transformer, position embedding and input LayerNorm stay fixed
    ITEM_MODULES = ("moe_adaptor", "item_embedding")
    FINETUNE_TRAINABLE = ("moe_adaptor.", "item_embedding.")
    UNFREEZABLE = ("position_embedding", "trm_encoder", "LayerNorm")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.item_drop_coefficient = config["item_drop_coefficient"]

    def _build_item_adapters(self, config, dataset):
        if "text" not in dataset.features:  # modalities: ~ leaves them to the files, which the schema cannot see
            raise ConfigError(f"option 'modalities': UniSRec reads text features, {config['dataset']} is loaded with "
                              f"{list(dataset.features)}; set `modalities: [text]` (and give it NAME.<text_suffix>).")
        # frozen features in RecBole's internal item order (row 0 = padding); not saved (dataset-specific)
        self.register_buffer("text_features", dataset.features["text"], persistent=False)
        self.moe_adaptor = MoEAdapter(config["text_dim"], self.hidden_size, config["n_exps"],
                                      config["adaptor_dropout_prob"], config["gating_noise"])

    def _build_sequence_encoder(self, config):
        self.trm_encoder = TransformerEncoder(
            n_layers=config["n_layers"], n_heads=config["n_heads"], hidden_size=self.hidden_size,
            inner_size=config["inner_size"], hidden_dropout_prob=config["hidden_dropout_prob"],
            attn_dropout_prob=config["attn_dropout_prob"], hidden_act=config["hidden_act"],
            layer_norm_eps=config["layer_norm_eps"])
        self.LayerNorm = nn.LayerNorm(self.hidden_size, eps=config["layer_norm_eps"])
        self.dropout = nn.Dropout(config["hidden_dropout_prob"])

    # ------------------------------------------------------------------ items
    def item_representations(self, items=None, feature_drop: float = 0.0) -> torch.Tensor:
        """v_i (+ e_i when transductive) for ``items`` of any shape, or [n_items, d] for all items.

        The adapter runs once per distinct item. ``feature_drop`` > 0 zeroes that fraction of each
        item's feature entries (item-level feature dropout, the L_SS augmentation). All items without feature
        drop are cached in eval mode until the weights or the catalogue change.
        """
        if items is None:
            cached = self._cached_items() if feature_drop == 0 else None
            if cached is not None:
                return cached
            result = self._represent(torch.arange(self.n_items, device=self.device), feature_drop)
            if feature_drop == 0:
                self._keep_items(result)
            return result
        distinct, inverse = torch.unique(items, return_inverse=True)
        return take_rows(self._represent(distinct, feature_drop), inverse)

    def _represent(self, items, feature_drop):
        features = self.text_features[items]
        if feature_drop > 0:
            features = F.dropout(features, feature_drop, training=True)
        reps = self.moe_adaptor(features)
        return reps + self.item_embedding(items) if self.transductive else reps

    # ------------------------------------------------------------------ sequences
    def encode(self, item_seq, item_seq_len, item_reps) -> torch.Tensor:
        """s = Transformer(LayerNorm(v + p)) at the last position; ``item_reps`` [B, L, d] are the v of item_seq.

        Rows are processed in ``length_buckets`` groups of similar length, each cut to its longest
        sequence: the same result as one padded block (padding is at the end and masked, rows are
        independent), much cheaper on short real histories. ``memory_chunk_rows``: see MISSRec.
        """
        output = None
        for rows in self._row_groups(item_seq_len):
            block = self._run_rows(self._encode_block, item_seq[rows], item_seq_len[rows], take_rows(item_reps, rows))
            if output is None:  # the blocks' precision, which autocast may make differ from the items'
                output = block.new_zeros(len(item_seq), self.hidden_size)
            output = output.index_put((rows,), block)
        return output

    def _encode_block(self, item_seq, item_seq_len, item_reps):
        width = max(int(item_seq_len.max()), 1)
        item_seq, item_reps = item_seq[:, :width], item_reps[:, :width]
        positions = torch.arange(width, device=item_seq.device).expand_as(item_seq)
        hidden = self.dropout(self.LayerNorm(item_reps + self.position_embedding(positions)))
        mask = self.get_attention_mask(item_seq)
        output = self.trm_encoder(hidden, mask, output_all_encoded_layers=False)[-1]
        return self.gather_indexes(output, (item_seq_len - 1).clamp(min=0))

    def forward(self, item_seq, item_seq_len, item_table=None):
        """Sequence representation s [B, d]; ``item_table`` = precomputed representations of all items."""
        width = max(int(item_seq_len.max()), 1)
        reps = take_rows(item_table, item_seq[:, :width]) if item_table is not None else self.item_representations(
            item_seq[:, :width])
        return self.encode(item_seq[:, :width], item_seq_len, reps)

    # ------------------------------------------------------------------ losses
    def _logits(self, seq_output, item_reps):
        return F.normalize(seq_output, dim=-1) @ F.normalize(item_reps, dim=-1).T / self.temperature

    def augmented_view(self, item_seq, item_seq_len):
        """s~: per sequence, item drop (probability item_drop_coefficient) or item-level feature dropout.

        Item drop removes each item with probability item_drop_ratio (keeping at least one);
        feature dropout zeroes item_drop_ratio of the feature entries of every item.
        """
        dropped, dropped_len = self._item_drop(item_seq, item_seq_len)
        use_drop = torch.rand(len(item_seq), device=item_seq.device) < self.item_drop_coefficient
        seq = torch.where(use_drop[:, None], dropped, item_seq)
        seq_len = torch.where(use_drop, dropped_len, item_seq_len)
        reps = torch.where(use_drop[:, None, None], self.item_representations(seq),
                           self.item_representations(seq, feature_drop=self.item_drop_ratio))
        return self.encode(seq, seq_len, reps)

    def sequence_item_loss(self, seq_output, pos_items, item_table=None):
        """l_SI: over all items (``loss_candidates: all``) or the batch's targets (``batch``).

        In-batch: other rows with the same target item are not counted as negatives.
        """
        if self.loss_candidates == "all":
            table = item_table if item_table is not None else self.item_representations()
            return self.all_items_loss(self._logits(seq_output, table), pos_items)
        return self.in_batch_loss(self._logits(seq_output, self.item_representations(pos_items)), pos_items)

    def sequence_sequence_loss(self, seq_output, item_seq, item_seq_len):
        """l_SS between each sequence and its augmented view, in-batch negatives."""
        return self.contrastive_loss(self._logits(seq_output, self.augmented_view(item_seq, item_seq_len)))

    def calculate_loss(self, interaction):
        """Pre-training: (l_SI, lambda * l_SS); fine-tuning: l_SI (cross-entropy over all items)."""
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        table = self.item_representations() if self.loss_candidates == "all" else None
        seq_output = self.forward(item_seq, item_seq_len, table)
        loss_si = self.sequence_item_loss(seq_output, interaction[self.POS_ITEM_ID], table)
        if self.stage != "pretrain":
            return loss_si
        return loss_si, self.lam * self.sequence_sequence_loss(seq_output, item_seq, item_seq_len)

    # ------------------------------------------------------------------ inference
    def predict(self, interaction):
        """cos(s, v_i) of each sequence and its candidate item, [B]."""
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        items = self.item_representations(interaction[self.ITEM_ID])
        return (F.normalize(seq_output, dim=-1) * F.normalize(items, dim=-1)).sum(dim=-1)

    def full_sort_predict(self, interaction):
        """cos(s, v_i) against every item, [B, n_items]."""
        table = self.item_representations()
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], table)
        return F.normalize(seq_output, dim=-1) @ F.normalize(table, dim=-1).T
