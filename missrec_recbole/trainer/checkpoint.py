"""Portable MISSRec checkpoints: dataset-independent weights + plain-typed config.

A checkpoint is a dict of tensors and plain Python values, written atomically and always read
with ``torch.load(weights_only=True)``. It leaves out everything tied to one dataset's items (ID
embedding, features, interest map), so it loads into a dataset with a different item count.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from missrec_recbole.compat import atomic_torch_save, plain
from missrec_recbole.errors import InputError

FORMAT = "missrec-recbole/1"
# Config keys that fix the shapes of the transferable weights.
ARCHITECTURE_KEYS = ("modalities", "text_dim", "image_dim", "hidden_size", "n_layers", "n_heads", "inner_size",
                     "item_fusion", "MAX_ITEM_LIST_LENGTH")


class CheckpointError(InputError):
    """A checkpoint that cannot be used: the message names the file and the mismatch."""


class CheckpointMismatchError(CheckpointError):
    """A readable checkpoint that does not fit the model or dataset it is loaded into."""


def save_pretrained(model, config, path, epoch: int) -> str:
    """Write ``model``'s transferable weights and ``config`` to ``path`` (atomic)."""
    state = {
        "format": FORMAT,
        "epoch": int(epoch),
        "config": plain(config.final_config_dict),
        "state_dict": model.transferable_state_dict(),
    }
    atomic_torch_save(state, path)
    return os.fspath(path)


PRETRAINED_HINT = "Pass the .pth written by --stage=pretrain."


def read_checkpoint(path, missing_hint: str = PRETRAINED_HINT) -> dict:
    """Load a checkpoint safely (``weights_only=True``) and check its format.
    ``missing_hint``: what to do when the file does not exist."""
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


def check_architecture(path, saved: dict, config) -> None:
    """Raise CheckpointError if the checkpoint's config fixes other shapes than ``config``."""
    for key in ARCHITECTURE_KEYS:
        mine = plain(config[key])
        if key in saved and saved[key] != mine:
            raise CheckpointError(
                f"{path}: checkpoint was trained with {key}={saved[key]!r} but this run has {key}={mine!r}. "
                f"Use the same {key} (features must have the same dims as in pre-training).")


def load_pretrained(model, config, path, checkpoint=None) -> dict:
    """Load transferable weights from ``path`` (or the already read ``checkpoint``) into ``model``;
    returns the checkpoint's config."""
    checkpoint = checkpoint or read_checkpoint(path)
    check_architecture(path, checkpoint["config"], config)
    weights = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("item_embedding.")}
    expected = model.transferable_state_dict()
    for key, value in weights.items():
        if key not in expected:
            raise CheckpointError(f"{path}: unexpected weight {key!r}; is it a MISSRec checkpoint?")
        if expected[key].shape != value.shape:
            raise CheckpointError(f"{path}: weight {key!r} has shape {tuple(value.shape)}, this model expects "
                                  f"{tuple(expected[key].shape)}. Check the feature dims and hidden_size.")
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks weights {missing[:5]}.")
    model.load_state_dict(weights, strict=False)
    return checkpoint["config"]


def saved_data_path(saved: dict) -> str | None:
    """The ``data_path`` option of a saved config (RecBole stores ``<data_path>/<dataset>``)."""
    return str(Path(saved["data_path"]).parent) if saved.get("data_path") else None


def load_trained(model, path, checkpoint, dataset: str = "") -> None:
    """Load a best-model checkpoint (RecBole's layout: ``state_dict`` + ``other_parameter``) into ``model`` built for
    the same dataset (``dataset``: its name, for messages); every weight and the interest map are checked first."""
    state = checkpoint["state_dict"]
    expected = model.state_dict()
    if "item_embedding.weight" in state and "item_embedding.weight" in expected:
        saved_items = state["item_embedding.weight"].shape[0]
        if saved_items != model.n_items:
            raise CheckpointMismatchError(
                f"{path}: checkpoint's ID embedding has {saved_items} rows (items + padding) but "
                f"dataset {dataset!r} has {model.n_items}: the dataset's .inter files changed "
                f"since training, or it is another dataset.")
    for key, value in state.items():
        if key in expected and expected[key].shape != value.shape:
            raise CheckpointMismatchError(f"{path}: weight {key!r} has shape {tuple(value.shape)}, this "
                                          f"configuration expects {tuple(expected[key].shape)}.")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointMismatchError(f"{path}: weights do not fit the model (missing {missing[:5]}, "
                                      f"unexpected {unexpected[:5]}).")
    model.load_state_dict(state)
    other = checkpoint.get("other_parameter") or {}
    interests = other.get("item_interest")
    if interests is not None and len(interests) not in (0, model.n_items):
        raise CheckpointMismatchError(
            f"{path}: checkpoint's interest map covers {len(interests)} items (+ padding) but "
            f"dataset {dataset!r} has {model.n_items}: the dataset's .inter files changed "
            f"since training, or it is another dataset.")
    if interests is not None and len(interests):
        model.load_other_parameter(other)
