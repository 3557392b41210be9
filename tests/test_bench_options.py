"""The bench's options: checked before any run, scoped to models and stages, what feeds the run hash."""

from __future__ import annotations

import pytest

from missrec_recbole import bench
from missrec_recbole.bench.runner import FINETUNE_ONLY_OPTIONS
from tests.bench_helpers import bench_args, tiny_with_ties


def test_only_seeds_runs_a_subset_and_keeps_the_pretraining_seed():
    args, _, _ = bench.parse_args(["-d", "Scientific-mm", "--seeds", "3", "--only_seeds", "2022"])
    assert args.seed_list == [2020, 2021, 2022] and args.run_seeds == [2022]
    with pytest.raises(SystemExit):
        bench.parse_args(["-d", "Scientific-mm", "--seeds", "2", "--only_seeds", "2022"])


def test_threads_must_be_a_positive_count(capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["-d", "X", "--threads=0"])
    assert "--threads: 0 is not a thread count" in capsys.readouterr().err
    assert bench.parse_args(["-d", "X", "--threads=2"])[0].threads == 2


def test_transfer_options_go_together():
    for argv in (["-d", "X", "--tables=transfer"], ["-d", "X", "--pretrain_on=Y", "--tables=full,pretrained"],
                 ["-d", "X", "--pretrain_data_path=/tmp"]):
        with pytest.raises(SystemExit):
            bench.parse_args(argv)
    args, _, _ = bench.parse_args(["-d", "X", "--pretrain_on=Y,Z"])
    assert args.tables == ["transfer"] and args.pretrain_data_path == args.data_path
    names = [row.name for row in bench.suite_rows(["transfer"])]
    assert len(names) == 11 and "MISSRec pre-trained (all weights) transductive" in names


@pytest.mark.parametrize("option, message", [
    ("--finetune.learning_rat=0.005", "unknown option 'learning_rat' (in --finetune.KEY): did you mean 'learning_rate'?"),
    ("--missrec.item_adapter=mo", "option 'item_adapter' (in --missrec.KEY): got 'mo', must be one of linear, moe"),
    ("--pretrain.epochs=0", "option 'epochs' (in --pretrain.KEY): got 0"),
    ("--hidden_size=30", "'hidden_size'=30 and 'n_heads'=4"),  # against the props default of n_heads
    ("--sasrec.n_heads=7", "'hidden_size'=300 and 'n_heads'=7"),  # against props/bench.yaml's SASRec settings
    ("--pretrain.unfreeze=[item_decoder]", "option 'unfreeze' (in --pretrain.KEY) only applies to fine-tuning"),
    ("--pretrain.adapters_only=true", "Give it as --finetune.adapters_only"),
])
def test_overrides_are_checked_before_any_run(option, message, capsys):
    """A bad --key=value ends the invocation at once, naming the option and its scope - not hours later in the
    fine-tuning that follows a pre-training."""
    with pytest.raises(SystemExit) as exit_:
        bench.parse_args(["-d", "X", "--pretrain_on=Y", option])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_model_scoped_overrides_leave_the_other_models_runs_alone(tmp_path):
    """--missrec.key=value reaches MISSRec's pre-training and rows only: the other models' settings and run hashes
    stay those of an invocation without it, and MISSRec's equal those of --pretrain.key + --finetune.key."""
    tiny_with_ties(tmp_path / "data")

    def suite(*extra):
        return bench.make_suite(*bench.parse_args(bench_args(tmp_path, "--finetune.learning_rate=0.005", *extra)))

    plain, scoped = suite(), suite("--missrec.item_adapter=moe")
    staged = suite("--pretrain.item_adapter=moe", "--finetune.item_adapter=moe")
    assert scoped.settings("missrec", "finetune")["item_adapter"] == "moe"
    assert scoped.settings("missrec", "pretrain")["item_adapter"] == "moe"
    assert scoped.settings("missrec", "finetune")["learning_rate"] == 0.005  # the stage's override still applies
    assert scoped.settings("unisrec", "finetune") == plain.settings("unisrec", "finetune")
    assert "item_adapter" not in scoped.settings("sasrec", "finetune")
    assert bench.pretrain_key(scoped, "unisrec") == bench.pretrain_key(plain, "unisrec")
    assert bench.pretrain_key(scoped, "missrec") != bench.pretrain_key(plain, "missrec")
    assert bench.pretrain_key(scoped, "missrec") == bench.pretrain_key(staged, "missrec")
    assert scoped.results.data["settings"]["model_overrides"] == {"missrec": {"item_adapter": "moe"}}


