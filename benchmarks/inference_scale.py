"""Inference at catalogue scale: ``add_items``, ``recommend``/``recommend_batch`` and the export's search at
10k, 100k (and, asked for, 1M) items, exact and approximate (per-modality IVF + exact fused re-rank).

The model: MISSRec (default props: hidden 300, inductive) trained ``--epochs`` epochs on the generated demo domain
Demo-D (1,279 items, 512-d text and image features, the widths of Scientific-mm's CLIP features). The catalogue
is then grown to each size with ``add_items`` of generated items: features of a random Demo-D item plus noise (the
same clustered distribution, 15 % without an image). At every size:

- ``add_items``: seconds per added item (vectorised; the item vectors of the new items only are appended);
- ``recommend``: p50/p95 latency of one history (10-item histories of random catalogue items), the first call
  after the catalogue changed reported apart (it finds the item vectors cached);
- ``recommend_batch``: milliseconds per history in batches of 256;
- with ``--compare_full_fusion``: ``recommend`` timed again with every item fused (as before the certified top-k,
  ``predictor.CANDIDATES_START`` above the catalogue), alternating with the default, and whether both return the same
  ids and scores;
- export: seconds to write it; the exact search (``ExportedIndex``) p50/p95 per user, and the approximate one
  (``approximate="ivf"``) with its recall@10 against the exact top-10.

One thread (``--threads``) by default, as a serving process would run. Memory grows with the catalogue: raw
features (2 x 512 floats) plus the cached vectors (2 x 300) are ~6.5 GB at 1M items before the export's copies,
so 1M is left out unless ``--sizes`` asks for it, and catalogues above ``--export_max`` (100k) are not exported
(the export holds about three more copies of the vectors). No download; writes
``benchmarks/results/inference_scale.json``.

    python benchmarks/inference_scale.py                                  # 10k and 100k
    python benchmarks/inference_scale.py --sizes 10000 100000 1000000     # + 1M without export (~8 GB peak)
    python benchmarks/inference_scale.py --sizes 1000000 --export_max 1000000   # 1M with export (~15 GB peak)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from missrec_recbole.files import write_json  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
BASE = "Demo-D"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="catalogue sizes (items)")
    parser.add_argument("--threads", type=int, default=1, help="torch and FAISS threads (default 1)")
    parser.add_argument("--queries", type=int, default=50, help="single-history calls timed per size")
    parser.add_argument("--batch", type=int, default=256, help="histories per recommend_batch call")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs of the model on Demo-D")
    parser.add_argument("--export_max", type=int, default=100_000,
                        help="largest catalogue exported (an export holds ~3 more copies of the item vectors)")
    parser.add_argument("--nprobe_fractions", type=int, nargs="*", default=[64, 32, 8],
                        help="IVF search also timed with nprobe = lists / F for each F (the export's default is 16)")
    parser.add_argument("--compare_full_fusion", action="store_true",
                        help="also time recommend with every item fused (the certified top-k off) and compare results")
    parser.add_argument("--work_dir", type=Path, help="keeps the demo data and the model (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=RESULTS / "inference_scale.json")
    parser.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE",
                        help="model options for the training run (e.g. hidden_size=32 for a quick check)")
    return parser.parse_args(argv)


def train_model(work: Path, epochs: int, options: dict) -> str:
    """Train MISSRec on the demo domain Demo-D (generated on first use) and return its checkpoint."""
    from missrec_recbole.quick_start import finetune

    record = work / f"model-{epochs}-{sorted(options.items())}.txt".replace(" ", "")
    if record.is_file() and Path(record.read_text()).is_file():  # a --work_dir keeps the model between runs
        return record.read_text()
    result = finetune(BASE, config_dict={"data_path": str(work / "data"), "checkpoint_dir": str(work / "saved"),
                                         "mode": "inductive", "epochs": epochs, "state": "ERROR", **options})
    record.write_text(result["model_file"])
    return result["model_file"]


def generated_items(predictor, n: int, rng: np.random.Generator) -> dict:
    """``n`` new items: a random base item's features plus 20 % noise; 15 % of them without an image."""
    model = predictor.model
    base = rng.integers(1, predictor.n_items + 1, size=n)
    features = {}
    for m in model.modalities:
        source = model._features(m)[torch.from_numpy(base)].numpy()
        scale = 0.2 * np.abs(source).mean()
        features[m] = (source + rng.normal(scale=scale, size=source.shape)).astype(np.float32)
        features[m][~model._present(m)[torch.from_numpy(base)].numpy()] = 0.0
    if "image" in features:
        features["image"][rng.random(n) < 0.15] = 0.0
        missing = np.abs(features["image"]).sum(axis=1) == 0
        if "text" in features:  # every item keeps at least one modality
            features["text"][missing & (np.abs(features["text"]).sum(axis=1) == 0)] = 1.0
    return features


