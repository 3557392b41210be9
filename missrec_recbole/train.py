"""Pre-train and fine-tune MISSRec with RecBole (``python run_missrec.py`` and ``missrec train|pretrain``).

  python run_missrec.py                                    # demo: pre-train on Demo-A,B,C, fine-tune on Demo-D
  python run_missrec.py -d Scientific-mm --data_path=<datasets>     # fine-tune from scratch
  python run_missrec.py -d NAME -p saved/MISSRec-...pth                    # fine-tune a pre-trained model
  python run_missrec.py --stage=pretrain -d Demo-A,Demo-B                   # pre-train (merged domains)
  python run_missrec.py recommend -p MODEL.pth -d NAME --history ID1,ID2 -k 10   # see recommend.py

Any RecBole/MISSRec option can be overridden as --key=value (e.g. --epochs=20 --learning_rate=0.0005);
values are read as YAML. Defaults: props/common.yaml, props/MISSRec.yaml, props/<stage>.yaml, props/<dataset>.yaml.
Every option is checked before anything runs (python -m missrec_recbole.config_schema lists them).
"""

from __future__ import annotations

import argparse

from missrec_recbole.command import DEBUG_HELP, command_parser, watched
from missrec_recbole.config import PROPS, parse_known_options
from missrec_recbole.files import write_json
from missrec_recbole.quick_start import finetune, pretrain
from missrec_recbole.released import released_names
from missrec_recbole.trainer import distributed

DEMO_PRETRAIN = ["Demo-A", "Demo-B", "Demo-C"]
DEMO_FINETUNE = "Demo-D"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description, parser.formatter_class = __doc__, argparse.RawDescriptionHelpFormatter
    parser.add_argument("-d", "--dataset", help="dataset name under --data_path; comma-separated list to pre-train "
                                                "on several domains (default: the demo run)")
    parser.add_argument("-p", "--pretrained", help="pre-trained checkpoint to fine-tune from: a .pth, or the "
                                                  f"short name of one shipped in the package ({released_names()})")
    parser.add_argument("--stage", choices=["pretrain", "finetune"], default="finetune")
    parser.add_argument("--mode", choices=["inductive", "transductive"],
                        help="inductive: item features only; transductive: features + item ID embedding "
                             "(default: transductive to fine-tune, inductive to pre-train)")
    parser.add_argument("--config_files", help="extra YAML config files (space- or comma-separated)")
    parser.add_argument("--data_path", help="folder containing <dataset>/ (default: ./dataset)")
    parser.add_argument("--no_freeze", action="store_true",
                        help="with -p: train all weights instead of adapters/beta/LayerNorm/ID embedding only")
    parser.add_argument("--resume", help="continue an interrupted run from its *-resume.pth file "
                                         "(give the same other arguments)")
    parser.add_argument("--show_progress", action="store_true",
                        help="progress bars per epoch (default: when stderr is a terminal)")
    parser.add_argument("--result_json", help="also write the results to this JSON file")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)


def parse_args(argv=None, parser=None):
    """``(args, config overrides)`` of a training command line (``parser``: as for :func:`main`)."""
    args, overrides = parse_known_options(command_parser(add_arguments, parser), argv)
    for key in ("mode", "data_path"):
        if getattr(args, key):
            overrides[key] = getattr(args, key)
    args.show_progress = args.show_progress or watched()  # a person watches: bars, else plain log lines
    args.config_files = args.config_files.replace(",", " ").split() if args.config_files else []
    return args, overrides


def format_results(result) -> str:
    lines = [f"{result['dataset']} ({result['mode']}, "
             f"{'pre-trained: ' + result['pretrained'] if result['pretrained'] else 'from scratch'}), "
             f"{result['epochs']} epochs, {result['seconds_per_epoch']:.1f} s/epoch, "
             f"{result['trainable_parameters']} trainable parameters",
             f"{'':8}" + "".join(f"{m:>11}" for m in result["test"])]
    for split in ("valid", "test"):
        lines.append(f"{split:8}" + "".join(f"{result[split][m]:>11.4f}" for m in result["test"]))
    return "\n".join(lines)


def main(argv=None, parser=None):
    """Train as the command line ``argv`` says; returns the results. ``parser``: the ``missrec train`` sub-command's
    (:func:`~missrec_recbole.command.command_parser`). A torchrun process group is left at the end, whatever happens."""
    try:
        return _train(*parse_args(argv, parser))
    finally:
        distributed.shutdown()


def _train(args, overrides):
    if args.dataset is None:  # the demo: brief pre-training, then parameter-efficient fine-tuning
        files = [str(PROPS / "demo-pretrain.yaml")] + args.config_files
        checkpoints = pretrain(DEMO_PRETRAIN, files, overrides, args.show_progress)
        if distributed.is_main():
            print(f"pre-trained checkpoint: {checkpoints[-1]}")
        files = [str(PROPS / "demo-finetune.yaml")] + args.config_files
        result = finetune(DEMO_FINETUNE, checkpoints[-1], files, overrides, args.show_progress, not args.no_freeze)
    elif args.stage == "pretrain":
        checkpoints = pretrain(args.dataset.split(","), args.config_files, overrides, args.show_progress, args.resume)
        result = {"checkpoints": checkpoints}
        if distributed.is_main():
            print("checkpoints:\n" + "\n".join(checkpoints))
    else:
        result = finetune(args.dataset, args.pretrained, args.config_files, overrides, args.show_progress,
                          not args.no_freeze, args.resume)
    if not distributed.is_main():  # under torchrun, rank 0 reports
        return result
    if "test" in result:
        print(format_results(result))
    if args.result_json:
        write_json(args.result_json, result)
    return result
