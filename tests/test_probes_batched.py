"""Batched products, block solvers, GGN/Fisher, parameter subsets and general batches,
against explicit float64 matrices built with torch.func."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian, jacrev
from torch.utils.data import DataLoader, TensorDataset

from implicit_reg.core.objective import trainable_named_params
from implicit_reg.probes import (
    DEFAULT_BLOCK_MEMORY,
    FisherOperator,
    GGNOperator,
    HessianOperator,
    MatrixOperator,
    hutchinson,
    hutchpp,
    lanczos,
    layer_table,
    run_probes,
    select_params,
    slq_density,
)
from implicit_reg.probes.krylov import Run, rows_of, step_together
from implicit_reg.probes.operator import COPIES_PER_COLUMN, block_size_for

F64 = torch.float64


# tiny models: one intra-op thread (conftest restores the count after each test)
pytestmark = pytest.mark.usefixtures("one_thread")


class CNN1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 3, 3)
        self.bn = nn.BatchNorm1d(3)
        self.head = nn.Linear(3 * 6, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.bn(self.conv(x[:, None, :]))).flatten(1))


def build(kind: str, n=40, seed=0):
    """(model, loss_fn, X, y): tanh/relu MLPs, a CNN1d with BatchNorm, a partly frozen MLP."""
    g = torch.Generator().manual_seed(seed + 1)
    torch.manual_seed(seed)
    X = torch.randn(n, 8, generator=g, dtype=F64)
    if kind == "cnn_bn":
        model = CNN1d().double()
        model.train()
        model(X)  # running statistics away from their initial values
    elif kind == "frozen":
        model = nn.Sequential(
            nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3)
        ).double()
        model[2].weight.requires_grad_(False)
        model[0].bias.requires_grad_(False)
    else:
        act = nn.Tanh if kind.startswith("tanh") else nn.ReLU
        model = nn.Sequential(nn.Linear(8, 7), act(), nn.Linear(7, 3)).double()
    if kind.endswith("mse"):
        return model, nn.MSELoss(), X, torch.randn(n, 3, generator=g, dtype=F64)
    return model, nn.CrossEntropyLoss(), X, torch.randint(0, 3, (n,), generator=g)


KINDS = ["tanh_ce", "relu_ce", "tanh_mse", "cnn_bn", "frozen"]


def _flat_fn(model, names):
    """θ_S ↦ model outputs on X (eval mode), other parameters and buffers fixed."""
    named = dict(model.named_parameters())
    shapes = [named[k].shape for k in names]
    numels = [named[k].numel() for k in names]
    fixed = {**dict(model.named_buffers()), **{k: p.detach() for k, p in named.items()}}

    def out(flat, X):
        ps = [c.view(s) for c, s in zip(flat.split(numels), shapes)]
        return functional_call(model, {**fixed, **dict(zip(names, ps))}, (X,))

    theta = torch.cat([named[k].detach().reshape(-1) for k in names])
    return out, theta


def explicit(model, loss_fn, X, y, names=None):
    """(H, G, per-sample output Jacobians J [n, C, d]) in eval mode over ``names``."""
    names = list(trainable_named_params(model)) if names is None else names
    out, theta = _flat_fn(model, names)
    was = model.training
    model.eval()
    H = hessian(lambda t: loss_fn(out(t, X), y))(theta)
    f = out(theta, X).detach()
    J = jacrev(lambda t: out(t, X))(theta)  # [n, C, d]
    Hout = hessian(lambda o: loss_fn(o, y))(f)  # [n, C, n, C]
    n, C = f.shape
    G = torch.einsum("ica,icjd,jdb->ab", J, Hout, J)
    model.train(was)
    return H, G, J, f


def dense(op):
    return op.matmat(torch.eye(op.dim, dtype=F64))


# ------------------------------------------------------------------ matmat
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["double_backward", "vjp", "jvp"])
@pytest.mark.parametrize("product", ["loop", "vmap", "auto"])
def test_matmat_equals_stacked_matvec_and_explicit_hessian(kind, method, product):
    model, loss_fn, X, y = build(kind)
    if method == "jvp" and isinstance(loss_fn, nn.MSELoss):
        loss_fn = lambda o, t: ((o - t) ** 2).mean()  # noqa: E731  (torch's jvp/mse bug)
    op = HessianOperator(
        model, loss_fn, (X, y), chunk_size=15, method=method, block_size=4, product=product
    )
    V = torch.randn(op.dim, 9, generator=torch.Generator().manual_seed(2), dtype=F64)
    before = op.n_hvp
    M = op.matmat(V)
    assert op.n_hvp - before == 9  # counted per vector
    S = torch.stack([op.matvec(c) for c in V.T], dim=1)
    assert float((M - S).abs().max()) <= 1e-10 * float(S.abs().max())
    H = explicit(model, loss_fn, X, y)[0]
    torch.testing.assert_close(M, H @ V, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("slow", ["loop", "vmap", "rop"])
def test_auto_product_measures_and_keeps_the_cheaper_one(slow, monkeypatch):
    """``"auto"`` times a part of a block each way (loop, vmap and, on this MLP, the
    R-operator) on its first chunk and keeps the product with the smallest cost per
    column for that width class; made artificially slow, a product loses. Every block,
    measured or not, equals the explicit float64 Hessian."""
    import time

    import implicit_reg.probes.operator as operator

    model, loss_fn, X, y = build("tanh_ce")
    H = explicit(model, loss_fn, X, y)[0]
    op = HessianOperator(model, loss_fn, (X, y), chunk_size=15)  # default "auto"
    assert op.product == "auto"
    owner, name = {
        "loop": (HessianOperator, "_looped_product"),
        "vmap": (HessianOperator, "_vmapped_product"),
        "rop": (operator, "rop_block_product"),
    }[slow]
    real = getattr(owner, name)

    def slowed(*args, **kw):  # 20 ms of CPU work: "auto" times CPU seconds on a CPU
        t = time.process_time()
        while time.process_time() - t < 0.02:
            pass
        return real(*args, **kw)

    monkeypatch.setattr(owner, name, slowed)
    g = torch.Generator().manual_seed(3)
    for b in (9, 12, 1, 3):  # 9 and 12 share width class 4; 1 is never measured
        V = torch.randn(op.dim, b, generator=g, dtype=F64)
        torch.testing.assert_close(op.matmat(V), H @ V, rtol=1e-10, atol=1e-12)
    assert set(op.product_choice) == {2, 4}
    for key, costs in op.product_costs.items():
        assert set(costs) == {"loop", "vmap", "rop"}
        assert op.product_choice[key] != slow, costs
        assert costs[slow] > max(c for n, c in costs.items() if n != slow), costs


@pytest.mark.parametrize("curv", ["hessian", "hessian_loop", "hessian_vmap", "ggn", "fisher_mc"])
def test_train_mode_matmat_equals_matvec_with_dropout_and_bn(curv):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 10), nn.BatchNorm1d(10), nn.Tanh(), nn.Dropout(0.3), nn.Linear(10, 3)
    ).double()
    _, loss_fn, X, y = build("tanh_ce")
    kw = dict(chunk_size=16, mode="train", seed=3)
    op = {
        "hessian": lambda: HessianOperator(model, loss_fn, (X, y), block_size=3, **kw),
        "hessian_loop": lambda: HessianOperator(
            model, loss_fn, (X, y), block_size=3, product="loop", **kw
        ),
        "hessian_vmap": lambda: HessianOperator(
            model, loss_fn, (X, y), block_size=3, product="vmap", **kw
        ),
        "ggn": lambda: GGNOperator(model, loss_fn, (X, y), block_size=3, **kw),
        "fisher_mc": lambda: FisherOperator(model, loss_fn, (X, y), kind="mc", block_size=3, **kw),
    }[curv]()
    V = torch.randn(op.dim, 7, generator=torch.Generator().manual_seed(0), dtype=F64)
    M = op.matmat(V)
    S = torch.stack([op.matvec(c) for c in V.T], dim=1)
    assert float((M - S).abs().max()) <= 1e-10 * float(S.abs().max())
    # one fixed symmetric operator: uᵀ(Mv) = vᵀ(Mu)
    assert abs(float(V[:, 0] @ M[:, 1] - V[:, 1] @ M[:, 0])) <= 1e-10 * float(M.abs().max())


def test_unequal_batches_and_block_sizes_give_one_full_batch_product():
    model, loss_fn, X, y = build("tanh_ce", n=70)
    ref = dense(HessianOperator(model, loss_fn, (X, y)))
    loader = DataLoader(TensorDataset(X, y), batch_size=16, shuffle=False)  # 16,16,16,16,6
    for op in (
        HessianOperator(model, loss_fn, loader, block_size=5),
        HessianOperator(model, loss_fn, (X, y), chunk_size=33, block_size=1),
        HessianOperator(model, loss_fn, [(X[:9], y[:9]), (X[9:], y[9:])], block_size=100),
    ):
        torch.testing.assert_close(dense(op), ref, rtol=1e-10, atol=1e-13)


def test_matmat_rejects_bad_shapes_and_block_sizes():
    model, loss_fn, X, y = build("tanh_ce")
    op = HessianOperator(model, loss_fn, (X, y))
    with pytest.raises(ValueError, match="shape"):
        op.matmat(torch.zeros(op.dim + 1, 2, dtype=F64))
    with pytest.raises(ValueError, match="block_size"):
        HessianOperator(model, loss_fn, (X, y), block_size=0)
    with pytest.raises(ValueError, match="block_memory"):
        HessianOperator(model, loss_fn, (X, y), block_memory=0)
    with pytest.raises(ValueError, match="product"):
        HessianOperator(model, loss_fn, (X, y), product="batched")
    assert op.matmat(torch.zeros(op.dim, 0, dtype=F64)).shape == (op.dim, 0)


def test_block_size_comes_from_the_memory_budget():
    model, loss_fn, X, y = build("tanh_ce")
    op = HessianOperator(model, loss_fn, (X, y))
    per_column = COPIES_PER_COLUMN * op.dim * 8  # float64
    assert op.block_size == DEFAULT_BLOCK_MEMORY // per_column
    assert op.block_size >= 99  # an estimator's columns go in one pass on small models
    assert block_size_for(op.dim, F64, 10 * per_column + 1) == 10
    assert block_size_for(op.dim, torch.float32, 10 * per_column) == 20  # half the bytes
    assert block_size_for(op.dim, F64, 1) == 1  # never below one column
    small = HessianOperator(model, loss_fn, (X, y), block_memory=3 * per_column)
    assert small.block_size == 3
    assert HessianOperator(model, loss_fn, (X, y), block_size=2, block_memory=1).block_size == 2
    for curv in (GGNOperator, FisherOperator):
        assert curv(model, loss_fn, (X, y), block_memory=3 * per_column).block_size == 3
    # a budget of 3 columns: 7 columns take ⌈7/3⌉ = 3 passes, same product as one pass
    V = torch.randn(op.dim, 7, generator=torch.Generator().manual_seed(0), dtype=F64)
    passes = []
    small._terms = lambda f=small._terms: (passes.append(1), f())[1]
    torch.testing.assert_close(small.matmat(V), op.matmat(V), rtol=1e-12, atol=1e-14)
    assert len(passes) == 3


# ------------------------------------------------------------------ block solvers
@pytest.mark.parametrize("kind", ["tanh_ce", "relu_ce", "cnn_bn"])
@pytest.mark.parametrize("block", [2, 3, 8])
def test_block_lanczos_matches_eigvalsh_with_certified_residuals(kind, block):
    model, loss_fn, X, y = build(kind)
    H = explicit(model, loss_fn, X, y)[0]
    ev = torch.linalg.eigvalsh(H)
    op = HessianOperator(model, loss_fn, (X, y))
    for which, ref in (("LA", ev[-3:].flip(0)), ("SA", ev[:3])):
        res = lanczos(op, 3, which=which, block_size=block)
        assert res.converged
        torch.testing.assert_close(
            res.eigenvalues, ref, rtol=1e-8, atol=1e-10 * float(ev.abs().max())
        )
        V = res.eigenvectors
        direct = (H @ V - V * res.eigenvalues).norm(dim=0)
        torch.testing.assert_close(res.residuals, direct, rtol=1e-3, atol=1e-12)
        assert float(res.residuals.max()) <= 1e-7 * float(ev.abs().max())


def test_block_lanczos_finds_a_multiple_eigenvalue_and_a_warm_block():
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(40, 40, generator=g, dtype=F64))
    lam = torch.cat([torch.full((3,), 5.0, dtype=F64), torch.linspace(-1, 2, 37, dtype=F64)])
    op = MatrixOperator(Q @ torch.diag(lam) @ Q.T)
    res = lanczos(op, 3, block_size=3)
    torch.testing.assert_close(
        res.eigenvalues, torch.full((3,), 5.0, dtype=F64), rtol=1e-10, atol=0
    )
    whole = lanczos(op, 40, block_size=7)  # the whole space, dim not a multiple of 7
    torch.testing.assert_close(
        whole.eigenvalues, lam.sort(descending=True).values, rtol=0, atol=1e-12
    )
    cold = lanczos(op, 3, block_size=3)
    warm = lanczos(
        op,
        3,
        block_size=3,
        v0=cold.eigenvectors + 1e-3 * torch.randn(40, 3, generator=g, dtype=F64),
    )
    torch.testing.assert_close(warm.eigenvalues, cold.eigenvalues, rtol=1e-10, atol=0)
    assert warm.n_hvp < cold.n_hvp


def test_blocked_traces_use_the_same_probes_as_one_at_a_time():
    model, loss_fn, X, y = build("tanh_ce")
    op = HessianOperator(model, loss_fn, (X, y))
    H = MatrixOperator(explicit(model, loss_fn, X, y)[0])
    a = hutchinson(op, min_samples=13, max_samples=13, block_size=4)
    b = hutchinson(H, min_samples=13, max_samples=13, block_size=1)
    assert a.n_hvp == 13 and abs(a.estimate - b.estimate) <= 1e-10 * abs(b.estimate)
    c, d = hutchpp(op, n_hvp=30), hutchpp(H, n_hvp=30)
    assert c.n_hvp == d.n_hvp == 30 and abs(c.estimate - d.estimate) <= 1e-10 * abs(d.estimate)


def test_batched_slq_runs_equal_lone_lanczos_runs():
    model, loss_fn, X, y = build("relu_ce")
    op = HessianOperator(model, loss_fn, (X, y))
    V0 = (
        torch.randint(0, 2, (op.dim, 3), generator=torch.Generator().manual_seed(1)).double() * 2
        - 1
    )
    together = [Run(V0[:, [r]], restart=False) for r in range(3)]
    live = together
    while live:
        live = [r for r, go in zip(live, step_together(live, rows_of(op), 12)) if go]
    lam = torch.linalg.eigvalsh(explicit(model, loss_fn, X, y)[0])
    for r in range(3):
        alone = Run(V0[:, [r]], restart=False)
        while step_together([alone], rows_of(op), 12)[0]:
            pass
        assert alone.m == together[r].m == 12
        (theta, S), (theta_1, S_1) = together[r].ritz(), alone.ritz()
        torch.testing.assert_close(
            torch.as_tensor(theta), torch.as_tensor(theta_1), rtol=1e-9, atol=1e-12
        )
        torch.testing.assert_close(
            torch.as_tensor(S[0] ** 2), torch.as_tensor(S_1[0] ** 2), rtol=1e-7, atol=1e-12
        )
        # Ritz values lie in the spectrum's hull; the extreme ones approach its ends
        assert lam[0] - 1e-10 <= theta.min() and theta.max() <= lam[-1] + 1e-10
        assert abs(float(S[0] @ S[0]) - 1) < 1e-12  # quadrature weights sum to 1
    dens = slq_density(op, n_steps=10, n_runs=4)
    assert dens.n_hvp == 40


# ------------------------------------------------------------------ GGN and Fisher
@pytest.mark.parametrize("kind", ["tanh_ce", "relu_ce", "tanh_mse", "cnn_bn", "frozen"])
def test_ggn_and_fisher_match_explicit_and_are_psd(kind):
    model, loss_fn, X, y = build(kind)
    H, G, J, f = explicit(model, loss_fn, X, y)
    Gop = dense(GGNOperator(model, loss_fn, (X, y), chunk_size=11, block_size=6))
    torch.testing.assert_close(Gop, G, rtol=1e-10, atol=1e-13)
    F = dense(FisherOperator(model, loss_fn, (X, y), chunk_size=11))
    scale = float(G.abs().max())
    # the exact Fisher of softmax+CE and of the Gaussian of MSE is the GGN
    torch.testing.assert_close(F, G, rtol=1e-10, atol=1e-12 * scale)
    for M in (Gop, F):
        assert float(torch.linalg.eigvalsh((M + M.T) / 2)[0]) >= -1e-12 * scale
    # empirical Fisher: (s/N)·Σ_i J_iᵀ g_i g_iᵀ J_i with g = ∂(−log p(y_i|f_i))/∂f_i
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        g, s = torch.softmax(f, 1) - nn.functional.one_hot(y, 3).to(F64), 1.0
    else:
        g, s = 2 * (f - y), 1.0 / 3
    per = torch.einsum("ica,ic->ia", J, g)
    E = s * per.T @ per / len(X)
    Eop = dense(FisherOperator(model, loss_fn, (X, y), kind="empirical", chunk_size=7))
    torch.testing.assert_close(Eop, E, rtol=1e-10, atol=1e-13)


def test_ggn_of_linear_model_with_squared_loss_is_the_hessian():
    model, _, X, _ = build("tanh_ce")
    lin = nn.Linear(8, 3).double()
    y = torch.randn(len(X), 3, dtype=F64)
    H = dense(HessianOperator(lin, nn.MSELoss(), (X, y)))
    torch.testing.assert_close(
        dense(GGNOperator(lin, nn.MSELoss(), (X, y), chunk_size=9)), H, rtol=1e-12, atol=1e-14
    )


@pytest.mark.parametrize("kind", ["tanh_ce", "tanh_mse"])
def test_monte_carlo_fisher_is_psd_seeded_and_near_the_exact_one(kind):
    model, loss_fn, X, y = build(kind)
    exact = dense(FisherOperator(model, loss_fn, (X, y)))
    one = FisherOperator(model, loss_fn, (X, y), kind="mc", mc_samples=1, seed=4)
    M1 = dense(one)
    torch.testing.assert_close(dense(one), M1, rtol=0, atol=0)  # same draws on every pass
    assert float(torch.linalg.eigvalsh((M1 + M1.T) / 2)[0]) >= -1e-12 * float(M1.abs().max())
    many = dense(FisherOperator(model, loss_fn, (X, y), kind="mc", mc_samples=4000, seed=4))
    err = float((many - exact).norm() / exact.norm())
    assert err < 0.05, err  # Monte-Carlo error ~ 1/√(4000·n) per entry
    assert float((M1 - exact).norm() / exact.norm()) > err  # more samples, closer


def test_fisher_rejects_unknown_likelihoods_and_kinds():
    model, _, X, y = build("tanh_ce")
    with pytest.raises(ValueError, match="likelihood"):
        FisherOperator(model, lambda o, t: nn.functional.cross_entropy(o, t), (X, y))
    with pytest.raises(ValueError, match="kind"):
        FisherOperator(model, nn.CrossEntropyLoss(), (X, y), kind="true")
    with pytest.raises(ValueError, match="label smoothing"):
        FisherOperator(model, nn.CrossEntropyLoss(label_smoothing=0.1), (X, y))
    F = FisherOperator(
        model, lambda o, t: nn.functional.cross_entropy(o, t), (X, y), likelihood="categorical"
    )
    torch.testing.assert_close(dense(F), dense(GGNOperator(model, nn.CrossEntropyLoss(), (X, y))))


# ------------------------------------------------------------------ parameter subsets
@pytest.mark.parametrize("kind", ["tanh_ce", "frozen", "cnn_bn"])
def test_subset_operators_are_principal_submatrices(kind):
    model, loss_fn, X, y = build(kind)
    names = list(trainable_named_params(model))
    H, G, _, _ = explicit(model, loss_fn, X, y)
    sizes = [p.numel() for p in trainable_named_params(model).values()]
    offsets = dict(zip(names, torch.tensor([0, *sizes]).cumsum(0).tolist()))
    first = names[0].split(".")[0]  # a module name such as "0" or "conv"
    chosen = [k for k in names if k.split(".")[0] == first]
    idx = torch.cat(
        [torch.arange(offsets[k], offsets[k] + dict(zip(names, sizes))[k]) for k in chosen]
    )
    params = dict(model.named_parameters())
    for sel in (
        first,
        [first + ".*"],
        lambda k: k.split(".")[0] == first,
        [params[k] for k in chosen],
    ):
        assert list(select_params(model, sel)) == chosen
        torch.testing.assert_close(
            dense(HessianOperator(model, loss_fn, (X, y), params=sel)), H[idx][:, idx]
        )
        torch.testing.assert_close(
            dense(GGNOperator(model, loss_fn, (X, y), params=sel)), G[idx][:, idx]
        )
    # the explicit Hessian of the loss in θ_S alone is the same submatrix
    H_S = explicit(model, loss_fn, X, y, names=chosen)[0]
    torch.testing.assert_close(H_S, H[idx][:, idx])


def test_bad_selections_raise_and_name_the_trainable_parameters():
    model, loss_fn, X, y = build("frozen")
    with pytest.raises(ValueError, match="matches no trainable parameter.*0.weight"):
        HessianOperator(model, loss_fn, (X, y), params="layers.9")
    with pytest.raises(ValueError, match="empty"):
        HessianOperator(model, loss_fn, (X, y), params=lambda k: False)
    with pytest.raises(ValueError, match="trainable parameter"):
        HessianOperator(model, loss_fn, (X, y), params=[model[2].weight])  # frozen
    with pytest.raises(ValueError, match="params must be"):
        HessianOperator(model, loss_fn, (X, y), params=3)


def test_layer_table_matches_per_module_probes():
    model, loss_fn, X, y = build("tanh_ce")
    rows = layer_table(model, loss_fn, (X, y), probes=("lambda_max", "trace"), trace_hvps=9)
    assert [r["module"] for r in rows] == ["0", "2"]
    H = explicit(model, loss_fn, X, y)[0]
    n0 = 8 * 7 + 7
    for row, idx in zip(rows, (slice(0, n0), slice(n0, H.shape[0]))):
        block = H[idx, idx]
        assert row["n_params"] == block.shape[0]
        assert abs(row["lambda_max"] - float(torch.linalg.eigvalsh(block)[-1])) <= 1e-7 * float(
            block.abs().max()
        )
        one = run_probes(["trace"], model, loss_fn, (X, y), params=row["module"], trace_hvps=9)
        assert row["trace"] == one["trace"]


# ------------------------------------------------------------------ general batches
class DictModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Linear(8, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, input_ids, scale=None):
        return self.out(torch.tanh(self.emb(input_ids) * (1.0 if scale is None else scale)))


def test_dict_and_tuple_inputs_and_batch_loss_equal_the_tensor_path():
    torch.manual_seed(0)
    model = DictModel().double()
    _, loss_fn, X, y = build("tanh_ce", n=30)
    ref_op = HessianOperator(model, loss_fn, (X, y))
    ref = dense(ref_op)
    dict_batches = [({"input_ids": X[:13]}, y[:13]), ({"input_ids": X[13:]}, y[13:])]
    tuple_batches = [((X[:20], 1.0), y[:20]), ((X[20:], 1.0), y[20:])]
    torch.testing.assert_close(dense(HessianOperator(model, loss_fn, dict_batches)), ref)
    torch.testing.assert_close(dense(HessianOperator(model, loss_fn, tuple_batches)), ref)

    def batch_loss(m, batch):  # a HuggingFace-style batch: one dict with the labels in it
        return loss_fn(m(input_ids=batch["input_ids"]), batch["labels"]), len(batch["labels"])

    hf = [{"input_ids": X[i : i + 7], "labels": y[i : i + 7]} for i in range(0, 30, 7)]  # 7,7,7,7,2
    op = HessianOperator(model, None, hf, batch_loss=batch_loss, block_size=3)
    torch.testing.assert_close(dense(op), ref)
    assert op.n_samples == 30
    loss, grad = op.loss_and_gradient()
    ref_loss, ref_grad = ref_op.loss_and_gradient()
    assert abs(loss - ref_loss) <= 1e-14 and float((grad - ref_grad).abs().max()) <= 1e-14
    got = run_probes(["lambda_max", "trace"], model, None, hf, batch_loss=batch_loss)
    want = run_probes(["lambda_max", "trace"], model, loss_fn, (X, y))
    assert abs(got["lambda_max"] - want["lambda_max"]) <= 1e-8 * abs(want["lambda_max"])
    assert abs(got["trace"] - want["trace"]) <= 1e-8 * abs(want["trace"])
    with pytest.raises(ValueError, match="needs the model's outputs"):
        GGNOperator(model, None, hf, batch_loss=batch_loss)
    with pytest.raises(ValueError, match="exactly one of loss_fn"):
        HessianOperator(model, loss_fn, hf, batch_loss=batch_loss)
    with pytest.raises(ValueError, match="re-iterable"):
        HessianOperator(model, loss_fn, iter(dict_batches))


# ------------------------------------------------------------------ leaves the model alone
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_new_operators_leave_the_model_bit_for_bit(mode):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 10), nn.BatchNorm1d(10), nn.Tanh(), nn.Dropout(0.2), nn.Linear(10, 3)
    ).double()
    _, loss_fn, X, y = build("tanh_ce")
    model.train()
    loss_fn(model(X), y).backward()
    model[3].eval()
    snap_p = [p.detach().clone() for p in model.parameters()]
    snap_g = [(p.grad, p.grad.clone()) for p in model.parameters()]
    snap_b = [b.clone() for b in model.buffers()]
    modes = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    kw = dict(chunk_size=15, mode=mode, block_size=4)
    V = torch.randn(sum(p.numel() for p in model.parameters()), 5, dtype=F64)
    rng = torch.get_rng_state()
    for op in (
        HessianOperator(model, loss_fn, (X, y), **kw),
        GGNOperator(model, loss_fn, (X, y), **kw),
        FisherOperator(model, loss_fn, (X, y), kind="mc", **kw),
        FisherOperator(model, loss_fn, (X, y), kind="empirical", params="4", **kw),
    ):
        if op.dim == V.shape[0]:
            op.matmat(V)
        lanczos(op, 2, block_size=2, max_iter=12)
        hutchpp(op, n_hvp=9)
        slq_density(op, n_steps=4, n_runs=3)
    layer_table(
        model, loss_fn, (X, y), probes=("lambda_max", "ggn_trace"), trace_hvps=6, **{"mode": mode}
    )
    assert all(torch.equal(a, p) for a, p in zip(snap_p, model.parameters()))
    assert all(
        p.grad is g and torch.equal(p.grad, c) for p, (g, c) in zip(model.parameters(), snap_g)
    )
    assert all(torch.equal(a, b) for a, b in zip(snap_b, model.buffers()))
    assert modes == [m.training for m in model.modules()]
    assert torch.equal(rng, torch.get_rng_state())
