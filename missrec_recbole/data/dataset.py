"""MISSRecDataset: RecBole's SequentialDataset plus frozen per-item modality features.

Files (docs/data.md) in ``<data_path>/<NAME>/``: ``NAME.{train,valid,test}.inter`` with
0-based item indices or, when ``NAME.item2index`` is there, the original ids it maps (read as their indices,
so RecBole sees the same tokens either way), and one raw float32 file per modality (``NAME.<text_suffix>``,
``NAME.<image_suffix>``), row i = item index i. An all-zero row means "modality missing".
Everything is checked before RecBole reads a byte (:func:`validate_dataset`), so bad input fails
with one message naming the file, not with a shape error in the middle of training.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from recbole.data.dataset import SequentialDataset
from recbole.utils import FeatureSource

from missrec_recbole.config_schema import check_config
from missrec_recbole.data.atomic_files import (HISTORY, SPLITS, TARGET, DatasetFormatError, fail, feature_path,
                                               feature_width, inter_path, read_feature_file, read_inter,
                                               read_item2index, read_text)


@dataclass
class DatasetFiles:
    """What :func:`validate_dataset` found: feature matrices indexed by item index."""

    name: str
    folder: Path
    n_items: int
    features: dict[str, np.ndarray]
    n_users: int = 0
    fingerprint: str = ""  # hash of the contents of every file read (resume checks it)
    item_ids: dict[str, int] | None = None  # NAME.item2index when the .inter files hold original ids, else None


def _item_tokens(path: Path, frame: pd.DataFrame, max_length: int) -> tuple[pd.Series, np.ndarray]:
    """Every item token of an .inter file (histories, then targets) and the data row (0-based) it is on."""
    history = frame[HISTORY].str.split()
    lengths = history.map(len).to_numpy()
    if (lengths == 0).any():
        fail(path, f"empty item_id_list on data line {int(np.flatnonzero(lengths == 0)[0]) + 1}",
             "Every row needs at least one history item.")
    if lengths.max(initial=0) > max_length:
        fail(path, f"a history of {lengths.max()} items (data line {int(lengths.argmax()) + 1}) is longer than "
                   f"MAX_ITEM_LIST_LENGTH={max_length}", "Keep the last items only, or raise MAX_ITEM_LIST_LENGTH.")
    exploded = history.explode()
    tokens = pd.concat([exploded, frame[TARGET]], ignore_index=True)
    return tokens, np.concatenate([exploded.index.to_numpy(), frame.index.to_numpy()])


def _index_numbers(tokens: pd.Series) -> tuple[pd.Series, pd.Series]:
    """The tokens as numbers and where they are non-negative integers (item index syntax)."""
    numbers = pd.to_numeric(tokens, errors="coerce")
    return numbers, ~(numbers.isna() | (numbers < 0) | (numbers != numbers.round()))


def _item_indices(path: Path, frame: pd.DataFrame, max_length: int) -> np.ndarray:
    """All item indices of an .inter file without NAME.item2index (history and target), validated as integers."""
    tokens, _ = _item_tokens(path, frame, max_length)
    numbers, integer = _index_numbers(tokens)
    if not integer.all():
        fail(path, f"item token {tokens[~integer].iloc[0]!r} is not a non-negative integer item index",
             "Items must be 0-based indices into the feature files (map ids with NAME.item2index).")
    return numbers.to_numpy(dtype=np.int64)


def _file_line(text: str, row: int) -> int:
    """The line number (1-based, header = line 1) of data row ``row``: pandas skips blank lines, so count them."""
    lines = [number for number, line in enumerate(text.split("\n"), 1) if line.strip()]
    return lines[row + 1]


def _inter_item_kind(path: Path, frame: pd.DataFrame, text: str, max_length: int, n_items: int,
                     item_map: dict | None) -> str | None:
    """What an .inter file's item tokens are: ``"index"`` (0..n_items-1), ``"original"`` (ids of ``item_map``,
    NAME.item2index) or None (every token reads either way: small integer ids). One kind per file; a token that
    is neither fails with its line."""
    tokens, rows = _item_tokens(path, frame, max_length)
    numbers, integer = _index_numbers(tokens)
    in_range = integer & (numbers < n_items)
    known = tokens.isin(item_map.keys()) if item_map else pd.Series(False, index=tokens.index)
    neither = np.flatnonzero(~(in_range | known).to_numpy())
    if neither.size:
        _unknown_item(path, tokens.iloc[neither[0]], _file_line(text, rows[neither[0]]), n_items, item_map,
                      bool(integer.iloc[neither[0]]))
    index_only = np.flatnonzero((in_range & ~known).to_numpy())
    id_only = np.flatnonzero((known & ~in_range).to_numpy())
    if index_only.size and id_only.size:
        first_index, first_id = index_only[0], id_only[0]
        fail(path, f"mixes item indices ({tokens.iloc[first_index]!r}, line {_file_line(text, rows[first_index])}) "
                   f"and original ids of {item_map.name} ({tokens.iloc[first_id]!r}, line "
                   f"{_file_line(text, rows[first_id])})",
             "Write one kind per file: every item as its 0-based index, or every item as its original id.")
    return "original" if id_only.size else "index" if index_only.size else None


def _unknown_item(path: Path, token: str, line: int, n_items: int, item_map, integer: bool) -> None:
    """Fail for an item token that is neither an item index nor an original id of ``item_map``."""
    nor = f" nor an original id of {item_map.name}" if item_map else ""
    if integer:
        fail(path, f"item index {token} is out of range (the dataset has {n_items} items){nor}, line {line}",
             "Fix the index or add the missing feature rows / item2index lines.")
    fail(path, f"item token {token!r} is not a non-negative integer item index{nor}, line {line}",
         "Items must be 0-based indices into the feature files or, with NAME.item2index, the original ids it "
         "lists: add the item to NAME.item2index (and its feature rows) or fix the token.")


class ItemMap(dict):
    """``original id -> item index`` of a NAME.item2index file, with the file's ``name`` for messages."""

    def __init__(self, path: Path):
        super().__init__(read_item2index(path))
        self.name = Path(path).name


