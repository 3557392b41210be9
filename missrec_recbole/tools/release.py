"""A pre-training checkpoint -> a checkpoint to ship inside the package (``missrec_recbole/released/``).

::

    python -m missrec_recbole.tools.release saved/.../MISSRec-A+B+C-inductive-epoch10.pth \\
        -o missrec_recbole/released/NAME.pth --name NAME --encoder wordllama:0.4.0.post1:l2_supercat:256

The output keeps the transferable weights and the training options, leaves out the options that name the
writer's folders (``data_path``, ``checkpoint_dir``, ...) and records the release (its name and the feature
encoder a dataset must use: a fine-tuning run whose feature width differs names it). Written atomically; read like
any pre-training checkpoint. Add the name to ``RELEASED`` in ``missrec_recbole/released/__init__.py`` and a model
card to docs/pretrained.md.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from missrec_recbole.command import command_parser, run_command
from missrec_recbole.files import atomic_torch_save
from missrec_recbole.trainer.checkpoint import Checkpoint, release_state

PROG = "python -m missrec_recbole.tools.release"


def write_release(source, out, name: str, encoder: str) -> dict:
    """Write the release of the pre-training checkpoint ``source`` to ``out``; returns its summary (size, sha256)."""
    state = release_state(Checkpoint.read(source), {"name": name, "encoder": encoder})
    atomic_torch_save(state, out)
    data = Path(out).read_bytes()
    return {"path": str(out), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "parameters": sum(t.numel() for t in state["state_dict"].values()), "epoch": state.get("epoch")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("checkpoint", help="a .pth written by --stage=pretrain")
    parser.add_argument("-o", "--out", required=True, help="the release file to write")
    parser.add_argument("--name", required=True, help="its short name (for -p NAME)")
    parser.add_argument("--encoder", required=True,
                        help="the feature encoder of the pre-training data (as tools.features records it)")


def main(argv=None, parser=None) -> dict:
    args = command_parser(add_arguments, parser, PROG).parse_args(argv)
    summary = write_release(args.checkpoint, args.out, args.name, args.encoder)
    print(f"{summary['path']}: {summary['bytes']} bytes, {summary['parameters']} parameters, "
          f"epoch {summary['epoch']}, sha256 {summary['sha256']}")
    return summary


if __name__ == "__main__":
    sys.exit(run_command(main))
