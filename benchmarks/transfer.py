"""Transfer benchmark: does pre-training on other domains help parameter-efficient fine-tuning?

Protocol: pre-train MISSRec (inductive, props/pretrain.yaml + props/demo-pretrain.yaml, i.e. hidden
128) once on ``--pretrain`` domains (merged), then on the ``--target`` domain, per seed:

* ``pretrained, adapters only``: the checkpoint's weights, only adapters / beta / input LayerNorm trained;
* ``random, adapters only``: the same trainable parameters on randomly initialised frozen weights;
* ``scratch, all parameters``: every parameter trained from scratch (the usual upper reference).

All rows: inductive, props/finetune.yaml + props/demo-finetune.yaml, early stopping on valid
NDCG@10, test reported at the best valid epoch. Results: a table and
``benchmarks/results/transfer_<target>.json``.

    OMP_NUM_THREADS=1 python benchmarks/transfer.py --pretrain Demo-A Demo-B --target Demo-C \\
        --pretrain_epochs 10 --seeds 2023 2024 2025 [--key=value ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

METRICS = ("recall@10", "ndcg@10", "recall@50", "ndcg@50")


def rows_for_seed(target, checkpoint, files, overrides, seed) -> dict:
    from missrec_recbole.quick_start import finetune

    common = {**overrides, "seed": seed, "mode": "inductive"}
    return {
        "pretrained, adapters only": finetune(target, pretrained=checkpoint, config_files=files, config_dict=common),
        "random, adapters only": finetune(target, config_files=files, config_dict={**common, "adapters_only": True}),
        "scratch, all parameters": finetune(target, config_files=files, config_dict=common),
    }


def summarise(runs: dict) -> dict:
    table = {}
    for row, results in runs.items():
        table[row] = {m: (float(np.mean([r["test"][m] for r in results])), float(np.std([r["test"][m] for r in results])))
                      for m in METRICS}
        table[row]["trainable_parameters"] = results[0]["trainable_parameters"]
        table[row]["best_epochs"] = [r["best_epoch"] for r in results]
    return table


def main(argv=None) -> int:
    from missrec_recbole.files import write_json
    from missrec_recbole.quick_start import PROPS, parse_overrides, pretrain

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pretrain", nargs="+", default=["Demo-A", "Demo-B"])
    ap.add_argument("--target", default="Demo-C")
    ap.add_argument("--pretrain_epochs", type=int, default=10)
    ap.add_argument("--checkpoint", help="use this pre-trained checkpoint instead of pre-training")
    ap.add_argument("--seeds", type=int, nargs="+", default=[2023, 2024, 2025])
    ap.add_argument("--data_path", default=str(ROOT / "dataset"))
    ap.add_argument("--out", default=None)
    args, rest = ap.parse_known_args(argv)
    overrides = {"data_path": args.data_path, "state": "WARNING", **parse_overrides(rest)}
    start = time.time()
    checkpoint = args.checkpoint or pretrain(args.pretrain, [str(PROPS / "demo-pretrain.yaml")], {
        **overrides, "epochs": args.pretrain_epochs, "save_step": args.pretrain_epochs})[-1]
    pretrain_s = None if args.checkpoint else round(time.time() - start)
    files = [str(PROPS / "demo-finetune.yaml")]
    runs: dict[str, list] = {}
    for seed in args.seeds:
        for row, result in rows_for_seed(args.target, checkpoint, files, overrides, seed).items():
            runs.setdefault(row, []).append(result)
            print(f"seed {seed} {row}: test NDCG@10 {result['test']['ndcg@10']:.4f}", flush=True)
    table = summarise(runs)
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"transfer_{args.target}.json")
    write_json(out, {"date": time.strftime("%Y-%m-%d"), "pretrain": args.pretrain, "target": args.target,
                     "pretrain_epochs": args.pretrain_epochs, "pretrain_seconds": pretrain_s, "checkpoint": checkpoint,
                     "seeds": args.seeds, "overrides": {k: v for k, v in overrides.items() if k != "data_path"},
                     "table": table,
                     "runs": {row: [{k: r[k] for k in ("valid", "test", "best_epoch", "epochs")} for r in results]
                              for row, results in runs.items()}})
    print(f"\n{args.target}, mean ± std over seeds {args.seeds} (pre-trained on {'+'.join(args.pretrain)}, "
          f"{args.pretrain_epochs} epochs):")
    print("row | " + " | ".join(METRICS) + " | trainable")
    for row, values in table.items():
        print(f"{row} | " + " | ".join(f"{values[m][0]:.4f} ± {values[m][1]:.4f}" for m in METRICS)
              + f" | {values['trainable_parameters']}")
    return 0


if __name__ == "__main__":
    from missrec_recbole.command import run_command  # noqa: E402  (bad input: one error line, no traceback)

    sys.exit(run_command(main))
