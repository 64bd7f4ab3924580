"""``implicit-reg reproduce``: the costs its help states are the committed reports' own
numbers, and the ETA printed before a run follows from them."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from implicit_reg.cli import app
from implicit_reg.cli.reproduce import MEASURED, describe_cost, estimate, eta_line
from implicit_reg.experiments import available_experiments

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


@pytest.mark.parametrize(
    ("scale", "name"), [(s, n) for s, table in MEASURED.items() for n in table]
)
def test_every_stated_cost_is_the_number_its_committed_source_states(scale, name):
    cost = MEASURED[scale][name]
    assert name in available_experiments()
    text = (RESULTS / cost.source).read_text()
    assert cost.cite in text, f"{cost.source} no longer says {cost.cite!r}"
    digits = float(re.sub(r"[^0-9.]", "", cost.cite.split("|")[-2] if "|" in cost.cite
                          else re.search(r"[0-9][0-9,.]*", cost.cite).group()).rstrip("."))  # fmt: skip
    assert cost.seconds == pytest.approx(digits)
    assert cost.kind in ("wall", "train")


def test_help_states_measured_costs_not_a_blanket_promise():
    out = CliRunner().invoke(app, ["reproduce", "--help"]).output
    assert "10 min on 2 cores" not in out
    flat = re.sub(r"-\s+", "-", " ".join(out.split()))  # rich wraps lines after a hyphen
    assert "double-descent-width: 10 min wall" in flat
    assert "label-noise-dose: 1.8 h of one thread" in flat
    assert "igr-order: 41 s wall" in flat
    for name in available_experiments():
        assert f"{name}: {describe_cost(name, 'small')}" in flat


def test_eta_adds_wall_times_and_shares_training_time_over_the_workers():
    small = MEASURED["small"]
    names = ["igr-order", "label-noise-dose"]
    assert estimate(names, "small", 2) == pytest.approx(41.1 + 6507 / 2)
    assert estimate(names, "small", 1) == pytest.approx(41.1 + 6507)
    assert estimate(["igr-order", "no-such-cost"], "small", 2) is None
    now = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
    line = eta_line(["igr-order"], "small", 2, now=now)
    assert "ETA 12:00 UTC" in line and "41 s" in line  # 41.1 s later: still 12:00
    line = eta_line(["label-noise-dose"], "small", 2, now=now)
    assert "ETA 12:54 UTC" in line and "54 min" in line
    assert "no ETA" in eta_line(["igr-order"], "full", 2)  # not measured at full
    assert "ETA" in eta_line(["double-descent-width"], "full", 2, now=now)
    assert small["emc-across-n"].wall(4) == pytest.approx(4709 / 4)
    assert small["double-descent-width"].wall(4) == pytest.approx(630)  # measured end to end


def test_a_run_prints_its_estimate_before_it_starts(tmp_path, monkeypatch):
    import implicit_reg.cli.reproduce as cli

    seen = []
    monkeypatch.setattr(cli, "run_experiment", lambda n, s, t: seen.append((n, s)) or _Done())
    out = CliRunner().invoke(app, ["reproduce", "igr-order", "--out", str(tmp_path)]).output
    first = out.splitlines()[0]
    assert first.startswith("igr-order: running at scale small") and "ETA" in first
    assert seen == [("igr-order", "small")]


class _Done:
    path = "report.md"
    wall_time_s = 0.0
