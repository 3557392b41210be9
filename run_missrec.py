"""``python run_missrec.py ...`` = ``missrec train ...`` (``recommend`` first: ``missrec recommend ...``); see --help."""
import sys

from missrec_recbole.cli import run_missrec as run

if __name__ == "__main__":
    sys.exit(run())
