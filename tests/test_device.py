"""Devices: the device choice (``device`` option, RecBole's ``use_gpu``/``gpu_id``, torchrun), mixed precision, the
interest map following the model, and (marked ``gpu``, skipped without CUDA) every path on a GPU: fine-tuning,
pre-training, checkpoints across devices, inference, autocast, CPU-vs-GPU agreement."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from recbole.data import data_preparation

from missrec_recbole.compat import choose_device, plain
from missrec_recbole.config_schema import ConfigError
from missrec_recbole.data import MISSRecDataset
from missrec_recbole.model import MISSRec, UniSRec
from missrec_recbole.quick_start import build_config, checkpoint_config, finetune, pretrain
from missrec_recbole.trainer import MISSRecTrainer
from missrec_recbole.trainer.checkpoint import Checkpoint
from missrec_recbole.trainer.trainer import ONEDNN_CACHE_CAPACITY
from tests.conftest import benchmark_script, tiny_overrides

CUDA = torch.cuda.is_available()


def _gpu_check():
    return benchmark_script("gpu_check")


# ----------------------------------------------------------------------------- device choice (any machine)
@pytest.mark.skipif(CUDA, reason="checks the CPU-only answers")
def test_device_choice_without_cuda(monkeypatch):
    assert choose_device() == choose_device("auto") == choose_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="device: 'cuda' but PyTorch sees no CUDA GPU"):
        choose_device("cuda")


def test_use_gpu_false_and_device_cpu_mean_the_cpu():
    assert choose_device("auto", use_gpu=False) == choose_device("cpu", use_gpu=True) == torch.device("cpu")
    assert choose_device(None, gpu_id="") == torch.device("cpu")


def test_gpu_id_sets_visible_devices_only_for_one_process(monkeypatch):
    """RecBole's meaning of gpu_id (CUDA_VISIBLE_DEVICES) in one process; under torchrun every rank must see every
    GPU (LOCAL_RANK picks one), and a variable the user set is never overwritten."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    choose_device("auto", gpu_id="0")
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    choose_device("auto", gpu_id="0")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"


def test_device_option_in_the_config(tiny_dataset):
    overrides = tiny_overrides(data_path=str(tiny_dataset))
    assert build_config("Tiny", config_dict={**overrides, "device": "cpu"})["device"] == torch.device("cpu")
    assert build_config("Tiny", config_dict=overrides)["device"] == choose_device()
    for bad in ("gpu", "cuda:x", 3):
        with pytest.raises(ConfigError, match="'device'"):
            build_config("Tiny", config_dict={**overrides, "device": bad})


def test_checkpoint_device_is_not_inherited(tiny_dataset):
    """A checkpoint written on a GPU records device cuda; reloading it here uses this machine's device."""
    config = build_config("Tiny", config_dict=tiny_overrides(data_path=str(tiny_dataset)))
    saved = plain(config.final_config_dict)
    saved["device"] = "cuda:3"
    rebuilt = checkpoint_config(Checkpoint("gpu.pth", {"config": saved, "state_dict": {}}))
    assert rebuilt["device"] == choose_device()


# ----------------------------------------------------------------------------- tensors follow the model
def test_interest_map_and_item_cache_follow_the_model(tiny_config):
    """The interest map lives in plain attributes (its shape changes every refresh): ``.to()`` must move it too."""
    config = tiny_config()
    model = MISSRec(config, MISSRecDataset(config)).eval()
    model.refresh_interests()
    model.candidate_tokens()
    assert model._item_cache is not None
    moved = model.to("meta")
    assert moved is model and model._item_cache is None
    for key in ("center_item", "center_modality", "item_interest"):
        tensor = getattr(model, key)
        assert tensor.device.type == "meta" and tensor.dtype == torch.long, key
    assert model.text_features.device.type == "meta"


# ----------------------------------------------------------------------------- mixed precision
def _loss(config, model_class=MISSRec):
    dataset = MISSRecDataset(config)
    train, _, _ = data_preparation(config, dataset)
    torch.manual_seed(0)
    model = model_class(config, train._dataset).train()
    batch = next(iter(train))
    torch.manual_seed(1)
    return model.calculate_loss(batch)


