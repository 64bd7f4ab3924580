"""Tidy tables, exports, the Kendall/Jiang ranking and the figures."""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from scipy.stats import kendalltau

from implicit_reg.engine.sweep import SweepSpec, run_sweep
from implicit_reg.report.plots import (
    is_geometric,
    label,
    plot_measure_vs_gap,
    plot_sweep,
    plot_vs_lr,
    plot_vs_params,
    plot_vs_step,
    save_figure,
)
from implicit_reg.report.results import (
    export_table,
    kendall_ranking,
    load_histories,
    load_summaries,
    summary_table,
    varying_fields,
)


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("sweep")
    spec = SweepSpec(
        base={
            "dataset": "teacher",
            "n_train": 30,
            "n_test": 20,
            "steps": 4,
            "eval_every": 2,
            "probes": ["lambda_max"],
            "probe_every": 2,
        },  # fmt: skip
        grid={"lr": [0.1, 100.0], "width": [3, 16]},
    )
    run_sweep(spec, out, progress=False)
    torch.set_num_threads(torch_threads)
    return out


@pytest.fixture
def frame() -> pd.DataFrame:
    """A synthetic sweep: 3 lr × 3 width × 2 seeds, with known final metrics."""
    rows = []
    for lr, width, seed in itertools.product([0.01, 0.1, 1.0], [4, 16, 64], [0, 1]):
        n_params = 41 * width + width * width + 11 * width + 10
        rows.append({
            "config_hash": f"{lr}-{width}-{seed}", "status": "complete", "lr": lr,
            "width": width, "seed": seed, "n_params": n_params, "n_train": 100,
            "num_classes": 10, "train_error": 0.0, "test_error": 0.5 - 0.1 * np.log10(width) + 0.01 * seed,
            "lambda_max": 2 / lr, "weight_norm": width**0.5 + seed,
        })  # fmt: skip
    df = pd.DataFrame(rows)
    df["gen_gap"] = df["test_error"] - df["train_error"]
    return df


# -------------------------------------------------------------------- tables
def test_summaries_have_one_row_per_run_with_config_and_final_metrics(sweep_dir):
    df = load_summaries(sweep_dir)
    assert len(df) == 4 and df["config_hash"].is_unique
    assert set(df["status"]) == {"complete", "diverged"}
    assert {"lr", "width", "seed", "test_error", "gen_gap", "n_params", "nk"} <= set(df.columns)
    ok = df[df.status == "complete"]
    np.testing.assert_allclose(ok["gen_gap"], ok["test_error"] - ok["train_error"])
    assert (df["nk"] == 300).all()  # n_train × classes
    assert varying_fields(df) == ["width", "lr"]
    table = summary_table(df)
    assert list(table.columns[:3]) == ["config_hash", "width", "lr"] and len(table) == 4


def test_histories_are_long_form_with_the_swept_fields(sweep_dir):
    h = load_histories(sweep_dir)
    assert list(h.columns) == [
        "config_hash",
        "width",
        "lr",
        "seed",
        "status",
        "step",
        "metric",
        "value",
    ]
    complete = h[h.status == "complete"]
    assert set(complete.groupby("config_hash").size()) == {
        3 * 8
    }  # 3 steps × 7 base metrics + λ_max
    assert not h.duplicated(["config_hash", "step", "metric"]).any()


def test_runs_written_before_a_field_existed_load_with_its_default(sweep_dir, tmp_path):
    import json
    import shutil

    old = tmp_path / "old"
    shutil.copytree(sweep_dir, old)
    for cfg in (old / "runs").glob("*/config.json"):
        data = json.loads(cfg.read_text())
        del data["probe_options"], data["checkpoint"]  # as if written by an older version
        cfg.write_text(json.dumps(data))
    df = load_summaries(old)
    assert len(df) == 4 and df["probe_options"].isna().all() and (~df["checkpoint"]).all()


