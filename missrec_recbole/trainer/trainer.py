"""MISSRecTrainer: RecBole's Trainer plus interest refresh, pre-training and a deterministic tie rule."""

from __future__ import annotations

import itertools
import os
import random
import time

import numpy as np
import torch
from recbole.trainer import Trainer
from recbole.utils import get_local_time, set_color

from missrec_recbole.compat import plain
from missrec_recbole.config_schema import ConfigError
from missrec_recbole.files import atomic_torch_save
from missrec_recbole.evaluation import TieRuleEvaluation
from missrec_recbole.trainer import distributed
from missrec_recbole.trainer.checkpoint import RESUME_FORMAT, RESUME_HINT, Checkpoint, run_identity, save_pretrained

# Log lines naming the resume file (the benchmark reads them back to continue a stopped run): the file a new run
# writes, and the file a resumed run continues (and keeps writing).
RESUME_FILE_LOG = "Resume checkpoint (rewritten every epoch): "
RESUMED_LOG = "Resumed from "
_RUN_NUMBER = itertools.count()  # tells apart runs of one process started within the same second


def rng_state(train_data) -> dict:
    """Every random state training consumes, as types ``torch.load(weights_only=True)`` accepts (the CUDA
    generators too once CUDA is in use: dropout on a GPU draws from them)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "loader": train_data.generator.get_state(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, train_data) -> None:
    """Restore :func:`rng_state`; CUDA states are restored where this machine has the GPUs (a resume file written
    on a GPU continues on a CPU-only machine, with CPU random streams)."""
    if state.get("cuda") and torch.cuda.is_available():
        for index, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    train_data.generator.set_state(state["loader"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(config) -> torch.dtype | None:
    """The ``mixed_precision`` option as a dtype (None: float32), checked against the run's device."""
    choice = config["mixed_precision"]
    if choice is None:
        return None
    if choice == "fp16" and config["device"].type != "cuda":
        raise ConfigError("mixed_precision: fp16 needs a CUDA device (its loss scaling is CUDA's); on this "
                          f"{config['device'].type} run use mixed_precision: bf16, or leave it out.")
    return AUTOCAST_DTYPES[choice]


def under_autocast(loss_func, device_type: str, dtype: torch.dtype):
    """``loss_func`` run under ``torch.autocast``; its loss(es) returned in float32."""
    def run(interaction):
        with torch.autocast(device_type=device_type, dtype=dtype):
            losses = loss_func(interaction)
        return tuple(loss.float() for loss in losses) if isinstance(losses, tuple) else losses.float()

    return run


