"""Training speed, side by side with an older commit: rows/s of the training step, the parts of an epoch (interest
refresh, training pass, full-ranking validation) and peak RSS, per model, stage and thread count.

    python benchmarks/speed.py --data_path data/ --baseline 707ca56 --threads 1,2
    python benchmarks/speed.py --data_path data/ --baseline 707ca56 --cases missrec-office --steps 10 --full_epoch
    python benchmarks/speed.py --data_path data/ --baseline 707ca56 --bf16    # + this checkout under bf16 autocast
    python benchmarks/speed.py --data_path data/ --baseline 707ca56 --shared_item_tokens  # + that approximate option
    python benchmarks/speed.py --data_path data/ --cases missrec-office --steps 8 --profile  # which ops use 2 threads

Each measurement runs in its own process (its peak RSS is its own) with ``OMP_NUM_THREADS`` set, importing the
package from this checkout or from a git worktree of ``--baseline`` (made in a temp folder, removed afterwards).
The two versions alternate case by case, so that both see the same machine load: a speed-up is a ratio measured in
one run on one machine. The training step is timed on ``--steps`` batches after 2 warm-up steps (the epoch's
training pass is then estimated from that rate, or timed in full with ``--full_epoch``); refresh and validation
are timed in full. Needs the prepared datasets Office and Beauty under ``--data_path``
(``python -m missrec_recbole.tools.prepare``); the pre-training case reads Beauty and Office merged.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# case -> (model, stage, dataset(s), options on top of props/)
CASES = {
    "missrec-office": ("MISSRec", "finetune", "Office", {"item_adapter": "moe", "mode": "inductive"}),
    "unisrec-office": ("UniSRec", "finetune", "Office", {"mode": "inductive"}),
    "sasrec-office": ("SASRec", "finetune", "Office", {}),
    "missrec-pretrain-beauty+office": ("MISSRec", "pretrain", "Beauty,Office",
                                       {"item_adapter": "moe", "train_batch_size": 1024}),
}


# ---------------------------------------------------------------------------------------------- worker (child)
def _build(spec):
    """(config, model, trainer, train, valid) of a case with the package version on sys.path."""
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec

    import missrec_recbole  # noqa: F401  (RecBole compatibility fixes)
    from missrec_recbole import quick_start
    from missrec_recbole.model import MISSRec, UniSRec
    from missrec_recbole.trainer import MISSRecTrainer

    options = {**spec["options"], "data_path": spec["data_path"], "state": "WARNING", "seed": 2020,
               "checkpoint_dir": spec["tmp"], "show_progress": False}
    if spec["model"] == "SASRec":
        from missrec_recbole.bench.worker import sasrec_config

        config = sasrec_config(spec["dataset"], config_dict=options)
        train, valid, _ = data_preparation(config, create_dataset(config))
        model = SASRec(config, train._dataset)
    else:
        model_class = {"MISSRec": MISSRec, "UniSRec": UniSRec}[spec["model"]]
        config = quick_start.build_config(spec["dataset"], spec["stage"], config_dict=options, model_class=model_class)
        _, train, valid, _ = quick_start.prepare_data(config, quick_start.check_dataset(config))
        model = model_class(config, train._dataset)
    return config, model, MISSRecTrainer(config, model), train, valid


def _steps(loss_func, optimizer, batches) -> tuple[float, float, int]:
    """Wall seconds, process CPU seconds (less sensitive to other jobs on the machine) and rows of training steps."""
    start, cpu, rows = time.perf_counter(), time.process_time(), 0
    for batch in batches:
        optimizer.zero_grad()
        loss = loss_func(batch)
        (sum(loss) if isinstance(loss, tuple) else loss).backward()
        optimizer.step()
        rows += len(batch)
    return time.perf_counter() - start, time.process_time() - cpu, rows


# op -> category of the profile's summary; every other op is "other ops"; the thread scaling shows the top ops
OP_CATEGORIES = {"matrix products": ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::addbmm",
                                     "aten::_addmm_activation"),
                 "random numbers": ("aten::random_", "aten::bernoulli_", "aten::uniform_", "aten::normal_",
                                    "aten::exponential_")}
PROFILE_TOP_OPS = 25


def _profile(loss_func, optimizer, batches) -> dict:
    """The same training steps again under ``torch.profiler``: per step, the self CPU seconds of the ops that took
    most, their sum per category, and what ran outside any op (Python, the autograd engine's bookkeeping and the
    profiler's own overhead: the profiled wall time less the ops'). Compared across thread counts, it shows which
    parts use the second core and which do not."""
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        seconds, _, _ = _steps(loss_func, optimizer, batches)
    steps = len(batches)
    ops = {e.key: e.self_cpu_time_total / 1e6 / steps for e in profiler.key_averages() if e.self_cpu_time_total > 0}
    categories = dict.fromkeys([*OP_CATEGORIES, "other ops"], 0.0)
    for op, op_seconds in ops.items():
        category = next((c for c, names in OP_CATEGORIES.items() if op in names), "other ops")
        categories[category] += op_seconds
    categories["outside ops"] = seconds / steps - sum(ops.values())
    return {"step_seconds": seconds / steps, "categories": categories,
            "ops": dict(sorted(ops.items(), key=lambda item: -item[1]))}


def worker(spec_file: str) -> None:
    import torch

    spec = json.loads(Path(spec_file).read_text())
    setup = time.perf_counter()
    config, model, trainer, train, valid = _build(spec)
    result = {"setup_seconds": time.perf_counter() - setup, "threads": torch.get_num_threads(),
              "train_rows": len(train.dataset), "batch_size": config["train_batch_size"]}
    model.train()
    if hasattr(model, "refresh_interests"):
        start = time.perf_counter()
        model.refresh_interests()
        result["refresh_seconds"] = time.perf_counter() - start
    if spec["full_epoch"]:
        start, cpu = time.perf_counter(), time.process_time()
        trainer._train_epoch(train, 0)
        result["train_seconds"] = time.perf_counter() - start
        result["rows_per_second"] = result["train_rows"] / result["train_seconds"]
        result["rows_per_cpu_second"] = result["train_rows"] / (time.process_time() - cpu)
    else:
        batches = []
        for batch in train:
            batches.append(batch)
            if len(batches) == spec["steps"] + 2:
                break
        loss_func = model.calculate_loss
        if spec["options"].get("mixed_precision"):  # as the trainer's training pass runs it
            from missrec_recbole.trainer.trainer import under_autocast

            loss_func = under_autocast(loss_func, trainer.device.type, trainer.autocast_dtype)
        _steps(loss_func, trainer.optimizer, batches[:2])  # warm-up: allocator, lazy inits
        seconds, cpu_seconds, rows = _steps(loss_func, trainer.optimizer, batches[2:])
        result["rows_per_second"], result["rows_per_cpu_second"] = rows / seconds, rows / cpu_seconds
        result["train_seconds"] = result["train_rows"] / result["rows_per_second"]  # estimated from the rate
        if spec["profile"]:  # after the timing, so that the profiler's overhead is not in the rates
            result["profile"] = _profile(loss_func, trainer.optimizer, batches[2:])
    if spec["stage"] == "finetune":
        start = time.perf_counter()
        trainer.evaluate(valid, load_best_model=False)
        result["valid_seconds"] = time.perf_counter() - start
    result["epoch_seconds"] = sum(result.get(k, 0.0) for k in ("refresh_seconds", "train_seconds", "valid_seconds"))
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Path(spec["out"]).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------- parent
def merged_corpus(data_path: Path, names: str, folder: Path) -> tuple[str, Path]:
    """The pre-training datasets merged once (with this checkout's merge tool) for both versions."""
    if "," not in names:
        return names, data_path
    merged = names.replace(",", "+")
    if not (folder / merged).is_dir():
        subprocess.run([sys.executable, "-m", "missrec_recbole.tools.merge", *names.split(","), "-o", merged,
                        f"--data_path={data_path}", f"--out_path={folder}"], check=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    return merged, folder


def measure(version_root: Path, case: str, threads: int, args, tmp: Path, extra_options=None) -> dict:
    model, stage, names, options = CASES[case]
    options = {**options, **(extra_options or {})}
    dataset, data_path = merged_corpus(args.data_path, names, tmp.parent / "merged")  # once per run
    spec = {"model": model, "stage": stage, "dataset": dataset, "data_path": str(data_path), "options": options,
            "steps": args.steps, "full_epoch": args.full_epoch, "profile": args.profile,
            "tmp": str(tmp / "saved"),
            "out": str(tmp / "out.json")}
    (tmp / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(version_root)}
    process = subprocess.run([sys.executable, str(Path(__file__).resolve()), "_worker", str(tmp / "spec.json")],
                             cwd=tmp, env=env, capture_output=True, text=True)
    if process.returncode != 0:
        raise RuntimeError(f"{case} at {version_root}: exit {process.returncode}\n{process.stderr[-3000:]}")
    return json.loads((tmp / "out.json").read_text())


def git(*argv, cwd=ROOT) -> str:
    return subprocess.run(["git", *argv], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_path", type=Path, required=True, help="folder with the prepared Office and Beauty")
    parser.add_argument("--baseline", help="git ref of the older version to measure alongside (default: none)")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of: " + ",".join(CASES))
    parser.add_argument("--threads", default="1,2", help="thread counts (default 1,2)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per measurement (default 20)")
    parser.add_argument("--full_epoch", action="store_true", help="time the whole training pass, not --steps")
    parser.add_argument("--bf16", action="store_true",
                        help="also measure this checkout under mixed_precision: bf16 (version 'current-bf16')")
    parser.add_argument("--shared_item_tokens", action="store_true",
                        help="also measure MISSRec under shared_item_tokens: true ('current-shared', and "
                             "'current-bf16-shared' with --bf16)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile the timed steps (torch.profiler, after timing them): where each thread "
                             "count spends the step, and which ops a second thread speeds up")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "speed.json")
    args = parser.parse_args(argv)
    if args.profile and args.full_epoch:
        parser.error("--profile profiles the --steps batches: leave out --full_epoch")
    cases = args.cases.split(",")
    if set(cases) - set(CASES):
        parser.error(f"--cases: {sorted(set(cases) - set(CASES))} not in {list(CASES)}")
    threads = [int(t) for t in args.threads.split(",")]
    args.data_path = args.data_path.resolve()
    with tempfile.TemporaryDirectory(prefix="speed-") as tmp_dir:
        tmp = Path(tmp_dir)
        commit = git("rev-parse", "--short", "HEAD") + ("-dirty" if git("status", "--porcelain", "--untracked-files=no")
                                                        else "")
        variants = {"current": {}}
        if args.bf16:
            variants["current-bf16"] = {"mixed_precision": "bf16"}
        if args.shared_item_tokens:
            variants.update({f"{name}-shared": {**options, "shared_item_tokens": True}
                             for name, options in list(variants.items())})
        versions = {name: (ROOT, commit, options) for name, options in variants.items()}
        if args.baseline:
            git("worktree", "add", "--detach", str(tmp / "baseline"), args.baseline)
            versions["baseline"] = (tmp / "baseline", git("rev-parse", "--short", args.baseline), {})
        try:
            results, failed = [], []
            for case in cases:
                for n in threads:
                    for name, (root, version_commit, extra_options) in versions.items():
                        if "shared_item_tokens" in extra_options and CASES[case][0] != "MISSRec":
                            continue  # a MISSRec option
                        work = tmp / f"{name}-{case}-{n}"
                        work.mkdir()
                        try:
                            measured = measure(root, case, n, args, work, extra_options)
                        except RuntimeError as error:  # e.g. an older version without a case's option: go on
                            print(f"{case} {n} thread(s) {name}: failed, left out\n{error}", flush=True)
                            failed.append({"case": case, "threads": n, "version": name,
                                           "error": str(error)[-500:]})
                            continue
                        results.append({"case": case, "threads": n, "version": name, "commit": version_commit,
                                        **measured})
                        print(f"{case:32s} {n} thread(s) {name:8s} ({version_commit}): {measured['rows_per_second']:7.0f} rows/s "
                              f"({measured['rows_per_cpu_second']:.0f} per CPU s), "
                              f"epoch ~{measured['epoch_seconds']:6.1f} s, peak RSS {measured['peak_rss_bytes'] / 2**30:.2f} GB",
                              flush=True)
        finally:
            if args.baseline:
                git("worktree", "remove", "--force", str(tmp / "baseline"))
    ratios = speed_ratios(results)
    for r in ratios:
        print(f"{r['case']:32s} {r['version']:12s} {r['threads']} thread(s): step {r['step speed-up']:.2f}x (CPU time "
              f"{r['step speed-up, CPU time']:.2f}x), epoch {r['epoch speed-up']:.2f}x; epoch vs the baseline at 1 "
              f"thread {r.get('epoch speed-up vs baseline at 1 thread', float('nan')):.2f}x")
    scaling = thread_scaling(results) if args.profile else []
    for row in scaling:
        print(f"{row['case']:32s} {row['version']:12s} {row['part']:40.40s} s/step: "
              + ", ".join(f"{n} thread(s) {s:.4f}" for n, s in row["seconds_per_step"].items())
              + f"; speed-up {row['speed-up']:.2f}x")
    from missrec_recbole.bench.store import machine, now  # this checkout's (the workers import their version's)
    from missrec_recbole.files import write_json

    write_json(args.out, {"date": now(), "machine": machine(), "load_average_at_end": os.getloadavg(),
                          "steps": args.steps, "full_epoch": args.full_epoch, "results": results, "ratios": ratios,
                          "thread_scaling": scaling, "failed": failed})
    print(f"written: {args.out}")
    return 0


def speed_ratios(results: list[dict]) -> list[dict]:
    """Each measured version of this checkout (current, current-bf16, current-shared, ...) against the baseline, per
    case and thread count: training-step rows/s and whole-epoch seconds at the same thread count, and the epoch
    against the baseline at 1 thread (the benchmark's setting: what using both cores buys on top)."""
    by = {(r["case"], r["threads"], r["version"]): r for r in results}
    ratios = []
    for (case, n, version), current in by.items():
        baseline = by.get((case, n, "baseline"))
        if version == "baseline" or not baseline:
            continue
        ratio = {"case": case, "version": version, "threads": n,
                 "step speed-up": current["rows_per_second"] / baseline["rows_per_second"],
                 "step speed-up, CPU time": current["rows_per_cpu_second"] / baseline["rows_per_cpu_second"],
                 "epoch speed-up": baseline["epoch_seconds"] / current["epoch_seconds"]}
        one_thread = by.get((case, 1, "baseline"))
        if one_thread:
            ratio["epoch speed-up vs baseline at 1 thread"] = one_thread["epoch_seconds"] / current["epoch_seconds"]
            own_one_thread = by.get((case, 1, version))
            if n > 1 and own_one_thread:
                # the most n threads could give: this version's 1-thread training pass divided by n
                ideal = current["epoch_seconds"] - current["train_seconds"] + own_one_thread["train_seconds"] / n
                ratio["epoch speed-up vs baseline at 1 thread if the training pass scaled perfectly"] = (
                    one_thread["epoch_seconds"] / ideal)
        ratios.append(ratio)
    return ratios


def thread_scaling(results: list[dict]) -> list[dict]:
    """From profiled results: per case and version, each part of the step (the categories, then the
    ``PROFILE_TOP_OPS`` ops that took most at 1 thread) in seconds per step at each thread count, and the speed-up of
    the most threads over 1."""
    rows = []
    profiled = {}
    for r in results:
        if "profile" in r:
            profiled.setdefault((r["case"], r["version"]), {})[r["threads"]] = r["profile"]
    for (case, version), by_threads in profiled.items():
        if 1 not in by_threads or len(by_threads) < 2:
            continue
        most = max(by_threads)
        one = by_threads[1]
        parts = [("step (profiled)", lambda p: p["step_seconds"])]
        parts += [(name, lambda p, name=name: p["categories"].get(name, 0.0)) for name in one["categories"]]
        parts += [(op, lambda p, op=op: p["ops"].get(op, 0.0)) for op in list(one["ops"])[:PROFILE_TOP_OPS]]
        for part, read in parts:
            seconds = {n: read(p) for n, p in sorted(by_threads.items())}
            rows.append({"case": case, "version": version, "part": part, "seconds_per_step": seconds,
                         "speed-up": seconds[1] / seconds[most] if seconds[most] > 0 else float("nan")})
    return rows


if __name__ == "__main__":
    if sys.argv[1:2] == ["_worker"]:
        worker(sys.argv[2])
        sys.exit(0)
    sys.exit(main())
