"""The bench's results.md: a line per option set, the SASRec cost line, shared options, gain intervals."""

from __future__ import annotations

import numpy as np

from tests.bench_helpers import _record


def test_report_gives_each_option_set_of_a_row_its_own_line():
    """Runs of one row with different options (e.g. --missrec.item_adapter=moe after the defaults) are two
    labelled lines, not the latest hiding the other; a pre-trained line is compared with scratch under its own
    options; within one option set a stale config hash (props changed) is still hidden."""
    from missrec_recbole.bench.report import group_runs, results_markdown

    moe = {"item_adapter": "moe"}
    runs = [_record("MISSRec scratch inductive", 2020, {}, "linear1", 0.03),
            _record("MISSRec scratch inductive", 2021, {}, "linear1", 0.04),
            _record("MISSRec scratch inductive", 2020, moe, "moe0", 0.01, date="2026-11-01 10:00:00 UTC"),
            _record("MISSRec scratch inductive", 2020, moe, "moe1", 0.06),
            _record("MISSRec pre-trained inductive", 2020, moe, "moe2", 0.05),
            _record("UniSRec scratch inductive", 2020, {}, "uni", 0.055)]
    data = {"runs": runs, "datasets": {"pre": "A", "eval": "B", "dataset": "B"}, "dataset": "B", "command": "bench",
            "updated": "now", "machine": {}, "code": "abc", "seeds": [2020], "protocol": "protocol"}
    rows = group_runs(data)["transfer"]
    assert [r["config_hash"] for r in rows["MISSRec scratch inductive"]] == ["linear1", "linear1"]
    assert [r["config_hash"] for r in rows["MISSRec scratch inductive (item_adapter=moe)"]] == ["moe1"]
    assert [r["config_hash"] for r in rows["MISSRec pre-trained inductive (item_adapter=moe)"]] == ["moe2"]
    assert "UniSRec scratch inductive" in rows and rows["SASRec"] == []  # UniSRec has one option set: plain name
    text = results_markdown(data)
    assert "| MISSRec scratch inductive | 2 | 0.0700 ± 0.0141 | 0.0350 ± 0.0071 |" in text
    assert "| MISSRec scratch inductive (item_adapter=moe) | 1 | 0.1200 | 0.0600 |" in text
    assert "MISSRec scratch inductive (item_adapter=moe) 0.0600 | UniSRec scratch inductive 0.0550 | +9.1% | yes" in text
    assert "| transfer | MISSRec pre-trained inductive (item_adapter=moe) 0.0500 | scratch 0.0600 | -16.7% | no |" in text
    assert "MISSRec pre-trained inductive 0." not in text  # no linear pre-trained run: no line, no comparison
    runs.append(_record("MISSRec pre-trained inductive", 2020, {}, "linear2", 0.02))
    runs.append(_record("MISSRec pre-trained (all weights) inductive", 2020, {"adapters_only": False}, "all", 0.04))
    text = results_markdown(data)
    assert "| transfer | MISSRec pre-trained inductive (item_adapter=moe) 0.0500 | scratch 0.0600 | -16.7% | no |" in text
    assert "| transfer | MISSRec pre-trained inductive 0.0200 | scratch 0.0350 | -42.9% | no |" in text
    assert "| transfer | MISSRec pre-trained (all weights) inductive 0.0400 | scratch 0.0350 | +14.3% | yes |" in text
    # an option a row also sets itself still tells the other rows' sets apart (no two sets under one label)
    runs.append(_record("MISSRec scratch inductive", 2020, {"adapters_only": True}, "frozen", 0.01))
    rows = group_runs(data)["transfer"]
    assert [r["config_hash"] for r in rows["MISSRec scratch inductive (adapters_only=True)"]] == ["frozen"]
    assert [r["config_hash"] for r in rows["MISSRec scratch inductive"]] == ["linear1", "linear1"]
    assert [r["config_hash"] for r in rows["MISSRec pre-trained (all weights) inductive"]] == ["all"]


def test_report_measures_against_a_sasrec_line_with_options_when_there_is_no_plain_one():
    """Two SASRec option sets, neither the props/ defaults: the cost table still has a SASRec line to divide by
    (the first), instead of silently leaving the comparison out."""
    from missrec_recbole.bench.report import group_runs, results_markdown, sasrec_line

    runs = [_record("SASRec", 2020, {"learning_rate": 0.01}, "s1", 0.03),
            _record("SASRec", 2020, {"learning_rate": 0.005}, "s2", 0.02),
            _record("MISSRec scratch inductive", 2020, {}, "m", 0.05)]
    for run, seconds in zip(runs, (100.0, 120.0, 30.0)):
        run.update(train_seconds_per_epoch=seconds, train_cpu_seconds_per_epoch=seconds, seconds_per_epoch=seconds)
    data = {"runs": runs, "datasets": {"pre": "A", "eval": "B", "dataset": "B"}, "dataset": "B", "command": "bench",
            "updated": "now", "machine": {}, "code": "abc", "seeds": [2020], "protocol": "protocol"}
    rows = group_runs(data)["transfer"]
    assert sasrec_line(rows) == "SASRec (learning_rate=0.01)"
    assert "| transfer | MISSRec scratch inductive | 30.00 | 100.00 | 0.30x | 0.30x | 0.30x |" in results_markdown(data)
    runs.append(_record("SASRec", 2021, {}, "s0", 0.03))
    assert sasrec_line(group_runs(data)["transfer"]) == "SASRec"