def test_manifest_limits_the_tables_to_the_sweep(sweep_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(sweep_dir, copy)
    shutil.copytree(next((copy / "runs").iterdir()), copy / "runs" / "0123456789ab")
    assert len(load_summaries(copy)) == 4
    assert len(load_summaries(copy, all_runs=True)) == 5
    with pytest.raises(ValueError, match="does not exist"):
        load_summaries(tmp_path / "missing")


def test_export_csv_and_parquet_round_trip(frame, tmp_path, monkeypatch):
    back = pd.read_csv(export_table(frame, tmp_path / "t.csv"))
    pd.testing.assert_frame_equal(back, frame, check_dtype=False)
    pytest.importorskip("pyarrow")
    back = pd.read_parquet(export_table(frame, tmp_path / "t.parquet"))
    pd.testing.assert_frame_equal(back, frame)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if not installed
    with pytest.raises(ValueError, match=r"pip install 'implicit-reg\[parquet\]'"):
        export_table(frame, tmp_path / "u.parquet")
    with pytest.raises(ValueError, match="use .csv or .parquet"):
        export_table(frame, tmp_path / "t.xlsx")


# ------------------------------------------------------------------- ranking
def test_kendall_tau_matches_scipy_and_ranks_measures(frame):
    rank = kendall_ranking(frame)
    assert list(rank["measure"]) == ["lambda_max", "weight_norm"]  # the measures present
    for _, row in rank.iterrows():
        expected = kendalltau(frame[row["measure"]], frame["gen_gap"])
        assert row["tau"] == pytest.approx(expected.statistic)
        assert row["p_value"] == pytest.approx(expected.pvalue)
        assert row["n_runs"] == 18


def test_granulated_kendall_averages_within_axis_groups():
    """Jiang et al.'s ψ_i: τ within groups where only axis i varies. Construct a measure
    that rises with the gap along width (ψ_width = 1) and falls along lr (ψ_lr = −1)."""
    rows = []
    for lr, width in itertools.product([0.1, 0.2, 0.4], [8, 16, 32]):
        gap = 0.1 * np.log2(width / 8) + 0.05 * np.log2(lr / 0.1)
        measure = np.log2(width) - 10 * np.log2(lr)
        rows.append(
            {
                "lr": lr,
                "width": width,
                "seed": 0,
                "status": "complete",
                "gen_gap": gap,
                "m": measure,
            }
        )
    df = pd.DataFrame(rows)
    rank = kendall_ranking(df, ["m"]).iloc[0]
    assert rank["psi_width"] == pytest.approx(1.0)
    assert rank["psi_lr"] == pytest.approx(-1.0)
    assert rank["psi"] == pytest.approx(0.0)
    assert rank["tau"] == pytest.approx(kendalltau(df["m"], df["gen_gap"]).statistic)
    with pytest.raises(ValueError, match="unknown measure"):
        kendall_ranking(df, ["sharpness"])


def test_ranking_ignores_diverged_runs(sweep_dir):
    df = load_summaries(sweep_dir)
    rank = kendall_ranking(df)
    assert (rank["n_runs"] <= (df.status == "complete").sum()).all()


# ------------------------------------------------------------------- figures
def test_is_geometric():
    assert is_geometric([0.01, 0.1, 1.0]) and is_geometric([4, 16, 64, 256])
    assert not is_geometric([1, 2, 3, 4]) and not is_geometric([0, 1, 10, 100])


def test_metric_vs_lr_has_labelled_log_axes_and_a_line_per_width(frame):
    fig = plot_vs_lr(frame, "test_error", hue="width")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "learning rate h" == label("lr")
    assert ax.get_ylabel() == "test error (fraction misclassified)"
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["4", "16", "64"]
    assert ax.get_legend().get_title().get_text() == "width (hidden units)"
    # mean over seeds: seed 1 adds 0.01 → the line sits 0.005 above seed 0
    y = ax.get_lines()[0].get_ydata()
    np.testing.assert_allclose(y, 0.5 - 0.1 * np.log10(4) + 0.005)


def test_metric_vs_params_marks_the_interpolation_threshold(frame):
    fig = plot_vs_params(frame, "test_error")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "trainable parameters (count)" and ax.get_xscale() == "log"
    vlines = {
        ln.get_xdata()[0]: ln.get_linestyle()
        for ln in ax.get_lines()
        if len(set(ln.get_xdata())) == 1
    }
    assert vlines[1000] == "--"  # n·k = 100 × 10
    assert vlines[100] == ":"  # n
    assert "n·k = 1,000" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_lambda_max_vs_step_draws_two_over_h(sweep_dir):
    h = load_histories(sweep_dir)
    fig = plot_vs_step(h, "lambda_max", hue="lr")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "step (optimizer iterations)"
    assert ax.get_ylabel() == "λ_max (top Hessian eigenvalue)"
    flat = sorted(
        ln.get_ydata()[0]
        for ln in ax.get_lines()
        if len(set(ln.get_ydata())) == 1 and ln.get_linestyle() == "--"
    )
    assert flat == pytest.approx([2 / 100.0, 2 / 0.1])
    with pytest.raises(ValueError, match="not in the history"):
        plot_vs_step(h, "sharpness")


def test_measure_vs_gap_scatter(frame, tmp_path):
    fig = plot_measure_vs_gap(frame, "lambda_max", hue="lr")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "λ_max (top Hessian eigenvalue)"
    assert ax.get_ylabel() == "generalization gap (test − train error, fraction)"
    assert len(ax.collections[0].get_offsets()) == len(frame)
    for suffix in (".png", ".svg", ".pdf"):
        assert save_figure(fig, tmp_path / f"f{suffix}").stat().st_size > 1000
    with pytest.raises(ValueError, match="use one of .png, .svg, .pdf"):
        save_figure(fig, tmp_path / "f.jpg")
    with pytest.raises(ValueError, match="column.*missing"):
        plot_measure_vs_gap(frame, "trace")


def test_plot_sweep_loads_filters_and_draws(sweep_dir):
    fig = plot_sweep(sweep_dir, "lr", "test_error")
    assert fig.axes[0].get_ylabel() == label("test_error")
    ax = plot_sweep(sweep_dir, "step", "train_loss", where={"width": 16}, style="width").axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "learning rate h",
        "0.1",
        "100",
        "width (hidden units)",
        "16",
    ]
    with pytest.raises(ValueError, match="no runs with width = 7; values in the sweep: 16, 3"):
        plot_sweep(sweep_dir, "lr", where={"width": 7})
    with pytest.raises(
        ValueError, match="unknown figure kind 'pie'; choose one of lr, params, step, gap"
    ):
        plot_sweep(sweep_dir, "pie")
