"""Files written atomically: a temp file beside the target, flushed to disk, then renamed over it, so a reader (or a
resumed run) never sees a half-written checkpoint, result or progress file."""

from __future__ import annotations

import json
import os
import tempfile

import torch


def atomic_write(path, write) -> None:
    """``write(handle)`` into a temp file beside ``path`` (binary), flushed to disk, then renamed over ``path``:
    a reader never sees a half-written file, and a failure leaves no temp file behind."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.path.basename(path)}-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path, data) -> None:
    """Write ``data`` as JSON with :func:`atomic_write` (numpy scalars as floats)."""
    atomic_write(path, lambda handle: handle.write(json.dumps(data, indent=1, default=float).encode("utf-8")))


def atomic_torch_save(obj, path) -> None:
    """Write a checkpoint with :func:`atomic_write`: never half-written."""
    atomic_write(path, lambda handle: torch.save(obj, handle))
