"""The benchmark runner (missrec_recbole.bench): a reduced --quick run on a tiny dataset, resumability,
the user split, and the tie rule shared by SASRec's and MISSRec's evaluation."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from missrec_recbole import bench
from missrec_recbole.bench.runner import FINETUNE_ONLY_OPTIONS
from missrec_recbole.tools.split_users import dataset_users, split_users
from tests.conftest import write_dataset

METRICS = ("recall@10", "ndcg@10", "recall@50", "ndcg@50")
TIED = [10, 11, 12, 13]  # items with identical text and image features: inductive scores tie exactly
ROWS = ["SASRec", "MISSRec scratch inductive", "MISSRec pre-trained transductive", "UniSRec pre-trained inductive"]
SMALL = ["--text_dim=16", "--image_dim=16", "--train_batch_size=64", "--eval_batch_size=64", "--dpc_k=3",
         "--faiss_threads=1", "--pretrain.epochs=1", "--pretrain.train_batch_size=64", "--pretrain.save_step=1"]


def tiny_with_ties(root):
    folder = write_dataset(root, "Tiny", n_items=80, n_users=40, dim=16)
    for suffix in ("feat1CLS", "feat3CLS"):
        path = folder / f"Tiny.{suffix}"
        features = np.fromfile(path, dtype="<f4").reshape(80, 16)
        features[TIED] = features[TIED[0]] if suffix == "feat1CLS" else np.abs(features[TIED[0]]) + 0.1
        features.tofile(path)
    with open(folder / "Tiny.user2index", "w") as handle:
        handle.writelines(f"U{u}\t{u}\n" for u in range(40))
    return folder


def bench_args(root, *extra):
    return ["--quick", "-d", "Tiny", f"--data_path={root / 'data'}", f"--out_dir={root / 'results'}",
            f"--work_dir={root / 'work'}", "--no_progress", "--log_level=WARNING", "--rows=" + ",".join(ROWS),
            *SMALL, *extra]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    tiny_with_ties(root / "data")
    first = bench.main(bench_args(root, "--threads=1"))
    return root, first


@pytest.mark.slow
def test_results_json_structure(quick_run):
    root, first = quick_run
    data = json.loads((root / "results" / "results.json").read_text())
    assert data["dataset"] == "Tiny" and data["seeds"] == [2020] and data["machine"]["cores"]
    assert data["split"]["users"] == {"pre": 20, "eval": 20}
    runs = {(r["table"], r["row"]): r for r in data["runs"]}
    expected = {(t, name) for t in ("pretrained", "full") for name in ROWS  # the default tables (not "transfer")
                if t == "pretrained" or "pre-trained" not in name}
    assert set(runs) == expected
    assert first["launched"] == len(expected) + 2  # + pre-training MISSRec and UniSRec once
    for (table, name), run in runs.items():
        assert run["status"] == "ok", run.get("message")
        assert run["dataset"] == ("Tiny-eval" if table == "pretrained" else "Tiny")
        assert run["seed"] == 2020 and len(run["config_hash"]) == 12 and run["command"].startswith("python -m")
        for split in ("valid", "test"):
            assert set(run[split]) == set(METRICS)
        assert run["best_epoch"] in (0, 1) and run["epochs"] == 2
        assert run["seconds_per_epoch"] > 0 and run["train_seconds_per_epoch"] > 0
        assert run["peak_rss_bytes"] > 100 * 2**20 and run["trainable_parameters"] > 0
        assert run["threads"] == 1  # --threads reaches the worker (torch would take every core)
        assert 0 < run["cpu_seconds"] < 2 * run["wall_seconds"]  # the run's process CPU time (1 thread)
        assert (run["interest_refresh_seconds"] is not None) == name.startswith("MISSRec")
    assert {p["kind"] for p in data["pretraining"]} == {"missrec", "unisrec"}
    # a finished run's model and resume files are deleted; the pre-trainings' resume files stay, named in their records
    assert all(run["model_file"] is None and run["resume_file"] is None for run in runs.values())
    assert sorted((root / "work" / "saved").rglob("*-resume.pth")) == sorted(
        Path(p["resume_file"]) for p in data["pretraining"])
    pre_trained = runs[("pretrained", "MISSRec pre-trained transductive")]
    assert pre_trained["pretrained_checkpoint"].endswith(".pth")


@pytest.mark.slow
def test_results_md_and_ranks(quick_run):
    root, _ = quick_run
    text = (root / "results" / "results.md").read_text()
    for name in ROWS:
        assert f"| {name} | 1 | " in text
    assert "Table 1" in text and "Table 2" in text and "python -m missrec_recbole.bench --quick" in text
    assert "## Cost" in text and "## Quality target" in text
    plotted = (root / "results" / "longtail.png").is_file()
    assert plotted == (importlib.util.find_spec("matplotlib") is not None)
    ranks = np.load(root / "results" / "ranks.npz")
    data = json.loads((root / "results" / "results.json").read_text())
    for run in data["runs"]:
        assert len(ranks[f"{run['key']}|rank"]) == (20 if run["table"] == "pretrained" else 40)


@pytest.mark.slow
def test_second_invocation_runs_nothing(quick_run):
    root, _ = quick_run
    before = (root / "results" / "results.json").read_text()
    again = bench.main(bench_args(root))
    assert again["launched"] == 0 and again["counts"] == {"skipped": 6}
    assert json.loads(before)["runs"] == json.loads((root / "results" / "results.json").read_text())["runs"]


@pytest.mark.slow
def test_finetune_overrides_reuse_the_pretraining_of_another_out_dir(quick_run, tmp_path):
    """--finetune.key=value changes the rows only; --pretrained_from reuses the recorded pre-training."""
    root, _ = quick_run
    row = "MISSRec pre-trained transductive"
    out = bench.main(bench_args(root, f"--rows={row}", "--tables=pretrained", f"--out_dir={tmp_path}",
                                f"--pretrained_from={root / 'results'}", "--finetune.temperature=0.1"))
    assert out["counts"] == {"ok": 1} and out["launched"] == 1  # the fine-tuning only
    first = json.loads((root / "results" / "results.json").read_text())
    data = json.loads((tmp_path / "results.json").read_text())
    [run], [earlier] = data["runs"], [r for r in first["runs"] if r["row"] == row]
    assert run["settings"]["temperature"] == 0.1 and run["config_hash"] != earlier["config_hash"]
    assert run["pretrained_checkpoint"] == earlier["pretrained_checkpoint"]
    assert run["log"] != earlier["log"]  # same work_dir, other settings: the earlier run's log is kept
    assert data["pretraining"][0]["reused_from"] == str(root / "results" / "results.json")
    with pytest.raises(SystemExit):
        bench.parse_args(["-d", "Tiny", f"--pretrained_from={tmp_path / 'none'}"])


@pytest.mark.slow
def test_kept_pretraining_is_found_when_the_work_dir_is_gone(quick_run, tmp_path):
    """--keep_pretrained copies the checkpoint into out_dir/pretrained/; a later invocation fine-tunes from that copy
    when the file the pre-training wrote is gone (a copy of the out_dir elsewhere), without pre-training again."""
    root, _ = quick_run
    row, out = "MISSRec pre-trained transductive", tmp_path / "kept"
    first = bench.main(bench_args(root, f"--rows={row}", "--tables=pretrained", f"--out_dir={out}", "--keep_pretrained",
                                  f"--pretrained_from={root / 'results'}", "--finetune.temperature=0.1"))
    assert first["launched"] == 1
    written = json.loads((root / "results" / "results.json").read_text())
    original = next(p["checkpoint"] for p in written["pretraining"] if p["kind"] == "missrec")
    [kept] = (out / "pretrained").glob("pretrain-missrec-*.pth")
    assert kept.read_bytes() == open(original, "rb").read()
    assert json.loads((out / "results.json").read_text())["runs"][0]["pretrained_checkpoint"] == str(kept)
    hidden = original + ".hidden"
    os.rename(original, hidden)
    try:
        again = bench.main(bench_args(root, f"--rows={row}", "--tables=pretrained", f"--out_dir={out}",
                                      "--finetune.temperature=0.2"))
    finally:
        os.rename(hidden, original)
    assert again["counts"] == {"ok": 1} and again["launched"] == 1  # the fine-tuning only
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [r["pretrained_checkpoint"] for r in runs] == [str(kept)] * 2


@pytest.mark.slow
def test_runs_from_copies_finished_runs_with_their_ranks(quick_run, tmp_path):
    """--runs_from: a run another out_dir finished with the same key is copied (record and per-case ranks), not
    trained; the report of the new out_dir shows it."""
    root, _ = quick_run
    rows = "SASRec,MISSRec scratch inductive"
    out = bench.main(bench_args(root, f"--rows={rows}", "--tables=full", f"--out_dir={tmp_path}",
                                f"--runs_from={root / 'results'}"))
    assert out["launched"] == 0 and out["counts"] == {"reused": 2}
    source = json.loads((root / "results" / "results.json").read_text())
    copied = json.loads((tmp_path / "results.json").read_text())["runs"]
    originals = {r["key"]: r for r in source["runs"] if r["table"] == "full" and r["row"] in rows.split(",")}
    assert {r["key"] for r in copied} == set(originals)
    for run in copied:
        assert {k: v for k, v in run.items() if k != "reused_from"} == originals[run["key"]]
        assert run["reused_from"] == str(root / "results" / "results.json")
    ranks, their_ranks = np.load(tmp_path / "ranks.npz"), np.load(root / "results" / "ranks.npz")
    for key in originals:
        assert np.array_equal(ranks[f"{key}|rank"], their_ranks[f"{key}|rank"])
    assert "| MISSRec scratch inductive | 1 | " in (tmp_path / "results.md").read_text()
    changed = bench.main(bench_args(root, "--rows=SASRec", "--tables=full", f"--out_dir={tmp_path / 'other'}",
                                    f"--runs_from={root / 'results'}", "--sasrec.hidden_dropout_prob=0.3",
                                    "--sasrec.epochs=1"))
    assert changed["counts"] == {"ok": 1}  # other settings, another key: trained, not copied
    with pytest.raises(SystemExit):
        bench.parse_args(["-d", "Tiny", f"--runs_from={tmp_path / 'none'}"])


@pytest.mark.slow
def test_ranks_follow_the_pessimistic_tie_rule(quick_run):
    """RecBole's reported test metrics equal those of ranks = #items scoring >= the target, for every
    model, and the inductive MISSRec (tied items) puts tied targets after their ties."""
    root, _ = quick_run
    data = json.loads((root / "results" / "results.json").read_text())
    for run in data["runs"]:
        assert run["ranks_vs_metrics"] < 1e-4, run["row"]


@pytest.mark.slow
def test_user_split(quick_run):
    root, _ = quick_run
    source, halves = root / "data" / "Tiny", root / "work" / "datasets"
    users = set(dataset_users(source, "Tiny"))
    pre, held = set(dataset_users(halves / "Tiny-pre", "Tiny-pre")), set(dataset_users(halves / "Tiny-eval", "Tiny-eval"))
    assert not pre & held and pre | held == users and len(pre) == len(held)
    for suffix in ("feat1CLS", "feat3CLS", "item2index"):
        original = (source / f"Tiny.{suffix}").read_bytes()
        assert (halves / "Tiny-pre" / f"Tiny-pre.{suffix}").read_bytes() == original
        assert (halves / "Tiny-eval" / f"Tiny-eval.{suffix}").read_bytes() == original
    for split in ("train", "valid", "test"):
        rows = (source / f"Tiny.{split}.inter").read_text().splitlines()[1:]
        pre_rows = (halves / "Tiny-pre" / f"Tiny-pre.{split}.inter").read_text().splitlines()[1:]
        eval_rows = (halves / "Tiny-eval" / f"Tiny-eval.{split}.inter").read_text().splitlines()[1:]
        assert sorted(pre_rows + eval_rows) == sorted(rows)
    mapped = [line.split("\t")[1] for h in ("pre", "eval")
              for line in (halves / f"Tiny-{h}" / f"Tiny-{h}.user2index").read_text().splitlines()]
    assert sorted(mapped, key=int) == [str(u) for u in range(40)]


def test_split_is_seeded(tmp_path):
    write_dataset(tmp_path / "data", "Tiny", n_users=30)
    a = split_users("Tiny", tmp_path / "data", tmp_path / "a", seed=1)
    b = split_users("Tiny", tmp_path / "data", tmp_path / "b", seed=1)
    c = split_users("Tiny", tmp_path / "data", tmp_path / "c", seed=2)
    users = {name: dataset_users(tmp_path / name / "Tiny-pre", "Tiny-pre") for name in "abc"}
    assert users["a"] == users["b"] != users["c"] and a["users"] == {"pre": 15, "eval": 15}
    assert split_users("Tiny", tmp_path / "data", tmp_path / "a", seed=1)["reused"]
    assert b["reused"] is False and c["reused"] is False


class ConstantScores(torch.nn.Module):
    """Stand-in model: every item gets the same score (all targets tie with every item)."""

    def __init__(self, n_items):
        super().__init__()
        self.n_items = n_items
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def full_sort_predict(self, interaction):
        return torch.zeros(len(interaction), self.n_items) + self.weight


def test_sasrec_and_missrec_trainers_share_the_tie_rule(tmp_path):
    from recbole.data import create_dataset, data_preparation

    from missrec_recbole.quick_start import build_config, prepare_data
    from missrec_recbole.trainer import MISSRecTrainer
    from tests.conftest import tiny_overrides

    write_dataset(tmp_path, "Tiny", n_items=80)
    overrides = tiny_overrides(data_path=str(tmp_path), checkpoint_dir=str(tmp_path / "saved"), topk=[10, 50])
    ranks = {}
    for name, config, loaders, trainer_class in (
            ("sasrec", bench.sasrec_config("Tiny", config_dict=overrides), None, bench.TieRuleTrainer),
            ("missrec", build_config("Tiny", config_dict=overrides), prepare_data, MISSRecTrainer)):
        if loaders is None:
            _, _, test_data = data_preparation(config, create_dataset(config))
        else:
            _, _, _, test_data = loaders(config)
        model = ConstantScores(test_data._dataset.item_num)
        trainer = bench.recording(trainer_class)(config, model)
        result = trainer.evaluate(test_data, load_best_model=False)
        # all items tie: every target ranks last (after all > 50 items), not wherever torch.topk puts it
        assert result["recall@10"] == 0 and result["recall@50"] == 0 and result["ndcg@50"] == 0
        ranks[name] = trainer.cases["rank"]
        assert (ranks[name] == test_data._dataset.item_num - 1).all()  # internal id 0 is padding
    assert (ranks["sasrec"] == ranks["missrec"]).all()


def test_sasrec_resumes_exactly(tmp_path, monkeypatch):
    """The benchmark's SASRec writes a resume file every epoch like MISSRec/UniSRec (the bench continues a stopped
    run from it): 2 epochs, then resumed to 4, give the uninterrupted 4-epoch run's weights, epochs and test."""
    from tests.conftest import tiny_overrides

    monkeypatch.chdir(tmp_path)  # RecBole's logger writes ./log
    write_dataset(tmp_path, "Tiny", n_items=80)

    def sasrec(epochs, folder, **resume_files):
        overrides = tiny_overrides(data_path=str(tmp_path), checkpoint_dir=str(tmp_path / folder), topk=[10, 50],
                                   epochs=epochs, stopping_step=100)
        return bench.worker.run_sasrec({"dataset": "Tiny", "config_files": [], "config_dict": overrides,
                                        "show_progress": False, **resume_files})

    chosen = str(tmp_path / "run-resume.pth")  # as the bench chooses it
    straight, straight_trainer = sasrec(4, "straight")
    _, first = sasrec(2, "stopped", resume_file=chosen)
    assert first.resume_file == chosen
    resumed, resumed_trainer = sasrec(4, "stopped", resume=chosen, resume_file=chosen)
    assert resumed_trainer.resume_file == chosen
    assert resumed["epochs"] == straight["epochs"] == 4 and resumed["best_epoch"] == straight["best_epoch"]
    assert resumed["test"] == straight["test"] and resumed["valid"] == straight["valid"]
    expected = straight_trainer.model.state_dict()
    for name, value in resumed_trainer.model.state_dict().items():
        assert torch.allclose(value, expected[name], atol=1e-6), name


