"""Files and folders written atomically: a temp file (folder) beside the target, then renamed over it, so a reader
(or a resumed run) never sees a half-written checkpoint, result, progress file or dataset."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

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


@contextlib.contextmanager
def atomic_directory(target, keep_subfolders: bool = False, keep_existing=None):
    """Yield an empty temp folder beside ``target``; when the block succeeds it replaces ``target`` whole,
    otherwise it is deleted: never a half-written dataset. The old ``target`` is moved aside before the
    rename and removed after it, so ``target`` is missing only between two renames. ``keep_subfolders``
    carries the old target's sub-folders (e.g. downloaded images) into the new one. ``keep_existing``
    (a callable) is asked after the block: when it answers True, e.g. because a concurrent process has put a
    complete ``target`` in place meanwhile, that ``target`` stays and the new folder is discarded."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{target.name}-", dir=target.parent))
    old = None
    try:
        yield tmp
        if keep_existing is not None and keep_existing():
            return
        os.chmod(tmp, 0o755)  # mkdtemp creates 0o700
        if target.exists() or target.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}old-{target.name}-", dir=target.parent))
            os.replace(target, old / target.name)
            for sub in (old / target.name).iterdir() if keep_subfolders else ():
                if sub.is_dir() and not (tmp / sub.name).exists():
                    os.replace(sub, tmp / sub.name)
        try:
            os.replace(tmp, target)
        except OSError:  # another process renamed its folder in between our two renames
            if keep_existing is None or not keep_existing():
                raise
    finally:
        for folder in (tmp, old):
            if folder is not None and folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
