"""Benchmark settings: the protocol's constants and the model settings of props/bench.yaml."""

from __future__ import annotations

from pathlib import Path

from missrec_recbole.config import PROPS
from missrec_recbole.config_schema import read_config_file

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
SETTINGS = read_config_file(PROPS / "bench.yaml")
BENCH_VERSION = 1
METRICS = ("recall@10", "ndcg@10", "recall@50", "ndcg@50")
MODES = ("inductive", "transductive")
FIRST_SEED = 2020
TABLES = {
    "pretrained": "Table 1: pre-trained rows (pre-training on {pre}; every row trained and evaluated on {eval})",
    "full": "Table 2: full {dataset} (no pre-training)",
    "transfer": "Transfer: pre-trained on {pre} (other domains), every row trained and evaluated on {dataset}",
}
PRETRAINED_TABLES = ("pretrained", "transfer")
SASREC_SETTINGS = SETTINGS["sasrec"]
QUICK_DATASET = SETTINGS["quick"]["dataset"]
QUICK_SETTINGS = SETTINGS["quick"]["settings"]
QUICK_PRETRAIN = SETTINGS["quick"]["pretrain"]
