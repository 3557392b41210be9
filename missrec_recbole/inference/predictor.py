"""MISSRecPredictor: recommend from a history of original item ids, add new items, export for serving.

::

    from missrec_recbole.inference import MISSRecPredictor
    rec = MISSRecPredictor.load("saved/MISSRec-Scientific-mm-inductive-....pth", dataset="Scientific-mm",
                                data_path="<datasets>")
    rec.recommend(["B00O47ILVA", "B006ATU73A"], k=10)          # [(original id, score), ...]
    rec.add_items(["NEW1"], text_features=t, image_features=None)  # rankable at once (inductive)
    rec.export("serving/")                                       # vectors + FAISS indexes + manifest

Ids. Histories and results use the dataset's *original* item ids (the first column of
``NAME.item2index``; without that file, the item indices themselves as strings). Internally an id
goes original id -> item index -> RecBole token -> RecBole internal id.

Catalogue. The items RecBole saw in the ``.inter`` files (its vocabulary), then, in inductive mode,
every other item of ``NAME.item2index`` that has features ("unseen" items: never in any interaction,
added from the feature files exactly like :meth:`add_items` does), then the items added with
:meth:`add_items`. In transductive mode unseen items are left out unless ``allow_feature_only=True``
(they have no trained ID embedding). Items without any modality cannot be scored and are never
recommended.

Scores are MISSRec's own full-ranking scores (``MISSRec.full_sort_predict``: dynamic fusion of the
per-modality cosine similarities). Ties are broken by catalogue order (deterministic).
Histories longer than ``MAX_ITEM_LIST_LENGTH`` keep their last items (as in training).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from missrec_recbole.data.atomic_files import feature_path, read_feature_file, read_item_texts
from missrec_recbole.data.atomic_files import read_item2index as read_item2index_file
from missrec_recbole.inference.errors import (CheckpointMismatchError, DuplicateItemError, EmptyHistoryError,
                                              FeatureDimError, FeatureError, InferenceError, ItemIdError,
                                              TransductiveModeError, UnknownItemError)
from missrec_recbole.inference.export import MARGIN, export_predictor
from missrec_recbole.model import MISSRec
from missrec_recbole.quick_start import build_model, check_inputs, checkpoint_config, checkpoint_model
from missrec_recbole.trainer.checkpoint import Checkpoint


def read_item2index(folder: Path, name: str) -> dict[str, int] | None:
    """``original id -> item index`` from ``NAME.item2index`` (None if the file does not exist)."""
    path = Path(folder) / f"{name}.item2index"
    return read_item2index_file(path) if path.is_file() else None


def read_item_text(folder: Path, name: str) -> dict[str, str]:
    """``original id -> text`` from ``NAME.text`` (empty if the file does not exist; the header is optional)."""
    path = Path(folder) / f"{name}.text"
    return read_item_texts(path, require_header=False) if path.is_file() else {}


def _all_finite(matrix: torch.Tensor) -> bool:
    """No NaN/inf, from two reductions (min and max carry any NaN) instead of a mask as large as the matrix."""
    return matrix.numel() == 0 or all(bool(torch.isfinite(v)) for v in torch.aminmax(matrix))


def top_k_stable(scores: torch.Tensor, k: int):
    """Per row of ``scores`` [B, N]: the ``k`` largest (values, column ids) on the host, ties in column order.

    The same result as a stable descending sort cut at ``k``, without sorting all N columns: ``topk`` finds the
    k-th value, and only the columns scoring at least that much (k, or a few more on ties) are sorted."""
    k = min(k, scores.shape[1])
    kth = torch.topk(scores, k, dim=1).values[:, -1:]
    rows, cols = torch.nonzero(scores >= kth, as_tuple=True)  # row-major: columns ascending within a row
    values = scores[rows, cols]
    order = torch.sort(values, descending=True, stable=True).indices
    order = order[torch.sort(rows[order], stable=True).indices]  # group by row, keep score then column order
    rows, cols, values = rows[order].cpu(), cols[order].cpu(), values[order].cpu()
    bounds = torch.searchsorted(rows, torch.arange(len(scores) + 1)).tolist()
    return [(values[a:min(a + k, b)], cols[a:min(a + k, b)]) for a, b in zip(bounds[:-1], bounds[1:])]


CANDIDATES_START = 256  # items fused first per history by recommend (doubled until the top k is certain)


def certified_fused_scores(fuse, per_modality, mask, blocked, k: int, start: int) -> torch.Tensor:
    """The fused scores [B, N] of the items that can be in a row's top ``k``, -inf elsewhere and where ``blocked``:
    :func:`top_k_stable` on it gives what it gives on the fusion of every item, bit for bit.

    ``fuse(per_modality, mask)`` is the model's row-wise fusion of its modality scores [B, N, M]. A fused score is
    a convex combination of the item's present modality scores, so it is at most their maximum (up to rounding:
    :data:`MARGIN`). Only the C items of highest maximum are fused (C = ``start`` first); every other item scores at
    most the C-th maximum, so the top k is certain once the k-th fused score beats it, else C doubles. Fusing all N items (a
    softmax over M values per item) was about a quarter of ``recommend``'s time at a million items."""
    n = per_modality.shape[1]
    if per_modality.shape[-1] == 1 or n <= start:
        return fuse(per_modality, mask).masked_fill(blocked, float("-inf"))
    bound = per_modality.masked_fill(~mask, float("-inf")).amax(dim=-1).masked_fill(blocked, float("-inf"))
    c = start
    while True:
        top_bound, cols = torch.topk(bound, min(c, n), dim=1)
        rows = cols.unsqueeze(-1).expand(-1, -1, per_modality.shape[-1])
        fused = fuse(per_modality.gather(1, rows), mask.gather(1, rows)).masked_fill(blocked.gather(1, cols),
                                                                                    float("-inf"))
        kth = torch.topk(fused, min(k, fused.shape[1]), dim=1).values[:, -1]
        rest = top_bound[:, -1]  # no item outside the C scores more (up to MARGIN)
        if c >= n or bool(((kth > rest + MARGIN) | (rest == float("-inf"))).all()):
            return torch.full_like(bound, float("-inf")).scatter_(1, cols, fused)
        c *= 2


