"""Specs that measure a table instead of planning engine runs (``Spec.measure``), and the
analyses and claims of the experiments converted to them, on synthetic tables."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from implicit_reg.experiments._spec import Spec, run_spec
from implicit_reg.report.report import Claim


@dataclasses.dataclass(frozen=True)
class _Cfg:
    n: int = 3


def _toy_spec(calls: list) -> Spec:
    def measure(cfg):
        calls.append(cfg)
        return pd.DataFrame({"x": range(cfg.n), "y": [0.5 * i for i in range(cfg.n)]})

    return Spec(
        name="toy-measured",
        title="a toy",
        paper="nobody",
        configs={"smoke": _Cfg(), "demo": _Cfg(), "small": _Cfg(4), "full": _Cfg(5)},
        plan=None,
        analyze=lambda rows, cfg: float(rows.y.sum()),
        claims=lambda a, cfg: [Claim(f"sum {a:g}", "nobody", (), untested="a toy")],
        measure=measure,
        measured="table.csv",
    )


def test_spec_needs_exactly_one_of_plan_and_measure():
    spec = _toy_spec([])
    with pytest.raises(ValueError, match="exactly one of plan"):
        dataclasses.replace(spec, measure=None)
    with pytest.raises(ValueError, match="both"):
        dataclasses.replace(spec, plan=lambda cfg: None)
    with pytest.raises(ValueError, match=r"\.csv"):
        dataclasses.replace(spec, measured="table.txt")


def test_measured_table_is_written_and_a_store_only_report_rejudges_it(tmp_path, monkeypatch):
    calls: list = []
    spec = _toy_spec(calls)
    report = run_spec(spec, "small", tmp_path)
    assert len(calls) == 1 and (tmp_path / "table.csv").is_file()
    assert report.claims[0].statement == "sum 3"
    assert "## Compute" not in report.path.read_text()
    # a store-only report reads the written table back (edited here: the claim follows it)
    pd.DataFrame({"x": [0], "y": [7.0]}).to_csv(tmp_path / "table.csv", index=False)
    monkeypatch.setenv("IMPLICIT_REG_STORE_ONLY", "1")
    report = run_spec(spec, "small", tmp_path)
    assert len(calls) == 1, "a store-only report recomputed the measured table"
    assert report.claims[0].statement == "sum 7"
    assert "nothing was recomputed" in report.path.read_text()
    # store-only with no table yet: measured now
    report = run_spec(spec, "small", tmp_path / "fresh")
    assert len(calls) == 2 and report.claims[0].statement == "sum 3"


def test_measured_tables_as_a_tuple(tmp_path, monkeypatch):
    def measure(cfg):
        return pd.DataFrame({"y": [1.0, 2.0]}), pd.DataFrame()  # the second is empty

    spec = dataclasses.replace(
        _toy_spec([]),
        measure=measure,
        measured=("a.csv", "b.csv"),
        analyze=lambda tables, cfg: float(tables[0].y.sum()) + len(tables[1]),
    )
    report = run_spec(spec, "small", tmp_path)
    assert report.claims[0].statement == "sum 3"
    assert (tmp_path / "a.csv").is_file() and not (tmp_path / "b.csv").exists()
    pd.DataFrame({"z": [5]}).to_csv(tmp_path / "b.csv", index=False)
    monkeypatch.setenv("IMPLICIT_REG_STORE_ONLY", "1")
    spec = dataclasses.replace(spec, measure=lambda cfg: pytest.fail("recomputed"))
    assert run_spec(spec, "small", tmp_path).claims[0].statement == "sum 4"
    monkeypatch.setenv("IMPLICIT_REG_STORE_ONLY", "0")
    spec = dataclasses.replace(spec, measure=measure, measured=("a.csv", "b.csv", "c.csv"))
    with pytest.raises(ValueError, match="2 tables"):
        run_spec(spec, "small", tmp_path)


# --- igr-order: the local error's order in h ---------------------------------------


def _igr_order_errors(orders: dict[str, float], seeds: int = 5) -> pd.DataFrame:
    """Synthetic local errors c_seed · h^order per flow, with a little seed noise."""
    rng = np.random.default_rng(0)
    hs = np.geomspace(1e-3, 1e-1, 9)
    rows = []
    for seed in range(seeds):
        for flow, p in orders.items():
            c = rng.uniform(0.5, 2.0)
            rows += [
                dict(
                    model="toy", seed=seed, h=h, flow=flow, error=c * h**p * rng.lognormal(0, 0.01)
                )
                for h in hs
            ]
    return pd.DataFrame(rows)


def test_igr_order_claims_follow_the_planted_orders():
    from implicit_reg.experiments import igr_order as m

    cfg = m.CONFIGS["small"]
    a = m.analyze(_igr_order_errors({"flow of L": 2.0, "flow of L̃": 3.0}), cfg)
    assert a.models == ("toy",)
    assert [c.verdict for c in m.claims(a, cfg)] == ["reproduced", "reproduced"]
    # GD following L̃ only to O(h^2.5): the L̃ claim must fail, the L claim still holds
    a = m.analyze(_igr_order_errors({"flow of L": 2.0, "flow of L̃": 2.5}), cfg)
    verdicts = [c.verdict for c in m.claims(a, cfg)]
    assert verdicts[0] == "reproduced" and verdicts[1] != "reproduced", verdicts


# --- double-descent-rf: the peak at N = n --------------------------------------------


def _rf_sweep(peak: float, seeds: int = 3) -> pd.DataFrame:
    """Synthetic min-norm sweep: test error 0.4 plus ``peak`` at N = n (a bump in log N/n),
    ‖β‖ with a spike of the same shape, falling beyond it; small draw noise."""
    from implicit_reg.experiments import double_descent_rf as m

    rng = np.random.default_rng(1)
    rows = []
    for seed in range(seeds):
        for r in m.CONFIGS["small"].ratios:
            bump = np.exp(-(np.log(r) ** 2) / 0.02)
            rows.append(dict(
                seed=seed, N=int(round(4000 * r)), ratio=r,
                test_error=0.4 + peak * bump + rng.normal(0, 0.005) - 0.02 * (r > 1),
                test_mse=1 + peak * bump, train_mse=0.0, train_error=0.0,
                norm=40 * max(r, 1) ** -0.5 * np.exp(5 * peak * bump + rng.normal(0, 0.05)),
                fit_seconds=1.0,
            ))  # fmt: skip
    return pd.DataFrame(rows)


def test_double_descent_rf_peak_claim_follows_the_planted_peak():
    from implicit_reg.experiments import double_descent_rf as m

    cfg = m.CONFIGS["small"]
    a = m.analyze((_rf_sweep(0.5), pd.DataFrame()), cfg)
    cs = m.claims(a, cfg)
    assert (a.lo_r, a.hi_r, a.r_last) == (0.5, 2.0, 10.0)
    assert [c.verdict for c in cs] == ["reproduced"] * 3, [c.row() for c in cs]
    cs = m.claims(m.analyze((_rf_sweep(0.0), pd.DataFrame()), cfg), cfg)
    assert cs[0].verdict != "reproduced" and cs[2].verdict != "reproduced"


# --- sample-wise-linear: more data hurts below d -----------------------------------------


def _swl_tables(hurt: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Synthetic (linear, random-features) tables: the risk is the closed form (``hurt``) or
    flat at ‖β‖² + σ², times 2% draw noise; the RF test error peaks at n = N or is flat."""
    from implicit_reg.experiments import sample_wise_linear as m
    from implicit_reg.experiments._linear import minnorm_expected_risk

    cfg, rng = m.CONFIGS["small"], np.random.default_rng(2)
    lin = pd.DataFrame([
        {"n": n, "n/d": n / cfg.d, "trial": t, "norm": 1.0,
         "closed_form": (cf := minnorm_expected_risk(n, cfg.d, cfg.beta_norm2, cfg.noise2)),
         "risk": (cf if hurt else 1.25) * rng.lognormal(0, 0.02)}
        for n in m.sample_sizes(cfg.d, cfg.n_over_d) for t in range(cfg.trials)
    ])  # fmt: skip
    rf = pd.DataFrame([
        {"seed": s, "n": round(r * cfg.features), "n/N": r, "norm": 1.0,
         "test_error": 0.3 + 0.3 * hurt * np.exp(-np.log(r) ** 2 / 0.01) + rng.normal(0, 0.005),
         "test_mse": (1 + 5 * hurt * np.exp(-np.log(r) ** 2 / 0.01)) * rng.lognormal(0, 0.02)}
        for s in range(cfg.rf_seeds) for r in cfg.n_over_N
    ])  # fmt: skip
    return lin, rf


