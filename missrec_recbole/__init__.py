"""MISSRec for RecBole: multimodal interest-aware sequential recommendation (Wang et al., MM 2023)."""

from missrec_recbole import compat

compat.apply()

__version__ = "0.1.0"