def grow(predictor, size: int, rng: np.random.Generator, chunk: int = 100_000) -> float:
    """Add generated items until the catalogue holds ``size`` items; returns seconds per added item."""
    added, seconds = 0, 0.0
    while predictor.n_items < size:
        n = min(chunk, size - predictor.n_items)
        features = generated_items(predictor, n, rng)
        ids = [f"GEN{predictor.n_items + i}" for i in range(n)]
        start = time.perf_counter()
        predictor.add_items(ids, **{f"{m}_features": f for m, f in features.items()})
        seconds += time.perf_counter() - start
        added += n
    return seconds / max(added, 1)


def percentiles(samples) -> dict:
    values = np.asarray(samples) * 1000.0
    return {"p50_ms": round(float(np.percentile(values, 50)), 3), "p95_ms": round(float(np.percentile(values, 95)), 3)}


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def histories(predictor, n: int, rng: np.random.Generator, length: int = 10) -> list:
    ids = predictor.item_ids
    return [[ids[i] for i in rng.integers(0, len(ids), size=length)] for _ in range(n)]


def measure_model(predictor, queries: list, batch: list) -> dict:
    _, first = timed(predictor.recommend, queries[0], k=10)
    single = [timed(predictor.recommend, h, k=10)[1] for h in queries]
    _, batch_seconds = timed(predictor.recommend_batch, batch, k=10)
    return {"first_recommend_ms": round(first * 1000, 3), "recommend": percentiles(single),
            "recommend_batch_ms_per_history": round(batch_seconds * 1000 / len(batch), 3)}


def compare_full_fusion(predictor, queries: list, rounds: int = 2) -> dict:
    """``recommend`` p50 with every item fused against the default (certified top-k), alternating round by round so
    that both see the same machine load; ``identical``: the same (id, score) lists."""
    from missrec_recbole.inference import predictor as predictor_module

    default = predictor_module.CANDIDATES_START
    seconds = {"full_fusion": [], "certified": []}
    results = {}
    try:
        for _ in range(rounds):
            for name, start in (("full_fusion", predictor.n_items + 1), ("certified", default)):
                predictor_module.CANDIDATES_START = start
                for history in queries:
                    results[name, tuple(history)], elapsed = timed(predictor.recommend, history, k=10)
                    seconds[name].append(elapsed)
    finally:
        predictor_module.CANDIDATES_START = default
    p50 = {name: percentiles(values)["p50_ms"] for name, values in seconds.items()}
    return {"full_fusion_p50_ms": p50["full_fusion"], "certified_p50_ms": p50["certified"],
            "speedup": round(p50["full_fusion"] / p50["certified"], 3),
            "identical": all(results["full_fusion", tuple(h)] == results["certified", tuple(h)] for h in queries)}


def timed_searches(index, users, queries: list) -> tuple[list, dict]:
    """Each user's top-10 from an export (its history excluded) and the latency percentiles of the calls."""
    found, seconds = [], []
    for user, history in zip(users, queries):
        result, elapsed = timed(index.search, user[None], k=10, exclude=[history])
        found.append([item for item, _ in result[0]])
        seconds.append(elapsed)
    return found, percentiles(seconds)


def measure_export(predictor, folder: Path, users, queries: list, approximate=None) -> tuple[dict, list, object]:
    """Seconds to write the export, its search timed on ``users``; returns (row, top-10s, the loaded index)."""
    from missrec_recbole.inference import ExportedIndex

    _, export_seconds = timed(predictor.export, folder, approximate=approximate)
    index = ExportedIndex.load(folder)
    found, search = timed_searches(index, users, queries)
    return {"export_seconds": round(export_seconds, 2), "search": search}, found, index