def test_sample_wise_linear_claims_follow_the_planted_risk():
    from implicit_reg.experiments import sample_wise_linear as m

    cfg = m.CONFIGS["small"]
    cs = m.claims(m.analyze(_swl_tables(hurt=True), cfg), cfg)
    assert [c.verdict for c in cs] == ["reproduced"] * 5, [c.row() for c in cs]
    cs = m.claims(m.analyze(_swl_tables(hurt=False), cfg), cfg)
    # the closed form no longer matches near d, and no more-data-hurts claim holds
    assert all(c.verdict != "reproduced" for c in cs), [c.row() for c in cs]


# --- epoch-wise-linear: the bump at times read off pilot curves --------------------------


def _ewl_tables(bump: bool, seeds: int = 5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Synthetic curves on the smoke grid: the plain-GD risk falls, rises (fast block) and
    falls again (slow block) around the pilot's bump, or falls monotonically; the per-group
    setting falls monotonically. Simulated = closed form."""
    from implicit_reg.experiments import epoch_wise_linear as m

    cfg, rng = m.CONFIGS["smoke"], np.random.default_rng(3)
    steps = m.log_steps(cfg)
    u = np.linspace(0, 1, len(steps))
    down = 1.0 - 0.5 * u  # a monotone fall
    fast_rise = 0.3 * np.exp(-((u - 0.5) ** 2) / 0.01)  # the fast block overfits, then not
    slow = 0.3 * (1 - u)  # the slow block is learned late
    shape = {"plain GD": down + fast_rise, "per-group step sizes": down}
    pilot = pd.concat(
        [pd.DataFrame({"setting": k, "step": steps, "risk": v}) for k, v in shape.items()]
    )
    frames = []
    for setting in m.SETTINGS:
        planted = setting == "plain GD" and bump
        for seed in range(seeds):
            fast = (fast_rise if planted else 0 * u) + rng.normal(0, 0.003, len(u))
            risk = down + fast
            for source in ("simulated", "closed form"):
                frames.append(pd.DataFrame({
                    "setting": setting, "seed": seed, "step": steps, "source": source,
                    "fast": fast + 0.2, "slow": slow, "risk": risk,
                }))  # fmt: skip
    return pd.concat(frames, ignore_index=True), pilot


def test_epoch_wise_linear_claims_follow_the_planted_bump():
    from implicit_reg.experiments import epoch_wise_linear as m

    cfg = m.CONFIGS["smoke"]
    a = m.analyze(_ewl_tables(bump=True), cfg)
    assert not a.pilot_recomputed and a.rel == 0
    cs = m.claims(a, cfg)
    assert [c.verdict for c in cs] == ["reproduced"] * 3, [c.row() for c in cs]
    cs = m.claims(m.analyze(_ewl_tables(bump=False), cfg), cfg)
    assert cs[0].verdict != "reproduced" and cs[2].verdict != "reproduced", [c.row() for c in cs]


# --- igr-toy: GD lands flatter than gradient flow ----------------------------------------


def _toy_ends(effect: float, seeds: int = 5) -> pd.DataFrame:
    """Synthetic end points: GD's λ_max and ‖θ‖ below the flow of E's by ``effect``·h/0.05,
    the flow of Ẽ halfway (``effect`` < 0: GD sharper); GD's distance to the flow of Ẽ 10×
    smaller than to E's when ``effect`` > 0, equal otherwise."""
    from implicit_reg.experiments import igr_toy as m

    cfg, rng = m.CONFIGS["small"], np.random.default_rng(4)
    rows = []
    for seed in range(seeds):
        lam0 = 4.7 + rng.normal(0, 0.5)
        for h in sorted(set(cfg.h_sweep) | {cfg.h_small, cfg.h_moderate}):
            for method, k in (("GD", 1.0), ("flow of E", 0.0), ("flow of Ẽ", 0.5)):
                lam = lam0 - k * effect * h / 0.05 + rng.normal(0, 0.01)
                rows.append(dict(
                    seed=seed, h=h, method=method, lambda_max=lam, norm=np.sqrt(lam),
                    max_dev_from_flow_E=h**2 * (1 + rng.uniform(0, 0.1)),
                    max_dev_from_flow_Emod=h**2 * (0.1 if effect > 0 else 1) * (1 + rng.uniform(0, 0.1)),
                ))  # fmt: skip
    return pd.DataFrame(rows)


def test_igr_toy_claims_follow_the_planted_flattening():
    from implicit_reg.experiments import igr_toy as m

    cfg = m.CONFIGS["small"]
    cs = m.claims(m.analyze((_toy_ends(1.0), pd.DataFrame()), cfg), cfg)
    assert [c.verdict for c in cs] == ["reproduced"] * 3, [c.row() for c in cs]
    # reversed (GD sharper, growing with h; not closer to Ẽ): no claim holds. (With no
    # effect at all, 7 h values give a discrete Kendall τ that this seed happens to tilt.)
    cs = m.claims(m.analyze((_toy_ends(-1.0), pd.DataFrame()), cfg), cfg)
    assert all(c.verdict != "reproduced" for c in cs), [c.row() for c in cs]


# --- edge-of-stability: sharpening to 2/h and hovering there -----------------------------


def _eos_history(edge: bool, seeds: int = 3) -> pd.DataFrame:
    """Synthetic stored trajectories: λ_max rises from 0.3·2/h to 2/h by step 500 and hovers
    there (3% noise), or drifts down to 0.25·2/h. (A flat λ_max below the edge fails the
    sharpening claim's TOST against 2/h: tests/test_eos_claims.py.)"""
    from implicit_reg.experiments import edge_of_stability as m

    cfg, rng = m.CONFIGS["small"], np.random.default_rng(5)
    steps = np.arange(0, cfg.steps + 1, cfg.probe_every)
    frames = []
    for lr in cfg.lrs:
        for seed in range(seeds):
            ramp = np.minimum(1.0, steps / 500)
            level = 0.3 + 0.7 * ramp if edge else 0.3 - 0.05 * ramp
            value = 2 / lr * level * rng.lognormal(0, 0.03, len(steps))
            frames.append(pd.DataFrame(
                {"lr": lr, "seed": seed, "step": steps, "metric": "lambda_max", "value": value}
            ))  # fmt: skip
    history = pd.concat(frames, ignore_index=True)
    history.attrs["stored"] = True
    return history


def test_edge_of_stability_claims_follow_the_planted_edge():
    from implicit_reg.experiments import edge_of_stability as m

    cfg = m.CONFIGS["small"]
    a = m.analyze(_eos_history(edge=True), cfg)
    assert a.diverged.empty and len(a.stats) == 9
    cs = m.claims(a, cfg)
    assert [c.verdict for c in cs] == ["reproduced"] * 6, [c.row() for c in cs]
    cs = m.claims(m.analyze(_eos_history(edge=False), cfg), cfg)
    assert all(c.verdict != "reproduced" for c in cs), [c.row() for c in cs]
