from missrec_recbole.trainer.checkpoint import (Checkpoint, CheckpointError, CheckpointMismatchError, load_pretrained,
                                                read_checkpoint, run_identity, save_pretrained, saved_data_path)
from missrec_recbole.trainer.trainer import MISSRecTrainer

__all__ = ["MISSRecTrainer", "Checkpoint", "CheckpointError", "CheckpointMismatchError", "load_pretrained",
           "read_checkpoint", "run_identity", "save_pretrained", "saved_data_path"]
