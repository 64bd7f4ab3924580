"""The ``implicit-reg`` entry point: --version, --help and the demo, through CliRunner."""

from __future__ import annotations

import math
import re

import pytest
from typer.testing import CliRunner

from implicit_reg import __version__
from implicit_reg.cli import app
from implicit_reg.experiments.demo import optimizer_demo

runner = CliRunner()


def test_version_and_help():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"implicit-reg {__version__}"
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "demo" in result.stdout
    result = runner.invoke(app, ["demo", "--help"])
    assert result.exit_code == 0 and "--target-loss" in result.stdout


def test_demo_prints_one_row_per_run_and_the_comparison():
    result = runner.invoke(app, ["demo", "--steps", "40", "--target-loss", "0.6"])
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.stdout.splitlines()]
    rows = [r for r in rows if r and r[0] in ("GD", "EGR")]
    assert [r[0] for r in rows] == ["GD", "EGR", "EGR"]
    assert [float(r[1]) for r in rows] == [0.0, 0.125, 0.3]  # μ = 0, h/4, --coeff
    assert all("reached the target loss" in line for line in result.stdout.splitlines()[2:5])
    assert re.search(r"EGR\(mu=0\.3\) vs GD at equal loss: \|grad L\|\^2 [+-]\d", result.stdout)


def test_demo_reports_a_diverged_run_instead_of_nan():
    result = runner.invoke(app, ["demo", "--lr", "1", "--coeff", "3", "--steps", "20"])
    assert result.exit_code == 0, result.output
    assert "nan" not in result.stdout.lower()
    last = result.stdout.splitlines()[4]
    assert last.split()[:2] == ["EGR", "3"] and re.search(r"diverged at step \d+$", last)
    assert "EGR(mu=3)" not in result.stdout  # no comparison for a diverged run


def test_demo_bad_input_is_one_line_and_exit_code_2():
    result = runner.invoke(app, ["demo", "--lr", "-1"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --lr must be > 0 (got -1.0)"
    assert "Traceback" not in result.output


def test_default_demo_settings_show_smaller_gradient_norm_at_equal_loss():
    """What ``make demo`` claims, at its default settings (about 1,300 small steps)."""
    gd, egr_igr, egr = optimizer_demo()
    assert all(r.reached_target and not r.diverged for r in (gd, egr_igr, egr))
    assert max(r.loss for r in (gd, egr_igr, egr)) < 0.02
    assert math.isclose(gd.loss, egr.loss, rel_tol=0.02)  # equal loss ...
    assert egr.grad_norm_sq < egr_igr.grad_norm_sq < gd.grad_norm_sq  # ... smaller ‖∇L‖²


def test_demo_function_rejects_bad_settings():
    with pytest.raises(ValueError, match="target_loss must be a finite number > 0, got 0"):
        optimizer_demo(target_loss=0)
    with pytest.raises(ValueError, match="max_loss must be > target_loss"):
        optimizer_demo(max_loss=0.01)
