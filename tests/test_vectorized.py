"""Vectorized ensembles against the package's serial optimizers, member by member.

Oracle: each member trained on its own by ``implicit_reg.core.optim.GD``, ``SGD``
or ``EGR`` from the same initialization (same seed), on the same targets and
in the same minibatch order. Over 100 steps the per-member losses, gradient
norms and final parameters agree to 1e-10 (relative) in float64 and 1e-5 in
float32.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from implicit_reg.core.modified_gradient import flat_norm
from implicit_reg.core.optim import EGR, GD, SGD
from implicit_reg.ensemble.vectorized import (
    VectorizedEnsemble,
    ensemble_gradient,
    ensemble_loss_fns,
    ensemble_modified_gradient_exact,
    ensemble_modified_gradient_fd,
    minibatch_indices,
    stack_models,
)

STEPS = 100


def train_ensemble(models, loss_fn, x, y, *, steps: int, **kwargs) -> SimpleNamespace:
    """The test's harness: ``steps`` steps of a VectorizedEnsemble (or until every member
    diverged); per member its rows ``{"step", "loss", "grad_norm_sq"}``, divergence step
    and last parameters. (The package trains ensembles through the engine's one loop.)"""
    ens = VectorizedEnsemble(models, loss_fn, x, y, **kwargs)
    history = [[] for _ in range(ens.size)]
    for t in range(steps):
        if not ens.live:
            break
        for m, row in ens.step().items():
            history[m].append({"step": t, **row})
    params = [ens.member_params(m) for m in range(ens.size)]
    return SimpleNamespace(history=history, diverged_at=list(ens.diverged_at), params=params)


TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
# A forward difference divides gradient differences by r, so it magnifies a
# last-bit difference between two gradient computations (batched vs single
# matmuls) by 1/r: at the default r = √ε two correct implementations agree only
# to about √ε per step. The 100-step comparison therefore uses a radius at
# which FD is well conditioned; test_fd_step_matches_serial_formula checks the
# default radius with bitwise-identical gradients.
FD_RADIUS = {torch.float64: 1e-5, torch.float32: 1e-2}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest's: one torch thread


def mlp(seed: int, dtype: torch.dtype, act=nn.Tanh, d_in: int = 5, width: int = 8, d_out: int = 3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, width), act(), nn.Linear(width, d_out)).to(dtype)


def classification(n: int, m: int, dtype: torch.dtype, seed: int = 0):
    """Inputs, clean labels and m label-noise draws (30% of labels resampled each)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=gen, dtype=dtype)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    ys = y.repeat(m, 1)
    flip = torch.rand(m, n, generator=gen) < 0.3
    ys[flip] = torch.randint(0, 3, (int(flip.sum()),), generator=gen)
    return x, y, ys


def serial_run(
    model, loss_fn, x, y, *, optimizer, lr, steps=STEPS, batch_size=None, seed=None, **opt
):
    """The reference: one member, the package's own optimizer, plain loop."""
    params = list(model.parameters())
    if optimizer == "gd":
        opt_ = GD(params, lr=lr)
    elif optimizer == "sgd":
        opt_ = SGD(params, lr=lr, **opt)
    else:
        opt_ = EGR(params, lr=lr, **opt)
    order = (
        None
        if batch_size is None
        else minibatch_indices(len(x), batch_size, torch.Generator().manual_seed(seed))
    )
    rows = []
    for t in range(steps):
        if order is None:
            xb, yb = x, y
        else:
            idx = next(order)
            xb, yb = x[idx], y[idx]
        if optimizer == "egr":
            loss = opt_.step(lambda xb=xb, yb=yb: loss_fn(model(xb), yb))
        else:

            def closure(xb=xb, yb=yb):
                opt_.zero_grad()
                loss = loss_fn(model(xb), yb)
                loss.backward()
                return loss

            loss = opt_.step(closure)
        gsq = float(flat_norm([p.grad for p in params]) ** 2)
        rows.append({"step": t, "loss": float(loss.detach()), "grad_norm_sq": gsq})
        if not math.isfinite(float(loss.detach())):
            break
    return rows