def test_target_tables_give_the_gain_an_interval_over_test_users():
    """With every run's per-case ranks, a target line gets the 95% paired-bootstrap interval of its gain, around
    the gain itself (per-case NDCG@10 averaged over seeds) and narrower with more test users; a line whose runs
    lack ranks, or ranks on other test cases, gets none."""
    from missrec_recbole.bench.report import gain_interval, results_markdown
    from missrec_recbole.evaluation import case_ndcg

    rng = np.random.default_rng(0)

    class Ranks:
        def __init__(self, cases):
            self.by_key = cases

        def cases(self, key):
            return self.by_key.get(key)

    def ranks_for(runs, n_cases, better):
        items = np.arange(n_cases)
        cases = {}
        for run in runs:
            rank = rng.integers(1, 40, size=n_cases)
            if run["row"].startswith("MISSRec pre-trained"):
                rank = np.maximum(rank - better, 1)  # the pre-trained line ranks targets higher
            cases[run["key"]] = {"item": items, "rank": rank}
        return Ranks(cases)

    runs = [_record("MISSRec scratch inductive", seed, {}, "s", 0.05) for seed in (2020, 2021)]
    runs += [_record("MISSRec pre-trained inductive", seed, {}, "p", 0.06) for seed in (2020, 2021)]
    scratch, pre = runs[:2], runs[2:]
    small, large = ranks_for(runs, 400, 3), ranks_for(runs, 40000, 3)
    for ranks in (small, large):
        seed_mean = [np.mean([case_ndcg(ranks.cases(r["key"])["rank"], 10) for r in side]) for side in (pre, scratch)]
        low, high = gain_interval(pre, scratch, ranks)
        assert low < seed_mean[0] / seed_mean[1] - 1 < high and low > 0  # a real, consistent gain
    assert np.diff(gain_interval(pre, scratch, large)) < np.diff(gain_interval(pre, scratch, small)) / 3
    data = {"runs": runs, "datasets": {"pre": "A", "eval": "B", "dataset": "B"}, "dataset": "B", "command": "bench",
            "updated": "now", "machine": {}, "code": "abc", "seeds": [2020], "protocol": "protocol"}
    low, high = gain_interval(pre, scratch, small)
    assert f"| +20.0% | yes | [{low:+.1%}, {high:+.1%}] |" in results_markdown(data, small)
    assert "| +20.0% | yes | – |" in results_markdown(data)  # no ranks.npz
    del small.by_key[pre[1]["key"]]
    assert gain_interval(pre, scratch, small) is None  # one seed without ranks: the seed mean is not covered
    assert gain_interval(pre, scratch, Ranks({r["key"]: {"item": np.arange(5) + (r in pre), "rank": np.ones(5)}
                                              for r in runs})) is None  # other test cases: nothing to pair


def test_report_names_the_options_every_run_of_a_model_shares():
    """Options no line label shows because every run of the model has them (all MISSRec runs with
    item_adapter=moe) are stated once above the tables; the bench's own SASRec settings are not."""
    from missrec_recbole.bench.report import results_markdown, shared_options
    from missrec_recbole.bench.settings import SASREC_SETTINGS

    moe = {"item_adapter": "moe"}
    runs = [_record("MISSRec scratch inductive", 2020, {**moe, "epochs": 5}, "m", 0.05),
            _record("MISSRec pre-trained inductive", 2020, {**moe, "epochs": 7}, "p", 0.05),
            _record("MISSRec pre-trained (all weights) inductive", 2020, {**moe, "adapters_only": False}, "a", 0.05),
            _record("SASRec", 2020, dict(SASREC_SETTINGS), "s", 0.03),
            _record("UniSRec scratch inductive", 2020, {}, "u", 0.04)]
    data = {"runs": runs, "datasets": {"pre": "A", "eval": "B", "dataset": "B"}, "dataset": "B", "command": "bench",
            "updated": "now", "machine": {}, "code": "abc", "seeds": [2020], "protocol": "protocol"}
    assert shared_options(data) == {"MISSRec": moe}
    assert "Options beyond props/ given to every run of a model: MISSRec item_adapter=moe." in results_markdown(data)
    runs[3]["settings"]["learning_rate"] = 0.01
    assert shared_options(data) == {"MISSRec": moe, "SASRec": {"learning_rate": 0.01}}


def test_gain_interval_is_unbounded_where_the_compared_line_never_hits():
    """A group of cases where the compared line scores 0 in (nearly) every resample has no finite upper end:
    the interval says so (inf) instead of dividing by a tiny number."""
    from missrec_recbole.bench.report import gain_interval

    runs = [_record("MISSRec pre-trained inductive", 2020, {}, "p", 0.1), _record("MISSRec scratch inductive", 2020, {}, "s", 0.0)]
    ranks_of = {runs[0]["key"]: np.r_[np.full(3, 1), np.full(17, 50)], runs[1]["key"]: np.r_[np.full(1, 1), np.full(19, 50)]}

    class Ranks:
        def cases(self, key):
            return {"item": np.arange(20), "rank": ranks_of[key]}

    low, high = gain_interval(runs[:1], runs[1:], Ranks())
    assert np.isfinite(low) and high == np.inf  # one hit in 20 for scratch: some resamples have none
    assert np.isfinite(gain_interval(runs[:1], runs[:1], Ranks())).all()
