"""Where does pre-training pay? Test Recall@10 / NDCG@10 of every line of a benchmark report, split by how often
the test target occurs as a target in the training data, and each pre-trained line's gain over the scratch line
of the same model, mode and options in each split, with its 95% interval over test users (the report's paired
bootstrap). Reads results.json and ranks.npz of a bench out_dir and the dataset's train file.

    python benchmarks/long_tail.py results/Scientific --edges 5,24 --out benchmarks/results/long_tail_Scientific.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from missrec_recbole.bench.report import bootstrap_gain, group_runs, seed_mean_cases, train_frequency  # noqa: E402
from missrec_recbole.bench.store import Results, now  # noqa: E402
from missrec_recbole.command import run_command  # noqa: E402
from missrec_recbole.errors import InputError  # noqa: E402
from missrec_recbole.files import write_json  # noqa: E402


def frequency_groups(frequency: np.ndarray, edges: list[int]) -> list[tuple[str, np.ndarray]]:
    """(label, mask) per group of target frequencies: 0-e1, e1+1-e2, ..., above the last edge; groups without a
    test case are left out (their means and gain intervals would be undefined)."""
    bounds = [-1, *edges, int(frequency.max(initial=0))]
    groups = [(f"{low + 1}-{high}", (frequency > low) & (frequency <= high)) for low, high in zip(bounds, bounds[1:])
              if high > low]
    return [(label, mask) for label, mask in groups if mask.any()]


def scratch_label(label: str) -> str | None:
    """The scratch line a pre-trained line is compared with (same model, mode and options)."""
    for start in ("pre-trained (all weights)", "pre-trained"):
        if f" {start} " in label:
            return label.replace(f" {start} ", " scratch ", 1)
    return None


def long_tail(out_dir: Path, edges: list[int], table: str | None = None, data_path: Path | None = None) -> dict:
    if not (out_dir / "results.json").is_file():
        raise InputError(f"{out_dir / 'results.json'} not found: give a bench out_dir (--out_dir of the bench)")
    data = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
    ranks = Results(out_dir, {k: v for k, v in data.items() if k not in ("runs", "pretraining")})
    lines_by_table = {t: lines for t, lines in group_runs(data).items() if any(lines.values())}
    table = table or next(iter(lines_by_table), None)
    if table not in lines_by_table:
        raise InputError(f"{out_dir / 'results.json'}: no runs in table {table!r} (tables with runs: "
                        f"{', '.join(lines_by_table) or 'none'})")
    info = data["datasets_paths"][table]
    folder = Path(data_path or Path(info["path"])) / info["name"]
    if not (folder / f"{info['name']}.train.inter").is_file():
        raise InputError(f"{folder / (info['name'] + '.train.inter')} not found: give --data_path, the folder "
                        f"holding {info['name']}/ (the runs used {info['path']})")
    frequency_of = train_frequency(folder, info["name"])
    lines = {label: m for label, runs in lines_by_table[table].items() if (m := seed_mean_cases(runs, ranks))}
    if not lines:
        raise InputError(f"{out_dir / 'ranks.npz'}: no run of table {table!r} has per-case ranks")
    items = next(iter(lines.values()))["item"]
    frequency = np.array([frequency_of.get(int(i), 0) for i in items])
    groups = [("all", np.ones(len(items), dtype=bool)), *frequency_groups(frequency, edges)]
    result = {"date": now(), "out_dir": str(out_dir), "table": table, "dataset": info["name"], "edges": edges,
              "groups": []}
    for name, mask in groups:
        group = {"target_frequency": name, "cases": int(mask.sum()), "lines": {}, "pre-trained vs scratch": []}
        for label, m in lines.items():
            same_cases = np.array_equal(m["item"], items)
            group["lines"][label] = {"seeds": m["seeds"], **({k: float(m[k][mask].mean()) for k in ("recall@10", "ndcg@10")}
                                                            if same_cases else {})}
        for label in lines:
            scratch = scratch_label(label)
            if scratch in lines and "ndcg@10" in group["lines"][label] and "ndcg@10" in group["lines"][scratch]:
                ours, theirs = group["lines"][label]["ndcg@10"], group["lines"][scratch]["ndcg@10"]
                interval = bootstrap_gain(lines[label]["ndcg@10"][mask], lines[scratch]["ndcg@10"][mask])
                group["pre-trained vs scratch"].append(
                    {"pre-trained": label, "scratch": scratch, "ndcg@10 gain": relative_gain(ours, theirs),
                     "interval": finite_or_none(interval)})
        result["groups"].append(group)
    return result


def relative_gain(ours: float, theirs: float) -> float | None:
    """ours / theirs - 1; None (unbounded) where only ours has hits, 0 where neither has (as the interval)."""
    if theirs:
        return ours / theirs - 1
    return None if ours else 0.0


def finite_or_none(values) -> list:
    """An interval for the JSON file: an unbounded end (the scratch line has no hit in some resamples) as null,
    since JSON has no infinity (Python would write the non-standard ``Infinity``)."""
    return [float(v) if np.isfinite(v) else None for v in values]


def print_table(result: dict) -> None:
    print(f"{result['dataset']} ({result['table']}), test NDCG@10 by the target's training frequency "
          f"(seed means; gain of pre-trained over scratch with its 95% interval over test users)")
    for group in result["groups"]:
        seen = group["target_frequency"]
        print(f"\n## {'all targets' if seen == 'all' else f'targets seen {seen} times in training'}: "
              f"{group['cases']} test cases")
        for label, m in group["lines"].items():
            if "ndcg@10" in m:
                print(f"  {label:60s} Recall@10 {m['recall@10']:.4f}  NDCG@10 {m['ndcg@10']:.4f}  ({m['seeds']} seeds)")
        for c in group["pre-trained vs scratch"]:
            gain, low, high = (f"{v:+.1%}" if v is not None else "unbounded"
                               for v in (c["ndcg@10 gain"], *c["interval"]))
            print(f"  {c['pre-trained']} vs scratch: {gain} [{low}, {high}]")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="a bench out_dir (results.json + ranks.npz)")
    parser.add_argument("--edges", default="5,24", help="upper ends of the frequency groups (default 5,24)")
    parser.add_argument("--table", help="the report's table (default: the first with runs)")
    parser.add_argument("--data_path", type=Path, help="folder holding the dataset (default: the runs' data_path)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    args = parser.parse_args(argv)
    try:
        edges = sorted(int(e) for e in args.edges.split(","))
        if not edges or edges[0] < 0:
            raise ValueError
    except ValueError:
        parser.error(f"--edges {args.edges!r}: give non-negative integers separated by commas, e.g. 5,24")
    result = long_tail(args.out_dir, edges, args.table, args.data_path)
    print_table(result)
    if args.out:
        write_json(args.out, result)
        print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))  # bad input: one error line, no traceback
