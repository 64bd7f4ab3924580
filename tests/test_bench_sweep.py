"""benchmarks/bench_sweep.py: its sweep is the experiment's, and its schedule is longest first."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_sweep.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_sweep", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmarked_sweep_is_double_descent_width_small(bench):
    from implicit_reg.experiments.double_descent_width import CONFIGS, setting_configs

    cfg = CONFIGS["small"]
    configs = bench.sweep_configs(cfg, cfg.mnist1d.widths)
    expected = setting_configs(cfg, "mnist1d") + setting_configs(cfg, "mnist1d_clean")
    assert len(configs) == 19 * 3 * 2
    assert [c.config_hash() for c in configs] == [c.config_hash() for c in expected]


def test_longest_first_schedule():
    from implicit_reg.engine.vectorized_sweep import makespan

    assert makespan([3.0, 3.0, 2.0, 2.0, 2.0], workers=2) == 7.0  # {3, 2, 2}, {3, 2}
    assert makespan([5.0, 1.0, 1.0], workers=2) == 5.0
    assert makespan([1.0] * 4, workers=1) == 4.0
