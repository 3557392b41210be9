"""Shared by tests/test_inference_*.py: the Tiny data's text, configs, trained and untrained checkpoints, loading."""

from __future__ import annotations

from pathlib import Path

import torch
from recbole.data import data_preparation

from missrec_recbole.data import MISSRecDataset
from missrec_recbole.inference import MISSRecPredictor
from missrec_recbole.model import MISSRec
from missrec_recbole.quick_start import build_config
from missrec_recbole.trainer import MISSRecTrainer
from tests.conftest import tiny_overrides


ROOT = Path(__file__).resolve().parents[1]
DIM = 16


def _write_text(folder: Path, name: str, n_items: int):
    with open(folder / f"{name}.text", "w", encoding="utf-8") as handle:
        handle.write("item_id:token\ttext:token_seq\n")
        handle.writelines(f"ITEM{i}\tGadget number {i}, very useful.\n" for i in range(n_items))


def _config(root, name="Tiny", **extra):
    return build_config(name, config_dict=tiny_overrides(data_path=str(root), checkpoint_dir=str(root / "saved"),
                                                         **extra))


def _train(root, name="Tiny", **extra) -> str:
    """Train briefly and return RecBole's best-model checkpoint (what `quick_start.finetune` writes)."""
    config = _config(root, name, epochs=1, **extra)
    dataset = MISSRecDataset(config)
    train, valid, _ = data_preparation(config, dataset)
    torch.manual_seed(0)
    trainer = MISSRecTrainer(config, MISSRec(config, dataset))
    trainer.fit(train, valid, saved=True)
    return trainer.saved_model_file


def _untrained_checkpoint(root, name, mode) -> str:
    """A best-model checkpoint in the trainer's format (checkpoint.save_trained's keys) for random weights:
    exporting and retrieval must be exact whatever the weights, so the export test skips training."""
    from missrec_recbole.compat import plain
    from missrec_recbole.files import atomic_torch_save

    config = _config(root, name, mode=mode)
    torch.manual_seed(1)
    model = MISSRec(config, MISSRecDataset(config))
    with torch.no_grad():  # initialisation std 0.02 makes every vector alike; spread them out
        for parameter in model.parameters():
            parameter.mul_(25.0 if parameter.dim() > 1 else 1.0)
    model.refresh_interests()
    path = root / f"{name}-{mode}.pth"
    atomic_torch_save({"config": plain(config.final_config_dict), "epoch": 0, "state_dict": model.state_dict(),
                       "other_parameter": model.other_parameter()}, path)
    return str(path)


def _load(tiny, mode="inductive", **kwargs):
    return MISSRecPredictor.load(tiny[mode], "Tiny", data_path=tiny["root"], **kwargs)
