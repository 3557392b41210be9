"""benchmarks/transfer_scaling.py: transfer gain per pre-training corpus, target and recipe, from bench out_dirs."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from missrec_recbole.bench.store import Results
from missrec_recbole.evaluation import case_ndcg
from tests.conftest import benchmark_script

MOE = {"item_adapter": "moe"}


def load_script():
    return benchmark_script("transfer_scaling")


def record(row, seed, settings, valid, test, config_hash="h", valid_recall=None):
    metric = lambda value: {"recall@10": 2 * value, "recall@50": 4 * value, "ndcg@10": value, "ndcg@50": value}
    valid_metrics = {**metric(valid), **({"recall@10": valid_recall} if valid_recall is not None else {})}
    return {"key": f"transfer|{row}|{seed}|{config_hash}|{json.dumps(settings, sort_keys=True)}", "table": "transfer",
            "row": row, "seed": seed, "settings": settings, "config_hash": config_hash, "status": "ok",
            "date": "2026-12-05 10:00:00 UTC", "pretrained": "pre-trained" in row, "valid": valid_metrics,
            "test": metric(test)}


def out_dir(root, name, pre, runs_and_ranks):
    store = Results(root / name, {"dataset": "T", "datasets": {"pre": pre, "eval": "T", "dataset": "T"}})
    for run, rank in runs_and_ranks:
        store.put("runs", run, {"item": np.arange(len(rank)), "rank": rank})
    return root / name


def write_corpus(root, name, rows):
    folder = root / "data" / name
    folder.mkdir(parents=True)
    (folder / f"{name}.train.inter").write_text("user_id:token\titem_id_list:token_seq\titem_id:token\n"
                                                + "".join(f"{i}\t0\t1\n" for i in range(rows)))


def test_gain_per_recipe_and_the_best_recipe_chosen_on_validation(tmp_path, capsys):
    script = load_script()
    write_corpus(tmp_path, "A", 30)
    write_corpus(tmp_path, "B", 12)
    rng = np.random.default_rng(0)
    ranks = {name: rng.integers(1, 20, size=400).astype(np.int32) for name in ("s1", "s2", "a1", "a2", "w", "d")}
    ranks["a1"] = np.maximum(ranks["a1"] - 3, 1)  # adapters-only: better ranks than scratch
    main = out_dir(tmp_path, "main", "A,B", [
        (record("MISSRec scratch inductive", 2020, MOE, .060, .050), ranks["s1"]),
        (record("MISSRec scratch inductive", 2021, MOE, .062, .054), ranks["s2"]),
        (record("MISSRec scratch inductive", 2020, {}, .040, .030), ranks["s1"]),  # the linear adapter: not ours
        (record("MISSRec pre-trained inductive", 2020, MOE, .061, .055), ranks["a1"]),
        (record("MISSRec pre-trained inductive", 2021, MOE, .061, .057), ranks["a2"]),
        (record("MISSRec pre-trained (all weights) inductive", 2020, {**MOE, "adapters_only": False}, .070, .049),
         ranks["w"])])
    tuning = out_dir(tmp_path, "tuning", "A,B", [
        (record("MISSRec pre-trained inductive", 2020, {**MOE, "unfreeze": ["item_decoder"]}, .065, .060), ranks["d"])])
    point = script.scaling_point("T", [main, tuning], tmp_path / "data")
    assert point["corpus"] == "A,B" and point["corpus rows"] == 42
    assert point["scratch"]["seeds"] == [2020, 2021] and point["scratch"]["test ndcg@10"] == pytest.approx(.052)
    adapters = point["recipes"]["adapters only"]
    assert adapters["gain"] == pytest.approx(.056 / .052 - 1) and adapters["seeds"] == [2020, 2021]
    scratch_cases = np.mean([case_ndcg(ranks[k], 10) for k in ("s1", "s2")], axis=0)
    ours_cases = np.mean([case_ndcg(ranks[k], 10) for k in ("a1", "a2")], axis=0)
    assert adapters["interval"][0] < ours_cases.mean() / scratch_cases.mean() - 1 < adapters["interval"][1]
    best = point["recipes"]["best recipe"]
    assert best["chosen"] == "all weights"  # valid .070 beats the decoder's .065, although its test is lower
    assert best["gain"] == pytest.approx(.049 / .052 - 1)
    assert point["recipes"]["adapters + item decoder"]["gain"] == pytest.approx(.060 / .052 - 1)
    out, figure = tmp_path / "scaling.json", tmp_path / "scaling.png"
    assert script.main(["--data_path", str(tmp_path / "data"), "--point", "T", str(main), str(tuning),
                        "--out", str(out), "--figure", str(figure)]) == 0
    assert json.loads(out.read_text())["points"][0]["recipes"]["best recipe"]["chosen"] == "all weights"
    assert figure.is_file() == (importlib.util.find_spec("matplotlib") is not None)
    assert "best recipe = all weights" in capsys.readouterr().out


@pytest.mark.parametrize("decoder_recall, chosen", [(.131, "adapters + item decoder"), (.129, "all weights")])
def test_the_best_recipe_is_chosen_at_the_common_seed_ties_broken_by_the_other_valid_metrics(tmp_path, decoder_recall, chosen):
    script = load_script()
    write_corpus(tmp_path, "A", 5)
    ranks = np.ones(10, dtype=np.int32)
    main = out_dir(tmp_path, "main", "A", [
        (record("MISSRec scratch inductive", 2020, MOE, .060, .050), ranks),
        (record("MISSRec pre-trained (all weights) inductive", 2020, {**MOE, "adapters_only": False}, .0721, .05,
                valid_recall=.130), ranks),
        (record("MISSRec pre-trained inductive", 2020, {**MOE, "unfreeze": ["item_decoder"]}, .0721, .06,
                valid_recall=decoder_recall), ranks),
        # the chosen recipe's next seed, run after the choice: it does not re-open it
        (record("MISSRec pre-trained (all weights) inductive", 2021, {**MOE, "adapters_only": False}, .050, .05),
         ranks)])
    best = script.scaling_point("T", [main], tmp_path / "data")["recipes"]["best recipe"]
    assert best["chosen"] == chosen and best["chosen on seeds"] == [2020]


def test_bad_points_are_refused_by_name(tmp_path):
    script = load_script()
    write_corpus(tmp_path, "A", 3)
    ranks = np.ones(10, dtype=np.int32)
    only_pretrained = out_dir(tmp_path, "p", "A", [(record("MISSRec pre-trained inductive", 2020, MOE, .1, .1), ranks)])
    with pytest.raises(script.InputError, match="no MISSRec scratch run"):
        script.scaling_point("T", [only_pretrained], tmp_path / "data")
    other = out_dir(tmp_path, "q", "B", [(record("MISSRec pre-trained inductive", 2021, MOE, .1, .1), ranks)])
    with pytest.raises(script.InputError, match="different corpora"):
        script.scaling_point("T", [only_pretrained, other], tmp_path / "data")
    with pytest.raises(script.InputError, match="not on the point's target 'X'"):
        script.scaling_point("X", [only_pretrained], tmp_path / "data")
    with pytest.raises(script.InputError, match="results.json not found"):
        script.scaling_point("T", [tmp_path / "none"], tmp_path / "data")
    scratch = out_dir(tmp_path, "s", "A", [(record("MISSRec scratch inductive", 2020, MOE, .1, .1), ranks)])
    with pytest.raises(script.InputError, match=r"B\.train\.inter not found: give --data_path"):
        script.scaling_point("T", [scratch, other], tmp_path / "data")  # the corpus of the pre-trained runs: B
