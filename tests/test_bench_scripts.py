"""The scripts in benchmarks/ that read bench results (tune.py, valid_curves.py, long_tail.py) and
interest_stats.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.bench_helpers import _record, _tune_module
from tests.conftest import benchmark_script, tiny_overrides


def test_tune_reads_validation_of_one_row_only(tmp_path):
    tune = _tune_module()
    run = {"table": "full", "row": "MISSRec scratch transductive", "status": "ok", "seed": 2020, "best_epoch": 4,
           "epochs": 9, "train_seconds_per_epoch": 2.0, "valid": {"ndcg@10": 0.2}, "test": {"ndcg@10": 0.9},
           "date": "2026-11-01"}
    runs = [run, {**run, "date": "2026-11-02", "valid": {"ndcg@10": 0.3}}, {**run, "seed": 2021},
            {**run, "table": "pretrained"}, {**run, "row": "SASRec"}, {**run, "status": "failed"}]
    (tmp_path / "results.json").write_text(json.dumps({"runs": runs}))
    found = tune.valid_runs(tmp_path / "results.json", "MISSRec scratch transductive", [2020])
    assert found == [{"seed": 2020, "valid": {"ndcg@10": 0.3}, "best_epoch": 4, "epochs": 9,
                      "train_seconds_per_epoch": 2.0}]  # the latest run; no test metrics
    assert tune.parse_candidate("interest_ratio=0.1") == ("interest_ratio", 0.1)
    assert tune.parse_candidate("item_fusion=stack") == ("item_fusion", "stack")
    with pytest.raises(Exception, match="key=value"):
        tune.parse_candidate("interest_ratio")


def test_a_second_tuning_round_adds_to_the_first(tmp_path, capsys):
    import types

    tune = _tune_module()
    row = "MISSRec scratch transductive"
    run = {"table": "full", "row": row, "status": "ok", "seed": 2020, "date": "2026-11-01", "best_epoch": 3,
           "valid": {"ndcg@10": 0.1, "recall@10": 0.2, "ndcg@50": 0.3}, "train_seconds_per_epoch": 1.0}
    for name in ("dpc_k=3", "dpc_k=4"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({"runs": [run]}))
    args = types.SimpleNamespace(dataset="Tiny", row=row, out=tmp_path)
    baseline = [{"seed": 2020, "valid": run["valid"], "best_epoch": 3, "train_seconds_per_epoch": 1.0}]

    def sweep(plan, fixed=None):
        summary = tune.summarise(args, [2020], fixed or {}, plan, dict.fromkeys(plan, 0), baseline, tmp_path / "b")
        (tmp_path / "tuning.json").write_text(json.dumps(summary))
        return summary["candidates"]

    sweep({"dpc_k=3": {"dpc_k": 3}})
    second = sweep({"dpc_k=4": {"dpc_k": 4}})
    assert list(second) == ["defaults", "dpc_k=3", "dpc_k=4"] and second["dpc_k=3"]["overrides"] == {"dpc_k": 3}
    assert len(second["dpc_k=3"]["runs"]) == 1 and second["defaults"]["runs"] == baseline
    other_fixed = sweep({"defaults": {"lr": 1}, "dpc_k=4": {"dpc_k": 4, "lr": 1}}, fixed={"lr": 1})
    assert list(other_fixed) == ["defaults", "dpc_k=4"]  # earlier rounds had other fixed settings

    defaults = [{**baseline[0], "seed": 2021, "valid": {**run["valid"], "ndcg@10": 0.2}}, *baseline]
    tune.print_table({"row": row, "dataset": "Tiny", "seeds": [2020, 2021], "candidates": {
        "defaults": {"runs": defaults}, "dpc_k=3": second["dpc_k=3"]}})
    assert "| dpc_k=3 | 1 | 0.1000 | +0.0% |" in capsys.readouterr().out  # against seed 2020's defaults only


def test_valid_curves_compare_runs_at_equal_epoch_budgets(tmp_path, capsys):
    """benchmarks/valid_curves.py: valid NDCG@10 per epoch from each run's log (a resumed log's later epochs
    included), best within 10/20/25 epochs, the seed and changed setting in the label, unfinished runs marked."""
    curves = benchmark_script("valid_curves")
    scores = [0.01 * (i % 7) + 0.001 * i for i in range(30)]
    log = tmp_path / "run.log"
    lines = [f"30 Nov 12:00    INFO  epoch {i} evaluating [time: 4.29s, valid_score: {s:.6f}]" for i, s in
             enumerate(scores)]
    log.write_text("\n".join(lines[:12] + ["INFO  Resumed from x: continuing at epoch 12"] + lines[12:]) + "\n")
    results = tmp_path / "results.json"
    settings = {"overrides": {}, "finetune_overrides": {"epochs": 25, "lr": 0.005},
                "model_overrides": {"missrec": {"item_adapter": "moe"}}}
    run = {"row": "MISSRec scratch inductive", "kind": "missrec", "seed": 2021, "status": "ok", "log": str(log)}
    other = {**run, "row": "UniSRec scratch inductive", "kind": "unisrec"}
    results.write_text(json.dumps({"settings": settings, "runs": [run, other]}))
    rows = curves.main([str(results), "--extra", f"stopped={log}", "--out", str(tmp_path / "out.json")])
    assert [row["label"] for row in rows] == ["MISSRec scratch inductive, seed 2021, item_adapter=moe, lr=0.005",
                                              "UniSRec scratch inductive, seed 2021, lr=0.005", "stopped"]
    first = rows[0]
    assert first["curve"] == [float(f"{s:.6f}") for s in scores]
    assert first["best_in_10"] == pytest.approx(max(scores[:10]), abs=1e-6)
    assert first["best_in_25"] == pytest.approx(max(scores[:25]), abs=1e-6)
    assert first["best_epoch"] == max(range(30), key=scores.__getitem__) and first["finished"]
    assert not rows[2]["finished"] and "stopped" in capsys.readouterr().out
    assert json.loads((tmp_path / "out.json").read_text())["runs"][2]["label"] == "stopped"


def test_long_tail_splits_each_line_and_gain_by_target_frequency(tmp_path, capsys):
    """benchmarks/long_tail.py: per group of target training frequencies, each line's seed-averaged Recall@10 and
    NDCG@10 from ranks.npz and the pre-trained line's gain over scratch with an interval (an unbounded end: null in
    the JSON); a missing train file is one error naming it and the flag."""
    from missrec_recbole.bench.store import Results
    from missrec_recbole.evaluation import case_ndcg

    long_tail = benchmark_script("long_tail")
    data_dir = tmp_path / "data" / "B"
    data_dir.mkdir(parents=True)
    train_targets = [1] + [2] * 3 + [3] * 10  # item 1 seen once, item 2 three times, item 3 ten times
    (data_dir / "B.train.inter").write_text("user_id:token\titem_id_list:token_seq\titem_id:token\n" + "".join(
        f"{u}\t0\t{item}\n" for u, item in enumerate(train_targets)))
    items = np.tile(np.array([1, 2, 3]), 200)
    header = {"datasets_paths": {"transfer": {"name": "B", "path": str(tmp_path / "data")}}}
    out = Results(tmp_path / "out", header)
    rng = np.random.default_rng(1)
    ranks = {}
    for row, better in (("MISSRec scratch inductive", {1: 0, 3: 4}), ("MISSRec pre-trained inductive", {1: 4, 3: 0})):
        for seed in (2020, 2021):
            rank = rng.integers(1, 12, size=len(items))
            rank = np.maximum(rank - np.array([better.get(int(i), 0) for i in items]), 1)
            record = _record(row, seed, {}, "h", 0.05)
            ranks.setdefault(row, []).append(rank)
            out.put("runs", record, {"item": items, "rank": rank.astype(np.int32)})
    result = long_tail.long_tail(tmp_path / "out", [2, 5])
    groups = {g["target_frequency"]: g for g in result["groups"]}
    assert list(groups) == ["all", "0-2", "3-5", "6-10"] and groups["all"]["cases"] == 600
    rare = np.isin(items, [1])
    expected = np.mean([case_ndcg(r, 10)[rare].mean() for r in ranks["MISSRec pre-trained inductive"]])
    assert groups["0-2"]["lines"]["MISSRec pre-trained inductive"]["ndcg@10"] == pytest.approx(expected)
    (rare_gain,), (frequent_gain,) = groups["0-2"]["pre-trained vs scratch"], groups["6-10"]["pre-trained vs scratch"]
    assert rare_gain["scratch"] == "MISSRec scratch inductive"
    assert rare_gain["ndcg@10 gain"] > 0 and rare_gain["interval"][0] > 0  # pre-training pays on rare targets
    assert frequent_gain["ndcg@10 gain"] < 0 and frequent_gain["interval"][1] < 0  # and costs on frequent ones
    no_case = long_tail.long_tail(tmp_path / "out", [2, 5, 7])  # no target is seen 6-7 times: no such group
    assert [g["target_frequency"] for g in no_case["groups"]] == ["all", "0-2", "3-5", "8-10"]
    assert long_tail.main([str(tmp_path / "out"), "--edges", "2,5", "--out", str(tmp_path / "lt.json")]) == 0
    assert json.loads((tmp_path / "lt.json").read_text())["groups"][1]["cases"] == 200
    assert "targets seen 0-2 times in training: 200 test cases" in capsys.readouterr().out
    # scratch never hits the rarest targets: that gain has no upper bound, written as null (strict JSON)
    never = Results(tmp_path / "never", header)
    for row, rank in (("MISSRec scratch inductive", np.where(items == 1, 50, 1)),
                      ("MISSRec pre-trained inductive", ranks["MISSRec pre-trained inductive"][0])):
        never.put("runs", _record(row, 2020, {}, "h", 0.05), {"item": items, "rank": rank.astype(np.int32)})
    assert long_tail.main([str(tmp_path / "never"), "--edges", "2,5", "--out", str(tmp_path / "lt.json")]) == 0
    strict = json.loads((tmp_path / "lt.json").read_text(), parse_constant=lambda name: pytest.fail(name))
    never_hit = strict["groups"][1]["pre-trained vs scratch"][0]
    assert never_hit["interval"][1] is None and never_hit["ndcg@10 gain"] is None
    assert long_tail.relative_gain(0.0, 0.0) == 0.0 and long_tail.relative_gain(0.2, 0.1) == pytest.approx(1.0)
    assert "unbounded]" in capsys.readouterr().out
    (data_dir / "B.train.inter").unlink()
    with pytest.raises(long_tail.InputError, match=r"B\.train\.inter not found: give --data_path"):
        long_tail.long_tail(tmp_path / "out", [2, 5])


def test_interest_stats_of_a_checkpoint_time_steps_under_both_interest_maps(tiny):
    """--checkpoint: the trained adapters' interests; --steps: training steps timed under the fresh and the trained
    interest map, the same weights and batches."""
    script = benchmark_script("interest_stats")
    options = {k: v for k, v in tiny_overrides(checkpoint_dir=str(tiny["root"] / "saved")).items()
               if k not in ("state", "seed")}
    fresh = script.interest_stats("Tiny", str(tiny["root"]), 0.2, **options)
    trained = script.interest_stats("Tiny", str(tiny["root"]), 0.2, checkpoint=tiny["inductive"], steps=2, **options)
    assert "step_seconds_trained_map" not in fresh and fresh["checkpoint"] == ""
    assert trained["step_seconds_fresh_map"] > 0 and trained["step_seconds_trained_map"] > 0
    for row in (fresh, trained):
        assert row["interest_padding"] >= 1.0 and 1.0 <= row["mean_interests"] <= row["mean_item_tokens"]
    assert trained["mean_interests"] != fresh["mean_interests"]  # the trained adapters cluster the tokens otherwise
