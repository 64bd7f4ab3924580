"""GD iterates and the gradient flows they are compared with (shared helpers).

Backward error analysis (Barrett & Dherin, "Implicit Gradient
Regularization", ICLR 2021, arXiv 2009.11162): a GD step
θ' = θ − h∇L(θ) agrees with the gradient flow θ̇ = −∇L to O(h²) per step,
and with the flow of the modified loss

    L̃ = L + μ‖∇L‖²,   μ = h/4,   θ̇ = −∇L̃ = −(∇L + (h/2)·H∇L),

to O(h³). The GD iterates come from the package's ``GD`` optimizer and ∇L̃
from :func:`implicit_reg.core.modified_gradient.modified_gradient_exact` (the
package's one HVP); SciPy's ``solve_ivp`` integrates the flows in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import Tensor, nn

from implicit_reg.core.modified_gradient import modified_gradient_exact
from implicit_reg.core.objective import chunk_loss_fns, trainable_named_params
from implicit_reg.core.optim import GD
from implicit_reg.workloads.data import load_dataset
from implicit_reg.workloads.models import build_model

LossFn = Callable[[tuple[Tensor, ...]], Tensor]


def flatten(params: Sequence[Tensor]) -> np.ndarray:
    """Concatenate tensors into one float64 vector."""
    return torch.cat([p.detach().reshape(-1) for p in params]).double().cpu().numpy()


def unflatten(z: np.ndarray, like: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """Split a flat vector into float64 leaf tensors shaped like ``like``."""
    out, i = [], 0
    for p in like:
        n = p.numel()
        out.append(torch.as_tensor(z[i : i + n], dtype=torch.float64).reshape(p.shape))
        i += n
    if i != len(z):
        raise ValueError(f"vector of length {len(z)} does not match {i} parameters")
    return tuple(t.requires_grad_(True) for t in out)


def flow_velocity(loss_fn: LossFn, params: Sequence[Tensor], coeff: float) -> tuple[Tensor, ...]:
    """−∇L̃(θ) for L̃ = L + coeff·‖∇L‖² (coeff = 0: −∇L)."""
    params = tuple(params)
    if coeff == 0.0:
        with torch.enable_grad():
            g = torch.autograd.grad(loss_fn(params), params)
    else:
        _, g = modified_gradient_exact(loss_fn, params, coeff)
    return tuple(-x.detach() for x in g)


def gradient_flow(
    loss_fn: LossFn,
    theta0: Sequence[Tensor],
    t_end: float,
    *,
    coeff: float = 0.0,
    t_eval: np.ndarray | None = None,
    dense_output: bool = False,
    rtol: float = 1e-10,
    atol: float = 1e-12,
    method: str = "DOP853",
):
    """Integrate θ̇ = −∇(L + coeff·‖∇L‖²) from ``theta0`` over [0, t_end].

    With coeff = h/4 this is the IGR modified flow of GD with step h.

    Returns:
        SciPy's ``OdeResult`` (``.t``, ``.y`` with one column per time, and
        ``.sol(t)`` when ``dense_output``).

    Raises:
        RuntimeError: the integrator failed.
    """
    like = tuple(theta0)

    def rhs(_t: float, z: np.ndarray) -> np.ndarray:
        return flatten(flow_velocity(loss_fn, unflatten(z, like), coeff))

    sol = solve_ivp(
        rhs,
        (0.0, t_end),
        flatten(like),
        method=method,
        t_eval=t_eval,
        dense_output=dense_output,
        rtol=rtol,
        atol=atol,
    )
    if not sol.success:
        raise RuntimeError(f"solve_ivp failed: {sol.message}")
    return sol


def gd_iterates(loss_fn: LossFn, theta0: Sequence[Tensor], lr: float, steps: int) -> np.ndarray:
    """θ_0, …, θ_steps of full-batch GD with the package's ``GD`` optimizer.

    Returns:
        float64 array of shape ``(steps + 1, num_params)``; a row of NaN marks
        a divergence (and the rest of the rows).
    """
    params = [p.detach().clone().double().requires_grad_(True) for p in theta0]
    opt = GD(params, lr=lr)
    out = np.full((steps + 1, sum(p.numel() for p in params)), np.nan)
    out[0] = flatten(params)
    for k in range(1, steps + 1):
        opt.zero_grad()
        loss = loss_fn(tuple(params))
        if not torch.isfinite(loss):
            break
        loss.backward()
        opt.step()
        out[k] = flatten(params)
    return out


# ---------------------------------------------------------------- problems


def product_toy(seed: int, y: float, *, stream: int) -> tuple[LossFn, tuple[Tensor, ...]]:
    """Barrett & Dherin's two-parameter model E(a, b) = ½(y − ab)² (igr-toy's with
    x = 1), started at (a, b) ~ U([0.5, 2]²) drawn by ``np.random.default_rng([seed,
    stream])``: each experiment draws its own points through its own ``stream``."""
    rng = np.random.default_rng([seed, stream])
    theta0 = tuple(torch.tensor(v, dtype=torch.float64) for v in rng.uniform(0.5, 2.0, size=2))

    def loss_fn(p):
        a, b = p
        return 0.5 * (y - a * b) ** 2

    return loss_fn, theta0


def teacher_mlp(
    seed: int, *, n_train: int, input_dim: int, width: int, depth: int
) -> tuple[LossFn, tuple[Tensor, ...]]:
    """The mean squared error of a tanh MLP (``build_model("mlp")``, float64, init
    ``seed``) on ``n_train`` teacher regression samples (data ``seed``), as a function
    of its parameter tuple (summed over ``chunk_loss_fns``), and its initial parameters."""
    data = load_dataset(
        "teacher", n_train=n_train, n_test=1, seed=seed, task="regression",
        input_dim=input_dim,
    ).to(dtype=torch.float64)  # fmt: skip
    model = build_model(
        "mlp", input_dim=input_dim, output_dim=1, width=width, depth=depth,
        activation="tanh", seed=seed,
    ).double()  # fmt: skip
    fns = list(chunk_loss_fns(model, nn.MSELoss(), data.train))

    def loss_fn(p):
        return sum(f(p) for f in fns)

    theta0 = tuple(p.detach().clone() for p in trainable_named_params(model).values())
    return loss_fn, theta0
