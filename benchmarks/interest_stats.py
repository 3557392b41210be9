"""How much does interest deduplication merge on a dataset? A diagnostic for ``interest_ratio``.

MISSRec's encoder reads a sequence's *distinct* interests (DPC-KNN clusters of item tokens). If every
token of a history falls in its own cluster, the interest tokens are just the item tokens and the
interest module has nothing to summarise. For each ``interest_ratio`` this builds the model as training
would (freshly initialised adapters, which are random linear maps of the frozen features, so the
clustering follows the features' own geometry), runs one interest refresh and reports, over the
training sequences: item tokens per sequence, distinct interests per sequence, and the share of
sequences in which at least two tokens share an interest.

    python benchmarks/interest_stats.py -d Scientific-mm --data_path=<datasets> --ratios 0.5 0.1 0.02

With ``--checkpoint`` (a checkpoint trained on this dataset, e.g. a pre-training's) the interests are those of its
trained adapters instead, and ``--steps N`` also times N training steps (forward + backward, after one warm-up) with
the same weights and batches under the fresh model's interest map and under the trained one: interests separate
as training goes on, a history's distinct interests grow, and so does the encoder's work (the interest tokens are
padded to each length bucket's most). Also reported: ``interest_padding``, padded interest tokens per real one over
the length buckets the model runs.

    python benchmarks/interest_stats.py -d Beauty --data_path=data/ --stage pretrain --ratios 0.02 \
        --config item_adapter=moe train_batch_size=1024 --checkpoint <pre-training>.pth --steps 5

Output: a table and ``benchmarks/results/interest_stats_<dataset>.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a clone
    sys.path.insert(0, str(ROOT))


def interest_stats(dataset: str, data_path: str, ratio: float, seed: int = 2020, stage: str = "finetune",
                   checkpoint=None, steps: int = 0, **overrides) -> dict:
    import torch
    from recbole.data import data_preparation
    from recbole.utils import init_seed

    from missrec_recbole.data import MISSRecDataset
    from missrec_recbole.model import MISSRec
    from missrec_recbole.quick_start import build_config
    from missrec_recbole.trainer.checkpoint import Checkpoint

    saved = Checkpoint.read(checkpoint) if checkpoint else None
    options = {"data_path": data_path, "state": "ERROR", "seed": seed, "interest_ratio": ratio, **overrides}
    if saved:  # the checkpoint's network (mode, adapter, sizes) unless given
        options.update({**saved.model_options(options), "mode": overrides.get("mode", saved.config["mode"])})
    config = build_config(dataset, stage, config_dict=options)
    train, _, _ = data_preparation(config, MISSRecDataset(config))
    init_seed(seed, True)
    model = MISSRec(config, train._dataset).eval()
    fresh_map = None
    if saved and steps:  # the interests of the same freshly initialised model
        init_seed(seed, True)
        fresh = MISSRec(config, train._dataset).eval()
        fresh.refresh_interests()
        fresh_map = interest_map(fresh)
    if saved:
        saved.load_all(model, dataset)
        model.eval()
    refresh = model.refresh_interests()
    timing = {} if fresh_map is None else step_seconds(model, train, steps,
                                                       {"fresh": fresh_map, "trained": interest_map(model)})
    item_seq = train._dataset.inter_feat[model.ITEM_SEQ]
    lengths = train._dataset.inter_feat[model.ITEM_SEQ_LEN]
    in_history = torch.arange(item_seq.shape[1])[None, :] < lengths[:, None]
    tokens = (model.present(item_seq) & in_history[..., None]).sum(dim=(1, 2)).float()
    with torch.no_grad():
        _, interest_mask = model.interest_tokens(item_seq)
    interests = interest_mask.sum(dim=1).float()
    return {"interest_ratio": ratio, "tokens": refresh["tokens"], "interests": refresh["interests"],
            "dpc_mode": refresh["mode"], "sequences": len(item_seq), "mean_items": round(float(lengths.float().mean()), 3),
            "mean_item_tokens": round(float(tokens.mean()), 3), "mean_interests": round(float(interests.mean()), 3),
            "share_with_a_merge": round(float((interests < tokens).float().mean()), 4),
            "interest_padding": round(interest_padding(model, train), 3), "checkpoint": str(checkpoint or ""),
            **timing}


def interest_map(model) -> dict:
    return {key: getattr(model, key).clone() for key in ("center_item", "center_modality", "item_interest")}


def interest_padding(model, train, batches: int = 30) -> float:
    """Padded interest tokens per real one, over the length buckets of the first ``batches`` training batches."""
    import torch

    padded = real = 0
    for _, batch in zip(range(batches), train):
        item_seq, lengths = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
        for rows in model._length_buckets(lengths):
            with torch.no_grad():
                _, mask = model.interest_tokens(item_seq[rows, :int(lengths[rows].max())])
            padded, real = padded + mask.numel(), real + int(mask.sum())
    return padded / max(real, 1)


def step_seconds(model, train, steps: int, maps: dict) -> dict:
    """Median seconds of a training step (loss forward + backward, no optimizer) under each interest map, the same
    weights and batches, alternating map by map after one warm-up step."""
    import time

    batches = [batch for _, batch in zip(range(steps + 1), train)]
    model.train()
    seconds = {name: [] for name in maps}
    for batch_number, batch in enumerate(batches):
        for name, state in maps.items():
            for key, value in state.items():
                setattr(model, key, value)
            start = time.perf_counter()
            loss = model.calculate_loss(batch)
            (sum(loss) if isinstance(loss, tuple) else loss).backward()
            model.zero_grad(set_to_none=True)
            if batch_number:  # the first batch warms up
                seconds[name].append(time.perf_counter() - start)
    model.eval()
    for key, value in maps["trained"].items():
        setattr(model, key, value)
    return {f"step_seconds_{name}_map": round(sorted(v)[len(v) // 2], 3) for name, v in seconds.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-d", "--dataset", required=True)
    ap.add_argument("--data_path", required=True)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.1, 0.02])
    ap.add_argument("--stage", choices=["finetune", "pretrain"], default="finetune", help="props of this stage")
    ap.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE", help="model options (e.g. item_adapter=moe)")
    ap.add_argument("--checkpoint", help="weights trained on this dataset (default: freshly initialised)")
    ap.add_argument("--steps", type=int, default=0,
                    help="with --checkpoint: time this many training steps under the fresh and the trained interests")
    ap.add_argument("--out", help="default: benchmarks/results/interest_stats_<dataset>.json")
    args = ap.parse_args(argv)
    if args.steps and not args.checkpoint:
        ap.error("--steps compares the fresh model's interests with a checkpoint's: give --checkpoint")
    import missrec_recbole  # noqa: F401  (RecBole compatibility fixes)
    from missrec_recbole.config import parse_overrides
    from missrec_recbole.files import write_json

    overrides = parse_overrides([f"--{item}" for item in args.config])
    rows = [interest_stats(args.dataset, args.data_path, ratio, stage=args.stage, checkpoint=args.checkpoint,
                           steps=args.steps, **overrides) for ratio in args.ratios]
    print("interest_ratio | interests | items/seq | item tokens/seq | interests/seq | sequences with a merge | "
          "padding")
    for r in rows:
        print(f"{r['interest_ratio']} | {r['interests']} of {r['tokens']} tokens | {r['mean_items']} | "
              f"{r['mean_item_tokens']} | {r['mean_interests']} | {r['share_with_a_merge']:.1%} | "
              f"{r['interest_padding']:.2f}")
        if "step_seconds_trained_map" in r:
            print(f"  step seconds: {r['step_seconds_fresh_map']:.2f} under the fresh model's interests, "
                  f"{r['step_seconds_trained_map']:.2f} under the checkpoint's")
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"interest_stats_{args.dataset}.json")
    write_json(out, {"date": time.strftime("%Y-%m-%d"), "dataset": args.dataset, "stage": args.stage,
                     "options": overrides, "rows": rows})
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    from missrec_recbole.command import run_command  # noqa: E402  (bad input: one error line, no traceback)

    sys.exit(run_command(main))
