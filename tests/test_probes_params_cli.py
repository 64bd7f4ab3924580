"""``implicit-reg probe --params``: probes of a chosen set of parameters, through CliRunner."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from implicit_reg.cli import app
from implicit_reg.engine.train import make_loss
from implicit_reg.probes import run_probes
from implicit_reg.workloads.data import load_dataset
from implicit_reg.workloads.models import build_model

runner = CliRunner()
ARGS = [
    "probe",
    "--model",
    "mlp",
    "--width",
    "8",
    "--depth",
    "2",
    "--dataset",
    "teacher",
    "--n-train",
    "60",
    "--seed",
    "1",
    "--probes",
    "lambda_max,trace",
    "--set",
    "trace_hvps=9",
]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IMPLICIT_REG_CACHE", str(tmp_path / "cache"))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_params_glob_measures_that_layer_only(tmp_path):
    data = load_dataset("teacher", n_train=60, seed=1).to(dtype=torch.float64)
    model = build_model(
        "mlp", input_dim=data.input_dim, output_dim=data.output_dim, width=8, depth=2, seed=1
    ).double()
    first = next(iter(dict(model.named_parameters())))  # e.g. "layers.0.weight" or "net.0.weight"
    glob = first.rsplit(".", 1)[0] + ".*"
    out = tmp_path / "o.json"
    res = runner.invoke(app, [*ARGS, "--params", glob, "--json", str(out)])
    assert res.exit_code == 0, res.output
    got = json.loads(out.read_text())
    loss_fn = make_loss("cross_entropy", num_classes=data.num_classes)
    want = run_probes(
        ["lambda_max", "trace"], model, loss_fn, data.train, seed=1, trace_hvps=9, params=[glob]
    )
    whole = run_probes(["lambda_max"], model, loss_fn, data.train, seed=1)
    assert got["probes"] == pytest.approx(want, rel=1e-10)
    assert got["options"]["params"] == [glob]
    assert got["probes"]["lambda_max"] < whole["lambda_max"]  # a principal submatrix, not all of H


def test_params_matching_nothing_is_one_line_and_exit_code_2():
    res = runner.invoke(app, [*ARGS, "--params", "no_such_layer.*"])
    assert res.exit_code == 2, res.output
    err = res.stderr if hasattr(res, "stderr") else res.output
    assert "matches no trainable parameter" in err and "Traceback" not in res.output
    assert len(err.strip().splitlines()) == 1
