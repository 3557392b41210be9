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

from missrec_recbole.command import run_command
from missrec_recbole.config import build_config, parse_known_options
from missrec_recbole.data.dataset import atomic_directory, read_indexed_inter, validate_dataset
from missrec_recbole.model import MISSRec

SPLITS = ("train", "valid", "test")


def _as_dict(config) -> dict:
    return dict(getattr(config, "final_config_dict", config))


def _shift_history(history: pd.Series, offset: int) -> pd.Series:
    return history.map(lambda text: " ".join(str(int(i) + offset) for i in text.split()))


def _n_users(folder: Path, name: str, frames) -> int:
    user_map = folder / f"{name}.user2index"
    if user_map.is_file():
        with open(user_map, encoding="utf-8") as handle:
            return sum(1 for line in handle if line.strip())
    return max(int(pd.to_numeric(f["user_id:token"]).max()) for f in frames) + 1


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
        item_maps, user_maps = [], []
        for name in names:
            domain = {**options, "dataset": name, "data_path": os.path.join(data_path, name)}
            files = validate_dataset(domain)
            # the first domain's files fix modalities and widths; later domains are checked against them
            options.update({key: domain[key] for key in ("modalities", "text_dim", "image_dim")})
            features = features or {m: [] for m in domain["modalities"]}
            frames = {split: read_indexed_inter(files, split) for split in SPLITS}  # original ids -> indices
            n_users = _n_users(files.folder, name, frames.values())
            for split, frame in frames.items():
                frame["user_id:token"] = (pd.to_numeric(frame["user_id:token"]) + user_offset).astype(str)
                frame["item_id_list:token_seq"] = _shift_history(frame["item_id_list:token_seq"], item_offset)
                frame["item_id:token"] = (pd.to_numeric(frame["item_id:token"]) + item_offset).astype(str)
                splits[split].append(frame)
            for m in features:
                features[m].append(files.features[m])
            item_maps.append(pd.DataFrame({"id": [f"{name}:{i}" for i in range(files.n_items)],
                                           "index": np.arange(files.n_items) + item_offset}))
            user_maps.append(pd.DataFrame({"id": [f"{name}:{u}" for u in range(n_users)],
                                           "index": np.arange(n_users) + user_offset}))
            item_offset += files.n_items
            user_offset += n_users
        for split, frames in splits.items():
            pd.concat(frames).to_csv(tmp_dir / f"{out_name}.{split}.inter", sep="\t", index=False)
        for m, parts in features.items():
            np.concatenate(parts).astype("<f4").tofile(tmp_dir / f"{out_name}.{config[f'{m}_suffix']}")
        pd.concat(item_maps).to_csv(tmp_dir / f"{out_name}.item2index", sep="\t", index=False, header=False)
        pd.concat(user_maps).to_csv(tmp_dir / f"{out_name}.user2index", sep="\t", index=False, header=False)
    return out_dir


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="+", help="dataset names under --data_path")
    parser.add_argument("-o", "--output", required=True, help="name of the merged dataset")
    parser.add_argument("--data_path", default="dataset", help="folder holding the input datasets")
    parser.add_argument("--out_path", default=None, help="folder for the output (default: --data_path)")
    args, overrides = parse_known_options(parser, argv, hint=" (e.g. --text_dim=768)")
    config = build_config(args.datasets[0], stage="pretrain", config_dict={**overrides, "data_path": args.data_path},
                          model_class=MISSRec)
    out = merge_datasets(args.datasets, args.data_path, args.output, args.out_path or args.data_path, config)
    print(f"merged {', '.join(args.datasets)} -> {out}")


if __name__ == "__main__":
    sys.exit(run_command(main))
