"""Files written atomically: a temp file beside the target, flushed to disk, then renamed over it, so a reader (or a
resumed run) never sees a half-written checkpoint, result or progress file."""

from __future__ import annotations

import json
import os
import tempfile

import torch


TEMP_PREFIX = ".tmp-"


def atomic_write(path, write, mode: int | None = None) -> None:
    """``write(handle)`` into a temp file beside ``path`` (binary), flushed to disk, then renamed over ``path``:
    a reader never sees a half-written file, and a failure leaves no temp file behind. The file keeps the temp
    file's private mode (0o600) unless ``mode`` is given (e.g. 0o644 for files meant to be shared)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.path.basename(path)}-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
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
