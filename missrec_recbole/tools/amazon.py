"""Raw Amazon review data (2018 release, also the 2014 one) -> MISSRec atomic files.

::

    python -m missrec_recbole.tools.amazon --reviews Office_Products.json.gz \\
        --meta meta_Office_Products.json.gz -o dataset/Office [--kcore 5] [--max_len 50]

Steps (all deterministic):

1. Read the reviews (gzip or plain JSON lines; strict JSON or the older Python-literal lines, read
   with :func:`ast.literal_eval`): ``reviewerID``, ``asin`` and ``unixReviewTime`` (or
   ``reviewTime`` "MM DD, YYYY" when the Unix time is missing). Reviews without a user, an item or
   a time are skipped and counted.
2. Read the metadata of the reviewed items: ``title``, ``category`` (2018) / ``categories`` (2014),
   ``brand`` and the first image URL (``imageURLHighRes``, else ``imageURL`` / ``image`` with the
   thumbnail size suffix removed, else ``imUrl``). Text = ``"title. categories. brand."`` with HTML
   tags removed and entities unescaped. Duplicate metadata lines fill each other's missing fields.
3. Items without any text are dropped (``--keep_items_without_text`` keeps them; their text feature
   is then an all-zero row, i.e. "missing").
4. Duplicate (user, item) pairs keep the earliest review.
5. Iterative k-core: users with fewer than ``max(kcore, 3)`` interactions and items with fewer than
   ``kcore`` are removed until nothing changes (3 = the minimum for a leave-one-out split).
6. Per user, items are ordered by time; ties are broken by ASIN (independent of file order).
   Users get indices in sorted ``reviewerID`` order, items in order of first appearance.
7. Leave-one-out split (docs/data.md): last item = test, second-last = valid, one train row
   per earlier prefix; histories keep their last ``max_len`` items.

Output in ``-o DIR`` (dataset name = the folder name unless ``--name``): ``NAME.train/valid/test.inter``,
``NAME.item2index``, ``NAME.user2index``, ``NAME.text`` and ``NAME.images`` (``original_id<TAB>url``,
items with an image URL only). Everything is written to a temporary folder next to ``DIR`` and
renamed into place; with ``--force`` an existing ``DIR`` is replaced (its sub-folders, e.g.
downloaded ``images/``, are carried over; old feature files are removed because they belong to
the old item index).
"""

from __future__ import annotations

import argparse
import ast
import gzip
import html
import io
import json
import re
import sys
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np

from missrec_recbole.command import command_parser, run_command
from missrec_recbole.data.atomic_files import MAX_HISTORY, DatasetFormatError, write_sequences
from missrec_recbole.files import atomic_directory

__all__ = ["RawDataError", "ConversionStats", "convert_amazon", "clean_text", "item_text", "image_url",
           "read_json_lines"]

MIN_SEQUENCE = 3  # first item + valid target + test target
MAX_TEXT_CHARS = 2000


class RawDataError(DatasetFormatError):
    """Unusable raw input: the message names the file (and line) and what to do."""


@dataclass
class ConversionStats:
    reviews_read: int = 0
    reviews_incomplete: int = 0
    bad_lines: int = 0
    meta_records: int = 0
    items_without_meta: int = 0
    items_without_text: int = 0
    duplicates: int = 0
    users: int = 0
    items: int = 0
    interactions: int = 0
    items_with_image_url: int = 0
    train_rows: int = 0
    sequence_lengths: list[int] = field(default_factory=list, repr=False)

    def summary(self) -> str:
        lengths = np.asarray(self.sequence_lengths or [0])
        return (f"reviews read {self.reviews_read} (skipped: {self.reviews_incomplete} without user/item/time, "
                f"{self.bad_lines} unparseable lines, {self.duplicates} duplicate user-item pairs); "
                f"reviewed items without metadata {self.items_without_meta}, without text {self.items_without_text}\n"
                f"after k-core: {self.users} users, {self.items} items, {self.interactions} interactions, "
                f"sequence length mean {lengths.mean():.1f} / max {lengths.max()}, train rows {self.train_rows}; "
                f"{self.items_with_image_url} items have an image URL")


