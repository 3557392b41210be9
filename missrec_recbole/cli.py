"""The ``missrec`` command (setup.cfg): one argparse with a sub-command per entry point of the package.

A sub-command's module is imported only when it runs (``missrec --help`` imports none of them); it offers
``add_arguments(parser)`` and ``main(argv, parser)`` (:mod:`missrec_recbole.command`). ``python run_missrec.py`` and
``python recommend.py`` are :func:`run_missrec` and :func:`recommend`; each tool also runs as
``python -m missrec_recbole.tools.NAME``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass

from missrec_recbole.command import run_command


@dataclass(frozen=True)
class Command:
    module: str  # offers add_arguments(parser) and main(argv, parser)
    help: str  # one line in `missrec --help`
    argv: tuple[str, ...] = ()  # put before the user's arguments


COMMANDS = {
    "train": Command("missrec_recbole.train", "fine-tune or train (python run_missrec.py ...)"),
    "pretrain": Command("missrec_recbole.train", "pre-train (python run_missrec.py --stage=pretrain ...)",
                        ("--stage=pretrain",)),
    "recommend": Command("missrec_recbole.inference.cli", "top-k items for a history (python recommend.py ...)"),
    "bench": Command("missrec_recbole.bench.cli", "the benchmark suite (python -m missrec_recbole.bench ...)"),
    "amazon": Command("missrec_recbole.tools.amazon", "raw Amazon reviews + metadata -> atomic files"),
    "from_recbole": Command("missrec_recbole.tools.from_recbole", "a RecBole atomic dataset -> atomic files"),
    "images": Command("missrec_recbole.tools.images", "download the item images of NAME.images"),
    "features": Command("missrec_recbole.tools.features", "item text/image feature files (CLIP, WordLlama, ...)"),
    "prepare": Command("missrec_recbole.tools.prepare", "a dataset folder -> a checked copy with text features"),
    "inspect": Command("missrec_recbole.tools.inspect", "statistics of a dataset, checked like the loader does"),
    "demo": Command("missrec_recbole.tools.demo.cli", "generate the demo domains Demo-A..Demo-D"),
    "merge": Command("missrec_recbole.tools.merge", "merge datasets into one pre-training dataset"),
    "split_users": Command("missrec_recbole.tools.split_users", "split a dataset's users into two halves"),
    "release": Command("missrec_recbole.tools.release", "a pre-training checkpoint -> one shipped in the package"),
}
EPILOG = """examples:
  missrec train -d NAME [-p MODEL.pth] [--key=value ...]
  missrec pretrain -d A,B,C [--key=value ...]
  missrec recommend -p MODEL.pth -d NAME --history ID1,ID2

`missrec COMMAND --help` describes each command; the offline tools (amazon ... release) are also
`python -m missrec_recbole.tools.NAME`."""


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The ``missrec`` parser and its (still empty) sub-command parsers: a command's module fills its own."""
    parser = argparse.ArgumentParser(prog="missrec", description="MISSRec for RecBole: every command of the package.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)
    return parser, {name: commands.add_parser(name, help=command.help) for name, command in COMMANDS.items()}


def run(name: str, argv=None, parser: argparse.ArgumentParser | None = None) -> int:
    """Command ``name`` on ``argv``, its module imported now; bad input -> one ``error: ...`` line, exit code 1.
    ``parser``: its ``missrec`` sub-command parser; None for the command's own name (``run_missrec.py``, ...)."""
    command = COMMANDS[name]

    def main(args):
        return importlib.import_module(command.module).main(args, parser)

    return run_command(main, [*command.argv, *(sys.argv[1:] if argv is None else argv)])


def missrec(argv=None) -> int:
    """The ``missrec`` console command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, commands = build_parser()
    if argv[:1] and argv[0] in COMMANDS:
        return run(argv[0], argv[1:], commands[argv[0]])
    return run_command(parser.parse_args, argv[:1])  # --help: exit code 0; no or an unknown command: 2


def run_missrec(argv=None) -> int:
    """``python run_missrec.py ...``: ``missrec train ...``; ``python run_missrec.py recommend ...``: ``missrec
    recommend ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return run("recommend", argv[1:]) if argv[:1] == ["recommend"] else run("train", argv)


def recommend(argv=None) -> int:
    """``python recommend.py ...``: ``missrec recommend ...``."""
    return run("recommend", argv)
