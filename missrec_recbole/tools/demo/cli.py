"""``python -m missrec_recbole.tools.demo`` / ``missrec demo``: generate the demo domains, print their sizes."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from missrec_recbole.command import command_parser
from missrec_recbole.tools.demo.baselines import baseline_ndcg, load_domain
from missrec_recbole.tools.demo.settings import DEMO_DOMAINS
from missrec_recbole.tools.demo.store import ensure_demo_dataset, generate_demo_dataset

PROG = "python -m missrec_recbole.tools.demo"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Generate the deterministic multimodal demo datasets (Demo-A..Demo-D)."
    parser.add_argument("-o", "--out", default="dataset", help="output data_path (default: dataset)")
    parser.add_argument("--seed", type=int, default=2023)
    parser.add_argument("--feature-dim", type=int, default=512)
    parser.add_argument("--domains", nargs="+", default=list(DEMO_DOMAINS))
    parser.add_argument("--force", action="store_true", help="regenerate even if present and current")
    parser.add_argument("--stats", action="store_true", help="print popularity/feature NDCG@10 per domain")


def main(argv=None, parser=None) -> int:
    args = command_parser(add_arguments, parser, PROG).parse_args(argv)
    start = time.perf_counter()
    generate = generate_demo_dataset if args.force else ensure_demo_dataset
    generate(args.out, args.domains, seed=args.seed, feature_dim=args.feature_dim)
    print(f"demo domains ready in {args.out} ({time.perf_counter() - start:.2f} s)")
    for name in args.domains:
        folder = Path(args.out) / name
        d = load_domain(folder, name, args.feature_dim)
        missing = float((np.abs(d["image"]).sum(1) == 0).mean())
        line = (f"{name}: items {d['text'].shape[0]}, users {len(d['test'][2])}, "
                f"train rows {len(d['train'][2])}, missing images {missing:.1%}")
        if args.stats:
            b = baseline_ndcg(folder, name, feature_dim=args.feature_dim)
            line += f", NDCG@10 popularity {b['popularity']:.4f} feature {b['feature']:.4f}"
        print(line)
    return 0
