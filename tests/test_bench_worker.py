"""The bench's runs: the tie rule SASRec and MISSRec share, metrics from ranks, resume files of runs."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from missrec_recbole import bench
from tests.conftest import write_dataset


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
