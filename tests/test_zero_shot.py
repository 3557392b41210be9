"""benchmarks/zero_shot.py: a pre-trained checkpoint evaluated on another dataset without training."""

from __future__ import annotations

import json

import pytest

from missrec_recbole.quick_start import pretrain
from tests.conftest import benchmark_script, tiny_overrides, write_dataset


def load_script():
    return benchmark_script("zero_shot")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("zero-shot")
    write_dataset(root, "A", n_items=40, n_users=30, seed=1)
    write_dataset(root, "B", n_items=30, n_users=25, seed=2)
    options = tiny_overrides(data_path=str(root), checkpoint_dir=str(root / "saved"), epochs=2)
    return root, pretrain(["A"], config_dict=options)[-1]


def test_checkpoint_and_random_weights_on_an_unseen_dataset(pretrained, tmp_path, capsys):
    script = load_script()
    root, checkpoint = pretrained
    out = tmp_path / "zero_shot.json"
    argv = ["-d", "B", "--data_path", str(root), "--checkpoint", f"A={checkpoint}", "--out", str(out),
            "--eval_batch_size=64", "--topk=[5,10]"]
    assert script.main(argv + ["--random"]) == 0
    lines = json.loads(out.read_text())["lines"]
    assert [line["label"] for line in lines] == ["A", script.RANDOM]
    loaded, random = lines
    assert loaded["options"]["hidden_size"] == 32  # the checkpoint's network, not the props' default
    for line in lines:
        assert set(line["valid"]) >= {"ndcg@10", "recall@10"} and 0 <= line["valid"]["ndcg@10"] <= 1
    assert loaded["valid"] != random["valid"]  # the pre-trained weights were loaded
    assert "B <- A" in capsys.readouterr().out
    assert script.main(argv) == 0  # the checkpoint's line again, without the random one
    again = json.loads(out.read_text())["lines"]
    assert [line["label"] for line in again] == [script.RANDOM, "A"]  # replaced, not added
    assert again[1]["valid"] == loaded["valid"]  # deterministic


def test_bad_checkpoint_arguments_are_refused_by_name(pretrained, tmp_path):
    script = load_script()
    root, _ = pretrained
    with pytest.raises(script.InputError, match="LABEL=PATH"):
        script.main(["-d", "B", "--data_path", str(root), "--checkpoint", "no-label.pth"])
    with pytest.raises(Exception, match="missing.pth"):
        script.main(["-d", "B", "--data_path", str(root), "--checkpoint", f"x={tmp_path / 'missing.pth'}"])
