from missrec_recbole.model.missrec import MISSRec

__all__ = ["MISSRec"]
