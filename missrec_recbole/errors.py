"""The one base class of the package's input errors (bottom layer: imports nothing of the package)."""


class InputError(ValueError):
    """Bad input (an option, a file, a checkpoint, a request) whose message names it and says how to fix it:
    the command line prints it as one ``error: ...`` line without a traceback."""
