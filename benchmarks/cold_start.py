"""Cold-start benchmark: how well does an inductive MISSRec rank items it never saw in training?

Protocol (per seed):

1. Cold items: a seeded ``--cold_ratio`` (10 %) of the items that occur in the dataset's .inter files.
2. "cold" model: trained (inductive, from scratch) on a copy of the dataset without any interaction of
   the cold items - rows whose target is cold are dropped, cold items are removed from every history
   (rows left with an empty history are dropped). This is done for train, valid *and* test, so the
   cold items are not even in RecBole's vocabulary: the model never sees their features (not even as
   negatives of the full-softmax loss). Model selection on the reduced valid split.
3. The cold items are added back with :meth:`MISSRecPredictor.add_items` (features only, interests =
   nearest existing center), no training.
4. "warm" model: the same configuration and seed trained on the full dataset.
5. Both are evaluated on the *original* test rows (full histories, which may contain cold items),
   full ranking over the same catalogue (every item), RecBole's protocol: no history exclusion,
   pessimistic ties (a target ranks after every item scoring >= it). Reported: Recall/NDCG@10/@50 on
   test rows whose target is a cold item (the cold-start number), on the other rows, and on all rows.
   Also a training-free reference on the same rows: cosine between an item's normalised
   [text | image] features and the mean of the last 3 history items' (``feature_knn``), and random.

Usage (each run trains 2 models per seed; run it in the background). The committed results came from::

    OMP_NUM_THREADS=1 nohup python benchmarks/cold_start.py -d Scientific-mm --data_path=<datasets> \\
        --seeds 2023 --out benchmarks/results/cold_start_Scientific-mm_full.json > cold-2023.log 2>&1 &
    # ... the same with --seeds 2024 and --seeds 2025 beside it (55-90 min per seed on a busy 2-core machine)
    OMP_NUM_THREADS=1 nohup python benchmarks/cold_start.py -d Demo-D --data_path=/tmp/demo-data \\
        --config_files=missrec_recbole/props/demo-finetune.yaml --epochs=5 --stopping_step=10 --seeds 2023 2024 2025 > cold-demo.log 2>&1 &

(Demo-D: about 8 min per seed). Any ``--key=value`` is a config override.

Results go to ``benchmarks/results/cold_start_<dataset>.json`` (``--out``) after every seed; a table is printed at the
end. Seeds already in that file with the same settings are skipped, and inside a seed a trained model is kept in
``--work_dir`` (a stopped model continues from its resume file), so a stopped run continues where it was; seeds can
be split across invocations running side by side (``--seeds 2023`` / ``--seeds 2024``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from missrec_recbole.files import write_json  # noqa: E402
from missrec_recbole.config import parse_known_options  # noqa: E402
from missrec_recbole.evaluation import metrics_from_ranks, pessimistic_ranks  # noqa: E402

HEADER = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
SPLITS = ("train", "valid", "test")
KS = (10, 50)


# ----------------------------------------------------------------------------- data
def read_rows(path: Path) -> list[tuple[str, list[int], int]]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        next(handle)
        for line in handle:
            if not line.strip():
                continue
            user, history, target = line.rstrip("\n").split("\t")
            rows.append((user, [int(i) for i in history.split()], int(target)))
    return rows


def used_items(folder: Path, name: str) -> np.ndarray:
    items = set()
    for split in SPLITS:
        for _, history, target in read_rows(folder / f"{name}.{split}.inter"):
            items.update(history)
            items.add(target)
    return np.array(sorted(items), dtype=np.int64)


def choose_cold_items(folder: Path, name: str, ratio: float, seed: int) -> np.ndarray:
    """A seeded ``ratio`` of the items that occur in the .inter files (sorted item indices)."""
    items = used_items(folder, name)
    n_cold = max(1, int(round(ratio * len(items))))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(items, size=n_cold, replace=False))


def make_cold_dataset(folder: Path, name: str, out_root: Path, cold_items, suffix: str = "cold") -> tuple[str, dict]:
    """Write ``out_root/<name>-<suffix>/``: the dataset without any interaction of ``cold_items``.

    Rows whose target is cold are dropped, cold items are removed from histories, rows left with an
    empty history are dropped - in every split, so cold items are not in RecBole's vocabulary.
    Feature, item2index and text files are linked (same item indices and original ids).
    Returns the new name and per-split row counts.
    """
    cold = set(int(i) for i in cold_items)
    new_name = f"{name}-{suffix}"
    target = Path(out_root) / new_name
    target.mkdir(parents=True, exist_ok=True)
    stats = {}
    for split in SPLITS:
        rows = read_rows(Path(folder) / f"{name}.{split}.inter")
        kept = []
        for user, history, item in rows:
            if item in cold:
                continue
            history = [i for i in history if i not in cold]
            if history:
                kept.append((user, history, item))
        with open(target / f"{new_name}.{split}.inter", "w", encoding="utf-8") as handle:
            handle.write(HEADER)
            handle.writelines(f"{u}\t{' '.join(map(str, h))}\t{t}\n" for u, h, t in kept)
        stats[split] = {"rows": len(rows), "kept": len(kept)}
    for source in Path(folder).iterdir():
        if source.name.startswith(f"{name}.") and not source.name.endswith(".inter"):
            link = target / (new_name + source.name[len(name):])
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(source.resolve())
    return new_name, stats


# ----------------------------------------------------------------------------- metrics
def pessimistic_metrics(scores: np.ndarray, targets: np.ndarray, valid: np.ndarray, ks=KS) -> dict:
    """Recall/NDCG@k with rank = 1 + #other rankable items scoring >= the target (``scores`` [B, N])."""
    if len(targets) == 0:
        return {f"{m}@{k}": float("nan") for k in ks for m in ("recall", "ndcg")} | {"cases": 0}
    masked = np.where(valid[None, :], scores, -np.inf)
    ranks = pessimistic_ranks(masked, np.arange(len(targets)), targets)
    return {"cases": int(len(targets)), **metrics_from_ranks(ranks, ks)}


