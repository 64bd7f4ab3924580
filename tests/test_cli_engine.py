"""The train / sweep / plot / summary commands, end to end through typer's CliRunner."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from implicit_reg.cli import app
from implicit_reg.cli.sweep import build_spec
from implicit_reg.engine.store import read_json

runner = CliRunner()

SWEEP_TOML = """
name = "tiny"
[base]
dataset = "teacher"
n_train = 30
n_test = 20
steps = 4
eval_every = 2
probes = ["lambda_max", "trace"]
[grid]
lr = [0.05, 0.2]
width = [3, 6]
"""


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest's: one torch thread


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_sweep_summary_plot_end_to_end(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(SWEEP_TOML)
    out = tmp_path / "sw"
    res = invoke("sweep", grid, "--out", out, "--no-progress")
    assert res.exit_code == 0, res.output
    assert "4 runs: 0 already done, 4 run now (4 complete, 0 diverged, 0 failed)" in res.output
    runs = sorted((out / "runs").iterdir())
    assert len(runs) == 4 and (out / "sweep.json").is_file()
    for d in runs:
        assert {p.name for p in d.iterdir()} == {
            "config.json",
            "meta.json",
            "history.csv",
            "summary.json",
        }
        assert read_json(d / "summary.json")["status"] == "complete"

    res = invoke("sweep", grid, "--out", out, "--no-progress")  # resumes: nothing to do
    assert res.exit_code == 0 and "4 already done, 0 run now" in res.output

    csv = tmp_path / "runs.csv"
    res = invoke("summary", out, "--csv", csv, "--history", tmp_path / "hist.csv")
    assert res.exit_code == 0, res.output
    table = pd.read_csv(csv)
    assert len(table) == 4 and set(zip(table.lr, table.width)) == {
        (a, b) for a in (0.05, 0.2) for b in (3, 6)
    }
    assert "Kendall rank correlation" in res.output
    assert {"lambda_max", "trace", "weight_norm"} <= set(res.output.split())
    body = res.output.split("\n\nKendall")[0].splitlines()
    assert body[0].split()[:3] == ["config_hash", "width", "lr"] and len(body) == 1 + 4
    hist = pd.read_csv(tmp_path / "hist.csv")
    assert set(hist.columns) >= {"config_hash", "lr", "width", "step", "metric", "value"}

    for kind, metric, name in [("lr", "test_error", "a.png"), ("params", "test_error", "b.svg"),
                               ("step", "train_loss", "c.pdf"), ("gap", "trace", "d.png")]:  # fmt: skip
        res = invoke("plot", out, "--kind", kind, "--metric", metric, "--out", tmp_path / name)
        assert res.exit_code == 0, res.output
        assert (tmp_path / name).stat().st_size > 1000
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    res = invoke("plot", out, "--kind", "step", "--where", "width=3", "--style", "width")
    assert res.exit_code == 0, res.output
    assert (out / "figures" / "step_test_error.png").is_file()
    res = invoke("plot", out)  # default path inside the sweep directory
    assert res.exit_code == 0 and (out / "figures" / "lr_test_error.png").is_file()


def test_sweep_from_options_only(tmp_path):
    out = tmp_path / "s"
    res = invoke(
        "sweep", "--set", "dataset=teacher", "--set", "n_train=30", "--set", "steps=30",
        "--set", "probes=", "--set", "width=16",
        "--grid", "lr=0.1,100", "--out", out, "--no-progress",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "2 runs: 0 already done, 2 run now (1 complete, 1 diverged, 0 failed)" in res.output
    spec = build_spec(None, ["steps=3"], ["width=geom:4:64:3"])
    assert spec.grid == {"width": [4, 16, 64]} and spec.base == {"steps": 3}
    res = invoke("sweep", "--grid", "lr=0.1,1", "--grid", "seed=0,1,2", "--dry-run")
    assert res.exit_code == 0 and "6 runs" in res.output


def test_train_writes_a_run_and_a_checkpoint(tmp_path):
    res = invoke(
        "train", "--dataset", "teacher", "--n-train", "30", "--width", "4", "--steps", "3",
        "--probes", "", "--checkpoint", "--set", "n_test=20", "--out", tmp_path,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    (run_dir,) = list(tmp_path.iterdir())
    assert "complete" in res.output and run_dir.name in res.output
    assert (run_dir / "checkpoint.pt").is_file() and (run_dir / "summary.json").is_file()
    # rerun from the saved config with a change
    res = invoke("train", "--config", run_dir / "config.json", "--lr", "0.3", "--out", tmp_path)
    assert res.exit_code == 0, res.output
    assert len(list(tmp_path.iterdir())) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["train", "--model", "transformer"],
            "unknown model 'transformer'; choose one of cnn, cnn1d, mlp, rf_fourier, rf_relu",
        ),
        (["train", "--lr", "-0.1"], "lr must be a finite number > 0, got -0.1"),
        (["train", "--set", "colour=red"], "unknown config field 'colour'; valid fields:"),
        (["train", "--config", "nowhere.toml"], "config file 'nowhere.toml' does not exist"),
        (["sweep", "GRID", "--no-progress"], "not valid TOML"),
        (["sweep", "--grid", "lr=0.1,fast"], "lr must be a number, got 'fast'"),
        (["sweep", "--grid", "lr=0.1", "--workers", "0"], "--workers must be >= 1"),
        (["sweep"], "nothing to sweep"),
        (["summary", "MISSING"], "does not exist"),
        (["plot", "MISSING"], "does not exist"),
        (
            ["plot", "TMP", "--kind", "pie"],
            "unknown figure kind 'pie'; choose one of lr, params, step, gap",
        ),
        (["plot", "TMP", "--out", "x.jpg"], "unknown figure format '.jpg'"),
    ],
)
def test_bad_input_is_one_line_with_exit_code_2(tmp_path, args, message):
    bad = tmp_path / "bad.toml"
    bad.write_text("[grid]\nlr = [0.1,\n")
    subs = {"GRID": bad, "MISSING": tmp_path / "missing", "TMP": tmp_path}
    res = invoke(*[subs.get(a, a) for a in args])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in res.output


@pytest.mark.parametrize("command", ["train", "sweep", "plot", "summary"])
def test_help_has_examples(command):
    res = invoke(command, "--help")
    assert (
        res.exit_code == 0 and "Example" in res.output and f"implicit-reg {command}" in res.output
    )


def test_train_takes_a_field_from_set_unless_it_is_also_an_option(tmp_path):
    runner = CliRunner()
    base = ["train", "--dataset", "teacher", "--n-train", "16", "--width", "4", "--steps", "2",
            "--set", "probes=", "--out", str(tmp_path)]  # fmt: skip
    result = runner.invoke(app, [*base, "--set", "optimizer=sam", "--set", "rho=0.05"])
    assert result.exit_code == 0, result.output
    (cfg,) = tmp_path.glob("*/config.json")
    assert '"optimizer": "sam"' in cfg.read_text()
    result = runner.invoke(app, [*base, "--optimizer", "gd", "--set", "optimizer=sam"])
    assert result.exit_code == 2
    assert "--optimizer given both as an option and with --set" in result.stderr
