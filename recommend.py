"""``python recommend.py ...`` = ``missrec recommend ...`` (missrec_recbole/inference/cli.py); see --help."""
import sys

from missrec_recbole.cli import recommend as run

if __name__ == "__main__":
    sys.exit(run())