def test_metrics_from_ranks():
    out = bench.metrics_from_ranks([1, 3, 11, 60])
    assert out["recall@10"] == 0.5 and out["recall@50"] == 0.75
    assert out["ndcg@10"] == pytest.approx((1 + 1 / np.log2(4)) / 4)


def test_quick_defaults_and_unavailable_kind(monkeypatch, tmp_path):
    args, overrides, pretrain = bench.parse_args(["--quick"])
    assert args.dataset == "Demo-D" and args.seed_list == [2020] and overrides == bench.QUICK_SETTINGS
    assert pretrain == bench.QUICK_PRETRAIN
    args, _, _ = bench.parse_args(["-d", "X", "--seeds", "3", "--epochs=4"])
    assert args.seed_list == [2020, 2021, 2022]

    def unavailable():
        raise bench.Unavailable("UniSRec not available: test")

    monkeypatch.setitem(bench.RUN_KINDS, "unisrec", bench.RunKind("UniSRec", None, None, unavailable))
    tiny_with_ties(tmp_path / "data")
    out = bench.main(bench_args(tmp_path, "--rows=UniSRec scratch inductive", "--tables=full"))
    assert out["launched"] == 0 and out["counts"] == {"unavailable": 1}
    text = (tmp_path / "results" / "results.md").read_text()
    assert "| UniSRec scratch inductive | 0 | unavailable: UniSRec not available: test |" in text


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


