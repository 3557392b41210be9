"""Trains MISSRec for a few epochs and saves this process's parameters and interest map.

Run directly (one process) or under ``torchrun`` (several); used by tests/test_distributed.py.
Usage: python tests/ddp_worker.py OUT_DIR DATA_PATH STAGE EPOCHS GLOBAL_BATCH
"""

import sys
from pathlib import Path

import torch
from recbole.utils import init_seed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from missrec_recbole.model import MISSRec  # noqa: E402
from missrec_recbole.quick_start import build_config, prepare_data  # noqa: E402
from missrec_recbole.trainer import MISSRecTrainer, distributed  # noqa: E402
from tests.conftest import tiny_overrides  # noqa: E402


def main(out, data_path, stage, epochs, batch):
    exact = {"hidden_dropout_prob": 0.0, "adaptor_dropout_prob": 0.0, "loss_candidates": "all", "shuffle": False,
             "item_drop_ratio": 0.0,
             "learner": "sgd", "learning_rate": 0.5}
    config = build_config("Tiny", stage, config_dict=tiny_overrides(
        data_path=data_path, checkpoint_dir=str(Path(out) / "saved"), epochs=int(epochs),
        train_batch_size=int(batch), mode="transductive", **exact))
    distributed.join(config)
    _, train, valid, _ = prepare_data(config)
    init_seed(config["seed"], config["reproducibility"])
    model = MISSRec(config, train._dataset)
    trainer = MISSRecTrainer(config, model)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    for epoch in range(config["epochs"]):
        trainer._train_epoch(train, epoch)
    result = trainer.evaluate(valid, load_best_model=False)
    torch.save({"params": {n: p.detach() for n, p in model.named_parameters()}, "initial": initial,
                "interest_map": model.other_parameter(), "valid": {k: float(v) for k, v in result.items()},
                "world_size": config["world_size"] or 1, "trainer_file": trainer.saved_model_file},
               Path(out) / f"rank{distributed.rank()}.pt")


if __name__ == "__main__":
    main(*sys.argv[1:])
