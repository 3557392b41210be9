"""python -m missrec_recbole.bench ... (see the package docstring)."""

import sys

from missrec_recbole.bench.cli import main
from missrec_recbole.command import run_command

if __name__ == "__main__":
    if sys.argv[1:2] == ["_worker"]:
        main()  # a training child process: a traceback goes to the run's log, which the parent reports
    else:
        sys.exit(run_command(main))  # bad input: one error line, no traceback
