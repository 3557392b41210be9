from missrec_recbole.model.missrec import MISSRec
from missrec_recbole.model.unisrec import UniSRec

__all__ = ["MISSRec", "UniSRec"]