@pytest.mark.parametrize("model_class", [MISSRec, UniSRec])
def test_bf16_autocast_runs_close_to_float32(tiny_dataset, tmp_path, model_class):
    from missrec_recbole.trainer.trainer import under_autocast

    extra = {} if model_class is MISSRec else {"modalities": ["text"]}
    for stage in ("finetune", "pretrain"):
        config = build_config("Tiny", stage, config_dict=tiny_overrides(
            data_path=str(tiny_dataset), checkpoint_dir=str(tmp_path), **extra), model_class=model_class)
        exact = sum(_loss(config, model_class)) if stage == "pretrain" else _loss(config, model_class)
        low = under_autocast(lambda batch: _loss(config, model_class), "cpu", torch.bfloat16)(None)
        low = sum(low) if stage == "pretrain" else low
        assert low.dtype == torch.float32 and torch.isfinite(low)
        assert low != exact and torch.allclose(low, exact, rtol=0.05), (stage, low, exact)


def test_rows_in_buckets_pads_only_under_cpu_autocast():
    from missrec_recbole.model.base import AUTOCAST_ROW_BUCKET, MoEAdapter, rows_in_buckets

    torch.manual_seed(0)
    adapter = MoEAdapter(16, 8, n_experts=4, dropout=0.0, gating_noise=True).eval()
    adapter.init_whitening(0.1)
    seen = []
    adapter.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    x = torch.randn(37, 16)
    assert torch.equal(rows_in_buckets(adapter, x), adapter(x)) and seen == [37, 37]  # float32: untouched
    seen.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = rows_in_buckets(adapter, x)
        plain_low = adapter(x)
    assert seen == [AUTOCAST_ROW_BUCKET, 37] and low.shape == (37, 8)
    assert torch.allclose(low.float(), plain_low.float(), atol=2e-2)  # the padded rows change nothing else
    assert torch.allclose(low.float(), adapter(x), atol=5e-2)


def test_missrec_adapters_see_bucketed_row_counts_under_autocast(tiny_dataset, tmp_path):
    """Under bf16 autocast every adapter call of a MISSRec training step gets a multiple of AUTOCAST_ROW_BUCKET
    rows (oneDNN keeps a kernel per shape: varying counts grew memory by ~1 GB); in float32, the distinct items."""
    from missrec_recbole.model.base import AUTOCAST_ROW_BUCKET

    config = build_config("Tiny", "finetune", config_dict=tiny_overrides(
        data_path=str(tiny_dataset), checkpoint_dir=str(tmp_path), item_adapter="moe"), model_class=MISSRec)
    train, _, _ = data_preparation(config, MISSRecDataset(config))
    model = MISSRec(config, train._dataset).train()
    model.refresh_interests()
    rows = []
    for adapter in model.adapters.values():
        adapter.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    batch = next(iter(train))
    model.calculate_loss(batch)
    assert rows and any(n % AUTOCAST_ROW_BUCKET for n in rows)
    rows.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.calculate_loss(batch)
    loss.float().backward()
    assert rows and all(n % AUTOCAST_ROW_BUCKET == 0 for n in rows)


def test_mixed_precision_option(tiny_config):
    config = tiny_config(mixed_precision="bf16", epochs=1)
    dataset = MISSRecDataset(config)
    train, valid, _ = data_preparation(config, dataset)
    trainer = MISSRecTrainer(config, MISSRec(config, train._dataset))
    assert trainer.autocast_dtype is torch.bfloat16 and not trainer.enable_scaler
    trainer.fit(train, valid, saved=False)
    assert np.isfinite(trainer.train_loss_dict[0])
    if not CUDA:
        with pytest.raises(ConfigError, match="mixed_precision: fp16 needs a CUDA device"):
            MISSRecTrainer(tiny_config(mixed_precision="fp16"), trainer.model)
    with pytest.raises(ConfigError, match="clip_grad_norm"):
        tiny_config(mixed_precision="fp16", clip_grad_norm={"max_norm": 1.0})
    with pytest.raises(ConfigError, match="'mixed_precision'"):
        tiny_config(mixed_precision="fp8")


def test_float32_cpu_fine_tuning_turns_the_onednn_primitive_cache_off(tiny_config, monkeypatch):
    config = tiny_config(epochs=1)
    train, _, _ = data_preparation(config, MISSRecDataset(config))
    model = MISSRec(config, train._dataset)
    monkeypatch.delenv(ONEDNN_CACHE_CAPACITY, raising=False)
    MISSRecTrainer(tiny_config(mixed_precision="bf16"), model)
    assert ONEDNN_CACHE_CAPACITY not in os.environ  # bf16 keeps its kernels
    MISSRecTrainer(tiny_config(stage="pretrain"), model)
    assert ONEDNN_CACHE_CAPACITY not in os.environ  # so does pre-training (faster with them, no higher peak)
    trainer = MISSRecTrainer(config, model)
    on_cpu = torch.device(trainer.device).type == "cpu"
    assert os.environ.get(ONEDNN_CACHE_CAPACITY) == ("0" if on_cpu else None)
    monkeypatch.setenv(ONEDNN_CACHE_CAPACITY, "64")
    MISSRecTrainer(config, model)
    assert os.environ[ONEDNN_CACHE_CAPACITY] == "64"  # the user's value stays


