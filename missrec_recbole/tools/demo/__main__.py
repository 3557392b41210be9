"""python -m missrec_recbole.tools.demo ... (see cli.py)."""

import sys

from missrec_recbole.command import run_command
from missrec_recbole.tools.demo.cli import main

if __name__ == "__main__":
    sys.exit(run_command(main))
