"""Checkpoints: portable pre-training checkpoints, RecBole best-model files and resume files, written and read here.

Every checkpoint is a dict of tensors and plain Python values, built by :func:`checkpoint_state` (RecBole pickles its
``Config``; ours is stored as plain values), written atomically and always read with ``torch.load(weights_only=True)``.
The writers: :func:`save_pretrained`, :func:`save_trained` (RecBole's ``Trainer._save_checkpoint`` layout) and
:func:`save_resume`. :class:`Checkpoint` reads any of the three kinds once, checks that it fits a run (the options
that fix the weights' shapes; for a resume file, the whole run), and loads its weights into a model: every weight
(trained and resume files, plus the interest map) or only the transferable ones (fine-tuning from ``-p``, zero-shot
use of a pre-training checkpoint); :func:`load_resume` puts a resume file's training state back into a trainer. A
pre-training checkpoint leaves out everything tied to one dataset's items (ID embedding, features, interest map), so
it loads into a dataset with another item count. The key sets are those of earlier versions (tests/test_resume.py
pins them): files load in both directions.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from missrec_recbole.compat import plain
from missrec_recbole.files import atomic_torch_save
from missrec_recbole.errors import InputError
from missrec_recbole.released import released_names, released_path

FORMAT = "missrec-recbole/1"
RESUME_FORMAT = "missrec-recbole-resume/2"
# Config keys that fix the shapes of the transferable weights.
ARCHITECTURE_KEYS = ("modalities", "text_dim", "image_dim", "hidden_size", "n_layers", "n_heads", "inner_size",
                     "item_adapter", "n_exps", "item_fusion", "MAX_ITEM_LIST_LENGTH")
# Keys that shape weights only under another option's value: elsewhere the model never reads them.
SHAPES_ONLY_WITH = {"n_exps": ("item_adapter", "moe")}
# Options added later, with the value that files written before they existed were trained with.
OLDER_DEFAULTS = {"item_adapter": "linear", "unfreeze": None, "mixed_precision": None,
                  "shared_item_tokens": False}
FEATURE_WIDTH_KEYS = ("text_dim", "image_dim")  # read from the dataset's files, not set by options
# What a fine-tuning run takes from its pre-trained checkpoint unless it sets the option itself: the options that
# define the pre-trained network (its shapes, plus what its weights compute). Not the modalities and widths (the
# target dataset's files give them) nor mode (an inductive checkpoint may be fine-tuned transductively).
MODEL_KEYS = tuple(key for key in ARCHITECTURE_KEYS if key not in FEATURE_WIDTH_KEYS + ("modalities",)) + (
    "hidden_act", "layer_norm_eps")
# Options a resumed run must share with the run that wrote the resume file (besides the dataset's files).
# What trains is part of the run too: a resume restores the recorded trainable set, so asking for another is refused
# rather than ignored.
RUN_KEYS = ("model", "dataset", "stage", "mode", "adapters_only", "unfreeze") + ARCHITECTURE_KEYS
PRETRAINED_HINT = f"Pass the .pth written by --stage=pretrain, or a released name ({released_names()})."
TRAINED_HINT = "Pass a .pth written by training (saved/<model>-<dataset>-<mode>-....pth)."
RESUME_HINT = "Pass the *-resume.pth file named in the log of the interrupted run."
# Options that name this machine's folders: a released checkpoint leaves them out.
LOCAL_KEYS = ("data_path", "checkpoint_dir", "dataset_save_path", "dataloaders_save_path")


class CheckpointError(InputError):
    """A checkpoint that cannot be used: the message names the file and the mismatch."""


class CheckpointMismatchError(CheckpointError):
    """A readable checkpoint that does not fit the model or dataset it is loaded into."""


def checkpoint_state(config, weights: dict, **fields) -> dict:
    """The layout every checkpoint shares: the run's options as plain values (``weights_only=True`` reads them back),
    its weights and the fields of its kind."""
    return {"config": plain(config.final_config_dict), "state_dict": weights, **fields}


def save_pretrained(model, config, path, epoch: int) -> str:
    """Write ``model``'s transferable weights and ``config`` to ``path`` (atomic)."""
    atomic_torch_save(checkpoint_state(config, model.transferable_state_dict(), format=FORMAT, epoch=int(epoch)), path)
    return os.fspath(path)


