"""measures-vs-descent (issue 20, item 5): the engine's ``save_params`` (final and initial
parameters of serial runs and ensemble members, equal to a serial run's final model) and
the verdict rule "a measure explains the second descent" on planted measures."""

from __future__ import annotations

import torch

from implicit_reg.engine.checkpoint import load_checkpoint
from implicit_reg.engine.config import RunConfig
from implicit_reg.engine.store import PARAMS_FILE, ResultStore
from implicit_reg.engine.train import run, train_runs
from implicit_reg.engine.workload import load_run_data


def _tiny(width: int, seed: int, **changes) -> RunConfig:
    cfg = RunConfig(
        model="mlp", width=width, depth=2, activation="relu", dataset="mnist1d", n_train=64,
        n_test=32, label_noise=0.15, loss="cross_entropy", optimizer="sgd", lr=0.05,
        momentum=0.9, batch_size=16, steps=None, epochs=3, eval_every=6, probes=(),
        seed=seed, dtype="float64",
    )  # fmt: skip
    return cfg.replace(**changes) if changes else cfg


def test_save_params_is_a_runtime_field():
    """Saving parameters never changes a run's numbers, so it leaves the hash alone: the
    runs are label-noise-dose's runs, hash for hash."""
    assert _tiny(8, 0, save_params=True).config_hash() == _tiny(8, 0).config_hash()


def test_saved_params_equal_the_serial_final_model(tmp_path):
    """Ensemble members of two widths (a packed, stacked ensemble) save the parameters a
    serial run of each ends with, and its θ₀; a serial run saves its own."""
    configs = [_tiny(w, s, save_params=True) for w in (4, 8) for s in (0, 1)]
    store = ResultStore(tmp_path / "ens")
    for r in train_runs(configs, store=store):
        assert r.meta["trained"]["mode"] == "ensemble"
        store.write(r)
    for cfg in configs:
        serial = run(cfg, tmp_path / "serial", raise_errors=True)
        assert serial.status == "complete"
        ens_model, _, _, _, ens_init = load_checkpoint(store.path_for(cfg) / PARAMS_FILE)
        ser_model, _, _, _, ser_init = load_checkpoint(
            tmp_path / "serial" / cfg.config_hash() / PARAMS_FILE
        )
        ens_state, ser_state = ens_model.state_dict(), ser_model.state_dict()
        assert ens_state.keys() == ser_state.keys()
        for k in ser_state:
            assert ens_state[k].shape == ser_state[k].shape
            err = (ens_state[k] - ser_state[k]).abs().max() / ser_state[k].abs().max()
            assert err < 1e-10, (cfg.width, cfg.seed, k, float(err))
            assert torch.equal(ens_init[k], ser_init[k]), (cfg.width, k)
            assert not torch.equal(ser_state[k], ser_init[k]), "the model did not train"
        # the saved state is the last one: it gives the summary's final train loss
        data = load_run_data(cfg)
        x, y = data.train
        with torch.no_grad():
            loss = torch.nn.functional.cross_entropy(ens_model(x), y).item()
        assert abs(loss - store.read_summary(cfg)["train_loss"]) < 1e-9


def test_no_params_without_the_option(tmp_path):
    run(_tiny(4, 0), tmp_path, raise_errors=True)
    assert not (tmp_path / _tiny(4, 0).config_hash() / PARAMS_FILE).exists()
