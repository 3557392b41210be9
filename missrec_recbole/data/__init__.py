from missrec_recbole.data.atomic_files import DatasetFormatError
from missrec_recbole.data.dataset import MISSRecDataset, validate_dataset

__all__ = ["DatasetFormatError", "MISSRecDataset", "validate_dataset"]
