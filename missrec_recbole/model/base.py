"""The shared base of the feature-based sequential models (MISSRec, UniSRec) and their small building blocks.

Both read frozen item features through adapters, add ID (transductive) and position embeddings, cache all items'
vectors while serving, drop items for the sequence-sequence view, run rows in length buckets (optionally
recomputing activations chunk by chunk), train with the same contrastive losses, freeze all but a few prefixes for
parameter-efficient fine-tuning and transfer every weight but the ID embedding.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch.utils.checkpoint import checkpoint

from missrec_recbole.config_schema import ConfigError


@contextlib.contextmanager
def evaluating(module: nn.Module):
    """``module`` in eval mode for the block (no dropout, no gating noise), then back in the mode it was in, also
    when the block fails: for the no-dropout passes a training run makes (interest refresh, new items' tokens)."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


class FastDropout(nn.Module):
    """Dropout drawing an 8-bit random mask: much faster than ``nn.Dropout`` on CPU, where
    ``bernoulli_`` dominated MISSRec's training time (benchmarks/README.md). ``p`` is rounded to a multiple of 1/256
    and the kept values are scaled with the rounded rate, so the output stays unbiased."""

    def __init__(self, p: float):
        super().__init__()
        self.threshold = min(256, max(0, round(p * 256)))
        self.p = self.threshold / 256

    def forward(self, x):
        if not self.training or self.threshold == 0:
            return x
        if self.threshold == 256:
            return torch.zeros_like(x)
        keep = torch.empty(x.shape, dtype=torch.uint8, device=x.device).random_() >= self.threshold
        return x * keep * (1.0 / (1.0 - self.p))

    def extra_repr(self):
        return f"p={self.p}"


def use_fast_dropout(module: nn.Module) -> None:
    """Replace every ``nn.Dropout`` inside ``module`` (e.g. PyTorch's Transformer layers) by FastDropout."""
    for name, child in module.named_children():
        if isinstance(child, nn.Dropout):
            setattr(module, name, FastDropout(child.p))
        else:
            use_fast_dropout(child)


AUTOCAST_ROW_BUCKET = 256


def rows_in_buckets(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` for a row-wise module; under CPU autocast, ``x`` padded with zero rows to a multiple of
    :data:`AUTOCAST_ROW_BUCKET` and the output cut back. oneDNN builds and keeps a reduced-precision kernel for every
    matrix shape it meets, and the number of distinct items a step feeds the adapters changes every step: unpadded,
    MISSRec's resident memory grew by ~1 GB over an epoch's first 50 steps and the step was ~15% slower
    (benchmarks/README.md). float32 (and CUDA) calls are not padded, so exact runs are untouched."""
    n = x.shape[0]
    padded = -(-n // AUTOCAST_ROW_BUCKET) * AUTOCAST_ROW_BUCKET
    if x.device.type != "cpu" or not torch.is_autocast_enabled("cpu") or padded == n:
        return module(x)
    return module(F.pad(x, (0, 0, 0, padded - n)))[:n]


def take_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[index]`` for a long ``index`` of any shape, with a backward pass that sums repeated rows' gradients in a
    fixed order. On the CPU that is ``index_select`` (its backward, ``index_add_``, sums in index order):
    ``x[index]``'s backward there adds with atomic float additions in whatever order the threads meet once there are
    two or more (different gradients from run to run, and in pre-training's profile ~4x slower than with one,
    benchmarks/README.md); with one thread the two give the same bits. On CUDA it is the reverse (``index_add_``
    uses atomics, advanced indexing sorts the indices), so there it stays ``x[index]``."""
    if x.device.type != "cpu":
        return x[index]
    return x.index_select(0, index.reshape(-1)).view(*index.shape, *x.shape[1:])


def left_align(values: torch.Tensor, keep: torch.Tensor, fill=0) -> tuple[torch.Tensor, torch.Tensor]:
    """Move the kept entries of each row to the front (order preserved); returns (values, lengths)."""
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    aligned = torch.gather(values, 1, order)
    lengths = keep.sum(dim=1)
    positions = torch.arange(values.shape[1], device=values.device)
    aligned = torch.where(positions < lengths[:, None], aligned, values.new_tensor(fill))
    return aligned, lengths


class MoEAdapter(nn.Module):
    """UniSRec's item adapter: parametric whitening per expert + mixture-of-experts gating (UniSRec paper,
    "Universal item representation"; MISSRec with ``item_adapter: moe``).

    Experts are stored as one weight [G, D, d] and bias [G, D] so all G whitenings are one matmul:
    (x - b_k) W_k = x W_k - b_k W_k.
    """

    def __init__(self, feature_dim: int, hidden_size: int, n_experts: int, dropout: float, gating_noise: bool):
        super().__init__()
        self.n_experts, self.hidden_size = n_experts, hidden_size
        self.whitening_bias = nn.Parameter(torch.zeros(n_experts, feature_dim))
        self.whitening_weight = nn.Parameter(torch.empty(n_experts, feature_dim, hidden_size))
        self.gate = nn.Linear(feature_dim, n_experts, bias=False)  # W_2
        self.noise = nn.Linear(feature_dim, n_experts, bias=False) if gating_noise else None  # W_3
        self.dropout = nn.Dropout(dropout)

    def init_whitening(self, std: float) -> None:
        """Normal init of the experts' W_k (the model's ``_init_weights`` covers only Linear and Embedding layers)."""
        nn.init.normal_(self.whitening_weight, std=std)

    def experts(self, x: torch.Tensor) -> torch.Tensor:
        """x~^(k) for every expert: [N, G, d]."""
        weight = self.whitening_weight.transpose(0, 1).reshape(x.shape[-1], -1)  # [D, G*d]
        whitened = (x @ weight).view(-1, self.n_experts, self.hidden_size)
        shift = torch.einsum("gD,gDd->gd", self.whitening_bias, self.whitening_weight)
        # + (-shift) is whitened - shift bit for bit, but its backward reduces the [N, G, d] gradient before
        # negating [G, d], where the subtraction's negates all of [N, G, d] first (same values, less work)
        return whitened + shift.neg()

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """g = Softmax(x W_2 + delta), delta = E * Softplus(x W_3) in training, 0 otherwise: [N, G]."""
        logits = self.gate(x)
        if self.training and self.noise is not None:
            logits = logits + torch.randn_like(logits) * F.softplus(self.noise(x))
        return torch.softmax(logits, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """v = sum_k g_k x~^(k) for features x [N, D] -> [N, d]."""
        x = self.dropout(x)
        return torch.einsum("ng,ngd->nd", self.gates(x), self.experts(x))


class FeatureSequentialRecommender(SequentialRecommender):
    """RecBole sequential model on frozen item features: what MISSRec and UniSRec share (their options, ID and
    position embeddings, initialisation, cached item vectors, length buckets, item drop, losses, freezing).

    ``__init__`` builds the modules in one order, which is the order parameters draw from the random generator and
    appear in ``state_dict`` and the optimizer (checkpoints and resume files depend on it): the subclass's
    :meth:`_build_item_adapters` (feature buffers, adapters), the ID embedding (transductive) and position
    embedding, the subclass's :meth:`_build_sequence_encoder`; then the weights are initialised. Options are read
    as given: the schema (``config_schema``) has checked them. Subclasses set ``ITEM_MODULES`` (the modules the
    item vectors are computed from), ``FINETUNE_TRAINABLE`` (parameter-name prefixes that train when fine-tuning
    from a checkpoint) and ``UNFREEZABLE`` (the further modules the ``unfreeze`` option may train)."""

    input_type = InputType.POINTWISE
    ITEM_MODULES: tuple[str, ...] = ()
    FINETUNE_TRAINABLE: tuple[str, ...] = ()
    UNFREEZABLE: tuple[str, ...] = ()

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self._item_cache = None  # (key, all items' vectors), see _cached_items
        self.transductive = config["mode"] == "transductive"
        self.stage = config["stage"]
        self.hidden_size = config["hidden_size"]
        self.temperature = config["temperature"]
        self.lam = config["lambda"]
        self.item_drop_ratio = config["item_drop_ratio"]
        self.loss_candidates = config["loss_candidates"]
        self.length_buckets = config["length_buckets"]
        self.memory_chunk_rows = config["memory_chunk_rows"]
        self.initializer_range = config["initializer_range"]

        self._build_item_adapters(config, dataset)
        self.item_embedding = (nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
                               if self.transductive else None)
        self.position_embedding = nn.Embedding(self.max_seq_length, self.hidden_size)
        self._build_sequence_encoder(config)

        self.apply(self._init_weights)
        for module in self.modules():
            if isinstance(module, MoEAdapter):
                module.init_whitening(self.initializer_range)
        use_fast_dropout(self)  # same rates, cheaper masks on CPU

    def _build_item_adapters(self, config, dataset) -> None:
        """Register the frozen feature buffers and the modules that turn features into item vectors."""
        raise NotImplementedError

    def _build_sequence_encoder(self, config) -> None:
        """Register the modules that encode a sequence of item vectors."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        """Where the model's parameters live (also after ``model.to(...)``)."""
        return next(self.parameters()).device

    @device.setter
    def device(self, _):
        """RecBole's constructor assigns ``config['device']``; the parameters decide instead."""

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=self.initializer_range)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()
        if isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)

    def _length_buckets(self, item_seq_len):
        """Row groups of similar length. Padding to the batch maximum wastes most of the compute on
        real data (Scientific-mm: mean history 3.7, maximum 35), so each group is cut to its own width."""
        order = torch.argsort(item_seq_len)
        n_buckets = max(1, min(self.length_buckets, len(order) // 16))
        return torch.tensor_split(order, n_buckets)

    def _row_groups(self, item_seq_len):
        """Length buckets; while training with ``memory_chunk_rows``, cut into chunks of at most that many rows."""
        groups = self._length_buckets(item_seq_len)
        if self._recompute_activations():
            groups = [chunk for rows in groups for chunk in torch.split(rows, self.memory_chunk_rows)]
        return groups

    def _recompute_activations(self) -> bool:
        return self.memory_chunk_rows > 0 and self.training and torch.is_grad_enabled()

    def _run_rows(self, function, *inputs):
        """``function(*inputs)`` for one row group; with ``memory_chunk_rows`` its activations are not kept but
        recomputed in the backward pass (``torch.utils.checkpoint``, same dropout masks), so a batch holds one
        chunk's at a time."""
        if self._recompute_activations():
            return checkpoint(function, *inputs, use_reentrant=False)
        return function(*inputs)

    def _item_drop(self, item_seq, item_seq_len):
        """One augmented view: drop items with probability item_drop_ratio (keep >= 1).

        Whole items are dropped, so text, image and ID are dropped at the same positions.
        """
        positions = torch.arange(item_seq.shape[1], device=item_seq.device)
        valid = positions[None, :] < item_seq_len[:, None]
        keep = valid & (torch.rand(item_seq.shape, device=item_seq.device) >= self.item_drop_ratio)
        empty = keep.sum(dim=1) == 0
        keep[empty] = valid[empty] & (positions[None, :] == item_seq_len[empty, None] - 1)
        return left_align(item_seq, keep)

    # ------------------------------------------------------------------ item vectors, cached while serving
    def _item_cache_key(self) -> tuple:
        """What the all-items vectors depend on: the catalogue size and the weights of :attr:`ITEM_MODULES` (version
        counters catch in-place updates such as optimizer steps, data pointers replaced or moved tensors)."""
        modules = [getattr(self, name) for name in self.ITEM_MODULES]
        weights = [w for module in modules if module is not None for w in module.parameters()]
        return (self.n_items, *(w._version for w in weights), *(w.data_ptr() for w in weights))

    def _cached_items(self):
        """The all-items vectors kept by :meth:`_keep_items`, if their weights and catalogue have not changed."""
        cache = self._item_cache
        return cache[1] if cache is not None and cache[0] == self._item_cache_key() else None

    def _keep_items(self, vectors) -> None:
        """Keep the all-items vectors in eval mode (serving computes them once, not per call); not while training."""
        self._item_cache = (self._item_cache_key(), vectors) if not self.training else None

    def train(self, mode=True):
        if mode or self.training:  # parameters may change while training; eval -> eval keeps the item vectors
            self._item_cache = None
        return super().train(mode)

    def load_state_dict(self, state_dict, strict=True, assign=False):
        self._item_cache = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self._item_cache = None  # ``.to()``/``.cpu()``/``.double()``: the vectors are the old tensors
        return self

    # ------------------------------------------------------------------ losses
    @staticmethod
    def contrastive_loss(logits: torch.Tensor) -> torch.Tensor:
        """InfoNCE over [B, B] ``logits`` (already divided by the temperature): row i's positive is column i."""
        return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))

    def in_batch_loss(self, logits: torch.Tensor, pos_items: torch.Tensor) -> torch.Tensor:
        """Sequence-item loss against the batch's targets, [B, B] ``logits`` (divided by the temperature). Other rows
        with the same target item are not counted as negatives: their item is this row's positive too."""
        duplicate = (pos_items[:, None] == pos_items[None, :]) & ~torch.eye(
            len(pos_items), dtype=torch.bool, device=pos_items.device)
        return self.contrastive_loss(logits.masked_fill(duplicate, float("-inf")))

    @staticmethod
    def all_items_loss(logits: torch.Tensor, pos_items: torch.Tensor) -> torch.Tensor:
        """Sequence-item loss against every item, [B, n_items] ``logits`` (divided by the temperature; the padding
        item 0 is masked in place)."""
        logits[:, 0] = float("-inf")
        return F.cross_entropy(logits, pos_items)

    @classmethod
    def check_unfreeze(cls, modules) -> tuple[str, ...]:
        """The ``unfreeze`` option as a tuple, checked against :attr:`UNFREEZABLE` (before anything is built)."""
        modules = tuple(modules or ())
        unknown = [m for m in modules if m not in cls.UNFREEZABLE]
        if unknown:
            raise ConfigError(f"unfreeze: {', '.join(map(repr, unknown))} is not a module of {cls.__name__} that "
                              f"fine-tuning can unfreeze; choose from {', '.join(cls.UNFREEZABLE)}.")
        return modules

    def freeze_for_finetune(self, unfreeze: tuple[str, ...] = ()) -> int:
        """Parameter-efficient fine-tuning: train only adapters, beta, input LayerNorm and ID embedding, plus the
        modules named in ``unfreeze`` (partial fine-tuning, e.g. ``("item_decoder",)``).

        Returns the number of trainable parameters.
        """
        trainable = self.FINETUNE_TRAINABLE + tuple(f"{module}." for module in self.check_unfreeze(unfreeze))
        for name, parameter in self.named_parameters():
            parameter.requires_grad = name.startswith(trainable)
        return self.trainable_parameters()

    def trainable_parameters(self) -> int:
        return int(sum(p.numel() for p in self.parameters() if p.requires_grad))

    def transferable_state_dict(self) -> dict:
        """Weights that do not depend on the dataset's items (everything but the ID embedding)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("item_embedding.")}
