"""Benchmark suite: MISSRec vs SASRec vs UniSRec on the same pre-split files, in one command.

    python -m missrec_recbole.bench -d Scientific-mm --data_path=../shared/datasets --seeds 3
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
  CE loss) is evaluated by :class:`missrec_recbole.evaluation.TieRuleTrainer`, the MISSRec trainer's rule.
* Each training runs in its own subprocess, so its peak RSS is its own (``ru_maxrss``).

``--quick``: Demo-D split into Demo-D-pre/Demo-D-eval the same way (so the quick run goes through every
step of the real one), hidden size 32, 2 epochs (pre-training 2), one seed.

Outputs in ``--out_dir`` (default ``results/<dataset>/``): ``results.json`` (every run, rewritten
atomically after each one; runs with the same table, row, seed and config hash are skipped on the next
invocation, and by a concurrent invocation sharing ``--out_dir`` while one is running), ``ranks.npz``
(per run: target item index and pessimistic rank of every test case), ``results.md`` (mean ± std over
seeds) and ``longtail.png`` (needs matplotlib: ``pip install -e .[plot]``).
Checkpoints, split datasets and per-run logs go to ``--work_dir`` (default ``saved/bench/<dataset>/``).
Any ``--key=value`` is a config override for every run; ``--pretrain.key=value`` for pre-training only,
``--finetune.key=value`` for the table rows only (the pre-training, and its checkpoint, stay the same).
``--pretrained_from DIR`` reuses the pre-trainings recorded in another out_dir (same settings) instead of
pre-training again, e.g. to fine-tune the pre-trained rows with another setting into a separate out_dir.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import functools
import hashlib
import json
import os
import platform
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from missrec_recbole.command import watched
from missrec_recbole.evaluation import TieRuleTrainer, metrics_from_ranks, pessimistic_ranks

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
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
SASREC_SETTINGS = {"n_layers": 2, "n_heads": 2, "hidden_size": 300, "inner_size": 256, "hidden_dropout_prob": 0.5,
                   "attn_dropout_prob": 0.5, "hidden_act": "gelu", "loss_type": "CE"}
QUICK_DATASET = "Demo-D"
QUICK_SETTINGS = {"hidden_size": 32, "inner_size": 64, "n_heads": 2, "epochs": 2, "stopping_step": 2}
QUICK_PRETRAIN = {"epochs": 2, "save_step": 2}


# ----------------------------------------------------------------------------- the suite
@dataclass(frozen=True)
class Row:
    """One row of a results table."""

    table: str  # a key of TABLES
    kind: str  # a key of RUN_KINDS
    mode: str | None  # inductive | transductive | None (SASRec)
    pretrained: bool
    all_weights: bool = False  # pre-trained and every weight fine-tuned (default: adapters only)

    @property
    def name(self) -> str:
        if self.mode is None:
            return RUN_KINDS[self.kind].label
        start = "pre-trained (all weights)" if self.all_weights else "pre-trained" if self.pretrained else "scratch"
        return f"{RUN_KINDS[self.kind].label} {start} {self.mode}"


def suite_rows(tables=("pretrained", "full")) -> list[Row]:
    """Every row of ``tables``, in table order. The transfer table adds MISSRec fine-tuning all weights."""
    rows = []
    for table in tables:
        rows.append(Row(table, "sasrec", None, False))
        for kind in ("unisrec", "missrec"):
            starts = [(False, False)]
            if table in PRETRAINED_TABLES:
                starts.append((True, False))
            if table == "transfer" and kind == "missrec":
                starts.append((True, True))
            for pretrained, all_weights in starts:
                rows += [Row(table, kind, mode, pretrained, all_weights) for mode in MODES]
    return rows


class Unavailable(RuntimeError):
    """A run kind that cannot run here (e.g. a baseline that is not implemented yet)."""


# ----------------------------------------------------------------------------- child process: training
class RecordingTrainer:
    """Trainer mixin: per-epoch training seconds, valid scores and per-test-case pessimistic ranks.

    Put it first: ``recording(MISSRecTrainer)``. It sees the scores after the trainer's own tie rule.
    """

    last = None  # the latest instance: the one trainer of a worker process

    def __init__(self, config, model):
        super().__init__(config, model)
        self.train_epoch_seconds, self.train_epoch_cpu_seconds, self.valid_scores = [], [], []
        self.cases, self._batches = None, None
        self._epoch = -1
        RecordingTrainer.last = self

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        start, cpu = time.perf_counter(), time.process_time()
        loss = super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)
        self.train_epoch_seconds.append(time.perf_counter() - start)
        self.train_epoch_cpu_seconds.append(time.process_time() - cpu)
        self._epoch = epoch_idx
        return loss

    def _valid_epoch(self, valid_data, show_progress=False):
        score, result = super()._valid_epoch(valid_data, show_progress=show_progress)
        self.valid_scores.append((self._epoch, float(score)))
        return score, result

    def _full_sort_batch_eval(self, batched_data):
        interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
        if self._batches is not None:
            self._batches.append((positive_i.cpu(), pessimistic_ranks(scores, positive_u, positive_i).cpu()))
        return interaction, scores, positive_u, positive_i

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        self._batches = []
        try:
            result = super().evaluate(eval_data, load_best_model, model_file, show_progress)
            dataset = eval_data._dataset
            items = np.concatenate([b[0].numpy() for b in self._batches])
            self.cases = {"item": dataset.field2id_token[dataset.iid_field][items].astype(np.int64),
                          "rank": np.concatenate([b[1].numpy() for b in self._batches]).astype(np.int32)}
        finally:
            self._batches = None
        return result

    @property
    def best_epoch(self):
        """RecBole's early stopping keeps the last epoch whose valid score is >= the best so far."""
        best, best_epoch = -np.inf, None
        for epoch, score in self.valid_scores:
            if score >= best:
                best, best_epoch = score, epoch
        return best_epoch


