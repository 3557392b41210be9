"""Pre-trained checkpoints shipped inside the package: ``-p NAME`` (or ``finetune(dataset, "NAME")``) fine-tunes from
one without a download. Each has a model card in docs/pretrained.md (data, feature encoder, recipe, cost, and the
leave-one-domain-out numbers that estimate what it gives on a new domain)."""

from __future__ import annotations

import os
from pathlib import Path

FOLDER = Path(__file__).resolve().parent
# short name -> file in this folder; written by ``python -m missrec_recbole.tools.release``
RELEASED = {"amazon3": "amazon3.pth"}


def released_path(name_or_path) -> str:
    """The packaged file of a released short name; anything else (a path) as it is. An existing file of the same
    name as a release wins: a path is never reinterpreted."""
    text = os.fspath(name_or_path)
    if text in RELEASED and not os.path.exists(text):
        return os.fspath(FOLDER / RELEASED[text])
    return text


def released_names() -> str:
    """The short names, for messages: ``amazon3, ...``."""
    return ", ".join(sorted(RELEASED))
