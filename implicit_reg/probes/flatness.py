"""Scalar flatness and complexity measures of a trained model.

Each function leaves the model as it found it (:func:`preserved`) and
measures only the trainable parameters (``requires_grad=True``); frozen
parameters are constants. Losses are full-data means, in chunks.

- :func:`grad_norm_sq`: ‖∇L(θ)‖², the implicit regularizer of GD
  (Barrett & Dherin, ICLR 2021).
- :func:`weight_norms`: ‖θ‖₂ in total and per layer.
- :func:`dist_from_init`: ‖θ − θ₀‖₂.
- :func:`eps_sharpness`: Keskar et al. (ICLR 2017) ε-sharpness.
- :func:`gaussian_sharpness`: E_δ[L(θ+δ)] − L(θ) with δ ~ N(0, σ²I)
  (the "expected sharpness" of Neyshabur et al., NeurIPS 2017).
- :func:`geometric_complexity`: (1/N)·Σ_i ‖∂f_θ(x_i)/∂x‖²_F
  (Dherin, Munn, Rosca & Barrett, NeurIPS 2022).

The four that pass over the data (:func:`grad_norm_sq`, :func:`eps_sharpness`,
:func:`gaussian_sharpness`, :func:`geometric_complexity`) take ``process_group``:
each rank holds a shard of the data, and the sums are summed over the ranks
(:mod:`implicit_reg.probes.distributed`); the same ``seed`` on every rank.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..core.objective import Data, iter_chunks, num_samples, trainable_named_params
from .arguments import check_count, check_positive
from .distributed import shard_ranks, unwrap
from .operator import HessianOperator
from .state import DEFAULT_MODE, check_mode, preserved, seeded_rng

__all__ = [
    "Estimate",
    "grad_norm_sq",
    "weight_norms",
    "dist_from_init",
    "eps_sharpness",
    "gaussian_sharpness",
    "geometric_complexity",
]


@dataclass
class Estimate:
    """A Monte Carlo estimate: value, its standard error and the sample count."""

    value: float
    stderr: float
    n_samples: int


def grad_norm_sq(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    data: Data,
    *,
    chunk_size: int | None = None,
    mode: str = DEFAULT_MODE,
    process_group=None,
) -> float:
    """‖∇L(θ)‖² of the full-data mean loss over the trainable parameters."""
    op = HessianOperator(
        model, loss_fn, data, chunk_size=chunk_size, mode=mode, process_group=process_group
    )
    g = op.gradient()
    return float(g.double() @ g.double())


def weight_norms(model: nn.Module) -> dict[str, float]:
    """‖θ‖₂ of the trainable parameters: ``"total"`` and one entry per layer.

    A layer is the module that owns the parameters (``"0"`` for
    ``Sequential``'s first ``Linear``: √(‖W‖²_F + ‖b‖²)). Frozen parameters
    are left out.
    """
    with preserved(model):
        sq: dict[str, float] = {}
        for name, p in trainable_named_params(model).items():
            layer = name.rpartition(".")[0] or name
            sq[layer] = sq.get(layer, 0.0) + float(p.detach().double().pow(2).sum())
    if not sq:
        raise ValueError("the model has no trainable parameters (requires_grad=True)")
    out = {"total": math.sqrt(sum(sq.values()))}
    out.update({k: math.sqrt(v) for k, v in sq.items()})
    return out


def dist_from_init(model: nn.Module, init_state: Mapping[str, Tensor]) -> float:
    """‖θ − θ₀‖₂ over the trainable parameters.

    Args:
        model: the current model.
        init_state: the initial ``state_dict()`` (or any mapping from parameter
            name to tensor) holding every trainable parameter.
    """
    if not isinstance(init_state, Mapping):
        raise ValueError(
            f"init_state must be a state dict (mapping), got {type(init_state).__name__}"
        )
    total = 0.0
    with preserved(model):
        for name, p in trainable_named_params(model).items():
            if name not in init_state:
                raise ValueError(
                    f"init_state has no entry {name!r}; it must hold every trainable parameter"
                )
            p0 = init_state[name]
            if tuple(p0.shape) != tuple(p.shape):
                raise ValueError(
                    f"init_state[{name!r}] has shape {tuple(p0.shape)}, the model's is {tuple(p.shape)}"
                )
            total += float((p.detach().double() - p0.detach().to(p.device).double()).pow(2).sum())
    return math.sqrt(total)


def eps_sharpness(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    data: Data,
    *,
    eps: float = 1e-3,
    steps: int = 10,
    step_size: float | None = None,
    chunk_size: int | None = None,
    mode: str = DEFAULT_MODE,
    process_group=None,
) -> float:
    """ε-sharpness of Keskar, Mudigere, Nocedal, Smelyanskiy & Tang (ICLR 2017), eq. (3):

        φ_ε(θ) = [max_{δ ∈ C_ε} L(θ + δ) − L(θ)] / (1 + L(θ)),
        C_ε = {δ : |δ_i| ≤ ε·(|θ_i| + 1)},

    in the full parameter space (Keskar's A = I) and returned as a ratio
    (Keskar's tables report 100·φ_ε). Keskar maximize with L-BFGS-B; here the
    inner maximization is projected sign-gradient ascent (as in PGD attacks,
    Madry et al. 2018) from δ = 0:

        δ ← clip(δ + η·w ⊙ sign ∇L(θ + δ), −w, w),   w_i = ε(|θ_i| + 1),

    for ``steps`` steps with η = ``step_size`` (default 2.5/steps), keeping
    the largest loss seen. The result is a lower bound on the true maximum;
    it is exact for losses that are monotone along each coordinate in the
    box (e.g. a linear loss or a separable convex quadratic) and never
    negative. Cost: ``steps`` full-data gradients and one loss.
    """
    eps = check_positive("eps", eps)
    steps = check_count("steps", steps)
    eta = 2.5 / steps if step_size is None else check_positive("step_size", step_size)
    op = HessianOperator(
        model, loss_fn, data, chunk_size=chunk_size, mode=mode, process_group=process_group
    )
    theta = op.theta()
    w = eps * (theta.abs() + 1)
    delta = torch.zeros_like(theta)
    loss0, g = op.loss_and_gradient(theta)
    best = loss0
    for t in range(steps):
        delta = torch.maximum(torch.minimum(delta + eta * w * torch.sign(g), w), -w)
        if t + 1 < steps:
            loss, g = op.loss_and_gradient(theta + delta)
        else:
            loss = op.loss(theta + delta)
        best = max(best, loss)
    return (best - loss0) / (1.0 + loss0)


def gaussian_sharpness(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    data: Data,
    *,
    sigma: float = 1e-2,
    n_samples: int = 10,
    seed: int = 0,
    chunk_size: int | None = None,
    mode: str = DEFAULT_MODE,
    process_group=None,
) -> Estimate:
    """Average loss increase under Gaussian weight noise,

        S_σ(θ) = E_δ[L(θ + δ)] − L(θ),   δ ~ N(0, σ²I) on the trainable θ.

    For a quadratic L = ½θᵀAθ + bᵀθ, S_σ = σ²·tr(A)/2; in general
    S_σ ≈ σ²·tr(H)/2 for small σ. Sampled with antithetic pairs, each sample
    being [L(θ+δ) + L(θ−δ)]/2 − L(θ) (unbiased; the odd terms cancel), from a
    private ``torch.Generator`` seeded with ``seed``. Cost: 2·n_samples + 1
    full-data losses.
    """
    sigma = check_positive("sigma", sigma)
    n_samples = check_count("n_samples", n_samples, 2)
    op = HessianOperator(
        model, loss_fn, data, chunk_size=chunk_size, mode=mode, process_group=process_group
    )
    theta = op.theta()
    gen = torch.Generator(device=op.device).manual_seed(int(seed))
    loss0 = op.loss(theta)
    samples = []
    for _ in range(n_samples):
        delta = sigma * torch.randn(op.dim, generator=gen, device=op.device, dtype=op.dtype)
        samples.append(0.5 * (op.loss(theta + delta) + op.loss(theta - delta)) - loss0)
    t = torch.tensor(samples, dtype=torch.float64)
    return Estimate(float(t.mean()), float(t.std(unbiased=True)) / math.sqrt(n_samples), n_samples)


def geometric_complexity(
    model: nn.Module,
    data: Data,
    *,
    chunk_size: int | None = None,
    mode: str = DEFAULT_MODE,
    seed: int = 0,
    process_group=None,
) -> float:
    """Geometric complexity (Dherin, Munn, Rosca & Barrett, NeurIPS 2022, eq. 2):

        GC(f_θ, D) = (1/N)·Σ_i ‖∂f_θ(x_i)/∂x‖²_F,

    the mean squared Frobenius norm of the input-output Jacobian (of the
    model's outputs, e.g. logits). Computed with one backward pass per
    output coordinate over each chunk: ∂(Σ_i f_j(x_i))/∂x_i = ∂f_j(x_i)/∂x_i
    when samples do not interact (eval mode; in train mode BatchNorm couples
    the samples of a chunk and the result is the chunk-level derivative).
    For a linear model f(x) = Wx + b, GC = ‖W‖²_F. Targets in ``data`` are
    ignored. ``seed`` fixes dropout masks in ``mode="train"``. With
    ``process_group`` each rank holds a shard of the data and N and the sum are
    summed over the ranks (:mod:`implicit_reg.probes.distributed`).
    """
    check_mode(mode)
    ranks = shard_ranks(process_group)
    with ranks.guard() if ranks else nullcontext():
        total, n = _jacobian_sq_sum(unwrap(model), data, chunk_size, mode, seed)
    if ranks is not None:  # Σ and N over every rank's shard
        theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        both = torch.tensor([total, float(n)], dtype=torch.float64)
        total, n = ranks.sum(both, None, theta).tolist()
    return total / n


def _jacobian_sq_sum(model: nn.Module, data: Data, chunk_size, mode: str, seed: int):
    """(Σ_i ‖∂f_θ(x_i)/∂x‖²_F, N) over ``data`` (this rank's shard)."""
    n = num_samples(data)
    device = next(iter(model.parameters()), torch.empty(0)).device
    total = 0.0
    with preserved(model, mode), seeded_rng(seed):
        for x, _ in iter_chunks(data, chunk_size):
            x = x.to(device).detach().requires_grad_(True)
            with torch.enable_grad():
                out = model(x).reshape(len(x), -1)
                for j in range(out.shape[1]):
                    (gx,) = torch.autograd.grad(
                        out[:, j].sum(), x, retain_graph=j + 1 < out.shape[1]
                    )
                    total += float(gx.double().pow(2).sum())
    return total, n
