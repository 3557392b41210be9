from missrec_recbole.data.dataset import DatasetFormatError, MISSRecDataset, validate_dataset

__all__ = ["DatasetFormatError", "MISSRecDataset", "validate_dataset"]
