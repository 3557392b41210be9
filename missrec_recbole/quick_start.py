"""The MISSRec pipeline on RecBole's building blocks: config -> dataset -> model -> trainer.

RecBole's ``run_recbole`` looks models up by name and cannot take a plugin class, so these
functions follow its manual route (``Config(model=MISSRec)`` -> ``MISSRecDataset`` ->
``data_preparation`` -> ``MISSRec`` -> ``MISSRecTrainer``). Use them from Python::

    from missrec_recbole.quick_start import finetune, pretrain
    ckpts = pretrain(["Demo-A", "Demo-B"], config_dict={"epochs": 2})
    result = finetune("Demo-C", pretrained=ckpts[-1])
"""

from __future__ import annotations

import contextlib
import sys
import time
from logging import getLogger
from pathlib import Path

from recbole.config import Config
from recbole.data import data_preparation
from recbole.utils import init_logger, init_seed

from missrec_recbole.compat import config_value
from missrec_recbole.config_schema import check_options, read_config_file, read_value
from missrec_recbole.data.dataset import MISSRecDataset, validate_dataset
from missrec_recbole.data.demo import DEMO_DOMAINS, ensure_demo_dataset
from missrec_recbole.data.merge import merge_datasets
from missrec_recbole.model import MISSRec
from missrec_recbole.trainer import (MISSRecTrainer, check_architecture, distributed, load_pretrained, read_checkpoint,
                                     read_resume_state, run_identity)

ROOT = Path(__file__).resolve().parents[1]
PROPS = ROOT / "props"
DEFAULT_DATA_PATH = ROOT / "dataset"


def parse_overrides(items) -> dict:
    """``--key=value`` command-line overrides as a config dict (values read as YAML, ``1e-3`` a float)."""
    overrides = {}
    for item in items:
        if not item.startswith("--") or "=" not in item:
            raise ValueError(f"unrecognised argument {item!r}: options are --key=value")
        key, value = item[2:].split("=", 1)
        overrides[key] = read_value(value)
    return overrides


@contextlib.contextmanager
def _without_argv():
    """RecBole's Config also parses sys.argv; we pass overrides explicitly instead."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


def props_files(model: str, stage: str, dataset: str | None = None) -> list[Path]:
    """The props/ defaults a run of ``model`` at ``stage`` reads, lowest priority first."""
    files = [PROPS / f"{model}.yaml", PROPS / f"{stage}.yaml"]
    return files + [p for p in [PROPS / f"{dataset}.yaml"] if dataset and p.is_file()]


def build_config(dataset: str, stage: str = "finetune", config_files=None, config_dict=None,
                 model_class=MISSRec) -> Config:
    """RecBole Config for ``model_class`` (default MISSRec): props/<Model>.yaml < props/<stage>.yaml
    < props/<dataset>.yaml < ``config_files`` < ``config_dict``. ``data_path`` defaults to the repo's ``dataset/``."""
    if not PROPS.is_dir():
        raise FileNotFoundError(f"{PROPS}: props folder not found; install the package with `pip install -e .`")
    files = props_files(model_class.__name__, stage, dataset)
    files += [Path(f) for f in config_files or []]
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: config file not found")
    config_dict = {key: config_value(value) for key, value in (config_dict or {}).items()}  # as RecBole reads them
    layers = [(str(path), read_config_file(path)) for path in files] + [("", config_dict)]
    check_options(layers)  # before RecBole reads anything: one message naming the option
    if not any("data_path" in values for path, values in layers[2:]):
        config_dict["data_path"] = str(DEFAULT_DATA_PATH)
    with _without_argv():
        config = Config(model=model_class, dataset=dataset, config_file_list=[str(f) for f in files],
                        config_dict=config_dict)
    distributed.init_from_env(config["use_gpu"])  # under torchrun: join the process group
    distributed.configure(config)
    return config


def _data_root(config) -> Path:
    return Path(config["data_path"]).parent


def check_dataset(config):
    """Generate demo domains on first use, then validate the dataset's files (before any log is written); this
    also fills in the feature widths and modalities the config leaves to the files."""
    if config["dataset"] in DEMO_DOMAINS:
        distributed.main_first(lambda: ensure_demo_dataset(_data_root(config), [config["dataset"]]))
    return validate_dataset(config)


def prepare_data(config, files=None):
    """Load and split the dataset; ``files``: its already validated :func:`check_dataset` result."""
    dataset = MISSRecDataset(config, files or check_dataset(config))
    getLogger().info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    return dataset, train_data, valid_data, test_data


def _check_inputs(config, resume):
    """Everything a run reads, checked before it writes anything: dataset files, then the resume file."""
    files = check_dataset(config)
    state = read_resume_state(resume, run_identity(config, files)) if resume else None
    return files, state


