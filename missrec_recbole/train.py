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
import sys

from missrec_recbole import bench
from missrec_recbole.command import DEBUG_HELP, run_command, watched
from missrec_recbole.config import PROPS, parse_known_options
from missrec_recbole.files import write_json
from missrec_recbole.inference import cli as recommend_cli
from missrec_recbole.quick_start import finetune, pretrain
from missrec_recbole.tools import amazon, features, from_recbole, images, inspect, merge, prepare, split_users
from missrec_recbole.tools.demo import cli as demo
from missrec_recbole.trainer import distributed

DEMO_PRETRAIN = ["Demo-A", "Demo-B", "Demo-C"]
DEMO_FINETUNE = "Demo-D"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--dataset", help="dataset name under --data_path; comma-separated list to pre-train "
                                                "on several domains (default: the demo run)")
    parser.add_argument("-p", "--pretrained", help="pre-trained checkpoint (.pth) to fine-tune from")
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
    args, overrides = parse_known_options(parser, argv)
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


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["recommend"]:  # python run_missrec.py recommend -p MODEL -d NAME --history ID1,ID2
        return recommend_cli.main(argv[1:])
    args, overrides = parse_args(argv)
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


def run(argv=None) -> int:
    """The command line: bad input -> one 'error: ...' line on stderr and a non-zero exit code."""
    try:
        return run_command(main, argv)
    finally:
        distributed.shutdown()



# ----------------------------------------------------------------------------- the `missrec` console command
TOOLS = {"features": features._main, "prepare": prepare.main, "inspect": inspect._main, "amazon": amazon._main,
         "from_recbole": from_recbole.main, "images": images._main, "demo": demo.main, "merge": merge.main,
         "split_users": split_users.main}
COMMANDS = ("train", "pretrain", "recommend", "bench", *TOOLS)
USAGE = f"""usage: missrec {{{','.join(COMMANDS)}}} [options]

  missrec train [-d NAME] [-p MODEL.pth] [--key=value ...]   fine-tune or train (python run_missrec.py ...)
  missrec pretrain -d A,B,C [--key=value ...]                pre-train (python run_missrec.py --stage=pretrain ...)
  missrec recommend -p MODEL.pth -d NAME --history ID1,ID2   recommend (python recommend.py ...;
                                                             --history_file PATH: one id per line)
  missrec bench [...]                                        benchmark (python -m missrec_recbole.bench ...)
  missrec features|prepare|inspect|amazon|from_recbole|images|demo|merge|split_users [...]
                                                             offline tools (python -m missrec_recbole.tools.NAME ...)

`missrec COMMAND --help` describes each command."""


def missrec(argv=None) -> int:
    """The ``missrec`` console command (setup.cfg): one name for every entry point of the package."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command, rest = (argv[0], argv[1:]) if argv else (None, [])
    if command in ("train", "pretrain"):
        return run((["--stage=pretrain"] if command == "pretrain" else []) + rest)
    if command == "recommend":
        return recommend_cli.run(rest)
    if command == "bench":
        return run_command(bench.main, rest)
    if command in TOOLS:
        return run_command(TOOLS[command], rest)
    print(USAGE, file=sys.stdout if command in ("-h", "--help") else sys.stderr)
    return 0 if command in ("-h", "--help") else 2