def _training_state(trainer) -> dict:
    """What a RecBole trainer's checkpoint holds besides its epoch: weights, interest map, optimizer, early stopping."""
    return checkpoint_state(trainer.config, trainer.model.state_dict(), cur_step=plain(trainer.cur_step),
                            best_valid_score=plain(trainer.best_valid_score),
                            other_parameter=trainer.model.other_parameter(), optimizer=trainer.optimizer.state_dict())


def save_trained(trainer, epoch: int, path) -> str:
    """Write a RecBole trainer's best-model file to ``path`` (atomic): the fields of RecBole's
    ``Trainer._save_checkpoint``, so RecBole's best-model reload reads it."""
    atomic_torch_save({**_training_state(trainer), "epoch": plain(epoch)}, path)
    return os.fspath(path)


def dataset_files(train_data):
    """The :class:`DatasetFiles` of the data a trainer trains on (None for RecBole's own datasets)."""
    return getattr(train_data._dataset, "files", None)


def rng_state(train_data) -> dict:
    """Every random state training consumes, as types ``torch.load(weights_only=True)`` accepts (the CUDA
    generators too once CUDA is in use: dropout on a GPU draws from them)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "loader": train_data.generator.get_state(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, train_data) -> None:
    """Restore :func:`rng_state`; CUDA states are restored where this machine has the GPUs (a resume file written
    on a GPU continues on a CPU-only machine, with CPU random streams)."""
    if state.get("cuda") and torch.cuda.is_available():
        for index, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    train_data.generator.set_state(state["loader"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))


def save_resume(trainer, path, next_epoch: int, train_data) -> str:
    """Write everything a :class:`~missrec_recbole.trainer.MISSRecTrainer` needs to continue at ``next_epoch``
    exactly (atomic): its training state, the run it belongs to (:func:`run_identity`), the trainable set and every
    random state."""
    model = trainer.model
    atomic_torch_save({
        **_training_state(trainer),
        "format": RESUME_FORMAT,
        "identity": run_identity(trainer.config, dataset_files(train_data)),
        "pretrain_prefix": trainer.pretrain_prefix,
        "next_epoch": int(next_epoch),
        "best_valid_result": plain(dict(trainer.best_valid_result or {})),
        "train_loss_dict": plain(trainer.train_loss_dict),
        "saved_model_file": trainer.saved_model_file,
        "trainable": [name for name, parameter in model.named_parameters() if parameter.requires_grad],
        "rng": rng_state(train_data),
    }, path)
    return os.fspath(path)


def load_resume(trainer, checkpoint: "Checkpoint") -> None:
    """Put the training state of the resume file ``checkpoint`` (:func:`save_resume`) back into ``trainer``: trainable
    set, weights and interest map, optimizer, epoch, early stopping and the interrupted run's file names. The random
    states are restored by :func:`set_rng_state` when training starts (they need the training data)."""
    state = checkpoint.content
    trainable = set(state["trainable"])
    for name, parameter in trainer.model.named_parameters():
        parameter.requires_grad = name in trainable
    trainer.optimizer = trainer._build_optimizer(params=[p for p in trainer.model.parameters() if p.requires_grad])
    checkpoint.load_all(trainer.model, trainer.config["dataset"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.start_epoch, trainer.cur_step = state["next_epoch"], state["cur_step"]
    trainer.best_valid_score = state["best_valid_score"]
    trainer.best_valid_result = state["best_valid_result"] or None
    trainer.train_loss_dict = {int(k): v for k, v in state["train_loss_dict"].items()}
    trainer.saved_model_file = state["saved_model_file"]
    trainer.pretrain_prefix = state["pretrain_prefix"]


def release_state(checkpoint: "Checkpoint", release: dict) -> dict:
    """A pre-training checkpoint as it ships inside the package: its weights and options without the options that
    name the writer's folders (:data:`LOCAL_KEYS`), plus ``release`` (name, feature encoder, ...: plain values)."""
    if checkpoint.kind != "pretrained":
        raise CheckpointError(f"{checkpoint.path}: not a pre-training checkpoint. {PRETRAINED_HINT}")
    config = {key: value for key, value in checkpoint.config.items() if key not in LOCAL_KEYS}
    return {**checkpoint.content, "config": config, "release": plain(release)}


