"""The benchmark's command line (python -m missrec_recbole.bench, missrec bench)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import missrec_recbole  # noqa: F401
from missrec_recbole.bench.processes import terminate_on_sigterm
from missrec_recbole.bench.report import write_report
from missrec_recbole.bench.rows import suite_rows
from missrec_recbole.bench.runner import (FINETUNE_ONLY_OPTIONS, PROPS_MODEL, Suite, override_layers, run_suite,
                                          say, worker_threads)
from missrec_recbole.bench.settings import (BENCH_VERSION, FIRST_SEED, QUICK_DATASET, QUICK_PRETRAIN, QUICK_SETTINGS,
                                            SASREC_SETTINGS, TABLES)
from missrec_recbole.bench.store import Results, git_version, machine, now
from missrec_recbole.bench.worker import RUN_KINDS, worker
from missrec_recbole.command import command_parser
from missrec_recbole.config import DEFAULT_DATA_PATH, merged_props, parse_known_options
from missrec_recbole.config_schema import ConfigError, check_options
from missrec_recbole.errors import InputError
from missrec_recbole.tools.demo import DEMO_DOMAINS, ensure_demo_dataset
from missrec_recbole.tools.split_users import split_users


PROTOCOL = ("Leave-one-out on the dataset's pre-split files, full ranking over all items, best epoch on valid "
            "NDCG@10 (early stopping), test reported once; pessimistic ties for every model (a target ranks after "
            "every item scoring >= it). SASRec: RecBole's (CE loss, dropout 0.5, 2 layers, 2 heads). Table 1: "
            "MISSRec/UniSRec pre-trained on a seeded half of the users, all rows trained and evaluated on the "
            "other half; table 2: no pre-training, full dataset; transfer: MISSRec/UniSRec pre-trained on other "
            "domains (--pretrain_on), all rows trained and evaluated on the full dataset; pre-trained rows fine-tune "
            "the adapters only unless marked 'all weights'.")


PROG = "python -m missrec_recbole.bench"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description, parser.formatter_class = __doc__, argparse.RawDescriptionHelpFormatter
    parser.add_argument("-d", "--dataset", help=f"dataset under --data_path (default: {QUICK_DATASET} with --quick)")
    parser.add_argument("--data_path", help="folder containing <dataset>/ (default: ./dataset)")
    parser.add_argument("--quick", action="store_true", help="demo data, tiny model, 2 epochs, 1 seed")
    parser.add_argument("--seeds", type=int, help="number of seeds, 2020, 2021, ... (default 3; --quick: 1)")
    parser.add_argument("--only_seeds", help="comma-separated subset of those seeds to run now (pre-training still uses "
                                             "the first seed), e.g. to run seeds side by side in two invocations")
    parser.add_argument("--tables", help="comma-separated subset of: " + ",".join(TABLES) + " (default: pretrained,full; "
                                         "with --pretrain_on: transfer)")
    parser.add_argument("--pretrain_on", help="transfer table: pre-train on these other datasets (comma-separated, "
                                              "merged) instead of a user split of -d")
    parser.add_argument("--pretrain_data_path", help="folder containing the --pretrain_on datasets (default: "
                                                     "--data_path)")
    parser.add_argument("--models", default=",".join(RUN_KINDS), help="comma-separated subset of: "
                                                                       + ",".join(RUN_KINDS))
    parser.add_argument("--rows", help="comma-separated row names to run (e.g. 'SASRec,MISSRec scratch inductive'; "
                                       "default: every row)")
    parser.add_argument("--split_seed", type=int, default=FIRST_SEED, help="seed of the user split")
    parser.add_argument("--config_files", default="", help="extra YAML files for every run")
    parser.add_argument("--pretrained_from", help="an earlier out_dir whose pre-trainings (same settings) are reused")
    parser.add_argument("--keep_pretrained", action="store_true",
                        help="keep a copy of each pre-training checkpoint the rows use in out_dir/pretrained/, where "
                             "a later invocation (on another machine, from a copy of out_dir) finds it")
    parser.add_argument("--runs_from", help="an earlier out_dir whose finished runs with the same key (row, seed, data, "
                                            "settings) are copied here instead of trained again, e.g. the scratch "
                                            "rows beside pre-trained rows of another pre-training corpus")
    parser.add_argument("--out_dir", help="default: results/<dataset>/")
    parser.add_argument("--work_dir", help="split data, checkpoints, logs (default: saved/bench/<dataset>/)")
    parser.add_argument("--keep_models", action="store_true", help="keep each run's best model file")
    parser.add_argument("--report", action="store_true", help="only rewrite results.md and longtail.png")
    parser.add_argument("--verbose", action="store_true", help="stream each run's RecBole log and progress bars")
    parser.add_argument("--no_progress", action="store_true",
                        help="no overall progress bar (shown only when stderr is a terminal)")
    parser.add_argument("--log_level", default="INFO", help="RecBole log level of the runs (logs in work_dir)")
    parser.add_argument("--threads", type=int, help="CPU threads of each training run (torch and FAISS; default: "
                        "OMP_NUM_THREADS, else every core); give 1 to each of several invocations side by side, "
                        "which otherwise fight over the cores")


def parse_args(argv, parser=None):
    """``(args, overrides, pre-training overrides)``, checked (``parser``: the ``missrec bench`` sub-command's)."""
    parser = command_parser(add_arguments, parser, PROG)
    args, overrides = parse_known_options(parser, argv)
    overrides, scoped = split_scopes(overrides)
    pretrain_overrides, args.finetune_overrides = scoped["pretrain"], scoped["finetune"]
    args.model_overrides = {kind: scoped[kind] for kind in RUN_KINDS if scoped[kind]}
    if args.quick:
        overrides, pretrain_overrides = {**QUICK_SETTINGS, **overrides}, {**QUICK_PRETRAIN, **pretrain_overrides}
    args.dataset = args.dataset or (QUICK_DATASET if args.quick else None)
    if not args.dataset:
        parser.error("give -d DATASET (or --quick)")
    try:
        check_overrides(overrides, pretrain_overrides, args.finetune_overrides, args.model_overrides)
    except ConfigError as error:
        parser.error(str(error))
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads: {args.threads} is not a thread count; give 1 or more")
    args.seed_list = [FIRST_SEED + i for i in range(args.seeds or (1 if args.quick else 3))]
    args.run_seeds = args.seed_list
    if args.only_seeds:
        args.run_seeds = [int(seed) for seed in args.only_seeds.split(",")]
        if set(args.run_seeds) - set(args.seed_list):
            parser.error(f"--only_seeds: {sorted(set(args.run_seeds) - set(args.seed_list))} not in {args.seed_list}")
    args.data_path = Path(args.data_path or DEFAULT_DATA_PATH).resolve()
    args.out_dir = Path(args.out_dir or Path("results") / args.dataset).resolve()
    args.work_dir = Path(args.work_dir or Path("saved") / "bench" / args.dataset).resolve()
    args.config_files = [str(Path(f).resolve()) for f in args.config_files.replace(",", " ").split()]
    for option in ("pretrained_from", "runs_from"):
        folder = getattr(args, option)
        if folder:
            folder = Path(folder).resolve()
            if not (folder / "results.json").is_file():
                parser.error(f"--{option}: {folder / 'results.json'} does not exist; give the out_dir of an earlier "
                             "bench invocation")
            setattr(args, option, folder)
    args.command = "python -m missrec_recbole.bench " + " ".join(argv)
    if args.rows:
        args.rows = [name.strip() for name in args.rows.split(",")]
        names = {row.name for row in suite_rows(tuple(TABLES))}
        if set(args.rows) - names:
            parser.error(f"--rows: {sorted(set(args.rows) - names)} not in {sorted(names)}")
    args.tables = args.tables or ("transfer" if args.pretrain_on else "pretrained,full")
    if args.pretrain_on:
        args.pretrain_data_path = Path(args.pretrain_data_path or args.data_path).resolve()
    elif args.pretrain_data_path:
        parser.error("--pretrain_data_path goes with --pretrain_on")
    if ("transfer" in args.tables.split(",")) != bool(args.pretrain_on):
        parser.error("the transfer table and --pretrain_on go together: --pretrain_on OTHER_DATASET[,...] --tables "
                     "transfer (the user-split tables pretrained,full need no --pretrain_on)")
    for option, allowed in (("tables", TABLES), ("models", RUN_KINDS)):
        values = getattr(args, option).split(",")
        if set(values) - set(allowed):
            parser.error(f"--{option}: {sorted(set(values) - set(allowed))} not in {list(allowed)}")
        setattr(args, option, values)
    return args, overrides, pretrain_overrides


SCOPES = ("pretrain", "finetune", *RUN_KINDS)


def split_scopes(overrides: dict) -> tuple[dict, dict]:
    """``--key=value`` overrides -> (those of every run, {scope: its own}): ``--pretrain.key`` and ``--finetune.key``
    apply to one stage, ``--missrec.key`` (``--unisrec.``, ``--sasrec.``) to one model's runs in both stages (the
    fine-tuning options of ``runner.FINETUNE_ONLY_OPTIONS`` to its fine-tuning only)."""
    general, scoped = {}, {scope: {} for scope in SCOPES}
    for key, value in overrides.items():
        scope, dot, option = key.partition(".")
        if dot and scope in scoped:
            scoped[scope][option] = value
        else:
            general[key] = value
    return general, scoped


def check_overrides(general: dict, pretrain: dict, finetune: dict, models: dict) -> None:
    """Check every combination a run will see, before any run starts: a typo must not surface hours later, after
    the pre-training. Raises :class:`ConfigError` naming the option and where it was given."""
    for option in FINETUNE_ONLY_OPTIONS:
        if option in pretrain:
            raise ConfigError(f"option {option!r} (in --pretrain.KEY) only applies to fine-tuning: a pre-training "
                              f"trains every weight. Give it as --finetune.{option} (or --missrec.{option}, "
                              f"--unisrec.{option}).")
    for kind in RUN_KINDS:
        for stage in ("pretrain", "finetune"):
            check_options([("the defaults", merged_props(PROPS_MODEL[kind], stage)),
                           *override_layers(kind, stage, general, models, pretrain, finetune)], RUN_KINDS[kind].label)


def check_datasets_exist(args) -> None:
    """Raise :class:`InputError` for a dataset folder that does not exist (demo domains are generated on first use)."""
    wanted = [(args.dataset, args.data_path, "--data_path")]
    if args.pretrain_on:
        wanted += [(name, args.pretrain_data_path, "--pretrain_data_path") for name in args.pretrain_on.split(",")]
    for name, folder, option in wanted:
        if name not in DEMO_DOMAINS and not (folder / name).is_dir():
            raise InputError(f"dataset {name!r}: there is no folder {folder / name}; give {option} the folder that "
                             f"contains {name}/ (`python -m missrec_recbole.tools.prepare` writes one from atomic "
                             "files)")


def make_suite(args, overrides, pretrain_overrides) -> Suite:
    check_datasets_exist(args)
    if args.dataset in DEMO_DOMAINS:
        ensure_demo_dataset(args.data_path, [args.dataset])
    tables_data = {"full": (args.dataset, args.data_path), "transfer": (args.dataset, args.data_path)}
    split = None
    if args.pretrain_on:
        demo = [name for name in args.pretrain_on.split(",") if name in DEMO_DOMAINS]
        if demo:
            ensure_demo_dataset(args.pretrain_data_path, demo)
        pretrain_data = (args.pretrain_on, args.pretrain_data_path)
    else:
        split_path = args.work_dir / "datasets"
        split = split_users(args.dataset, args.data_path, split_path, seed=args.split_seed)
        tables_data["pretrained"] = (split["eval"], split_path)
        pretrain_data = (split["pre"], split_path)
    log_dir = args.work_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    header = {"format": f"missrec-recbole-bench/{BENCH_VERSION}", "dataset": args.dataset, "quick": args.quick,
              "seeds": args.seed_list, "command": args.command, "updated": now(), "machine": machine(),
              "code": git_version(),
              "protocol": PROTOCOL,
              "split": split and {k: split[k] for k in ("seed", "pre_ratio", "users", "rows", "pre", "eval")},
              "datasets": {"pre": pretrain_data[0], "eval": tables_data.get("pretrained", tables_data["full"])[0],
                           "dataset": args.dataset},
              "datasets_paths": {table: {"name": name, "path": str(path)} for table, (name, path) in tables_data.items()},
              "settings": {"overrides": overrides, "pretrain_overrides": pretrain_overrides,
                           "finetune_overrides": args.finetune_overrides, "model_overrides": args.model_overrides,
                           "sasrec": SASREC_SETTINGS,
                           "config_files": args.config_files}}
    pretrained_from = Results(args.pretrained_from, {}) if args.pretrained_from else None
    runs_from = Results(args.runs_from, {}) if args.runs_from else None
    return Suite(args, overrides, pretrain_overrides, args.data_path, pretrain_data, tables_data,
                 Results(args.out_dir, header), log_dir, pretrained_from, runs_from,
                 model_overrides=args.model_overrides)


def main(argv=None, parser=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["_worker"]:
        return worker(*argv[1:3])
    args, overrides, pretrain_overrides = parse_args(argv, parser)

    suite = make_suite(args, overrides, pretrain_overrides)
    start = time.time()
    counts = {}
    if not args.report:
        rows = [r for r in suite_rows(args.tables) if r.kind in args.models and (args.rows is None or r.name in args.rows)]
        threads = worker_threads(args)
        say(f"{len(rows)} rows x {len(args.run_seeds)} seeds on {args.dataset}, {threads} thread{'s' * (threads > 1)} "
            f"per run; results: {args.out_dir}; logs: {suite.log_dir}")
        with terminate_on_sigterm():
            counts = run_suite(suite, rows)
    for message in write_report(suite.results.data, suite.results, args.out_dir):
        say(message)
    say(f"done in {time.time() - start:.0f}s: " + ", ".join(f"{n} {s}" for s, n in counts.items())
        + f"; {suite.launched} training processes")
    return {"counts": counts, "launched": suite.launched, "seconds": time.time() - start}