# ----------------------------------------------------------------------------- reading
def _progress(total: int | None, desc: str, enabled: bool, unit: str = "B"):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, disable=not enabled, leave=False,
                file=sys.stderr, mininterval=0.5)


def read_json_lines(path: str | Path, *, skip_bad_lines: bool = False, progress: bool = False,
                    desc: str | None = None, stats: ConversionStats | None = None) -> Iterator[dict]:
    """Yield one dict per non-empty line of a (gzip or plain) JSON-lines file.

    Each line may be strict JSON or a Python literal (the older Amazon dumps); the format of the
    first line is tried first. A line that is neither raises :class:`RawDataError` naming the file
    and line, unless ``skip_bad_lines`` (then it is counted in ``stats.bad_lines``).
    """
    path = Path(path)
    if not path.is_file():
        raise RawDataError(f"{path}: file not found. Pass the path of the downloaded .json.gz file.")
    size = path.stat().st_size
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw
        lines = io.TextIOWrapper(stream, encoding="utf-8", newline="\n")
        literal_first = False
        line_no = 0
        with _progress(size, desc or path.name, progress) as bar:
            done = 0
            try:
                for line_no, line in enumerate(lines, 1):
                    if line_no % 4096 == 0:
                        position = raw.tell()
                        bar.update(position - done)
                        done = position
                    line = line.strip()
                    if not line:
                        continue
                    record, literal_first = _parse_line(line, literal_first)
                    if record is None:
                        if not skip_bad_lines:
                            raise RawDataError(
                                f"{path}: line {line_no} is neither a JSON object nor a Python dict literal "
                                f"({line[:60]!r}). Re-download the file, or pass --skip_bad_lines to ignore such lines.")
                        if stats is not None:
                            stats.bad_lines += 1
                        continue
                    yield record
            except (gzip.BadGzipFile, EOFError, zlib.error) as error:
                raise RawDataError(f"{path}: corrupt or truncated gzip data after line {line_no} ({error}). "
                                   "Re-download the file.") from None
            except UnicodeDecodeError as error:
                raise RawDataError(f"{path}: line {line_no + 1} is not UTF-8 text ({error.reason}). "
                                   "Pass the .json or .json.gz file from the Amazon review dump.") from None
            bar.update(size - done)


def _parse_line(line: str, literal_first: bool) -> tuple[dict | None, bool]:
    parsers = (_literal, _json) if literal_first else (_json, _literal)
    for parser in parsers:
        record = parser(line)
        if isinstance(record, dict):
            return record, parser is _literal
    return None, literal_first


def _json(line: str):
    try:
        return json.loads(line)
    except ValueError:
        return None


def _literal(line: str):
    try:
        return ast.literal_eval(line)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return None


def _review_time(record: dict) -> int | None:
    stamp = record.get("unixReviewTime")
    if isinstance(stamp, (int, float)) and not isinstance(stamp, bool):
        return int(stamp)
    if isinstance(stamp, str) and stamp.strip().isdigit():
        return int(stamp.strip())
    text = record.get("reviewTime")
    if isinstance(text, str):
        try:
            when = datetime.strptime(" ".join(text.replace(",", " ").split()), "%m %d %Y")
        except ValueError:
            return None
        return int(when.replace(tzinfo=timezone.utc).timestamp())
    return None


def _string(value) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


# ----------------------------------------------------------------------------- text and images
_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")
_BY = re.compile(r"^\s*by\s*\n", re.IGNORECASE)
_THUMB = re.compile(r"\._[A-Za-z0-9,]+(?:_[A-Za-z0-9,]+)*_(?=\.[A-Za-z]+$)")  # ._SS40_ / ._AC_US40_


