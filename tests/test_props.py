"""props/: the merged defaults of every run kind and stage stay exactly those of the benchmark's recorded runs."""

import pytest

from missrec_recbole import bench
from missrec_recbole.config import PROPS, props_files
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
