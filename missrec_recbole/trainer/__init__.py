from missrec_recbole.trainer.checkpoint import (CheckpointError, check_architecture, load_pretrained, read_checkpoint,
                                                save_pretrained)
from missrec_recbole.trainer.trainer import MISSRecTrainer, read_resume_state, run_identity

__all__ = ["MISSRecTrainer", "CheckpointError", "check_architecture", "load_pretrained", "read_checkpoint",
           "save_pretrained", "read_resume_state", "run_identity"]