@pytest.mark.slow
def test_onednn_primitive_cache_off_trains_the_same_weights(demo, tmp_path):
    """The cache is read once per process, so each setting trains in its own process: identical weights."""
    code = ("import json, sys, torch; from missrec_recbole.quick_start import finetune; "
            "result = finetune('Demo-D', config_dict=json.loads(sys.argv[1])); "
            "torch.save(torch.load(result['model_file'], weights_only=True)['state_dict'], sys.argv[2])")
    base_env = {k: v for k, v in os.environ.items() if k != ONEDNN_CACHE_CAPACITY}
    states = []
    for name, extra_env in (("cached", {ONEDNN_CACHE_CAPACITY: "1024"}), ("rebuilt", {})):
        options = json.dumps(_demo_options(demo, "cpu", checkpoint_dir=str(tmp_path / name), seed=3))
        out = subprocess.run([sys.executable, "-c", code, options, str(tmp_path / f"{name}.pt")], capture_output=True,
                             text=True, timeout=600, env={**base_env, **extra_env, "OMP_NUM_THREADS": "1"})
        assert out.returncode == 0, out.stderr[-2000:]
        states.append(torch.load(tmp_path / f"{name}.pt", weights_only=True))
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])


# ----------------------------------------------------------------------------- on a GPU (marked gpu)
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from missrec_recbole.tools.demo import ensure_demo_dataset

    root = tmp_path_factory.mktemp("gpu-demo")
    ensure_demo_dataset(root / "data", ["Demo-A", "Demo-D"])
    return root


def _demo_options(root, device, **extra) -> dict:
    return {"data_path": str(root / "data"), "checkpoint_dir": str(root / f"saved-{device}"), "device": device,
            "hidden_size": 32, "inner_size": 64, "n_heads": 2, "epochs": 1, "state": "ERROR", **extra}


@pytest.mark.gpu
@pytest.mark.parametrize("model_class", [MISSRec, UniSRec])
def test_gpu_finetune_train_and_evaluate(demo, model_class):
    extra = {} if model_class is MISSRec else {"modalities": ["text"]}
    result = finetune("Demo-D", config_dict=_demo_options(demo, "cuda", **extra), model_class=model_class)
    assert result["valid"]["ndcg@10"] > 0 and np.isfinite(result["test"]["recall@10"])
    state = torch.load(result["model_file"], map_location="cpu", weights_only=True)
    assert state["config"]["device"].startswith("cuda")


@pytest.mark.gpu
def test_gpu_pretrain(demo):
    paths = pretrain(["Demo-A"], config_dict=_demo_options(demo, "cuda", train_batch_size=1024))
    state = torch.load(paths[-1], map_location="cpu", weights_only=True)
    assert all(value.device.type == "cpu" for value in state["state_dict"].values())


def _scores(model_file, device, root):
    from missrec_recbole.inference import MISSRecPredictor

    rec = MISSRecPredictor.load(model_file, "Demo-D", data_path=root / "data", device=device)
    histories = [rec.item_ids[i:i + 5] for i in range(0, 200, 20)]
    return rec, rec.score(histories).cpu(), histories


@pytest.mark.gpu
@pytest.mark.parametrize("written_on", ["cuda", "cpu"])
def test_gpu_checkpoints_load_on_the_other_device(demo, written_on):
    result = finetune("Demo-D", config_dict=_demo_options(demo, written_on, mode="transductive"))
    other = "cpu" if written_on == "cuda" else "cuda"
    _, here, _ = _scores(result["model_file"], written_on, demo)
    rec, there, histories = _scores(result["model_file"], other, demo)
    assert rec.model.device.type == other and rec.model.item_interest.device.type == other
    assert torch.allclose(here, there, atol=1e-4)
    from missrec_recbole.quick_start import load_data_and_model

    config, model, *_ = load_data_and_model(result["model_file"], config_dict={"device": other})
    assert model.device.type == other and config["device"].type == other


