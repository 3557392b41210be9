from missrec_recbole.trainer.checkpoint import (CheckpointError, CheckpointMismatchError, check_architecture,
                                                load_pretrained, load_trained, read_checkpoint, save_pretrained,
                                                saved_data_path)
from missrec_recbole.trainer.trainer import MISSRecTrainer, read_resume_state, run_identity

__all__ = ["MISSRecTrainer", "CheckpointError", "CheckpointMismatchError", "check_architecture", "load_pretrained",
           "load_trained", "read_checkpoint", "save_pretrained", "saved_data_path", "read_resume_state", "run_identity"]