def recording(trainer_class):
    return type(f"Recording{trainer_class.__name__}", (RecordingTrainer, trainer_class), {})


def _finetune_result(trainer, best_valid, test, seconds, model) -> dict:
    epochs = len(trainer.train_loss_dict)
    return {"valid": dict(best_valid), "test": dict(test), "epochs": epochs,
            "seconds_per_epoch": seconds / max(epochs, 1),
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "model_file": trainer.saved_model_file}


def sasrec_config(dataset: str, config_files=(), config_dict=None):
    """RecBole Config for its SASRec with MISSRec's data, training and evaluation settings
    (props/common.yaml + props/MISSRec.yaml + props/finetune.yaml) and :data:`SASREC_SETTINGS`; ``config_dict``
    wins."""
    from recbole.config import Config
    from recbole.model.sequential_recommender import SASRec

    from missrec_recbole.config import props_files, without_argv

    files = [str(path) for path in props_files("MISSRec", "finetune")] + list(config_files)
    with without_argv():
        return Config(model=SASRec, dataset=dataset, config_file_list=files,
                      config_dict={**SASREC_SETTINGS, **(config_dict or {})})


def run_sasrec(spec) -> tuple[dict, RecordingTrainer]:
    """RecBole's SASRec on the same files, settings and tie rule as MISSRec."""
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.utils import init_logger, init_seed

    config = sasrec_config(spec["dataset"], spec["config_files"], spec["config_dict"])
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    train_data, valid_data, test_data = data_preparation(config, create_dataset(config))
    init_seed(config["seed"], config["reproducibility"])
    model = SASRec(config, train_data._dataset).to(config["device"])
    trainer = recording(TieRuleTrainer)(config, model)
    start = time.time()
    _, best_valid = trainer.fit(train_data, valid_data, saved=True, show_progress=spec["show_progress"])
    seconds = time.time() - start
    test = trainer.evaluate(test_data, load_best_model=True, show_progress=spec["show_progress"])
    return _finetune_result(trainer, best_valid, test, seconds, model), trainer


def _quick_start_kwargs(spec) -> dict:
    return {"config_files": spec["config_files"], "config_dict": spec["config_dict"],
            "show_progress": spec["show_progress"]}


def run_missrec(spec):
    from missrec_recbole import quick_start
    from missrec_recbole.trainer import MISSRecTrainer

    result = quick_start.finetune(spec["dataset"], spec["pretrained"], trainer_class=recording(MISSRecTrainer),
                                  **_quick_start_kwargs(spec))
    return result, RecordingTrainer.last


def pretrain_missrec(spec) -> str:
    from missrec_recbole import quick_start

    return quick_start.pretrain(spec["dataset"].split(","), **_quick_start_kwargs(spec))[-1]


def _unisrec_config(spec) -> dict:
    """run_unisrec takes no config files: their keys go into its config dict (which still wins)."""
    import yaml

    merged = {}
    for path in spec["config_files"]:
        with open(path, encoding="utf-8") as handle:
            merged.update(yaml.safe_load(handle) or {})
    return {**merged, **spec["config_dict"]}


def run_unisrec(spec):
    from missrec_recbole.baselines import run_unisrec as unisrec
    from missrec_recbole.trainer import MISSRecTrainer

    result = unisrec(spec["dataset"], stage="finetune", mode=spec["mode"], pretrained=spec["pretrained"],
                     config_dict=_unisrec_config(spec), trainer_class=recording(MISSRecTrainer))
    return result, RecordingTrainer.last


def pretrain_unisrec(spec) -> str:
    from missrec_recbole.baselines import run_unisrec as unisrec

    return unisrec(spec["dataset"].split(","), stage="pretrain", mode="inductive",
                   config_dict=_unisrec_config(spec))["checkpoint"]


@dataclass(frozen=True)
class RunKind:
    """How to train one model family in a worker process: ``finetune(spec) -> (result, recorder)``."""

    label: str
    finetune: object
    pretrain: object = None  # spec -> checkpoint path; None: no pre-trained rows
    check: object = None  # raises Unavailable when the kind cannot run


RUN_KINDS = {
    "sasrec": RunKind("SASRec", run_sasrec),
    "unisrec": RunKind("UniSRec", run_unisrec, pretrain_unisrec),
    "missrec": RunKind("MISSRec", run_missrec, pretrain_missrec),
}


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes


def _worker_finetune(spec, out: Path) -> dict:
    result, recorder = RUN_KINDS[spec["kind"]].finetune(spec)
    record = {key: result.get(key) for key in ("valid", "test", "epochs", "seconds_per_epoch",
                                               "interest_refresh_seconds", "trainable_parameters", "best_epoch")}
    record["model_file"] = result.get("model_file")
    if recorder is not None:
        record["best_epoch"] = recorder.best_epoch
        record["train_seconds_per_epoch"] = float(np.mean(recorder.train_epoch_seconds))
        record["train_cpu_seconds_per_epoch"] = float(np.mean(recorder.train_epoch_cpu_seconds))
        if recorder.cases is not None:
            np.savez_compressed(out.with_suffix(".npz"), **recorder.cases)
            mine = metrics_from_ranks(recorder.cases["rank"])
            record["ranks_vs_metrics"] = max(abs(mine[m] - float(record["test"][m])) for m in METRICS)
    return record


