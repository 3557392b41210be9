"""Parent process: the suite's runs (pre-training once, every row and seed), each in its own subprocess."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from missrec_recbole.bench.processes import follow, stop, worker_command
from missrec_recbole.bench.rows import Row
from missrec_recbole.bench.settings import BENCH_VERSION, PACKAGE_ROOT, SASREC_SETTINGS
from missrec_recbole.bench.store import Results, config_hash, fingerprint, now
from missrec_recbole.bench.worker import RUN_KINDS, Unavailable
from missrec_recbole.command import watched
from missrec_recbole.config import merged_props
from missrec_recbole.files import atomic_write
from missrec_recbole.trainer.checkpoint import OLDER_DEFAULTS


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
    runs_from: Results | None = None  # another out_dir whose finished runs (same key) may be reused
    launched: int = 0
    progress: object = print  # receives each epoch line of the running training's log
    model_overrides: dict = field(default_factory=dict)  # kind -> the --KIND.key=value overrides

    def settings(self, kind: str, stage: str) -> dict:
        """The options a ``kind`` run at ``stage`` gets on top of props/ (:func:`override_layers` merged); the
        pre-training leaves out :data:`FINETUNE_ONLY_OPTIONS`, so that they do not change its hash either."""
        layers = override_layers(kind, stage, self.overrides, self.model_overrides, self.pretrain_overrides,
                                 self.args.finetune_overrides)
        return {key: value for _, values in layers for key, value in values.items()
                if stage != "pretrain" or key not in FINETUNE_ONLY_OPTIONS}

    def dataset_of(self, table: str) -> tuple[str, Path]:
        return self.tables_data[table]


# What fine-tuning freezes: a pre-training trains every weight, so a --KIND.key or --key naming these reaches the
# fine-tuning only (and --pretrain.key is refused by cli.check_overrides).
FINETUNE_ONLY_OPTIONS = ("adapters_only", "unfreeze")


def override_layers(kind: str, stage: str, general: dict, models: dict, pretrain: dict, finetune: dict) -> list:
    """The option layers of a ``kind`` run at ``stage`` as (where given, options), later wins: the bench's SASRec
    settings (SASRec runs) < every run's --key < the model's --KIND.key < the stage's --STAGE.key. A model's own
    options leave the other models' runs (and their hashes) as they are."""
    return [("the bench's SASRec settings", SASREC_SETTINGS if kind == "sasrec" else {}),
            ("the command line", general), (f"--{kind}.KEY", models.get(kind, {})),
            (f"--{stage}.KEY", pretrain if stage == "pretrain" else finetune)]


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
# Options added after benchmark runs were recorded -> the options that only matter away from the value that behaves as
# before (checkpoint.OLDER_DEFAULTS). At that value none of them identifies a run, so finished runs stay valid.
LATER_OPTIONS = {"item_adapter": ("n_exps", "gating_noise"), "unfreeze": (), "mixed_precision": (),
                 "shared_item_tokens": ()}
PROPS_MODEL = {"sasrec": "MISSRec", "unisrec": "UniSRec", "missrec": "MISSRec"}  # SASRec runs on MISSRec's props


def effective_props(kind: str, stage: str) -> dict:
    """The defaults a run of ``kind`` reads from props/ (merged, later files win): what the run hash covers, so
    that rearranging or commenting the props files does not change it, while changing a value does. Options that
    change speed or memory only (:data:`SPEED_ONLY_OPTIONS`) and options added later at their old behaviour
    (:data:`LATER_OPTIONS`) do not identify a run."""
    merged = merged_props(PROPS_MODEL[kind], stage)
    ignored = set(SPEED_ONLY_OPTIONS)
    for option, only_otherwise in LATER_OPTIONS.items():
        if option in merged and merged[option] == OLDER_DEFAULTS[option]:
            ignored |= {option, *only_otherwise}
    return {key: value for key, value in merged.items() if key not in ignored}


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


def worker_threads(args) -> int:
    """Threads each worker will use: ``--threads``, else what torch takes here (``OMP_NUM_THREADS`` or every core)."""
    return args.threads or torch.get_num_threads()