def _dataset_item_kind(kinds_by_file: dict[Path, str | None]) -> str:
    """The one kind of item token of a dataset's .inter files; a file whose tokens read either way (small integer
    original ids) follows the others, and is read as item indices, as always, when every file does."""
    kinds = {}
    for path, kind in kinds_by_file.items():
        if kind:
            kinds.setdefault(kind, path)  # the first file of each kind, for the message
    if len(kinds) > 1:
        fail(kinds["original"], f"holds original item ids, but {kinds['index'].name} holds item indices",
             "Write the dataset's .inter files the same way: all with item indices or all with original ids.")
    return next(iter(kinds), "index")


MODALITIES = ("text", "image")


def _feature_rows(folder: Path, name: str, config) -> int:
    """Items the feature files must have a row for: NAME.item2index's lines, else the largest item index + 1."""
    item_map = folder / f"{name}.item2index"
    if item_map.is_file():
        return len(read_item2index(item_map))
    largest = -1
    for split in config["benchmark_filename"]:
        path = inter_path(folder, name, split)
        indices = _item_indices(path, read_inter(path)[0], config["MAX_ITEM_LIST_LENGTH"])
        largest = max(largest, int(indices.max(initial=-1)))
    return largest + 1


def resolve_feature_options(config) -> int:
    """Fill in ``modalities`` and ``{text,image}_dim`` from the dataset's feature files where the config leaves
    them unset (``~``), and check them against the files where it sets them.

    ``modalities: ~`` = every modality whose feature file ``NAME.<suffix>`` exists (a text-only dataset runs
    text-only); ``{m}_dim: ~`` = file size / (4 x items), items = lines of ``NAME.item2index`` (without that file:
    the largest item index + 1). Returns that item count."""
    name, folder = config["dataset"], Path(config["data_path"])
    if not folder.is_dir():
        fail(folder, "dataset folder not found", "Pass --data_path=<folder that contains NAME/>.")
    modalities = config["modalities"]
    if modalities is None:
        modalities = [m for m in MODALITIES if feature_path(folder, name, config[f"{m}_suffix"]).is_file()]
        if not modalities:
            suffixes = " / ".join(f"{name}.{config[f'{m}_suffix']}" for m in MODALITIES)
            fail(folder, f"no feature file ({suffixes})",
                 "Compute features first: python -m missrec_recbole.tools.prepare (see the README).")
        config["modalities"] = modalities
    modalities = modality_names(config)
    for m in modalities:
        path = feature_path(folder, name, config[f"{m}_suffix"])
        if not path.is_file():
            fail(path, "feature file not found", f"Create it, set `{m}_suffix` to the right file suffix, or leave "
                                                 f"{m} out of `modalities`.")
    n_items = _feature_rows(folder, name, config)
    for m in modalities:
        config[f"{m}_dim"] = feature_width(feature_path(folder, name, config[f"{m}_suffix"]), n_items, m,
                                           config[f"{m}_dim"])
    return n_items


def _inter_files(folder, name: str, splits):
    """``(path, frame, text)`` of each ``NAME.<split>.inter`` (:func:`read_inter`)."""
    for split in splits:
        path = inter_path(folder, name, split)
        yield (path, *read_inter(path))


