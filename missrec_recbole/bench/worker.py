"""Child process: one training run (SASRec, UniSRec or MISSRec) recorded per epoch and per test case."""

from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.model.sequential_recommender import SASRec
from recbole.utils import init_logger, init_seed

import missrec_recbole  # noqa: F401  (RecBole compatibility fixes)
from missrec_recbole import quick_start
from missrec_recbole.baselines import run_unisrec as unisrec
from missrec_recbole.bench.settings import METRICS, SASREC_SETTINGS
from missrec_recbole.config import props_files, without_argv
from missrec_recbole.evaluation import metrics_from_ranks, pessimistic_ranks
from missrec_recbole.files import write_json
from missrec_recbole.trainer import MISSRecTrainer


class Unavailable(RuntimeError):
    """A run kind that cannot run here (e.g. a baseline that is not implemented yet)."""


class RecordingTrainer:
    """Trainer mixin: per-epoch training seconds and per-test-case pessimistic ranks.

    Put it first: ``recording(MISSRecTrainer)``. It sees the scores after the trainer's own tie rule.
    """

    last = None  # the latest instance: the one trainer of a worker process

    def __init__(self, config, model):
        super().__init__(config, model)
        self.train_epoch_seconds, self.train_epoch_cpu_seconds = [], []
        self.cases, self._batches = None, None
        RecordingTrainer.last = self

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        start, cpu = time.perf_counter(), time.process_time()
        loss = super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)
        self.train_epoch_seconds.append(time.perf_counter() - start)
        self.train_epoch_cpu_seconds.append(time.process_time() - cpu)
        return loss

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


def recording(trainer_class):
    return type(f"Recording{trainer_class.__name__}", (RecordingTrainer, trainer_class), {})


def _finetune_result(trainer, best_valid, test, seconds, model) -> dict:
    return {"valid": dict(best_valid), "test": dict(test), "epochs": len(trainer.train_loss_dict),
            "best_epoch": trainer.best_valid_epoch, "seconds_per_epoch": seconds / max(trainer.epochs_run_here, 1),
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "model_file": trainer.saved_model_file}


def sasrec_config(dataset: str, config_files=(), config_dict=None):
    """RecBole Config for its SASRec with MISSRec's data, training and evaluation settings
    (props/common.yaml + props/MISSRec.yaml + props/finetune.yaml) and :data:`SASREC_SETTINGS`; ``config_dict``
    wins."""
    files = [str(path) for path in props_files("MISSRec", "finetune")] + list(config_files)
    with without_argv():
        return Config(model=SASRec, dataset=dataset, config_file_list=files,
                      config_dict={**SASREC_SETTINGS, **(config_dict or {})})


def run_sasrec(spec) -> tuple[dict, RecordingTrainer]:
    """RecBole's SASRec on the same files, settings and tie rule as MISSRec."""
    config = sasrec_config(spec["dataset"], spec["config_files"], spec["config_dict"])
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    train_data, valid_data, test_data = data_preparation(config, create_dataset(config))
    init_seed(config["seed"], config["reproducibility"])
    model = SASRec(config, train_data._dataset).to(config["device"])
    trainer = recording(MISSRecTrainer)(config, model)  # for its resume files; SASRec has no interests to refresh
    if spec.get("resume_file"):
        trainer.resume_file = spec["resume_file"]
    if spec.get("resume"):
        trainer.resume_checkpoint(spec["resume"], train_data)
    start = time.time()
    _, best_valid = trainer.fit(train_data, valid_data, saved=True, show_progress=spec["show_progress"])
    seconds = time.time() - start
    test = trainer.evaluate(test_data, load_best_model=True, show_progress=spec["show_progress"])
    return _finetune_result(trainer, best_valid, test, seconds, model), trainer


def _quick_start_kwargs(spec) -> dict:
    return {"config_files": spec["config_files"], "config_dict": spec["config_dict"],
            "show_progress": spec["show_progress"], "resume": spec.get("resume"),
            "resume_file": spec.get("resume_file")}


def run_missrec(spec):
    result = quick_start.finetune(spec["dataset"], spec["pretrained"], trainer_class=recording(MISSRecTrainer),
                                  **_quick_start_kwargs(spec))
    return result, RecordingTrainer.last


def pretrain_missrec(spec) -> str:
    return quick_start.pretrain(spec["dataset"].split(","), **_quick_start_kwargs(spec))[-1]


def _unisrec_config(spec) -> dict:
    """run_unisrec takes no config files: their keys go into its config dict (which still wins)."""
    merged = {}
    for path in spec["config_files"]:
        with open(path, encoding="utf-8") as handle:
            merged.update(yaml.safe_load(handle) or {})
    return {**merged, **spec["config_dict"]}


def run_unisrec(spec):
    result = unisrec(spec["dataset"], stage="finetune", mode=spec["mode"], pretrained=spec["pretrained"],
                     config_dict=_unisrec_config(spec), trainer_class=recording(MISSRecTrainer),
                     resume=spec.get("resume"), resume_file=spec.get("resume_file"))
    return result, RecordingTrainer.last


def pretrain_unisrec(spec) -> str:
    return unisrec(spec["dataset"].split(","), stage="pretrain", mode="inductive",
                   config_dict=_unisrec_config(spec), resume=spec.get("resume"),
                   resume_file=spec.get("resume_file"))["checkpoint"]


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
        record["train_seconds_per_epoch"] = float(np.mean(recorder.train_epoch_seconds))
        record["train_cpu_seconds_per_epoch"] = float(np.mean(recorder.train_epoch_cpu_seconds))
        if recorder.cases is not None:
            np.savez_compressed(out.with_suffix(".npz"), **recorder.cases)
            mine = metrics_from_ranks(recorder.cases["rank"])
            record["ranks_vs_metrics"] = max(abs(mine[m] - float(record["test"][m])) for m in METRICS)
    return record


def worker(spec_file: str, out_file: str) -> None:
    """Child process entry: run one spec, write its record (and ranks) next to ``out_file``."""
    spec = json.loads(Path(spec_file).read_text(encoding="utf-8"))
    out = Path(out_file)
    start, cpu_start = time.time(), time.process_time()
    if spec["action"] == "pretrain":
        record = {"checkpoint": RUN_KINDS[spec["kind"]].pretrain(spec)}
    else:
        record = _worker_finetune(spec, out)
    record.update(wall_seconds=time.time() - start, cpu_seconds=time.process_time() - cpu_start,
                  peak_rss_bytes=peak_rss_bytes(), threads=torch.get_num_threads())
    write_json(out, record)  # atomic: the parent never reads half a record