def resume_file_of(suite: Suite, label: str) -> Path:
    """Where the run ``label`` writes its resume file (chosen here, so a later invocation finds it by the same name)."""
    return suite.args.work_dir / "saved" / f"{file_safe(label)}-resume.pth"


def launch(suite: Suite, spec: dict, label: str) -> tuple[dict, dict | None]:
    """Run ``spec`` in a fresh ``python -m missrec_recbole.bench _worker`` process: (record, per-case ranks). The run
    writes its resume file to :func:`resume_file_of`; if an earlier attempt left one, the run continues from it."""
    suite.launched += 1
    log = suite.log_dir / f"{file_safe(label)}.log"
    resume_file = resume_file_of(suite, label)
    resume = str(resume_file) if resume_file.is_file() else legacy_resume_file(log)
    spec = {**spec, "resume_file": str(resume_file)}
    if resume:  # an earlier invocation was stopped during this run: continue it (its log goes on)
        spec["resume"] = resume
        say(f"{label}: continuing the interrupted run from {resume}")
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        spec_file, out_file = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_file.write_text(json.dumps(spec), encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_ROOT),
                                                                           os.environ.get("PYTHONPATH")]))}
        if suite.args.threads:  # read by torch (and so FAISS, faiss_threads: null) when the worker starts
            env["OMP_NUM_THREADS"] = str(suite.args.threads)
        with open(log, "a" if resume else "w", encoding="utf-8") as handle:
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
    record.update(log=str(log), resume_file=str(resume_file))
    if resume:
        record["resumed_from"] = resume
    return record, cases


# How the trainer named its resume file in the log before the bench chose the file (code up to aecb238): the file
# a fresh run wrote, then (if resumed) the file it continued. Only read for runs interrupted under that code.
LEGACY_RESUME_LINE = re.compile(r"(?:Resume checkpoint \(rewritten every epoch\): |Resumed from )(\S+?\.pth)")


def legacy_resume_file(log: Path) -> str | None:
    """The resume file an attempt of this run interrupted under earlier code left (named in its log), if it is still
    on disk. A finished run's resume file is deleted with its model (:func:`_remove_model`), so only interrupted runs
    continue."""
    if not log.is_file():
        return None
    found = LEGACY_RESUME_LINE.findall(log.read_text(encoding="utf-8", errors="replace"))
    return found[-1] if found and Path(found[-1]).is_file() else None


def _check(kind: str) -> None:
    if RUN_KINDS[kind].check is not None:
        RUN_KINDS[kind].check()


def pretrain_key(suite: Suite, kind: str) -> str:
    """Pre-training is done once per model kind, settings and data, with the first seed."""
    inputs = _hash_inputs(suite, kind, *suite.pretrain_data, suite.settings(kind, "pretrain"), "pretrain",
                          seed=suite.args.seed_list[0])
    return f"pretrain|{kind}|{config_hash(inputs)}"


def ensure_pretrained(suite: Suite, kind: str) -> str:
    """Checkpoint of ``kind`` pre-trained on the pre-training data (trained once, then reused)."""
    key = pretrain_key(suite, kind)
    with suite.results.claim(key, wait=True):  # another invocation pre-training it: wait for its checkpoint
        done = _recorded_pretraining(suite.results, key)
        if not done:
            done = _recorded_pretraining(suite.pretrained_from, key)
            if done:
                suite.results.put("pretraining", {**done, "reused_from": str(suite.pretrained_from.path)})
        checkpoint = done["checkpoint"] if done else _pretrain(suite, kind, key)
        if suite.args.keep_pretrained:
            checkpoint = _keep_pretrained(suite.results, key, checkpoint)
        return checkpoint


def kept_checkpoint(results: Results, key: str) -> Path:
    """Where ``--keep_pretrained`` keeps the checkpoint of pre-training ``key``: beside results.json, so that the
    results folder alone (a copy of it on another machine, say) holds what its pre-trained rows fine-tune from."""
    return results.out_dir / "pretrained" / f"{file_safe(key.replace('|', '-'))}.pth"