def worker(spec_file: str, out_file: str) -> None:
    """Child process entry: run one spec, write its record (and ranks) next to ``out_file``."""
    import missrec_recbole  # noqa: F401  (RecBole compatibility fixes)

    import torch

    spec = json.loads(Path(spec_file).read_text(encoding="utf-8"))
    out = Path(out_file)
    start = time.time()
    if spec["action"] == "pretrain":
        record = {"checkpoint": RUN_KINDS[spec["kind"]].pretrain(spec)}
    else:
        record = _worker_finetune(spec, out)
    record.update(wall_seconds=time.time() - start, peak_rss_bytes=peak_rss_bytes(), threads=torch.get_num_threads())
    out.write_text(json.dumps(record, default=float), encoding="utf-8")


# ----------------------------------------------------------------------------- parent: bookkeeping
def atomic_write(path: Path, write) -> None:
    """``write(handle)`` into a temp file beside ``path``, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path: Path, data) -> None:
    atomic_write(path, lambda h: h.write(json.dumps(data, indent=1, default=float).encode("utf-8")))


@functools.lru_cache(maxsize=None)
def fingerprint(folder: Path, name: str) -> str:
    """Content hash of a dataset's files (inter, features, maps)."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob(f"{name}.*")):
        digest.update(path.name[len(name):].encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def config_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def machine() -> dict:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    return {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(memory / 2**30, 1),
            "python": platform.python_version(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


def _git_version():
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PACKAGE_ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PACKAGE_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("-dirty" if dirty else "")) or None


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


class Results:
    """``results.json`` + ``ranks.npz`` in ``out_dir``, rewritten atomically after every change.

    Every read-modify-write re-reads both files under a lock on ``out_dir/.lock``, so several bench invocations
    may share one ``out_dir`` (e.g. ``--tables pretrained`` and ``--tables full`` side by side, one core each):
    each adds its own records and keeps the others'.
    """

    def __init__(self, out_dir: Path, header: dict):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / "results.json"
        self.header = header
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._load()

    def _load(self) -> None:
        data = json.loads(self.path.read_text(encoding="utf-8")) if self.path.is_file() else {}
        self.data = {**self.header, "pretraining": data.get("pretraining", []), "runs": data.get("runs", [])}
        ranks_file = self.out_dir / "ranks.npz"
        self.ranks = dict(np.load(ranks_file)) if ranks_file.is_file() else {}

    @contextlib.contextmanager
    def _locked(self):
        with open(self.out_dir / ".lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                self._load()
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def find(self, section: str, key: str):
        with self._locked():
            return next((r for r in self.data[section] if r["key"] == key and r["status"] == "ok"), None)

    def put(self, section: str, record: dict, cases=None) -> None:
        with self._locked():
            self.data[section] = [r for r in self.data[section] if r["key"] != record["key"]] + [record]
            if cases is not None:
                self.ranks.update({f"{record['key']}|{k}": v for k, v in cases.items()})
                atomic_write(self.out_dir / "ranks.npz", lambda h: np.savez_compressed(h, **self.ranks))
            self.data["updated"] = now()
            write_json(self.path, self.data)

    @contextlib.contextmanager
    def claim(self, key: str, wait: bool):
        """Hold ``key`` while this invocation computes it, so another one sharing ``out_dir`` does not start it too.

        A lock on ``out_dir/.claims/<hash of key>`` (released by the OS if the process dies: no stale claims).
        Yields True once held; False at once when another invocation holds it and ``wait`` is False."""
        folder = self.out_dir / ".claims"
        folder.mkdir(exist_ok=True)
        with open(folder / hashlib.sha256(key.encode()).hexdigest()[:20], "a+b") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def cases(self, key: str):
        if f"{key}|rank" not in self.ranks:
            return None
        return {k: self.ranks[f"{key}|{k}"] for k in ("item", "rank")}


# ----------------------------------------------------------------------------- parent: running
@dataclass
class Suite:
    """Everything a bench invocation needs to plan, run and report."""

    args: argparse.Namespace
    overrides: dict
    pretrain_overrides: dict
    data_path: Path  # folder with the full dataset
    pretrain_data: tuple[str, Path]  # pre-training dataset(s) (comma-separated names) and their folder
    tables_data: dict  # table -> (dataset, folder) its rows train and evaluate on
    results: Results
    log_dir: Path
    pretrained_from: Results | None = None  # another out_dir whose pre-trainings may be reused
    launched: int = 0
    progress: object = print  # receives each epoch line of the running training's log

    @property
    def pretrain_settings(self) -> dict:
        return {**self.overrides, **self.pretrain_overrides}

    def dataset_of(self, table: str) -> tuple[str, Path]:
        return self.tables_data[table]


def _spec(suite: Suite, action: str, kind: str, dataset: str, data_path: Path, seed: int, settings: dict,
          mode=None, pretrained=None) -> dict:
    config_dict = {**settings, "seed": seed, "data_path": str(data_path), "state": suite.args.log_level,
                   "checkpoint_dir": str(suite.args.work_dir / "saved")}
    if mode:
        config_dict["mode"] = mode
    return {"action": action, "kind": kind, "mode": mode, "dataset": dataset, "pretrained": pretrained,
            "config_files": suite.args.config_files, "config_dict": config_dict,
            "show_progress": suite.args.verbose}


def _file_hashes(paths) -> dict:
    return {Path(f).name: hashlib.sha256(Path(f).read_bytes()).hexdigest()[:12] for f in paths}


SPEED_ONLY_OPTIONS = {"memory_chunk_rows"}  # same gradients, less memory (tests/test_model.py)
PROPS_MODEL = {"sasrec": "MISSRec", "unisrec": "UniSRec", "missrec": "MISSRec"}  # SASRec runs on MISSRec's props


def effective_props(kind: str, stage: str) -> dict:
    """The defaults a run of ``kind`` reads from props/ (merged, later files win): what the run hash covers, so
    that rearranging or commenting the props files does not change it, while changing a value does. Options that
    change speed or memory only (:data:`SPEED_ONLY_OPTIONS`) do not identify a run."""
    from missrec_recbole.config import merged_props

    merged = merged_props(PROPS_MODEL[kind], stage)
    return {key: value for key, value in merged.items() if key not in SPEED_ONLY_OPTIONS}


def _hash_inputs(suite: Suite, kind: str, dataset: str, data_path: Path, settings: dict, stage: str,
                 **extra) -> dict:
    """What identifies a run besides its seed: data content, the props defaults it reads, extra YAML contents,
    overrides. (The code version is recorded per run, not hashed.)"""
    data = ",".join(fingerprint(data_path / name, name) for name in dataset.split(","))
    return {"bench": BENCH_VERSION, "kind": kind, "dataset": dataset, "data": data,
            "settings": settings, "props": effective_props(kind, stage),
            "config_files": _file_hashes(suite.args.config_files), **extra}


def file_safe(text: str, keep: str = "-_.") -> str:
    """``text`` as a file name: characters other than letters, digits and ``keep`` become ``_``."""
    return "".join(c if c.isalnum() or c in keep else "_" for c in text)


def launch(suite: Suite, spec: dict, label: str) -> tuple[dict, dict | None]:
    """Run ``spec`` in a fresh ``python -m missrec_recbole.bench _worker`` process: (record, per-case ranks)."""
    suite.launched += 1
    log = suite.log_dir / f"{file_safe(label)}.log"
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        spec_file, out_file = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_file.write_text(json.dumps(spec), encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_ROOT),
                                                                           os.environ.get("PYTHONPATH")]))}
        with open(log, "w", encoding="utf-8") as handle:
            output = None if suite.args.verbose else handle
            process = subprocess.Popen(worker_command(spec_file, out_file), cwd=suite.args.work_dir, env=env,
                                       stdout=output, stderr=output)
            try:
                code = follow(process, log, suite.progress)
            except BaseException:  # Ctrl-C, SIGTERM (see terminate_on_sigterm), a progress error: no orphan
                stop(process)
                raise
        if code != 0 or not out_file.is_file():
            tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-15:]
            raise RuntimeError(f"exit code {code}; log {log}:\n" + "\n".join(tail))
        record = json.loads(out_file.read_text(encoding="utf-8"))
        npz = out_file.with_suffix(".npz")
        cases = dict(np.load(npz)) if npz.is_file() else None
    record["log"] = str(log)
    return record, cases


