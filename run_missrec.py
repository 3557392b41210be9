"""Pre-train and fine-tune MISSRec with RecBole.

  python run_missrec.py                                    # demo: pre-train on Demo-A,B,C, fine-tune on Demo-D
  python run_missrec.py -d Scientific-mm --data_path=../shared/datasets     # fine-tune from scratch
  python run_missrec.py -d NAME -p saved/MISSRec-...pth                    # fine-tune a pre-trained model
  python run_missrec.py --stage=pretrain -d Demo-A,Demo-B                   # pre-train (merged domains)
  python run_missrec.py recommend -p MODEL.pth -d NAME --history ID1,ID2 -k 10   # see recommend.py

Any RecBole/MISSRec option can be overridden as --key=value (e.g. --epochs=20 --learning_rate=0.0005);
values are read as YAML. Defaults: props/common.yaml, props/MISSRec.yaml, props/<stage>.yaml, props/<dataset>.yaml.
Every option is checked before anything runs (python -m missrec_recbole.config_schema lists them).
"""

import sys

from missrec_recbole.cli import DEMO_FINETUNE, DEMO_PRETRAIN, format_results, main, parse_args, run  # noqa: F401

if __name__ == "__main__":
    sys.exit(run())
