"""Pinned behaviour: short seeded runs whose per-epoch training losses and final metrics must stay the same through
changes that only reorganise code (e.g. moving the models' shared setup into their base class, issue 36).

Every run is 2 epochs, seed 2020, one thread, on the generated demo domain Demo-C (and on Scientific-mm when
../shared/datasets holds it). The pinned values below were produced by the code at commit aecb238 on the project's
machine (another CPU's float kernels may differ in the last bits, more than the relative 1e-6 allowed here); renew
them only with a change that is meant to change results, and say so in its commit.
"""

from __future__ import annotations

import hashlib
import math

import pytest
import torch

from missrec_recbole.model import MISSRec, UniSRec
from missrec_recbole.quick_start import finetune, pretrain
from missrec_recbole.tools.demo import ensure_demo_dataset
from missrec_recbole.trainer import MISSRecTrainer
from tests.conftest import SHARED, threads, tiny_overrides, write_dataset

SMALL = {"hidden_size": 32, "inner_size": 64, "n_heads": 2, "epochs": 2, "stopping_step": 2, "eval_step": 1,
         "train_batch_size": 512, "eval_batch_size": 1024, "seed": 2020, "faiss_threads": 1, "worker": 0,
         "state": "ERROR", "show_progress": False, "metric_decimal_place": 12}

# name -> (dataset, model, stage, options over SMALL)
CASES = {
    "missrec-inductive": ("Demo-C", MISSRec, "finetune", {"mode": "inductive"}),
    "missrec-transductive": ("Demo-C", MISSRec, "finetune", {"mode": "transductive"}),
    "missrec-transductive-stack-moe": ("Demo-C", MISSRec, "finetune", {"mode": "transductive", "item_fusion": "stack",
                                                                       "item_adapter": "moe", "n_exps": 3}),
    "missrec-pretrain": ("Demo-C", MISSRec, "pretrain", {}),
    "unisrec-inductive": ("Demo-C", UniSRec, "finetune", {"mode": "inductive"}),
    "unisrec-transductive": ("Demo-C", UniSRec, "finetune", {"mode": "transductive"}),
    "unisrec-pretrain": ("Demo-C", UniSRec, "pretrain", {}),
    "scientific-missrec-inductive": ("Scientific-mm", MISSRec, "finetune", {"mode": "inductive"}),
}

# commit aecb238 (see the module docstring): per-epoch training losses (pre-training: each loss part), and the
# best epoch's valid and the test metrics of fine-tuning
PINNED = {
    "missrec-inductive": {
        "losses": [[209.83000707626343], [194.91545009613037]],
        "valid": {"recall@10": 0.389920424403, "recall@50": 0.612732095491,
                  "ndcg@10": 0.195034005881, "ndcg@50": 0.246661551803},
        "test": {"recall@10": 0.379310344828, "recall@50": 0.619363395225,
                 "ndcg@10": 0.186768101494, "ndcg@50": 0.24211470711},
    },
    "missrec-transductive": {
        "losses": [[209.43716526031494], [189.45974731445312]],
        "valid": {"recall@10": 0.422192749779, "recall@50": 0.630857648099,
                  "ndcg@10": 0.215436761326, "ndcg@50": 0.262971560762},
        "test": {"recall@10": 0.415561450044, "recall@50": 0.629531388152,
                 "ndcg@10": 0.204954736113, "ndcg@50": 0.2534581782},
    },
    "missrec-transductive-stack-moe": {
        "losses": [[215.09210872650146], [192.2670078277588]],
        "valid": {"recall@10": 0.366489832007, "recall@50": 0.61759504863,
                  "ndcg@10": 0.182131359313, "ndcg@50": 0.238642998265},
        "test": {"recall@10": 0.347038019452, "recall@50": 0.616710875332,
                 "ndcg@10": 0.172973817517, "ndcg@50": 0.233872469679},
    },
    "missrec-pretrain": {
        "losses": [
            [185.01734590530396, 0.21223107166588306, 0.000800355826413579],
            [172.80556917190552, 0.2024199445731938, 0.0007571183359686984],
        ],
    },
    "unisrec-inductive": {
        "losses": [[212.06372833251953], [196.57129096984863]],
        "valid": {"recall@10": 0.405835543767, "recall@50": 0.605216622458,
                  "ndcg@10": 0.19471189345, "ndcg@50": 0.240696843663},
        "test": {"recall@10": 0.394783377542, "recall@50": 0.607427055703,
                 "ndcg@10": 0.184653428098, "ndcg@50": 0.234072957069},
    },
    "unisrec-transductive": {
        "losses": [[214.94500303268433], [192.87272214889526]],
        "valid": {"recall@10": 0.453138815208, "recall@50": 0.632183908046,
                  "ndcg@10": 0.235389968631, "ndcg@50": 0.276550884974},
        "test": {"recall@10": 0.434129089302, "recall@50": 0.629973474801,
                 "ndcg@10": 0.220800168024, "ndcg@50": 0.265820036734},
    },
    "unisrec-pretrain": {
        "losses": [[184.84597158432007, 0.20267216209322214], [171.78229475021362, 0.18296706769615412]],
    },
    "scientific-missrec-inductive": {
        "losses": [[157.35642862319946], [150.14247798919678]],
        "valid": {"recall@10": 0.097677595628, "recall@50": 0.233265027322,
                  "ndcg@10": 0.046214308021, "ndcg@50": 0.074967289761},
        "test": {"recall@10": 0.082650273224, "recall@50": 0.212773224044,
                 "ndcg@10": 0.04260769022, "ndcg@50": 0.07006434226},
    },
}


