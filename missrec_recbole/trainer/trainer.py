"""MISSRecTrainer: RecBole's Trainer plus interest refresh, pre-training and a deterministic tie rule."""

from __future__ import annotations

import itertools
import os
import time

import torch
from recbole.trainer import Trainer
from recbole.utils import get_local_time, set_color

from missrec_recbole.config_schema import ConfigError
from missrec_recbole.evaluation import TieRuleEvaluation
from missrec_recbole.trainer import distributed
from missrec_recbole.trainer.checkpoint import (RESUME_HINT, TRAINED_HINT, Checkpoint, dataset_files, load_resume,
                                                run_identity, save_pretrained, save_resume, save_trained,
                                                set_rng_state)

_RUN_NUMBER = itertools.count()  # tells apart runs of one process started within the same second


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


ONEDNN_CACHE_CAPACITY = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"


def without_onednn_primitive_cache() -> None:
    """float32 fine-tuning on the CPU: oneDNN keeps each primitive it builds (up to 1,024, one per matrix shape), and
    the length buckets and per-step item counts bring new shapes at most steps, so the cache keeps growing the
    resident memory (~140 MiB of the Scientific-mm fine-tune's peak). Rebuilding them gives bit-identical results
    for ~1-3% of CPU time. oneDNN reads the setting once, at its first primitive in the process; a value the user
    set is kept.
    Not under bf16 autocast, whose kernels cost more to rebuild, nor in pre-training: there a whole epoch on
    Beauty + Office took 1.4-3.8% longer without the cache for no lower peak (two paired readings, 1.73-1.79 GB
    either way). A process that pre-trains before it fine-tunes (the demo job) thus keeps the cache for both: the
    same numbers, a higher peak only there."""
    os.environ.setdefault(ONEDNN_CACHE_CAPACITY, "0")


