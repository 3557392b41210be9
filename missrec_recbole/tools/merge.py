"""Merge several atomic-file datasets into one pre-training dataset (disjoint items and users).

``python -m missrec_recbole.tools.merge A B C -o OUT --data_path=dataset/ [--key=value ...]`` writes OUT/OUT.* where
item and user indices of dataset j are shifted past those of datasets 0..j-1, so every sequence
stays inside its own domain and row i of every merged feature file belongs to merged item i.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from missrec_recbole.command import command_parser, run_command
from missrec_recbole.config import build_config, parse_known_options
from missrec_recbole.data.atomic_files import (HISTORY, SPLITS, TARGET, USER, count_rows, inter_path,
                                               write_feature_file, write_index, write_inter)
from missrec_recbole.data.dataset import read_indexed_inter, validate_dataset
from missrec_recbole.files import atomic_directory
from missrec_recbole.model import MISSRec


def _as_dict(config) -> dict:
    return dict(getattr(config, "final_config_dict", config))


def _shifted_rows(frame: pd.DataFrame, user_offset: int, item_offset: int):
    """``(user, history, target)`` rows of an .inter frame (indices as tokens) with the indices shifted."""
    users = pd.to_numeric(frame[USER]) + user_offset
    histories = frame[HISTORY].map(lambda text: [int(i) + item_offset for i in text.split()])
    targets = pd.to_numeric(frame[TARGET]) + item_offset
    return list(zip(users, histories, targets))


def _n_users(folder: Path, name: str, frames) -> int:
    listed = count_rows(folder / f"{name}.user2index")
    return listed if listed is not None else max(int(pd.to_numeric(f[USER]).max()) for f in frames) + 1


def merge_datasets(names, data_path, out_name: str, out_path, config) -> Path:
    """Merge ``names`` (each in ``data_path``) into ``out_path/out_name``; returns the folder.

    ``config`` supplies suffixes, benchmark_filename and, if set, modalities and dims (validated per input; where
    unset, the first dataset's files give them and the others must agree).
    The result is written to a temp folder and renamed, so it is never half-written.
    """
    out_dir = Path(out_path) / out_name
    options = _as_dict(config)
    with atomic_directory(out_dir) as tmp_dir:
        item_offset = user_offset = 0
        splits = {split: [] for split in SPLITS}
        features = None
        item_ids, user_ids = [], []
        for name in names:
            domain = {**options, "dataset": name, "data_path": os.path.join(data_path, name)}
            files = validate_dataset(domain)
            # the first domain's files fix modalities and widths; later domains are checked against them
            # (UniSRec has no image_dim: only the keys the model has)
            options.update({key: domain[key] for key in ("modalities", "text_dim", "image_dim") if key in domain})
            features = features or {m: [] for m in domain["modalities"]}
            frames = {split: read_indexed_inter(files, split) for split in SPLITS}  # original ids -> indices
            n_users = _n_users(files.folder, name, frames.values())
            for split, frame in frames.items():
                splits[split] += _shifted_rows(frame, user_offset, item_offset)
            for m in features:
                features[m].append(files.features[m])
            item_ids += [f"{name}:{i}" for i in range(files.n_items)]  # merged index = position in the list
            user_ids += [f"{name}:{u}" for u in range(n_users)]
            item_offset += files.n_items
            user_offset += n_users
        for split, rows in splits.items():
            write_inter(inter_path(tmp_dir, out_name, split), rows)
        for m, parts in features.items():
            write_feature_file(tmp_dir / f"{out_name}.{config[f'{m}_suffix']}", np.concatenate(parts))
        write_index(tmp_dir / f"{out_name}.item2index", item_ids)
        write_index(tmp_dir / f"{out_name}.user2index", user_ids)
    return out_dir


PROG = "python -m missrec_recbole.tools.merge"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("datasets", nargs="+", help="dataset names under --data_path")
    parser.add_argument("-o", "--output", required=True, help="name of the merged dataset")
    parser.add_argument("--data_path", default="dataset", help="folder holding the input datasets")
    parser.add_argument("--out_path", default=None, help="folder for the output (default: --data_path)")


def main(argv=None, parser=None):
    parser = command_parser(add_arguments, parser, PROG)
    args, overrides = parse_known_options(parser, argv, hint=" (e.g. --text_dim=768)")
    config = build_config(args.datasets[0], stage="pretrain", config_dict={**overrides, "data_path": args.data_path},
                          model_class=MISSRec)
    out = merge_datasets(args.datasets, args.data_path, args.output, args.out_path or args.data_path, config)
    print(f"merged {', '.join(args.datasets)} -> {out}")


if __name__ == "__main__":
    sys.exit(run_command(main))
