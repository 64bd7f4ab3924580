"""The R-operator products of an MLP (``product="rop"``, ``quadratic_forms``) against an
explicit ``torch.func.hessian`` in float64, across activations, losses, selections and
chunkings; and what does not qualify fails with a sentence, not a wrong number."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_probes_batched import explicit
from torch import nn

from implicit_reg.probes import HessianOperator, hutchinson, hutchpp
from implicit_reg.probes.operator import apply_quadratic
from implicit_reg.probes.rop import mlp_plan, rop_block_product
from implicit_reg.workloads.losses import OneHotMSELoss, OneHotSumMSELoss, RegressionMSELoss
from implicit_reg.workloads.models import MLP

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def coupled_loss(out, y):
    """Not a mean of per-sample terms: the rows interact (the generic output path)."""
    return F.cross_entropy(out, y) + out.mean(0).square().sum()


def problem(act="tanh", loss="ce", n=37, seed=0):
    g = torch.Generator().manual_seed(seed + 11)
    torch.manual_seed(seed)
    acts = {
        "tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "gelu": nn.GELU,
        "softplus": nn.Softplus, "silu": nn.SiLU, "elu_": lambda: nn.ELU(inplace=True),
    }  # fmt: skip
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(6, 5), acts[act](),
        nn.Sequential(nn.Linear(5, 4, bias=False), acts[act](), nn.Dropout(0.3)),
        nn.Identity(), nn.Linear(4, 3),
    ).double()  # fmt: skip
    X = torch.randn(n, 2, 3, generator=g, dtype=F64)
    labels = torch.randint(0, 3, (n,), generator=g)
    losses = {
        "ce": (F.cross_entropy, labels),
        "ce_module_smoothed": (nn.CrossEntropyLoss(label_smoothing=0.1), labels),
        "ce_ignored": (nn.CrossEntropyLoss(), torch.where(labels == 0, -100, labels)),
        "mse": (nn.MSELoss(), torch.randn(n, 3, generator=g, dtype=F64)),
        "mse_fn": (F.mse_loss, torch.randn(n, 3, generator=g, dtype=F64)),
        "onehot_mse": (OneHotMSELoss(3), labels),
        "onehot_sum_mse": (OneHotSumMSELoss(3), labels),
        "regression_mse": (RegressionMSELoss(), torch.randn(n, 3, generator=g, dtype=F64)),
        "coupled": (coupled_loss, labels),
    }
    loss_fn, y = losses[loss]
    return model, loss_fn, X, y


def oracle(model, loss_fn, X, y, chunk=None, names=None):
    """The explicit Hessian of L = (1/N)·Σ_c n_c·ℓ(f(x_c), y_c), chunked as the operator."""
    if chunk is None:
        return explicit(model, loss_fn, X, y, names)[0]
    parts = [
        len(X[i : i + chunk]) * explicit(model, loss_fn, X[i : i + chunk], y[i : i + chunk], names)[0]
        for i in range(0, len(X), chunk)
    ]  # fmt: skip
    return sum(parts) / len(X)


def directions(op, b, seed=5):
    return torch.randn(op.dim, b, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("act", ["tanh", "relu", "sigmoid", "gelu", "softplus", "silu", "elu_"])
def test_rop_products_and_quadratic_forms_equal_the_explicit_hessian(act):
    model, loss_fn, X, y = problem(act)
    H = oracle(model, loss_fn, X, y, chunk=16)
    op = HessianOperator(model, loss_fn, (X, y), chunk_size=16, product="rop")
    V = directions(op, 7)
    torch.testing.assert_close(op.matmat(V), H @ V, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op.quadratic_forms(V), (V * (H @ V)).sum(0), rtol=1e-10, atol=1e-12)
    assert op.n_hvp == 14  # quadratic forms count as products


LOSSES = ["ce_module_smoothed", "ce_ignored", "mse", "mse_fn", "onehot_mse", "onehot_sum_mse",
          "regression_mse", "coupled"]  # fmt: skip


@pytest.mark.parametrize("loss", LOSSES)
def test_every_output_hessian_form_and_the_generic_one(loss):
    """Closed forms (cross-entropy, squared losses, the package's declared ones) and the
    column-by-column fallback (ignored labels, a loss that couples the rows) agree with
    the oracle; the fallback takes the chunk whole, so coupling within it is kept."""
    model, loss_fn, X, y = problem("tanh", loss)
    op = HessianOperator(model, loss_fn, (X, y), product="rop")
    H = oracle(model, loss_fn, X, y)
    V = directions(op, 5)
    torch.testing.assert_close(op.matmat(V), H @ V, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op.quadratic_forms(V), (V * (H @ V)).sum(0), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("rows", [1, 5, 37, 100])
def test_row_parts_of_a_chunk_add_up(rows):
    model, loss_fn, X, y = problem("tanh", "ce")
    op = HessianOperator(model, loss_fn, (X, y), product="loop")
    V = directions(op, 4)
    ref = op.matmat(V)
    vs = op._unflatten_block(V)
    with op._passes():
        params = op._leaves(op.params())
        (term,) = list(op._terms())
        hv = rop_block_product(mlp_plan(model, "eval"), term, params, vs, rows=rows)
    got = torch.cat([h.reshape(4, -1) for h in hv], dim=1).T / len(X)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_a_selection_gives_the_principal_submatrix_and_the_package_mlp_qualifies():
    torch.manual_seed(1)
    model = MLP(6, 3, width=5, depth=2, activation="tanh").double()
    g = torch.Generator().manual_seed(2)
    X, y = torch.randn(30, 6, generator=g, dtype=F64), torch.randint(0, 3, (30,), generator=g)
    loss_fn = nn.CrossEntropyLoss()
    model.net[2].bias.requires_grad_(False)  # frozen: held fixed, never measured
    names = ["net.2.weight", "net.4.weight", "net.4.bias"]
    op = HessianOperator(model, loss_fn, (X, y), params=names, product="rop")
    assert op.names == names
    H = oracle(model, loss_fn, X, y, names=names)
    V = directions(op, 6)
    torch.testing.assert_close(op.matmat(V), H @ V, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op.quadratic_forms(V), (V * (H @ V)).sum(0), rtol=1e-10, atol=1e-12)


def test_auto_measures_the_r_operator_beside_loop_and_vmap():
    model, loss_fn, X, y = problem("tanh", "ce")
    H = oracle(model, loss_fn, X, y, chunk=16)
    op = HessianOperator(model, loss_fn, (X, y), chunk_size=16)  # "auto"
    for b in (9, 2):
        V = directions(op, b, seed=b)
        torch.testing.assert_close(op.matmat(V), H @ V, rtol=1e-10, atol=1e-12)
    assert set(op.product_costs[4]) == {"loop", "vmap", "rop"}
    assert set(op.product_costs[2]) == {"loop", "rop"}
    assert all(c >= 0 for costs in op.product_costs.values() for c in costs.values())


def test_estimators_on_quadratic_forms_equal_the_looped_products():
    """Hutchinson and Hutch++ take zᵀHz from the second-order pass: the same estimate as
    from the looped products, to rounding, with the same probes and product count."""
    model, loss_fn, X, y = problem("tanh", "ce", n=64)
    fast = HessianOperator(model, loss_fn, (X, y), chunk_size=20, product="rop")
    slow = HessianOperator(model, loss_fn, (X, y), chunk_size=20, product="loop")
    for est in (lambda op: hutchpp(op, n_hvp=30, seed=3),
                lambda op: hutchinson(op, rtol=0.0, min_samples=12, max_samples=12, seed=4)):  # fmt: skip
        a, b = est(fast), est(slow)
        assert a.n_hvp == b.n_hvp
        assert a.estimate == pytest.approx(b.estimate, rel=1e-12, abs=1e-14)
        assert a.stderr == pytest.approx(b.stderr, rel=1e-9, abs=1e-14)
    V = directions(slow, 3)
    torch.testing.assert_close(apply_quadratic(slow, V), (V * slow.matmat(V)).sum(0))


def test_the_model_is_left_as_found():
    model, loss_fn, X, y = problem("relu", "ce")
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    op = HessianOperator(model, loss_fn, (X, y), product="rop")
    V = directions(op, 3)
    op.matmat(V)
    op.quadratic_forms(V)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_what_does_not_qualify_says_why():
    model, loss_fn, X, y = problem("tanh", "ce")
    with pytest.raises(ValueError, match="product='rop' needs an MLP: .*Conv1d"):
        HessianOperator(nn.Sequential(nn.Conv1d(2, 2, 1)).double(), loss_fn, (X, y), product="rop")
    with pytest.raises(ValueError, match="product='rop' needs an MLP: .*Dropout"):
        HessianOperator(model, loss_fn, (X, y), mode="train", product="rop")
    shared = nn.Linear(3, 3).double()
    with pytest.raises(ValueError, match="used twice"):
        HessianOperator(
            nn.Sequential(shared, nn.Tanh(), shared), loss_fn, (X[:, 0], y), product="rop"
        )

    class Doubled(nn.Sequential):  # a subclass may change what the body computes
        def forward(self, x):
            return 2 * super().forward(x)

    with pytest.raises(ValueError, match="product='rop' needs an MLP: Doubled"):
        HessianOperator(Doubled(nn.Linear(3, 3)).double(), loss_fn, (X[:, 0], y), product="rop")

    def batch_loss(m, batch):
        return loss_fn(m(batch[0]), batch[1]), len(batch[1])

    with pytest.raises(ValueError, match="batch_loss"):
        HessianOperator(model, None, [(X, y)], batch_loss=batch_loss, product="rop")
    with pytest.raises(ValueError, match="inputs are not all tensors"):
        HessianOperator(model, loss_fn, [((X,), y)], product="rop")  # model(*inputs)
    tupled = HessianOperator(model, loss_fn, [((X,), y)])  # "auto": loop and vmap only
    tupled.matmat(directions(tupled, 4))
    assert set(tupled.product_costs[3]) == {"loop", "vmap"}
    with pytest.raises(ValueError, match="unknown product"):
        HessianOperator(model, loss_fn, (X, y), product="rops")
    # "auto" on a model that does not qualify measures loop and vmap only
    op = HessianOperator(nn.Sequential(nn.Conv1d(2, 2, 1), nn.Flatten()).double(), loss_fn, (X, y))
    op.matmat(directions(op, 4))
    assert set(op.product_costs[3]) == {"loop", "vmap"}
