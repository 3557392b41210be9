"""The atomic file format of a dataset (docs/data.md): file names, headers, readers and writers.

Every tool and the loader read and write ``NAME.{train,valid,test}.inter``, ``NAME.item2index``,
``NAME.user2index``, ``NAME.text``, ``NAME.images`` and the raw float32 feature files through this module. Readers
check what they read and fail with one :class:`DatasetFormatError` naming the file; writers write the exact bytes
the readers expect (UTF-8, ``\\n`` line ends, tab-separated). What a dataset's files must agree on (item counts,
item tokens, widths against the config) is checked by :func:`missrec_recbole.data.dataset.validate_dataset`.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd

from missrec_recbole.errors import InputError

SPLITS = ("train", "valid", "test")
REQUIRED_COLUMNS = ("user_id:token", "item_id_list:token_seq", "item_id:token")
USER, HISTORY, TARGET = REQUIRED_COLUMNS
INTER_HEADER = "\t".join(REQUIRED_COLUMNS) + "\n"
TEXT_HEADER = "item_id:token\ttext:token_seq"
MAX_HISTORY = 50  # history items the converters keep per row (the paper's max sequence length)


class DatasetFormatError(InputError):
    """Bad dataset input: the message names the file and what to do."""


def fail(path, problem: str, fix: str) -> None:
    raise DatasetFormatError(f"{path}: {problem}. {fix}")


# ----------------------------------------------------------------------------- names
def inter_path(folder, name: str, split: str) -> Path:
    return Path(folder) / f"{name}.{split}.inter"


def feature_path(folder, name: str, suffix: str) -> Path:
    return Path(folder) / f"{name}.{suffix}"


# ----------------------------------------------------------------------------- readers
def read_text(path: Path) -> str:
    """The whole file as text; a file that is not UTF-8 fails with a message naming it."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except UnicodeDecodeError as error:
        fail(path, f"is not UTF-8 text (undecodable byte at offset {error.start})", "Save it as UTF-8, tab-separated.")


def _check_field_counts(path: Path, lines: list[str], n_fields: int) -> None:
    """Every non-blank line must have as many tab-separated fields as the header."""
    for number, line in enumerate(lines, 1):
        count = line.count("\t") + 1
        if count != n_fields and line.strip():
            fail(path, f"line {number} has {count} tab-separated field(s), the header has {n_fields}",
                 "Separate the fields with tabs (not spaces), one row per line; the file may be truncated.")


def read_inter(path: Path) -> tuple[pd.DataFrame, str]:
    """The three required columns of an .inter file (as strings) and its text, checked: UTF-8, header, one field
    per header column on every line, at least one data line."""
    if not path.is_file():
        fail(path, "interaction file not found",
             "A dataset needs NAME.train.inter, NAME.valid.inter and NAME.test.inter (see docs/data.md).")
    text = read_text(path)
    if not text.strip():
        fail(path, "is empty", "An .inter file needs the header line and at least one data line.")
    lines = text.split("\n")
    header = lines[0].rstrip("\r").split("\t")
    missing = [col for col in REQUIRED_COLUMNS if col not in header]
    if missing:
        fail(path, f"malformed header {header!r}, missing {missing}",
             "The first line must be 'user_id:token<TAB>item_id_list:token_seq<TAB>item_id:token'.")
    _check_field_counts(path, lines, len(header))
    try:
        frame = pd.read_csv(io.StringIO(text), sep="\t", dtype=str, keep_default_na=False,
                            usecols=list(REQUIRED_COLUMNS), quoting=csv.QUOTE_NONE)
    except (ValueError, pd.errors.ParserError) as error:  # e.g. NUL bytes
        fail(path, f"cannot be parsed as tab-separated text ({str(error).splitlines()[0]})", "Fix or regenerate it.")
    if frame.empty:
        fail(path, "has a header but no data lines", "Every split (train, valid, test) needs at least one row.")
    return frame, text


def read_item2index(path: Path) -> dict[str, int]:
    """``original id -> item index`` of a ``NAME.item2index`` file, checked: one ``id<TAB>index`` per
    line, ids unique and non-empty, indices exactly 0..n-1."""
    mapping = {}
    for number, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip().isdigit():
            fail(path, f"line {number} is not 'original_id<TAB>index'", "Fix the file (one item per line).")
        if parts[0] in mapping:
            fail(path, f"item id {parts[0]!r} is listed twice (line {number})", "List each item once.")
        mapping[parts[0]] = int(parts[1])
    if not mapping:
        fail(path, "lists no items", "An item2index needs one 'original_id<TAB>index' line per item.")
    if sorted(mapping.values()) != list(range(len(mapping))):
        fail(path, f"the indices of its {len(mapping)} items are not exactly 0..{len(mapping) - 1}",
             "Number the items 0, 1, 2, ... (each index once).")
    return mapping


def item_ids_by_index(path: Path) -> list[str]:
    """The original ids of a checked ``NAME.item2index`` file in index order (row i of a feature file = item i)."""
    mapping = read_item2index(path)
    ids = [""] * len(mapping)
    for item, index in mapping.items():
        ids[index] = item
    return ids


def read_item_texts(path: Path, require_header: bool = True) -> dict[str, str]:
    """``original id -> text`` of a ``NAME.text`` file (first line :data:`TEXT_HEADER`; the first text of an id
    wins). ``require_header=False`` also reads a file without the header line."""
    path = Path(path)
    if not path.is_file():
        fail(path, "text file not found", "Pass NAME.text (python -m missrec_recbole.tools.amazon writes it).")
    lines = read_text(path).splitlines()
    has_header = bool(lines) and lines[0].split("\t")[:2] == TEXT_HEADER.split("\t")
    if require_header and not has_header:
        header = lines[0] if lines else ""
        fail(path, f"first line {header[:60]!r} is not the header {TEXT_HEADER!r}", "Add the header line.")
    texts: dict[str, str] = {}
    for number, line in enumerate(lines[has_header:], 1 + has_header):
        if not line.strip():
            continue
        item_id, sep, text = line.partition("\t")
        if not sep:
            fail(path, f"line {number} has no tab between the item id and the text", "Fix the line.")
        texts.setdefault(item_id, text.strip())
    return texts