def validate_dataset(config) -> DatasetFiles:
    """Check every file MISSRec reads for dataset ``config['dataset']``; return the feature matrices.
    Fills in ``modalities`` / ``{m}_dim`` left unset in ``config`` (:func:`resolve_feature_options`).

    Raises :class:`DatasetFormatError` naming the file for: a missing, empty, header-only or non-UTF-8
    file, a malformed header or line, a malformed item2index, an item token that is neither an item index
    (0..n-1) nor, with NAME.item2index, one of its original ids, an .inter file mixing the two (or the files of
    one dataset using different kinds), a feature file whose size is not a multiple of the configured dim, a row
    count that differs from the item count, NaN/inf features.
    """
    name = config["dataset"]
    folder = Path(config["data_path"])
    n_items = resolve_feature_options(config)  # each feature file is checked to hold exactly n_items rows
    features = {m: read_feature_file(feature_path(folder, name, config[f"{m}_suffix"]), config[f"{m}_dim"], m)
                for m in config["modalities"]}
    item_map_path = folder / f"{name}.item2index"
    item_map = ItemMap(item_map_path) if item_map_path.is_file() else None
    digest = hashlib.sha256()
    for m in sorted(features):
        digest.update(memoryview(np.ascontiguousarray(features[m])).cast("B"))
    if item_map is not None:
        digest.update(read_text(item_map_path).encode())
    users, kinds = set(), {}
    for path, frame, text in _inter_files(folder, name, config["benchmark_filename"]):
        kinds[path] = _inter_item_kind(path, frame, text, config["MAX_ITEM_LIST_LENGTH"], n_items, item_map)
        users.update(frame["user_id:token"])
        digest.update(text.encode())
    original = _dataset_item_kind(kinds) == "original"
    return DatasetFiles(name=name, folder=folder, n_items=n_items, features=features, n_users=len(users),
                        fingerprint=digest.hexdigest()[:16], item_ids=item_map if original else None)


def dataset_item_ids(folder, name: str, splits=SPLITS) -> dict | None:
    """``NAME.item2index`` when the dataset's .inter files hold original item ids (decided as the loader decides,
    :func:`validate_dataset`), else None (item indices, or no item2index)."""
    map_path = Path(folder) / f"{name}.item2index"
    if not map_path.is_file():
        return None
    item_map = ItemMap(map_path)
    kinds = {path: _inter_item_kind(path, frame, text, sys.maxsize, len(item_map), item_map)
             for path, frame, text in _inter_files(folder, name, splits)}
    return item_map if _dataset_item_kind(kinds) == "original" else None


def indexed_items(frame: pd.DataFrame, item_ids: dict | None) -> pd.DataFrame:
    """``frame`` (the required .inter columns as strings) with its items as item index tokens: original ids mapped
    through ``item_ids`` (:attr:`DatasetFiles.item_ids`); the frame itself when the files hold indices."""
    if item_ids is None:
        return frame
    frame = frame.copy()
    frame[HISTORY] = frame[HISTORY].map(lambda history: " ".join(str(item_ids[i]) for i in history.split()))
    frame[TARGET] = frame[TARGET].map(lambda item: str(item_ids[item]))
    return frame


def read_indexed_inter(files: DatasetFiles, split: str) -> pd.DataFrame:
    """The required columns of a checked dataset's ``NAME.<split>.inter``, items as item index tokens."""
    return indexed_items(read_inter(inter_path(files.folder, files.name, split))[0], files.item_ids)


def modality_names(config) -> list[str]:
    """The config's ``modalities`` (checked by the schema; ``~`` resolved from the files by
    :func:`resolve_feature_options`)."""
    return list(config["modalities"])


class MISSRecDataset(SequentialDataset):
    """Pre-split sequences plus per-modality feature matrices in RecBole's internal item order.

    ``self.features[m]`` is a float32 tensor [item_num, dim_m] whose row ``r`` belongs to the item
    RecBole calls ``r`` (row 0 = padding, zeros); ``self.present[m]`` is True where the item has that
    modality (non-zero row).
    """

    def __init__(self, config, files: DatasetFiles | None = None):
        """``files``: the result of :func:`validate_dataset` for this config, if already checked."""
        check_config(config)  # a Config built by RecBole's own route has not met the schema yet
        self.files = files or validate_dataset(config)
        self.modalities = modality_names(config)
        super().__init__(config)
        self.features, self.present = {}, {}
        for m in self.modalities:
            self.features[m] = self._to_internal_order(self.files.features[m])
            self.present[m] = self.features[m].abs().sum(dim=1) > 0
        self.files.features = {}  # the tensors above are the only copy we keep

    def _load_feat(self, filepath, source):
        """RecBole's reading of an atomic file; original item ids become item index tokens, so RecBole's token
        vocabulary (and everything after it) is the same as for the dataset written with indices."""
        frame = super()._load_feat(filepath, source)
        if frame is None or self.files.item_ids is None or source != FeatureSource.INTERACTION:
            return frame
        index_of = {item: str(index) for item, index in self.files.item_ids.items()}
        history, target = (column.split(":")[0] for column in (HISTORY, TARGET))
        frame[history] = [np.array([index_of[item] for item in items]) for items in frame[history]]
        frame[target] = frame[target].map(index_of)
        return frame

    def _to_internal_order(self, matrix: np.ndarray) -> torch.Tensor:
        """Row r of the result = feature row of the item RecBole maps to internal id r; row 0 = zeros."""
        tokens = self.field2id_token[self.iid_field][1:].astype(np.int64)
        ordered = np.zeros((len(tokens) + 1, matrix.shape[1]), dtype=np.float32)
        ordered[1:] = matrix[tokens]
        return torch.from_numpy(ordered)

    def __str__(self):
        missing = ", ".join(f"{m} missing {int((~self.present[m][1:]).sum())}" for m in self.modalities)
        return f"{super().__str__()}\nModalities: {missing} of {self.item_num - 1} items"