def _check(kind: str) -> None:
    if RUN_KINDS[kind].check is not None:
        RUN_KINDS[kind].check()


def pretrain_key(suite: Suite, kind: str) -> str:
    """Pre-training is done once per model kind, settings and data, with the first seed."""
    inputs = _hash_inputs(suite, kind, *suite.pretrain_data, suite.pretrain_settings, "pretrain",
                          seed=suite.args.seed_list[0])
    return f"pretrain|{kind}|{config_hash(inputs)}"


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def worker_command(spec_file: Path, out_file: Path) -> list[str]:
    return [sys.executable, "-m", "missrec_recbole.bench", "_worker", str(spec_file), str(out_file)]


def stop(process, grace: float = 10.0) -> None:
    """Terminate ``process`` (kill it if it is still running after ``grace`` seconds) and reap it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def terminate_on_sigterm():
    """Turn SIGTERM into SystemExit while the suite runs, so ``launch`` stops its worker before exiting.

    Ctrl-C in a terminal reaches the whole process group, but ``kill PID`` (a scheduler, ``timeout``, a
    tuning sweep) reaches only this process and would otherwise leave the training worker running."""
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def follow(process, log: Path, progress, every: float = 2.0) -> int:
    """Wait for ``process``, passing each new RecBole epoch line of its log to ``progress``; returns its exit code."""
    position = 0
    while True:
        code = process.poll()
        with open(log, "rb") as handle:
            handle.seek(position)
            data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]
        position += len(complete)
        for line in ANSI.sub("", complete.decode("utf-8", errors="replace")).splitlines():
            if " epoch " in line and ("training" in line or "evaluating" in line):
                progress(line.split("INFO", 1)[-1].strip())
        if code is not None:
            return code
        time.sleep(every)


def ensure_pretrained(suite: Suite, kind: str) -> str:
    """Checkpoint of ``kind`` pre-trained on the pre-training data (trained once, then reused)."""
    key = pretrain_key(suite, kind)
    with suite.results.claim(key, wait=True):  # another invocation pre-training it: wait for its checkpoint
        done = _recorded_pretraining(suite.results, key)
        if done:
            return done["checkpoint"]
        reused = _recorded_pretraining(suite.pretrained_from, key)
        if reused:
            suite.results.put("pretraining", {**reused, "reused_from": str(suite.pretrained_from.path)})
            return reused["checkpoint"]
        return _pretrain(suite, kind, key)


def _recorded_pretraining(results: Results | None, key: str) -> dict | None:
    """The pre-training ``key`` recorded in ``results`` if its checkpoint is still on disk."""
    done = results.find("pretraining", key) if results else None
    return done if done and Path(done["checkpoint"]).is_file() else None


def _pretrain(suite: Suite, kind: str, key: str) -> str:
    dataset, data_path = suite.pretrain_data
    settings = suite.pretrain_settings
    _check(kind)
    say(f"pre-training {RUN_KINDS[kind].label} on {dataset} (log: {suite.log_dir})")
    spec = _spec(suite, "pretrain", kind, dataset, data_path, suite.args.seed_list[0], settings, mode="inductive")
    spec["config_dict"]["checkpoint_dir"] = str(suite.args.work_dir / "saved" / key.replace("|", "-"))
    record, _ = launch(suite, spec, key.replace("|", "-"))
    suite.results.put("pretraining", {"key": key, "kind": kind, "dataset": dataset, "seed": suite.args.seed_list[0],
                                      "config_hash": key.rsplit("|", 1)[1], "settings": settings, "status": "ok",
                                      "date": now(), **record})
    say(f"pre-trained {RUN_KINDS[kind].label}: {record['checkpoint']} ({record['wall_seconds']:.0f}s)")
    return record["checkpoint"]


def run_row(suite: Suite, row: Row, seed: int) -> str:
    """Train/evaluate one row for one seed unless results.json has it or another invocation is running it;
    returns ok|skipped|busy|unavailable|failed."""
    dataset, data_path = suite.dataset_of(row.table)
    settings = {**(SASREC_SETTINGS if row.kind == "sasrec" else {}), **suite.overrides,
                **suite.args.finetune_overrides, **({"adapters_only": False} if row.all_weights else {})}
    pre_key = pretrain_key(suite, row.kind) if row.pretrained else None
    digest = config_hash(_hash_inputs(suite, row.kind, dataset, data_path, settings, "finetune", mode=row.mode,
                                      pretrained=pre_key))
    key = f"{row.table}|{row.name}|{seed}|{digest}"
    if suite.results.find("runs", key):
        return "skipped"
    base = {"key": key, "table": row.table, "row": row.name, "kind": row.kind, "mode": row.mode,
            "pretrained": row.pretrained, "dataset": dataset, "seed": seed, "config_hash": digest,
            "settings": settings, "date": now(), "command": suite.args.command,
            "machine": suite.results.data["machine"], "code": suite.results.data["code"]}
    with suite.results.claim(key, wait=False) as mine:
        if not mine:
            return "busy"
        if suite.results.find("runs", key):  # finished by another invocation a moment ago
            return "skipped"
        return _train_row(suite, row, base, settings, data_path)


def _train_row(suite: Suite, row: Row, base: dict, settings: dict, data_path: Path) -> str:
    seed, dataset = base["seed"], base["dataset"]
    try:
        _check(row.kind)
        checkpoint = ensure_pretrained(suite, row.kind) if row.pretrained else None
        spec = _spec(suite, "finetune", row.kind, dataset, data_path, seed, settings, row.mode, checkpoint)
        record, cases = launch(suite, spec, f"{row.table}-{row.name}-{seed}-{base['config_hash']}")
    except Unavailable as error:
        suite.results.put("runs", {**base, "status": "unavailable", "message": str(error)})
        return "unavailable"
    except RuntimeError as error:
        suite.results.put("runs", {**base, "status": "failed", "message": str(error)})
        say(f"FAILED {row.table} / {row.name} / seed {seed}: {error}")
        return "failed"
    _remove_model(record, suite.args.keep_models)
    suite.results.put("runs", {**base, "status": "ok", "pretrained_checkpoint": checkpoint, **record}, cases)
    return "ok"


def _remove_model(record: dict, keep: bool) -> None:
    model_file = record.get("model_file")
    if keep or not model_file:
        return
    for path in (Path(model_file), Path(model_file[: -len(".pth")] + "-resume.pth")):
        if path.is_file():
            path.unlink()
    record["model_file"] = None


def say(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr)


def run_suite(suite: Suite, rows) -> dict:
    from tqdm import tqdm

    plan = [(row, seed) for seed in suite.args.run_seeds for row in rows]
    counts = {}
    bar = tqdm(plan, desc="bench", unit="run", file=sys.stderr, disable=suite.args.no_progress or not watched())
    for row, seed in bar:
        bar.set_postfix_str(f"{row.table}: {row.name}, seed {seed}")
        suite.progress = lambda line, row=row, seed=seed: bar.set_postfix_str(
            f"{row.table}: {row.name}, seed {seed}: {line}")
        status = run_row(suite, row, seed)
        counts[status] = counts.get(status, 0) + 1
        if status == "ok":
            run = suite.results.data["runs"][-1]
            say(f"{row.table} / {row.name} / seed {seed}: test NDCG@10 {run['test']['ndcg@10']:.4f}, "
                f"{run['epochs']} epochs, {run['wall_seconds']:.0f}s")
        elif status == "busy":
            say(f"{row.table} / {row.name} / seed {seed}: another invocation is running it; not started here")
        elif status == "unavailable":
            say(f"{row.table} / {row.name} / seed {seed}: {suite.results.data['runs'][-1]['message']}")
    bar.close()
    return counts


# ----------------------------------------------------------------------------- report
def _mean_std(values, digits=4) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def group_runs(data: dict) -> dict:
    """``{table: {row name: [runs]}}`` in suite order. A row whose settings changed keeps only the runs with
    the config hash of its latest run (older runs stay in results.json)."""
    groups = {}
    for row in suite_rows(tuple(TABLES)):
        groups.setdefault(row.table, {})[row.name] = []
    for run in data["runs"]:
        groups.setdefault(run["table"], {}).setdefault(run["row"], []).append(run)
    for rows in groups.values():
        for name, runs in rows.items():
            if runs:
                latest = max(runs, key=lambda r: r["date"])["config_hash"]
                rows[name] = [r for r in runs if r["config_hash"] == latest]
    return groups


COLUMNS = (
    ("test Recall@10", lambda r: r["test"]["recall@10"], 4),
    ("test NDCG@10", lambda r: r["test"]["ndcg@10"], 4),
    ("test Recall@50", lambda r: r["test"]["recall@50"], 4),
    ("test NDCG@50", lambda r: r["test"]["ndcg@50"], 4),
    ("valid NDCG@10", lambda r: r["valid"]["ndcg@10"], 4),
    ("best epoch", lambda r: r.get("best_epoch"), 1),
    ("train s/epoch", lambda r: r.get("train_seconds_per_epoch"), 1),
    ("interest refresh s", lambda r: r.get("interest_refresh_seconds"), 2),
    ("trainable params", lambda r: r.get("trainable_parameters"), 0),
    ("peak RSS GB", lambda r: r["peak_rss_bytes"] / 2**30, 2),
)


def _table_lines(rows: dict) -> list[str]:
    lines = ["| model | seeds | " + " | ".join(c[0] for c in COLUMNS) + " | config |",
             "|---|---|" + "---|" * (len(COLUMNS) + 1)]
    for name, runs in rows.items():
        ok = [r for r in runs if r["status"] == "ok"]
        if ok:
            cells = [_mean_std([get(r) for r in ok], digits) for _, get, digits in COLUMNS]
            lines.append(f"| {name} | {len(ok)} | " + " | ".join(cells) + f" | {ok[0]['config_hash']} |")
        elif runs:
            lines.append(f"| {name} | 0 | {runs[-1]['status']}: {runs[-1]['message'].splitlines()[0]} |")
    return lines


def _mean_of(runs, get):
    ok = [get(r) for r in runs if r["status"] == "ok"]
    return float(np.mean(ok)) if ok and None not in ok else None


def _cost_lines(groups: dict) -> list[str]:
    keys = ("train_seconds_per_epoch", "train_cpu_seconds_per_epoch", "seconds_per_epoch")
    lines = []
    for table, rows in groups.items():
        sasrec = [_mean_of(rows.get("SASRec", []), lambda r, k=k: r.get(k)) for k in keys]
        for name, runs in rows.items():
            ours = [_mean_of(runs, lambda r, k=k: r.get(k)) for k in keys]
            if name.startswith("MISSRec") and None not in ours + sasrec:
                lines.append(f"| {table} | {name} | {ours[0]:.2f} | {sasrec[0]:.2f} | "
                             + " | ".join(f"{a / b:.2f}x" for a, b in zip(ours, sasrec)) + " |")
    if not lines:
        return []
    return ["## Cost: MISSRec vs SASRec seconds per fine-tune epoch (same run, same data and batch size)", "",
            "Training pass of an epoch (MISSRec's includes the interest refresh): wall-clock seconds and their "
            "ratio, the ratio of process CPU seconds (less sensitive to other jobs on a shared machine) and the "
            "wall-clock ratio of whole epochs including validation. Target: at most 1.5x.", "",
            "| table | MISSRec row | MISSRec s/epoch | SASRec s/epoch | ratio | CPU ratio | whole-epoch ratio |",
            "|---|---|---|---|---|---|---|", *lines, ""]


def _target_lines(groups: dict) -> list[str]:
    lines = []
    for table, rows in groups.items():
        means = {name: _mean_of(runs, lambda r: r["test"]["ndcg@10"]) for name, runs in rows.items()}
        ours = {n: v for n, v in means.items() if n.startswith("MISSRec") and v is not None}
        others = {n: v for n, v in means.items() if not n.startswith("MISSRec") and v is not None}
        if not ours or not others:
            continue
        best, rival = max(ours, key=ours.get), max(others, key=others.get)
        gain = ours[best] / others[rival] - 1 if others[rival] else float("nan")
        lines.append(f"| {table} | {best} {ours[best]:.4f} | {rival} {others[rival]:.4f} | {gain:+.1%} | "
                     f"{'yes' if gain >= 0.05 else 'no'} |")
    if not lines:
        return []
    return ["## Quality target: best MISSRec test NDCG@10 >= 1.05 x best of SASRec/UniSRec (mean over seeds)", "",
            "| table | best MISSRec | best baseline | gain | met |", "|---|---|---|---|---|", *lines, ""]


def _pretraining_lines(groups: dict) -> list[str]:
    """Does pre-training pay? Each pre-trained MISSRec row against MISSRec from scratch in the same mode."""
    lines = []
    for table, rows in groups.items():
        for mode in MODES:
            scratch = _mean_of(rows.get(f"MISSRec scratch {mode}", []), lambda r: r["test"]["ndcg@10"])
            for start in ("pre-trained", "pre-trained (all weights)"):
                ours = _mean_of(rows.get(f"MISSRec {start} {mode}", []), lambda r: r["test"]["ndcg@10"])
                if scratch and ours is not None:
                    gain = ours / scratch - 1
                    lines.append(f"| {table} | MISSRec {start} {mode} {ours:.4f} | scratch {scratch:.4f} | {gain:+.1%} "
                                 f"| {'yes' if gain >= 0 else 'no'} |")
    if not lines:
        return []
    return ["## Transfer target: pre-trained MISSRec test NDCG@10 >= MISSRec from scratch (mean over seeds)", "",
            "| table | pre-trained | scratch | gain | met |", "|---|---|---|---|---|", *lines, ""]


def _split_note(split: dict | None) -> str:
    if not split:
        return ""
    return (f"; user split seed {split['seed']} ({split['users']['pre']} pre-training / {split['users']['eval']} "
            "evaluation users)")


def results_markdown(data: dict) -> str:
    groups = group_runs(data)
    names = data["datasets"]
    shown = [r for rows in groups.values() for runs in rows.values() for r in runs]
    commands = sorted({r["command"] for r in shown}) or [data["command"]]
    dates = sorted(r["date"] for r in shown) or [data["updated"]]
    machines = {json.dumps(r["machine"], sort_keys=True) for r in shown} or {json.dumps(data["machine"])}
    lines = [f"# Benchmark on {data['dataset']}", "",
             *[f"Command: `{c}`  " for c in commands], f"Date: {dates[0]} to {dates[-1]}  ",
             *["Machine: " + ", ".join(f"{k} {v}" for k, v in json.loads(m).items()) + "  " for m in sorted(machines)],
             "Code: git " + ", ".join(sorted({str(r.get("code")) for r in shown} or {str(data["code"])})) + "  ",
             f"Seeds: {sorted({r['seed'] for r in shown}) or data['seeds']}" + _split_note(data.get("split")),
             "", data["protocol"], ""]
    for table, rows in groups.items():
        if not any(rows.values()):
            continue
        lines += [f"## {TABLES[table].format(**names)}", "", *_table_lines(rows), ""]
    lines += _cost_lines(groups) + _target_lines(groups) + _pretraining_lines(groups)
    lines += ["Mean ± sample std over seeds. `train s/epoch`: the training pass of one epoch (MISSRec: with the "
              "interest refresh), `interest refresh s`: DPC-KNN refresh per epoch, `peak RSS`: the run's own "
              "process (each run is a separate process). Per-run numbers: results.json; per-test-case ranks: "
              "ranks.npz; long tail: longtail.png.", ""]
    return "\n".join(lines)


def train_frequency(folder: Path, name: str) -> dict:
    """How often each item index is a target in ``NAME.train.inter``."""
    from missrec_recbole.data.dataset import tab_rows

    counts = {}
    for number, fields in tab_rows(folder / f"{name}.train.inter"):
        if number > 1:
            item = int(fields[-1])
            counts[item] = counts.get(item, 0) + 1
    return counts


def longtail_buckets(frequency: np.ndarray, n_buckets: int = 5) -> tuple[np.ndarray, list[str]]:
    """Quantile buckets of the test cases' target training frequencies: (bucket per case, labels)."""
    edges = np.unique(np.quantile(frequency, np.linspace(0, 1, n_buckets + 1)))
    bucket = np.searchsorted(edges[1:-1], frequency, side="right")
    labels = []
    for b in range(len(edges) - 1):
        members = frequency[bucket == b]
        labels.append(f"{members.min()}-{members.max()}" if members.size else "")
    return bucket, labels