class MISSRecTrainer(TieRuleEvaluation, Trainer):
    """Trainer for MISSRec (the benchmark also trains UniSRec and RecBole's SASRec with it).

    - refreshes the DPC-KNN interest map before every training epoch (and logs its cost);
    - optimises only parameters with ``requires_grad`` (parameter-efficient fine-tuning);
    - ``pretrain`` trains without validation and writes a portable checkpoint every ``save_step``
      epochs and at the end;
    - evaluation applies the ``tie_rule`` (:mod:`missrec_recbole.evaluation`);
    - before every epoch (and when done) it writes ``resume_file`` (:func:`~.checkpoint.save_resume`; the caller
      may choose the path): weights, interest map, optimizer, epoch, early-stopping bookkeeping and all random
      states, so :meth:`resume_checkpoint` continues an interrupted run exactly as if it had not stopped;
    - its best-model file (``_save_checkpoint``) holds plain types and is read back by the one reader
      (:class:`~.checkpoint.Checkpoint`, ``weights_only=True``);
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
        if self.autocast_dtype is None and torch.device(self.device).type == "cpu" and config["stage"] != "pretrain":
            without_onednn_primitive_cache()
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = self._build_optimizer(params=trainable)
        self.logger.info(set_color("Trainable parameters", "blue") + f": {sum(p.numel() for p in trainable)}")
        name = f"{self.run_name}-{get_local_time()}-{os.getpid()}-{next(_RUN_NUMBER)}.pth"
        self.saved_model_file = distributed.broadcast(os.path.join(self.checkpoint_dir, name))
        self._resume_file = None  # chosen by the caller, else the file resumed from, else beside saved_model_file
        self._resuming = None  # a resume file whose random states are restored when training starts
        self.pretrain_prefix = distributed.broadcast(self._free_pretrain_prefix())
        self.interest_refresh_seconds = []
        self.epochs_resumed = 0  # epochs trained before resume_checkpoint() (by the interrupted process)

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
        """Where this run writes its resume file: the path the caller set, else the file it resumed from, else
        ``<saved_model_file>-resume.pth``."""
        return self._resume_file or self.saved_model_file[: -len(".pth")] + "-resume.pth"

    @resume_file.setter
    def resume_file(self, path) -> None:
        self._resume_file = os.fspath(path)

    def _free_pretrain_prefix(self) -> str:
        """Prefix of this run's pre-training checkpoints: ``<run_name>`` unless another run already wrote
        checkpoints under it, then this run's unique file stem (never overwrite another run's files)."""
        taken = any(name.startswith(f"{self.run_name}-epoch") for name in os.listdir(self.checkpoint_dir)) \
            if os.path.isdir(self.checkpoint_dir) else False
        return self.saved_model_file[: -len(".pth")] if taken else os.path.join(self.checkpoint_dir, self.run_name)

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        """RecBole's best-model file, written by :func:`~.checkpoint.save_trained` (plain types, atomic; rank 0)."""
        if not distributed.is_main():
            return
        path = save_trained(self, epoch, kwargs.pop("saved_model_file", self.saved_model_file))
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {path}")

    def save_resume_state(self, next_epoch: int, train_data) -> None:
        """Write everything needed to continue training at ``next_epoch`` to :attr:`resume_file` (rank 0)."""
        if distributed.is_main():
            save_resume(self, self.resume_file, next_epoch, train_data)

    def resume_checkpoint(self, resume_file, train_data=None) -> None:
        """RecBole's resume, exact: continue the run that wrote the resume file ``resume_file`` (a path or a
        :class:`Checkpoint`; same options and data: checked, see :meth:`Checkpoint.check_run`). Unless the caller
        set :attr:`resume_file`, this run keeps writing that file. ``train_data`` (the run's training data) lets the
        data be checked now; without it (RecBole's call), when training starts, as are the random states restored."""
        checkpoint = resume_file if isinstance(resume_file, Checkpoint) else Checkpoint.read(resume_file, RESUME_HINT)
        checkpoint.check_run(run_identity(self.config, dataset_files(train_data) if train_data is not None else None))
        load_resume(self, checkpoint)
        self._resume_file = self._resume_file or checkpoint.path
        self._resuming = checkpoint
        self.epochs_resumed = len(self.train_loss_dict)
        self.logger.info(f"Continuing {checkpoint.path} at epoch {self.start_epoch}")

    def _start_training(self, train_data) -> None:
        """Before the first epoch: finish a pending resume (the data check, every random state), name the file."""
        checkpoint, self._resuming = self._resuming, None
        if checkpoint is not None:
            checkpoint.check_run(run_identity(self.config, dataset_files(train_data)))
            set_rng_state(checkpoint.content["rng"], train_data)
        self.logger.info(f"Resume file (rewritten every epoch): {self.resume_file}")

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.save_resume_state(epoch_idx, train_data)
        self.refresh_interests(epoch_idx)
        if self.autocast_dtype is not None:
            loss_func = under_autocast(loss_func or self.model.calculate_loss, self.device.type, self.autocast_dtype)
        return super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        self._start_training(train_data)
        result = super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
        distributed.barrier()  # rank 0 may still be writing the best model the others load next
        self.save_resume_state(max(self.train_loss_dict, default=self.start_epoch - 1) + 1, train_data)
        return result

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        """RecBole's evaluation; the best model is read back by the one reader (``weights_only=True``, checked)."""
        if load_best_model and eval_data:
            checkpoint = Checkpoint.read(model_file or self.saved_model_file, TRAINED_HINT)
            checkpoint.load_all(self.model, self.config["dataset"])
            self.logger.info(f"Loading model structure and parameters from {checkpoint.path}")
        return super().evaluate(eval_data, False, model_file, show_progress)

    def pretrain_checkpoint_path(self, epoch: int) -> str:
        return f"{self.pretrain_prefix}-epoch{epoch}.pth"

    def pretrain(self, train_data, verbose=True, show_progress=False) -> list[str]:
        """Pre-train for ``epochs`` epochs; returns the checkpoint paths (last = final)."""
        self._start_training(train_data)
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