def _tune_module():
    spec = importlib.util.spec_from_file_location("tune", bench.PACKAGE_ROOT / "benchmarks" / "tune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tune_reads_validation_of_one_row_only(tmp_path):
    tune = _tune_module()
    run = {"table": "full", "row": "MISSRec scratch transductive", "status": "ok", "seed": 2020, "best_epoch": 4,
           "epochs": 9, "train_seconds_per_epoch": 2.0, "valid": {"ndcg@10": 0.2}, "test": {"ndcg@10": 0.9},
           "date": "2026-11-01"}
    runs = [run, {**run, "date": "2026-11-02", "valid": {"ndcg@10": 0.3}}, {**run, "seed": 2021},
            {**run, "table": "pretrained"}, {**run, "row": "SASRec"}, {**run, "status": "failed"}]
    (tmp_path / "results.json").write_text(json.dumps({"runs": runs}))
    found = tune.valid_runs(tmp_path / "results.json", "MISSRec scratch transductive", [2020])
    assert found == [{"seed": 2020, "valid": {"ndcg@10": 0.3}, "best_epoch": 4, "epochs": 9,
                      "train_seconds_per_epoch": 2.0}]  # the latest run; no test metrics
    assert tune.parse_candidate("interest_ratio=0.1") == ("interest_ratio", 0.1)
    assert tune.parse_candidate("item_fusion=stack") == ("item_fusion", "stack")
    with pytest.raises(Exception, match="key=value"):
        tune.parse_candidate("interest_ratio")


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


def test_a_second_tuning_round_adds_to_the_first(tmp_path, capsys):
    import types

    tune = _tune_module()
    row = "MISSRec scratch transductive"
    run = {"table": "full", "row": row, "status": "ok", "seed": 2020, "date": "2026-11-01", "best_epoch": 3,
           "valid": {"ndcg@10": 0.1, "recall@10": 0.2, "ndcg@50": 0.3}, "train_seconds_per_epoch": 1.0}
    for name in ("dpc_k=3", "dpc_k=4"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({"runs": [run]}))
    args = types.SimpleNamespace(dataset="Tiny", row=row, out=tmp_path)
    baseline = [{"seed": 2020, "valid": run["valid"], "best_epoch": 3, "train_seconds_per_epoch": 1.0}]

    def sweep(plan, fixed=None):
        summary = tune.summarise(args, [2020], fixed or {}, plan, dict.fromkeys(plan, 0), baseline, tmp_path / "b")
        (tmp_path / "tuning.json").write_text(json.dumps(summary))
        return summary["candidates"]

    sweep({"dpc_k=3": {"dpc_k": 3}})
    second = sweep({"dpc_k=4": {"dpc_k": 4}})
    assert list(second) == ["defaults", "dpc_k=3", "dpc_k=4"] and second["dpc_k=3"]["overrides"] == {"dpc_k": 3}
    assert len(second["dpc_k=3"]["runs"]) == 1 and second["defaults"]["runs"] == baseline
    other_fixed = sweep({"defaults": {"lr": 1}, "dpc_k=4": {"dpc_k": 4, "lr": 1}}, fixed={"lr": 1})
    assert list(other_fixed) == ["defaults", "dpc_k=4"]  # earlier rounds had other fixed settings

    defaults = [{**baseline[0], "seed": 2021, "valid": {**run["valid"], "ndcg@10": 0.2}}, *baseline]
    tune.print_table({"row": row, "dataset": "Tiny", "seeds": [2020, 2021], "candidates": {
        "defaults": {"runs": defaults}, "dpc_k=3": second["dpc_k=3"]}})
    assert "| dpc_k=3 | 1 | 0.1000 | +0.0% |" in capsys.readouterr().out  # against seed 2020's defaults only


def test_only_seeds_runs_a_subset_and_keeps_the_pretraining_seed():
    args, _, _ = bench.parse_args(["-d", "Scientific-mm", "--seeds", "3", "--only_seeds", "2022"])
    assert args.seed_list == [2020, 2021, 2022] and args.run_seeds == [2022]
    with pytest.raises(SystemExit):
        bench.parse_args(["-d", "Scientific-mm", "--seeds", "2", "--only_seeds", "2022"])


@pytest.mark.slow
def test_transfer_table_pretrains_on_another_domain(tmp_path):
    """--pretrain_on: pre-training on another dataset, every row on the full target; MISSRec's pre-trained rows
    fine-tune the adapters only or (all weights) everything; results.md reports the transfer target."""
    write_dataset(tmp_path / "data", "Other", n_items=50, n_users=40, dim=16, seed=3)
    tiny_with_ties(tmp_path / "data")
    rows = ["MISSRec scratch inductive", "MISSRec pre-trained inductive", "MISSRec pre-trained (all weights) inductive"]
    args = [a for a in bench_args(tmp_path) if not a.startswith("--rows")]
    out = bench.main([*args, "--pretrain_on", "Other", "--rows=" + ",".join(rows)])
    assert out["counts"] == {"ok": 3} and out["launched"] == 4  # + one pre-training
    data = json.loads((tmp_path / "results" / "results.json").read_text())
    assert data["split"] is None and data["datasets"]["pre"] == "Other"
    [pre] = data["pretraining"]
    assert pre["dataset"] == "Other" and pre["kind"] == "missrec"
    runs = {r["row"]: r for r in data["runs"]}
    assert set(runs) == set(rows) and {r["table"] for r in runs.values()} == {"transfer"}
    assert {r["dataset"] for r in runs.values()} == {"Tiny"}
    adapters, everything = runs[rows[1]], runs[rows[2]]
    assert adapters["pretrained_checkpoint"] == everything["pretrained_checkpoint"] == pre["checkpoint"]
    assert everything["settings"]["adapters_only"] is False and "adapters_only" not in adapters["settings"]
    assert everything["trainable_parameters"] > 5 * adapters["trainable_parameters"]
    text = (tmp_path / "results" / "results.md").read_text()
    assert "## Transfer: pre-trained on Other (other domains)" in text
    assert "## Transfer target: pre-trained MISSRec test NDCG@10 >= MISSRec from scratch" in text
    assert "| transfer | MISSRec pre-trained inductive" in text


def test_threads_must_be_a_positive_count(capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["-d", "X", "--threads=0"])
    assert "--threads: 0 is not a thread count" in capsys.readouterr().err
    assert bench.parse_args(["-d", "X", "--threads=2"])[0].threads == 2


def test_transfer_options_go_together():
    for argv in (["-d", "X", "--tables=transfer"], ["-d", "X", "--pretrain_on=Y", "--tables=full,pretrained"],
                 ["-d", "X", "--pretrain_data_path=/tmp"]):
        with pytest.raises(SystemExit):
            bench.parse_args(argv)
    args, _, _ = bench.parse_args(["-d", "X", "--pretrain_on=Y,Z"])
    assert args.tables == ["transfer"] and args.pretrain_data_path == args.data_path
    names = [row.name for row in bench.suite_rows(["transfer"])]
    assert len(names) == 11 and "MISSRec pre-trained (all weights) transductive" in names


@pytest.mark.parametrize("option, message", [
    ("--finetune.learning_rat=0.005", "unknown option 'learning_rat' (in --finetune.KEY): did you mean 'learning_rate'?"),
    ("--missrec.item_adapter=mo", "option 'item_adapter' (in --missrec.KEY): got 'mo', must be one of linear, moe"),
    ("--pretrain.epochs=0", "option 'epochs' (in --pretrain.KEY): got 0"),
    ("--hidden_size=30", "'hidden_size'=30 and 'n_heads'=4"),  # against the props default of n_heads
    ("--sasrec.n_heads=7", "'hidden_size'=300 and 'n_heads'=7"),  # against props/bench.yaml's SASRec settings
    ("--pretrain.unfreeze=[item_decoder]", "option 'unfreeze' (in --pretrain.KEY) only applies to fine-tuning"),
    ("--pretrain.adapters_only=true", "Give it as --finetune.adapters_only"),
])
def test_overrides_are_checked_before_any_run(option, message, capsys):
    """A bad --key=value ends the invocation at once, naming the option and its scope - not hours later in the
    fine-tuning that follows a pre-training."""
    with pytest.raises(SystemExit) as exit_:
        bench.parse_args(["-d", "X", "--pretrain_on=Y", option])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_model_scoped_overrides_leave_the_other_models_runs_alone(tmp_path):
    """--missrec.key=value reaches MISSRec's pre-training and rows only: the other models' settings and run hashes
    stay those of an invocation without it, and MISSRec's equal those of --pretrain.key + --finetune.key."""
    tiny_with_ties(tmp_path / "data")

    def suite(*extra):
        return bench.make_suite(*bench.parse_args(bench_args(tmp_path, "--finetune.learning_rate=0.005", *extra)))

    plain, scoped = suite(), suite("--missrec.item_adapter=moe")
    staged = suite("--pretrain.item_adapter=moe", "--finetune.item_adapter=moe")
    assert scoped.settings("missrec", "finetune")["item_adapter"] == "moe"
    assert scoped.settings("missrec", "pretrain")["item_adapter"] == "moe"
    assert scoped.settings("missrec", "finetune")["learning_rate"] == 0.005  # the stage's override still applies
    assert scoped.settings("unisrec", "finetune") == plain.settings("unisrec", "finetune")
    assert "item_adapter" not in scoped.settings("sasrec", "finetune")
    assert bench.pretrain_key(scoped, "unisrec") == bench.pretrain_key(plain, "unisrec")
    assert bench.pretrain_key(scoped, "missrec") != bench.pretrain_key(plain, "missrec")
    assert bench.pretrain_key(scoped, "missrec") == bench.pretrain_key(staged, "missrec")
    assert scoped.results.data["settings"]["model_overrides"] == {"missrec": {"item_adapter": "moe"}}


def test_fine_tuning_options_leave_the_pre_training_alone(tmp_path):
    """What fine-tuning freezes (adapters_only, unfreeze) reaches the fine-tuning rows only: given to every run or to
    MISSRec's, it neither changes the pre-training's settings nor its hash (an unfreeze probe reuses the checkpoint),
    while the rows it applies to get a run hash of their own."""
    tiny_with_ties(tmp_path / "data")

    def suite(*extra):
        return bench.make_suite(*bench.parse_args(bench_args(tmp_path, *extra)))

    plain = suite()
    for probe in (suite("--missrec.unfreeze=[item_decoder]"), suite("--adapters_only=true")):
        assert bench.pretrain_key(probe, "missrec") == bench.pretrain_key(plain, "missrec")
        assert not set(FINETUNE_ONLY_OPTIONS) & set(probe.settings("missrec", "pretrain"))
        assert probe.settings("missrec", "finetune") != plain.settings("missrec", "finetune")
    scoped = suite("--missrec.unfreeze=[item_decoder]")
    assert scoped.settings("missrec", "finetune")["unfreeze"] == ["item_decoder"]
    assert "unfreeze" not in scoped.settings("unisrec", "finetune")


def test_a_missing_dataset_folder_is_one_error_line(tmp_path, capsys):
    from missrec_recbole.command import run_command

    tiny_with_ties(tmp_path / "data")
    for argv, message in ((["-d", "Nope"], "there is no folder"),
                          (["-d", "Tiny", "--pretrain_on=Tiny,Nope"], "give --pretrain_data_path the folder")):
        code = run_command(bench.main, [*argv, f"--data_path={tmp_path / 'data'}", f"--out_dir={tmp_path / 'out'}",
                                        f"--work_dir={tmp_path / 'work'}", "--no_progress"])
        err = capsys.readouterr().err
        assert code == 1 and err.startswith("error: dataset 'Nope'") and message in err
        assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_run_hash_follows_props_values_not_their_layout(monkeypatch, tmp_path):
    """Comments or key order in props/ leave the run hash alone; a changed default changes it."""
    import shutil

    from missrec_recbole import config

    for path in config.PROPS.glob("*.yaml"):
        shutil.copy(path, tmp_path / path.name)
    monkeypatch.setattr(config, "PROPS", tmp_path)
    before = {kind: bench.config_hash(bench.effective_props(kind, "finetune")) for kind in bench.RUN_KINDS}
    finetune = tmp_path / "finetune.yaml"
    lines = finetune.read_text().splitlines()
    finetune.write_text("\n".join(["# a new comment", *reversed([l for l in lines if not l.startswith("#")])]) + "\n")
    assert before == {kind: bench.config_hash(bench.effective_props(kind, "finetune")) for kind in bench.RUN_KINDS}
    finetune.write_text(finetune.read_text() + "temperature: 0.1\n")
    after = {kind: bench.config_hash(bench.effective_props(kind, "finetune")) for kind in bench.RUN_KINDS}
    assert all(after[kind] != before[kind] for kind in bench.RUN_KINDS)


def test_valid_curves_compare_runs_at_equal_epoch_budgets(tmp_path, capsys):
    """benchmarks/valid_curves.py: valid NDCG@10 per epoch from each run's log (a resumed log's later epochs
    included), best within 10/20/25 epochs, the seed and changed setting in the label, unfinished runs marked."""
    spec = importlib.util.spec_from_file_location("valid_curves", bench.PACKAGE_ROOT / "benchmarks" / "valid_curves.py")
    curves = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(curves)
    scores = [0.01 * (i % 7) + 0.001 * i for i in range(30)]
    log = tmp_path / "run.log"
    lines = [f"30 Nov 12:00    INFO  epoch {i} evaluating [time: 4.29s, valid_score: {s:.6f}]" for i, s in
             enumerate(scores)]
    log.write_text("\n".join(lines[:12] + ["INFO  Resumed from x: continuing at epoch 12"] + lines[12:]) + "\n")
    results = tmp_path / "results.json"
    settings = {"overrides": {}, "finetune_overrides": {"epochs": 25, "lr": 0.005},
                "model_overrides": {"missrec": {"item_adapter": "moe"}}}
    run = {"row": "MISSRec scratch inductive", "kind": "missrec", "seed": 2021, "status": "ok", "log": str(log)}
    other = {**run, "row": "UniSRec scratch inductive", "kind": "unisrec"}
    results.write_text(json.dumps({"settings": settings, "runs": [run, other]}))
    rows = curves.main([str(results), "--extra", f"stopped={log}", "--out", str(tmp_path / "out.json")])
    assert [row["label"] for row in rows] == ["MISSRec scratch inductive, seed 2021, item_adapter=moe, lr=0.005",
                                              "UniSRec scratch inductive, seed 2021, lr=0.005", "stopped"]
    first = rows[0]
    assert first["curve"] == [float(f"{s:.6f}") for s in scores]
    assert first["best_in_10"] == pytest.approx(max(scores[:10]), abs=1e-6)
    assert first["best_in_25"] == pytest.approx(max(scores[:25]), abs=1e-6)
    assert first["best_epoch"] == max(range(30), key=scores.__getitem__) and first["finished"]
    assert not rows[2]["finished"] and "stopped" in capsys.readouterr().out
    assert json.loads((tmp_path / "out.json").read_text())["runs"][2]["label"] == "stopped"


def test_an_interrupted_run_continues_from_its_resume_file(tmp_path):
    """launch chooses each run's resume file (work_dir/saved/<run>-resume.pth) and gives it to the worker; when an
    earlier attempt left it, the worker also gets it as ``resume`` and the log goes on. A run interrupted under the
    code that named its resume file only in the log (aecb238) continues from that file; a first attempt starts
    afresh."""
    import types

    legacy = tmp_path / "MISSRec-Office-inductive-Nov-30-2026_12-16-24-24345-0-resume.pth"
    later = tmp_path / "other-resume.pth"
    log = tmp_path / "row.log"
    log.write_text(f"INFO  Resume checkpoint (rewritten every epoch): {legacy}\nINFO  epoch 0 evaluating\n")
    assert bench.runner.legacy_resume_file(log) is None  # not on disk: start afresh
    legacy.write_bytes(b"x")
    assert bench.runner.legacy_resume_file(log) == str(legacy)
    with open(log, "a") as handle:  # a resumed attempt kept writing the file it continued
        handle.write(f"INFO  Resume checkpoint (rewritten every epoch): {later}\n"
                     f"INFO  Resumed from {legacy}: continuing at epoch 3; this run keeps writing {legacy}\n")
    assert bench.runner.legacy_resume_file(log) == str(legacy)
    assert bench.runner.legacy_resume_file(tmp_path / "first-attempt.log") is None

    seen = tmp_path / "seen.json"
    copy = f"import shutil, sys; shutil.copy(sys.argv[1], {str(seen)!r}); sys.exit(3)"
    real = bench.runner.worker_command
    bench.runner.worker_command = lambda spec, out: [sys.executable, "-c", copy, str(spec)]
    try:
        suite = types.SimpleNamespace(launched=0, log_dir=tmp_path, progress=lambda line: None,
                                      args=types.SimpleNamespace(verbose=False, work_dir=tmp_path, threads=None))
        chosen = tmp_path / "saved" / "row-resume.pth"
        assert bench.runner.resume_file_of(suite, "row") == chosen
        with pytest.raises(RuntimeError, match="exit code 3"):
            bench.launch(suite, {"kind": "missrec"}, "row")
        spec = json.loads(seen.read_text())
        assert spec["resume"] == str(legacy) and spec["resume_file"] == str(chosen)  # continued, into the new name
        assert "epoch 0 evaluating" in log.read_text()  # appended, not overwritten
        chosen.parent.mkdir()
        chosen.write_bytes(b"x")  # that attempt wrote the chosen file before it stopped: it wins over the log
        with pytest.raises(RuntimeError):
            bench.launch(suite, {"kind": "missrec"}, "row")
        assert json.loads(seen.read_text())["resume"] == str(chosen)
        with pytest.raises(RuntimeError):
            bench.launch(suite, {"kind": "missrec"}, "fresh")
        spec = json.loads(seen.read_text())
        assert "resume" not in spec and spec["resume_file"] == str(tmp_path / "saved" / "fresh-resume.pth")
    finally:
        bench.runner.worker_command = real


def test_a_finished_run_deletes_its_model_and_resume_files(tmp_path):
    files = [tmp_path / name for name in ("model.pth", "run-resume.pth", "legacy-resume.pth")]
    for path in files:
        path.write_bytes(b"x")
    record = dict(zip(("model_file", "resume_file", "resumed_from"), map(str, files)))
    bench.runner._remove_model(record, keep=False)
    assert not any(path.exists() for path in files)
    assert record["model_file"] is None and record["resume_file"] is None


def test_the_worker_passes_the_resume_files_to_every_resumable_run(monkeypatch):
    from missrec_recbole.bench import worker
    seen = []
    record = lambda *a, **kw: seen.append((kw.get("resume"), kw.get("resume_file")))  # noqa: E731
    monkeypatch.setattr(worker.quick_start, "finetune", lambda *a, **kw: record(*a, **kw) or {})
    monkeypatch.setattr(worker.quick_start, "pretrain", lambda *a, **kw: record(*a, **kw) or ["c"])
    monkeypatch.setattr(worker, "unisrec", lambda *a, **kw: record(*a, **kw) or {"checkpoint": "c"})
    spec = {"dataset": "D", "pretrained": None, "mode": "inductive", "config_files": [], "config_dict": {},
            "show_progress": False, "resume": "r.pth", "resume_file": "w.pth"}
    for run in (worker.run_missrec, worker.pretrain_missrec, worker.run_unisrec, worker.pretrain_unisrec):
        run(spec)
    assert seen == [("r.pth", "w.pth")] * 4


def _record(row, seed, settings, config_hash, ndcg, date="2026-12-01 10:00:00 UTC"):
    kind = row.split()[0].lower()
    metrics = {"recall@10": ndcg * 2, "recall@50": ndcg * 4, "ndcg@10": ndcg, "ndcg@50": ndcg * 1.5}
    return {"key": f"transfer|{row}|{seed}|{config_hash}", "table": "transfer", "row": row, "seed": seed, "kind": kind,
            "settings": settings, "config_hash": config_hash, "date": date, "status": "ok", "command": "bench",
            "machine": {"cores": 2}, "code": "abc", "valid": metrics, "test": metrics, "peak_rss_bytes": 2**30}


def test_report_gives_each_option_set_of_a_row_its_own_line():
    """Runs of one row with different options (e.g. --missrec.item_adapter=moe after the defaults) are two
    labelled lines, not the latest hiding the other; a pre-trained line is compared with scratch under its own
    options; within one option set a stale config hash (props changed) is still hidden."""
    from missrec_recbole.bench.report import group_runs, results_markdown

    moe = {"item_adapter": "moe"}
    runs = [_record("MISSRec scratch inductive", 2020, {}, "linear1", 0.03),
            _record("MISSRec scratch inductive", 2021, {}, "linear1", 0.04),
            _record("MISSRec scratch inductive", 2020, moe, "moe0", 0.01, date="2026-11-01 10:00:00 UTC"),
            _record("MISSRec scratch inductive", 2020, moe, "moe1", 0.06),
            _record("MISSRec pre-trained inductive", 2020, moe, "moe2", 0.05),
            _record("UniSRec scratch inductive", 2020, {}, "uni", 0.055)]
    data = {"runs": runs, "datasets": {"pre": "A", "eval": "B", "dataset": "B"}, "dataset": "B", "command": "bench",
            "updated": "now", "machine": {}, "code": "abc", "seeds": [2020], "protocol": "protocol"}
    rows = group_runs(data)["transfer"]
    assert [r["config_hash"] for r in rows["MISSRec scratch inductive"]] == ["linear1", "linear1"]
    assert [r["config_hash"] for r in rows["MISSRec scratch inductive (item_adapter=moe)"]] == ["moe1"]
    assert [r["config_hash"] for r in rows["MISSRec pre-trained inductive (item_adapter=moe)"]] == ["moe2"]
    assert "UniSRec scratch inductive" in rows and rows["SASRec"] == []  # UniSRec has one option set: plain name
    text = results_markdown(data)
    assert "| MISSRec scratch inductive | 2 | 0.0700 ± 0.0141 | 0.0350 ± 0.0071 |" in text
    assert "| MISSRec scratch inductive (item_adapter=moe) | 1 | 0.1200 | 0.0600 |" in text
    assert "MISSRec scratch inductive (item_adapter=moe) 0.0600 | UniSRec scratch inductive 0.0550 | +9.1% | yes" in text
    assert "| transfer | MISSRec pre-trained inductive (item_adapter=moe) 0.0500 | scratch 0.0600 | -16.7% | no |" in text
    assert "MISSRec pre-trained inductive 0." not in text  # no linear pre-trained run: no line, no comparison
    runs.append(_record("MISSRec pre-trained inductive", 2020, {}, "linear2", 0.02))
    runs.append(_record("MISSRec pre-trained (all weights) inductive", 2020, {"adapters_only": False}, "all", 0.04))
    text = results_markdown(data)
    assert "| transfer | MISSRec pre-trained inductive (item_adapter=moe) 0.0500 | scratch 0.0600 | -16.7% | no |" in text
    assert "| transfer | MISSRec pre-trained inductive 0.0200 | scratch 0.0350 | -42.9% | no |" in text
    assert "| transfer | MISSRec pre-trained (all weights) inductive 0.0400 | scratch 0.0350 | +14.3% | yes |" in text
    # an option a row also sets itself still tells the other rows' sets apart (no two sets under one label)
    runs.append(_record("MISSRec scratch inductive", 2020, {"adapters_only": True}, "frozen", 0.01))
    rows = group_runs(data)["transfer"]
    assert [r["config_hash"] for r in rows["MISSRec scratch inductive (adapters_only=True)"]] == ["frozen"]
    assert [r["config_hash"] for r in rows["MISSRec scratch inductive"]] == ["linear1", "linear1"]
    assert [r["config_hash"] for r in rows["MISSRec pre-trained (all weights) inductive"]] == ["all"]


def test_report_measures_against_a_sasrec_line_with_options_when_there_is_no_plain_one():
    """Two SASRec option sets, neither the props/ defaults: the cost table still has a SASRec line to divide by
    (the first), instead of silently leaving the comparison out."""
    from missrec_recbole.bench.report import group_runs, results_markdown, sasrec_line

    runs = [_record("SASRec", 2020, {"learning_rate": 0.01}, "s1", 0.03),
            _record("SASRec", 2020, {"learning_rate": 0.005}, "s2", 0.02),
            _record("MISSRec scratch inductive", 2020, {}, "m", 0.05)]
    for run, seconds in zip(runs, (100.0, 120.0, 30.0)):
        run.update(train_seconds_per_epoch=seconds, train_cpu_seconds_per_epoch=seconds, seconds_per_epoch=seconds)
    data = {"runs": runs, "datasets": {"pre": "A", "eval": "B", "dataset": "B"}, "dataset": "B", "command": "bench",
            "updated": "now", "machine": {}, "code": "abc", "seeds": [2020], "protocol": "protocol"}
    rows = group_runs(data)["transfer"]
    assert sasrec_line(rows) == "SASRec (learning_rate=0.01)"
    assert "| transfer | MISSRec scratch inductive | 30.00 | 100.00 | 0.30x | 0.30x | 0.30x |" in results_markdown(data)
    runs.append(_record("SASRec", 2021, {}, "s0", 0.03))
    assert sasrec_line(group_runs(data)["transfer"]) == "SASRec"


def test_target_tables_give_the_gain_an_interval_over_test_users():
    """With every run's per-case ranks, a target line gets the 95% paired-bootstrap interval of its gain, around
    the gain itself (per-case NDCG@10 averaged over seeds) and narrower with more test users; a line whose runs
    lack ranks, or ranks on other test cases, gets none."""
    from missrec_recbole.bench.report import gain_interval, results_markdown
    from missrec_recbole.evaluation import case_ndcg

    rng = np.random.default_rng(0)

    class Ranks:
        def __init__(self, cases):
            self.by_key = cases

        def cases(self, key):
            return self.by_key.get(key)

    def ranks_for(runs, n_cases, better):
        items = np.arange(n_cases)
        cases = {}
        for run in runs:
            rank = rng.integers(1, 40, size=n_cases)
            if run["row"].startswith("MISSRec pre-trained"):
                rank = np.maximum(rank - better, 1)  # the pre-trained line ranks targets higher
            cases[run["key"]] = {"item": items, "rank": rank}
        return Ranks(cases)

    runs = [_record("MISSRec scratch inductive", seed, {}, "s", 0.05) for seed in (2020, 2021)]
    runs += [_record("MISSRec pre-trained inductive", seed, {}, "p", 0.06) for seed in (2020, 2021)]
    scratch, pre = runs[:2], runs[2:]
    small, large = ranks_for(runs, 400, 3), ranks_for(runs, 40000, 3)
    for ranks in (small, large):
        seed_mean = [np.mean([case_ndcg(ranks.cases(r["key"])["rank"], 10) for r in side]) for side in (pre, scratch)]
        low, high = gain_interval(pre, scratch, ranks)
        assert low < seed_mean[0] / seed_mean[1] - 1 < high and low > 0  # a real, consistent gain
    assert np.diff(gain_interval(pre, scratch, large)) < np.diff(gain_interval(pre, scratch, small)) / 3
    data = {"runs": runs, "datasets": {"pre": "A", "eval": "B", "dataset": "B"}, "dataset": "B", "command": "bench",
            "updated": "now", "machine": {}, "code": "abc", "seeds": [2020], "protocol": "protocol"}
    low, high = gain_interval(pre, scratch, small)
    assert f"| +20.0% | yes | [{low:+.1%}, {high:+.1%}] |" in results_markdown(data, small)
    assert "| +20.0% | yes | – |" in results_markdown(data)  # no ranks.npz
    del small.by_key[pre[1]["key"]]
    assert gain_interval(pre, scratch, small) is None  # one seed without ranks: the seed mean is not covered
    assert gain_interval(pre, scratch, Ranks({r["key"]: {"item": np.arange(5) + (r in pre), "rank": np.ones(5)}
                                              for r in runs})) is None  # other test cases: nothing to pair


def test_report_names_the_options_every_run_of_a_model_shares():
    """Options no line label shows because every run of the model has them (all MISSRec runs with
    item_adapter=moe) are stated once above the tables; the bench's own SASRec settings are not."""
    from missrec_recbole.bench.report import results_markdown, shared_options
    from missrec_recbole.bench.settings import SASREC_SETTINGS

    moe = {"item_adapter": "moe"}
    runs = [_record("MISSRec scratch inductive", 2020, {**moe, "epochs": 5}, "m", 0.05),
            _record("MISSRec pre-trained inductive", 2020, {**moe, "epochs": 7}, "p", 0.05),
            _record("MISSRec pre-trained (all weights) inductive", 2020, {**moe, "adapters_only": False}, "a", 0.05),
            _record("SASRec", 2020, dict(SASREC_SETTINGS), "s", 0.03),
            _record("UniSRec scratch inductive", 2020, {}, "u", 0.04)]
    data = {"runs": runs, "datasets": {"pre": "A", "eval": "B", "dataset": "B"}, "dataset": "B", "command": "bench",
            "updated": "now", "machine": {}, "code": "abc", "seeds": [2020], "protocol": "protocol"}
    assert shared_options(data) == {"MISSRec": moe}
    assert "Options beyond props/ given to every run of a model: MISSRec item_adapter=moe." in results_markdown(data)
    runs[3]["settings"]["learning_rate"] = 0.01
    assert shared_options(data) == {"MISSRec": moe, "SASRec": {"learning_rate": 0.01}}


def test_long_tail_splits_each_line_and_gain_by_target_frequency(tmp_path, capsys):
    """benchmarks/long_tail.py: per group of target training frequencies, each line's seed-averaged Recall@10 and
    NDCG@10 from ranks.npz and the pre-trained line's gain over scratch with an interval (an unbounded end: null in
    the JSON); a missing train file is one error naming it and the flag."""
    from missrec_recbole.bench.store import Results
    from missrec_recbole.evaluation import case_ndcg

    spec = importlib.util.spec_from_file_location("long_tail", bench.PACKAGE_ROOT / "benchmarks" / "long_tail.py")
    long_tail = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(long_tail)
    data_dir = tmp_path / "data" / "B"
    data_dir.mkdir(parents=True)
    train_targets = [1] + [2] * 3 + [3] * 10  # item 1 seen once, item 2 three times, item 3 ten times
    (data_dir / "B.train.inter").write_text("user_id:token\titem_id_list:token_seq\titem_id:token\n" + "".join(
        f"{u}\t0\t{item}\n" for u, item in enumerate(train_targets)))
    items = np.tile(np.array([1, 2, 3]), 200)
    header = {"datasets_paths": {"transfer": {"name": "B", "path": str(tmp_path / "data")}}}
    out = Results(tmp_path / "out", header)
    rng = np.random.default_rng(1)
    ranks = {}
    for row, better in (("MISSRec scratch inductive", {1: 0, 3: 4}), ("MISSRec pre-trained inductive", {1: 4, 3: 0})):
        for seed in (2020, 2021):
            rank = rng.integers(1, 12, size=len(items))
            rank = np.maximum(rank - np.array([better.get(int(i), 0) for i in items]), 1)
            record = _record(row, seed, {}, "h", 0.05)
            ranks.setdefault(row, []).append(rank)
            out.put("runs", record, {"item": items, "rank": rank.astype(np.int32)})
    result = long_tail.long_tail(tmp_path / "out", [2, 5])
    groups = {g["target_frequency"]: g for g in result["groups"]}
    assert list(groups) == ["all", "0-2", "3-5", "6-10"] and groups["all"]["cases"] == 600
    rare = np.isin(items, [1])
    expected = np.mean([case_ndcg(r, 10)[rare].mean() for r in ranks["MISSRec pre-trained inductive"]])
    assert groups["0-2"]["lines"]["MISSRec pre-trained inductive"]["ndcg@10"] == pytest.approx(expected)
    (rare_gain,), (frequent_gain,) = groups["0-2"]["pre-trained vs scratch"], groups["6-10"]["pre-trained vs scratch"]
    assert rare_gain["scratch"] == "MISSRec scratch inductive"
    assert rare_gain["ndcg@10 gain"] > 0 and rare_gain["interval"][0] > 0  # pre-training pays on rare targets
    assert frequent_gain["ndcg@10 gain"] < 0 and frequent_gain["interval"][1] < 0  # and costs on frequent ones
    no_case = long_tail.long_tail(tmp_path / "out", [2, 5, 7])  # no target is seen 6-7 times: no such group
    assert [g["target_frequency"] for g in no_case["groups"]] == ["all", "0-2", "3-5", "8-10"]
    assert long_tail.main([str(tmp_path / "out"), "--edges", "2,5", "--out", str(tmp_path / "lt.json")]) == 0
    assert json.loads((tmp_path / "lt.json").read_text())["groups"][1]["cases"] == 200
    assert "targets seen 0-2 times in training: 200 test cases" in capsys.readouterr().out
    # scratch never hits the rarest targets: that gain has no upper bound, written as null (strict JSON)
    never = Results(tmp_path / "never", header)
    for row, rank in (("MISSRec scratch inductive", np.where(items == 1, 50, 1)),
                      ("MISSRec pre-trained inductive", ranks["MISSRec pre-trained inductive"][0])):
        never.put("runs", _record(row, 2020, {}, "h", 0.05), {"item": items, "rank": rank.astype(np.int32)})
    assert long_tail.main([str(tmp_path / "never"), "--edges", "2,5", "--out", str(tmp_path / "lt.json")]) == 0
    strict = json.loads((tmp_path / "lt.json").read_text(), parse_constant=lambda name: pytest.fail(name))
    never_hit = strict["groups"][1]["pre-trained vs scratch"][0]
    assert never_hit["interval"][1] is None and never_hit["ndcg@10 gain"] is None
    assert long_tail.relative_gain(0.0, 0.0) == 0.0 and long_tail.relative_gain(0.2, 0.1) == pytest.approx(1.0)
    assert "unbounded]" in capsys.readouterr().out
    (data_dir / "B.train.inter").unlink()
    with pytest.raises(long_tail.InputError, match=r"B\.train\.inter not found: give --data_path"):
        long_tail.long_tail(tmp_path / "out", [2, 5])


def test_gain_interval_is_unbounded_where_the_compared_line_never_hits():
    """A group of cases where the compared line scores 0 in (nearly) every resample has no finite upper end:
    the interval says so (inf) instead of dividing by a tiny number."""
    from missrec_recbole.bench.report import gain_interval

    runs = [_record("MISSRec pre-trained inductive", 2020, {}, "p", 0.1), _record("MISSRec scratch inductive", 2020, {}, "s", 0.0)]
    ranks_of = {runs[0]["key"]: np.r_[np.full(3, 1), np.full(17, 50)], runs[1]["key"]: np.r_[np.full(1, 1), np.full(19, 50)]}

    class Ranks:
        def cases(self, key):
            return {"item": np.arange(20), "rank": ranks_of[key]}

    low, high = gain_interval(runs[:1], runs[1:], Ranks())
    assert np.isfinite(low) and high == np.inf  # one hit in 20 for scratch: some resamples have none
    assert np.isfinite(gain_interval(runs[:1], runs[:1], Ranks())).all()
