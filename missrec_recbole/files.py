"""Files written atomically: a temp file beside the target, flushed to disk, then renamed over it, so a reader (or a
resumed run) never sees a half-written checkpoint, result or progress file."""

from __future__ import annotations

import json
import os
import tempfile

import torch


TEMP_PREFIX = ".tmp-"


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; read once, at import, so threads never race on it
    os.umask(mask)
    return mask


# the mode open() would give: mkstemp's temp file is private (0o600), the renamed file should not be
FILE_MODE = 0o666 & ~_umask()


def atomic_write(path, write) -> None:
    """``write(handle)`` into a temp file beside ``path`` (binary), flushed to disk, then renamed over ``path``:
    a reader never sees a half-written file, and a failure leaves no temp file behind. The file gets the
    permissions ``open()`` would give it (umask applied)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.path.basename(path)}-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path, data) -> None:
    """Write ``data`` as JSON with :func:`atomic_write` (numpy scalars as floats)."""
    atomic_write(path, lambda handle: handle.write((json.dumps(data, indent=1, default=float) + "\n").encode("utf-8")))


def atomic_torch_save(obj, path) -> None:
    """Write a checkpoint with :func:`atomic_write`: never half-written."""
    atomic_write(path, lambda handle: torch.save(obj, handle))