SCORE_MEMORY = 1 << 30  # bytes of score temporaries per scored batch (recommend_batch, score)


class MISSRecPredictor:
    """A trained MISSRec model plus its item catalogue in original ids. Build it with :meth:`load`."""

    def __init__(self, model: MISSRec, config, dataset_name: str, item_ids: list, item_text: dict,
                 model_file=None, known_ids: set | None = None):
        self.model = model.eval()
        self.config = config
        self.dataset_name = dataset_name
        self.model_file = None if model_file is None else str(model_file)
        self._ids = list(item_ids)  # internal id -> original id; [0] is padding (None)
        self._internal = {item: internal for internal, item in enumerate(self._ids) if internal > 0}
        self._known = set(known_ids or ())  # ids of the dataset's item2index (for error messages)
        self.item_text = dict(item_text)
        self.max_length = int(config["MAX_ITEM_LIST_LENGTH"])

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, model_file, dataset: str | None = None, data_path=None, config_dict=None,
             include_unseen: bool | None = None, allow_feature_only: bool = False,
             device=None) -> "MISSRecPredictor":
        """Load a checkpoint for recommendation on ``dataset`` (files in ``data_path/dataset/``).

        ``model_file``: a best-model checkpoint written by training (``result["model_file"]`` of
        ``quick_start.finetune``, ``saved/MISSRec-<dataset>-<mode>-<time>.pth``), which fits only the
        dataset it was trained on, or a pre-trained checkpoint (``save_pretrained``, inductive), which
        is used zero-shot on any dataset with the same feature dims (interests are computed on load).
        ``dataset`` / ``data_path`` default to the checkpoint's. ``config_dict`` overrides config
        values (not the ones that define the model's shapes and mode). ``include_unseen`` (default:
        inductive -> True, transductive -> ``allow_feature_only``) adds the dataset's items that never
        occur in an ``.inter`` file to the catalogue, from their features. ``device``: where the model runs
        (default: the config's, i.e. CUDA when present and ``use_gpu``; see the ``device`` option).

        Raises :class:`CheckpointMismatchError` if the checkpoint does not fit the dataset (other
        dataset, other item count, other dims), ``CheckpointError`` for a missing/unreadable file,
        ``DatasetFormatError`` for bad dataset files.
        """
        checkpoint = Checkpoint.read(model_file)
        pretrained = checkpoint.kind == "pretrained"
        saved_dataset = checkpoint.config.get("dataset")
        dataset = dataset or saved_dataset
        if not pretrained and saved_dataset not in (None, dataset):
            raise CheckpointMismatchError(
                f"{model_file}: checkpoint was trained on dataset {saved_dataset!r}, not {dataset!r}. "
                f"A trained checkpoint fits only its own dataset's items; use -d {saved_dataset} "
                f"(or a pre-trained checkpoint for zero-shot use on another dataset).")
        if checkpoint_model(checkpoint) is not MISSRec:
            raise CheckpointMismatchError(f"{model_file}: a {checkpoint.config['model']} checkpoint; the predictor "
                                          f"serves MISSRec checkpoints.")
        overrides = {"state": "ERROR", "show_progress": False, **(config_dict or {})}
        if data_path is not None:
            overrides["data_path"] = str(data_path)
        config = checkpoint_config(checkpoint, dataset, "finetune", overrides)
        if pretrained and config["mode"] == "transductive":
            raise CheckpointMismatchError(f"{model_file}: a pre-trained checkpoint has no ID embedding; "
                                          f"use it in inductive mode (or fine-tune it first).")
        files = check_inputs(config, start=checkpoint, transferable=pretrained)  # DatasetFormatError, mismatches
        model, dataset_obj, *_ = build_model(config, files, checkpoint, transferable=pretrained, split=False)
        model = model.to(config["device"] if device is None else device).eval()
        model.ensure_interest_map()

        folder = Path(config["data_path"])
        item2index = read_item2index(folder, dataset)
        n_indices = dataset_obj.files.n_items
        if item2index is None:
            index2id = {i: str(i) for i in range(n_indices)}
        else:
            index2id = {index: item for item, index in item2index.items()}
        tokens = dataset_obj.field2id_token[dataset_obj.iid_field]
        item_ids = [None] + [index2id.get(int(token), str(token)) for token in tokens[1:]]
        predictor = cls(model, config, dataset, item_ids, read_item_text(folder, dataset), model_file,
                        known_ids=set(index2id.values()))
        transductive = config["mode"] == "transductive"
        if include_unseen is None:
            include_unseen = (not transductive) or allow_feature_only
        if include_unseen:
            predictor._add_unseen(folder, dataset, config, index2id, tokens, allow_feature_only)
        return predictor

    def _add_unseen(self, folder, name, config, index2id, tokens, allow_feature_only):
        """Add the dataset's items that are in no .inter file (not in RecBole's vocabulary)."""
        seen = {int(t) for t in tokens[1:]}
        unseen = [i for i in sorted(index2id) if i not in seen and index2id[i] not in self._internal]
        if not unseen:
            return
        features = {}
        for m in self.model.modalities:
            matrix = read_feature_file(feature_path(folder, name, config[f"{m}_suffix"]), config[f"{m}_dim"], m)
            features[m] = matrix[unseen]
        has_any = np.zeros(len(unseen), dtype=bool)
        for matrix in features.values():
            has_any |= np.abs(matrix).sum(axis=1) > 0
        keep = np.flatnonzero(has_any)  # items without any feature cannot be scored
        if len(keep):
            self.add_items([index2id[unseen[i]] for i in keep],
                           allow_feature_only=allow_feature_only,
                           **{f"{m}_features": features[m][keep] for m in self.model.modalities})

    # ------------------------------------------------------------------ catalogue
    @property
    def mode(self) -> str:
        return self.config["mode"]

    @property
    def item_ids(self) -> list:
        """Original ids in catalogue order (= row order of :meth:`export`)."""
        return self._ids[1:]

    @property
    def n_items(self) -> int:
        return len(self._ids) - 1

    def __len__(self):
        return self.n_items

    def __contains__(self, item_id) -> bool:
        return str(item_id) in self._internal

    def __repr__(self):
        return (f"MISSRecPredictor(dataset={self.dataset_name!r}, mode={self.mode!r}, items={self.n_items}, "
                f"modalities={self.model.modalities})")

    def text_of(self, item_id) -> str | None:
        return self.item_text.get(str(item_id))

    def internal_ids(self, history) -> list[int]:
        """Internal ids of a history of original ids (validated)."""
        return self._history_ids(history, None)

    def _history_ids(self, history, position) -> list[int]:
        where = "" if position is None else f" (history #{position})"
        if history is None or isinstance(history, (str, bytes)):
            raise InferenceError(f"a history must be a list of item ids, got {type(history).__name__} "
                                 f"{history!r}{where}")
        items = [str(item) for item in history]
        if not items:
            raise EmptyHistoryError(f"empty history{where}: MISSRec needs at least one item id to recommend")
        unknown = [item for item in items if item not in self._internal]
        if unknown:
            unique = list(dict.fromkeys(unknown))
            known_but_absent = [item for item in unique if item in self._known]
            message = f"unknown item id(s){where}: {', '.join(map(repr, unique[:5]))}"
            if len(unique) > 5:
                message += f" and {len(unique) - 5} more"
            if known_but_absent:
                message += (f". {', '.join(map(repr, known_but_absent[:5]))} is in {self.dataset_name}.item2index but "
                            f"not in this model's catalogue (it never occurs in the training data"
                            + ("; load with allow_feature_only=True or add it with add_items(...)"
                               if self.mode == "transductive" else "; add it with add_items(...)") + ")")
            else:
                message += f" (not in {self.dataset_name}'s item ids and not added with add_items)"
            raise UnknownItemError(message)
        return [self._internal[item] for item in items]

    # ------------------------------------------------------------------ scoring
    def _device(self):
        return self.model.device

    def _padded(self, sequences):
        sequences = [s[-self.max_length:] for s in sequences]  # the model sees the last items only
        length = max(len(s) for s in sequences)
        seq = np.zeros((len(sequences), length), dtype=np.int64)  # built on the host, moved once
        for row, s in enumerate(sequences):
            seq[row, :len(s)] = s
        lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
        return torch.from_numpy(seq).to(self._device()), lengths.to(self._device())

    @torch.no_grad()
    def _sequence_output(self, sequences) -> torch.Tensor:
        self.model.eval()
        return self.model.forward(*self._padded(sequences))

    @torch.no_grad()
    def rankable(self) -> torch.Tensor:
        """[n_items + 1] bool over internal ids: not padding and at least one modality present."""
        self.model.eval()
        present = self.model.candidate_tokens()[1].any(dim=-1)  # the cached presence of the item vectors
        present[0] = False
        return present

    def score_batch_size(self) -> int:
        """Histories scored together: up to 256, fewer on large catalogues, so that the fused-score temporaries
        (about six [B, n_items, modalities] float32 tensors) stay within :data:`SCORE_MEMORY` bytes."""
        per_history = 6 * 4 * self.model.n_items * len(self.model.modalities)
        return max(1, min(256, SCORE_MEMORY // per_history))

    @torch.no_grad()
    def score(self, histories, batch_size: int | None = None) -> torch.Tensor:
        """Full fused scores [B, n_items + 1] over internal ids (column 0 = padding), no masking."""
        batch_size = batch_size or self.score_batch_size()
        sequences = [self._history_ids(h, i) for i, h in enumerate(histories)]
        return torch.cat([self._score_ids(sequences[s:s + batch_size])
                          for s in range(0, len(sequences), batch_size)]) if sequences else torch.zeros(0)

    @torch.no_grad()
    def _score_ids(self, sequences) -> torch.Tensor:
        return self.model.fuse(*self._modality_scores(sequences))

    @torch.no_grad()
    def _modality_scores(self, sequences):
        """The model's per-modality scores of ``sequences`` against every item and their presence mask."""
        candidates, present = self.model.candidate_tokens()
        return self.model.modality_scores(self._sequence_output(sequences), candidates, present)

    @torch.no_grad()
    def user_vectors(self, histories, batch_size: int = 256) -> np.ndarray:
        """L2-normalised sequence representations s_u / ||s_u||, float32 [B, d] (the query of :meth:`export`)."""
        sequences = [self._history_ids(h, i) for i, h in enumerate(histories)]
        out = [F.normalize(self._sequence_output(sequences[s:s + batch_size]), dim=-1)
               for s in range(0, len(sequences), batch_size)]
        return torch.cat(out).cpu().numpy().astype(np.float32) if out else np.zeros((0, self.model.hidden_size),
                                                                                    np.float32)

    def recommend(self, history, k: int = 10, exclude_history: bool = True) -> list[tuple[str, float]]:
        """Top-``k`` (original id, score) for one history of original ids (oldest first), best first."""
        self._check_k(k)
        return self._recommend_ids([self._history_ids(history, None)], k, exclude_history, 1)[0]

    @staticmethod
    def _check_k(k):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InferenceError(f"k must be a positive integer, got {k!r}")

    @torch.no_grad()
    def recommend_batch(self, histories, k: int = 10, exclude_history: bool = True,
                        batch_size: int | None = None) -> list[list[tuple[str, float]]]:
        """:meth:`recommend` for many histories (scored ``batch_size`` at a time; default
        :meth:`score_batch_size`)."""
        if isinstance(histories, (str, bytes)):
            raise InferenceError("histories must be a list of histories (lists of item ids)")
        self._check_k(k)
        sequences = [self._history_ids(h, i) for i, h in enumerate(histories)]
        return self._recommend_ids(sequences, k, exclude_history, batch_size or self.score_batch_size())

    @torch.no_grad()
    def _recommend_ids(self, sequences, k, exclude_history, batch_size):
        """Top k of the fused scores (:meth:`score`), fused for the candidates only (:func:`certified_fused_scores`)."""
        rankable = self.rankable()
        results = []
        for start in range(0, len(sequences), batch_size):
            chunk = sequences[start:start + batch_size]
            per_modality, mask = self._modality_scores(chunk)
            blocked = (~rankable).expand(len(chunk), -1).clone()
            if exclude_history:
                for row, seq in enumerate(chunk):
                    blocked[row, seq] = True
            scores = certified_fused_scores(self.model.fuse, per_modality, mask, blocked, k, CANDIDATES_START)
            for values, order in top_k_stable(scores, k):
                finite = torch.isfinite(values)
                results.append([(self._ids[int(i)], float(v)) for i, v in zip(order[finite], values[finite])])
        return results

    # ------------------------------------------------------------------ new items
    def _feature_matrix(self, m, values, n) -> torch.Tensor:
        dim = int(self.config[f"{m}_dim"])
        if values is None:
            return torch.zeros(n, dim)
        try:
            matrix = torch.as_tensor(np.asarray(values, dtype=np.float32))
        except (TypeError, ValueError) as error:  # strings, ragged rows, objects
            raise FeatureError(f"{m}_features must be numbers, a [{n}, {dim}] float array ({error}).") from None
        if matrix.ndim == 1 and n == 1:
            matrix = matrix.unsqueeze(0)
        if matrix.ndim != 2 or matrix.shape[1] != dim:
            raise FeatureDimError(f"{m}_features has shape {tuple(matrix.shape)}, expected ({n}, {dim}): the model "
                                  f"was trained with {m}_dim={dim}. Use the same feature extractor as for training.")
        if matrix.shape[0] != n:
            raise FeatureError(f"{m}_features has {matrix.shape[0]} rows for {n} item ids; give one row per id "
                               f"(an all-zero row = that item has no {m}).")
        if not _all_finite(matrix):
            bad = int(torch.nonzero(~torch.isfinite(matrix).all(dim=1))[0])
            raise FeatureError(f"{m}_features row {bad} contains NaN/inf; use an all-zero row for a missing {m}.")
        return matrix

    @torch.no_grad()
    def add_items(self, ids, text_features=None, image_features=None, allow_feature_only: bool = False) -> list:
        """Make new items rankable now, without training (inductive mode).

        ``ids``: new original ids. ``text_features`` / ``image_features``: [len(ids), text_dim/image_dim]
        raw features from the same extractor as the training data (e.g. CLIP); ``None`` = that modality
        is missing for all new items, an all-zero row = missing for that item. Each item needs at least
        one modality. Interests: each new token joins its nearest existing interest center (see
        :meth:`MISSRec.assign_interests`). Transductive models raise
        :class:`TransductiveModeError` unless ``allow_feature_only=True``: the new items then get a
        zero ID embedding, i.e. they are scored from their features only.
        Returns the ids added.
        """
        if isinstance(ids, (str, bytes)):
            ids = [ids]
        ids = [str(i) for i in ids]
        if not ids:
            return []
        bad = [i for i in ids if not i.strip() or any(c in i for c in "\t\r\n")]
        if bad:
            raise ItemIdError(f"item id {bad[0]!r} is empty or contains a tab or line break; such ids cannot be "
                              f"written to NAME.item2index or exported. Use non-empty ids without tabs/newlines.")
        if self.mode == "transductive" and not allow_feature_only:
            raise TransductiveModeError(
                f"this model is transductive (item ID embedding) and has no embedding for new items "
                f"{', '.join(map(repr, ids[:5]))}; pass allow_feature_only=True to score them from their features "
                f"only, or use an inductive model (--mode=inductive).")
        counts = Counter(ids)
        duplicates = [i for i in counts if i in self._internal or counts[i] > 1]
        if duplicates:
            raise DuplicateItemError(f"item id(s) {', '.join(map(repr, duplicates[:5]))} already in the catalogue "
                                     f"(or given twice): add each new item once.")
        given = {"text": text_features, "image": image_features}
        extra = [m for m, v in given.items() if v is not None and m not in self.model.modalities]
        if extra:
            raise FeatureError(f"{extra[0]}_features given but the model uses modalities {self.model.modalities}.")
        if all(given[m] is None for m in self.model.modalities):
            raise FeatureError(f"add_items needs features of at least one modality of {self.model.modalities}.")
        n = len(ids)
        features = {m: self._feature_matrix(m, given[m], n) for m in self.model.modalities}
        present = {m: (features[m] != 0).any(dim=1) for m in self.model.modalities}
        empty = ~torch.stack(list(present.values())).any(dim=0)
        if empty.any():
            raise FeatureError(f"item {ids[int(torch.nonzero(empty)[0])]!r} has no features (all-zero rows in every "
                               f"modality): it could not be scored.")
        tokens = self.model.adapter_tokens(features)  # once, for the interests and the cached item vectors
        self.model.append_items(features, present, self.model.assign_interests(features, present, tokens), tokens)
        self._internal.update(zip(ids, range(len(self._ids), len(self._ids) + n)))
        self._ids.extend(ids)
        self.model.eval()
        return ids

    # ------------------------------------------------------------------ export
    def item_vectors(self) -> tuple[dict, np.ndarray]:
        """Per-modality candidate vectors {m: float32 [n_items, d]} in catalogue order and presence [n_items, M].

        Exactly what the model scores against: adapter outputs (+ ID embedding in transductive mode),
        L2-normalised; rows of absent modalities are zero.
        """
        with torch.no_grad():
            self.model.eval()
            candidates, present = self.model.candidate_tokens()
        candidates = (candidates * present.unsqueeze(-1))[1:].cpu().numpy().astype(np.float32)
        present = present[1:].cpu().numpy()
        return {m: np.ascontiguousarray(candidates[:, j]) for j, m in enumerate(self.model.modalities)}, present

    def export(self, out_dir, approximate: str | None = None, nprobe: int | None = None) -> Path:
        """Write item vectors, one FAISS index per modality and ``manifest.json``; see :mod:`.export`.
        ``approximate``: ``"ivf"`` or ``"hnsw"`` indexes (fast search, not certified exact) instead of flat ones."""
        return export_predictor(self, out_dir, approximate=approximate, nprobe=nprobe)