def count_rows(path: Path) -> int | None:
    """Non-blank lines of a text file (e.g. the items of NAME.item2index); None if it does not exist."""
    if not Path(path).is_file():
        return None
    with open(path, encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip())


def tab_rows(path):
    """``(line number, fields)`` of each non-blank line of a tab-separated file."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield number, line.split("\t")


def read_feature_file(path: Path, dim: int, field: str) -> np.ndarray:
    """Read a raw little-endian float32 feature file as an [n, dim] array, checking size and values."""
    if not path.is_file():
        fail(path, "feature file not found", f"Create it or set `{field}_suffix` to the right file suffix.")
    size = path.stat().st_size
    if size == 0 or size % (4 * dim):
        fail(path, f"size {size} bytes is not a positive multiple of {field}_dim*4 = {4 * dim}",
             f"Check `{field}_dim` (the feature width) or regenerate the file as float32 rows.")
    matrix = np.fromfile(path, dtype="<f4").reshape(-1, dim)
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        fail(path, f"{bad.size} rows contain NaN/inf (first: item index {bad[0]})",
             "Replace them (use an all-zero row for a missing modality).")
    return matrix


def feature_width(path: Path, n_items: int, field: str, given) -> int:
    """Width of a raw float32 feature file of ``n_items`` rows; ``given`` (the ``{field}_dim`` option) must agree."""
    size = path.stat().st_size
    width = size // (4 * n_items) if n_items else 0
    if width == 0 or size != 4 * n_items * width:
        rows = f" ({size // (4 * int(given))} rows of {field}_dim={given})" if given and size % (4 * int(given)) == 0 else ""
        fail(path, f"size {size} bytes{rows} is not {n_items} items x a whole number of float32 columns",
             "The file is truncated or belongs to another item list: regenerate it with one row per item index.")
    if given is not None and int(given) != width:
        fail(path, f"holds {width}-d features ({size} bytes = {n_items} items x {width} x 4), but "
                   f"{field}_dim={given}", f"Change --{field}_dim to {width}, or leave it out (it is read from the file).")
    return width


# ----------------------------------------------------------------------------- writers
def split_rows(sequences, max_len: int = MAX_HISTORY) -> dict[str, list]:
    """Leave-one-out rows per split, ``(user index, history, target)``: the last item of each sequence is the test
    target, the second last the valid target, train has one row per earlier prefix; histories keep their last
    ``max_len`` items."""
    rows = {split: [] for split in SPLITS}
    for user, seq in enumerate(sequences):
        n = len(seq)
        for t in range(1, n - 2):
            rows["train"].append((user, seq[max(0, t - max_len):t], seq[t]))
        rows["valid"].append((user, seq[max(0, n - 2 - max_len):n - 2], seq[n - 2]))
        rows["test"].append((user, seq[max(0, n - 1 - max_len):n - 1], seq[n - 1]))
    return rows


def _write_lines(path: Path, lines) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.writelines(lines)


def write_inter(path: Path, rows) -> None:
    """An .inter file: the header, then one ``user<TAB>history<TAB>target`` line per ``(user, history, target)``."""
    _write_lines(path, [INTER_HEADER, *(f"{u}\t{' '.join(map(str, h))}\t{t}\n" for u, h, t in rows)])


def write_index(path: Path, ids) -> None:
    """``NAME.item2index`` / ``NAME.user2index``: ``original_id<TAB>index`` for ids in index order, no header."""
    _write_lines(path, (f"{original}\t{index}\n" for index, original in enumerate(ids)))


def write_item_texts(path: Path, item_ids, texts: dict) -> None:
    """``NAME.text``: the header, then ``original_id<TAB>text`` per item in index order (empty without a text)."""
    _write_lines(path, [TEXT_HEADER + "\n", *(f"{item}\t{texts.get(item, '')}\n" for item in item_ids)])


def write_url_list(path: Path, item_ids, urls: dict) -> None:
    """``NAME.images``: ``original_id<TAB>url`` for the items that have a URL, in index order, no header."""
    _write_lines(path, (f"{item}\t{urls[item]}\n" for item in item_ids if item in urls))


def write_feature_file(path: Path, matrix) -> None:
    """A raw little-endian float32 feature file, row i = item index i (an all-zero row: modality missing)."""
    np.asarray(matrix).astype("<f4").tofile(path)


def write_sequences(folder: Path, name: str, user_ids, item_ids, sequences, texts, urls=None,
                    max_len: int = MAX_HISTORY) -> int:
    """A dataset's atomic files from per-user item sequences (item indices; user index = position):
    ``NAME.{train,valid,test}.inter`` (:func:`split_rows`), ``NAME.item2index``, ``NAME.user2index``, ``NAME.text``
    and, when ``urls`` is not None, ``NAME.images``. Returns the number of train rows."""
    folder = Path(folder)
    rows = split_rows(sequences, max_len)
    for split, split_data in rows.items():
        write_inter(inter_path(folder, name, split), split_data)
    write_index(folder / f"{name}.item2index", item_ids)
    write_index(folder / f"{name}.user2index", user_ids)
    write_item_texts(folder / f"{name}.text", item_ids, texts)
    if urls is not None:
        write_url_list(folder / f"{name}.images", item_ids, urls)
    return len(rows["train"])