def _setup(config):
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    getLogger().info(config)


def _merge(datasets, data_root, name, merged_root, config) -> None:
    demo = [d for d in datasets if d in DEMO_DOMAINS]
    if demo:
        ensure_demo_dataset(data_root, demo)
    merged_root.mkdir(parents=True, exist_ok=True)
    merge_datasets(datasets, data_root, name, merged_root, config)


def pretrain(datasets, config_files=None, config_dict=None, show_progress=False, resume=None,
             model_class=MISSRec, trainer_class=MISSRecTrainer) -> list[str]:
    """Pre-train on one or more datasets (merged into one, domains kept apart); returns checkpoint paths.

    ``resume``: a ``*-resume.pth`` file of an interrupted run with the same arguments.
    ``model_class``/``trainer_class``: another model on the same pipeline (e.g. the UniSRec baseline)."""
    datasets = list(datasets)
    config_dict = dict(config_dict or {})
    name = datasets[0]
    if len(datasets) > 1:
        base = build_config(name, "pretrain", config_files, config_dict, model_class)
        data_root = _data_root(base)
        name = "+".join(datasets)
        merged_root = Path(base["checkpoint_dir"]) / "datasets"
        distributed.main_first(lambda: _merge(datasets, data_root, name, merged_root, base))
        config_dict["data_path"] = str(merged_root)
    config = build_config(name, "pretrain", config_files, config_dict, model_class)
    files, resume_state = _check_inputs(config, resume)
    _setup(config)
    _, train_data, _, _ = prepare_data(config, files)
    init_seed(config["seed"], config["reproducibility"])
    model = model_class(config, train_data._dataset).to(config["device"])
    getLogger().info(model)
    trainer = trainer_class(config, model)
    if resume:
        trainer.resume(resume, train_data, resume_state)
    return trainer.pretrain(train_data, show_progress=show_progress)


def finetune(dataset, pretrained=None, config_files=None, config_dict=None, show_progress=False,
             freeze=True, resume=None, model_class=MISSRec, trainer_class=MISSRecTrainer) -> dict:
    """Fine-tune (or train from scratch) on ``dataset``; returns valid/test metrics and costs.

    With ``pretrained``, the checkpoint's transferable weights are loaded and, if ``freeze``, only
    adapters, beta, input LayerNorm and (transductive) ID embedding are trained. ``resume``: a
    ``*-resume.pth`` file of an interrupted run with the same arguments. ``best_epoch`` is 0-based.
    """
    config = build_config(dataset, "finetune", config_files, config_dict, model_class)
    checkpoint = read_checkpoint(pretrained) if pretrained else None
    files, resume_state = _check_inputs(config, resume)  # also reads the feature widths from the files
    if checkpoint:  # fail before loading data
        check_architecture(pretrained, checkpoint["config"], config)
    _setup(config)
    _, train_data, valid_data, test_data = prepare_data(config, files)
    init_seed(config["seed"], config["reproducibility"])
    model = model_class(config, train_data._dataset).to(config["device"])
    if checkpoint:
        load_pretrained(model, config, pretrained, checkpoint)
        getLogger().info(f"Loaded pre-trained weights from {pretrained}")
    adapters_only = config["adapters_only"]
    if (checkpoint is not None and freeze) if adapters_only is None else adapters_only:
        model.freeze_for_finetune()
    getLogger().info(model)
    trainer = trainer_class(config, model)
    if resume:
        trainer.resume(resume, train_data, resume_state)
    start = time.time()
    best_valid_score, best_valid = trainer.fit(train_data, valid_data, saved=True, show_progress=show_progress)
    epochs_run = len(trainer.train_loss_dict)
    epochs_here = epochs_run - trainer.epochs_resumed  # seconds_per_epoch: this process's time and epochs
    seconds = time.time() - start
    test = trainer.evaluate(test_data, load_best_model=True, show_progress=show_progress)
    return {
        "dataset": dataset,
        "mode": config["mode"],
        "pretrained": str(pretrained) if pretrained else None,
        "best_valid_score": float(best_valid_score),
        "valid": dict(best_valid),
        "test": dict(test),
        "epochs": epochs_run,
        "best_epoch": max(trainer.train_loss_dict, default=-1) - trainer.cur_step * config["eval_step"],
        "seconds_per_epoch": seconds / max(epochs_here, 1),
        "interest_refresh_seconds": sum(trainer.interest_refresh_seconds) / max(len(trainer.interest_refresh_seconds), 1),
        "trainable_parameters": model.trainable_parameters(),
        "model_file": trainer.saved_model_file,
        "resume_file": trainer.resume_file,
    }
