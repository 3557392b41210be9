"""Recommend with a trained MISSRec checkpoint (see missrec_recbole/inference/cli.py).

  python recommend.py -p saved/MISSRec-Scientific-mm-inductive-....pth -d Scientific-mm \
      --data_path=<datasets> --history B00O47ILVA,B006ATU73A -k 10
"""

import sys

from missrec_recbole.inference.cli import run

if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