def assert_close_rows(vec_rows, ser_rows, tol):
    assert len(vec_rows) == len(ser_rows)
    for a, b in zip(vec_rows, ser_rows):
        assert a["step"] == b["step"]
        for key in ("loss", "grad_norm_sq"):
            assert a[key] == pytest.approx(b[key], rel=tol, abs=0.0), (key, a, b)


def assert_close_params(vec_params, model, tol):
    for name, p in model.named_parameters():
        q = vec_params[name]
        err = float((q - p.detach()).norm() / p.detach().norm())
        assert err <= tol, (name, err)


CASES = [
    pytest.param("gd", {}, None, id="gd"),
    pytest.param("sgd", {"momentum": 0.9, "weight_decay": 1e-3}, 8, id="sgd-momentum"),
    pytest.param("sgd", {"momentum": 0.5, "nesterov": True}, 8, id="sgd-nesterov"),
    pytest.param("egr", {"method": "exact"}, None, id="egr-exact"),
    pytest.param("egr", {"method": "finite_difference", "fd_radius": "wide"}, None, id="egr-fd"),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("optimizer, opt, batch_size", CASES)
def test_vectorized_matches_serial(optimizer, opt, batch_size, dtype):
    m, n = 3, 36
    x, _, ys = classification(n, m, dtype)
    # momentum 0.9 multiplies the effective step by 10: keep it where the serial run
    # itself is not chaotic (a 1e-7 change of the initialization moves it < 2e-6)
    lrs = [0.02, 0.05, 0.1] if opt.get("momentum") == 0.9 else [0.05, 0.2, 0.5]
    if opt.get("fd_radius") == "wide":
        opt = {**opt, "fd_radius": FD_RADIUS[dtype]}
    seeds = [11, 12, 13]
    loss_fn = nn.CrossEntropyLoss()
    coeffs = [None, 0.1, 0.0] if optimizer == "egr" else None
    kwargs = dict(opt)
    egr_method = kwargs.pop("method", "exact")
    fd_radius = kwargs.pop("fd_radius", None)
    result = train_ensemble(
        [mlp(s, dtype) for s in seeds],
        loss_fn,
        x,
        ys,
        steps=STEPS,
        optimizer=optimizer,
        lr=lrs,
        y_per_member=True,
        batch_size=batch_size,
        seeds=seeds,
        **(
            {"coeff": coeffs, "egr_method": egr_method, "fd_radius": fd_radius}
            if optimizer == "egr"
            else kwargs
        ),
    )
    for i, (lr, seed) in enumerate(zip(lrs, seeds)):
        model = mlp(seed, dtype)
        extra = dict(opt)
        if optimizer == "egr":
            extra["coeff"] = coeffs[i]
        rows = serial_run(
            model,
            loss_fn,
            x,
            ys[i],
            optimizer=optimizer,
            lr=lr,
            batch_size=batch_size,
            seed=seed,
            **extra,
        )
        assert len(rows) == STEPS
        assert result.diverged_at[i] is None
        assert_close_rows(result.history[i], rows, TOL[dtype])
        assert_close_params(result.params[i], model, TOL[dtype])


def regression(n: int, dtype: torch.dtype, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=gen, dtype=dtype)
    y = torch.sin(x[:, :2]) + 0.1 * torch.randn(n, 2, generator=gen, dtype=dtype)
    return x, y


@pytest.mark.parametrize("optimizer", ["gd", "egr"])
def test_diverging_member_does_not_touch_the_others(optimizer):
    dtype = torch.float64
    x, y = regression(24, dtype)
    loss_fn = nn.MSELoss()
    seeds, lrs = [1, 2, 3, 4], [0.05, 0.1, 1e4, 0.2]
    kwargs = {"optimizer": optimizer, "steps": 60}
    with_d = train_ensemble(
        [mlp(s, dtype, d_out=2) for s in seeds], loss_fn, x, y, lr=lrs, **kwargs
    )
    keep = [0, 1, 3]
    without = train_ensemble(
        [mlp(seeds[i], dtype, d_out=2) for i in keep],
        loss_fn,
        x,
        y,
        lr=[lrs[i] for i in keep],
        **kwargs,
    )
    # the huge step diverges, at the same step as its serial run, frozen there
    ref = mlp(seeds[2], dtype, d_out=2)
    rows = serial_run(ref, loss_fn, x, y, optimizer=optimizer, lr=lrs[2], steps=60)
    assert with_d.diverged_at[2] is not None
    assert with_d.diverged_at[2] == len(rows) - 1 == with_d.history[2][-1]["step"]
    assert not math.isfinite(with_d.history[2][-1]["loss"])
    assert_close_rows(with_d.history[2][:-1], rows[:-1], TOL[dtype])
    assert all(torch.isfinite(p).all() for p in with_d.params[2].values())
    # the others: bitwise what they are in an ensemble without it
    for j, i in enumerate(keep):
        assert with_d.diverged_at[i] is None and len(with_d.history[i]) == 60
        assert with_d.history[i] == without.history[j]
        for name, p in with_d.params[i].items():
            assert torch.equal(p, without.params[j][name])


def test_frozen_member_keeps_its_last_finite_iterate():
    dtype = torch.float64
    x, y = regression(24, dtype)
    ens = VectorizedEnsemble(
        [mlp(s, dtype, d_out=2) for s in (1, 2)], nn.MSELoss(), x, y, lr=[0.1, 1e4]
    )
    before = None
    while ens.diverged_at[1] is None:
        before = ens.member_params(1)
        ens.step()
    after = ens.member_params(1)
    assert ens.live == [0]
    for k in before:
        assert torch.equal(before[k], after[k])  # θ_t of the step whose loss was not finite
    ens.step()  # the survivor goes on
    assert ens.steps_done == ens.diverged_at[1] + 2


def _member_grad_fn(model, loss_fn, x, y):
    """θ ↦ (L(θ), ∇L(θ)) of one model, computed on its own (the serial gradient)."""
    names = [k for k, _ in model.named_parameters()]

    def grad_at(params):
        ps = tuple(p.detach().requires_grad_(True) for p in params)
        with torch.enable_grad():
            loss = loss_fn(torch.func.functional_call(model, dict(zip(names, ps)), (x,)), y)
            return loss.detach(), torch.autograd.grad(loss, ps)

    return grad_at


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_fd_step_matches_serial_formula(dtype):
    """At the default radius, fed the same gradients, each member's FD step is
    modified_gradient_fd's: ε_m = r/‖μ_m g_m‖ per member, Hv = 0 where μ_m = 0."""
    from implicit_reg.core.modified_gradient import default_fd_radius, modified_gradient_fd

    x, _, ys = classification(20, 3, dtype)
    models = [mlp(s, dtype) for s in (1, 2, 3)]
    arch, params = stack_models(models)
    member = [_member_grad_fn(m, nn.CrossEntropyLoss(), x, ys[i]) for i, m in enumerate(models)]
    coeffs = [0.05, 0.3, 0.0]

    def grad_at(stacked):
        out = [member[i](tuple(p[i] for p in stacked)) for i in range(3)]
        return torch.stack([o[0] for o in out]), tuple(
            torch.stack(gs) for gs in zip(*[o[1] for o in out])
        )

    r = default_fd_radius(dtype)
    _, g, g_mod = ensemble_modified_gradient_fd(
        grad_at, params, torch.tensor(coeffs, dtype=dtype), radius=r
    )
    for i in range(3):
        own = tuple(p[i] for p in params)
        g_ref, g_mod_ref = modified_gradient_fd(
            lambda p, i=i: member[i](p)[1], own, coeffs[i], radius=r
        )
        for a, b in zip(g, g_ref):
            assert torch.equal(a[i], b)
        for a, b in zip(g_mod, g_mod_ref):
            torch.testing.assert_close(a[i], b, rtol=TOL[dtype], atol=0.0)
    for a, b in zip(g_mod, g):  # μ = 0: the plain gradient, exactly
        assert torch.equal(a[2], b[2])


@pytest.mark.parametrize("method", ["double_backward", "vjp", "jvp"])
@pytest.mark.parametrize("chunk_size", [None, 7])
def test_exact_modified_gradient_against_explicit_hessian(method, chunk_size):
    """g_m + 2μ_m H_m g_m with H_m from torch.func.hessian, per member, float64."""
    dtype = torch.float64
    x, _, ys = classification(20, 3, dtype)
    loss_fn = nn.CrossEntropyLoss()
    models = [mlp(s, dtype, width=4) for s in (1, 2, 3)]
    arch, params = stack_models(models)
    coeffs = torch.tensor([0.05, 0.3, 0.0], dtype=dtype)
    fns = ensemble_loss_fns(arch, loss_fn, x, ys, chunk_size=chunk_size, y_batched=True)
    losses, g, g_mod = ensemble_modified_gradient_exact(fns, params, coeffs, method=method)
    for i, model in enumerate(models):
        names = [k for k, _ in model.named_parameters()]
        shapes = [p.shape for p in model.parameters()]
        flat0 = torch.cat([p.detach().flatten() for p in model.parameters()])

        def loss_flat(flat, i=i, names=names, shapes=shapes, model=model):
            ps = dict(zip(names, torch.split(flat, [s.numel() for s in shapes])))
            ps = {k: v.view(s) for (k, v), s in zip(ps.items(), shapes)}
            return loss_fn(torch.func.functional_call(model, ps, (x,)), ys[i])

        grad_ref = torch.func.grad(loss_flat)(flat0)
        hess = torch.func.hessian(loss_flat)(flat0)
        expected = grad_ref + 2 * float(coeffs[i]) * hess @ grad_ref
        got_g = torch.cat([t[i].flatten() for t in g])
        got = torch.cat([t[i].flatten() for t in g_mod])
        torch.testing.assert_close(losses[i], loss_flat(flat0), rtol=1e-12, atol=0)
        torch.testing.assert_close(got_g, grad_ref, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-14)


def test_chunked_gradient_equals_one_chunk():
    dtype = torch.float64
    x, _, ys = classification(23, 2, dtype)
    arch, params = stack_models([mlp(s, dtype) for s in (1, 2)])
    one = ensemble_gradient(
        ensemble_loss_fns(arch, nn.CrossEntropyLoss(), x, ys, y_batched=True), params
    )
    many = ensemble_gradient(
        ensemble_loss_fns(arch, nn.CrossEntropyLoss(), x, ys, chunk_size=5, y_batched=True), params
    )
    torch.testing.assert_close(one[0], many[0], rtol=1e-13, atol=0)
    for a, b in zip(one[1], many[1]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


def test_minibatch_order_is_one_randperm_per_epoch():
    order = minibatch_indices(10, 3, torch.Generator().manual_seed(5))
    batches = [next(order) for _ in range(8)]  # two epochs: 3+3+3+1 each
    assert [len(b) for b in batches] == [3, 3, 3, 1] * 2
    gen = torch.Generator().manual_seed(5)
    expected = torch.cat([torch.randperm(10, generator=gen), torch.randperm(10, generator=gen)])
    assert torch.cat(batches).tolist() == expected.tolist()


def test_members_are_not_modified_and_can_be_loaded():
    dtype = torch.float64
    x, y = regression(16, dtype)
    models = [mlp(s, dtype, d_out=2) for s in (1, 2)]
    before = [[p.detach().clone() for p in m.parameters()] for m in models]
    ens = VectorizedEnsemble(models, nn.MSELoss(), x, y, lr=0.1)
    for _ in range(3):
        ens.step()
    for m, ps in zip(models, before):
        assert all(torch.equal(p, q) for p, q in zip(m.parameters(), ps))
    target = ens.load_member(1, mlp(9, dtype, d_out=2))
    serial = mlp(2, dtype, d_out=2)
    serial_run(serial, nn.MSELoss(), x, y, optimizer="gd", lr=0.1, steps=3)
    for p, q in zip(target.parameters(), serial.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-15)


def test_bad_input_raises_value_error():
    dtype = torch.float64
    x, y = regression(8, dtype)
    good = [mlp(1, dtype, d_out=2), mlp(2, dtype, d_out=2)]
    mse = nn.MSELoss()
    with pytest.raises(ValueError, match="unknown optimizer 'adam'; choose one of gd, sgd, egr"):
        VectorizedEnsemble(good, mse, x, y, optimizer="adam", lr=0.1)
    with pytest.raises(ValueError, match="one architecture"):
        VectorizedEnsemble([good[0], mlp(1, dtype, width=4, d_out=2)], mse, x, y, lr=0.1)
    with pytest.raises(ValueError, match="BatchNorm"):
        VectorizedEnsemble([nn.Sequential(nn.Linear(5, 2), nn.BatchNorm1d(2))], mse, x, y, lr=0.1)
    with pytest.raises(ValueError, match="dropout"):
        VectorizedEnsemble([nn.Sequential(nn.Linear(5, 2), nn.Dropout(0.5))], mse, x, y, lr=0.1)
    with pytest.raises(ValueError, match=r"one lr per member \(2\), got 3"):
        VectorizedEnsemble(good, mse, x, y, lr=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="lr must be finite numbers >= 0"):
        VectorizedEnsemble(good, mse, x, y, lr=[0.1, -1.0])
    with pytest.raises(ValueError, match="one seed per member"):
        VectorizedEnsemble(good, mse, x, y, lr=0.1, optimizer="sgd", batch_size=4)
    with pytest.raises(ValueError, match="unknown EGR method"):
        VectorizedEnsemble(good, mse, x, y, lr=0.1, optimizer="egr", egr_method="secant")
    with pytest.raises(ValueError, match="unknown HVP method"):
        VectorizedEnsemble(good, mse, x, y, lr=0.1, optimizer="egr", hvp_method="magic")


@pytest.mark.parametrize("batch_size", [None, 5], ids=["full", "minibatch"])
def test_per_member_inputs_and_constant_buffers(batch_size):
    """Each member on its own inputs (x[m]); a model with constant buffers
    (random features: fixed first layer) is stacked too."""
    from implicit_reg.workloads.models import build_model

    dtype = torch.float64
    seeds = [3, 4]
    data = [regression(17, dtype, seed=s) for s in seeds]
    x = torch.stack([d[0] for d in data])
    y = torch.stack([d[1] for d in data])

    def model(seed):
        return build_model(
            "rf_relu", input_dim=5, output_dim=2, width=12, seed=seed, zero_readout=False
        ).to(dtype)

    optimizer = "gd" if batch_size is None else "sgd"
    result = train_ensemble(
        [model(s) for s in seeds], nn.MSELoss(), x, y, steps=30, optimizer=optimizer, lr=[0.3, 0.6],
        batch_size=batch_size, seeds=seeds, x_per_member=True, y_per_member=True,
    )  # fmt: skip
    for i, seed in enumerate(seeds):
        ref = model(seed)
        rows = serial_run(
            ref, nn.MSELoss(), x[i], y[i], optimizer=optimizer, lr=[0.3, 0.6][i], steps=30,
            batch_size=batch_size, seed=seed,
        )  # fmt: skip
        assert_close_rows(result.history[i], rows, TOL[dtype])
        assert_close_params(result.params[i], ref, TOL[dtype])


def test_retire_and_max_loss():
    dtype = torch.float64
    x, y = regression(16, dtype)
    ens = VectorizedEnsemble(
        [mlp(s, dtype, d_out=2) for s in (1, 2, 3)], nn.MSELoss(), x, y, lr=0.1,
        max_loss=[math.inf, 1e-9, math.inf],
    )  # fmt: skip
    out = ens.step()
    assert ens.diverged_at == [None, 0, None]  # its loss is above its own bound
    assert set(out) == {0, 1, 2} and ens.live == [0, 2]
    kept = ens.member_params(2)
    ens.retire([2])
    ens.step()
    assert ens.live == [0] and ens.diverged_at == [None, 0, None]
    assert all(torch.equal(kept[k], v) for k, v in ens.member_params(2).items())
    with pytest.raises(ValueError, match="not training"):
        ens.retire([2])


def _explicit_hessian(model, loss_fn, x, y):
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])

    def loss_flat(f):
        parts = torch.split(f, [s.numel() for s in shapes])
        state = {k: v.view(s) for k, v, s in zip(names, parts, shapes)}
        return loss_fn(torch.func.functional_call(model, state, (x,)), y)

    return torch.func.hessian(loss_flat)(flat)


