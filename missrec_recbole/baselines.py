"""Baselines on MISSRec's pipeline (same data files, split, trainer, tie rule and evaluation).

    from missrec_recbole.baselines import run_unisrec
    ckpt = run_unisrec(["Demo-A", "Demo-B"], stage="pretrain", mode="inductive")["checkpoint"]
    result = run_unisrec("Demo-C", stage="finetune", mode="transductive", pretrained=ckpt)
"""

from __future__ import annotations

import time

from missrec_recbole.model import UniSRec
from missrec_recbole.quick_start import finetune, pretrain
from missrec_recbole.trainer import MISSRecTrainer


def run_unisrec(dataset, *, stage: str, mode: str, pretrained=None, config_dict=None, data_path=None,
                trainer_class=MISSRecTrainer, resume=None, resume_file=None) -> dict:
    """Pre-train or fine-tune the UniSRec baseline (props/common.yaml < props/UniSRec.yaml < props/<stage>.yaml
    < ``config_dict``).

    ``dataset``: a name, or for ``stage="pretrain"`` a list of names (merged, as MISSRec pre-training).
    ``mode``: ``inductive`` (text only) or ``transductive`` (text + item ID embedding).
    ``pretrained``: a checkpoint written by the pretrain stage (fine-tuning; the item set may differ).
    Adapter-only fine-tuning is ``config_dict={"adapters_only": True}``; by default it is on exactly
    when ``pretrained`` is given (props/finetune.yaml). ``trainer_class``: MISSRecTrainer or a subclass (it
    skips the interest refresh for models without interests and names files after the model). ``resume``: the
    ``*-resume.pth`` file of an interrupted run with the same arguments; ``resume_file``: where this run writes its
    own (default: beside its model file, or the ``resume`` file).

    Returns, for ``finetune``: model, stage, dataset, mode, pretrained, best_valid_score, valid, test
    (metric -> value), epochs, best_epoch (0-based), seconds_per_epoch, interest_refresh_seconds (None),
    trainable_parameters, model_file, resume_file. For ``pretrain``: model, stage, dataset, mode,
    checkpoints (paths, last = final), checkpoint (final), seconds (wall time, data loading included).
    """
    config_dict = {**(config_dict or {}), "mode": mode}
    if data_path is not None:
        config_dict["data_path"] = str(data_path)
    if stage == "pretrain":
        if pretrained is not None:
            raise ValueError("run_unisrec: `pretrained` is for stage='finetune'")
        datasets = [dataset] if isinstance(dataset, str) else list(dataset)
        start = time.time()
        checkpoints = pretrain(datasets, config_dict=config_dict, model_class=UniSRec, trainer_class=trainer_class,
                               resume=resume, resume_file=resume_file)
        return {"model": "UniSRec", "stage": stage, "dataset": "+".join(datasets), "mode": mode,
                "checkpoints": checkpoints, "checkpoint": checkpoints[-1], "seconds": time.time() - start}
    if stage != "finetune":
        raise ValueError(f"run_unisrec: stage {stage!r} must be pretrain or finetune")
    result = finetune(dataset, pretrained=pretrained, config_dict=config_dict, model_class=UniSRec,
                      trainer_class=trainer_class, resume=resume, resume_file=resume_file)
    return {"model": "UniSRec", "stage": stage, **result, "interest_refresh_seconds": None}
