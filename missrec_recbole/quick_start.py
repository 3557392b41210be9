"""The MISSRec pipeline on RecBole's building blocks: config -> dataset -> model -> trainer.

RecBole's ``run_recbole`` looks models up by name and cannot take a plugin class, so these
functions follow its manual route (``Config(model=MISSRec)`` -> ``MISSRecDataset`` ->
``data_preparation`` -> ``MISSRec`` -> ``MISSRecTrainer``). Use them from Python::

    from missrec_recbole.quick_start import finetune, pretrain
    ckpts = pretrain(["Demo-A", "Demo-B"], config_dict={"epochs": 2})
    result = finetune("Demo-C", pretrained=ckpts[-1])
"""

from __future__ import annotations

import time
from logging import getLogger
from pathlib import Path

from recbole.data import data_preparation
from recbole.utils import init_logger, init_seed

from missrec_recbole import config as configuration
from missrec_recbole.config import DEFAULT_DATA_PATH, PROPS, parse_overrides, props_files  # noqa: F401 (re-exported)
from missrec_recbole.config_schema import OPTIONS, ConfigError
from missrec_recbole.data.dataset import MISSRecDataset, validate_dataset
from missrec_recbole.model import MISSRec, UniSRec
from missrec_recbole.tools.demo import DEMO_DOMAINS, ensure_demo_dataset
from missrec_recbole.tools.merge import merge_datasets
from missrec_recbole.trainer import MISSRecTrainer, distributed
from missrec_recbole.trainer.checkpoint import (RESUME_HINT, TRAINED_HINT, Checkpoint, CheckpointError,
                                                CheckpointMismatchError, run_identity, saved_data_path)

def build_config(dataset: str, stage: str = "finetune", config_files=None, config_dict=None,
                 model_class=MISSRec):
    """:func:`missrec_recbole.config.build_config` with MISSRec as the default model."""
    return configuration.build_config(dataset, stage, config_files, config_dict, model_class=model_class)


def run_config(dataset: str, stage: str, config_files=None, config_dict=None, model_class=MISSRec):
    """The Config of a training run; under torchrun this process joins the group first (RecBole's
    ``Config`` has no CPU route for that, see ``trainer.distributed``)."""
    config = build_config(dataset, stage, config_files, config_dict, model_class)
    distributed.join(config)
    return config


def _data_root(config) -> Path:
    return Path(config["data_path"]).parent


def check_dataset(config):
    """Generate demo domains on first use, then validate the dataset's files (before any log is written); this
    also fills in the feature widths and modalities the config leaves to the files."""
    if config["dataset"] in DEMO_DOMAINS:
        distributed.main_first(lambda: ensure_demo_dataset(_data_root(config), [config["dataset"]]))
    return validate_dataset(config)


def check_topk(config, n_items: int) -> None:
    """Full ranking cannot return more items than the catalogue holds (RecBole's evaluation would fail after the
    first training epoch with torch's "selected index k out of range")."""
    topk = config["topk"] if isinstance(config["topk"], list) else [config["topk"]]
    if max(topk) > n_items:
        raise ConfigError(f"option 'topk'={config['topk']}: dataset {config['dataset']} has only {n_items} items; "
                          f"use cut-offs of at most {n_items} (e.g. --topk=[{min(10, n_items)}]) and a "
                          f"valid_metric with one of them.")


def prepare_data(config, files=None):
    """Load and split the dataset; ``files``: its already validated :func:`check_dataset` result."""
    dataset = MISSRecDataset(config, files or check_dataset(config))
    getLogger().info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    return dataset, train_data, valid_data, test_data


def check_inputs(config, resume: Checkpoint | None = None, start: Checkpoint | None = None,
                 transferable: bool = True):
    """Everything a run reads, checked before it writes anything: the dataset's files (which also give the feature
    widths), then the checkpoints it starts from (``start``: weights to load, only the transferable ones or, with
    ``transferable=False``, all of them; ``resume``: a run to continue). Returns the dataset's files."""
    files = check_dataset(config)
    if start is not None:
        start.check_architecture(config, all_weights=not transferable)
    if resume is not None:
        resume.check_run(run_identity(config, files))
    return files


