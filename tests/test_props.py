"""props/: the merged defaults of every run kind and stage stay exactly those of the benchmark's recorded runs."""

import pytest

from missrec_recbole import bench
from missrec_recbole.config import PROPS, given_options, props_files
from missrec_recbole.config_schema import read_config_file

# config_hash(effective_props(kind, stage)) as recorded at c8c2ad9, before props/common.yaml existed: finished
# benchmark runs are found again by these hashes, so a props layout change must not move them.
RECORDED_HASHES = {
    ("sasrec", "pretrain"): "23190c0b0fd0", ("sasrec", "finetune"): "1cbcbb32987f",
    ("unisrec", "pretrain"): "0a1e856189b9", ("unisrec", "finetune"): "5b783bd43493",
    ("missrec", "pretrain"): "23190c0b0fd0", ("missrec", "finetune"): "1cbcbb32987f",
}


@pytest.mark.parametrize("kind, stage", sorted(RECORDED_HASHES))
def test_run_hash_unchanged_by_props_layout(kind, stage):
    assert bench.config_hash(bench.effective_props(kind, stage)) == RECORDED_HASHES[kind, stage]


def test_common_props_come_first():
    files = props_files("MISSRec", "finetune")
    assert files[0] == PROPS / "common.yaml" and [f.name for f in files[1:]] == ["MISSRec.yaml", "finetune.yaml"]


def test_model_props_do_not_repeat_the_common_block():
    common = read_config_file(PROPS / "common.yaml")
    for model in ("MISSRec", "UniSRec"):
        repeated = sorted(set(common) & set(read_config_file(PROPS / f"{model}.yaml")))
        assert not repeated, f"props/{model}.yaml repeats {repeated} of props/common.yaml"


def test_a_later_option_identifies_a_run_only_away_from_its_old_behaviour(monkeypatch):
    from missrec_recbole.bench import runner

    monkeypatch.setattr(runner, "merged_props", lambda model, stage: {"hidden_size": 8, "item_adapter": "linear",
                                                                      "n_exps": 8, "gating_noise": True})
    assert runner.effective_props("missrec", "finetune") == {"hidden_size": 8}
    monkeypatch.setattr(runner, "merged_props", lambda model, stage: {"hidden_size": 8, "item_adapter": "moe",
                                                                      "n_exps": 8, "gating_noise": True})
    assert runner.effective_props("missrec", "finetune") == {"hidden_size": 8, "item_adapter": "moe", "n_exps": 8,
                                                             "gating_noise": True}


def test_fine_tuning_inherits_only_what_the_run_does_not_give(tmp_path):
    """The options a run gives itself come from its config files (a missing one is reported later, by build_config)
    and overrides; the checkpoint supplies the network-defining ones among the rest, never None or training options."""
    from missrec_recbole.trainer.checkpoint import Checkpoint

    given_file = tmp_path / "mine.yaml"
    given_file.write_text("hidden_size: 64\nepochs: 3\n")
    given = given_options([given_file, tmp_path / "missing.yaml"], {"n_layers": 4})
    assert given == {"hidden_size", "epochs", "n_layers"}
    saved = Checkpoint("pre.pth", {"state_dict": {}, "config": {
        "hidden_size": 300, "n_layers": 2, "n_heads": 4, "item_adapter": "moe", "item_fusion": None, "epochs": 100,
        "learning_rate": 0.001, "mode": "inductive", "text_dim": 512}})
    assert saved.model_options(given) == {"n_heads": 4, "item_adapter": "moe"}
