"""The results store: results.json and ranks.npz under a file lock, atomic writes, run hashes, machine info."""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import functools
import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path

import numpy as np
import torch

from missrec_recbole.bench.settings import PACKAGE_ROOT
from missrec_recbole.files import atomic_write, write_json


@functools.lru_cache(maxsize=None)
def fingerprint(folder: Path, name: str) -> str:
    """Content hash of a dataset's files (inter, features, maps)."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob(f"{name}.*")):
        digest.update(path.name[len(name):].encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def config_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def machine() -> dict:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    # the CPU's vector capability (AVX2, AVX512, ...) picks oneDNN's kernels and so the rounding: trained numbers
    # repeat on one kind of CPU, not across kinds, and two machines may report the same model name
    return {"host": platform.node(), "cpu": cpu, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cores": os.cpu_count(), "memory_gb": round(memory / 2**30, 1), "python": platform.python_version(),
            "torch": torch.__version__, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


def git_version():
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PACKAGE_ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PACKAGE_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("-dirty" if dirty else "")) or None


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


class Results:
    """``results.json`` + ``ranks.npz`` in ``out_dir``, rewritten atomically after every change.

    Every read-modify-write re-reads both files under a lock on ``out_dir/.lock``, so several bench invocations
    may share one ``out_dir`` (e.g. ``--tables pretrained`` and ``--tables full`` side by side, one core each):
    each adds its own records and keeps the others'.
    """

    def __init__(self, out_dir: Path, header: dict):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / "results.json"
        self.header = header
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._load()

    def _load(self) -> None:
        data = json.loads(self.path.read_text(encoding="utf-8")) if self.path.is_file() else {}
        self.data = {**self.header, "pretraining": data.get("pretraining", []), "runs": data.get("runs", [])}
        ranks_file = self.out_dir / "ranks.npz"
        self.ranks = dict(np.load(ranks_file)) if ranks_file.is_file() else {}

    @contextlib.contextmanager
    def _locked(self):
        with open(self.out_dir / ".lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                self._load()
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def find(self, section: str, key: str):
        with self._locked():
            return next((r for r in self.data[section] if r["key"] == key and r["status"] == "ok"), None)

    def put(self, section: str, record: dict, cases=None) -> None:
        with self._locked():
            self.data[section] = [r for r in self.data[section] if r["key"] != record["key"]] + [record]
            if cases is not None:
                self.ranks.update({f"{record['key']}|{k}": v for k, v in cases.items()})
                atomic_write(self.out_dir / "ranks.npz", lambda h: np.savez_compressed(h, **self.ranks))
            self.data["updated"] = now()
            write_json(self.path, self.data)

    @contextlib.contextmanager
    def claim(self, key: str, wait: bool):
        """Hold ``key`` while this invocation computes it, so another one sharing ``out_dir`` does not start it too.

        A lock on ``out_dir/.claims/<hash of key>`` (released by the OS if the process dies: no stale claims).
        Yields True once held; False at once when another invocation holds it and ``wait`` is False."""
        folder = self.out_dir / ".claims"
        folder.mkdir(exist_ok=True)
        with open(folder / hashlib.sha256(key.encode()).hexdigest()[:20], "a+b") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def cases(self, key: str):
        if f"{key}|rank" not in self.ranks:
            return None
        return {k: self.ranks[f"{key}|{k}"] for k in ("item", "rank")}
