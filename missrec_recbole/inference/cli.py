"""``python recommend.py``: top-k recommendations for one history, printed as a table.

  python recommend.py -p saved/MISSRec-Scientific-mm-inductive-....pth -d Scientific-mm \\
      --data_path=<datasets> --history B00O47ILVA,B006ATU73A -k 10
  python recommend.py -p MODEL.pth --history_file history.txt     # one id per line (ids with commas)

Ids are the dataset's original ids (NAME.item2index). The item text is shown when NAME.text exists.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from missrec_recbole.command import DEBUG_HELP, command_parser
from missrec_recbole.inference.errors import HistoryInputError
from missrec_recbole.inference.predictor import MISSRecPredictor

TEXT_WIDTH = 70


PROG = "recommend.py"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description, parser.formatter_class = __doc__, argparse.RawDescriptionHelpFormatter
    parser.add_argument("-p", "--model_file", "--pretrained", dest="model_file", required=True,
                        help="trained checkpoint (.pth; the `model_file` of a training run) or a pre-trained one")
    parser.add_argument("-d", "--dataset", help="dataset name (default: the checkpoint's)")
    parser.add_argument("--data_path", help="folder containing <dataset>/ (default: the checkpoint's)")
    parser.add_argument("--history", help="comma-separated original item ids, oldest first")
    parser.add_argument("--history_file", metavar="PATH", help="instead of --history: a UTF-8 text file with one "
                                                                "original item id per line, oldest first")
    parser.add_argument("-k", "--topk", type=int, default=10, help="number of items (default 10)")
    parser.add_argument("--keep_history", action="store_true", help="allow items of the history in the results")
    parser.add_argument("--allow_feature_only", action="store_true",
                        help="transductive model: also rank items that have no ID embedding, from features only")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when present, else the CPU)")
    parser.add_argument("--export", metavar="DIR", help="also export item vectors + FAISS indexes to DIR")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)


def parse_args(argv=None, parser=None):
    return command_parser(add_arguments, parser, PROG).parse_args(argv)


def read_history(args) -> list[str]:
    """The history of ``--history`` or ``--history_file`` (exactly one of them), surrounding spaces and blank
    entries dropped; checked before the checkpoint is loaded."""
    if (args.history is None) == (args.history_file is None):
        raise HistoryInputError("give the history either as --history ID1,ID2 or as --history_file PATH "
                                f"({'not both' if args.history is not None else 'neither was given'})")
    if args.history is not None:
        return [item.strip() for item in args.history.split(",") if item.strip()]
    return _history_file(Path(args.history_file))


def _history_file(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise HistoryInputError(f"--history_file {path}: file not found. Give a text file with one item id per "
                                "line.") from None
    except UnicodeDecodeError as error:
        raise HistoryInputError(f"--history_file {path}: not UTF-8 text (undecodable byte at offset "
                                f"{error.start}). Save it as UTF-8, one item id per line.") from None
    history = [line.strip() for line in text.splitlines() if line.strip()]
    if not history:
        raise HistoryInputError(f"--history_file {path}: holds no item id. Write the history into it, one "
                                "original item id per line, oldest first.")
    return history


def _shorten(text: str | None, width: int = TEXT_WIDTH) -> str:
    if not text:
        return ""
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 3] + "..."


def format_table(rows, texts) -> str:
    """rank | item id | score (| text)."""
    show_text = any(texts.values())
    id_width = max([len("item id")] + [len(str(item)) for item, _ in rows])
    header = f"{'rank':>4}  {'item id':<{id_width}}  {'score':>8}" + ("  text" if show_text else "")
    lines = [header, "-" * len(header if not show_text else header + " " * (TEXT_WIDTH - 4))]
    for rank, (item, score) in enumerate(rows, 1):
        line = f"{rank:>4}  {item:<{id_width}}  {score:>8.4f}"
        if show_text:
            line += f"  {_shorten(texts.get(item))}"
        lines.append(line)
    return "\n".join(lines)


def main(argv=None, parser=None) -> list:
    """Run the command; returns the (id, score) rows. Errors propagate (:func:`missrec_recbole.cli.run` turns them
    into one error line). ``parser``: the ``missrec recommend`` sub-command's."""
    args = parse_args(argv, parser)
    history = read_history(args)
    predictor = MISSRecPredictor.load(args.model_file, dataset=args.dataset, data_path=args.data_path,
                                      allow_feature_only=args.allow_feature_only,
                                      config_dict=None if args.device is None else {"device": args.device})
    rows = predictor.recommend(history, k=args.topk, exclude_history=not args.keep_history)
    if args.json:
        print(json.dumps([{"rank": r, "item_id": i, "score": s, "text": predictor.text_of(i)}
                          for r, (i, s) in enumerate(rows, 1)], indent=1))
    else:
        print(f"{predictor.dataset_name} ({predictor.mode}, {predictor.n_items} items), history: "
              f"{', '.join(history)}")
        print(format_table(rows, {item: predictor.text_of(item) for item, _ in rows}))
    if args.export:
        print(f"exported: {predictor.export(args.export)}")
    return rows
