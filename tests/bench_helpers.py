"""Shared by tests/test_bench_*.py: a tiny dataset with tied items, quick bench arguments, tune.py, run records."""

from __future__ import annotations

import numpy as np

from tests.conftest import benchmark_script, write_dataset


TIED = [10, 11, 12, 13]  # items with identical text and image features: inductive scores tie exactly
ROWS = ["SASRec", "MISSRec scratch inductive", "MISSRec pre-trained transductive", "UniSRec pre-trained inductive"]
SMALL = ["--text_dim=16", "--image_dim=16", "--train_batch_size=64", "--eval_batch_size=64", "--dpc_k=3",
         "--faiss_threads=1", "--pretrain.epochs=1", "--pretrain.train_batch_size=64", "--pretrain.save_step=1"]


def tiny_with_ties(root):
    folder = write_dataset(root, "Tiny", n_items=80, n_users=40, dim=16)
    for suffix in ("feat1CLS", "feat3CLS"):
        path = folder / f"Tiny.{suffix}"
        features = np.fromfile(path, dtype="<f4").reshape(80, 16)
        features[TIED] = features[TIED[0]] if suffix == "feat1CLS" else np.abs(features[TIED[0]]) + 0.1
        features.tofile(path)
    with open(folder / "Tiny.user2index", "w") as handle:
        handle.writelines(f"U{u}\t{u}\n" for u in range(40))
    return folder


def bench_args(root, *extra):
    return ["--quick", "-d", "Tiny", f"--data_path={root / 'data'}", f"--out_dir={root / 'results'}",
            f"--work_dir={root / 'work'}", "--no_progress", "--log_level=WARNING", "--rows=" + ",".join(ROWS),
            *SMALL, *extra]


def _tune_module():
    return benchmark_script("tune")


def _record(row, seed, settings, config_hash, ndcg, date="2026-12-01 10:00:00 UTC"):
    kind = row.split()[0].lower()
    metrics = {"recall@10": ndcg * 2, "recall@50": ndcg * 4, "ndcg@10": ndcg, "ndcg@50": ndcg * 1.5}
    return {"key": f"transfer|{row}|{seed}|{config_hash}", "table": "transfer", "row": row, "seed": seed, "kind": kind,
            "settings": settings, "config_hash": config_hash, "date": date, "status": "ok", "command": "bench",
            "machine": {"cores": 2}, "code": "abc", "valid": metrics, "test": metrics, "peak_rss_bytes": 2**30}