def nprobe_sweep(index, users, queries: list, exact: list, fractions) -> list[dict]:
    """An approximate export searched again with nprobe = lists / F (F in ``fractions``): latency against
    recall@10."""
    from missrec_recbole.inference.export import set_search_params

    sweep = []
    for fraction in fractions:
        nprobe = {}
        for m, params in index.manifest["approximate"]["search_params"].items():
            nprobe[m] = max(1, params["nlist"] // fraction)
            set_search_params(index.indexes[m], {"nprobe": nprobe[m]})
        found, search = timed_searches(index, users, queries)
        sweep.append({"nprobe": nprobe, "search": search, "recall_at_10": round(recall_at_10(found, exact), 4)})
    return sweep


def recall_at_10(found: list, exact: list) -> float:
    return float(np.mean([len(set(f) & set(e)) / max(len(e), 1) for f, e in zip(found, exact)]))


def print_row(row: dict) -> None:
    exact, approx = row["exact"], row["approximate"]
    search = ("export skipped" if "skipped" in exact else f"exact search p50 {exact['search']['p50_ms']:.1f} ms, "
              f"IVF p50 {approx['search']['p50_ms']:.1f} ms (recall@10 {approx['recall_at_10']:.3f})")
    if "recommend_full_fusion" in row:
        versus = row["recommend_full_fusion"]
        print(f"  recommend p50 every item fused {versus['full_fusion_p50_ms']:.1f} ms, certified top-k "
              f"{versus['certified_p50_ms']:.1f} ms ({versus['speedup']:.2f}x), identical: {versus['identical']}")
    for point in approx.get("nprobe_sweep", []):
        print(f"  IVF nprobe {point['nprobe']}: p50 {point['search']['p50_ms']:.1f} ms, recall@10 "
              f"{point['recall_at_10']:.3f}")
    print(f"{row['items']:>9,} items: add_items {row['add_items_ms_per_item']:.4f} ms/item, recommend p50 "
          f"{row['recommend']['p50_ms']:.1f} ms, batch {row['recommend_batch_ms_per_history']:.2f} ms/history, "
          f"{search}", flush=True)


def run_size(predictor, size: int, args, rng, work: Path) -> dict:
    seconds_per_item = grow(predictor, size, rng)
    queries = histories(predictor, args.queries, rng)
    batch = histories(predictor, args.batch, rng)
    row = {"items": predictor.n_items, "add_items_ms_per_item": round(seconds_per_item * 1000, 4),
           **measure_model(predictor, queries, batch)}
    if args.compare_full_fusion:
        row["recommend_full_fusion"] = compare_full_fusion(predictor, queries)
    if predictor.n_items > args.export_max:
        row["exact"] = row["approximate"] = {"skipped": f"more than --export_max={args.export_max} items"}
        print_row(row)
        return row
    users = predictor.user_vectors(queries)  # the query of every export search
    exact_row, exact, _ = measure_export(predictor, work / f"export-{size}", users, queries)
    approx_row, approx, index = measure_export(predictor, work / f"export-{size}-ivf", users, queries, "ivf")
    sweep = nprobe_sweep(index, users, queries, exact, args.nprobe_fractions)
    del index
    model_top = [[item for item, _ in r] for r in predictor.recommend_batch(queries, k=10)]
    row.update(exact=exact_row, approximate={**approx_row, "recall_at_10": round(recall_at_10(approx, exact), 4),
                                             "nprobe_sweep": sweep},
               exact_equals_model=float(np.mean([a == b for a, b in zip(exact, model_top)])))
    print_row(row)
    for folder in (work / f"export-{size}", work / f"export-{size}-ivf"):  # the next size writes its own
        for path in folder.iterdir():
            path.unlink()
    return row


def main(argv=None) -> dict:
    args = parse_args(argv)
    from missrec_recbole.config import parse_overrides
    from missrec_recbole.inference import MISSRecPredictor

    options = parse_overrides([f"--{item}" for item in args.config])
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    with tempfile.TemporaryDirectory(prefix="inference-scale-") as temp:
        work = args.work_dir or Path(temp)
        model_file = train_model(work, args.epochs, options)
        predictor = MISSRecPredictor.load(model_file, BASE, data_path=work / "data", device="cpu")
        rng = np.random.default_rng(2026)
        rows = [run_size(predictor, size, args, rng, work) for size in sorted(args.sizes)]
    result = {"benchmark": "inference_scale", "threads": args.threads, "base": BASE, "epochs": args.epochs,
              "options": options, "hidden_size": predictor.model.hidden_size,
              "feature_dims": {m: int(predictor.config[f"{m}_dim"]) for m in predictor.model.modalities},
              "load_average_at_end": os.getloadavg(), "cpus": os.cpu_count(), "rows": rows}
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
