"""Loss landscapes (implicit_reg.probes.landscape) and ``implicit-reg landscape``.

Oracles: a quadratic's closed form (1-D and 2-D slices, its top eigenvector by
numpy), filter normalization written out filter by filter, numpy's SVD for the PCA, the
per-point loop against the batched grid, and the model compared bit for bit
before and after.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from implicit_reg.cli import app
from implicit_reg.probes.landscape import (
    evaluate_points,
    hessian_directions,
    loss_landscape,
    multi_dim_mask,
    pca_directions,
    plan_blocks,
    random_directions,
)

runner = CliRunner()


@pytest.fixture(autouse=True)
def _one_thread(tmp_path, monkeypatch):
    monkeypatch.setenv("IMPLICIT_REG_CACHE", str(tmp_path / "cache"))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _quadratic(n=6, N=40, seed=0):
    """L(θ) = (1/N)‖Xθ − y‖² through Linear(n, 1, bias=False) and MSELoss (float64)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, n, generator=g, dtype=torch.float64)
    y = torch.randn(N, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(n, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, n, generator=g, dtype=torch.float64))
    return model, nn.MSELoss(), X, y


def _closed_form(model, X, y):
    """(L, g, H) of the quadratic at the model's θ, in numpy."""
    Xn, yn = X.numpy(), y.numpy()[:, 0]
    th = model.weight.detach().numpy()[0]
    N = len(Xn)
    r = Xn @ th - yn
    return float(r @ r / N), 2 * Xn.T @ r / N, 2 * Xn.T @ Xn / N


@pytest.mark.parametrize("batched", [True, False])
def test_quadratic_slices_equal_the_closed_form(batched):
    model, loss_fn, X, y = _quadratic()
    L0, g, H = _closed_form(model, X, y)

    def ell(d):  # L(θ + d) = L + gᵀd + ½ dᵀHd, exactly
        return L0 + g @ d + 0.5 * d @ H @ d

    one = loss_landscape(
        model, loss_fn, (X, y), "random", dims=1, alphas=[-2.0, -0.5, 0.0, 0.7, 3.0],
        chunk_size=7, batched=batched,
    )  # fmt: skip
    d1 = one.directions[0].numpy()
    want = [ell(a * d1) for a in one.alphas]
    np.testing.assert_allclose(one.loss, want, rtol=1e-12, atol=1e-13)

    two = loss_landscape(
        model, loss_fn, (X, y), "random", alphas=[-1.0, 0.0, 0.5], betas=[-0.3, 0.0, 2.0, 4.0],
        chunk_size=13, points_per_block=5, batched=batched, seed=4,
    )  # fmt: skip
    d1, d2 = (d.numpy() for d in two.directions)
    assert two.loss.shape == (4, 3)
    want = [[ell(a * d1 + b * d2) for a in two.alphas] for b in two.betas]
    np.testing.assert_allclose(two.loss, want, rtol=1e-12, atol=1e-13)
    assert not np.allclose(d1, d2), "the two random directions must differ"


def test_hessian_directions_of_a_quadratic_are_its_top_eigenvectors():
    model, loss_fn, X, y = _quadratic(n=5, seed=2)
    L0, g, H = _closed_form(model, X, y)
    w, V = np.linalg.eigh(H)
    land = loss_landscape(model, loss_fn, (X, y), "hessian", dims=2, points=5)
    np.testing.assert_allclose(land.eigenvalues, w[::-1][:2], rtol=1e-9)
    for i in range(2):
        v = land.directions[i].numpy()
        assert abs(abs(v @ V[:, -1 - i]) - 1) < 1e-8, "not the i-th top eigenvector"
    v1, v2 = (d.numpy() for d in land.directions)
    want = [
        [L0 + g @ (a * v1 + b * v2) + 0.5 * (w[-1] * a * a + w[-2] * b * b) for a in land.alphas]
        for b in land.betas
    ]
    np.testing.assert_allclose(land.loss, want, rtol=1e-10)
    vecs, vals = hessian_directions(model, loss_fn, (X, y), 1)
    assert len(vecs) == 1 and math.isclose(vals[0], w[-1], rel_tol=1e-9)