def test_vectorized_probes_against_explicit_hessian_and_serial_probes():
    """λ_max (Lanczos), Hutchinson trace and ‖∇L‖² for all members in one pass,
    against eigvalsh/trace of torch.func.hessian and the serial probes."""
    from implicit_reg.core.objective import full_gradient
    from implicit_reg.ensemble.probes import (
        ensemble_grad_norm_sq,
        ensemble_hutchinson,
        ensemble_lanczos_max,
    )
    from implicit_reg.probes import HessianOperator, hutchinson, lanczos

    dtype = torch.float64
    x, _, ys = classification(20, 3, dtype)
    loss_fn = nn.CrossEntropyLoss()
    models = [mlp(s, dtype, width=6) for s in (1, 2, 3)]
    arch, params = stack_models(models)
    before = [p.clone() for p in params]
    rng = torch.get_rng_state()
    seeds = [5, 6, 7]
    fns = ensemble_loss_fns(arch, loss_fn, x, ys, chunk_size=8, y_batched=True)
    eig = ensemble_lanczos_max(fns, params, seeds=seeds)
    tr = ensemble_hutchinson(fns, params, n_samples=10, seeds=seeds)
    gsq = ensemble_grad_norm_sq(fns, params)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(p, q) for p, q in zip(params, before))
    assert bool(eig.converged.all())
    for i, model in enumerate(models):
        H = _explicit_hessian(model, loss_fn, x, ys[i])
        assert float(eig.eigenvalues[i]) == pytest.approx(
            float(torch.linalg.eigvalsh(H)[-1]), rel=1e-9
        )
        op = HessianOperator(model, loss_fn, (x, ys[i]), mode="train")
        serial = lanczos(op, 1, seed=seeds[i])
        assert float(eig.eigenvalues[i]) == pytest.approx(float(serial.eigenvalues[0]), rel=1e-12)
        assert int(eig.n_iter[i]) == serial.n_iter
        hutch = hutchinson(op, min_samples=10, max_samples=10, seed=seeds[i])
        assert float(tr.estimate[i]) == pytest.approx(hutch.estimate, rel=1e-12)
        assert float(tr.stderr[i]) == pytest.approx(hutch.stderr, rel=1e-9)
        _, g = full_gradient(model, loss_fn, (x, ys[i]))
        assert float(gsq[i]) == pytest.approx(float(flat_norm(g) ** 2), rel=1e-12)


def test_compiled_gradients_match_serial():
    """compile=True (torch.compile'd vmap(grad_and_value)) gives the serial numbers,
    including the smaller last minibatch of an epoch (a new shape)."""
    dtype = torch.float64
    x, _, ys = classification(36, 2, dtype)
    seeds, lrs = [11, 12], [0.05, 0.1]
    loss_fn = nn.CrossEntropyLoss()
    result = train_ensemble(
        [mlp(s, dtype) for s in seeds], loss_fn, x, ys, steps=12, optimizer="sgd", lr=lrs,
        momentum=0.9, batch_size=8, seeds=seeds, y_per_member=True, compile=True,
    )  # fmt: skip
    for i, seed in enumerate(seeds):
        model = mlp(seed, dtype)
        rows = serial_run(
            model, loss_fn, x, ys[i], optimizer="sgd", lr=lrs[i], steps=12, batch_size=8,
            seed=seed, momentum=0.9,
        )  # fmt: skip
        assert_close_rows(result.history[i], rows, TOL[dtype])
        assert_close_params(result.params[i], model, TOL[dtype])
