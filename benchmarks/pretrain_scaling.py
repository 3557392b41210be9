"""Pre-training at scale: throughput with 1 and 2 processes, interest refresh time, peak memory.

Generates 5 domains (default 24,000 items and 6,000 users each: 120k items, ~230k item tokens,
512-d text and image features, ~15 % of images missing), merges them the way
``run_missrec.py --stage=pretrain -d A,B,C,D,E`` does, and pre-trains MISSRec with the
pre-training defaults (props/pretrain.yaml) for a few epochs:

* 1 process with ``--threads`` threads (default 2), and
* ``torchrun --nproc_per_node=2`` with 1 thread per process (the same 2 cores), the global
  batch ``train_batch_size`` split between the processes.

``--memory_chunk_rows 0 512`` measures each value of that option (activations recomputed in the
backward pass, at most that many sequences at a time); ``--processes 1`` runs only the first setting.

Each process reports the seconds of every training epoch, split into the interest refresh
(DPC-KNN over all item tokens, rank 0) and the optimisation steps, and its peak RSS. Throughput =
training sequences / seconds of optimisation steps. Output: a table and
``benchmarks/results/pretrain_scaling.json``.

    python benchmarks/pretrain_scaling.py [--items-per-domain 24000] [--epochs 2] [--quick]
    python benchmarks/pretrain_scaling.py --processes 1 --threads 1 --memory_chunk_rows 0 512 \
        --out benchmarks/results/pretrain_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = [f"Scale-{c}" for c in "ABCDE"]
if str(ROOT) not in sys.path:  # run as a script from a clone
    sys.path.insert(0, str(ROOT))
HEADER = "user_id:token\titem_id_list:token_seq\titem_id:token\n"


# ----------------------------------------------------------------------------- data
def write_domain(folder: Path, name: str, n_items: int, n_users: int, dim: int, seed: int) -> None:
    """One generated domain: clustered CLIP-like features, users drawing sequences from 1-3 clusters.

    Only each user's last training prefix is written (one training sequence per user), which
    keeps an epoch short while the item catalogue -- what DPC-KNN and the item scoring scale
    with -- stays at full size.
    """
    rng = np.random.default_rng(seed)
    n_clusters = max(2, n_items // 60)
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    cluster = rng.integers(0, n_clusters, n_items)
    text = centres[cluster] + 0.6 * rng.standard_normal((n_items, dim)).astype(np.float32)
    image = centres[cluster] @ rng.standard_normal((dim, dim)).astype(np.float32) / np.sqrt(dim)
    image += 0.8 * rng.standard_normal((n_items, dim)).astype(np.float32)
    image[rng.random(n_items) < 0.15] = 0.0
    members = [np.flatnonzero(cluster == c) for c in range(n_clusters)]
    rows = {"train": [], "valid": [], "test": []}
    for user in range(n_users):
        own = [members[c] for c in rng.integers(0, n_clusters, rng.integers(1, 4)) if len(members[c])]
        pool = np.concatenate(own) if own else np.arange(n_items)
        seq = rng.choice(pool, size=min(len(pool), int(rng.integers(5, 21))), replace=len(pool) < 5)
        seq = seq[-50:]
        rows["train"].append((user, seq[:-3], seq[-3]))
        rows["valid"].append((user, seq[:-2], seq[-2]))
        rows["test"].append((user, seq[:-1], seq[-1]))
    out = folder / name
    out.mkdir(parents=True, exist_ok=True)
    for split, data in rows.items():
        with open(out / f"{name}.{split}.inter", "w", encoding="utf-8") as handle:
            handle.write(HEADER)
            handle.writelines(f"{u}\t{' '.join(map(str, h))}\t{t}\n" for u, h, t in data)
    text.astype(np.float32).tofile(out / f"{name}.feat1CLS")
    image.astype(np.float32).tofile(out / f"{name}.feat3CLS")
    with open(out / f"{name}.item2index", "w", encoding="utf-8") as handle:
        handle.writelines(f"{name}-item{i}\t{i}\n" for i in range(n_items))
    with open(out / f"{name}.user2index", "w", encoding="utf-8") as handle:
        handle.writelines(f"{name}-user{u}\t{u}\n" for u in range(n_users))


def prepare(cache: Path, n_items: int, n_users: int, dim: int) -> tuple[Path, str]:
    """Generate the 5 domains (once per size) and merge them; returns (data_path, merged name)."""
    from missrec_recbole.tools.merge import merge_datasets

    tag = f"{n_items}x{n_users}x{dim}"
    raw, merged = cache / f"raw-{tag}", cache / f"merged-{tag}"
    name = "+".join(DOMAINS)
    if not (merged / name / f"{name}.train.inter").is_file():
        for index, domain in enumerate(DOMAINS):
            write_domain(raw, domain, n_items, n_users, dim, seed=index)
        merge_datasets(DOMAINS, raw, name, merged, {"modalities": ["text", "image"], "text_suffix": "feat1CLS",
                                                     "image_suffix": "feat3CLS", "text_dim": dim, "image_dim": dim,
                                                     "benchmark_filename": ["train", "valid", "test"],
                                                     "MAX_ITEM_LIST_LENGTH": 50})
    return merged, name


# ----------------------------------------------------------------------------- worker (one process)
def worker(data_path: str, name: str, epochs: int, out: str, overrides: str) -> None:
    import torch
    from recbole.utils import init_seed

    from missrec_recbole.model import MISSRec
    from missrec_recbole.quick_start import build_config, prepare_data
    from missrec_recbole.trainer import MISSRecTrainer, distributed

    config = build_config(name, "pretrain", config_dict={"data_path": data_path, "epochs": epochs, "state": "ERROR",
                                                         "checkpoint_dir": str(Path(out).parent / "saved"),
                                                         **json.loads(overrides)})
    _, train, _, _ = prepare_data(config)
    init_seed(config["seed"], config["reproducibility"])
    trainer = MISSRecTrainer(config, MISSRec(config, train._dataset))
    epoch_seconds = []
    for epoch in range(epochs):
        start = time.perf_counter()
        trainer._train_epoch(train, epoch)
        epoch_seconds.append(time.perf_counter() - start)
    report = {"rank": distributed.rank(), "threads": torch.get_num_threads(), "epoch_s": epoch_seconds,
              "refresh_s": trainer.interest_refresh_seconds, "sequences": len(train.dataset),
              "items": train._dataset.item_num, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    Path(out).with_name(f"{Path(out).stem}-rank{distributed.rank()}.json").write_text(json.dumps(report))
    distributed.shutdown()


# ----------------------------------------------------------------------------- driver
def run(nproc: int, threads: int, data_path: Path, name: str, epochs: int, out: Path, overrides: dict) -> dict:
    args = [str(Path(__file__).resolve()), "--worker", str(data_path), name, str(epochs), str(out),
            json.dumps(overrides)]
    from missrec_recbole.trainer import distributed

    launcher = [sys.executable] if nproc == 1 else distributed.torchrun_command(nproc)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    subprocess.run(launcher + args, env=env, check=True)
    wall = time.perf_counter() - start
    ranks = [json.loads(out.with_name(f"{out.stem}-rank{r}.json").read_text()) for r in range(nproc)]
    main = ranks[0]
    # the first epoch includes one-off costs (oneDNN kernel compilation, first-touch allocations)
    steady = range(1, epochs) if epochs > 1 else range(epochs)
    train_s = [main["epoch_s"][e] - main["refresh_s"][e] for e in steady]
    return {
        "processes": nproc, "threads_per_process": threads, "items": main["items"],
        "sequences_per_epoch": main["sequences"],  # all ranks' loaders index the whole set; samplers split it
        "epoch_s": [round(s, 2) for s in main["epoch_s"]],
        "refresh_s": [round(s, 2) for s in main["refresh_s"]],
        "sequences_per_s": round(main["sequences"] / float(np.mean(train_s)), 1),
        "peak_rss_mb_per_process": [round(r["peak_rss_mb"]) for r in ranks],
        "peak_rss_mb_total": round(sum(r["peak_rss_mb"] for r in ranks)),
        "wall_s": round(wall, 1),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }


def table(rows) -> str:
    lines = ["processes | threads | memory_chunk_rows | items | seq/epoch | seq/s (steps) | refresh s/epoch | epoch s | "
             "peak RSS MB (total)"]
    for r in rows:
        lines.append(f"{r['processes']} | {r['threads_per_process']} | {r.get('memory_chunk_rows', 0)} | {r['items']} | "
                     f"{r['sequences_per_epoch']} | "
                     f"{r['sequences_per_s']} | {r['refresh_s']} | {r['epoch_s']} | "
                     f"{r['peak_rss_mb_per_process']} ({r['peak_rss_mb_total']})")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items-per-domain", type=int, default=24000)
    ap.add_argument("--users-per-domain", type=int, default=6000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="threads of the single process (2 processes: 1 each)")
    ap.add_argument("--cache", default=str(ROOT / "saved" / "bench-data"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pretrain_scaling.json"))
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    ap.add_argument("--memory_chunk_rows", type=int, nargs="+", default=[0],
                    help="values of the memory_chunk_rows option to measure (0: activations of the whole batch kept)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run of the script)")
    ap.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(*args.worker[:2], int(args.worker[2]), *args.worker[3:])
        return 0
    for name in ("items_per_domain", "users_per_domain", "dim", "epochs", "threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be a positive integer")
    if any(rows < 0 for rows in args.memory_chunk_rows):
        ap.error("--memory_chunk_rows must be 0 (off) or a positive number of rows")
    if args.quick:
        args.items_per_domain, args.users_per_domain, args.dim, args.epochs = 600, 300, 64, 2
    overrides = {"text_dim": args.dim, "image_dim": args.dim}
    start = time.perf_counter()
    data_path, name = prepare(Path(args.cache), args.items_per_domain, args.users_per_domain, args.dim)
    print(f"data ready in {time.perf_counter() - start:.0f}s: {data_path / name}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(args.cache) / "runs"
    scratch.mkdir(parents=True, exist_ok=True)
    rows = []
    for nproc in args.processes:
        threads = args.threads if nproc == 1 else 1
        for chunk in args.memory_chunk_rows:
            row = {**run(nproc, threads, data_path, name, args.epochs, scratch / f"p{nproc}",
                         {**overrides, "memory_chunk_rows": chunk}), "memory_chunk_rows": chunk}
            rows.append(row)
            print(table([row]).splitlines()[1], flush=True)
    result = {"date": time.strftime("%Y-%m-%d"), "python": platform.python_version(), "cpus": os.cpu_count(),
              "domains": len(DOMAINS), "items_per_domain": args.items_per_domain,
              "users_per_domain": args.users_per_domain, "dim": args.dim, "epochs": args.epochs,
              "config": "props/common.yaml + props/MISSRec.yaml + props/pretrain.yaml", "rows": rows}
    if not args.quick:
        from missrec_recbole.files import write_json  # lazy like the script's other imports (threads set first)

        write_json(out, result)
    print(table(rows))
    return 0


if __name__ == "__main__":
    if "--worker" in sys.argv:  # a measured worker: torch must load after its thread settings; traceback to the log
        sys.exit(main())
    from missrec_recbole.command import run_command  # noqa: E402  (bad input: one error line, no traceback)

    sys.exit(run_command(main))
