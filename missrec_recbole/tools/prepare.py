"""Prepare a dataset for MISSRec from a (possibly read-only) folder of atomic files: copy, add features, check.

::

    python -m missrec_recbole.tools.prepare <datasets>/Office <datasets>/Scientific -o data/
    python run_missrec.py -d Office --data_path=data/

For each source folder ``SRC/NAME``: the atomic files (``NAME.{train,valid,test}.inter``, ``NAME.item2index``,
``NAME.user2index``, ``NAME.text``) and any feature files already there are copied to ``OUT/NAME/``; text features
(``NAME.feat1CLS``) are computed from ``NAME.text`` with ``--encoder`` (default ``wordllama``: weights ship with
the package, offline, about a second) unless the source has them (``--force`` recomputes); optionally
``--image_features_from OTHER/NAME2`` takes image rows from another dataset's ``NAME2.feat3CLS`` for the items the
two share (same original ids in both ``item2index`` files; all-zero rows, i.e. missing, for the rest). Then the
result is checked the way the loader checks it, and only then does ``OUT/NAME/`` appear (whole, replacing an older
one): a failure leaves nothing behind.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from missrec_recbole.command import command_parser, run_command, watched
from missrec_recbole.config import merged_props
from missrec_recbole.data.atomic_files import (DatasetFormatError, feature_width, read_feature_file, read_item2index,
                                               read_item_texts, write_feature_file)
from missrec_recbole.data.dataset import validate_dataset
from missrec_recbole.files import atomic_directory
from missrec_recbole.tools.features import extract_text_features, make_encoder, read_item_index

def _defaults() -> dict:
    """The options the loader's checks read (suffixes, dims, modalities, splits, max length) from props/."""
    return merged_props("MISSRec", "finetune")


def shared_image_rows(item2index: Path, other_item2index: Path, other_features: Path) -> tuple[np.ndarray, int]:
    """Image feature rows for ``item2index``'s items from another dataset's file (matched by original id);
    all-zero rows where the other dataset lacks the item. Returns (matrix, number of items found)."""
    mine, theirs = read_item2index(item2index), read_item2index(other_item2index)
    if not other_features.is_file():
        raise DatasetFormatError(f"{other_features}: image feature file not found. Pass a dataset folder that has "
                                 "image features (NAME.feat3CLS).")
    dim = feature_width(other_features, len(theirs), "image", None)
    matrix = read_feature_file(other_features, dim, "image")
    rows = np.zeros((len(mine), matrix.shape[1]), dtype=np.float32)
    found = [(index, theirs[item]) for item, index in mine.items() if item in theirs]
    if found:
        ours, other = map(list, zip(*found))
        rows[ours] = matrix[other]
    return rows, len(found)


def prepare_dataset(source, out_path, encoder="wordllama", image_features_from=None, force=False,
                    log=print) -> Path:
    """Copy ``source`` (a folder ``.../NAME``) to ``out_path/NAME`` with features; returns the new folder."""
    source = Path(source)
    name = source.name
    if not (source / f"{name}.train.inter").is_file():
        raise DatasetFormatError(f"{source}: no {name}.train.inter here. Pass a dataset folder NAME/ holding "
                                 f"NAME.train.inter, NAME.valid.inter, NAME.test.inter and NAME.item2index.")
    options = _defaults()
    target = Path(out_path) / name
    with atomic_directory(target) as tmp:
        for path in sorted(source.glob(f"{name}.*")):
            if path.is_file() and not path.name.endswith((".partial", ".progress.json")):
                shutil.copyfile(path, tmp / path.name)  # copyfile: not the read-only mode of the source
        text_file = tmp / f"{name}.{options['text_suffix']}"
        if (tmp / f"{name}.text").is_file() and (force or not text_file.is_file()):
            _text_features(tmp, name, text_file, encoder, log)
        if image_features_from:
            other = Path(image_features_from)
            rows, found = shared_image_rows(tmp / f"{name}.item2index", other / f"{other.name}.item2index",
                                            other / f"{other.name}.{options['image_suffix']}")
            write_feature_file(tmp / f"{name}.{options['image_suffix']}", rows)
            log(f"{name}: image features of {found} of {rows.shape[0]} items from {other} (the rest: missing)")
        config = {**options, "dataset": name, "data_path": str(tmp)}
        files = validate_dataset(config)  # the loader's own checks (they also read the widths from the files)
        log(f"{name}: checked: {files.n_items} items, " + ", ".join(
            f"{m} {config[f'{m}_dim']}-d" for m in config["modalities"]))
    return target


def _text_features(folder: Path, name: str, out_file: Path, encoder_spec: str, log) -> None:
    start = time.perf_counter()
    encoder = make_encoder(encoder_spec)
    item2index = folder / f"{name}.item2index"
    result = extract_text_features(encoder, read_item_index(item2index), read_item_texts(folder / f"{name}.text"),
                                   out_file, item2index, folder / f"{name}.text", progress=watched())
    for suffix in (".partial", ".progress.json"):  # resumability files of the extractor: not part of a dataset
        Path(f"{out_file}{suffix}").unlink(missing_ok=True)
    log(f"{name}: {result.summary('text')} with {encoder.identity} in {time.perf_counter() - start:.1f} s")


PROG = "python -m missrec_recbole.tools.prepare"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("sources", nargs="+", help="dataset folders NAME/ (read-only is fine)")
    parser.add_argument("-o", "--out_path", required=True, help="writable folder that receives NAME/ (--data_path)")
    parser.add_argument("--encoder", default="wordllama", help="text encoder: wordllama (default), open_clip or "
                                                                "module:function (see python -m missrec_recbole.tools.features)")
    parser.add_argument("--image_features_from", help="another dataset folder whose image features to take for "
                                                      "the items both share (by original id)")
    parser.add_argument("--force", action="store_true", help="recompute text features the source already has")


def main(argv=None, parser=None) -> int:
    args = command_parser(add_arguments, parser, PROG).parse_args(argv)
    for source in args.sources:
        start = time.perf_counter()
        target = prepare_dataset(source, args.out_path, args.encoder, args.image_features_from, args.force)
        print(f"prepared {target} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
