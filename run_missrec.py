"""Pre-train and fine-tune MISSRec with RecBole: ``python run_missrec.py --help`` (the same as ``missrec train``).

The command is :mod:`missrec_recbole.cli`; this script keeps ``python run_missrec.py ...`` working from a clone.
"""

import sys

from missrec_recbole.cli import DEMO_FINETUNE, DEMO_PRETRAIN, format_results, main, parse_args, run  # noqa: F401

if __name__ == "__main__":
    sys.exit(run())