def evaluate_predictor(predictor, histories, targets, groups: dict) -> dict:
    """Metrics of ``predictor`` per group of test rows (full ranking over its catalogue)."""
    scores = predictor.score(histories).cpu().numpy()
    valid = predictor.rankable().cpu().numpy()
    target_internal = np.array([predictor._internal[t] for t in targets], dtype=np.int64)
    return {group: pessimistic_metrics(scores[rows], target_internal[rows], valid) for group, rows in groups.items()}


def feature_knn_scores(features: dict, histories_idx, n_items: int, last_n: int = 3) -> np.ndarray:
    """Training-free reference: cos(mean of the last ``last_n`` history items, item), over item indices, on the
    per-modality ``features`` (each normalised, then concatenated)."""

    def unit(a):
        norm = np.linalg.norm(a, axis=1, keepdims=True)
        return np.divide(a, norm, out=np.zeros_like(a), where=norm > 0)

    joined = np.concatenate([unit(f.astype(np.float64)) for f in features.values()], axis=1)[:n_items]
    query = np.stack([joined[h[-last_n:]].mean(axis=0) for h in histories_idx])
    return unit(query) @ unit(joined).T


# ----------------------------------------------------------------------------- one seed
def run_seed(args, overrides, seed: int, work: Path) -> dict:
    from missrec_recbole.inference import MISSRecPredictor
    from missrec_recbole.inference.predictor import read_item2index
    from missrec_recbole.quick_start import build_config, check_dataset

    folder = Path(args.data_path) / args.dataset
    cold = choose_cold_items(folder, args.dataset, args.cold_ratio, seed)
    seed_dir = work / f"seed{seed}"
    cold_name, split_stats = make_cold_dataset(folder, args.dataset, seed_dir / "data", cold)
    config_dict = dict(overrides, mode="inductive", seed=seed, checkpoint_dir=str(seed_dir / "saved"))

    cold_run = train_once(seed_dir, "cold", cold_name, args.config_files,
                          dict(config_dict, data_path=str(seed_dir / "data")))
    warm_run = train_once(seed_dir, "warm", args.dataset, args.config_files,
                          dict(config_dict, data_path=str(args.data_path)))
    timings = {"cold_train_seconds": cold_run["train_seconds"], "warm_train_seconds": warm_run["train_seconds"]}

    # ids and features of the cold items
    item2index = read_item2index(folder, args.dataset)
    index2id = ({i: str(i) for i in used_items(folder, args.dataset)} if item2index is None
                else {v: k for k, v in item2index.items()})
    config = build_config(args.dataset, "finetune", args.config_files, dict(config_dict, data_path=str(args.data_path)))
    features = check_dataset(config).features  # the loader's own reading: modalities and widths from the files

    start = time.time()
    cold_rec = MISSRecPredictor.load(cold_run["model_file"], cold_name, data_path=seed_dir / "data",
                                     include_unseen=False)
    timings["load_predictor_seconds"] = time.time() - start
    n_before = cold_rec.n_items
    cold_ids = [index2id[int(i)] for i in cold]
    start = time.time()
    cold_rec.add_items(cold_ids, **{f"{m}_features": features[m][cold] for m in config["modalities"]})
    timings["add_cold_items_seconds"] = time.time() - start
    # items that vanished only because all their rows had a cold target: add them too (also cold now)
    catalogue = set(index2id[int(i)] for i in used_items(folder, args.dataset))
    also = sorted(catalogue - set(cold_rec.item_ids), key=lambda x: item2index[x] if item2index else int(x))
    if also:
        idx = np.array([item2index[x] if item2index else int(x) for x in also])
        cold_rec.add_items(also, **{f"{m}_features": features[m][idx] for m in config["modalities"]})
    warm_rec = MISSRecPredictor.load(warm_run["model_file"], args.dataset, data_path=args.data_path,
                                     include_unseen=False)
    assert set(cold_rec.item_ids) == set(warm_rec.item_ids), "catalogues differ"

    rows = read_rows(folder / f"{args.dataset}.test.inter")
    histories = [[index2id[i] for i in h] for _, h, _ in rows]
    targets = [index2id[t] for _, _, t in rows]
    cold_set = set(int(i) for i in cold)
    is_cold = np.array([t in cold_set for _, _, t in rows])
    groups = {"cold_targets": np.flatnonzero(is_cold), "warm_targets": np.flatnonzero(~is_cold),
              "all": np.arange(len(rows))}
    results = {"cold_model": evaluate_predictor(cold_rec, histories, targets, groups),
               "warm_model": evaluate_predictor(warm_rec, histories, targets, groups)}
    # training-free references over the same catalogue (every used item)
    indices = used_items(folder, args.dataset)
    valid = np.zeros(int(indices.max()) + 1, dtype=bool)
    valid[indices] = True
    knn = feature_knn_scores(features, [h for _, h, _ in rows], len(valid))
    tgt = np.array([t for _, _, t in rows])
    results["feature_knn"] = {g: pessimistic_metrics(knn[r], tgt[r], valid) for g, r in groups.items()}
    n = int(valid.sum())
    results["random"] = {f"recall@{k}": k / n for k in KS}
    return {
        "seed": seed,
        "n_items": n,
        "n_cold_items": int(len(cold)),
        "extra_items_without_rows": len(also),
        "cold_test_cases": int(is_cold.sum()),
        "cold_model_catalogue_before_add": n_before,
        "split_rows": split_stats,
        "epochs": {"cold": cold_run["epochs"], "warm": warm_run["epochs"]},
        "seconds_per_epoch": {"cold": cold_run["seconds_per_epoch"], "warm": warm_run["seconds_per_epoch"]},
        "timings": timings,
        # RecBole's own evaluation of each model on its own test file (cross-check: warm_model/all = warm here)
        "recbole_test": {"cold": cold_run["test"], "warm": warm_run["test"]},
        "results": results,
        "cold_items": [index2id[int(i)] for i in cold],
    }


