from missrec_recbole.trainer.checkpoint import (CheckpointError, check_architecture, load_pretrained, read_checkpoint,
                                                save_pretrained)
from missrec_recbole.trainer.trainer import MISSRecTrainer, pessimistic_ties, read_resume_state, run_identity

__all__ = ["MISSRecTrainer", "pessimistic_ties", "CheckpointError", "check_architecture", "load_pretrained", "read_checkpoint",
           "save_pretrained", "read_resume_state", "run_identity"]
