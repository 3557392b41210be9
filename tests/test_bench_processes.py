"""Bench invocations side by side or stopped: shared out_dir, work in progress elsewhere, SIGTERM."""

from __future__ import annotations

import contextlib
import os
import sys

import numpy as np
import pytest

from missrec_recbole import bench
from tests.bench_helpers import _tune_module, bench_args, tiny_with_ties


def _put_records(out_dir, writer, count, start):
    start.wait()  # both processes write at the same time
    results = bench.Results(out_dir, {"writer": writer})
    for i in range(count):
        key = f"{writer}|{i}"
        results.put("runs", {"key": key, "status": "ok"}, {"item": np.array([writer]), "rank": np.array([i])})


@pytest.mark.slow
def test_concurrent_invocations_share_results(tmp_path):
    """Two bench invocations writing one out_dir at the same time keep each other's runs and ranks."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    writers = [context.Process(target=_put_records, args=(tmp_path, w, 40, start)) for w in (1, 2)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(120)
        assert process.exitcode == 0
    results = bench.Results(tmp_path, {})
    keys = {r["key"] for r in results.data["runs"]}
    assert keys == {f"{w}|{i}" for w in (1, 2) for i in range(40)}
    assert results.find("runs", "2|39") == {"key": "2|39", "status": "ok"}
    assert {k.rsplit("|", 1)[0] for k in results.ranks} == keys
    assert {k: list(v) for k, v in results.cases("1|3").items()} == {"item": [1], "rank": [3]}


def _sleeper(pid_file):
    """Stand-in for a training process: writes its pid to ``pid_file`` and sleeps."""
    return [sys.executable, "-c", f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
                                  "time.sleep(120)"]


def _alive(pid) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def _terminated_once_sleeping(target, tmp_path, pid_files: str, count: int):
    """Spawn ``target(tmp_path)``, wait until ``count`` sleepers wrote their ``pid_files`` (a glob under tmp_path),
    send it SIGTERM and yield (its exit code, the sleepers' pids); sleepers left alive are killed afterwards."""
    import multiprocessing
    import signal
    import time

    process = multiprocessing.get_context("spawn").Process(target=target, args=(tmp_path,))
    process.start()
    deadline = time.time() + 60
    while len([f for f in tmp_path.glob(pid_files) if f.read_text()]) < count and time.time() < deadline:
        time.sleep(0.1)
    pids = [int(f.read_text()) for f in tmp_path.glob(pid_files)]
    os.kill(process.pid, signal.SIGTERM)
    process.join(90)
    try:
        yield process.exitcode, pids
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _launch_a_sleeping_worker(tmp_path):
    """A bench parent (SIGTERM handling as in ``main``) whose worker writes its pid and sleeps."""
    import types

    bench.runner.worker_command = lambda spec, out: _sleeper(tmp_path / "worker.pid")  # what launch calls
    suite = types.SimpleNamespace(launched=0, log_dir=tmp_path, progress=lambda line: None,
                                  args=types.SimpleNamespace(verbose=False, work_dir=tmp_path, threads=None))
    with bench.terminate_on_sigterm():
        bench.launch(suite, {}, "sleeper")


@pytest.mark.slow
def test_sigterm_to_the_parent_stops_its_worker(tmp_path):
    """``kill PID`` of a bench invocation must not leave its training worker running."""
    import signal

    with _terminated_once_sleeping(_launch_a_sleeping_worker, tmp_path, "worker.pid", 1) as (exitcode, pids):
        assert len(pids) == 1 and exitcode == 128 + signal.SIGTERM
        assert not _alive(pids[0])  # stopped and reaped by the parent, not orphaned


@pytest.mark.slow
def test_a_run_in_progress_elsewhere_is_not_started_twice(monkeypatch, tmp_path):
    """A second invocation sharing out_dir, started while the first trains a run, leaves that run alone."""
    tiny_with_ties(tmp_path / "data")
    args = bench_args(tmp_path, "--rows=SASRec", "--tables=full")
    real_launch, second = bench.launch, []

    def launch_after_a_second_invocation(*launch_args):
        second.append(bench.main(args))  # starts while this invocation holds the run
        return real_launch(*launch_args)

    monkeypatch.setattr(bench.runner, "launch", launch_after_a_second_invocation)
    first = bench.main(args)
    assert second[0]["counts"] == {"busy": 1} and second[0]["launched"] == 0
    assert first["counts"] == {"ok": 1} and first["launched"] == 1
    monkeypatch.setattr(bench.runner, "launch", real_launch)
    assert bench.main(args)["counts"] == {"skipped": 1}


def test_pretraining_in_progress_elsewhere_is_waited_for(monkeypatch, tmp_path):
    """ensure_pretrained waits for another invocation's pre-training and reuses its checkpoint."""
    import threading

    tiny_with_ties(tmp_path / "data")
    suite = bench.make_suite(*bench.parse_args(bench_args(tmp_path)))
    key, checkpoint = bench.pretrain_key(suite, "missrec"), tmp_path / "other.pth"
    holding, release = threading.Event(), threading.Event()

    def other_invocation():
        with bench.Results(suite.results.out_dir, {}).claim(key, wait=True):
            holding.set()
            release.wait(30)
            checkpoint.write_bytes(b"weights")
            bench.Results(suite.results.out_dir, {}).put("pretraining", {"key": key, "status": "ok",
                                                                          "checkpoint": str(checkpoint)})

    monkeypatch.setattr(bench.runner, "launch", lambda *a: pytest.fail("pre-trained a second time"))
    other = threading.Thread(target=other_invocation)
    other.start()
    holding.wait(30)
    threading.Timer(0.5, release.set).start()
    assert bench.ensure_pretrained(suite, "missrec") == str(checkpoint)
    other.join()


def _sweep_of_sleeping_benches(tmp_path):
    """tune.py, SIGTERM handling as in its ``main``, whose bench invocations write their pid and sleep."""
    tune = _tune_module()
    tune.bench_command = lambda args, overrides, out_dir, work_dir: _sleeper(work_dir / "pid")
    tune.main(["-d", "Tiny", f"--data_path={tmp_path}", f"--out={tmp_path / 'out'}", f"--work_dir={tmp_path / 'work'}",
               f"--baseline={tmp_path / 'none.json'}", "--jobs=2", "dpc_k=3", "dpc_k=4", "dpc_k=5"])


@pytest.mark.slow
def test_sigterm_to_a_sweep_stops_its_benches_and_starts_no_more(tmp_path):
    import signal

    with _terminated_once_sleeping(_sweep_of_sleeping_benches, tmp_path, "work/*/pid", 2) as (exitcode, pids):
        assert len(pids) == 2 and exitcode == 128 + signal.SIGTERM
        assert not any(_alive(pid) for pid in pids)
        assert len(list(tmp_path.glob("work/*/pid"))) == 2  # the two waiting candidates never started
