"""measures-vs-descent (issue 20, item 5): the engine's ``save_params`` (final and initial
parameters of serial runs and ensemble members, equal to a serial run's final model) and
the verdict rule "a measure explains the second descent" on planted measures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from implicit_reg.engine.checkpoint import load_checkpoint
from implicit_reg.engine.config import RunConfig
from implicit_reg.engine.store import PARAMS_FILE, ResultStore
from implicit_reg.engine.train import run, train_runs
from implicit_reg.engine.workload import load_run_data
from implicit_reg.experiments import measures_vs_descent as mvd
from implicit_reg.stats import all_of, paired_test


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


# ------------------------------------------------------------------ the verdict rule
WIDTHS = (13, 16, 21, 28, 36, 47, 62, 80, 104, 136)
NOISY_FIT, CLEAN_FIT = 6, 5  # indices of the first fitting widths (62 and 47)


def _bump(at: int, height: float) -> np.ndarray:
    """A curve falling slowly with width plus a bump of ``height`` (relative) at ``at``."""
    base = np.linspace(1.0, 0.8, len(WIDTHS))
    bump = height * np.exp(-0.5 * (np.arange(len(WIDTHS)) - at) ** 2 / 0.6)
    return base * (1 + bump)


def _rows(measures: dict[str, tuple[np.ndarray, np.ndarray]], seeds: int = 5) -> pd.DataFrame:
    """Synthetic runs: per measure (noisy curve, clean curve), multiplicative seed noise."""
    rng = np.random.default_rng(0)
    rows = []
    for noise, fit in ((0.15, NOISY_FIT), (0.0, CLEAN_FIT)):
        for s in range(seeds):
            for i, w in enumerate(WIDTHS):
                r = {"label_noise": noise, "width": w, "seed": s, "status": "complete",
                     "train_error": 0.3 if i < fit else 0.0}  # fmt: skip
                for name, (noisy, clean) in measures.items():
                    curve = noisy if noise else clean
                    r[name] = curve[i] * float(np.exp(0.02 * rng.standard_normal()))
                rows.append(r)
    return pd.DataFrame(rows)


def _verdicts(rows: pd.DataFrame) -> dict[str, str]:
    a = mvd.analyze(rows, mvd.CONFIGS["small"])
    assert a.fit_width == 62 and a.clean_fit_width == 47
    return {v.name: v.verdict for v in a.verdicts}


def test_a_measure_peaking_with_the_error_only_under_noise_explains():
    flat = _bump(0, 0.0)
    rows = _rows({
        "test_error": (_bump(NOISY_FIT, 0.3), flat),
        "lambda_max": (_bump(NOISY_FIT, 0.5), flat),  # planted: the pattern the rule wants
        "weight_norm": (_bump(NOISY_FIT, 0.5), _bump(CLEAN_FIT, 0.5)),  # peaks in both
        "trace": (flat, flat),  # no peak anywhere
    })  # fmt: skip
    v = _verdicts(rows)
    assert v["test_error"] == "reproduced"
    assert v["lambda_max"] == "reproduced"
    assert v["weight_norm"] == "not reproduced"
    assert v["trace"] != "reproduced"


def test_a_clean_peak_away_from_the_threshold_still_counts():
    """The clean leg looks at every interior width, not only the clean threshold."""
    rows = _rows({"lambda_max": (_bump(NOISY_FIT, 0.5), _bump(2, 0.5))})
    assert _verdicts(rows)["lambda_max"] == "not reproduced"


def test_an_infinite_margin_measure_is_judged_on_ranks():
    """γ ≤ 0 below the threshold: the "/margin" measure is +inf there, so it is highest on
    the under-fitted side and cannot peak at the threshold."""
    noisy = np.where(np.arange(len(WIDTHS)) < 5, np.inf, _bump(NOISY_FIT, 0.5))
    clean = np.where(np.arange(len(WIDTHS)) < 4, np.inf, _bump(0, 0.0))
    a = mvd.analyze(_rows({"spec_bartlett": (noisy, clean)}), mvd.CONFIGS["small"])
    (v,) = a.verdicts
    assert (v.noisy_scale, v.clean_scale) == ("rank", "rank")
    assert v.noisy.rise.verdict == "not reproduced"
    assert v.verdict == "not reproduced"


def test_scales_follow_the_declared_rule():
    assert mvd.scaled(np.array([[1.0, 2.0], [3.0, 4.0]])).scale == "log"
    s = mvd.scaled(np.array([[-1.0, 2.0], [3.0, 4.0]]))
    assert s.scale == "relative" and np.isclose(np.median(np.abs(s.values)), 1.0)
    r = mvd.scaled(np.array([[np.inf, 2.0, 1.0], [5.0, np.inf, np.inf]]))
    assert r.scale == "rank" and r.values.tolist() == [[3.0, 2.0, 1.0], [1.0, 2.5, 2.5]]
    assert mvd.scaled(np.array([[np.nan, 1.0]])) is None


def test_the_clean_leg_is_the_conjunction_over_interior_widths():
    """The reported test (the largest p) has the verdict of all_of over every width."""
    rng = np.random.default_rng(3)
    for _ in range(30):
        table = np.exp(rng.normal(0, 0.05, (5, 6)) + rng.normal(0, 0.08, 6))
        res = mvd.clean_no_peak(table, list(range(6))).result
        h = mvd.clean_heights(np.log(table))
        each = [paired_test(np.full(5, mvd.LOG_MARGIN), h[:, j]) for j in range(h.shape[1])]
        assert res.verdict == all_of(*each)
        assert res.p == max(t.p for t in each)


def test_clean_heights_by_hand():
    v = np.array([[1.0, 3.0, 2.0, 5.0, 0.0]])
    # w1: min(3 − 1, 3 − 0) = 2; w2: min(2 − 1, 2) = 1; w3: min(5 − 1, 5) = 4
    assert mvd.clean_heights(v).tolist() == [[2.0, 1.0, 4.0]]


# ------------------------------------------------------------------ the registered bounds
def test_registered_bound_probes_equal_the_functions():
    """run_probes' bound names give probes.bounds' values, sharing one margin and one σ
    search; a "/margin" measure is inf when γ ≤ 0."""
    from implicit_reg.probes import bounds, run_probes

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)
    ).double()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(90, 5, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)  # every sample right: γ > 0
    y[:3] = (y[:3] + 1) % 3
    loss = torch.nn.CrossEntropyLoss()
    names = ["margin", "path_norm", "path_norm_margin", "spec_orig", "spec_init",
             "spec_bartlett", "spec_bartlett_init", "pacbayes_sigma", "pacbayes_flatness",
             "pacbayes_orig", "pacbayes_init"]  # fmt: skip
    got = run_probes(names, model, loss, (x, y), seed=4, init_state=init)
    gamma = bounds.margin_quantile(bounds.classification_margins(model, (x, y)), 10.0)
    assert gamma > 0 and got["margin"] == gamma
    assert got["path_norm"] == bounds.path_norm(model)
    assert np.isclose(got["path_norm_margin"], bounds.path_norm(model) / gamma**2)
    for name, form, ref in (("spec_orig", "fro", None), ("spec_init", "fro", init),
                            ("spec_bartlett", "bartlett", None),
                            ("spec_bartlett_init", "bartlett", init)):  # fmt: skip
        want = bounds.spectral_complexity(model, (x, y), init_state=ref, form=form).value
        assert np.isclose(got[name], want, rtol=1e-12), name
    pb = bounds.pacbayes_measures(model, (x, y), init_state=init, seed=4)
    for k in ("pacbayes_sigma", "pacbayes_flatness", "pacbayes_orig", "pacbayes_init"):
        assert got[k] == pb[k], k
    y_bad = (y + 1) % 3  # every sample wrong: γ < 0
    bad = run_probes(["margin", "spec_bartlett", "path_norm_margin"], model, loss, (x, y_bad))
    assert bad["margin"] < 0 and bad["spec_bartlett"] == bad["path_norm_margin"] == np.inf


def test_the_runs_are_label_noise_doses_runs():
    """The first phases are label-noise-dose's 0% and 15% runs, hash for hash (its test
    errors), then further seeds; every config saves its parameters."""
    from implicit_reg.experiments._emc_plan import DOSE_PLANS, dose_config

    plan = DOSE_PLANS["small"]
    phases = mvd.phases(mvd.CONFIGS["small"])
    dose = {
        dose_config(plan, w, p, s).config_hash()
        for w in plan.widths
        for p in (0.0, 0.15)
        for s in range(5)
    }
    assert {c.config_hash() for _, cfgs in phases[:4] for c in cfgs} == dose
    more = [c for _, cfgs in phases[4:] for c in cfgs]
    assert {c.seed for c in more} == set(range(5, 10)) and len(more) == 100
    assert all(c.save_params for _, cfgs in phases for c in cfgs)


def test_store_twins_counts_identical_final_metrics(tmp_path):
    from implicit_reg.engine.store import atomic_write_json

    root = tmp_path / "label-noise-dose" / "sweep" / "runs"
    atomic_write_json(root / "aaa" / "summary.json", {"test_error": 0.5, "train_loss": 0.1})
    atomic_write_json(root / "bbb" / "summary.json", {"test_error": 0.4, "train_loss": 0.2})
    rows = pd.DataFrame(
        {"config_hash": ["aaa", "bbb", "ccc"], "test_error": [0.5, 0.41, 0.3],
         "train_loss": [0.1, 0.2, 0.3]}
    )  # fmt: skip
    text = mvd.store_twins(rows, tmp_path / "measures-vs-descent")
    assert (
        "holds 2 of these configs" in text
        and "1 have the identical final test error, 1 differ" in text
    )
    one = mvd.store_twins(rows[:1], tmp_path / "measures-vs-descent")
    assert "differ" not in one and "1 also the identical final training loss" in one
    assert mvd.store_twins(rows, tmp_path / "elsewhere" / "x") is None
