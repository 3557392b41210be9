"""Resume: an interrupted run continues exactly; a killed pre-training resumes from its last checkpoint."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from recbole.data import data_preparation
from recbole.utils import init_seed

from missrec_recbole.data import MISSRecDataset
from missrec_recbole.tools.demo import ensure_demo_dataset
from missrec_recbole.model import MISSRec
from missrec_recbole.trainer import CheckpointError, MISSRecTrainer, read_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _trainer(tiny_config, epochs, stage="finetune", **extra):
    if stage == "pretrain":
        extra.update(mode="inductive", loss_candidates="batch")
    config = tiny_config(stage=stage, epochs=epochs, stopping_step=100, **extra)
    init_seed(config["seed"], config["reproducibility"])
    dataset = MISSRecDataset(config)
    train, valid, test = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    model = MISSRec(config, dataset)
    return MISSRecTrainer(config, model), train, valid, test


def _params(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


@pytest.mark.parametrize("dpc_mode", ["exact", "approx"])
def test_two_plus_two_epochs_equal_four(tiny_config, dpc_mode):
    straight, train, valid, test = _trainer(tiny_config, 4, dpc_mode=dpc_mode)
    straight.fit(train, valid, saved=True)
    expected, expected_result = _params(straight), straight.evaluate(test, load_best_model=True)

    first, train, valid, _ = _trainer(tiny_config, 2, dpc_mode=dpc_mode)
    first.fit(train, valid, saved=True)
    assert read_checkpoint(first.resume_file)["next_epoch"] == 2
    if dpc_mode == "approx":
        assert int(read_checkpoint(first.resume_file)["other_parameter"]["dpc_refreshes"]) == 2

    resumed, train, valid, test = _trainer(tiny_config, 4, dpc_mode=dpc_mode)
    resumed.resume_checkpoint(first.resume_file, train)
    resumed.fit(train, valid, saved=True)
    assert sorted(resumed.train_loss_dict) == [0, 1, 2, 3]
    for name, value in _params(resumed).items():
        assert torch.allclose(value, expected[name], atol=1e-6), name
    assert resumed.best_valid_score == straight.best_valid_score
    assert resumed.evaluate(test, load_best_model=True) == expected_result


def test_resume_restores_frozen_parameters(tiny_config):
    trainer, train, valid, _ = _trainer(tiny_config, 1)
    trainer.model.freeze_for_finetune()
    trainer.optimizer = trainer._build_optimizer(params=[p for p in trainer.model.parameters() if p.requires_grad])
    trainer.fit(train, valid, saved=False)
    fresh, train, _, _ = _trainer(tiny_config, 2)
    fresh.resume_checkpoint(trainer.resume_file, train)
    assert fresh.model.trainable_parameters() == trainer.model.trainable_parameters()


def test_not_a_resume_checkpoint(tiny_config, tmp_path):
    trainer, train, _, _ = _trainer(tiny_config, 1, stage="pretrain")
    final = trainer.pretrain(train)[-1]
    with pytest.raises(CheckpointError, match="not a resume checkpoint"):
        trainer.resume_checkpoint(final, train)


@pytest.mark.slow
def test_sigkill_during_pretraining_then_resume(tmp_path):
    ensure_demo_dataset(tmp_path / "data", ["Demo-A"])
    args = [sys.executable, str(ROOT / "run_missrec.py"), "--stage=pretrain", "-d", "Demo-A",
            f"--data_path={tmp_path / 'data'}", f"--checkpoint_dir={tmp_path / 'saved'}", "--epochs=2", "--save_step=1",
            "--hidden_size=32", "--inner_size=64", "--n_heads=2", "--train_batch_size=512", "--state=WARNING"]
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 900
    resume_file = None
    while time.time() < deadline and resume_file is None:
        time.sleep(0.5)
        for path in (tmp_path / "saved").glob("*-resume.pth"):
            if read_checkpoint(path)["next_epoch"] >= 1:
                resume_file = path
        assert process.poll() is None, "pre-training ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert resume_file is not None
    epoch1 = tmp_path / "saved" / "MISSRec-Demo-A-inductive-epoch1.pth"
    assert read_checkpoint(epoch1)["epoch"] == 1  # the last checkpoint written before the kill loads
    out = subprocess.run(args + [f"--resume={resume_file}"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    final = Path(out.stdout.strip().splitlines()[-1])
    assert final.name == "MISSRec-Demo-A-inductive-epoch2.pth" and read_checkpoint(final)["epoch"] == 2


def test_resume_restores_the_warm_start_quantizer(tiny_config):
    """Approximate DPC-KNN warm-starts from the previous refresh's IVF centroids: they travel with the map."""
    trainer, train, valid, _ = _trainer(tiny_config, 2, dpc_mode="approx")
    trainer.fit(train, valid, saved=True)
    before = trainer.model._dpc_state
    assert before is not None and before.centroids is not None and before.refreshes == 2

    fresh, train, _, _ = _trainer(tiny_config, 4, dpc_mode="approx")
    assert fresh.model._dpc_state is None
    fresh.resume_checkpoint(trainer.resume_file, train)
    after = fresh.model._dpc_state
    assert after.refreshes == before.refreshes
    assert (after.centroids == before.centroids).all()