def train_once(seed_dir: Path, role: str, dataset: str, config_files, config_dict: dict) -> dict:
    """:func:`~missrec_recbole.quick_start.finetune` for one model (``role``: cold or warm) of a seed, once across
    invocations: ``<seed_dir>/<role>_run.json`` records its settings before training and its result after, so a
    finished model is read back and a stopped one continues from the resume file it left (the run's own resume,
    same epochs and random states); a record with other settings is refused rather than mixed in."""
    from missrec_recbole.quick_start import finetune

    record = seed_dir / f"{role}_run.json"
    settings = json.loads(json.dumps({"dataset": dataset, "config_files": [str(f) for f in config_files],
                                      "config_dict": config_dict}))
    saved = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else None
    if saved is not None and saved["settings"] != settings:
        raise SystemExit(f"{record}: the {role} model of this seed was started with other settings: pass "
                         f"another --work_dir.")
    if saved is not None and saved["run"] is not None:
        return saved["run"]
    write_json(record, {"settings": settings, "run": None})
    resume_file = seed_dir / f"{role}-resume.pth"  # chosen here, so a stopped run is found without searching
    start = time.time()
    run = finetune(dataset, config_files=config_files, config_dict=config_dict,
                   resume=str(resume_file) if resume_file.is_file() else None, resume_file=str(resume_file))
    run["train_seconds"] = time.time() - start  # this invocation's share when it continued a stopped run
    write_json(record, {"settings": settings, "run": run})
    resume_file.unlink(missing_ok=True)  # a finished run needs no resume file
    return run


