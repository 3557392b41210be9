"""A RecBole atomic dataset (``NAME.inter`` + ``NAME.item``) -> MISSRec atomic files with item texts.

::

    python -m missrec_recbole.tools.from_recbole ml-100k -o raw/ml-100k     # RecBole's bundled example
    python -m missrec_recbole.tools.from_recbole path/to/NAME -o raw/NAME --text_fields title,genre
    python -m missrec_recbole.tools.prepare raw/ml-100k -o data/             # text features, checked

The source is a folder ``NAME/`` in RecBole's atomic format (``NAME.inter`` with user, item and time fields;
``NAME.item`` with the item's text fields), or the name of a dataset RecBole ships in
``recbole/dataset_example`` (``ml-100k``). Steps, all deterministic and the same as the Amazon conversion
(``tools.amazon``):

1. Read the interactions (user, item, time; other fields ignored) and the item table. Item text = the
   ``--text_fields`` values joined as ``"title. year. genres."`` (default: every ``token`` / ``token_seq`` field
   of ``NAME.item`` except the item id). Items without text are dropped (``--keep_items_without_text`` keeps
   them with an all-zero, i.e. missing, feature row).
2. Duplicate (user, item) pairs keep the earliest; iterative k-core (``--kcore``, users at least 3);
   per user, items ordered by time, ties by item id.
3. Leave-one-out split: last item = test, second-last = valid, one train row per earlier prefix; histories
   keep their last ``--max_len`` items.

Output in ``-o DIR`` (dataset name = the folder name unless ``--name``): ``NAME.train/valid/test.inter``,
``NAME.item2index``, ``NAME.user2index`` and ``NAME.text``, written to a temporary folder and renamed into place.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from missrec_recbole.command import command_parser, run_command
from missrec_recbole.data.atomic_files import MAX_HISTORY, write_sequences
from missrec_recbole.files import atomic_directory
from missrec_recbole.tools.amazon import (ConversionStats, RawDataError, build_sequences, check_id, check_limits,
                                          check_output_folder, clean_text, join_text)

TEXT_TYPES = ("token", "token_seq")


def recbole_example(name: str) -> Path | None:
    """``recbole/dataset_example/NAME`` of the installed RecBole, if RecBole ships that dataset."""
    import recbole

    folder = Path(recbole.__file__).parent / "dataset_example" / name
    return folder if (folder / f"{name}.inter").is_file() else None


def read_atomic(path: Path) -> pd.DataFrame:
    """A RecBole atomic file as strings, columns named without their ``:type`` suffix (types in ``.attrs``)."""
    if not path.is_file():
        raise RawDataError(f"{path}: file not found. A RecBole dataset folder NAME/ holds NAME.inter and NAME.item.")
    try:
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE,
                            encoding="utf-8")
    except (UnicodeDecodeError, pd.errors.ParserError) as error:
        raise RawDataError(f"{path}: not a readable tab-separated UTF-8 file ({error}).") from None
    types = {}
    for header in frame.columns:
        name, _, kind = str(header).partition(":")
        if not kind:
            raise RawDataError(f"{path}: header field {header!r} has no type. RecBole atomic headers are "
                               "name:type, e.g. user_id:token\titem_id:token\ttimestamp:float.")
        types[name] = kind
    frame.columns = list(types)
    frame.attrs["types"] = types
    return frame


def _require(frame: pd.DataFrame, path: Path, field: str, option: str) -> None:
    if field not in frame.columns:
        raise RawDataError(f"{path}: no field {field!r} (fields: {', '.join(frame.columns)}). "
                           f"Pass the right name as {option}.")


def _times(frame: pd.DataFrame, path: Path, time_field: str) -> np.ndarray:
    times = pd.to_numeric(frame[time_field], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(times))
    if bad.size:
        raise RawDataError(f"{path}, line {bad[0] + 2}: {time_field} {frame[time_field].iloc[bad[0]]!r} is not a "
                           f"number ({bad.size} such rows). MISSRec learns from the order of interactions: fix "
                           "the rows or pass another --time_field.")
    return times


def item_texts(items: pd.DataFrame, path: Path, item_field: str, text_fields: Sequence[str] | None) -> dict:
    """Original item id -> ``"a. b. c."`` from the chosen fields (default: every token/token_seq field)."""
    _require(items, path, item_field, "--item_field")
    if text_fields is None:
        text_fields = [f for f, kind in items.attrs["types"].items() if kind in TEXT_TYPES and f != item_field]
    for field in text_fields:
        _require(items, path, field, "--text_fields")
    if not text_fields:
        raise RawDataError(f"{path}: no token or token_seq field to make item texts from. Name them with "
                           "--text_fields.")
    columns = [items[field].map(clean_text) for field in text_fields]
    return {item: text for item, *parts in zip(items[item_field], *columns) if (text := join_text(parts))}


def convert_recbole(source, out_dir, name: str | None = None, text_fields: Sequence[str] | None = None,
                    user_field: str = "user_id", item_field: str = "item_id", time_field: str = "timestamp",
                    kcore: int = 5, max_len: int = MAX_HISTORY, keep_items_without_text: bool = False,
                    force: bool = False) -> ConversionStats:
    """Convert the RecBole dataset ``source`` (folder or bundled name) into dataset ``name`` in ``out_dir``."""
    check_limits(kcore, max_len)
    source = Path(source)
    if not source.is_dir() and len(source.parts) == 1:  # a bare name: one of RecBole's bundled datasets
        source = recbole_example(source.name) or source
    source_name = source.name
    inter_path, item_path = source / f"{source_name}.inter", source / f"{source_name}.item"
    out_dir = Path(out_dir)
    name = check_output_folder(out_dir, name, force)
    inter = read_atomic(inter_path)
    for field, option in ((user_field, "--user_field"), (item_field, "--item_field"), (time_field, "--time_field")):
        _require(inter, inter_path, field, option)
    times = _times(inter, inter_path, time_field)
    texts = item_texts(read_atomic(item_path), item_path, item_field, text_fields)

    stats = ConversionStats(reviews_read=len(inter))
    users, user_names = pd.factorize(inter[user_field])
    items, item_names = pd.factorize(inter[item_field])
    has_text = np.array([item in texts for item in item_names], dtype=bool)
    stats.items_without_text = int((~has_text).sum())
    keep = np.ones(len(inter), dtype=bool) if keep_items_without_text else has_text[items]
    user_ids, item_ids, sequences = build_sequences(list(user_names), list(item_names), users[keep], items[keep],
                                                    times[keep], kcore, stats)
    if not sequences:
        raise RawDataError(f"{inter_path}: no user is left after {kcore}-core filtering of the items with text. "
                           "Use a smaller --kcore or --keep_items_without_text.")
    for uid in user_ids:
        check_id(inter_path, user_field, uid)
    for iid in item_ids:
        check_id(inter_path, item_field, iid)
    with atomic_directory(out_dir.resolve()) as tmp:
        stats.train_rows = write_sequences(tmp, name, user_ids, item_ids, sequences, texts, None, max_len)
    return stats


def summary(stats: ConversionStats) -> str:
    lengths = np.asarray(stats.sequence_lengths or [0])
    return (f"interactions read {stats.reviews_read} ({stats.duplicates} duplicate user-item pairs); "
            f"items without text {stats.items_without_text}\n"
            f"after k-core: {stats.users} users, {stats.items} items, {stats.interactions} interactions, "
            f"sequence length mean {lengths.mean():.1f} / max {lengths.max()}, train rows {stats.train_rows}")


PROG = "python -m missrec_recbole.tools.from_recbole"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument("source", help="RecBole dataset folder NAME/ (NAME.inter, NAME.item), or the name of a "
                                       "dataset RecBole ships (ml-100k)")
    parser.add_argument("-o", "--out", required=True, help="output folder <path>/NAME")
    parser.add_argument("--name", help="dataset name (default: the output folder's name)")
    parser.add_argument("--text_fields", help="comma-separated NAME.item fields that make the item text (default: "
                                              "every token/token_seq field except the item id)")
    parser.add_argument("--user_field", default="user_id", help="user field of NAME.inter (default user_id)")
    parser.add_argument("--item_field", default="item_id", help="item field of NAME.inter/.item (default item_id)")
    parser.add_argument("--time_field", default="timestamp", help="time field of NAME.inter (default timestamp)")
    parser.add_argument("--kcore", type=int, default=5, help="minimum interactions per user and item (default 5)")
    parser.add_argument("--max_len", type=int, default=MAX_HISTORY,
                        help=f"keep the last N history items (default {MAX_HISTORY})")
    parser.add_argument("--keep_items_without_text", action="store_true", help="keep items without any text")
    parser.add_argument("--force", action="store_true", help="replace the files of an existing output folder")


def main(argv=None, parser=None) -> int:
    args = command_parser(add_arguments, parser, PROG).parse_args(argv)
    fields = [f.strip() for f in args.text_fields.split(",") if f.strip()] if args.text_fields else None
    stats = convert_recbole(args.source, args.out, args.name, fields, args.user_field, args.item_field,
                            args.time_field, args.kcore, args.max_len, args.keep_items_without_text, args.force)
    print(summary(stats))
    print(f"wrote {Path(args.out)}; next: python -m missrec_recbole.tools.prepare {args.out} -o data/")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