def clean_text(value) -> str:
    """HTML-unescape (twice, for double-escaped entities), drop tags, collapse all whitespace."""
    if not isinstance(value, str):
        return ""
    text = html.unescape(html.unescape(value))
    text = _TAG.sub(" ", text)
    return _SPACE.sub(" ", text).strip()


def _categories(meta: dict) -> list[str]:
    raw = meta.get("category")
    if raw is None:
        raw = meta.get("categories")
    flat: list = []
    stack = [raw] if isinstance(raw, (list, tuple)) else [[raw]] if isinstance(raw, str) else []
    while stack:  # flatten nested lists (2014 format: list of category paths), keep order
        for value in stack.pop(0):
            if isinstance(value, (list, tuple)):
                flat.extend(value)
            else:
                flat.append(value)
    seen, out = set(), []
    for value in flat:
        text = clean_text(value)
        if text and text not in seen:
            seen.add(text)
            out.append(text)
    return out


def item_text(meta: dict) -> str:
    """``"title. categories. brand."`` from one metadata record (empty string if it has none)."""
    title = clean_text(meta.get("title"))
    brand = meta.get("brand")
    brand = clean_text(_BY.sub("", brand)) if isinstance(brand, str) else ""
    return join_text([title, " ".join(_categories(meta)), brand])


def join_text(parts) -> str:
    """``"part one. part two."``: the non-empty parts, each ending in a full stop, cut at MAX_TEXT_CHARS."""
    text = " ".join(p if p.endswith(".") else p + "." for p in parts if p)
    return text[:MAX_TEXT_CHARS].strip()


def image_url(meta: dict) -> str | None:
    """The item's main image URL: high-resolution first; a thumbnail URL loses its size suffix."""
    for key, full_size in (("imageURLHighRes", False), ("imageURL", True), ("image", True), ("imUrl", True)):
        value = meta.get(key)
        values = value if isinstance(value, (list, tuple)) else [value]
        for url in values:
            if isinstance(url, str) and url.strip().lower().startswith(("http://", "https://")):
                url = url.strip()
                if any(c.isspace() for c in url):
                    continue
                return _THUMB.sub("", url) if full_size else url
    return None


# ----------------------------------------------------------------------------- conversion
def _read_reviews(path, stats, skip_bad_lines, progress):
    users: dict[str, int] = {}
    items: dict[str, int] = {}
    u_codes, i_codes, times = [], [], []
    for record in read_json_lines(path, skip_bad_lines=skip_bad_lines, progress=progress,
                                  desc="reviews", stats=stats):
        stats.reviews_read += 1
        user, item, stamp = _string(record.get("reviewerID")), _string(record.get("asin")), _review_time(record)
        if user is None or item is None or stamp is None:
            stats.reviews_incomplete += 1
            continue
        u_codes.append(users.setdefault(user, len(users)))
        i_codes.append(items.setdefault(item, len(items)))
        times.append(stamp)
    if not u_codes:
        raise RawDataError(f"{path}: no usable review (each needs reviewerID, asin and unixReviewTime or "
                           "reviewTime). Pass the reviews file (e.g. Office_Products.json.gz) as --reviews.")
    return (list(users), list(items), np.asarray(u_codes, dtype=np.int64), np.asarray(i_codes, dtype=np.int64),
            np.asarray(times, dtype=np.int64))


def _read_meta(path, wanted: dict[str, int], stats, skip_bad_lines, progress):
    """Text and image URL for the reviewed items (duplicate records fill each other's gaps)."""
    texts: dict[int, str] = {}
    urls: dict[int, str] = {}
    seen: set[int] = set()
    for record in read_json_lines(path, skip_bad_lines=skip_bad_lines, progress=progress, desc="metadata",
                                  stats=stats):
        stats.meta_records += 1
        code = wanted.get(_string(record.get("asin")) or "")
        if code is None:
            continue
        seen.add(code)
        if code not in texts:
            text = item_text(record)
            if text:
                texts[code] = text
        if code not in urls:
            url = image_url(record)
            if url:
                urls[code] = url
    if stats.meta_records and not seen:
        raise RawDataError(f"{path}: none of its {stats.meta_records} records has the asin of a reviewed item. "
                           "Pass the metadata file of the same category as --meta (e.g. meta_Office_Products.json.gz).")
    stats.items_without_meta = len(wanted) - len(seen)
    return texts, urls