class MISSRecTrainer(TieRuleEvaluation, Trainer):
    """Trainer for MISSRec (the benchmark also trains UniSRec and RecBole's SASRec with it).

    - refreshes the DPC-KNN interest map before every training epoch (and logs its cost);
    - optimises only parameters with ``requires_grad`` (parameter-efficient fine-tuning);
    - ``pretrain`` trains without validation and writes a portable checkpoint every ``save_step``
      epochs and at the end;
    - evaluation applies the ``tie_rule`` (:mod:`missrec_recbole.evaluation`);
    - before every epoch (and when done) it writes ``resume_file``: weights, interest map, optimizer,
      epoch, early-stopping bookkeeping and all random states, so :meth:`resume` continues an
      interrupted run exactly as if it had not stopped;
    - under ``torchrun`` (see :mod:`missrec_recbole.trainer.distributed`) gradients are averaged over
      the processes by DDP, the interest map is computed on rank 0 and broadcast, and only rank 0
      writes files.
    """

    def __init__(self, config, model):
        is_distributed = not config["single_spec"]
        config["single_spec"] = True  # RecBole would wrap with device_ids, which CPU modules reject
        try:
            super().__init__(config, model)
        finally:
            config["single_spec"] = not is_distributed
        if is_distributed:
            # RecBole's _train_epoch routes every step through this wrapper (set_reduce_hook), so
            # DDP's backward hooks all-reduce the gradients of the loss computed by the model.
            self.distributed_model = distributed.wrap(self.model, config)
        # mixed precision (training steps only): RecBole's loop scales the loss with a GradScaler for fp16
        self.autocast_dtype = autocast_dtype(config)
        self.enable_scaler = self.enable_scaler or self.autocast_dtype is torch.float16
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = self._build_optimizer(params=trainable)
        self.logger.info(set_color("Trainable parameters", "blue") + f": {sum(p.numel() for p in trainable)}")
        name = f"{self.run_name}-{get_local_time()}-{os.getpid()}-{next(_RUN_NUMBER)}.pth"
        self.saved_model_file = distributed.broadcast(os.path.join(self.checkpoint_dir, name))
        self._resume_file = None  # set by resume(): the resumed run keeps writing that file
        self.pretrain_prefix = distributed.broadcast(self._free_pretrain_prefix())
        self.interest_refresh_seconds = []
        self.epochs_resumed = 0  # epochs trained before resume() (by the interrupted process)
        self.logger.info(f"{RESUME_FILE_LOG}{self.resume_file}")

    @property
    def run_name(self) -> str:
        """``<model>-<dataset>-<mode>``: the prefix of every file this trainer writes."""
        return f"{self.config['model']}-{self.config['dataset']}-{self.config['mode']}"

    def refresh_interests(self, epoch_idx) -> None:
        """DPC-KNN on rank 0, broadcast to the others: every rank uses the identical map.
        Models without interests (baselines trained with this trainer) skip it."""
        if not hasattr(self.model, "refresh_interests"):
            return
        start = time.time()
        info = self.model.refresh_interests() if distributed.is_main() else None
        if distributed.active():
            info, interest_map = distributed.broadcast((info, self.model.other_parameter()))
            self.model.load_other_parameter(interest_map)
        seconds = time.time() - start
        self.interest_refresh_seconds.append(seconds)
        self.logger.info(f"epoch {epoch_idx} interest refresh: {info['tokens']} tokens -> "
                         f"{info['interests']} interests in {seconds:.2f}s")

    @property
    def best_valid_epoch(self) -> int:
        """The epoch of the kept (best) model: early stopping counts the evaluations since it; -1 before any."""
        return max(self.train_loss_dict, default=-1) - self.cur_step * self.config["eval_step"]

    @property
    def epochs_run_here(self) -> int:
        """Epochs trained by this process (a resumed run's earlier epochs ran in another)."""
        return len(self.train_loss_dict) - self.epochs_resumed

    @property
    def resume_file(self) -> str:
        return self._resume_file or self.saved_model_file[: -len(".pth")] + "-resume.pth"

    def _free_pretrain_prefix(self) -> str:
        """Prefix of this run's pre-training checkpoints: ``<run_name>`` unless another run already wrote
        checkpoints under it, then this run's unique file stem (never overwrite another run's files)."""
        taken = any(name.startswith(f"{self.run_name}-epoch") for name in os.listdir(self.checkpoint_dir)) \
            if os.path.isdir(self.checkpoint_dir) else False
        return self.saved_model_file[: -len(".pth")] if taken else os.path.join(self.checkpoint_dir, self.run_name)

    def save_resume_state(self, next_epoch: int, train_data) -> None:
        """Atomically write everything needed to continue training at ``next_epoch``."""
        if not distributed.is_main():
            return
        state = {
            "format": RESUME_FORMAT,
            "identity": run_identity(self.config, getattr(train_data._dataset, "files", None)),
            "pretrain_prefix": self.pretrain_prefix,
            "config": plain(self.config.final_config_dict),
            "next_epoch": next_epoch,
            "cur_step": self.cur_step,
            "best_valid_score": plain(self.best_valid_score),
            "best_valid_result": plain(dict(self.best_valid_result or {})),
            "train_loss_dict": plain(self.train_loss_dict),
            "saved_model_file": self.saved_model_file,
            "trainable": [n for n, p in self.model.named_parameters() if p.requires_grad],
            "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_state(train_data),
        }
        atomic_torch_save(state, self.resume_file)

    def resume(self, checkpoint, train_data) -> None:
        """Continue the run that wrote the resume file ``checkpoint`` (a path or a :class:`Checkpoint`; same config
        and data: checked, see :meth:`Checkpoint.check_run`). Keeps writing that file."""
        if not isinstance(checkpoint, Checkpoint):
            checkpoint = Checkpoint.read(checkpoint, RESUME_HINT)
        checkpoint.check_run(run_identity(self.config, getattr(train_data._dataset, "files", None)))
        state, path = checkpoint.content, checkpoint.path
        trainable = set(state["trainable"])
        for name, parameter in self.model.named_parameters():
            parameter.requires_grad = name in trainable
        self.optimizer = self._build_optimizer(params=[p for p in self.model.parameters() if p.requires_grad])
        checkpoint.load_all(self.model, self.config["dataset"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.start_epoch, self.cur_step = state["next_epoch"], state["cur_step"]
        self.best_valid_score = state["best_valid_score"]
        self.best_valid_result = state["best_valid_result"] or None
        self.train_loss_dict = {int(k): v for k, v in state["train_loss_dict"].items()}
        self.saved_model_file = state["saved_model_file"]
        self.pretrain_prefix = state["pretrain_prefix"]
        self._resume_file = os.fspath(path)
        self.epochs_resumed = len(self.train_loss_dict)
        set_rng_state(state["rng"], train_data)
        self.logger.info(f"{RESUMED_LOG}{path}: continuing at epoch {self.start_epoch}; this run keeps writing "
                         f"{self.resume_file}")

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.save_resume_state(epoch_idx, train_data)
        self.refresh_interests(epoch_idx)
        if self.autocast_dtype is not None:
            loss_func = under_autocast(loss_func or self.model.calculate_loss, self.device.type, self.autocast_dtype)
        return super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        result = super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
        distributed.barrier()  # rank 0 may still be writing the best model the others load next
        self.save_resume_state(max(self.train_loss_dict, default=self.start_epoch - 1) + 1, train_data)
        return result

    def pretrain_checkpoint_path(self, epoch: int) -> str:
        return f"{self.pretrain_prefix}-epoch{epoch}.pth"

    def pretrain(self, train_data, verbose=True, show_progress=False) -> list[str]:
        """Pre-train for ``epochs`` epochs; returns the checkpoint paths (last = final)."""
        for epoch_idx in range(self.start_epoch, self.epochs):
            start = time.time()
            train_loss = self._train_epoch(train_data, epoch_idx, show_progress=show_progress)
            self.train_loss_dict[epoch_idx] = sum(train_loss) if isinstance(train_loss, tuple) else train_loss
            if verbose:
                self.logger.info(self._generate_train_loss_output(epoch_idx, start, time.time(), train_loss))
            self._add_train_loss_to_tensorboard(epoch_idx, train_loss)
            last = epoch_idx + 1 == self.epochs
            if ((epoch_idx + 1) % self.config["save_step"] == 0 or last) and distributed.is_main():
                path = save_pretrained(self.model, self.config, self.pretrain_checkpoint_path(epoch_idx + 1),
                                       epoch_idx + 1)
                if verbose:
                    self.logger.info(set_color("Saving pre-trained checkpoint", "blue") + f": {path}")
        self.save_resume_state(self.epochs, train_data)
        distributed.barrier()
        return self.pretrain_checkpoints()

    def pretrain_checkpoints(self) -> list[str]:
        """The pre-training checkpoints of this run that exist (every save_step epochs, and the last)."""
        epochs = sorted({*range(self.config["save_step"], self.epochs + 1, self.config["save_step"]), self.epochs})
        return [p for p in map(self.pretrain_checkpoint_path, epochs) if os.path.isfile(p)]