def summarize(per_seed: list[dict]) -> dict:
    summary = {}
    for model in ("cold_model", "warm_model", "feature_knn"):
        for group in ("cold_targets", "warm_targets", "all"):
            for metric in ("recall@10", "ndcg@10", "recall@50", "ndcg@50"):
                values = [r["results"][model][group][metric] for r in per_seed]
                summary.setdefault(model, {}).setdefault(group, {})[metric] = {
                    "mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}
    return summary


def format_table(result: dict) -> str:
    lines = [f"Cold start on {result['dataset']}: {result['cold_ratio']:.0%} of items cold, "
             f"seeds {result['seeds']}, {result['settings']}",
             f"{'model':<24}{'test rows':<14}" + "".join(f"{m:>18}" for m in ("recall@10", "ndcg@10", "recall@50",
                                                                              "ndcg@50"))]
    names = {"cold_model": "cold (features only)", "warm_model": "warm (trained on them)",
             "feature_knn": "feature kNN (no train)"}
    for group in ("cold_targets", "warm_targets", "all"):
        for model in ("cold_model", "warm_model", "feature_knn"):
            cells = result["summary"][model][group]
            lines.append(f"{names[model]:<24}{group:<14}" + "".join(
                f"{cells[m]['mean']:>11.4f} ±{cells[m]['std']:.3f}" for m in ("recall@10", "ndcg@10", "recall@50",
                                                                                "ndcg@50")))
    cases = [r["cold_test_cases"] for r in result["per_seed"]]
    random = result["per_seed"][0]["results"]["random"]["recall@10"]
    lines.append(f"cold test rows per seed: {cases}; random recall@10 = {random:.4f}")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--dataset", default="Demo-D")
    parser.add_argument("--data_path", default=None, help="folder with <dataset>/ (default: ./dataset)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[2023])
    parser.add_argument("--cold_ratio", type=float, default=0.1)
    parser.add_argument("--config_files", default="", help="extra YAML files (space- or comma-separated)")
    parser.add_argument("--work_dir", default=None, help="derived datasets, checkpoints, logs "
                                                         "(default: /tmp/missrec-cold-start/<dataset>)")
    parser.add_argument("--out", default=None, help="JSON file (default: benchmarks/results/cold_start_<dataset>.json)")
    args, overrides = parse_known_options(parser, argv)
    args.config_files = [str(Path(f).resolve()) for f in args.config_files.replace(",", " ").split()]
    return args, overrides


def main(argv=None) -> dict:
    args, overrides = parse_args(argv)
    import missrec_recbole  # noqa: F401
    from missrec_recbole.tools.demo import DEMO_DOMAINS, ensure_demo_dataset
    from missrec_recbole.quick_start import DEFAULT_DATA_PATH

    args.data_path = Path(args.data_path or DEFAULT_DATA_PATH).resolve()
    if args.dataset in DEMO_DOMAINS:
        ensure_demo_dataset(args.data_path, [args.dataset])
    work = Path(args.work_dir or f"/tmp/missrec-cold-start/{args.dataset}").resolve()
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"cold_start_{args.dataset}.json").resolve()
    overrides.setdefault("state", "INFO")  # progress goes to <work_dir>/log/
    identity = {"benchmark": "cold_start", "dataset": args.dataset, "cold_ratio": args.cold_ratio,
                "settings": dict(overrides, mode="inductive", config_files=[Path(f).name for f in args.config_files])}
    finished = finished_seeds(out, identity)
    os.chdir(work)  # RecBole writes log/ and log_tensorboard/ into the working directory
    start = time.time()
    result = None
    for seed in args.seeds:
        if seed in finished:
            print(f"seed {seed}: already in {out}, skipped", flush=True)
            continue
        outcome = run_seed(args, overrides, seed, work)
        print(f"seed {seed} done after {time.time() - start:.0f}s: cold-target recall@10 "
              f"cold model {outcome['results']['cold_model']['cold_targets']['recall@10']:.4f}, "
              f"warm model {outcome['results']['warm_model']['cold_targets']['recall@10']:.4f}", flush=True)
        result = save_seed(out, identity, outcome)  # after every seed: partial results survive
    if result is None:  # every seed was already there
        result = json.loads(out.read_text(encoding="utf-8"))
    print(format_table(result))
    print(f"written: {out}")
    return result


PROTOCOL = ("cold items: no interaction in train/valid/test of the cold model (not in its vocabulary); added back "
            "with MISSRecPredictor.add_items (features only, nearest-center interests). Evaluation on the original "
            "test rows, full ranking over all items, no history exclusion, pessimistic ties.")


def finished_seeds(out: Path, identity: dict) -> dict:
    """Seeds already in ``out`` from a run with the same dataset, cold ratio and settings (they are skipped, so a
    stopped invocation, or seeds split across invocations, add up). Other settings: refuse rather than overwrite."""
    if not out.exists():
        return {}
    previous = json.loads(out.read_text(encoding="utf-8"))
    differing = [key for key in identity if previous.get(key) != identity[key]]
    if differing:
        raise SystemExit(f"{out} holds a cold-start run with other {', '.join(differing)} "
                         f"({', '.join(f'{k}={previous.get(k)!r}' for k in differing)}): pass another --out.")
    return {r["seed"]: r for r in previous["per_seed"]}


def save_seed(out: Path, identity: dict, outcome: dict) -> dict:
    """Add one seed's ``outcome`` to ``out`` (re-read under a lock, so parallel invocations with other seeds keep
    each other's results) and write it atomically; returns the whole result."""
    import fcntl

    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_name(out.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        per_seed = finished_seeds(out, identity)
        per_seed[outcome["seed"]] = outcome
        runs = [per_seed[seed] for seed in sorted(per_seed)]
        result = {**identity, "seeds": sorted(per_seed), "protocol": PROTOCOL, "summary": summarize(runs),
                  "per_seed": runs, "total_seconds": sum(sum(r["timings"].values()) for r in runs)}
        write_json(out, result)
    return result


if __name__ == "__main__":
    from missrec_recbole.command import run_command  # noqa: E402  (bad input: one error line, no traceback)

    sys.exit(run_command(main))
