"""Specs that measure a table instead of planning engine runs (``Spec.measure``), and the
analyses and claims of the experiments converted to them, on synthetic tables."""

from __future__ import annotations

import dataclasses

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
