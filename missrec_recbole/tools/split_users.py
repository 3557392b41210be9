"""Split a dataset's users into a pre-training half and an evaluation half (same items, same features).

There is one real multimodal domain (Scientific-mm), so the pre-trained rows of the benchmark
pre-train on some of its users and are evaluated on the others. :func:`split_users` draws the split:

* users = every ``user_id`` token in ``NAME.{train,valid,test}.inter``, sorted (numerically when all
  tokens are integers), shuffled with ``numpy.random.default_rng(seed)``; the first
  ``round(pre_ratio * n)`` users go to ``NAME-pre``, the rest to ``NAME-eval``;
* every .inter row of a user goes to that user's half (sequences stay whole: train, valid and test);
* every other ``NAME.*`` file (feature files, ``item2index``, ``text``) is hard-linked (or copied)
  unchanged, so both halves have the same item indices and byte-identical features;
  ``NAME.user2index`` is filtered to each half's users;
* each half is written to a temp folder and renamed (never half-written), with a ``.split.json``
  marker (seed, ratio, user counts); an existing half with the same marker is reused.

Command line::

    python -m missrec_recbole.tools.split_users Scientific-mm --data_path <datasets> --seed 2020 -o saved/datasets
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from missrec_recbole.command import command_parser, run_command
from missrec_recbole.data.atomic_files import SPLITS, inter_path, tab_rows
from missrec_recbole.files import atomic_directory

MARKER = ".split.json"
HALVES = ("pre", "eval")


def dataset_users(folder, name: str) -> list[str]:
    """Every user token of ``NAME.{train,valid,test}.inter``, sorted (numerically if possible)."""
    users = set()
    for split in SPLITS:
        users.update(fields[0] for number, fields in tab_rows(inter_path(folder, name, split)) if number > 1)
    numeric = all(u.isdigit() for u in users)
    return sorted(users, key=int if numeric else str)


def draw_split(users, seed: int, pre_ratio: float = 0.5) -> tuple[list[str], list[str]]:
    """Seeded split of ``users`` (a sorted list) into (pre-training users, evaluation users)."""
    if not 0 < pre_ratio < 1:
        raise ValueError(f"pre_ratio={pre_ratio} must be strictly between 0 and 1")
    order = np.random.default_rng(seed).permutation(len(users))
    n_pre = int(round(pre_ratio * len(users)))
    pre = sorted(order[:n_pre].tolist())
    return [users[i] for i in pre], [users[i] for i in sorted(order[n_pre:].tolist())]


def _write_inter(source: Path, target: Path, users: set) -> int:
    """The lines of ``users`` (and the header) copied as they are: a half keeps the source's tokens, byte for byte."""
    rows = 0
    with open(source, encoding="utf-8") as src, open(target, "w", encoding="utf-8") as out:
        out.write(src.readline())
        for line in src:
            if line.strip() and line.split("\t", 1)[0] in users:
                out.write(line)
                rows += 1
    return rows


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _write_half(folder: Path, name: str, half_name: str, users: set, tmp_dir: Path) -> dict:
    """All files of one half into ``tmp_dir``; returns per-split row counts."""
    rows = {split: _write_inter(inter_path(folder, name, split), inter_path(tmp_dir, half_name, split), users)
            for split in SPLITS}
    for source in sorted(folder.iterdir()):
        suffix = source.name[len(name):]
        if not source.name.startswith(f"{name}.") or suffix.endswith(".inter") or not source.is_file():
            continue
        target = tmp_dir / f"{half_name}{suffix}"
        if suffix == ".user2index":
            with open(target, "w", encoding="utf-8") as out:
                out.writelines("\t".join(f) + "\n" for _, f in tab_rows(source) if f[-1] in users)
        else:
            _link_or_copy(source, target)
    return rows


def _read_marker(folder: Path):
    try:
        return json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def split_users(name: str, data_path, out_path, seed: int = 2020, pre_ratio: float = 0.5,
                force: bool = False) -> dict:
    """Write ``out_path/NAME-pre/`` and ``out_path/NAME-eval/``; returns ``{"pre": name, "eval": name, ...}``.

    Halves already there with the same source, seed and ratio are kept (unless ``force``).
    """
    folder = Path(data_path) / name
    out_path = Path(out_path)
    out_path.mkdir(parents=True, exist_ok=True)
    key = {"source": str(folder.resolve()), "seed": seed, "pre_ratio": pre_ratio}
    names = {half: f"{name}-{half}" for half in HALVES}
    markers = [_read_marker(out_path / n) for n in names.values()]
    if not force and all(m and {k: m.get(k) for k in key} == key for m in markers):
        return {**names, **key, "users": markers[0]["users"],
                "rows": {h: m["rows"] for h, m in zip(HALVES, markers)}, "reused": True}
    users = dataset_users(folder, name)
    halves = dict(zip(HALVES, draw_split(users, seed, pre_ratio)))
    info = {**key, "users": {h: len(u) for h, u in halves.items()}, "rows": {}}
    for half, half_users in halves.items():
        with atomic_directory(out_path / names[half]) as tmp_dir:
            info["rows"][half] = _write_half(folder, name, names[half], set(half_users), tmp_dir)
            marker = {**key, "half": half, "users": info["users"], "rows": info["rows"][half]}
            (tmp_dir / MARKER).write_text(json.dumps(marker, indent=1), encoding="utf-8")
    return {**names, **info, "reused": False}


PROG = "python -m missrec_recbole.tools.split_users"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("dataset", help="dataset name under --data_path")
    parser.add_argument("--data_path", default="dataset", help="folder holding <dataset>/")
    parser.add_argument("-o", "--out_path", required=True, help="folder for <dataset>-pre/ and <dataset>-eval/")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--pre_ratio", type=float, default=0.5, help="share of users in the pre-training half")
    parser.add_argument("--force", action="store_true", help="rewrite the halves even if they exist")


def main(argv=None, parser=None) -> dict:
    args = command_parser(add_arguments, parser, PROG).parse_args(argv)
    info = split_users(args.dataset, args.data_path, args.out_path, args.seed, args.pre_ratio, args.force)
    print(f"{args.dataset}: {info['users']['pre']} users -> {Path(args.out_path) / info['pre']}, "
          f"{info['users']['eval']} users -> {Path(args.out_path) / info['eval']}"
          + (" (already there)" if info["reused"] else ""))
    return info


if __name__ == "__main__":
    sys.exit(run_command(main))
