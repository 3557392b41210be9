"""Validation curves of benchmark runs, compared at equal epoch budgets (validation only, never test).

Investigations on a transfer target run the benchmark suite with one changed setting and a short schedule
(``--finetune.epochs=25``, own ``--out_dir``); their results.json keeps only the best epoch. This reads each
run's RecBole log (the ``log`` of every run in the given results.json files, plus ``LABEL=LOG`` pairs for runs
that were stopped before the end) and reports, per run, the best valid NDCG@10 within the first 10 / 20 / 25
epochs (``--budgets``) and overall, so a 25-epoch variant is compared with the full default run at the same budget.

    python benchmarks/valid_curves.py results/Office/results.json results/Office/tuning/*/results.json \\
        --extra "MISSRec pre-trained inductive (stopped)=saved/bench/Office/logs/transfer-....log" \\
        --out benchmarks/results/valid_curves_Office.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from missrec_recbole.bench.store import now  # noqa: E402
from missrec_recbole.files import write_json  # noqa: E402

VALID_LINE = re.compile(r"epoch (\d+) evaluating \[.*valid_score: ([0-9.]+)\]")
BUDGETS = (10, 20, 25)  # default --budgets


def valid_curve(log: Path) -> list[float]:
    """valid NDCG@10 (the suite's valid_metric) of each evaluated epoch, in order; a resumed run's log repeats
    nothing (the resumed process appends the epochs after the last one written)."""
    scores = {}
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        match = VALID_LINE.search(line)
        if match:
            scores[int(match.group(1))] = float(match.group(2))
    return [scores[epoch] for epoch in sorted(scores)]


def describe(label: str, curve: list[float], changes: dict, finished: bool, budgets=BUDGETS) -> dict:
    best = max(range(len(curve)), key=curve.__getitem__) if curve else None
    return {"label": label, "changes": changes, "finished": finished, "epochs": len(curve),
            "best": curve[best] if curve else None, "best_epoch": best,
            **{f"best_in_{n}": max(curve[:n]) if len(curve) >= n else None for n in budgets},
            "curve": curve}


def runs_of(results_file: Path, budgets=BUDGETS) -> list[dict]:
    data = json.loads(results_file.read_text(encoding="utf-8"))
    settings = data.get("settings", {})
    found = []
    for run in data.get("runs", []):
        log = Path(run.get("log") or "")
        if run.get("status") == "ok" and log.is_file():
            changes = {**settings.get("overrides", {}), **settings.get("model_overrides", {}).get(run.get("kind"), {}),
                       **settings.get("finetune_overrides", {})}  # as the bench merges them (runner.Suite.settings)
            changes.pop("epochs", None)
            seed = f", seed {run['seed']}" if "seed" in run else ""  # one row per seed: tell them apart
            label = run["row"] + seed + "".join(f", {k}={v}" for k, v in changes.items())
            found.append({**describe(label, valid_curve(log), changes, True, budgets), "seed": run.get("seed")})
    return found


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="*", type=Path, help="results.json files of bench invocations")
    parser.add_argument("--extra", action="append", default=[], help="LABEL=LOG of a run not in any results.json")
    parser.add_argument("--budgets", default=",".join(map(str, BUDGETS)), help="epoch budgets, comma-separated")
    parser.add_argument("--out", type=Path, help="write the curves and summaries as JSON")
    args = parser.parse_args(argv)
    budgets = tuple(int(n) for n in args.budgets.split(","))
    rows = [row for path in args.results for row in runs_of(path, budgets)]
    for pair in args.extra:
        label, _, log = pair.rpartition("=")  # the label may hold "key=value"
        if not Path(log).is_file():
            parser.error(f"--extra {pair!r}: log {log} not found")
        rows.append(describe(label, valid_curve(Path(log)), {}, False, budgets))
    cell = lambda v: "   -  " if v is None else f"{v:.4f}"  # noqa: E731
    print(f"{'run':80s} " + " ".join(f"<={n:<4d}" for n in budgets) + "  best (epoch/of)")
    for row in rows:
        print(f"{row['label'][:80]:80s} " + " ".join(cell(row[f'best_in_{n}']) for n in budgets)
              + f"  {cell(row['best'])} ({row['best_epoch']}/{row['epochs']}{'' if row['finished'] else ', stopped'})")
    if args.out:
        write_json(args.out, {"date": now(), "metric": "valid NDCG@10", "budgets": budgets, "runs": rows})
    return rows


if __name__ == "__main__":
    from missrec_recbole.command import run_command  # noqa: E402  (bad input: one error line, no traceback)

    sys.exit(run_command(main))
