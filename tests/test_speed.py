"""benchmarks/speed.py: a case measured in its own process (fp32 and the approximate options), and the ratios it
reports."""

from __future__ import annotations

import argparse
import json

import pytest

from missrec_recbole.bench.settings import PACKAGE_ROOT
from tests.conftest import benchmark_script, tiny_overrides, write_dataset


def load_script():
    return benchmark_script("speed")


def case_options() -> dict:
    """A tiny model's options as a case gives them (the worker sets checkpoint_dir and state itself)."""
    return {k: v for k, v in tiny_overrides(train_batch_size=16).items() if k not in ("checkpoint_dir", "state")}


def result(case, threads, version, rows_per_second, epoch_seconds, train_seconds=0.0):
    return {"case": case, "threads": threads, "version": version, "rows_per_second": rows_per_second,
            "rows_per_cpu_second": rows_per_second, "epoch_seconds": epoch_seconds, "train_seconds": train_seconds}


def test_ratios_compare_each_version_with_the_baseline_at_its_thread_count_and_at_one_thread():
    script = load_script()
    results = [result("c", 1, "current", 110, 90, train_seconds=80), result("c", 1, "current-bf16", 150, 60),
               result("c", 1, "baseline", 100, 100), result("c", 2, "current", 200, 50, train_seconds=42),
               result("c", 2, "baseline", 160, 60), result("d", 1, "current", 10, 10)]  # d: no baseline, no ratio
    ratios = {(r["case"], r["version"], r["threads"]): r for r in script.speed_ratios(results)}
    assert set(ratios) == {("c", "current", 1), ("c", "current-bf16", 1), ("c", "current", 2)}
    assert ratios["c", "current", 1]["step speed-up"] == pytest.approx(1.1)
    assert ratios["c", "current-bf16", 1]["epoch speed-up"] == pytest.approx(100 / 60)
    two = ratios["c", "current", 2]
    assert two["epoch speed-up"] == pytest.approx(60 / 50)
    assert two["epoch speed-up vs baseline at 1 thread"] == pytest.approx(100 / 50)
    # the bound: 2 threads' refresh and validation (50 - 42 s) and the 1-thread training pass halved (80 / 2 s)
    assert two["epoch speed-up vs baseline at 1 thread if the training pass scaled perfectly"] == pytest.approx(100 / 48)
    assert "epoch speed-up vs baseline at 1 thread if the training pass scaled perfectly" not in ratios[
        "c", "current", 1]


def profile(step, matrix, random, other, top):
    return {"step_seconds": step, "categories": {"matrix products": matrix, "random numbers": random,
                                                 "other ops": other, "outside ops": step - matrix - random - other},
            "ops": top}


def test_thread_scaling_compares_each_part_of_the_profiled_step_across_thread_counts():
    script = load_script()
    one = {**result("c", 1, "current", 1, 1), "profile": profile(1.0, 0.6, 0.1, 0.2, {"aten::mm": 0.5,
                                                                                     "aten::random_": 0.1})}
    two = {**result("c", 2, "current", 1, 1), "profile": profile(0.6, 0.3, 0.1, 0.1, {"aten::mm": 0.25})}
    alone = {**result("d", 2, "current", 1, 1), "profile": profile(1.0, 0.5, 0.1, 0.1, {})}  # no 1-thread profile
    rows = {row["part"]: row for row in script.thread_scaling([one, two, alone, result("c", 1, "baseline", 1, 1)])}
    assert list(rows) == ["step (profiled)", "matrix products", "random numbers", "other ops", "outside ops",
                          "aten::mm", "aten::random_"]
    assert rows["step (profiled)"]["seconds_per_step"] == {1: 1.0, 2: 0.6}
    assert rows["matrix products"]["speed-up"] == pytest.approx(2.0)
    assert rows["random numbers"]["speed-up"] == pytest.approx(1.0)
    assert rows["outside ops"]["seconds_per_step"][2] == pytest.approx(0.1)
    assert rows["aten::random_"]["seconds_per_step"] == {1: 0.1, 2: 0.0}  # not run at 2 threads


