"""How much does a pre-trained checkpoint know about a domain it never saw, before any fine-tuning?

Zero-shot evaluation: the checkpoint's transferable weights (everything but item IDs; its run's network options,
as fine-tuning takes them) on a target dataset, interests clustered on the target's items with the pre-trained
adapters, then RecBole's full-ranking evaluation of the valid and test splits (pessimistic ties) -- the score a
fine-tuning run starts from. A same-architecture model with random weights (``--random``) is the floor: frozen
features alone already carry item similarity. Comparing checkpoints pre-trained on growing corpora separates what
the corpus teaches from what fine-tuning adds.

    python benchmarks/zero_shot.py -d Office --data_path data/ --random \\
        --checkpoint "Beauty+Scientific=saved/.../MISSRec-Beauty+Scientific-inductive-epoch10.pth" \\
        --out benchmarks/results/zero_shot_Office.json

Each ``--checkpoint LABEL=PATH`` adds one line; results are merged into ``--out`` by (dataset, label).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from missrec_recbole import config as configuration  # noqa: E402
from missrec_recbole.bench.store import now  # noqa: E402
from missrec_recbole.command import run_command  # noqa: E402
from missrec_recbole.errors import InputError  # noqa: E402
from missrec_recbole.files import write_json  # noqa: E402
from missrec_recbole.quick_start import (build_model, check_inputs, checkpoint_model, parse_overrides,  # noqa: E402
                                         run_config)
from missrec_recbole.trainer import MISSRecTrainer  # noqa: E402
from missrec_recbole.trainer.checkpoint import Checkpoint  # noqa: E402

RANDOM = "random weights"


def zero_shot(dataset: str, checkpoint_path: str | None, config_dict: dict, reference: str | None = None) -> dict:
    """Valid and test metrics of ``checkpoint_path``'s transferable weights on ``dataset``, not trained.

    Without a checkpoint: the network of ``reference`` (a checkpoint path: its options) with random weights."""
    checkpoint = Checkpoint.read(checkpoint_path) if checkpoint_path else None
    template = checkpoint or Checkpoint.read(reference)
    inherited = template.model_options(configuration.given_options(None, config_dict))
    model_class = checkpoint_model(template)
    with tempfile.TemporaryDirectory() as unused:  # RecBole's trainer creates a checkpoint folder; nothing is saved
        config = run_config(dataset, "finetune", None, {**inherited, **config_dict, "checkpoint_dir": unused},
                            model_class)
        files = check_inputs(config, None, checkpoint)
        start = time.perf_counter()
        model, _, _, valid_data, test_data = build_model(config, files, checkpoint, transferable=True,
                                                         model_class=model_class)
        trainer = MISSRecTrainer(config, model)  # its evaluate() puts the model in eval mode
        valid = trainer.evaluate(valid_data, load_best_model=False)
        test = trainer.evaluate(test_data, load_best_model=False)
    return {"dataset": dataset, "checkpoint": checkpoint_path, "model": model_class.__name__,
            "options": {**inherited, **config_dict}, "valid": dict(valid), "test": dict(test),
            "seconds": round(time.perf_counter() - start, 1)}


def merge(out: Path, lines: list[dict]) -> list[dict]:
    """Earlier lines of ``out`` with the same (dataset, label) replaced by the new ones."""
    earlier = json.loads(out.read_text(encoding="utf-8"))["lines"] if out.is_file() else []
    fresh = {(line["dataset"], line["label"]) for line in lines}
    return [line for line in earlier if (line["dataset"], line["label"]) not in fresh] + lines


def parse_checkpoint(text: str) -> tuple[str, str]:
    label, sep, path = text.partition("=")
    if not sep or not label or not path:
        raise InputError(f"--checkpoint {text!r}: give LABEL=PATH, e.g. Beauty+Office=saved/.../MISSRec-...pth")
    return label, path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-d", "--dataset", required=True, help="target dataset under --data_path")
    parser.add_argument("--data_path", required=True, help="folder containing <dataset>/")
    parser.add_argument("--checkpoint", action="append", required=True, metavar="LABEL=PATH",
                        help="a pre-trained checkpoint and its label (repeat for several)")
    parser.add_argument("--random", action="store_true", help=f"add a '{RANDOM}' line (the first checkpoint's "
                                                              "network, untrained)")
    parser.add_argument("--out", type=Path, help="JSON file the lines are merged into")
    args, unknown = parser.parse_known_args(argv)
    overrides = {"data_path": args.data_path, "state": "WARNING", **parse_overrides(unknown)}
    checkpoints = [parse_checkpoint(text) for text in args.checkpoint]
    runs = [(label, path, None) for label, path in checkpoints]
    if args.random:
        runs.append((RANDOM, None, checkpoints[0][1]))
    lines = []
    for label, path, reference in runs:
        line = {"label": label, **zero_shot(args.dataset, path, overrides, reference)}
        lines.append(line)
        print(f"{args.dataset} <- {label:30s} valid NDCG@10 {line['valid']['ndcg@10']:.4f}  Recall@10 "
              f"{line['valid']['recall@10']:.4f}  (test NDCG@10 {line['test']['ndcg@10']:.4f}, {line['seconds']} s)")
    if args.out:
        write_json(args.out, {"date": now(), "lines": merge(args.out, lines)})
        print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))  # bad input: one error line, no traceback
