"""MISSRecTrainer: RecBole's Trainer plus interest refresh, pre-training and a deterministic tie rule."""

from __future__ import annotations

import os
import time

import torch
from recbole.trainer import Trainer
from recbole.utils import get_local_time, set_color

from missrec_recbole.trainer.checkpoint import save_pretrained


def pessimistic_ties(scores: torch.Tensor, positive_u: torch.Tensor, positive_i: torch.Tensor) -> torch.Tensor:
    """Make every other item whose score equals a target's rank before that target.

    Items without IDs can share feature vectors and hence scores exactly; ``torch.topk`` would order
    such ties arbitrarily (DESIGN.md section 7). Raising the tied items to the next float above the
    target's score makes the target's rank = 1 + #items scoring >= it, deterministically.
    """
    target = scores[positive_u, positive_i]
    tied = scores[positive_u] == target[:, None]
    bump = torch.zeros(scores.shape, dtype=torch.int32, device=scores.device)
    bump.index_put_((positive_u,), tied.to(torch.int32), accumulate=True)
    bump[positive_u, positive_i] = 0
    return torch.where(bump > 0, torch.nextafter(scores, torch.full_like(scores, float("inf"))), scores)


class MISSRecTrainer(Trainer):
    """Trainer for MISSRec.

    - refreshes the DPC-KNN interest map before every training epoch (and logs its cost);
    - optimises only parameters with ``requires_grad`` (parameter-efficient fine-tuning);
    - ``pretrain`` trains without validation and writes a portable checkpoint every ``save_step``
      epochs and at the end;
    - evaluation applies the ``tie_rule`` (``pessimistic``: see :func:`pessimistic_ties`).
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = self._build_optimizer(params=trainable)
        self.logger.info(set_color("Trainable parameters", "blue") + f": {sum(p.numel() for p in trainable)}")
        self.tie_rule = config["tie_rule"]
        name = f"MISSRec-{config['dataset']}-{config['mode']}-{get_local_time()}-{os.getpid()}.pth"
        self.saved_model_file = os.path.join(self.checkpoint_dir, name)
        self.interest_refresh_seconds = []

    def refresh_interests(self, epoch_idx) -> None:
        start = time.time()
        info = self.model.refresh_interests()
        seconds = time.time() - start
        self.interest_refresh_seconds.append(seconds)
        self.logger.info(f"epoch {epoch_idx} interest refresh: {info['tokens']} tokens -> "
                         f"{info['interests']} interests in {seconds:.2f}s")

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.refresh_interests(epoch_idx)
        return super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)

    def _full_sort_batch_eval(self, batched_data):
        interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
        if self.tie_rule == "pessimistic":
            scores = pessimistic_ties(scores, positive_u, positive_i)
        return interaction, scores, positive_u, positive_i

    def pretrain_checkpoint_path(self, epoch: int) -> str:
        name = f"MISSRec-{self.config['dataset']}-{self.config['mode']}-epoch{epoch}.pth"
        return os.path.join(self.checkpoint_dir, name)

    def pretrain(self, train_data, verbose=True, show_progress=False) -> list[str]:
        """Pre-train for ``epochs`` epochs; returns the checkpoint paths written (last = final)."""
        written = []
        for epoch_idx in range(self.start_epoch, self.epochs):
            start = time.time()
            train_loss = self._train_epoch(train_data, epoch_idx, show_progress=show_progress)
            self.train_loss_dict[epoch_idx] = sum(train_loss) if isinstance(train_loss, tuple) else train_loss
            if verbose:
                self.logger.info(self._generate_train_loss_output(epoch_idx, start, time.time(), train_loss))
            self._add_train_loss_to_tensorboard(epoch_idx, train_loss)
            last = epoch_idx + 1 == self.epochs
            if (epoch_idx + 1) % self.config["save_step"] == 0 or last:
                path = save_pretrained(self.model, self.config, self.pretrain_checkpoint_path(epoch_idx + 1),
                                       epoch_idx + 1)
                written.append(path)
                if verbose:
                    self.logger.info(set_color("Saving pre-trained checkpoint", "blue") + f": {path}")
        return written