@pytest.mark.parametrize("extra", [{}, {"mixed_precision": "bf16"}, {"shared_item_tokens": True}],
                         ids=["fp32", "bf16", "shared"])
def test_a_case_is_measured_in_its_own_process(tmp_path, monkeypatch, extra):
    script = load_script()
    write_dataset(tmp_path / "data")
    options = case_options()
    monkeypatch.setitem(script.CASES, "tiny", ("MISSRec", "finetune", "Tiny", {**options, "mode": "inductive"}))
    args = argparse.Namespace(data_path=tmp_path / "data", steps=2, full_epoch=False, profile=False)
    (tmp_path / "work").mkdir()
    measured = script.measure(PACKAGE_ROOT, "tiny", 1, args, tmp_path / "work", extra)
    assert measured["threads"] == 1 and measured["batch_size"] == 16
    assert measured["rows_per_second"] > 0 and measured["valid_seconds"] > 0 and measured["refresh_seconds"] > 0
    assert measured["epoch_seconds"] >= measured["train_seconds"] + measured["valid_seconds"]
    assert measured["peak_rss_bytes"] > 0


def run_main(tmp_path, monkeypatch, cases: dict, *flags) -> dict:
    """``speed.py`` on the tiny dataset for ``cases`` ({name: (model, stage, dataset)}, tiny options), 1 thread, 1
    step: the JSON it writes."""
    script = load_script()
    write_dataset(tmp_path / "data")
    options = case_options()
    for name, (model, stage, dataset) in cases.items():
        monkeypatch.setitem(script.CASES, name, (model, stage, dataset, options))
    out = tmp_path / "speed.json"
    argv = ["--data_path", str(tmp_path / "data"), "--cases", ",".join(cases), "--threads", "1", "--steps", "1",
            *flags, "--out", str(out)]
    assert script.main(argv) == 0
    return json.loads(out.read_text())


def test_a_failing_measurement_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    written = run_main(tmp_path, monkeypatch, {"broken": ("MISSRec", "finetune", "Missing"),
                                               "tiny": ("MISSRec", "finetune", "Tiny")})
    assert [(f["case"], f["version"]) for f in written["failed"]] == [("broken", "current")]
    assert [r["case"] for r in written["results"]] == ["tiny"]
    assert "broken 1 thread(s) current: failed, left out" in capsys.readouterr().out


def test_shared_item_tokens_is_measured_for_missrec_only(tmp_path, monkeypatch):
    written = run_main(tmp_path, monkeypatch, {"tiny": ("MISSRec", "finetune", "Tiny"),
                                               "tiny-unisrec": ("UniSRec", "finetune", "Tiny")},
                       "--shared_item_tokens")
    assert not written["failed"]
    assert [(r["case"], r["version"]) for r in written["results"]] == [
        ("tiny", "current"), ("tiny", "current-shared"), ("tiny-unisrec", "current")]


def test_profile_splits_the_measured_steps_into_its_parts(tmp_path, monkeypatch):
    written = run_main(tmp_path, monkeypatch, {"tiny": ("MISSRec", "finetune", "Tiny")}, "--profile")
    profiled = written["results"][0]["profile"]
    categories = profiled["categories"]
    assert set(categories) == {"matrix products", "random numbers", "other ops", "outside ops"}
    assert sum(categories.values()) == pytest.approx(profiled["step_seconds"])
    assert categories["matrix products"] > 0 and categories["random numbers"] > 0  # adapters and dropout
    ops = list(profiled["ops"].values())
    assert "aten::mm" in profiled["ops"] and all(s > 0 for s in ops) and ops == sorted(ops, reverse=True)
    assert written["thread_scaling"] == []  # one thread count: nothing to compare


def test_profile_needs_the_timed_steps(tmp_path, capsys):
    with pytest.raises(SystemExit):
        load_script().main(["--data_path", str(tmp_path), "--profile", "--full_epoch"])
    assert "--profile profiles the --steps batches" in capsys.readouterr().err
