"""The bench's --quick run on a tiny dataset: results files, resuming, reuse across out_dirs, user split."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from missrec_recbole import bench
from missrec_recbole.tools.split_users import dataset_users, split_users
from tests.bench_helpers import ROWS, bench_args, tiny_with_ties
from tests.conftest import write_dataset


METRICS = ("recall@10", "ndcg@10", "recall@50", "ndcg@50")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    tiny_with_ties(root / "data")
    first = bench.main(bench_args(root, "--threads=1"))
    return root, first


@pytest.mark.slow
def test_results_json_structure(quick_run):
    root, first = quick_run
    data = json.loads((root / "results" / "results.json").read_text())
    assert data["dataset"] == "Tiny" and data["seeds"] == [2020] and data["machine"]["cores"]
    assert data["machine"]["cpu_capability"] and data["machine"]["torch"] == torch.__version__  # what repeats a number
    assert data["split"]["users"] == {"pre": 20, "eval": 20}
    runs = {(r["table"], r["row"]): r for r in data["runs"]}
    expected = {(t, name) for t in ("pretrained", "full") for name in ROWS  # the default tables (not "transfer")
                if t == "pretrained" or "pre-trained" not in name}
    assert set(runs) == expected
    assert first["launched"] == len(expected) + 2  # + pre-training MISSRec and UniSRec once
    for (table, name), run in runs.items():
        assert run["status"] == "ok", run.get("message")
        assert run["dataset"] == ("Tiny-eval" if table == "pretrained" else "Tiny")
        assert run["seed"] == 2020 and len(run["config_hash"]) == 12 and run["command"].startswith("python -m")
        for split in ("valid", "test"):
            assert set(run[split]) == set(METRICS)
        assert run["best_epoch"] in (0, 1) and run["epochs"] == 2
        assert run["seconds_per_epoch"] > 0 and run["train_seconds_per_epoch"] > 0
        assert run["peak_rss_bytes"] > 100 * 2**20 and run["trainable_parameters"] > 0
        assert run["threads"] == 1  # --threads reaches the worker (torch would take every core)
        assert 0 < run["cpu_seconds"] < 2 * run["wall_seconds"]  # the run's process CPU time (1 thread)
        assert (run["interest_refresh_seconds"] is not None) == name.startswith("MISSRec")
    assert {p["kind"] for p in data["pretraining"]} == {"missrec", "unisrec"}
    # a finished run's model and resume files are deleted; the pre-trainings' resume files stay, named in their records
    assert all(run["model_file"] is None and run["resume_file"] is None for run in runs.values())
    assert sorted((root / "work" / "saved").rglob("*-resume.pth")) == sorted(
        Path(p["resume_file"]) for p in data["pretraining"])
    pre_trained = runs[("pretrained", "MISSRec pre-trained transductive")]
    assert pre_trained["pretrained_checkpoint"].endswith(".pth")


@pytest.mark.slow
def test_results_md_and_ranks(quick_run):
    root, _ = quick_run
    text = (root / "results" / "results.md").read_text()
    for name in ROWS:
        assert f"| {name} | 1 | " in text
    assert "Table 1" in text and "Table 2" in text and "python -m missrec_recbole.bench --quick" in text
    assert "## Cost" in text and "## Quality target" in text
    plotted = (root / "results" / "longtail.png").is_file()
    assert plotted == (importlib.util.find_spec("matplotlib") is not None)
    ranks = np.load(root / "results" / "ranks.npz")
    data = json.loads((root / "results" / "results.json").read_text())
    for run in data["runs"]:
        assert len(ranks[f"{run['key']}|rank"]) == (20 if run["table"] == "pretrained" else 40)


@pytest.mark.slow
def test_second_invocation_runs_nothing(quick_run):
    root, _ = quick_run
    before = (root / "results" / "results.json").read_text()
    again = bench.main(bench_args(root))
    assert again["launched"] == 0 and again["counts"] == {"skipped": 6}
    assert json.loads(before)["runs"] == json.loads((root / "results" / "results.json").read_text())["runs"]


@pytest.mark.slow
def test_finetune_overrides_reuse_the_pretraining_of_another_out_dir(quick_run, tmp_path):
    """--finetune.key=value changes the rows only; --pretrained_from reuses the recorded pre-training."""
    root, _ = quick_run
    row = "MISSRec pre-trained transductive"
    out = bench.main(bench_args(root, f"--rows={row}", "--tables=pretrained", f"--out_dir={tmp_path}",
                                f"--pretrained_from={root / 'results'}", "--finetune.temperature=0.1"))
    assert out["counts"] == {"ok": 1} and out["launched"] == 1  # the fine-tuning only
    first = json.loads((root / "results" / "results.json").read_text())
    data = json.loads((tmp_path / "results.json").read_text())
    [run], [earlier] = data["runs"], [r for r in first["runs"] if r["row"] == row]
    assert run["settings"]["temperature"] == 0.1 and run["config_hash"] != earlier["config_hash"]
    assert run["pretrained_checkpoint"] == earlier["pretrained_checkpoint"]
    assert run["log"] != earlier["log"]  # same work_dir, other settings: the earlier run's log is kept
    assert data["pretraining"][0]["reused_from"] == str(root / "results" / "results.json")
    with pytest.raises(SystemExit):
        bench.parse_args(["-d", "Tiny", f"--pretrained_from={tmp_path / 'none'}"])


@pytest.mark.slow
def test_kept_pretraining_is_found_when_the_work_dir_is_gone(quick_run, tmp_path):
    """--keep_pretrained copies the checkpoint into out_dir/pretrained/; a later invocation fine-tunes from that copy
    when the file the pre-training wrote is gone (a copy of the out_dir elsewhere), without pre-training again."""
    root, _ = quick_run
    row, out = "MISSRec pre-trained transductive", tmp_path / "kept"
    first = bench.main(bench_args(root, f"--rows={row}", "--tables=pretrained", f"--out_dir={out}", "--keep_pretrained",
                                  f"--pretrained_from={root / 'results'}", "--finetune.temperature=0.1"))
    assert first["launched"] == 1
    written = json.loads((root / "results" / "results.json").read_text())
    original = next(p["checkpoint"] for p in written["pretraining"] if p["kind"] == "missrec")
    [kept] = (out / "pretrained").glob("pretrain-missrec-*.pth")
    assert kept.read_bytes() == open(original, "rb").read()
    assert json.loads((out / "results.json").read_text())["runs"][0]["pretrained_checkpoint"] == str(kept)
    hidden = original + ".hidden"
    os.rename(original, hidden)
    try:
        again = bench.main(bench_args(root, f"--rows={row}", "--tables=pretrained", f"--out_dir={out}",
                                      "--finetune.temperature=0.2"))
    finally:
        os.rename(hidden, original)
    assert again["counts"] == {"ok": 1} and again["launched"] == 1  # the fine-tuning only
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [r["pretrained_checkpoint"] for r in runs] == [str(kept)] * 2


@pytest.mark.slow
def test_runs_from_copies_finished_runs_with_their_ranks(quick_run, tmp_path):
    """--runs_from: a run another out_dir finished with the same key is copied (record and per-case ranks), not
    trained; the report of the new out_dir shows it."""
    root, _ = quick_run
    rows = "SASRec,MISSRec scratch inductive"
    out = bench.main(bench_args(root, f"--rows={rows}", "--tables=full", f"--out_dir={tmp_path}",
                                f"--runs_from={root / 'results'}"))
    assert out["launched"] == 0 and out["counts"] == {"reused": 2}
    source = json.loads((root / "results" / "results.json").read_text())
    copied = json.loads((tmp_path / "results.json").read_text())["runs"]
    originals = {r["key"]: r for r in source["runs"] if r["table"] == "full" and r["row"] in rows.split(",")}
    assert {r["key"] for r in copied} == set(originals)
    for run in copied:
        assert {k: v for k, v in run.items() if k != "reused_from"} == originals[run["key"]]
        assert run["reused_from"] == str(root / "results" / "results.json")
    ranks, their_ranks = np.load(tmp_path / "ranks.npz"), np.load(root / "results" / "ranks.npz")
    for key in originals:
        assert np.array_equal(ranks[f"{key}|rank"], their_ranks[f"{key}|rank"])
    assert "| MISSRec scratch inductive | 1 | " in (tmp_path / "results.md").read_text()
    changed = bench.main(bench_args(root, "--rows=SASRec", "--tables=full", f"--out_dir={tmp_path / 'other'}",
                                    f"--runs_from={root / 'results'}", "--sasrec.hidden_dropout_prob=0.3",
                                    "--sasrec.epochs=1"))
    assert changed["counts"] == {"ok": 1}  # other settings, another key: trained, not copied
    with pytest.raises(SystemExit):
        bench.parse_args(["-d", "Tiny", f"--runs_from={tmp_path / 'none'}"])


@pytest.mark.slow
def test_ranks_follow_the_pessimistic_tie_rule(quick_run):
    """RecBole's reported test metrics equal those of ranks = #items scoring >= the target, for every
    model, and the inductive MISSRec (tied items) puts tied targets after their ties."""
    root, _ = quick_run
    data = json.loads((root / "results" / "results.json").read_text())
    for run in data["runs"]:
        assert run["ranks_vs_metrics"] < 1e-4, run["row"]


@pytest.mark.slow
def test_user_split(quick_run):
    root, _ = quick_run
    source, halves = root / "data" / "Tiny", root / "work" / "datasets"
    users = set(dataset_users(source, "Tiny"))
    pre, held = set(dataset_users(halves / "Tiny-pre", "Tiny-pre")), set(dataset_users(halves / "Tiny-eval", "Tiny-eval"))
    assert not pre & held and pre | held == users and len(pre) == len(held)
    for suffix in ("feat1CLS", "feat3CLS", "item2index"):
        original = (source / f"Tiny.{suffix}").read_bytes()
        assert (halves / "Tiny-pre" / f"Tiny-pre.{suffix}").read_bytes() == original
        assert (halves / "Tiny-eval" / f"Tiny-eval.{suffix}").read_bytes() == original
    for split in ("train", "valid", "test"):
        rows = (source / f"Tiny.{split}.inter").read_text().splitlines()[1:]
        pre_rows = (halves / "Tiny-pre" / f"Tiny-pre.{split}.inter").read_text().splitlines()[1:]
        eval_rows = (halves / "Tiny-eval" / f"Tiny-eval.{split}.inter").read_text().splitlines()[1:]
        assert sorted(pre_rows + eval_rows) == sorted(rows)
    mapped = [line.split("\t")[1] for h in ("pre", "eval")
              for line in (halves / f"Tiny-{h}" / f"Tiny-{h}.user2index").read_text().splitlines()]
    assert sorted(mapped, key=int) == [str(u) for u in range(40)]


def test_split_is_seeded(tmp_path):
    write_dataset(tmp_path / "data", "Tiny", n_users=30)
    a = split_users("Tiny", tmp_path / "data", tmp_path / "a", seed=1)
    b = split_users("Tiny", tmp_path / "data", tmp_path / "b", seed=1)
    c = split_users("Tiny", tmp_path / "data", tmp_path / "c", seed=2)
    users = {name: dataset_users(tmp_path / name / "Tiny-pre", "Tiny-pre") for name in "abc"}
    assert users["a"] == users["b"] != users["c"] and a["users"] == {"pre": 15, "eval": 15}
    assert split_users("Tiny", tmp_path / "data", tmp_path / "a", seed=1)["reused"]
    assert b["reused"] is False and c["reused"] is False


def test_quick_defaults_and_unavailable_kind(monkeypatch, tmp_path):
    args, overrides, pretrain = bench.parse_args(["--quick"])
    assert args.dataset == "Demo-D" and args.seed_list == [2020] and overrides == bench.QUICK_SETTINGS
    assert pretrain == bench.QUICK_PRETRAIN
    args, _, _ = bench.parse_args(["-d", "X", "--seeds", "3", "--epochs=4"])
    assert args.seed_list == [2020, 2021, 2022]

    def unavailable():
        raise bench.Unavailable("UniSRec not available: test")

    monkeypatch.setitem(bench.RUN_KINDS, "unisrec", bench.RunKind("UniSRec", None, None, unavailable))
    tiny_with_ties(tmp_path / "data")
    out = bench.main(bench_args(tmp_path, "--rows=UniSRec scratch inductive", "--tables=full"))
    assert out["launched"] == 0 and out["counts"] == {"unavailable": 1}
    text = (tmp_path / "results" / "results.md").read_text()
    assert "| UniSRec scratch inductive | 0 | unavailable: UniSRec not available: test |" in text


@pytest.mark.slow
def test_transfer_table_pretrains_on_another_domain(tmp_path):
    """--pretrain_on: pre-training on another dataset, every row on the full target; MISSRec's pre-trained rows
    fine-tune the adapters only or (all weights) everything; results.md reports the transfer target."""
    write_dataset(tmp_path / "data", "Other", n_items=50, n_users=40, dim=16, seed=3)
    tiny_with_ties(tmp_path / "data")
    rows = ["MISSRec scratch inductive", "MISSRec pre-trained inductive", "MISSRec pre-trained (all weights) inductive"]
    args = [a for a in bench_args(tmp_path) if not a.startswith("--rows")]
    out = bench.main([*args, "--pretrain_on", "Other", "--rows=" + ",".join(rows)])
    assert out["counts"] == {"ok": 3} and out["launched"] == 4  # + one pre-training
    data = json.loads((tmp_path / "results" / "results.json").read_text())
    assert data["split"] is None and data["datasets"]["pre"] == "Other"
    [pre] = data["pretraining"]
    assert pre["dataset"] == "Other" and pre["kind"] == "missrec"
    runs = {r["row"]: r for r in data["runs"]}
    assert set(runs) == set(rows) and {r["table"] for r in runs.values()} == {"transfer"}
    assert {r["dataset"] for r in runs.values()} == {"Tiny"}
    adapters, everything = runs[rows[1]], runs[rows[2]]
    assert adapters["pretrained_checkpoint"] == everything["pretrained_checkpoint"] == pre["checkpoint"]
    assert everything["settings"]["adapters_only"] is False and "adapters_only" not in adapters["settings"]
    assert everything["trainable_parameters"] > 5 * adapters["trainable_parameters"]
    text = (tmp_path / "results" / "results.md").read_text()
    assert "## Transfer: pre-trained on Other (other domains)" in text
    assert "## Transfer target: pre-trained MISSRec test NDCG@10 >= MISSRec from scratch" in text
    assert "| transfer | MISSRec pre-trained inductive" in text
