"""The pre-trained checkpoint shipped in the package: found by its short name, small, free of the writer's paths,
described by its model card (docs/pretrained.md), and fine-tunable on a domain it was not trained on."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from missrec_recbole.released import FOLDER, RELEASED, released_path
from missrec_recbole.tools.release import write_release
from missrec_recbole.trainer.checkpoint import (LOCAL_KEYS, Checkpoint, CheckpointError, CheckpointMismatchError,
                                                release_state)
from tests.conftest import tiny_overrides, write_dataset

ROOT = Path(__file__).resolve().parents[1]
CARD = ROOT / "docs" / "pretrained.md"
NAME = "amazon3"
WIDTH = 256  # WordLlama's, the encoder of the release's training data


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)


def test_short_name_is_the_packaged_file_and_a_path_stays_a_path(tmp_path, monkeypatch):
    assert Path(released_path(NAME)) == FOLDER / RELEASED[NAME]
    assert released_path("saved/x.pth") == "saved/x.pth"
    monkeypatch.chdir(tmp_path)
    (tmp_path / NAME).write_bytes(b"")  # a file of that name in the working folder is what the user means
    assert released_path(NAME) == NAME


def test_every_release_is_small_safe_and_free_of_the_writers_paths():
    for name, file in RELEASED.items():
        path = FOLDER / file
        assert path.stat().st_size <= 10 * 2 ** 20, f"{file}: over 10 MB"
        checkpoint = Checkpoint.read(name)  # torch.load(weights_only=True)
        assert checkpoint.kind == "pretrained" and checkpoint.path == str(path)
        assert not set(LOCAL_KEYS) & set(checkpoint.config)
        assert not [s for s in _strings(checkpoint.content) if s.startswith("/") or ":\\" in s]
        assert checkpoint.content["release"]["name"] == name


def test_the_model_card_names_the_file_its_hash_and_its_encoder():
    card = CARD.read_text()
    for name, file in RELEASED.items():
        data = (FOLDER / file).read_bytes()
        assert f"`-p {name}`" in card
        assert hashlib.sha256(data).hexdigest() in card, f"docs/pretrained.md: sha256 of {file} is not the file's"
        encoder = Checkpoint.read(name).content["release"]["encoder"]
        assert encoder in card
    config = Checkpoint.read(NAME).config
    assert config["modalities"] == ["text"] and config["text_dim"] == WIDTH
    epochs = re.search(r"(\d+) epochs", card)
    assert epochs and int(epochs.group(1)) == Checkpoint.read(NAME).content["epoch"]


def test_prepare_writes_the_features_the_release_expects():
    pytest.importorskip("wordllama")
    from missrec_recbole.tools.features import WordLlamaEncoder

    assert WordLlamaEncoder().identity == Checkpoint.read(NAME).content["release"]["encoder"]


def _text_only(root: Path, name: str, dim: int) -> Path:
    folder = write_dataset(root, name=name, dim=dim, missing_image=())
    (folder / f"{name}.feat3CLS").unlink()
    return folder


@pytest.mark.slow
def test_fine_tunes_from_its_short_name_on_a_new_domain(tmp_path):
    from missrec_recbole.train import main

    _text_only(tmp_path, "Unseen", WIDTH)
    # the network's shape comes from the release; only the run's own settings are given
    result = main(["-d", "Unseen", "-p", NAME, "--mode=inductive", f"--data_path={tmp_path}",
                   f"--checkpoint_dir={tmp_path / 'saved'}", "--epochs=1", "--train_batch_size=64", "--dpc_k=3",
                   "--faiss_threads=1", "--topk=[5,10]", "--state=ERROR"])
    assert result["pretrained"] == NAME and np.isfinite(result["test"]["ndcg@10"])
    released = Checkpoint.read(NAME).content["state_dict"]
    trained = torch.load(result["model_file"], weights_only=True)["state_dict"]
    frozen = "interest_encoder.layers.0.linear1.weight"  # adapters-only fine-tuning leaves it as released
    assert torch.equal(trained[frozen], released[frozen])
    assert not torch.equal(trained["adapters.text.gate.weight"], released["adapters.text.gate.weight"])


def test_another_feature_width_is_refused_naming_the_encoder(tmp_path):
    from missrec_recbole.quick_start import finetune

    _text_only(tmp_path, "Clip", 512)
    encoder = Checkpoint.read(NAME).content["release"]["encoder"]
    with pytest.raises(CheckpointMismatchError, match=re.escape(encoder)):
        finetune("Clip", NAME, config_dict=tiny_overrides(512, data_path=str(tmp_path), image_dim=None))


@pytest.mark.slow
def test_image_features_are_refused_until_left_out(tmp_path):
    from missrec_recbole.quick_start import finetune

    write_dataset(tmp_path, name="Both", dim=WIDTH)  # text and image features
    overrides = {"data_path": str(tmp_path), "checkpoint_dir": str(tmp_path / "saved"), "epochs": 1, "dpc_k": 3,
                 "topk": [5, 10], "train_batch_size": 64, "faiss_threads": 1, "state": "ERROR"}
    with pytest.raises(CheckpointMismatchError, match=re.escape("use modalities=['text']")):
        finetune("Both", NAME, config_dict=overrides)
    result = finetune("Both", NAME, config_dict={**overrides, "modalities": ["text"]})
    assert np.isfinite(result["test"]["ndcg@10"])


def test_release_keeps_the_weights_and_refuses_a_trained_model(tmp_path):
    source = Checkpoint.read(NAME)
    summary = write_release(source.path, tmp_path / "again.pth", "again", "some-encoder:1")
    again = Checkpoint.read(tmp_path / "again.pth")
    assert again.content["release"] == {"name": "again", "encoder": "some-encoder:1"}
    assert all(torch.equal(again.content["state_dict"][k], v) for k, v in source.content["state_dict"].items())
    assert summary["sha256"] == hashlib.sha256((tmp_path / "again.pth").read_bytes()).hexdigest()
    trained = Checkpoint(tmp_path / "t.pth", {**source.content, "format": None})
    with pytest.raises(CheckpointError, match="not a pre-training checkpoint"):
        release_state(trained, {"name": "x", "encoder": "y"})


def test_unknown_short_name_lists_the_released_ones():
    with pytest.raises(CheckpointError, match=NAME):
        Checkpoint.read("no-such-release")
