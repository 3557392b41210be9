"""How much does interest deduplication merge on a dataset? A diagnostic for ``interest_ratio``.

MISSRec's encoder reads a sequence's *distinct* interests (DPC-KNN clusters of item tokens). If every
token of a history falls in its own cluster, the interest tokens are just the item tokens and the
interest module has nothing to summarise. For each ``interest_ratio`` this builds the model as training
would (freshly initialised adapters, which are random linear maps of the frozen features, so the
clustering follows the features' own geometry), runs one interest refresh and reports, over the
training sequences: item tokens per sequence, distinct interests per sequence, and the share of
sequences in which at least two tokens share an interest.

    python benchmarks/interest_stats.py -d Scientific-mm --data_path=<datasets> --ratios 0.5 0.1 0.02

Output: a table and ``benchmarks/results/interest_stats_<dataset>.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a clone
    sys.path.insert(0, str(ROOT))


def interest_stats(dataset: str, data_path: str, ratio: float, seed: int = 2020, **overrides) -> dict:
    import torch
    from recbole.data import data_preparation
    from recbole.utils import init_seed

    from missrec_recbole.data import MISSRecDataset
    from missrec_recbole.model import MISSRec
    from missrec_recbole.quick_start import build_config

    config = build_config(dataset, "finetune", config_dict={"data_path": data_path, "state": "ERROR", "seed": seed,
                                                            "interest_ratio": ratio, **overrides})
    train, _, _ = data_preparation(config, MISSRecDataset(config))
    init_seed(seed, True)
    model = MISSRec(config, train._dataset).eval()
    refresh = model.refresh_interests()
    item_seq = train._dataset.inter_feat[model.ITEM_SEQ]
    lengths = train._dataset.inter_feat[model.ITEM_SEQ_LEN]
    in_history = torch.arange(item_seq.shape[1])[None, :] < lengths[:, None]
    tokens = (model.present(item_seq) & in_history[..., None]).sum(dim=(1, 2)).float()
    with torch.no_grad():
        _, interest_mask = model.interest_tokens(item_seq)
    interests = interest_mask.sum(dim=1).float()
    return {"interest_ratio": ratio, "tokens": refresh["tokens"], "interests": refresh["interests"],
            "dpc_mode": refresh["mode"], "sequences": len(item_seq), "mean_items": round(float(lengths.float().mean()), 3),
            "mean_item_tokens": round(float(tokens.mean()), 3), "mean_interests": round(float(interests.mean()), 3),
            "share_with_a_merge": round(float((interests < tokens).float().mean()), 4)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-d", "--dataset", required=True)
    ap.add_argument("--data_path", required=True)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.1, 0.02])
    ap.add_argument("--out", help="default: benchmarks/results/interest_stats_<dataset>.json")
    args = ap.parse_args(argv)
    import missrec_recbole  # noqa: F401  (RecBole compatibility fixes)
    from missrec_recbole.files import write_json

    rows = [interest_stats(args.dataset, args.data_path, ratio) for ratio in args.ratios]
    print("interest_ratio | interests | items/seq | item tokens/seq | interests/seq | sequences with a merge")
    for r in rows:
        print(f"{r['interest_ratio']} | {r['interests']} of {r['tokens']} tokens | {r['mean_items']} | "
              f"{r['mean_item_tokens']} | {r['mean_interests']} | {r['share_with_a_merge']:.1%}")
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"interest_stats_{args.dataset}.json")
    write_json(out, {"date": time.strftime("%Y-%m-%d"), "dataset": args.dataset, "rows": rows})
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    from missrec_recbole.command import run_command  # noqa: E402  (bad input: one error line, no traceback)

    sys.exit(run_command(main))