def test_fine_tuning_options_leave_the_pre_training_alone(tmp_path):
    """What fine-tuning freezes (adapters_only, unfreeze) reaches the fine-tuning rows only: given to every run or to
    MISSRec's, it neither changes the pre-training's settings nor its hash (an unfreeze probe reuses the checkpoint),
    while the rows it applies to get a run hash of their own."""
    tiny_with_ties(tmp_path / "data")

    def suite(*extra):
        return bench.make_suite(*bench.parse_args(bench_args(tmp_path, *extra)))

    plain = suite()
    for probe in (suite("--missrec.unfreeze=[item_decoder]"), suite("--adapters_only=true")):
        assert bench.pretrain_key(probe, "missrec") == bench.pretrain_key(plain, "missrec")
        assert not set(FINETUNE_ONLY_OPTIONS) & set(probe.settings("missrec", "pretrain"))
        assert probe.settings("missrec", "finetune") != plain.settings("missrec", "finetune")
    scoped = suite("--missrec.unfreeze=[item_decoder]")
    assert scoped.settings("missrec", "finetune")["unfreeze"] == ["item_decoder"]
    assert "unfreeze" not in scoped.settings("unisrec", "finetune")


def test_a_missing_dataset_folder_is_one_error_line(tmp_path, capsys):
    from missrec_recbole.command import run_command

    tiny_with_ties(tmp_path / "data")
    for argv, message in ((["-d", "Nope"], "there is no folder"),
                          (["-d", "Tiny", "--pretrain_on=Tiny,Nope"], "give --pretrain_data_path the folder")):
        code = run_command(bench.main, [*argv, f"--data_path={tmp_path / 'data'}", f"--out_dir={tmp_path / 'out'}",
                                        f"--work_dir={tmp_path / 'work'}", "--no_progress"])
        err = capsys.readouterr().err
        assert code == 1 and err.startswith("error: dataset 'Nope'") and message in err
        assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_run_hash_follows_props_values_not_their_layout(monkeypatch, tmp_path):
    """Comments or key order in props/ leave the run hash alone; a changed default changes it."""
    import shutil

    from missrec_recbole import config

    for path in config.PROPS.glob("*.yaml"):
        shutil.copy(path, tmp_path / path.name)
    monkeypatch.setattr(config, "PROPS", tmp_path)
    before = {kind: bench.config_hash(bench.effective_props(kind, "finetune")) for kind in bench.RUN_KINDS}
    finetune = tmp_path / "finetune.yaml"
    lines = finetune.read_text().splitlines()
    finetune.write_text("\n".join(["# a new comment", *reversed([l for l in lines if not l.startswith("#")])]) + "\n")
    assert before == {kind: bench.config_hash(bench.effective_props(kind, "finetune")) for kind in bench.RUN_KINDS}
    finetune.write_text(finetune.read_text() + "temperature: 0.1\n")
    after = {kind: bench.config_hash(bench.effective_props(kind, "finetune")) for kind in bench.RUN_KINDS}
    assert all(after[kind] != before[kind] for kind in bench.RUN_KINDS)


# The props part of the key of every benchmark run recorded since 2026-11-30 (results/*/results.json; the code of
# those runs gives these values). A props change that moves one re-runs every recorded row of that kind: make a new
# option a LATER_OPTION at the value that behaves as before instead, or change the pin on purpose and say so. (The
# Scientific-mm records of 2026-11-26 predate `modalities: ~` and `*_dim: ~`, which moved these once.)
PINNED_PROPS_HASHES = {"sasrec/pretrain": "23190c0b0fd0", "sasrec/finetune": "1cbcbb32987f",
                       "unisrec/pretrain": "0a1e856189b9", "unisrec/finetune": "5b783bd43493",
                       "missrec/pretrain": "23190c0b0fd0", "missrec/finetune": "1cbcbb32987f"}


def test_props_part_of_recorded_run_keys_is_unchanged():
    from missrec_recbole.bench.settings import BENCH_VERSION

    assert BENCH_VERSION == 1
    assert {f"{kind}/{stage}": bench.config_hash(bench.effective_props(kind, stage))
            for kind in bench.RUN_KINDS for stage in ("pretrain", "finetune")} == PINNED_PROPS_HASHES
