"""One-at-a-time hyper-parameter check on *validation* metrics, for one row of the benchmark suite.

Each candidate is one ``key=value`` change from the defaults in ``props/``. It is run by the benchmark
suite itself (``python -m missrec_recbole.bench ... --tables full --rows ROW --seeds N``: same split,
schedule, early stopping and tie rule as the published table), in its own ``--out_dir`` and
``--work_dir``, ``--jobs`` runs at a time with one thread each. The summary shows validation metrics
only (the epoch chosen on valid NDCG@10): test metrics stay in each run's results.json, so choosing a
setting from this table does not look at the test split.

    OMP_NUM_THREADS=1 python benchmarks/tune.py -d Scientific-mm --data_path=<datasets> \\
        --row "MISSRec scratch transductive" --jobs 2 \\
        interest_ratio=0.1 interest_ratio=0.02 item_fusion=stack hidden_dropout_prob=0.3

The baseline (no change) is taken from ``--baseline`` (default ``results/<dataset>/results.json``) when it
holds the row for the same seeds; otherwise it is run as a candidate too. Output:
``results/<dataset>/tuning/<row>/tuning.json`` and a table; a later sweep of the row adds its candidates to
them, so a second round (or ``--seeds 3`` for the best candidates) keeps the first. Each candidate is
compared with the defaults' runs of the seeds it ran.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a clone
    sys.path.insert(0, str(ROOT))

from missrec_recbole.bench import FIRST_SEED, file_safe, stop, terminate_on_sigterm  # noqa: E402
from missrec_recbole.files import write_json  # noqa: E402


def parse_candidate(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"candidate {text!r}: expected key=value, e.g. interest_ratio=0.1")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def slug(text: str) -> str:
    return file_safe(text, keep="-_.=")


def valid_runs(results_file: Path, row: str, seeds) -> list[dict]:
    """The row's ok runs for ``seeds`` (latest per seed), validation part only."""
    if not results_file.is_file():
        return []
    runs = {}
    for run in json.loads(results_file.read_text(encoding="utf-8"))["runs"]:
        if run["row"] == row and run["table"] == "full" and run["status"] == "ok" and run["seed"] in seeds:
            if run["seed"] not in runs or run["date"] > runs[run["seed"]]["date"]:
                runs[run["seed"]] = run
    return [{"seed": r["seed"], "valid": r["valid"], "best_epoch": r.get("best_epoch"), "epochs": r.get("epochs"),
             "train_seconds_per_epoch": r.get("train_seconds_per_epoch")} for r in runs.values()]


class Children:
    """The bench invocations a sweep has started, so an interrupted sweep can stop them all."""

    def __init__(self):
        self.lock, self.stopping, self.running = threading.Lock(), False, []

    def start(self, command, **popen_args):
        """The started process, or None once the sweep is stopping."""
        with self.lock:
            if self.stopping:
                return None
            self.running.append(subprocess.Popen(command, **popen_args))
            return self.running[-1]

    def stop_all(self):
        with self.lock:
            self.stopping = True
        for process in self.running:
            stop(process, grace=30)  # each bench stops its own training worker on SIGTERM


