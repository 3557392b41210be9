"""``python recommend.py``: top-k recommendations for one history, printed as a table.

  python recommend.py -p saved/MISSRec-Scientific-mm-inductive-....pth -d Scientific-mm \\
      --data_path=../shared/datasets --history B00O47ILVA,B006ATU73A -k 10

Ids are the dataset's original ids (NAME.item2index). The item text is shown when NAME.text exists.
"""

from __future__ import annotations

import argparse
import json

from missrec_recbole.command import DEBUG_HELP, run_command
from missrec_recbole.inference.predictor import MISSRecPredictor

TEXT_WIDTH = 70


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="recommend.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-p", "--model_file", "--pretrained", dest="model_file", required=True,
                        help="trained checkpoint (.pth; the `model_file` of a training run) or a pre-trained one")
    parser.add_argument("-d", "--dataset", help="dataset name (default: the checkpoint's)")
    parser.add_argument("--data_path", help="folder containing <dataset>/ (default: the checkpoint's)")
    parser.add_argument("--history", required=True, help="comma-separated original item ids, oldest first")
    parser.add_argument("-k", "--topk", type=int, default=10, help="number of items (default 10)")
    parser.add_argument("--keep_history", action="store_true", help="allow items of the history in the results")
    parser.add_argument("--allow_feature_only", action="store_true",
                        help="transductive model: also rank items that have no ID embedding, from features only")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when present, else the CPU)")
    parser.add_argument("--export", metavar="DIR", help="also export item vectors + FAISS indexes to DIR")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    return parser.parse_args(argv)


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


def main(argv=None) -> list:
    """Run the command; returns the (id, score) rows. Errors propagate (see :func:`run`)."""
    args = parse_args(argv)
    history = [item.strip() for item in args.history.split(",") if item.strip()]
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


def run(argv=None) -> int:
    """Command-line entry: bad input -> 'error: ...' on stderr and exit code 1 (``--debug``: with traceback)."""
    return run_command(main, argv)