def build_model(config, files, checkpoint: Checkpoint | None = None, transferable: bool = False,
                model_class=MISSRec, split: bool = True):
    """Dataset -> model -> weights: the one route from checked files (:func:`check_inputs`) and a checkpoint to a
    model, used by fine-tuning, resume, :func:`load_data_and_model` and the predictor.

    ``transferable``: load only the weights that do not depend on the items (a pre-trained start); otherwise every
    weight and the interest map. Returns ``(model, dataset, train_data, valid_data, test_data)``; with
    ``split=False`` the dataset is not split into data loaders (the three are None)."""
    if split:
        dataset, train_data, valid_data, test_data = prepare_data(config, files)
        source = train_data._dataset
    else:
        dataset, train_data, valid_data, test_data = MISSRecDataset(config, files), None, None, None
        source = dataset
    init_seed(config["seed"], config["reproducibility"])
    model = model_class(config, source).to(config["device"])
    if checkpoint is not None:
        if transferable:
            checkpoint.load_transferable(model)
        else:
            checkpoint.load_all(model, config["dataset"])
        getLogger().info(f"Loaded {'pre-trained ' if transferable else ''}weights from {checkpoint.path}")
    return model, dataset, train_data, valid_data, test_data


def _checked_unfreeze(config, model_class, frozen: bool) -> tuple[str, ...]:
    """The ``unfreeze`` option, which only means something when the rest of the network is frozen."""
    unfreeze = model_class.check_unfreeze(config["unfreeze"])
    if unfreeze and not frozen:
        raise ConfigError(f"unfreeze: {list(unfreeze)} adds modules to adapters-only fine-tuning, but this run trains "
                          f"every weight (no -p checkpoint, or adapters_only: false). Leave unfreeze out, or fine-tune "
                          f"from a pre-trained checkpoint with adapters_only left at null or true.")
    return unfreeze


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


def _trainer(trainer_class, config, model, train_data, resume: Checkpoint | None, resume_file):
    """The run's trainer, writing its resume file to ``resume_file`` (if given) and continuing ``resume`` (if given)."""
    trainer = trainer_class(config, model)
    if resume_file:
        trainer.resume_file = resume_file
    if resume:
        trainer.resume_checkpoint(resume, train_data)
    return trainer


def pretrain(datasets, config_files=None, config_dict=None, show_progress=False, resume=None,
             model_class=MISSRec, trainer_class=MISSRecTrainer, resume_file=None) -> list[str]:
    """Pre-train on one or more datasets (merged into one, domains kept apart); returns checkpoint paths.

    ``resume``: a ``*-resume.pth`` file of an interrupted run with the same arguments; ``resume_file``: where this
    run writes its own (default: :attr:`MISSRecTrainer.resume_file`).
    ``model_class``/``trainer_class``: another model on the same pipeline (e.g. the UniSRec baseline)."""
    datasets = list(datasets)
    config_dict = dict(config_dict or {})
    name = datasets[0]
    if len(datasets) > 1:
        base = run_config(name, "pretrain", config_files, config_dict, model_class)
        data_root = _data_root(base)
        name = "+".join(datasets)
        merged_root = Path(base["checkpoint_dir"]) / "datasets"
        distributed.main_first(lambda: _merge(datasets, data_root, name, merged_root, base))
        config_dict["data_path"] = str(merged_root)
    config = run_config(name, "pretrain", config_files, config_dict, model_class)
    resume = Checkpoint.read(resume, RESUME_HINT) if resume else None
    files = check_inputs(config, resume)
    _setup(config)
    model, _, train_data, _, _ = build_model(config, files, model_class=model_class)
    getLogger().info(model)
    trainer = _trainer(trainer_class, config, model, train_data, resume, resume_file)
    return trainer.pretrain(train_data, show_progress=show_progress)