def bench_command(args, overrides: dict, out_dir: Path, work_dir: Path) -> list[str]:
    return [sys.executable, "-m", "missrec_recbole.bench", "-d", args.dataset, "--data_path", str(args.data_path),
            "--tables", "full", "--rows", args.row, "--seeds", str(args.seeds), "--out_dir", str(out_dir),
            "--work_dir", str(work_dir), "--no_progress",
            *[f"--{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in overrides.items()]]


def run_candidate(args, children: Children, name: str, overrides: dict) -> tuple[str, int | None]:
    out_dir, work_dir = args.out / slug(name), args.work_dir / slug(name)
    work_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with open(work_dir / "tune.log", "w", encoding="utf-8") as log:
        process = children.start(bench_command(args, overrides, out_dir, work_dir), cwd=ROOT, env=env, stdout=log,
                                 stderr=subprocess.STDOUT)
        code = None if process is None else process.wait()
    print(f"[tune {time.strftime('%H:%M:%S')}] {name}: exit {code} (log {work_dir / 'tune.log'})", flush=True)
    return name, code


def mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summarise(args, seeds, fixed, plan, codes, baseline, baseline_file) -> dict:
    """This sweep's candidates, plus those of earlier sweeps of the row with the same fixed settings (their runs
    for ``seeds`` re-read), so a second round adds to ``tuning.json`` instead of replacing it."""
    summary = {"dataset": args.dataset, "row": args.row, "seeds": seeds, "fixed": fixed,
               "date": time.strftime("%Y-%m-%d %H:%M"), "metric": "valid, at the epoch chosen on valid NDCG@10",
               "candidates": {}}
    if "defaults" not in plan:
        summary["candidates"]["defaults"] = {"overrides": {}, "source": str(baseline_file), "runs": baseline}
    earlier_file = args.out / "tuning.json"
    earlier = json.loads(earlier_file.read_text(encoding="utf-8")) if earlier_file.is_file() else {}
    earlier = earlier.get("candidates", {}) if earlier.get("fixed") == fixed else {}
    entries = {name: entry for name, entry in earlier.items() if name != "defaults"}
    entries.update({name: {"overrides": overrides, "exit_code": codes[name]} for name, overrides in plan.items()})
    for name, entry in entries.items():
        summary["candidates"][name] = {**entry, "runs": valid_runs(args.out / slug(name) / "results.json",
                                                                   args.row, seeds)}
    return summary


def print_table(summary: dict) -> None:
    defaults = summary["candidates"]["defaults"]["runs"]
    print(f"{summary['row']} on {summary['dataset']}, seeds {summary['seeds']}: validation only")
    print("| candidate | seeds run | valid NDCG@10 | vs defaults, same seeds | valid Recall@10 | valid NDCG@50 | "
          "best epoch | s/epoch |")
    print("|---|---|---|---|---|---|---|---|")
    for name, entry in summary["candidates"].items():
        runs = entry["runs"]
        if not runs:
            print(f"| {name} | 0 | failed (exit {entry.get('exit_code')}) | | | | | |")
            continue
        ndcg = mean([r["valid"]["ndcg@10"] for r in runs])
        seeds = {r["seed"] for r in runs}  # a one-seed candidate is compared with the defaults' run of that seed
        reference = mean([r["valid"]["ndcg@10"] for r in defaults if r["seed"] in seeds])
        gain = f"{ndcg / reference - 1:+.1%}" if reference else "-"
        seconds = mean([r["train_seconds_per_epoch"] for r in runs])
        print(f"| {name} | {len(runs)} | {ndcg:.4f} | {gain} | {mean([r['valid']['recall@10'] for r in runs]):.4f} | "
              f"{mean([r['valid']['ndcg@50'] for r in runs]):.4f} | {mean([r['best_epoch'] for r in runs]):.0f} | "
              f"{'-' if seconds is None else f'{seconds:.1f}'} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-d", "--dataset", required=True)
    ap.add_argument("--data_path", type=Path, required=True)
    ap.add_argument("--row", default="MISSRec scratch transductive", help="a row name of the full-data table")
    ap.add_argument("--seeds", type=int, default=1, help="seeds 2020, 2021, ... per candidate")
    ap.add_argument("--jobs", type=int, default=2, help="candidates run at the same time (one thread each)")
    ap.add_argument("--baseline", type=Path, help="results.json holding the unchanged row (default: results/<d>/)")
    ap.add_argument("--out", type=Path, help="default: results/<dataset>/tuning/<row>/")
    ap.add_argument("--work_dir", type=Path, help="checkpoints and logs; default: saved/tune/<dataset>/<row>/")
    ap.add_argument("--fixed", action="append", type=parse_candidate, default=[], metavar="key=value",
                    help="a setting for every run, the baseline included (which is then always run)")
    ap.add_argument("candidates", nargs="+", type=parse_candidate, metavar="key=value")
    args = ap.parse_args(argv)
    args.data_path = args.data_path.resolve()
    args.out = (args.out or ROOT / "results" / args.dataset / "tuning" / slug(args.row)).resolve()
    args.work_dir = (args.work_dir or ROOT / "saved" / "tune" / args.dataset / slug(args.row)).resolve()
    seeds = [FIRST_SEED + i for i in range(args.seeds)]
    baseline_file = args.baseline or ROOT / "results" / args.dataset / "results.json"

    fixed = dict(args.fixed)
    plan = {f"{k}={v}": {**fixed, k: v} for k, v in args.candidates}
    baseline = [] if fixed else valid_runs(baseline_file, args.row, seeds)
    if len(baseline) < len(seeds):
        plan = {"defaults": fixed, **plan}
    children = Children()
    with terminate_on_sigterm(), ThreadPoolExecutor(max_workers=args.jobs) as pool:
        try:
            codes = dict(pool.map(lambda item: run_candidate(args, children, *item), plan.items()))
        except BaseException:  # Ctrl-C or SIGTERM: no bench (or its worker) keeps running
            children.stop_all()
            raise

    summary = summarise(args, seeds, fixed, plan, codes, baseline, baseline_file)
    write_json(args.out / "tuning.json", summary)
    print_table(summary)
    print(f"written: {args.out / 'tuning.json'}")
    return 0 if all(code == 0 for code in codes.values()) else 1


if __name__ == "__main__":
    from missrec_recbole.command import run_command  # noqa: E402  (bad input: one error line, no traceback)

    sys.exit(run_command(main))