@pytest.mark.gpu
def test_gpu_inference_recommend_and_export(demo, tmp_path):
    from missrec_recbole.inference import ExportedIndex

    result = finetune("Demo-D", config_dict=_demo_options(demo, "cuda", mode="inductive"))
    rec, scores, histories = _scores(result["model_file"], "cuda", demo)
    cpu, cpu_scores, _ = _scores(result["model_file"], "cpu", demo)
    assert torch.allclose(scores, cpu_scores, atol=1e-4)
    top = [[i for i, _ in r] for r in rec.recommend_batch(histories, k=10)]
    on_cpu = [[i for i, _ in r] for r in cpu.recommend_batch(histories, k=10)]
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top, on_cpu)]) >= 0.9  # float near-ties may swap
    new = rec.add_items(["NEW-GPU"], text_features=np.ones((1, rec.config["text_dim"]), np.float32))
    assert new == ["NEW-GPU"] and "NEW-GPU" in {i for i, _ in rec.recommend(histories[0], k=rec.n_items)}
    rec.export(tmp_path)
    found = ExportedIndex.load(tmp_path).search(rec.user_vectors(histories), k=10, exclude=histories)
    same = [[i for i, _ in f] == [i for i, _ in r] for f, r in zip(found, rec.recommend_batch(histories, k=10))]
    assert np.mean(same) >= 0.9  # the export's search is exact up to float32 near-ties (tests/test_inference_export.py)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_gpu_mixed_precision(demo, precision):
    exact = finetune("Demo-D", config_dict=_demo_options(demo, "cuda", epochs=2))
    low = finetune("Demo-D", config_dict=_demo_options(demo, "cuda", epochs=2, mixed_precision=precision))
    assert np.isfinite(low["valid"]["ndcg@10"])
    assert abs(low["valid"]["ndcg@10"] - exact["valid"]["ndcg@10"]) <= 0.25 * exact["valid"]["ndcg@10"]


@pytest.mark.gpu
def test_gpu_cpu_metric_agreement(demo):
    """The same short run (no dropout: the only randomness is the seeded initialisation and data order, both drawn
    on the host) on CPU and GPU: metrics within :data:`gpu_check.AGREEMENT_TOLERANCE`."""
    check = _gpu_check()
    rows = check.agreement(demo / "data", demo / "agreement", epochs=2, options={"hidden_size": 32,
                                                                                 "inner_size": 64, "n_heads": 2})
    assert rows["agrees"], rows


# ----------------------------------------------------------------------------- benchmarks/gpu_check.py
def test_gpu_check_without_cuda_says_so(capsys):
    if CUDA:
        pytest.skip("this machine has CUDA")
    assert _gpu_check().main(["--no-tests"]) == 2
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1 and "no CUDA GPU" in out and "--allow-cpu" in out


@pytest.mark.slow
def test_gpu_check_runs_its_steps_on_the_cpu(tmp_path, monkeypatch):
    """--allow-cpu runs every step (here on the tiny dataset, the CPU compared with itself) and writes the JSON."""
    from tests.conftest import write_dataset

    write_dataset(tmp_path / "data")
    monkeypatch.chdir(tmp_path)  # RecBole's log folders
    out = tmp_path / "gpu_check.json"
    check = _gpu_check()
    check.SCIENTIFIC = tmp_path / "shared" / "datasets" / "Scientific-mm"  # absent: skipped (too slow for a test)
    code = check.main(["--allow-cpu", "--quick", "--no-tests", "--datasets", "Tiny,Scientific-mm",
                              "--data_path", str(tmp_path / "data"), "--pretrain_dataset", "Tiny",
                              "--agreement_dataset", "Tiny", "--work_dir", str(tmp_path / "work"), "--out", str(out)])
    report = json.loads(out.read_text())
    assert code == 0 and report["ok"] and report["environment"]["torch"] == torch.__version__
    speed = report["seconds_per_epoch"]["Tiny"]
    assert set(speed) == {"missrec", "unisrec", "sasrec"} and all(row["seconds_per_epoch"] > 0 for row in speed.values())
    assert "not found" in report["seconds_per_epoch"]["Scientific-mm"]["skipped"]
    assert report["pretrain"]["rows"] > 0 and report["pretrain"]["rows_per_second"] > 0
    agreement = report["agreement"]
    assert agreement["agrees"] and agreement["training_gap"] == 0 and agreement["evaluation_gap"] <= 1e-9
