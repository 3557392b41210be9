"""End to end through run_missrec.py in subprocesses: pre-train -> checkpoint -> fine-tune, on demo data."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from missrec_recbole.tools.demo import baseline_ndcg, ensure_demo_dataset
from tests.conftest import SHARED

pytestmark = pytest.mark.slow  # trains in subprocesses (quick tier: -m "not slow")

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--hidden_size=32", "--inner_size=64", "--n_heads=2", "--state=WARNING"]


def run(*args, cwd=ROOT):
    out = subprocess.run([sys.executable, str(ROOT / "run_missrec.py"), *args], capture_output=True, text=True,
                         cwd=cwd, timeout=1200)
    return out


def run_ok(*args):
    out = run(*args)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    ensure_demo_dataset(root / "data", ["Demo-A", "Demo-B", "Demo-C"])
    return root


@pytest.fixture(scope="module")
def pretrained(demo):
    out = run_ok("--stage=pretrain", "-d", "Demo-A,Demo-B", f"--data_path={demo / 'data'}",
                 f"--checkpoint_dir={demo / 'saved'}", "--epochs=1", "--train_batch_size=2048", *FAST)
    checkpoint = Path(out.stdout.strip().splitlines()[-1])
    assert checkpoint.is_file() and checkpoint.name.endswith("epoch1.pth")
    return checkpoint


@pytest.mark.parametrize("mode", ["inductive", "transductive"])
def test_pretrain_then_finetune_other_domain(demo, pretrained, mode):
    result_file = demo / f"{mode}.json"
    out = run_ok("-d", "Demo-C", "-p", str(pretrained), f"--mode={mode}", f"--data_path={demo / 'data'}",
                 f"--checkpoint_dir={demo / 'saved'}", "--epochs=2", f"--result_json={result_file}", *FAST)
    result = json.loads(result_file.read_text())
    assert result["mode"] == mode and result["pretrained"] == str(pretrained)
    assert "ndcg@10" in out.stdout and "test" in out.stdout
    for split in ("valid", "test"):
        assert set(result[split]) == {"recall@10", "recall@50", "ndcg@10", "ndcg@50"}
    # only adapters (+ beta, LayerNorm, ID embedding) are trained after loading a checkpoint
    adapters = 2 * (512 * 32 + 32) + 1 + 2 * 32
    assert result["trainable_parameters"] >= adapters
    assert (result["trainable_parameters"] == adapters) == (mode == "inductive")
    # MISSRec learns the demo data: clearly better than ranking by popularity
    popularity = baseline_ndcg(demo / "data" / "Demo-C")["popularity"]
    assert result["test"]["ndcg@10"] > 2 * popularity


def test_default_demo_command_path(tmp_path):
    """`python run_missrec.py` (the README's main job), shortened: same code path, tiny schedule."""
    out = run_ok(f"--data_path={tmp_path / 'data'}", f"--checkpoint_dir={tmp_path / 'saved'}", "--epochs=1",
                 "--train_batch_size=4096", *FAST)
    assert "pre-trained checkpoint:" in out.stdout and "Demo-D" in out.stdout
    assert sorted(p.name for p in (tmp_path / "data").iterdir() if not p.name.startswith(".")) == [
        "Demo-A", "Demo-B", "Demo-C", "Demo-D"]


def test_help_and_bad_input(tmp_path):
    assert "--mode" in run_ok("--help").stdout
    missing = run("-d", "Nope", f"--data_path={tmp_path}")
    assert missing.returncode != 0 and f"{tmp_path / 'Nope'}: dataset folder not found" in missing.stderr
    bad = run("-d", "Demo-C", "-p", str(tmp_path / "none.pth"), f"--data_path={tmp_path}", "--epochs=1")
    assert bad.returncode != 0 and "none.pth: checkpoint file not found" in bad.stderr
    assert run("-d", "X", "stray").returncode == 2


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/datasets not present")
def test_scientific_mm_one_epoch(tmp_path):
    result_file = tmp_path / "sci.json"
    run_ok("-d", "Scientific-mm", f"--data_path={SHARED}", f"--checkpoint_dir={tmp_path}", "--epochs=1",
           f"--result_json={result_file}", "--state=WARNING")
    result = json.loads(result_file.read_text())
    assert result["epochs"] == 1 and result["test"]["ndcg@10"] > 0.03  # popularity gets 0.021


def test_same_seed_same_metrics(demo):
    from missrec_recbole.quick_start import finetune
    from missrec_recbole.quick_start import parse_overrides

    overrides = {**parse_overrides(FAST), "data_path": str(demo / "data"), "checkpoint_dir": str(demo / "det"),
                 "epochs": 1}
    first, second = (finetune("Demo-C", config_dict=overrides) for _ in range(2))
    assert first["valid"] == second["valid"] and first["test"] == second["test"]


def test_transfer_differs_from_random_adapters_only(demo, pretrained):
    """Pre-trained on Demo-A+B vs random frozen weights, both adapters-only on Demo-C."""
    from missrec_recbole.quick_start import finetune, parse_overrides

    overrides = {**parse_overrides(FAST), "data_path": str(demo / "data"), "checkpoint_dir": str(demo / "tr"),
                 "epochs": 2, "mode": "inductive"}
    transfer = finetune("Demo-C", pretrained=str(pretrained), config_dict=overrides)
    scratch = finetune("Demo-C", config_dict={**overrides, "adapters_only": True})
    assert transfer["trainable_parameters"] == scratch["trainable_parameters"]
    print(f"Demo-C test NDCG@10: pre-trained {transfer['test']['ndcg@10']}, random {scratch['test']['ndcg@10']}")
    assert transfer["test"] != scratch["test"]
