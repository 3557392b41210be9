"""Model wiring: props keys -> MISSRec.refresh_interests -> dpc_knn."""

from __future__ import annotations

import pytest
import torch

from missrec_recbole.interests import dpc_knn


def _tiny_model(tiny_config, **extra):
    from missrec_recbole.data import MISSRecDataset
    from missrec_recbole.model import MISSRec

    config = tiny_config(**extra)
    torch.manual_seed(0)
    return MISSRec(config, MISSRecDataset(config))


@pytest.mark.parametrize("extra, mode", [({}, "exact"), ({"dpc_mode": "approx"}, "approx"),
                                         ({"dpc_exact_max_tokens": 10}, "approx")])
def test_model_config_reaches_dpc_knn(tiny_config, monkeypatch, extra, mode):
    import missrec_recbole.model.missrec as missrec_module

    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return dpc_knn(*args, **kwargs)

    monkeypatch.setattr(missrec_module, "dpc_knn", spy)
    model = _tiny_model(tiny_config, faiss_threads=1, **extra)
    first = model.refresh_interests()
    assert first["mode"] == mode and calls[0]["n_threads"] == 1 and calls[0]["state"] is None
    first_map = model.item_interest.clone()
    assert model.refresh_interests()["mode"] == mode  # same adapters: same interests
    assert torch.equal(model.item_interest, first_map)
    # the approximate mode's quantizer is handed to the next refresh
    assert (calls[1]["state"] is not None) == (mode == "approx")


def test_bad_dpc_mode_is_refused_by_the_schema(tiny_config):
    from missrec_recbole.config_schema import ConfigError

    with pytest.raises(ConfigError, match="option 'dpc_mode': got 'fast', must be one of auto, exact, approx"):
        _tiny_model(tiny_config, dpc_mode="fast")


def test_model_warm_start_off_and_deterministic(tiny_config):
    runs = []
    for _ in range(2):
        model = _tiny_model(tiny_config, dpc_mode="approx", dpc_warm_start=False)
        model.refresh_interests()
        assert model._dpc_state is None
        runs.append(model.item_interest.clone())
    assert torch.equal(runs[0], runs[1])