def finetune(dataset, pretrained=None, config_files=None, config_dict=None, show_progress=False,
             freeze=True, resume=None, model_class=MISSRec, trainer_class=MISSRecTrainer, resume_file=None) -> dict:
    """Fine-tune (or train from scratch) on ``dataset``; returns valid/test metrics and costs.

    With ``pretrained``, the run takes the options that define the pre-trained network from the checkpoint
    (:data:`~missrec_recbole.trainer.checkpoint.MODEL_KEYS`, unless ``config_files``/``config_dict`` set them),
    its transferable weights are loaded and, if ``freeze``, only
    adapters, beta, input LayerNorm and (transductive) ID embedding are trained. ``resume``: a
    ``*-resume.pth`` file of an interrupted run with the same arguments; ``resume_file``: where this run writes its
    own (returned; default: :attr:`MISSRecTrainer.resume_file`). ``best_epoch`` is 0-based.
    """
    checkpoint = Checkpoint.read(pretrained) if pretrained else None
    inherited = checkpoint.model_options(configuration.given_options(config_files, config_dict)) if checkpoint else {}
    config = run_config(dataset, "finetune", config_files, {**inherited, **(config_dict or {})}, model_class)
    resume = Checkpoint.read(resume, RESUME_HINT) if resume else None
    files = check_inputs(config, resume, checkpoint)
    check_topk(config, files.n_items)
    frozen = (checkpoint is not None and freeze) if config["adapters_only"] is None else config["adapters_only"]
    unfreeze = _checked_unfreeze(config, model_class, frozen)
    _setup(config)
    if inherited:
        getLogger().info("from the pre-trained checkpoint: " + ", ".join(f"{k}={v}" for k, v in inherited.items()))
    model, _, train_data, valid_data, test_data = build_model(config, files, checkpoint, transferable=True,
                                                              model_class=model_class)
    if frozen:
        getLogger().info(f"trainable parameters: {model.freeze_for_finetune(unfreeze)}")
    getLogger().info(model)
    trainer = _trainer(trainer_class, config, model, train_data, resume, resume_file)
    start = time.time()
    best_valid_score, best_valid = trainer.fit(train_data, valid_data, saved=True, show_progress=show_progress)
    seconds = time.time() - start
    test = trainer.evaluate(test_data, load_best_model=True, show_progress=show_progress)
    return {
        "dataset": dataset,
        "mode": config["mode"],
        "pretrained": str(pretrained) if pretrained else None,
        "best_valid_score": float(best_valid_score),
        "valid": dict(best_valid),
        "test": dict(test),
        "epochs": len(trainer.train_loss_dict),
        "best_epoch": trainer.best_valid_epoch,
        "seconds_per_epoch": seconds / max(trainer.epochs_run_here, 1),  # this process's time and epochs
        "interest_refresh_seconds": sum(trainer.interest_refresh_seconds) / max(len(trainer.interest_refresh_seconds), 1),
        "trainable_parameters": model.trainable_parameters(),
        "model_file": trainer.saved_model_file,
        "resume_file": trainer.resume_file,
    }


MODELS = {"MISSRec": MISSRec, "UniSRec": UniSRec}
# Options a run continuing from a checkpoint does not take from it: RecBole rewrites the first ones into another
# form while building a Config (the props give them again); the feature widths are read from the dataset's files
# and then checked against the checkpoint's; the device is this machine's (a checkpoint written on a GPU loads on a
# CPU-only machine and the reverse).
NOT_INHERITED = {"eval_args", "train_neg_sample_args", "valid_neg_sample_args", "test_neg_sample_args",
                 "text_dim", "image_dim", "stage", "device"}


def checkpoint_model(checkpoint: Checkpoint):
    """The model class a checkpoint was written by."""
    saved = checkpoint.config
    if saved.get("model") not in MODELS:
        raise CheckpointError(f"{checkpoint.path}: names model {saved.get('model')!r}; expected one of "
                              f"{sorted(MODELS)}. {TRAINED_HINT}")
    return MODELS[saved["model"]]


def checkpoint_config(checkpoint: Checkpoint, dataset: str | None = None, stage: str | None = None,
                      config_dict=None):
    """The Config of a run that continues from ``checkpoint``: its options (except :data:`NOT_INHERITED`) under
    ``config_dict``, on ``dataset`` (default: the checkpoint's, in the checkpoint's data folder), at ``stage``
    (default: the checkpoint's)."""
    saved = checkpoint.config
    dataset = dataset or saved.get("dataset")
    if not dataset:
        raise CheckpointMismatchError(f"{checkpoint.path}: checkpoint names no dataset; pass one.")
    options = {key: value for key, value in saved.items()
               if key in OPTIONS and key not in NOT_INHERITED and value is not None}
    options.pop("data_path", None)
    if saved.get("data_path") and dataset == saved.get("dataset"):
        options["data_path"] = saved_data_path(saved)
    return build_config(dataset, stage or saved.get("stage") or "finetune",
                        config_dict={**options, **(config_dict or {})}, model_class=checkpoint_model(checkpoint))


def load_data_and_model(model_file, config_dict=None):
    """RecBole's ``load_data_and_model`` for this package's checkpoints: checkpoint -> config -> dataset -> model.

    The config is rebuilt from the checkpoint's options (``config_dict`` overrides them, e.g. ``data_path``),
    the dataset is loaded and validated as in training, and the model gets the saved weights and interest map.
    Returns ``(config, model, dataset, train_data, valid_data, test_data)`` like RecBole's; RecBole's own
    ``recbole.quick_start.load_data_and_model`` calls this for our checkpoints (``compat.py``)."""
    checkpoint = Checkpoint.read(model_file, TRAINED_HINT)
    config = checkpoint_config(checkpoint, config_dict=config_dict)
    files = check_inputs(config, start=checkpoint, transferable=False)
    _setup(config)
    model, dataset, train_data, valid_data, test_data = build_model(config, files, checkpoint,
                                                                    model_class=checkpoint_model(checkpoint))
    return config, model, dataset, train_data, valid_data, test_data