def _kcore(users: np.ndarray, items: np.ndarray, user_min: int, item_min: int) -> np.ndarray:
    keep = np.ones(users.size, dtype=bool)
    n_users, n_items = int(users.max(initial=-1)) + 1, int(items.max(initial=-1)) + 1
    while True:
        user_count = np.bincount(users[keep], minlength=n_users)
        item_count = np.bincount(items[keep], minlength=n_items)
        drop = keep & ((user_count[users] < user_min) | (item_count[items] < item_min))
        if not drop.any():
            return keep
        keep &= ~drop


def _rank(names: list[str]) -> np.ndarray:
    """rank[code] = position of names[code] in sorted order."""
    order = sorted(range(len(names)), key=names.__getitem__)
    rank = np.empty(len(names), dtype=np.int64)
    rank[order] = np.arange(len(names))
    return rank


def build_sequences(user_names, item_names, users, items, times, kcore=5, stats=None):
    """Dedup, k-core, order: returns (user ids in index order, item ids in index order, sequences of item indices);
    ``stats`` gets the duplicates and the kept users, items, sequence lengths and interactions."""
    stats = stats or ConversionStats()
    user_rank, item_rank = _rank(user_names), _rank(item_names)
    # duplicates: keep the earliest review of each (user, item) pair (then the first in file order)
    order = np.lexsort((np.arange(users.size), times, items, users))
    pair = users[order] * (len(item_names) + 1) + items[order]
    first = np.ones(order.size, dtype=bool)
    first[1:] = pair[1:] != pair[:-1]
    stats.duplicates = int((~first).sum())
    kept = order[first]
    users, items, times = users[kept], items[kept], times[kept]
    keep = _kcore(users, items, max(kcore, MIN_SEQUENCE), max(kcore, 1))
    users, items, times = users[keep], items[keep], times[keep]
    if users.size == 0:
        return [], [], []
    order = np.lexsort((item_rank[items], times, user_rank[users]))
    users, items = users[order], items[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    bounds = np.r_[starts, users.size]
    item_index: dict[int, int] = {}
    sequences = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        sequences.append([item_index.setdefault(int(code), len(item_index)) for code in items[a:b]])
    user_ids = [user_names[int(users[a])] for a in starts]
    item_ids = [item_names[code] for code in item_index]
    stats.users, stats.items = len(user_ids), len(item_ids)
    stats.sequence_lengths = [len(s) for s in sequences]
    stats.interactions = int(sum(stats.sequence_lengths))
    return user_ids, item_ids, sequences


def check_id(path, kind: str, value: str) -> None:
    if any(c in value for c in "\t\n\r") or " " in value:
        raise RawDataError(f"{path}: {kind} {value!r} contains whitespace, which the tab/space-separated atomic "
                           "files cannot hold. Fix the id in the raw file.")


def check_limits(kcore: int, max_len: int) -> None:
    for value, option in ((kcore, "--kcore"), (max_len, "--max_len")):
        if value < 1:
            raise RawDataError(f"{option} {value}: must be at least 1.")


def check_output_folder(out_dir: Path, name: str | None, force: bool) -> str:
    """The dataset name (``name`` or the folder's name), after checking that ``out_dir`` may be written."""
    name = name or out_dir.resolve().name
    if not name or any(c.isspace() or c in "/\\" for c in name):
        raise RawDataError(f"{out_dir}: dataset name {name!r} is not usable as a file prefix. Pass --name.")
    if out_dir.exists() and not out_dir.is_dir():
        raise RawDataError(f"{out_dir}: exists and is not a folder. Choose another -o.")
    if out_dir.is_dir() and not force and any(not p.is_dir() for p in out_dir.iterdir()):
        raise RawDataError(f"{out_dir}: the folder already holds files. Pass --force to replace its files "
                           "(sub-folders such as images/ are kept) or choose another -o.")
    return name


def convert_amazon(reviews, meta, out_dir, name: str | None = None, kcore: int = 5, max_len: int = MAX_HISTORY,
                   keep_items_without_text: bool = False, skip_bad_lines: bool = False, force: bool = False,
                   progress: bool = False) -> ConversionStats:
    """Convert raw Amazon reviews + metadata into the atomic files of dataset ``name`` in ``out_dir``."""
    check_limits(kcore, max_len)
    out_dir = Path(out_dir)
    name = check_output_folder(out_dir, name, force)
    for path, what in ((reviews, "--reviews"), (meta, "--meta")):
        if not Path(path).is_file():
            raise RawDataError(f"{path}: file not found. Pass the downloaded file as {what}.")

    stats = ConversionStats()
    user_names, item_names, users, items, times = _read_reviews(reviews, stats, skip_bad_lines, progress)
    texts_by_code, urls_by_code = _read_meta(meta, {n: c for c, n in enumerate(item_names)}, stats,
                                             skip_bad_lines, progress)
    has_text = np.zeros(len(item_names), dtype=bool)
    has_text[list(texts_by_code)] = True
    stats.items_without_text = int((~has_text).sum())
    if not keep_items_without_text:
        usable = has_text[items]
        users, items, times = users[usable], items[usable], times[usable]
    user_ids, item_ids, sequences = build_sequences(user_names, item_names, users, items, times, kcore, stats)
    if not sequences:
        raise RawDataError(f"{reviews}: no user is left after {kcore}-core filtering (users need at least "
                           f"{max(kcore, MIN_SEQUENCE)} interactions with items that have text). "
                           "Use a larger category, a smaller --kcore, or --keep_items_without_text.")
    for uid in user_ids:
        check_id(reviews, "reviewerID", uid)
    for iid in item_ids:
        check_id(reviews, "asin", iid)
    texts = {item_names[c]: t for c, t in texts_by_code.items()}
    urls = {item_names[c]: u for c, u in urls_by_code.items()}
    stats.items_with_image_url = sum(1 for iid in item_ids if iid in urls)

    with atomic_directory(out_dir.resolve(), keep_subfolders=True) as tmp:  # keeps downloaded images etc.
        stats.train_rows = write_sequences(tmp, name, user_ids, item_ids, sequences, texts, urls, max_len)
    return stats


PROG = "python -m missrec_recbole.tools.amazon"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument("--reviews", required=True, help="reviews file, e.g. Office_Products.json.gz")
    parser.add_argument("--meta", required=True, help="metadata file, e.g. meta_Office_Products.json.gz")
    parser.add_argument("-o", "--out", required=True, help="output folder <data_path>/NAME")
    parser.add_argument("--name", help="dataset name (default: the output folder's name)")
    parser.add_argument("--kcore", type=int, default=5, help="minimum interactions per user and item (default 5)")
    parser.add_argument("--max_len", type=int, default=MAX_HISTORY,
                        help=f"keep the last N history items (default {MAX_HISTORY})")
    parser.add_argument("--keep_items_without_text", action="store_true",
                        help="keep items whose metadata has no title/category/brand")
    parser.add_argument("--skip_bad_lines", action="store_true", help="skip unparseable lines instead of failing")
    parser.add_argument("--force", action="store_true",
                        help="replace the files of an existing output folder (sub-folders such as images/ are kept)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def main(argv=None, parser=None) -> int:
    args = command_parser(add_arguments, parser, PROG).parse_args(argv)
    start = time.perf_counter()
    try:
        stats = convert_amazon(args.reviews, args.meta, args.out, args.name, args.kcore, args.max_len,
                               args.keep_items_without_text, args.skip_bad_lines, args.force, not args.quiet)
    except DatasetFormatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(stats.summary())
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
