"""Does transfer pay once the pre-training corpus grows? MISSRec's transfer gain over training from scratch (test
NDCG@10, seed means, with the report's 95% interval over test users) against the training rows of the pre-training
corpus, per target dataset and fine-tuning recipe, from the bench out_dirs of each corpus. Writes the figures as JSON
and a plot (gain vs corpus rows, one line per target and recipe).

    python benchmarks/transfer_scaling.py --data_path data/ \\
        --point Scientific results/Scientific results/Scientific/tuning/unfreeze_decoder_full \\
        --point Scientific results/Scientific/beauty --point Scientific results/Scientific/multi_domain \\
        --point Office results/Office --point Office results/Office/beauty --point Office results/Office/multi_domain \\
        --out results/transfer_scaling.json --figure results/transfer_scaling.png

Each ``--point TARGET DIR [DIR ...]`` is one pre-training corpus (the ``--pretrain_on`` of the bench runs in the
folders, which must agree) for one target; the runs of its folders are pooled, so a recipe measured in a tuning
folder and the scratch runs of the main folder make one point. The recipes (MISSRec, ``item_adapter: moe``,
inductive): ``adapters only``; ``all weights``; ``adapters + item decoder`` (``unfreeze: [item_decoder]``); and
``best recipe``: of the last two, the one with the higher mean valid NDCG@10 over the seeds both have (chosen on
validation only, at the seed the choice was made; a tie at the records' 4 decimals is broken by valid Recall@10,
then NDCG@50, then Recall@50).
Every pre-trained line is compared with MISSRec from scratch (same options) found among the point's runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from missrec_recbole.bench.report import bootstrap_gain, seed_mean_cases  # noqa: E402
from missrec_recbole.bench.store import Results, now  # noqa: E402
from missrec_recbole.command import run_command  # noqa: E402
from missrec_recbole.data.atomic_files import tab_rows  # noqa: E402
from missrec_recbole.errors import InputError  # noqa: E402
from missrec_recbole.files import atomic_write, write_json  # noqa: E402

MODEL_OPTIONS = {"item_adapter": "moe"}  # the MISSRec variant of the transfer study
# recipe -> (bench row, the fine-tuning options that tell it apart besides MODEL_OPTIONS)
RECIPES = {
    "scratch": ("MISSRec scratch inductive", {}),
    "adapters only": ("MISSRec pre-trained inductive", {}),
    "all weights": ("MISSRec pre-trained (all weights) inductive", {"adapters_only": False}),
    "adapters + item decoder": ("MISSRec pre-trained inductive", {"unfreeze": ["item_decoder"]}),
}
BEST_OF = ("all weights", "adapters + item decoder")  # "best recipe": the one of these with the higher valid NDCG@10
# the records keep RecBole's 4 decimals, so two recipes can tie on valid NDCG@10: the other validation metrics, in
# this order, break the tie (still validation only)
VALID_ORDER = ("ndcg@10", "recall@10", "ndcg@50", "recall@50")
PLOTTED = ("adapters only", "best recipe")


class PooledRanks:
    """Per-case ranks of runs from several out_dirs (``cases(key)`` as :class:`Results` gives it)."""

    def __init__(self, stores: list[Results]):
        self.stores = stores

    def cases(self, key: str):
        return next((found for store in self.stores if (found := store.cases(key)) is not None), None)


def read_point(target: str, folders: list[Path]) -> tuple[str, list[dict], PooledRanks]:
    """The pre-training corpus of the folders' pre-trained runs, the finished runs of all (one per key) and their
    ranks."""
    headers, runs, stores = [], {}, []
    for folder in folders:
        path = folder / "results.json"
        if not path.is_file():
            raise InputError(f"{path} not found: each --point folder must be a bench out_dir")
        data = json.loads(path.read_text(encoding="utf-8"))
        if data["dataset"] != target:
            raise InputError(f"{path}: runs on {data['dataset']!r}, not on the point's target {target!r}")
        headers.append(data)
        runs.update({r["key"]: r for r in data["runs"] if r["status"] == "ok" and r["table"] == "transfer"})
        stores.append(Results(folder, {}))
    corpora = {h["datasets"]["pre"] for h in headers if any(r["pretrained"] for r in h["runs"])}
    if len(corpora) > 1:
        raise InputError(f"--point {target}: the folders were pre-trained on different corpora {sorted(corpora)}; "
                         "give one point per corpus")
    return (corpora or {headers[0]["datasets"]["pre"]}).pop(), list(runs.values()), PooledRanks(stores)


def recipe_runs(runs: list[dict], recipe: str) -> list[dict]:
    """The runs of ``recipe``: its row with exactly MODEL_OPTIONS + the recipe's options (nothing else changed),
    of the latest config hash (props/ or data changed since older ones, as the report counts them)."""
    row, options = RECIPES[recipe]
    wanted = {**MODEL_OPTIONS, **options}
    chosen = [r for r in runs if r["row"] == row and r.get("settings", {}) == wanted]
    if not chosen:
        return []
    latest = max(chosen, key=lambda r: r["date"])["config_hash"]
    return sorted((r for r in chosen if r["config_hash"] == latest), key=lambda r: r["seed"])


def corpus_rows(corpus: str, data_path: Path) -> int:
    """Training rows of the pre-training corpus (its datasets' ``.train.inter`` files, header left out)."""
    total = 0
    for name in corpus.split(","):
        path = data_path / name / f"{name}.train.inter"
        if not path.is_file():
            raise InputError(f"{path} not found: give --data_path, the folder holding the pre-training datasets")
        total += sum(1 for number, _ in tab_rows(path) if number > 1)
    return total


def _mean(runs: list[dict], split: str) -> float:
    return float(np.mean([r[split]["ndcg@10"] for r in runs]))


def compare(runs: list[dict], scratch: list[dict], ranks: PooledRanks) -> dict:
    """A recipe's line against scratch: seeds, means, gain of the seed means and its interval over test users."""
    ours, theirs = _mean(runs, "test"), _mean(scratch, "test")
    pair = [seed_mean_cases(lines, ranks) for lines in (runs, scratch)]
    interval = None
    if None not in pair and np.array_equal(pair[0]["item"], pair[1]["item"]):
        interval = [float(v) if np.isfinite(v) else None for v in bootstrap_gain(pair[0]["ndcg@10"], pair[1]["ndcg@10"])]
    return {"seeds": [r["seed"] for r in runs], "test ndcg@10": ours, "valid ndcg@10": _mean(runs, "valid"),
            "gain": ours / theirs - 1, "interval": interval}


def scaling_point(target: str, folders: list[Path], data_path: Path) -> dict:
    corpus, runs, ranks = read_point(target, folders)
    scratch = recipe_runs(runs, "scratch")
    if not scratch:
        raise InputError(f"--point {target} {' '.join(map(str, folders))}: no MISSRec scratch run "
                         f"({RECIPES['scratch'][0]}, {MODEL_OPTIONS}) to compare with; add the folder that has it "
                         "(or copy it with the bench's --runs_from)")
    point = {"target": target, "corpus": corpus, "corpus rows": corpus_rows(corpus, data_path),
             "folders": [str(f) for f in folders],
             "scratch": {"seeds": [r["seed"] for r in scratch], "test ndcg@10": _mean(scratch, "test"),
                         "valid ndcg@10": _mean(scratch, "valid")},
             "recipes": {}}
    recipe_lines = {recipe: chosen for recipe in RECIPES if recipe != "scratch" and (chosen := recipe_runs(runs, recipe))}
    for recipe, chosen in recipe_lines.items():
        point["recipes"][recipe] = compare(chosen, scratch, ranks)
    candidates = {name: recipe_lines[name] for name in BEST_OF if name in recipe_lines}
    if candidates:
        best, seeds = best_recipe(candidates)
        point["recipes"]["best recipe"] = {**point["recipes"][best], "chosen": best, "chosen on seeds": seeds}
    return point


def best_recipe(candidates: dict[str, list[dict]]) -> tuple[str, list[int]]:
    """The candidate with the higher mean validation metrics (:data:`VALID_ORDER`), over the seeds every candidate
    has (the one seed the choice is made at, even after the chosen recipe's other seeds have run); over all seeds
    where they share none. Returns the name and those seeds."""
    common = set.intersection(*({r["seed"] for r in lines} for lines in candidates.values()))

    def score(name):
        lines = [r for r in candidates[name] if r["seed"] in common] or candidates[name]
        return tuple(float(np.mean([r["valid"][m] for r in lines])) for m in VALID_ORDER)

    return max(candidates, key=score), sorted(common)


def plot(points: list[dict], path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "figure skipped: matplotlib is not installed (pip install -e .[plot])"
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for target in dict.fromkeys(p["target"] for p in points):
        mine = sorted((p for p in points if p["target"] == target), key=lambda p: p["corpus rows"])
        for recipe, style in zip(PLOTTED, ("-o", "--s")):
            shown = [p for p in mine if recipe in p["recipes"]]
            if not shown:
                continue
            x = [p["corpus rows"] for p in shown]
            y = [100 * p["recipes"][recipe]["gain"] for p in shown]
            line, = ax.plot(x, y, style, label=f"{target}: {recipe}")
            for p, xi, yi in zip(shown, x, y):
                interval = p["recipes"][recipe]["interval"]
                if interval and None not in interval:
                    ax.vlines(xi, 100 * interval[0], 100 * interval[1], color=line.get_color(), alpha=0.3)
                seeds = len(p["recipes"][recipe]["seeds"])
                ax.annotate(f"{p['corpus'].replace(',', '+')} ({seeds}s)", (xi, yi), fontsize=7,
                            xytext=(4, 4), textcoords="offset points")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("training rows of the pre-training corpus")
    ax.set_ylabel("test NDCG@10 gain over MISSRec from scratch (%)")
    ax.set_title("MISSRec (MoE adapter): transfer gain vs pre-training corpus\n(bars: 95% interval over test users; "
                 "s: seeds)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda h: fig.savefig(h, format="png", dpi=110))
    plt.close(fig)
    return f"written: {path}"


def print_points(points: list[dict]) -> None:
    for p in points:
        print(f"\n{p['target']} <- {p['corpus']} ({p['corpus rows']:,} rows): scratch {p['scratch']['test ndcg@10']:.4f} "
              f"({len(p['scratch']['seeds'])} seeds)")
        for recipe, line in p["recipes"].items():
            interval = ("[" + ", ".join(f"{v:+.1%}" if v is not None else "unbounded" for v in line["interval"]) + "]"
                        if line["interval"] else "(no ranks)")
            chosen = f" = {line['chosen']}" if "chosen" in line else ""
            print(f"  {recipe + chosen:40s} test {line['test ndcg@10']:.4f} ({len(line['seeds'])} seeds)  valid "
                  f"{line['valid ndcg@10']:.4f}  gain {line['gain']:+.1%} {interval}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--point", nargs="+", action="append", required=True, metavar=("TARGET", "DIR"),
                        help="a target dataset and the bench out_dir(s) of one pre-training corpus")
    parser.add_argument("--data_path", type=Path, required=True, help="folder holding the pre-training datasets")
    parser.add_argument("--out", type=Path, help="write the points as JSON")
    parser.add_argument("--figure", type=Path, help="write the plot (PNG)")
    args = parser.parse_args(argv)
    for point in args.point:
        if len(point) < 2:
            parser.error(f"--point {' '.join(point)}: give a target dataset and at least one out_dir")
    points = [scaling_point(target, [Path(f) for f in folders], args.data_path) for target, *folders in args.point]
    print_points(points)
    if args.out:
        write_json(args.out, {"date": now(), "model options": MODEL_OPTIONS, "points": points})
        print(f"\nwritten: {args.out}")
    if args.figure:
        print(plot(points, args.figure))
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))  # bad input: one error line, no traceback
