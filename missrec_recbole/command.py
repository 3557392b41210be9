"""Command-line entry points: bad input ends in one ``error: ...`` line and a non-zero exit code.

Every command runs through :func:`run_command`, so no Python traceback reaches the user; ``--debug`` (accepted by
every command) prints the traceback as well. A command module offers ``add_arguments(parser)`` (its description and
arguments) and ``main(argv=None, parser=None)``, which parses ``argv`` with :func:`command_parser`: ``parser`` is its
sub-command of the ``missrec`` command (:mod:`missrec_recbole.cli`), None when it runs as ``python -m ...``.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from missrec_recbole.errors import InputError

DEBUG_FLAG = "--debug"
DEBUG_HELP = "on an error, also print the Python traceback"


def watched() -> bool:
    """True when a person watches the output (stderr is a terminal): show progress bars, else plain log lines."""
    return sys.stderr.isatty()


def command_parser(add_arguments, parser: argparse.ArgumentParser | None = None,
                   prog: str | None = None) -> argparse.ArgumentParser:
    """``parser`` (a ``missrec`` sub-command's, named ``missrec NAME``) or a new parser named ``prog`` (None: the
    script's file name), with a command's description and arguments (``add_arguments``)."""
    parser = argparse.ArgumentParser(prog=prog) if parser is None else parser
    add_arguments(parser)
    return parser


def error_line(error: BaseException) -> str:
    """One line for ``error``: the package's errors speak for themselves, anything else names its type."""
    text = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, (InputError, FileNotFoundError)):
        return f"error: {text}"
    if isinstance(error, OSError):
        return f"error: {text} (check the path and its permissions)"
    return f"error: {type(error).__name__}: {text} (run again with {DEBUG_FLAG} for the traceback)"


def run_command(main, argv=None) -> int:
    """Run ``main(argv)`` (argv without ``--debug``); returns the exit code (0, 1 on an error, 130 on Ctrl-C).
    argparse's own usage errors keep their exit code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv
    argv = [arg for arg in argv if arg != DEBUG_FLAG]
    try:
        code = main(argv)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exit_:
        return _exit_code(exit_.code)
    except Exception as error:  # noqa: BLE001 - the point: no traceback for any input
        if debug:
            traceback.print_exc()
        print(error_line(error), file=sys.stderr)
        return 1
    return code if isinstance(code, int) else 0


def _exit_code(code) -> int:
    if code is None or isinstance(code, int):
        return code or 0
    print(code, file=sys.stderr)  # sys.exit("message")
    return 1
