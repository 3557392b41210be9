"""benchmarks/inference_scale.py: the approximate export's nprobe sweep (latency against recall@10)."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from missrec_recbole.inference import ExportedIndex, MISSRecPredictor
from tests.conftest import benchmark_script, write_dataset
from tests.inference_helpers import DIM, _untrained_checkpoint


def load_script():
    return benchmark_script("inference_scale")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A 400-item catalogue (~12% without image), its IVF export, 20 histories and their exact top-10s."""
    root = tmp_path_factory.mktemp("inference-scale")
    write_dataset(root, "Large", n_items=400, n_users=120, dim=DIM, missing_image=tuple(range(3, 400, 8)),
                  seed=3, seq_len=(5, 12))
    predictor = MISSRecPredictor.load(_untrained_checkpoint(root, "Large", "inductive"), "Large", data_path=root)
    rng = np.random.default_rng(0)
    queries = [[predictor.item_ids[i] for i in rng.integers(1, predictor.n_items, size=6)] for _ in range(20)]
    exact = [[item for item, _ in r] for r in predictor.recommend_batch(queries, k=10)]
    predictor.export(root / "ivf", approximate="ivf")
    return {"folder": root / "ivf", "users": predictor.user_vectors(queries), "queries": queries, "exact": exact}


def test_nprobe_sweep_searches_the_ivf_export_with_fewer_and_all_lists(exported):
    script = load_script()
    index = ExportedIndex.load(exported["folder"])
    lists = index.manifest["approximate"]["search_params"]
    sweep = script.nprobe_sweep(index, exported["users"], exported["queries"], exported["exact"], fractions=[8, 1])
    assert [point["nprobe"] for point in sweep] == [{m: max(1, p["nlist"] // f) for m, p in lists.items()}
                                                    for f in (8, 1)]
    assert all(p["nlist"] >= 8 for p in lists.values())  # so that the first point probes one list, not all
    assert 0.0 <= sweep[0]["recall_at_10"] <= sweep[1]["recall_at_10"] <= 1.0
    assert sweep[1]["recall_at_10"] >= 0.9  # every list probed: only the fixed candidate count can miss an item
    assert all(point["search"]["p50_ms"] > 0 for point in sweep)


def test_the_sweep_sets_nprobe_on_every_modality_index(exported, monkeypatch):
    """What the sweep times is the index at the nprobe it reports (set_search_params reaches the IVF under the ID
    map)."""
    script = load_script()
    seen = []
    original = ExportedIndex.search

    def search(self, *args, **kwargs):
        seen.append({m: faiss.extract_index_ivf(faiss.downcast_index(index.index)).nprobe
                     for m, index in self.indexes.items()})
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ExportedIndex, "search", search)
    index = ExportedIndex.load(exported["folder"])
    sweep = script.nprobe_sweep(index, exported["users"][:1], exported["queries"][:1], [[]], fractions=[5])
    assert seen == [sweep[0]["nprobe"]]


def test_full_fusion_comparison_times_both_and_restores_the_default(tmp_path):
    from missrec_recbole.inference import predictor as predictor_module

    script = load_script()
    root = tmp_path
    write_dataset(root, "Small", n_items=60, n_users=30, dim=DIM, missing_image=(3, 9), seed=4, seq_len=(4, 8))
    predictor = MISSRecPredictor.load(_untrained_checkpoint(root, "Small", "inductive"), "Small", data_path=root)
    queries = [predictor.item_ids[:3], predictor.item_ids[5:9]]
    default = predictor_module.CANDIDATES_START
    row = script.compare_full_fusion(predictor, queries, rounds=1)
    assert predictor_module.CANDIDATES_START == default
    assert row["identical"] is True and row["full_fusion_p50_ms"] > 0 and row["certified_p50_ms"] > 0