def read_checkpoint(path, missing_hint: str = PRETRAINED_HINT) -> dict:
    """Load a checkpoint file safely (``weights_only=True``) and check its layout. ``path`` may be the short name
    of a checkpoint shipped in the package (:mod:`missrec_recbole.released`). ``missing_hint``: what to do when
    the file does not exist."""
    path = released_path(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint file not found. {missing_hint}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated file, foreign pickle, ...
        # PyTorch's message suggests weights_only=False, i.e. running arbitrary pickled code: never pass it on.
        raise CheckpointError(f"{path}: not a readable MISSRec checkpoint ({type(error).__name__}): the file is "
                              f"truncated, damaged or not written by missrec-recbole.") from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "config" not in checkpoint:
        raise CheckpointError(f"{path}: not a MISSRec checkpoint (no state_dict/config).")
    return checkpoint


def run_identity(config, files) -> dict:
    """What a resume file belongs to: dataset (name, item/user counts, fingerprint of its files), mode,
    stage and the options that shape the model. ``files``: the dataset's :class:`DatasetFiles`."""
    identity = {key: plain(config[key]) for key in RUN_KEYS}
    if files is not None:
        identity.update(items=files.n_items, users=files.n_users, data_fingerprint=files.fingerprint)
    return identity


def recorded(saved: dict, key: str, mine):
    """``saved[key]``; for a file written before ``key`` existed, the value it behaved as (:data:`OLDER_DEFAULTS`),
    or ``mine`` where the option does not apply (a model that does not read it)."""
    if key in saved:
        return saved[key]
    return OLDER_DEFAULTS.get(key, mine) if mine is not None else None


def _shapes_weights(config, key: str) -> bool:
    condition = SHAPES_ONLY_WITH.get(key)
    return condition is None or plain(config[condition[0]]) == condition[1]


def saved_data_path(saved: dict) -> str | None:
    """The ``data_path`` option of a saved config (RecBole stores ``<data_path>/<dataset>``)."""
    return str(Path(saved["data_path"]).parent) if saved.get("data_path") else None


class Checkpoint:
    """One checkpoint file, read once: ``kind`` is ``pretrained`` (:func:`save_pretrained`), ``resume`` (written
    every epoch by the trainer) or ``trained`` (RecBole's best-model file)."""

    def __init__(self, path, content: dict):
        self.path = os.fspath(path)
        self.content = content

    @classmethod
    def read(cls, path, missing_hint: str = PRETRAINED_HINT) -> "Checkpoint":
        return cls(released_path(path), read_checkpoint(path, missing_hint))

    @property
    def kind(self) -> str:
        found = self.content.get("format")
        return "pretrained" if found == FORMAT else "resume" if found == RESUME_FORMAT else "trained"

    @property
    def config(self) -> dict:
        """The options of the run that wrote it (plain values)."""
        return self.content["config"]

    def model_options(self, given) -> dict:
        """The :data:`MODEL_KEYS` options of the checkpoint's run that are not in ``given`` (options the new run
        sets itself): a fine-tuning run that leaves them out gets the pre-trained network."""
        return {key: self.config[key] for key in MODEL_KEYS
                if key not in given and self.config.get(key) is not None}

    def check_architecture(self, config, all_weights: bool = False) -> None:
        """Raise :class:`CheckpointMismatchError` if the checkpoint's run had other options that fix the weights'
        shapes than ``config``; with ``all_weights`` (every weight is loaded, ID embedding included) also another
        ``mode``."""
        for key in ARCHITECTURE_KEYS + (("mode",) if all_weights else ()):
            if not _shapes_weights(config, key):
                continue
            mine = plain(config[key])
            theirs = recorded(self.config, key, mine)
            if theirs != mine:
                raise CheckpointMismatchError(f"{self.path}: checkpoint was trained with {key}={theirs!r} "
                                              f"but this run has {key}={mine!r}; {self._fix(key, theirs)}.")

    def _fix(self, key: str, theirs) -> str:
        """What to do when a run's ``key`` differs from the checkpoint's value ``theirs``."""
        if key in FEATURE_WIDTH_KEYS:  # a release records its encoder: name it
            encoder = (self.content.get("release") or {}).get("encoder")
            return ("the dataset's feature files give this width: use features from the same encoder as in training"
                    + (f" ({encoder}; docs/pretrained.md)" if encoder else ""))
        if key in MODEL_KEYS:
            return f"leave {key} out to take it from the checkpoint"
        return f"use {key}={theirs!r}"

    def check_run(self, identity: dict) -> None:
        """A resume file must come from a run with ``identity`` (:func:`run_identity`); raises
        :class:`CheckpointError` listing every difference."""
        found = self.content.get("format")
        if found != RESUME_FORMAT:
            older = isinstance(found, str) and found.startswith(RESUME_FORMAT.split("/")[0])
            raise CheckpointError(f"{self.path}: " + (
                "written by an older version of missrec-recbole, which did not record its run; start the run "
                "again without --resume." if older else "not a resume checkpoint (those end in -resume.pth)."))
        saved = self.content.get("identity") or {}
        differences = [f"{key} {recorded(saved, key, value)!r} there, {value!r} here"
                       for key, value in identity.items() if recorded(saved, key, value) != value]
        if differences:
            raise CheckpointError(f"{self.path}: belongs to another run ({'; '.join(differences)}). Resume with the "
                                  f"same dataset files and options, or start a new run without --resume.")

    def load_transferable(self, model) -> None:
        """Load the weights that do not depend on the dataset's items (all but the ID embedding) into ``model``,
        whose item count may differ; every shape is checked first."""
        weights = {k: v for k, v in self.content["state_dict"].items() if not k.startswith("item_embedding.")}
        expected = model.transferable_state_dict()
        for key, value in weights.items():
            if key not in expected:
                raise CheckpointMismatchError(f"{self.path}: unexpected weight {key!r}; is it a checkpoint of "
                                              f"{type(model).__name__}?")
            if expected[key].shape != value.shape:
                raise CheckpointMismatchError(f"{self.path}: weight {key!r} has shape {tuple(value.shape)}, this "
                                              f"model expects {tuple(expected[key].shape)}: an option that shapes the "
                                              f"network differs from the checkpoint's; leave it out to "
                                              f"take it from the checkpoint.")
        missing = sorted(set(expected) - set(weights))
        if missing:
            raise CheckpointMismatchError(f"{self.path}: checkpoint lacks weights {missing[:5]}.")
        model.load_state_dict(weights, strict=False)

    def load_all(self, model, dataset: str = "") -> None:
        """Load every weight and the interest map into ``model`` built for the same dataset (``dataset``: its name,
        for messages); item counts and shapes are checked first."""
        state, expected = self.content["state_dict"], model.state_dict()
        if "item_embedding.weight" in state and "item_embedding.weight" in expected:
            self._check_items(state["item_embedding.weight"].shape[0], model, dataset, "ID embedding has", "rows")
        for key, value in state.items():
            if key in expected and expected[key].shape != value.shape:
                raise CheckpointMismatchError(f"{self.path}: weight {key!r} has shape {tuple(value.shape)}, this "
                                              f"configuration expects {tuple(expected[key].shape)}.")
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or unexpected:
            raise CheckpointMismatchError(f"{self.path}: weights do not fit the model (missing {missing[:5]}, "
                                          f"unexpected {unexpected[:5]}).")
        other = self.content.get("other_parameter") or {}
        interests = other.get("item_interest")
        if interests is not None and len(interests):
            self._check_items(len(interests), model, dataset, "interest map covers", "items")
        model.load_state_dict(state)
        if other:  # the interest map and DPC-KNN's warm-start state (a resumed run refreshes as if never stopped)
            model.load_other_parameter(other)

    def _check_items(self, saved: int, model, dataset: str, what: str, unit: str) -> None:
        if saved != model.n_items:
            raise CheckpointMismatchError(
                f"{self.path}: checkpoint's {what} {saved} {unit} (items + padding) but dataset {dataset!r} has "
                f"{model.n_items}: the dataset's .inter files changed since training, or it is another dataset.")


def load_pretrained(model, config, path) -> dict:
    """Load the transferable weights of the checkpoint ``path`` into ``model`` (built with ``config``); returns the
    checkpoint's config. The Python shortcut for :meth:`Checkpoint.check_architecture` + ``load_transferable``."""
    checkpoint = Checkpoint.read(path)
    checkpoint.check_architecture(config)
    checkpoint.load_transferable(model)
    return checkpoint.config
