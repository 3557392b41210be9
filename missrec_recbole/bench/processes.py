"""Training subprocesses: the worker command, following its log, stopping it, SIGTERM handling."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import time
from pathlib import Path



ANSI = re.compile(r"\x1b\[[0-9;]*m")


def worker_command(spec_file: Path, out_file: Path) -> list[str]:
    return [sys.executable, "-m", "missrec_recbole.bench", "_worker", str(spec_file), str(out_file)]


def stop(process, grace: float = 10.0) -> None:
    """Terminate ``process`` (kill it if it is still running after ``grace`` seconds) and reap it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def terminate_on_sigterm():
    """Turn SIGTERM into SystemExit while the suite runs, so ``launch`` stops its worker before exiting.

    Ctrl-C in a terminal reaches the whole process group, but ``kill PID`` (a scheduler, ``timeout``, a
    tuning sweep) reaches only this process and would otherwise leave the training worker running."""
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def follow(process, log: Path, progress, every: float = 2.0) -> int:
    """Wait for ``process``, passing each new RecBole epoch line of its log to ``progress``; returns its exit code."""
    position = 0
    while True:
        code = process.poll()
        with open(log, "rb") as handle:
            handle.seek(position)
            data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]
        position += len(complete)
        for line in ANSI.sub("", complete.decode("utf-8", errors="replace")).splitlines():
            if " epoch " in line and ("training" in line or "evaluating" in line):
                progress(line.split("INFO", 1)[-1].strip())
        if code is not None:
            return code
        time.sleep(every)