def _keep_pretrained(results: Results, key: str, checkpoint: str) -> str:
    kept = kept_checkpoint(results, key)
    if not kept.is_file():
        with open(checkpoint, "rb") as source:
            atomic_write(kept, lambda handle: shutil.copyfileobj(source, handle))
    return str(kept)


def _recorded_pretraining(results: Results | None, key: str) -> dict | None:
    """The pre-training ``key`` recorded in ``results`` if its checkpoint is still on disk, where it was written
    or where ``--keep_pretrained`` keeps it (``checkpoint`` is the file found)."""
    done = results.find("pretraining", key) if results else None
    if not done:
        return None
    found = next((path for path in (Path(done["checkpoint"]), kept_checkpoint(results, key)) if path.is_file()), None)
    return found and {**done, "checkpoint": str(found)}


def _pretrain(suite: Suite, kind: str, key: str) -> str:
    dataset, data_path = suite.pretrain_data
    settings = suite.settings(kind, "pretrain")
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
    settings = {**suite.settings(row.kind, "finetune"), **row.own_settings}
    pre_key = pretrain_key(suite, row.kind) if row.pretrained else None
    digest = config_hash(_hash_inputs(suite, row.kind, dataset, data_path, settings, "finetune", mode=row.mode,
                                      pretrained=pre_key))
    key = f"{row.table}|{row.name}|{seed}|{digest}"
    if suite.results.find("runs", key):
        return "skipped"
    if _reuse_run(suite, key):
        return "reused"
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


def _reuse_run(suite: Suite, key: str) -> bool:
    """Copy the finished run ``key`` (same row, seed, data and settings) of ``--runs_from`` into this out_dir, with
    its per-case ranks; False if that out_dir does not have it."""
    earlier = suite.runs_from.find("runs", key) if suite.runs_from else None
    if not earlier:
        return False
    suite.results.put("runs", {**earlier, "reused_from": str(suite.runs_from.path)}, suite.runs_from.cases(key))
    return True


def _train_row(suite: Suite, row: Row, base: dict, settings: dict, data_path: Path) -> str:
    seed, dataset = base["seed"], base["dataset"]
    label = f"{row.table}-{row.name}-{seed}-{base['config_hash']}"
    try:
        _check(row.kind)
        checkpoint = ensure_pretrained(suite, row.kind) if row.pretrained else None
        spec = _spec(suite, "finetune", row.kind, dataset, data_path, seed, settings, row.mode, checkpoint)
        record, cases = launch(suite, spec, label)
    except Unavailable as error:
        suite.results.put("runs", {**base, "status": "unavailable", "message": str(error)})
        return "unavailable"
    except RuntimeError as error:
        # the next invocation continues from the resume file the failed attempt left (if it got that far)
        suite.results.put("runs", {**base, "status": "failed", "message": str(error),
                                   "resume_file": str(resume_file_of(suite, label))})
        say(f"FAILED {row.table} / {row.name} / seed {seed}: {error}")
        return "failed"
    _remove_model(record, suite.args.keep_models)
    suite.results.put("runs", {**base, "status": "ok", "pretrained_checkpoint": checkpoint, **record}, cases)
    return "ok"


def _remove_model(record: dict, keep: bool) -> None:
    """Delete a finished run's model and resume files (the one it wrote, and one it continued under earlier code)."""
    if keep:
        return
    for path in (record.get("model_file"), record.get("resume_file"), record.get("resumed_from")):
        if path and Path(path).is_file():
            Path(path).unlink()
    record.update(model_file=None, resume_file=None)


def say(message: str) -> None:
    tqdm.write(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr)


def run_suite(suite: Suite, rows) -> dict:
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
        elif status == "reused":
            say(f"{row.table} / {row.name} / seed {seed}: copied from {suite.runs_from.path}")
        elif status == "busy":
            say(f"{row.table} / {row.name} / seed {seed}: another invocation is running it; not started here")
        elif status == "unavailable":
            say(f"{row.table} / {row.name} / seed {seed}: {suite.results.data['runs'][-1]['message']}")
    bar.close()
    return counts