def test_recbole_style_resume_and_a_resume_file_chosen_by_the_caller(tiny_config, tmp_path):
    """RecBole's call, ``resume_checkpoint(file)`` then ``fit``, continues exactly too (the data check and the random
    states wait for fit); a resume file the caller chose is written, and kept after resuming from another file."""
    straight, train, valid, _ = _trainer(tiny_config, 3)
    straight.fit(train, valid, saved=True)
    first, train, valid, _ = _trainer(tiny_config, 1)
    first.resume_file = tmp_path / "chosen-resume.pth"
    first.fit(train, valid, saved=True)
    assert first.resume_file == str(tmp_path / "chosen-resume.pth")
    assert read_checkpoint(first.resume_file)["next_epoch"] == 1

    resumed, train, valid, _ = _trainer(tiny_config, 3)
    resumed.resume_file = tmp_path / "next-resume.pth"
    resumed.resume_checkpoint(first.resume_file)
    resumed.fit(train, valid, saved=True)
    assert read_checkpoint(tmp_path / "next-resume.pth")["next_epoch"] == 3
    for name, value in _params(resumed).items():
        assert torch.allclose(value, _params(straight)[name], atol=1e-6), name

    other, train, _, _ = _trainer(tiny_config, 3, n_heads=4)  # other options: refused at once, data or not
    with pytest.raises(CheckpointError, match="belongs to another run"):
        other.resume_checkpoint(first.resume_file)


def test_a_resume_file_of_other_data_is_refused_when_training_starts(tiny_config, tmp_path):
    """Without ``train_data`` the dataset's files are compared when fit starts, before anything is written."""
    import dataclasses

    first, train, valid, _ = _trainer(tiny_config, 1)
    first.fit(train, valid, saved=False)
    resumed, train, valid, _ = _trainer(tiny_config, 2)
    resumed.resume_checkpoint(first.resume_file)
    train._dataset.files = dataclasses.replace(train._dataset.files, fingerprint="other files")
    before = read_checkpoint(first.resume_file)["next_epoch"]
    with pytest.raises(CheckpointError, match="data_fingerprint"):
        resumed.fit(train, valid, saved=False)
    assert read_checkpoint(first.resume_file)["next_epoch"] == before


# The key sets of the three checkpoint kinds as commit aecb238 wrote and read them: files load in both directions.
LAYOUTS = {
    "trained": {"config", "epoch", "cur_step", "best_valid_score", "state_dict", "other_parameter", "optimizer"},
    "resume": {"format", "identity", "pretrain_prefix", "config", "next_epoch", "cur_step", "best_valid_score",
               "best_valid_result", "train_loss_dict", "saved_model_file", "trainable", "state_dict",
               "other_parameter", "optimizer", "rng"},
    "pretrained": {"format", "epoch", "config", "state_dict"},
}


def test_checkpoint_layouts_are_those_of_earlier_versions(tiny_config):
    from missrec_recbole.trainer.checkpoint import FORMAT, RESUME_FORMAT, Checkpoint

    trainer, train, valid, _ = _trainer(tiny_config, 1)
    trainer.fit(train, valid, saved=True)
    pretrainer, pretrain_data, _, _ = _trainer(tiny_config, 1, stage="pretrain")
    (pretrained,) = pretrainer.pretrain(pretrain_data)
    files = {"trained": trainer.saved_model_file, "resume": trainer.resume_file, "pretrained": pretrained}
    for kind, path in files.items():
        checkpoint = Checkpoint.read(path)
        assert checkpoint.kind == kind and set(checkpoint.content) == LAYOUTS[kind], kind
        assert isinstance(checkpoint.config, dict) and checkpoint.config["model"] == "MISSRec"
    assert (read_checkpoint(files["pretrained"])["format"], read_checkpoint(files["resume"])["format"]) == (
        FORMAT, RESUME_FORMAT) == ("missrec-recbole/1", "missrec-recbole-resume/2")
    assert read_checkpoint(files["trained"])["epoch"] == 0


def test_a_resume_file_from_before_an_option_existed_counts_as_its_old_behaviour():
    """Resume files written before item_adapter existed were linear: they resume a linear run, not a moe one; a model
    that does not read the option (UniSRec: None) is not affected."""
    from missrec_recbole.trainer.checkpoint import RESUME_FORMAT, Checkpoint

    older = Checkpoint("old-resume.pth", {"format": RESUME_FORMAT, "identity": {"model": "MISSRec", "hidden_size": 8}})
    older.check_run({"model": "MISSRec", "hidden_size": 8, "item_adapter": "linear"})
    with pytest.raises(CheckpointError, match="item_adapter 'linear' there, 'moe' here"):
        older.check_run({"model": "MISSRec", "hidden_size": 8, "item_adapter": "moe"})
    Checkpoint("old-resume.pth", {"format": RESUME_FORMAT, "identity": {"model": "UniSRec"}}).check_run(
        {"model": "UniSRec", "item_adapter": None})