class RecordingTrainer(MISSRecTrainer):
    """MISSRec's trainer, keeping what each training epoch returned (RecBole's ``_train_epoch``: the summed loss, or
    the summed loss parts when the model returns several)."""

    def __init__(self, config, model):
        super().__init__(config, model)
        self.epoch_losses = []

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        loss = super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)
        self.epoch_losses.append([float(part) for part in (loss if isinstance(loss, tuple) else [loss])])
        return loss


def run_case(name: str, data_path, work) -> dict:
    """Train case ``name`` in one thread; returns its losses (and metrics when fine-tuning)."""
    dataset, model_class, stage, options = CASES[name]
    config_dict = {**SMALL, **options, "data_path": str(data_path), "checkpoint_dir": str(work / name)}
    trainers = []

    class Trainer(RecordingTrainer):
        def __init__(self, config, model):
            super().__init__(config, model)
            trainers.append(self)

    with threads(1):
        if stage == "pretrain":
            pretrain([dataset], config_dict=config_dict, model_class=model_class, trainer_class=Trainer)
            result = {}
        else:
            run = finetune(dataset, config_dict=config_dict, model_class=model_class, trainer_class=Trainer)
            result = {split: {k: float(v) for k, v in run[split].items()} for split in ("valid", "test")}
    return {"losses": trainers[0].epoch_losses, **result}


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("pinned") / "data"
    ensure_demo_dataset(root, ["Demo-C"])
    return root


def _assert_close(observed, pinned, what):
    assert len(observed) == len(pinned), (what, observed, pinned)
    for got, want in zip(observed, pinned):
        assert math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9), (what, observed, pinned)


def _check(name, observed):
    pinned = PINNED[name]
    assert len(observed["losses"]) == len(pinned["losses"]) == SMALL["epochs"]
    for epoch, (got, want) in enumerate(zip(observed["losses"], pinned["losses"])):
        _assert_close(got, want, f"{name}: training loss of epoch {epoch}")
    for split in ("valid", "test"):
        if split in pinned:
            assert observed[split].keys() == pinned[split].keys()
            _assert_close([observed[split][k] for k in sorted(pinned[split])],
                          [pinned[split][k] for k in sorted(pinned[split])], f"{name}: {split} metrics")


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in CASES if CASES[n][0] == "Demo-C"])
def test_demo_runs_unchanged(name, demo_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # RecBole writes log/ and log_tensorboard/ under the working folder
    _check(name, run_case(name, demo_root, tmp_path))


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "Scientific-mm").is_dir(), reason="needs ../shared/datasets/Scientific-mm")
def test_scientific_run_unchanged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _check("scientific-missrec-inductive", run_case("scientific-missrec-inductive", SHARED, tmp_path))


# ------------------------------------------------------------------------------------------ parameter layout
# name -> (model, options): built on the tiny test dataset with torch.manual_seed(0)
LAYOUT_CASES = {
    "missrec-inductive": (MISSRec, {"mode": "inductive"}),
    "missrec-transductive-stack-moe": (MISSRec, {"mode": "transductive", "item_fusion": "stack",
                                                 "item_adapter": "moe", "n_exps": 3, "n_layers": 4}),
    "unisrec-inductive": (UniSRec, {"mode": "inductive"}),
    "unisrec-transductive": (UniSRec, {"mode": "transductive"}),
}

# commit aecb238: sha256 (first 16 hex) of the parameter names and shapes in registration order (the optimizer's
# order, kept in resume files), then the state_dict's names, shapes and initial values (checkpoints; the values
# show the random generator is drawn in the same order)
PINNED_LAYOUT = {
    "missrec-inductive": {"parameters": "a7e2a3f6a60deda8", "state_dict": "4e79e3a0c2b96b4e"},
    "missrec-transductive-stack-moe": {"parameters": "e815418078872030", "state_dict": "b8a74dc29d447c2f"},
    "unisrec-inductive": {"parameters": "99237688e75854e5", "state_dict": "9def8482fa942c51"},
    "unisrec-transductive": {"parameters": "c1cc12c8af9e7e2d", "state_dict": "21f5ecf408b1ce2b"},
}


def build_tiny(name: str, root):
    from missrec_recbole.data import MISSRecDataset
    from missrec_recbole.quick_start import build_config

    model_class, options = LAYOUT_CASES[name]
    config = build_config("Tiny", config_dict=tiny_overrides(data_path=str(root), **options), model_class=model_class)
    dataset = MISSRecDataset(config)
    torch.manual_seed(0)
    return model_class(config, dataset)


def layout(model) -> dict:
    """Digests of the parameter order (names, shapes) and of the state_dict (names, shapes, values)."""
    order = hashlib.sha256("\n".join(f"{n} {tuple(p.shape)}" for n, p in model.named_parameters()).encode())
    state = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        state.update(f"{key} {tuple(tensor.shape)}\n".encode())
        state.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return {"parameters": order.hexdigest()[:16], "state_dict": state.hexdigest()[:16]}


@pytest.mark.parametrize("name", list(LAYOUT_CASES))
def test_parameter_layout_and_initial_weights_unchanged(name, tmp_path):
    write_dataset(tmp_path)
    model = build_tiny(name, tmp_path)
    assert layout(model) == PINNED_LAYOUT[name], [n for n, _ in model.named_parameters()]