def longtail_series(data: dict, ranks: Results, table: str, n_buckets: int = 5):
    """Per bucket: test cases and each row's Recall@10 relative to SASRec's (means over seeds)."""
    info = data["datasets_paths"][table]
    frequency_of = train_frequency(Path(info["path"]) / info["name"], info["name"])
    per_row = {}
    items = None
    for run in data["runs"]:
        cases = ranks.cases(run["key"]) if run["table"] == table and run["status"] == "ok" else None
        if cases is not None:
            items = cases["item"] if items is None else items
            per_row.setdefault(run["row"], []).append(cases["rank"] <= 10)
    if items is None or "SASRec" not in per_row:
        return None
    frequency = np.array([frequency_of.get(int(i), 0) for i in items])
    bucket, labels = longtail_buckets(frequency, n_buckets)
    counts = np.bincount(bucket, minlength=len(labels))

    def recall(hits):
        mean_hits = np.mean(hits, axis=0)
        return np.array([mean_hits[bucket == b].mean() if counts[b] else np.nan for b in range(len(labels))])

    base = recall(per_row["SASRec"])
    with np.errstate(divide="ignore", invalid="ignore"):  # SASRec at 0 in a bucket: no ratio (nan)
        relative = {row: np.where(base > 0, recall(hits) / base, np.nan) for row, hits in per_row.items()
                    if row != "SASRec"}
    return labels, counts, relative


