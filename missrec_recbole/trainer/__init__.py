from missrec_recbole.trainer.checkpoint import CheckpointError, load_pretrained, read_checkpoint, save_pretrained
from missrec_recbole.trainer.trainer import MISSRecTrainer, pessimistic_ties

__all__ = ["MISSRecTrainer", "pessimistic_ties", "CheckpointError", "load_pretrained", "read_checkpoint",
           "save_pretrained"]
