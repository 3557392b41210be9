"""The config layer: props files, ``--key=value`` options and the checked RecBole ``Config``.

Nothing here reads a dataset, joins a process group or writes a file: :func:`build_config` only reads the
props/YAML files it is given and returns a ``Config``. Every command-line tool parses its ``--key=value``
options with :func:`parse_overrides`.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from recbole.config import Config

from missrec_recbole.compat import config_value
from missrec_recbole.config_schema import check_options, read_config_file, read_value

# the defaults ship inside the package (package data): a wheel install reads its own copy, an editable install
# the checkout's folder, so edits there take effect
PROPS = Path(__file__).resolve().parent / "props"
DEFAULT_DATA_PATH = Path("dataset")  # as RecBole's: relative to where the command runs
COMMON_PROPS = "common.yaml"  # the data/training block every model shares (lowest priority)


def parse_overrides(items) -> dict:
    """``--key=value`` command-line overrides as a config dict (values read as YAML, ``1e-3`` a float)."""
    overrides = {}
    for item in items:
        if not item.startswith("--") or "=" not in item:
            raise ValueError(f"unrecognised argument {item!r}: options are --key=value")
        key, value = item[2:].split("=", 1)
        overrides[key] = read_value(value)
    return overrides


def parse_known_options(parser, argv, hint: str = ""):
    """``(args, overrides)``: ``parser``'s own arguments and the ``--key=value`` config overrides of the rest;
    anything else is a usage error (``hint``: an example added to its message)."""
    args, extra = parser.parse_known_args(argv)
    try:
        return args, parse_overrides(extra)
    except ValueError as error:
        parser.error(f"{error}{hint}")


@contextlib.contextmanager
def without_argv():
    """RecBole's Config also parses sys.argv; we pass overrides explicitly instead."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


def given_options(config_files=None, config_dict=None) -> set:
    """The options a run sets itself (its config files and overrides), as opposed to the props/ defaults. A file
    that does not exist sets nothing here; :func:`build_config` reports it."""
    files = [read_config_file(path) for path in config_files or [] if Path(path).is_file()]
    return set(config_dict or {}).union(*files)


def props_files(model: str, stage: str, dataset: str | None = None) -> list[Path]:
    """The props/ defaults a run of ``model`` at ``stage`` reads, lowest priority first."""
    files = [PROPS / COMMON_PROPS, PROPS / f"{model}.yaml", PROPS / f"{stage}.yaml"]
    return files + [p for p in [PROPS / f"{dataset}.yaml"] if dataset and p.is_file()]


def merged_props(model: str, stage: str) -> dict:
    """The values of :func:`props_files` merged (later files win)."""
    merged = {}
    for path in props_files(model, stage):
        merged.update(read_config_file(path))
    return merged


def build_config(dataset: str, stage: str = "finetune", config_files=None, config_dict=None, *,
                 model_class) -> Config:
    """RecBole Config for ``model_class``: props/common.yaml < props/<Model>.yaml < props/<stage>.yaml
    < props/<dataset>.yaml < ``config_files`` < ``config_dict`` (props/: the package's folder :data:`PROPS`).
    ``data_path`` defaults to ``./dataset`` of the current directory (stored as an absolute path).
    No side effects: under torchrun the caller joins the process group (``trainer.distributed.join``)."""
    if not PROPS.is_dir():
        raise FileNotFoundError(f"{PROPS}: props folder not found; reinstall the package (pip install missrec-recbole)")
    defaults = props_files(model_class.__name__, stage, dataset)
    files = defaults + [Path(f) for f in config_files or []]
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: config file not found")
    config_dict = {key: config_value(value) for key, value in (config_dict or {}).items()}  # as RecBole reads them
    layers = [(str(path), read_config_file(path)) for path in files] + [("", config_dict)]
    check_options(layers, model_class.__name__)  # before RecBole reads anything: one message naming the option
    n_generic = len(props_files(model_class.__name__, stage))  # data_path counts from props/<dataset>.yaml on
    if not any("data_path" in values for _, values in layers[n_generic:]):
        config_dict["data_path"] = str(DEFAULT_DATA_PATH.resolve())
    with without_argv():
        config = Config(model=model_class, dataset=dataset, config_file_list=[str(f) for f in files],
                        config_dict=config_dict)
    # RecBole reads a dataset named ml-100k from its own bundled copy whatever data_path says
    # (Config._set_default_parameters); here every dataset, ml-100k converted by tools.from_recbole too, is under it
    config["data_path"] = os.path.join(config.external_config_dict["data_path"], dataset)
    return config