def plot_longtail(data: dict, ranks: Results, path: Path) -> str:
    """``longtail.png`` like the MISSRec paper's Figure 4; returns a message."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "longtail.png skipped: matplotlib is not installed (pip install -e .[plot])"
    series = {t: longtail_series(data, ranks, t) for t in TABLES if t in data["datasets_paths"]}
    series = {t: s for t, s in series.items() if s is not None}
    if not series:
        return "longtail.png skipped: no SASRec run with per-case ranks yet"
    fig, axes = plt.subplots(1, len(series), figsize=(7 * len(series), 6), squeeze=False)
    for ax, (table, (labels, counts, relative)) in zip(axes[0], series.items()):
        x = np.arange(len(labels))
        ax.bar(x, counts, color="#d9d9d9", label="test cases")
        ax.set_xticks(x, labels)
        ax.set_xlabel("target item's training frequency (quantile buckets)")
        ax.set_ylabel("test cases")
        ax.set_title(TABLES[table].split(":")[0] + f": {data['datasets_paths'][table]['name']}")
        right = ax.twinx()
        for row, values in relative.items():
            right.plot(x, values, marker="o", label=row)
        right.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        finite = [v for values in relative.values() for v in values if np.isfinite(v) and v > 0]
        if finite and max(finite) / min(finite) > 20:
            right.set_yscale("log")
        right.set_ylabel("Recall@10 relative to SASRec")
        if relative:
            right.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    fig.tight_layout()
    atomic_write(path, lambda h: fig.savefig(h, format="png", dpi=110))
    plt.close(fig)
    return f"written: {path}"


def write_report(data: dict, ranks: Results, out_dir: Path) -> list[str]:
    md = out_dir / "results.md"
    atomic_write(md, lambda h: h.write(results_markdown(data).encode("utf-8")))
    return [f"written: {md}", plot_longtail(data, ranks, out_dir / "longtail.png")]


# ----------------------------------------------------------------------------- command line
PROTOCOL = ("Leave-one-out on the dataset's pre-split files, full ranking over all items, best epoch on valid "
            "NDCG@10 (early stopping), test reported once; pessimistic ties for every model (a target ranks after "
            "every item scoring >= it). SASRec: RecBole's (CE loss, dropout 0.5, 2 layers, 2 heads). Table 1: "
            "MISSRec/UniSRec pre-trained on a seeded half of the users, all rows trained and evaluated on the "
            "other half; table 2: no pre-training, full dataset; transfer: MISSRec/UniSRec pre-trained on other "
            "domains (--pretrain_on), all rows trained and evaluated on the full dataset; pre-trained rows fine-tune "
            "the adapters only unless marked 'all weights'.")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--dataset", help=f"dataset under --data_path (default: {QUICK_DATASET} with --quick)")
    parser.add_argument("--data_path", help="folder containing <dataset>/ (default: the repo's dataset/)")
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
    parser.add_argument("--out_dir", help="default: results/<dataset>/")
    parser.add_argument("--work_dir", help="split data, checkpoints, logs (default: saved/bench/<dataset>/)")
    parser.add_argument("--keep_models", action="store_true", help="keep each run's best model file")
    parser.add_argument("--report", action="store_true", help="only rewrite results.md and longtail.png")
    parser.add_argument("--verbose", action="store_true", help="stream each run's RecBole log and progress bars")
    parser.add_argument("--no_progress", action="store_true", help="no overall progress bar (shown only when stderr is a terminal)")
    parser.add_argument("--log_level", default="INFO", help="RecBole log level of the runs (logs in work_dir)")
    args, extra = parser.parse_known_args(argv)
    from missrec_recbole.config import DEFAULT_DATA_PATH, parse_overrides

    try:
        overrides = parse_overrides(extra)
    except ValueError as error:
        parser.error(str(error))
    pretrain_overrides = {k[len("pretrain."):]: v for k, v in overrides.items() if k.startswith("pretrain.")}
    args.finetune_overrides = {k[len("finetune."):]: v for k, v in overrides.items() if k.startswith("finetune.")}
    overrides = {k: v for k, v in overrides.items() if not k.startswith(("pretrain.", "finetune."))}
    if args.quick:
        overrides, pretrain_overrides = {**QUICK_SETTINGS, **overrides}, {**QUICK_PRETRAIN, **pretrain_overrides}
    args.dataset = args.dataset or (QUICK_DATASET if args.quick else None)
    if not args.dataset:
        parser.error("give -d DATASET (or --quick)")
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
    if args.pretrained_from:
        args.pretrained_from = Path(args.pretrained_from).resolve()
        if not (args.pretrained_from / "results.json").is_file():
            parser.error(f"--pretrained_from: {args.pretrained_from / 'results.json'} does not exist; give the "
                         "out_dir of an earlier bench invocation")
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


def make_suite(args, overrides, pretrain_overrides) -> Suite:
    from missrec_recbole.tools.demo import DEMO_DOMAINS, ensure_demo_dataset
    from missrec_recbole.tools.split_users import split_users

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
              "code": _git_version(),
              "protocol": PROTOCOL,
              "split": split and {k: split[k] for k in ("seed", "pre_ratio", "users", "rows", "pre", "eval")},
              "datasets": {"pre": pretrain_data[0], "eval": tables_data.get("pretrained", tables_data["full"])[0],
                           "dataset": args.dataset},
              "datasets_paths": {table: {"name": name, "path": str(path)} for table, (name, path) in tables_data.items()},
              "settings": {"overrides": overrides, "pretrain_overrides": pretrain_overrides,
                           "finetune_overrides": args.finetune_overrides, "sasrec": SASREC_SETTINGS,
                           "config_files": args.config_files}}
    pretrained_from = Results(args.pretrained_from, {}) if args.pretrained_from else None
    return Suite(args, overrides, pretrain_overrides, args.data_path, pretrain_data, tables_data,
                 Results(args.out_dir, header), log_dir, pretrained_from)


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["_worker"]:
        return worker(*argv[1:3])
    args, overrides, pretrain_overrides = parse_args(argv)
    import missrec_recbole  # noqa: F401

    suite = make_suite(args, overrides, pretrain_overrides)
    start = time.time()
    counts = {}
    if not args.report:
        rows = [r for r in suite_rows(args.tables) if r.kind in args.models and (args.rows is None or r.name in args.rows)]
        say(f"{len(rows)} rows x {len(args.run_seeds)} seeds on {args.dataset}; results: {args.out_dir}; "
            f"logs: {suite.log_dir}")
        with terminate_on_sigterm():
            counts = run_suite(suite, rows)
    for message in write_report(suite.results.data, suite.results, args.out_dir):
        say(message)
    say(f"done in {time.time() - start:.0f}s: " + ", ".join(f"{n} {s}" for s, n in counts.items())
        + f"; {suite.launched} training processes")
    return {"counts": counts, "launched": suite.launched, "seconds": time.time() - start}


if __name__ == "__main__":
    main()