class _ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 3, kernel_size=2)
        self.bn = nn.BatchNorm1d(3)
        self.fc = nn.Linear(3 * 4, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def test_filter_normalization_against_a_hand_computed_case():
    torch.manual_seed(0)
    model = _ConvNet().double()
    with torch.no_grad():  # weights with known filter norms
        model.conv.weight.copy_(torch.arange(12, dtype=torch.float64).reshape(3, 2, 2) - 5)
        model.fc.weight.fill_(0.5)
        model.fc.weight[1].fill_(-2.0)
    d = random_directions(model, 1, seed=7)[0]
    # the raw Gaussian draws, in the documented order: one generator, one randn per tensor
    gen = torch.Generator().manual_seed(7)
    raw = {
        k: torch.randn(p.shape, generator=gen, dtype=p.dtype) for k, p in model.named_parameters()
    }
    got, i = {}, 0
    for k, p in model.named_parameters():
        got[k] = d[i : i + p.numel()].view(p.shape)
        i += p.numel()
    # conv: filter f = conv.weight[f] (2×2 input channels × taps); ‖θ_f‖ by hand
    theta = model.conv.weight.detach()
    for f in range(3):
        norm_theta = math.sqrt(sum(float(v) ** 2 for v in theta[f].flatten()))
        norm_raw = math.sqrt(sum(float(v) ** 2 for v in raw["conv.weight"][f].flatten()))
        expect = raw["conv.weight"][f] * (norm_theta / norm_raw)
        torch.testing.assert_close(got["conv.weight"][f], expect, rtol=1e-13, atol=0)
    assert math.isclose(float(got["conv.weight"][0].norm()), math.sqrt(25 + 16 + 9 + 4))
    # linear: one neuron = one row; rows of 12 entries 0.5 (norm √3) and −2 (norm √48)
    for row, norm_theta in ((0, math.sqrt(3)), (1, math.sqrt(48)), (2, math.sqrt(3))):
        r = raw["fc.weight"][row]
        expect = r * (norm_theta / math.sqrt(sum(float(v) ** 2 for v in r)))
        torch.testing.assert_close(got["fc.weight"][row], expect, rtol=1e-13, atol=0)
    # biases and BatchNorm's scale and shift: zero (ignore='biasbn'), or θ (ignore=None)
    for k in ("conv.bias", "bn.weight", "bn.bias", "fc.bias"):
        assert torch.count_nonzero(got[k]) == 0, k
    keep = random_directions(model, 1, seed=7, ignore=None)[0]
    torch.testing.assert_close(keep[-4:], model.fc.bias.detach())
    torch.testing.assert_close(keep[:12], got["conv.weight"].flatten())
    mask = multi_dim_mask(model)
    assert int(mask.sum()) == 12 + 48 and mask[:12].all() and not mask[12:15].any()


def _state(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        [m.training for m in model.modules()],
        torch.get_rng_state().clone(),
    )


def test_the_model_is_left_untouched():
    torch.manual_seed(1)
    model = nn.Sequential(_ConvNet(), nn.Dropout(0.3)).double()
    model.train()
    model[0].bn.eval()  # mixed modes must come back as they were
    X, y = torch.randn(24, 2, 5, dtype=torch.float64), torch.randint(0, 4, (24,))
    loss_fn = nn.CrossEntropyLoss()
    model(X).sum().backward()  # .grad set, BN statistics in place
    grads = [p.grad for p in model.parameters()]
    traj = [
        torch.cat([p.detach().reshape(-1) for p in model.parameters()]) + 0.1 * k for k in range(3)
    ]
    traj[1][0] += 0.3
    before = _state(model)
    for kind, kw in (("random", {}), ("hessian", {}), ("pca", {"trajectory": traj})):
        for mode in ("eval", "train"):
            loss_landscape(
                model, loss_fn, (X, y), kind, points=3, accuracy=True, chunk_size=10,
                mode=mode, **kw,
            )  # fmt: skip
    after = _state(model)
    for k in before[0]:
        assert torch.equal(before[0][k], after[0][k]), k
    assert all(torch.equal(a, b) for a, b in zip(before[1], after[1]))
    assert all(p.grad is g for p, g in zip(model.parameters(), grads)), ".grad objects replaced"
    assert before[2] == after[2]
    assert torch.equal(before[3], after[3]), "global RNG state changed"


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_the_batched_grid_equals_the_per_point_loop(mode):
    torch.manual_seed(2)
    model = nn.Sequential(_ConvNet(), nn.Dropout(0.2)).double()
    X = torch.randn(37, 2, 5, dtype=torch.float64)
    y = torch.randint(0, 4, (37,))
    batches = [(X[i : i + 10], y[i : i + 10]) for i in range(0, 37, 10)]  # a loader's batches
    dirs = random_directions(model, 2, seed=3)
    coords = np.random.default_rng(0).uniform(-1, 1, size=(23, 2))
    loop = evaluate_points(
        model, nn.CrossEntropyLoss(), batches, dirs, coords, accuracy=True, batched=False, mode=mode
    )
    for b in (1, 4, 23):
        got = evaluate_points(
            model, nn.CrossEntropyLoss(), batches, dirs, coords, accuracy=True,
            points_per_block=b, mode=mode,
        )  # fmt: skip
        np.testing.assert_allclose(got[0], loop[0], rtol=1e-12)
        np.testing.assert_array_equal(got[1], loop[1])
    # and against the model itself, one point at a time (eval: no dropout, BN running stats)
    if mode == "eval":
        ps = list(model.parameters())
        theta = [p.detach().clone() for p in ps]
        c = coords[5]
        off = 0
        with torch.no_grad():
            for p in ps:
                n = p.numel()
                p.add_(
                    c[0] * dirs[0][off : off + n].view(p.shape)
                    + c[1] * dirs[1][off : off + n].view(p.shape)
                )
                off += n
            model.eval()
            out = model(X)
            want = float(nn.CrossEntropyLoss()(out, y))
            acc = float((out.argmax(1) == y).double().mean())
            for p, t in zip(ps, theta):
                p.copy_(t)
        assert math.isclose(loop[0][5], want, rel_tol=1e-12)
        assert math.isclose(loop[1][5], acc, rel_tol=1e-12)


def test_pca_plane_matches_an_svd_and_recovers_a_planar_trajectory():
    rng = np.random.default_rng(0)
    dim, T = 30, 9
    center = torch.tensor(rng.normal(size=dim))
    u = np.linalg.qr(rng.normal(size=(dim, 2)))[0]  # a plane
    ts = np.linspace(0, 1, T)
    pts = [center.numpy() + (1 - t) * 3 * u[:, 0] + np.sin(3 * t) * u[:, 1] for t in ts]
    plane = pca_directions([torch.tensor(p) for p in pts], center)
    D = torch.stack(plane.directions, 1).numpy()
    np.testing.assert_allclose(D.T @ D, np.eye(2), atol=1e-12)
    # the trajectory lies in span(u): the PCA plane is that plane, all variance explained
    np.testing.assert_allclose(np.abs(np.linalg.svd(u.T @ D)[1]), [1, 1], atol=1e-10)
    np.testing.assert_allclose(plane.explained_variance_ratio.sum(), 1, atol=1e-12)
    # a noisy trajectory against numpy's SVD of the centred rows (sklearn PCA's definition:
    # components = top right singular vectors, explained_variance_ratio_ = s_i² / Σ s_j²)
    noisy = [p + rng.normal(scale=0.3, size=dim) for p in pts]
    plane = pca_directions([torch.tensor(p) for p in noisy], center)
    M = np.array(noisy) - center.numpy()
    _, s, Vt = np.linalg.svd(M - M.mean(axis=0), full_matrices=False)
    np.testing.assert_allclose(
        plane.explained_variance_ratio, s[:2] ** 2 / (s**2).sum(), rtol=1e-10
    )
    for i in range(2):
        cos = abs(plane.directions[i].numpy() @ Vt[i])
        assert abs(cos - 1) < 1e-10
    want = (np.array(noisy) - center.numpy()) @ np.stack([d.numpy() for d in plane.directions], 1)
    np.testing.assert_allclose(plane.coords, want, atol=1e-12)
    assert (plane.coords[0] <= 0).all(), "signs: the first iterate has coordinates <= 0"
    with pytest.raises(ValueError, match="at least 3 trajectory points"):
        pca_directions([center, center], center)
    with pytest.raises(ValueError, match="fewer than 2 directions"):
        pca_directions([center, center + 1, center + 2], center)


def test_plan_blocks_follows_the_memory_budget():
    # per point: 8 bytes × (1000 + 3·50·100) = 128,000 bytes
    assert (
        plan_blocks(
            n_points=100, dim=1000, act_per_row=50, rows=100, itemsize=8, memory_budget=1_280_000
        )
        == 10
    )
    assert (
        plan_blocks(n_points=100, dim=1000, act_per_row=50, rows=100, itemsize=8, memory_budget=1)
        == 1
    )
    assert (
        plan_blocks(
            n_points=7, dim=1000, act_per_row=50, rows=100, itemsize=8, memory_budget=10**12
        )
        == 7
    )


def test_bad_input_fails_with_a_clear_message():
    model, loss_fn, X, y = _quadratic()
    data = (X, y)
    cases = [
        (dict(directions="sideways"), "directions must be one of"),
        (dict(dims=3), "dims must be 1 or 2"),
        (dict(directions="pca"), "needs trajectory"),
        (dict(directions=(torch.zeros(3), torch.zeros(3))), r"shape \(6,\)"),
        (dict(directions=(torch.zeros(6),)), "dims=2 needs 2 direction"),
        (dict(alphas=[0.0, float("nan")]), "alphas must be"),
        (dict(accuracy=True), "accuracy needs class outputs"),
        (dict(ignore="bias"), "ignore must be"),
        (dict(memory_budget=0), "memory_budget"),
    ]
    for kw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            loss_landscape(model, loss_fn, data, **{"points": 3, **kw})
    with pytest.raises(ValueError, match="empty"):
        loss_landscape(model, loss_fn, (X[:0], y[:0]), points=3)


def test_table_is_tidy():
    model, loss_fn, X, y = _quadratic()
    land = loss_landscape(model, loss_fn, (X, y), alphas=[-1, 0, 1], betas=[0, 2])
    df = land.table()
    assert list(df.columns) == ["alpha", "beta", "loss"] and len(df) == 6
    row = df[(df.alpha == 1) & (df.beta == 2)]
    assert float(row.loss.iloc[0]) == land.loss[1, 2]


# ------------------------------------------------------------------ CLI
SPEC = {
    "name": "mlp",
    "input_dim": 20,
    "output_dim": 10,
    "width": 8,
    "depth": 1,
    "activation": "tanh",
    "seed": 3,
}
DATA = {"name": "teacher", "n_train": 60, "label_noise": 0.0, "seed": 1, "task": "classification"}


def _trained_checkpoint(tmp_path):
    """A tiny MLP trained by the engine (a few GD steps), checkpoint.pt written by its store."""
    from implicit_reg.engine.config import RunConfig
    from implicit_reg.engine.train import run

    cfg = RunConfig(
        model="mlp", width=8, depth=1, activation="tanh", dataset="teacher", n_train=60,
        n_test=20, data_seed=1, lr=0.5, steps=6, eval_every=6, probes=(), seed=3,
        dtype="float64", checkpoint=True,
    )  # fmt: skip
    res = run(cfg, tmp_path / "runs", raise_errors=True)
    assert res.status == "complete"
    (path,) = (tmp_path / "runs").glob("*/checkpoint.pt")
    return path


def test_cli_writes_a_tidy_csv_and_figures(tmp_path):
    from implicit_reg.engine.checkpoint import load_checkpoint
    from implicit_reg.workloads.data import load_dataset
    from implicit_reg.workloads.losses import make_loss

    path = _trained_checkpoint(tmp_path)
    out = tmp_path / "land"
    res = runner.invoke(app, ["landscape", str(path), "--points", "5", "--out", str(out)])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out / "landscape.csv")
    assert list(df.columns) == ["alpha", "beta", "loss", "accuracy"] and len(df) == 25
    for name in ("landscape_contour.png", "landscape_surface.png", "landscape.json"):
        assert (out / name).stat().st_size > 0, name
    # the centre is the trained model's own training loss and accuracy
    model, _, dspec, loss, _ = load_checkpoint(path)
    data = load_dataset(**dspec).to(dtype=torch.float64)
    X, y = data.train
    with torch.no_grad():
        out_ = model.eval()(X)
    centre = df[(df.alpha == 0) & (df.beta == 0)]
    assert math.isclose(
        float(centre.loss.iloc[0]), float(make_loss(loss, num_classes=10)(out_, y)), rel_tol=1e-8
    )
    assert math.isclose(
        float(centre.accuracy.iloc[0]), float((out_.argmax(1) == y).double().mean())
    )
    # the same numbers as the Python API
    land = loss_landscape(model, make_loss(loss, num_classes=10), (X, y), points=5, accuracy=True)
    np.testing.assert_allclose(df.loss.to_numpy(), land.loss.ravel(), rtol=1e-10)

    # 1-D along the top Hessian eigenvector, run directory as the argument
    res = runner.invoke(
        app, ["landscape", str(path.parent), "--directions", "hessian", "--dims", "1", "--points", "7",
              "--span", "0.5", "--no-figures", "--out", str(tmp_path / "h")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    df = pd.read_csv(tmp_path / "h" / "landscape.csv")
    assert list(df.columns) == ["alpha", "loss", "accuracy"] and len(df) == 7
    assert df.alpha.min() == -0.5 and not (tmp_path / "h" / "landscape_1d.png").exists()

    # PCA plane of a trajectory of checkpoints of the same model
    ck = torch.load(path, weights_only=True)
    traj = tmp_path / "traj"
    traj.mkdir()
    g = torch.Generator().manual_seed(0)
    for step in (0, 2, 4):
        sd = {
            k: v + 0.05 * (5 - step) * torch.randn(v.shape, generator=g, dtype=v.dtype)
            for k, v in ck["state_dict"].items()
        }
        torch.save({**ck, "state_dict": sd, "step": step}, traj / f"step_{step:09d}.pt")
    res = runner.invoke(
        app, ["landscape", str(path), "--directions", "pca", "--trajectory", str(traj),
              "--points", "4", "--out", str(tmp_path / "p")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    import json

    meta = json.loads((tmp_path / "p" / "landscape.json").read_text())
    assert len(meta["explained_variance_ratio"]) == 2 and len(meta["trajectory"]) == 3
    assert 0 < sum(meta["explained_variance_ratio"]) <= 1 + 1e-12
    assert (tmp_path / "p" / "landscape_contour.png").stat().st_size > 0


def test_a_line_is_drawn_with_its_accuracy(tmp_path):
    from implicit_reg.cli.landscape import plot_landscape

    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    X, y = torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 2, (20,))
    land = loss_landscape(model, nn.CrossEntropyLoss(), (X, y), dims=1, points=9, accuracy=True)
    (path,) = plot_landscape(land, tmp_path)
    assert path.name == "landscape_1d.png" and path.stat().st_size > 0


def test_cli_bad_input(tmp_path):
    res = runner.invoke(app, ["landscape", str(tmp_path / "nope.pt")])
    assert res.exit_code == 2 and "checkpoint not found" in res.output
    bad = tmp_path / "notes.pt"
    bad.write_text("not a checkpoint")
    res = runner.invoke(app, ["landscape", str(bad)])
    assert res.exit_code == 2 and "cannot read checkpoint" in res.output
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    res = runner.invoke(app, ["landscape", str(other)])
    assert res.exit_code == 2 and "not an implicit-reg checkpoint" in res.output
    res = runner.invoke(app, ["landscape", str(tmp_path)])
    assert res.exit_code == 2 and "without a checkpoint.pt" in res.output
    # a good checkpoint with a bad option, and pca without a trajectory
    model = (
        __import__("implicit_reg.workloads.models", fromlist=["build_model"])
        .build_model(**SPEC)
        .double()
    )
    good = tmp_path / "good.pt"
    torch.save(
        {
            "model_spec": SPEC,
            "dataset_spec": DATA,
            "loss": "cross_entropy",
            "state_dict": model.state_dict(),
        },
        good,
    )
    res = runner.invoke(app, ["landscape", str(good), "--directions", "diagonal"])
    assert res.exit_code == 2 and "unknown directions" in res.output
    res = runner.invoke(app, ["landscape", str(good), "--directions", "pca"])
    assert res.exit_code == 2 and "needs a trajectory" in res.output
