"""``implicit-reg probe`` through typer's CliRunner, in a tmp_path."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from implicit_reg.cli import app
from implicit_reg.engine.train import make_loss
from implicit_reg.probes import HessianOperator, lanczos, run_probes
from implicit_reg.workloads.data import load_dataset
from implicit_reg.workloads.models import build_model

runner = CliRunner()
DATA = {"name": "teacher", "n_train": 60, "label_noise": 0.0, "seed": 1, "task": "classification"}
SPEC = {
    "name": "mlp",
    "input_dim": 20,
    "output_dim": 10,
    "width": 8,
    "depth": 1,
    "activation": "tanh",
    "seed": 3,
}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IMPLICIT_REG_CACHE", str(tmp_path / "cache"))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_probe_checkpoint_writes_json_matching_the_python_api(tmp_path):
    model = build_model(**SPEC).double()
    first = next(iter(model.parameters()))  # trained away from the init by a known shift
    with torch.no_grad():
        first.add_(0.25)
    shift = 0.25 * math.sqrt(first.numel())
    path = tmp_path / "checkpoint.pt"
    torch.save(
        {
            "model_spec": SPEC,
            "dataset_spec": DATA,
            "loss": "cross_entropy",
            "state_dict": model.state_dict(),
        },
        path,
    )
    out = tmp_path / "probes.json"
    res = runner.invoke(
        app,
        [
            "probe",
            str(path),
            "--probes",
            "lambda_max,trace,dist_from_init,loss",
            "--set",
            "trace_hvps=12",
            "--json",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "lambda_max" in res.output
    got = json.loads(out.read_text())
    assert got["dtype"] == "float64" and got["options"] == {"trace_hvps": 12}
    # independent computation on the same model and data
    data = load_dataset(**DATA).to(dtype=torch.float64)
    loss_fn = make_loss("cross_entropy", num_classes=data.num_classes)
    lam = float(lanczos(HessianOperator(model, loss_fn, data.train), 1).eigenvalues[0])
    assert math.isclose(got["probes"]["lambda_max"], lam, rel_tol=1e-8)
    assert math.isclose(got["probes"]["dist_from_init"], shift, rel_tol=1e-12)
    assert math.isclose(
        got["probes"]["loss"], float(loss_fn(model(data.x_train), data.y_train)), rel_tol=1e-12
    )


def test_probe_built_model_matches_run_probes(tmp_path):
    res = runner.invoke(
        app,
        [
            "probe",
            "--model",
            "mlp",
            "--width",
            "8",
            "--depth",
            "1",
            "--dataset",
            "teacher",
            "--n-train",
            "60",
            "--seed",
            "1",
            "--probes",
            "grad_norm_sq,weight_norm",
            "--json",
            str(tmp_path / "o.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "o.json").read_text())["probes"]
    data = load_dataset("teacher", n_train=60, seed=1).to(dtype=torch.float64)
    model = build_model(
        "mlp", input_dim=data.input_dim, output_dim=data.output_dim, width=8, depth=1, seed=1
    ).double()
    ref = run_probes(
        ["grad_norm_sq", "weight_norm"],
        model,
        make_loss("cross_entropy", num_classes=data.num_classes),
        data.train,
        seed=1,
    )
    assert got == pytest.approx(ref, rel=1e-12)


# a tiny teacher model the bad-input cases below build on
TINY_PROBE = ["probe", "--dataset", "teacher", "--n-train", "20", "--width", "4"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["probe", "missing/checkpoint.pt"], "checkpoint not found"),
        (["probe", "--model", "transformer", "--dataset", "teacher"], "unknown model"),
        (["probe", "--dataset", "imagenet"], "unknown dataset"),
        (
            [*TINY_PROBE, "--probes", "sharpness"],
            "unknown probe name",
        ),
        (
            [*TINY_PROBE, "--set", "trace_hvps"],
            "KEY=VALUE",
        ),
        (
            [*TINY_PROBE, "--probes", "loss", "--json", "no/such/dir/out.json"],
            "does not exist",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args, message, tmp_path):
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    err = res.stderr if hasattr(res, "stderr") else res.output
    assert message in err
    assert "Traceback" not in res.output
    assert len(err.strip().splitlines()) == 1


def test_not_a_checkpoint_file(tmp_path):
    bad = tmp_path / "notes.pt"
    bad.write_text("hello")
    res = runner.invoke(app, ["probe", str(bad)])
    assert res.exit_code == 2
    torch.save({"weights": torch.ones(2)}, tmp_path / "other.pt")
    res = runner.invoke(app, ["probe", str(tmp_path / "other.pt")])
    assert res.exit_code == 2 and "not an implicit-reg checkpoint" in res.output
