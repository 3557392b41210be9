"""Benchmark suite: MISSRec vs SASRec vs UniSRec on the same pre-split files, in one command.

    python -m missrec_recbole.bench -d Scientific-mm --data_path=<datasets> --seeds 3
    python -m missrec_recbole.bench --quick                 # demo data, tiny settings, a few minutes

Protocol (docs/design.md §5):

* Table 1, "pre-trained": the dataset's users are split (seeded, :mod:`missrec_recbole.tools.split_users`,
  split seed ``--split_seed`` = 2020) into ``NAME-pre`` and ``NAME-eval`` (same items, same feature
  files). MISSRec and UniSRec are pre-trained on ``NAME-pre`` (once, seed = the first seed, settings
  of ``props/pretrain.yaml``); every row of the table - SASRec, both baselines and MISSRec from scratch
  and pre-trained, inductive and transductive - is trained and evaluated on ``NAME-eval`` only.
* Table 2, "full": every row without pre-training on the full dataset.
* Every model is trained on the same ``NAME.{train,valid,test}.inter`` files (``benchmark_filename``),
  same max sequence length, batch size and schedule, the epoch with the best valid NDCG@10 is tested
  once; full ranking over all items with the pessimistic tie rule (a target ranks after every item
  scoring >= it) for every model - SASRec (RecBole's, hidden 300, 2 layers, 2 heads, dropout 0.5,
  CE loss) is trained and evaluated by the MISSRec trainer (its tie rule and per-epoch resume files; SASRec has no
  interests to refresh; same numbers as RecBole's Trainer with the rule).
* Each training runs in its own subprocess, so its peak RSS is its own (``ru_maxrss``).

``--quick``: Demo-D split into Demo-D-pre/Demo-D-eval the same way (so the quick run goes through every
step of the real one), hidden size 32, 2 epochs (pre-training 2), one seed.

The package, by job: :mod:`~missrec_recbole.bench.settings` (constants, props/bench.yaml),
:mod:`~missrec_recbole.bench.rows` (table rows), :mod:`~missrec_recbole.bench.worker` (one training run in a child
process: SASRec, UniSRec and MISSRec runners), :mod:`~missrec_recbole.bench.store` (the locked results store),
:mod:`~missrec_recbole.bench.processes` (subprocesses and signals), :mod:`~missrec_recbole.bench.runner` (the suite),
:mod:`~missrec_recbole.bench.report` (results.md, longtail.png) and :mod:`~missrec_recbole.bench.cli`.

Outputs in ``--out_dir`` (default ``results/<dataset>/``): ``results.json`` (every run, rewritten
atomically after each one; runs with the same table, row, seed and config hash are skipped on the next
invocation, and by a concurrent invocation sharing ``--out_dir`` while one is running; a run (or pre-training) that
was stopped continues from its resume file, ``<work_dir>/saved/<run>-resume.pth``), ``ranks.npz``
(per run: target item index and pessimistic rank of every test case), ``results.md`` (mean ± std over
seeds) and ``longtail.png`` (needs matplotlib: ``pip install -e .[plot]``).
Checkpoints, split datasets and per-run logs go to ``--work_dir`` (default ``saved/bench/<dataset>/``).
Any ``--key=value`` is a config override for every run; ``--pretrain.key=value`` for pre-training only,
``--finetune.key=value`` for the table rows only (the pre-training, and its checkpoint, stay the same);
``--missrec.key=value`` (``--unisrec.``, ``--sasrec.``) for one model's pre-training and rows only, so the other
models' runs keep their hashes (later wins: ``key`` < ``missrec.key`` < ``finetune.key``). Every override is checked
against the option schema, with the props defaults, before the first run starts.
``--pretrained_from DIR`` reuses the pre-trainings recorded in another out_dir (same settings) instead of
pre-training again, e.g. to fine-tune the pre-trained rows with another setting into a separate out_dir;
``--runs_from DIR`` copies the finished runs of another out_dir that have the same key (row, seed, data, settings),
e.g. the scratch rows beside the pre-trained rows of another pre-training corpus. ``--keep_pretrained`` keeps a copy
of each pre-training checkpoint in ``out_dir/pretrained/``, where a later invocation finds it when the work_dir is
gone (a copy of the out_dir fine-tunes without pre-training again; checkpoints are not committed).
"""

from missrec_recbole.bench.cli import main, make_suite, parse_args
from missrec_recbole.bench.processes import stop, terminate_on_sigterm, worker_command
from missrec_recbole.bench.report import write_report
from missrec_recbole.bench.rows import Row, suite_rows
from missrec_recbole.bench.runner import Suite, effective_props, ensure_pretrained, file_safe, launch, pretrain_key
from missrec_recbole.bench.settings import (FIRST_SEED, PACKAGE_ROOT, QUICK_DATASET, QUICK_PRETRAIN, QUICK_SETTINGS,
                                            SASREC_SETTINGS, TABLES)
from missrec_recbole.bench.store import Results, config_hash
from missrec_recbole.bench.worker import RUN_KINDS, RunKind, Unavailable, recording, sasrec_config
from missrec_recbole.evaluation import TieRuleTrainer, metrics_from_ranks

__all__ = ["FIRST_SEED", "PACKAGE_ROOT", "QUICK_DATASET", "QUICK_PRETRAIN", "QUICK_SETTINGS", "RUN_KINDS", "Results",
           "Row", "RunKind", "SASREC_SETTINGS", "Suite", "TABLES", "TieRuleTrainer", "Unavailable", "config_hash",
           "effective_props", "ensure_pretrained", "file_safe", "launch", "main", "make_suite", "metrics_from_ranks",
           "parse_args", "pretrain_key", "recording", "sasrec_config", "stop", "suite_rows", "terminate_on_sigterm",
           "worker_command", "write_report"]
