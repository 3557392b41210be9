"""Summarise and validate a MISSRec dataset, with exactly the checks the loader runs.

::

    python -m missrec_recbole.tools.inspect -d NAME [--data_path dataset] [--json] [--load] [--key=value ...]

The config comes from :func:`missrec_recbole.config.build_config` (so ``props/*.yaml`` and
``--key=value`` overrides such as ``--text_dim=768`` apply as in ``run_missrec.py``), and the files
are checked by :func:`missrec_recbole.data.dataset.validate_dataset` - the same function
``MISSRecDataset`` calls before RecBole reads a byte. A dataset the loader would reject prints the
loader's message and exits with status 1. ``--load`` also builds the ``MISSRecDataset`` itself
(RecBole's full load, a few seconds more).

Printed: users, items (listed / used in interactions), interactions and rows per split, sequence
length statistics, the share of items missing each modality (all-zero feature row) and the L2 norms
of the present feature rows.

(Run it with ``python -m``; inside the package this module never shadows the standard ``inspect``.)
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import pandas as pd

from missrec_recbole.command import command_parser, run_command
from missrec_recbole.config import build_config, parse_known_options
from missrec_recbole.config_schema import ConfigError
from missrec_recbole.data.atomic_files import HISTORY, TARGET, USER, DatasetFormatError, count_rows, read_item_texts
from missrec_recbole.data.dataset import MISSRecDataset, modality_names, read_indexed_inter, validate_dataset
from missrec_recbole.model import MISSRec

__all__ = ["inspect_dataset", "format_report"]


def _stats(values) -> dict:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {"count": 0}
    return {"count": int(values.size), "min": float(values.min()), "mean": float(values.mean()),
            "median": float(np.median(values)), "max": float(values.max())}


def inspect_dataset(config, load: bool = False) -> dict:
    """Validate dataset ``config['dataset']`` like the loader and return its statistics.

    Raises :class:`DatasetFormatError` (from the loader's own checks) for a dataset it would reject.
    """
    files = validate_dataset(config)
    modalities = modality_names(config)
    if load:
        MISSRecDataset(config)
    name, folder = files.name, files.folder
    frames = {split: read_indexed_inter(files, split) for split in config["benchmark_filename"]}
    all_rows = pd.concat(frames.values(), ignore_index=True)
    per_user = all_rows.groupby(USER).size()
    lengths = per_user.to_numpy() + 1  # every row has one target; a user's first item is never a target
    used = set(all_rows[TARGET].astype(int))
    for history in all_rows[HISTORY]:
        used.update(int(i) for i in history.split())
    history_lengths = {split: frame[HISTORY].str.split().map(len).to_numpy() for split, frame in frames.items()}
    report = {
        "dataset": name,
        "folder": str(folder),
        "users": int(per_user.size),
        "users_in_user2index": count_rows(folder / f"{name}.user2index"),
        "items": files.n_items,
        "items_used": len(used),
        "interactions": int(lengths.sum()),
        "rows": {split: int(len(frame)) for split, frame in frames.items()},
        "sequence_length": _stats(lengths),
        "history_length": {split: _stats(h) for split, h in history_lengths.items()},
        "max_history": int(config["MAX_ITEM_LIST_LENGTH"]),
        "modalities": {},
    }
    used_mask = np.zeros(files.n_items, dtype=bool)
    used_mask[list(used)] = True
    for m in modalities:
        matrix = files.features[m]
        norms = np.linalg.norm(matrix.astype(np.float64), axis=1)
        present = norms > 0
        report["modalities"][m] = {
            "file": f"{name}.{config[f'{m}_suffix']}",
            "dim": int(matrix.shape[1]),
            "missing": int((~present).sum()),
            "missing_share": float((~present).mean()),
            "missing_share_used_items": float((~present[used_mask]).mean()) if used_mask.any() else 0.0,
            "norm": _stats(norms[present]),
        }
    text_file = folder / f"{name}.text"  # optional, not read by the loader: a problem is reported, not raised
    if text_file.is_file():
        try:
            report["items_with_text"] = sum(1 for text in read_item_texts(text_file).values() if text)
        except DatasetFormatError as error:
            report["text_problem"] = str(error)
    url_count = count_rows(folder / f"{name}.images")
    if url_count is not None:
        report["items_with_image_url"] = url_count
    return report


def _fmt(stats: dict, digits: int = 1) -> str:
    if not stats.get("count"):
        return "-"
    return (f"min {stats['min']:.{digits}f}  mean {stats['mean']:.{digits}f}  median {stats['median']:.{digits}f}  "
            f"max {stats['max']:.{digits}f}")


def format_report(report: dict) -> str:
    lines = [f"dataset {report['dataset']} ({report['folder']}): OK - passes the loader's checks",
             f"users         {report['users']}"
             + (f" (user2index lists {report['users_in_user2index']})"
                if report["users_in_user2index"] not in (None, report["users"]) else ""),
             f"items         {report['items']} ({report['items_used']} used in interactions)",
             f"interactions  {report['interactions']}  (rows: "
             + ", ".join(f"{s} {n}" for s, n in report["rows"].items()) + ")",
             f"sequence length per user   {_fmt(report['sequence_length'])}"]
    for split, stats in report["history_length"].items():
        lines.append(f"history length ({split:5})    {_fmt(stats)}  (limit {report['max_history']})")
    for m, info in report["modalities"].items():
        lines.append(f"{m:5} {info['file']}: dim {info['dim']}, missing {info['missing']} of {report['items']} items "
                     f"({info['missing_share']:.1%}; {info['missing_share_used_items']:.1%} of used items), "
                     f"L2 norm {_fmt(info['norm'], 2)}")
    if "items_with_text" in report:
        lines.append(f"{report['dataset']}.text: {report['items_with_text']} items with text")
    if "text_problem" in report:
        lines.append(f"warning: {report['text_problem']} (only feature extraction reads NAME.text)")
    if "items_with_image_url" in report:
        lines.append(f"{report['dataset']}.images: {report['items_with_image_url']} image URLs")
    return "\n".join(lines)


PROG = "python -m missrec_recbole.tools.inspect"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Summarise a MISSRec dataset and validate it like the loader."
    parser.add_argument("-d", "--dataset", required=True, help="dataset name (folder <data_path>/NAME)")
    parser.add_argument("--data_path", help="folder that contains NAME/ (default: ./dataset)")
    parser.add_argument("--config_files", help="extra YAML config files (space- or comma-separated)")
    parser.add_argument("--json", action="store_true", help="print the statistics as JSON")
    parser.add_argument("--load", action="store_true", help="also build the MISSRecDataset (RecBole's full load)")


def main(argv=None, parser=None) -> int:
    args, overrides = parse_known_options(command_parser(add_arguments, parser, PROG), argv)
    if args.data_path:
        overrides["data_path"] = args.data_path

    try:
        files = args.config_files.replace(",", " ").split() if args.config_files else None
        config = build_config(args.dataset, config_files=files, config_dict=overrides, model_class=MISSRec)
        report = inspect_dataset(config, load=args.load)
    except DatasetFormatError as error:
        print(f"error: {error}\n(the loader rejects dataset {args.dataset} with this message)", file=sys.stderr)
        return 1
    except (FileNotFoundError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
