"""benchmarks/cold_start.py: the cold split, seeds across invocations, resumable models, metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from missrec_recbole.data import MISSRecDataset
from tests.conftest import benchmark_script
from tests.inference_helpers import _config


def _cold_start_module():
    return benchmark_script("cold_start")


def test_cold_split_removes_every_interaction_of_cold_items(tiny, tmp_path):
    cold_start = _cold_start_module()
    folder = tiny["root"] / "Tiny"
    cold = cold_start.choose_cold_items(folder, "Tiny", 0.1, seed=1)
    assert len(cold) == 4 and 5 not in cold  # 10% of the 39 used items; ITEM5 is never used
    assert np.array_equal(cold, cold_start.choose_cold_items(folder, "Tiny", 0.1, seed=1))
    name, stats = cold_start.make_cold_dataset(folder, "Tiny", tmp_path, cold)
    for split in ("train", "valid", "test"):
        rows = cold_start.read_rows(tmp_path / name / f"{name}.{split}.inter")
        assert rows and not {int(i) for _, h, t in rows for i in [*h, t]} & set(cold.tolist())
        originals = cold_start.read_rows(folder / f"Tiny.{split}.inter")
        assert stats[split]["kept"] == len(rows) == sum(1 for _, h, t in originals
                                                        if t not in cold and set(h) - set(cold.tolist()))
    config = _config(tmp_path, name)
    dataset = MISSRecDataset(config)
    assert not set(dataset.field2id_token["item_id"][1:].astype(int)) & set(cold.tolist())
    assert (tmp_path / name / f"{name}.feat1CLS").resolve() == (folder / "Tiny.feat1CLS").resolve()


def test_cold_start_seeds_add_up_across_invocations(tmp_path, monkeypatch):
    """Finished seeds (same settings) are skipped and kept, seeds run elsewhere are merged in, and a file from other
    settings is refused instead of overwritten."""
    cold_start = _cold_start_module()
    ran = []

    def fake_run_seed(args, overrides, seed, work):
        ran.append(seed)
        metrics = {m: seed / 10000 for m in ("recall@10", "ndcg@10", "recall@50", "ndcg@50")}
        groups = {g: metrics for g in ("cold_targets", "warm_targets", "all")}
        return {"seed": seed, "cold_test_cases": 3, "timings": {"cold_train_seconds": 1.0},
                "results": {**{m: groups for m in ("cold_model", "warm_model", "feature_knn")},
                            "random": {"recall@10": 0.1}}}

    monkeypatch.setattr(cold_start, "run_seed", fake_run_seed)
    monkeypatch.chdir(tmp_path)  # main() moves into its work dir; restored after the test
    out = tmp_path / "cold.json"
    common = ["-d", "Tiny", "--data_path", str(tmp_path), "--work_dir", str(tmp_path / "work"), "--out", str(out),
              "--epochs=2"]
    cold_start.main(common + ["--seeds", "1"])
    cold_start.main(common + ["--seeds", "2"])  # e.g. another invocation beside the first
    result = cold_start.main(common + ["--seeds", "1", "2", "3"])
    assert ran == [1, 2, 3] and result["seeds"] == [1, 2, 3]
    assert json.loads(out.read_text())["summary"]["cold_model"]["all"]["recall@10"]["mean"] == pytest.approx(0.0002)
    with pytest.raises(SystemExit, match="other settings.*pass another --out"):
        cold_start.main(common[:-1] + ["--epochs=3", "--seeds", "4"])
    assert ran == [1, 2, 3]


def test_cold_start_models_survive_a_stop(tmp_path, monkeypatch):
    """Inside a seed, a trained model is read back instead of retrained, a stopped one continues from the resume file
    it left (which goes once the model is done), and a record from other settings is refused."""
    from missrec_recbole import quick_start

    cold_start = _cold_start_module()
    calls = []

    def fake_finetune(dataset, config_files=None, config_dict=None, resume=None, resume_file=None):
        calls.append((dataset, resume))
        if dataset == "Tiny" and resume is None:  # the warm model's first attempt is stopped after an epoch
            Path(resume_file).write_bytes(b"state")
            raise KeyboardInterrupt
        return {"test": {"ndcg@10": 0.5}, "model_file": str(saved / f"{dataset}.pth"), "resume_file": resume_file}

    monkeypatch.setattr(quick_start, "finetune", fake_finetune)
    saved = tmp_path / "saved"
    saved.mkdir()
    settings = {"checkpoint_dir": str(saved), "seed": 1}
    cold = cold_start.train_once(tmp_path, "cold", "Tiny-cold", [], settings)
    with pytest.raises(KeyboardInterrupt):
        cold_start.train_once(tmp_path, "warm", "Tiny", [], settings)
    (resume,) = tmp_path.glob("*-resume.pth")
    # the next invocation: the cold model is read back, the warm one continues from its resume file
    assert cold_start.train_once(tmp_path, "cold", "Tiny-cold", [], settings) == json.loads(json.dumps(cold))
    warm = cold_start.train_once(tmp_path, "warm", "Tiny", [], settings)
    assert calls == [("Tiny-cold", None), ("Tiny", None), ("Tiny", str(resume))]
    assert warm["test"] == {"ndcg@10": 0.5} and not resume.exists()
    with pytest.raises(SystemExit, match="other settings: pass another --work_dir"):
        cold_start.train_once(tmp_path, "warm", "Tiny", [], {**settings, "seed": 2})


@pytest.mark.slow
def test_cold_start_runs_end_to_end_with_widths_from_the_files(tiny, tmp_path, monkeypatch):
    """The whole protocol on Tiny, no --text_dim/--image_dim given (the script reads the cold items' features with
    the widths the files give, as every run does)."""
    cold_start = _cold_start_module()
    monkeypatch.chdir(tmp_path)
    result = cold_start.main(["-d", "Tiny", "--data_path", str(tiny["root"]), "--work_dir", str(tmp_path / "work"),
                              "--out", str(tmp_path / "cold.json"), "--seeds", "1", "--epochs=1", "--hidden_size=32",
                              "--inner_size=64", "--n_heads=2", "--train_batch_size=64", "--eval_batch_size=64",
                              "--dpc_k=3", "--faiss_threads=1", "--state=ERROR", "--topk=[5,10]"])
    run = result["per_seed"][0]
    assert run["n_cold_items"] == 4 and run["cold_test_cases"] > 0
    for model in ("cold_model", "warm_model", "feature_knn"):
        assert 0 <= run["results"][model]["cold_targets"]["recall@10"] <= 1


def test_cold_start_metrics_match_brute_force():
    cold_start = _cold_start_module()
    scores = np.array([[0.0, 0.5, 0.5, 0.9, 0.1], [0.0, 0.2, 0.3, 0.3, 0.4]])
    valid = np.array([False, True, True, True, True])
    metrics = cold_start.pessimistic_metrics(scores, np.array([1, 3]), valid, ks=(1, 3))
    # row 0: items scoring >= 0.5 are 1, 2, 3 -> rank 3; row 1: 2, 3, 4 -> rank 3
    assert metrics["recall@1"] == 0 and metrics["recall@3"] == 1
    assert metrics["ndcg@3"] == pytest.approx(1 / np.log2(4))
