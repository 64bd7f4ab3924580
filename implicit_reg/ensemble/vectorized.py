"""Train M models of one architecture as one batched computation.

A sweep over learning rate, seed or label-noise draw trains many small
models that differ only in numbers. Run one at a time, small models spend
their time in Python and dispatch overhead; here the M members are stacked
along a new leading dimension (``torch.func.stack_module_state``) and run
through ``torch.func.functional_call`` under ``vmap``, so every layer is one
batched operation for the whole ensemble.

Math. Stack the members' parameters as Θ = (θ_1, …, θ_M) and define the
ensemble loss

    𝓛(Θ) = Σ_m L_m(θ_m),

where L_m is member m's mean loss on its own targets (its own label-noise
draw). Members share no parameters, so

    ∇𝓛 = (∇L_1, …, ∇L_M),       ∇²𝓛 = blockdiag(H_1, …, H_M),

and one call of the package's HVP, :func:`implicit_reg.core.hvp.grad_and_hvp`, on
𝓛 with the direction V = (μ_1 g_1, …, μ_M g_M) returns every member's
(g_m, μ_m H_m g_m) at once. That is the EGR gradient
g_m + 2μ_m H_m g_m of Barrett & Dherin (ICLR 2021) for all members, through
the one HVP of the package, with no second implementation of it.

Each member keeps its own step h_m, EGR coefficient μ_m, initialization,
minibatch order (its own ``torch.Generator``), targets, metrics and
divergence status. Per-member scalars act as broadcast tensors of shape
``[M, 1, …]``; no operation mixes members, so a member whose loss turns NaN
or inf cannot change another member's numbers. It is recorded as diverged
at that step, its parameters are frozen at the last iterate, and it is
dropped from the batched computation.

The updates are :func:`implicit_reg.core.updates.gd_update`, ``sgd_update``
and ``egr_update`` themselves, the functions the serial optimizers call,
applied to stacked tensors with a per-member step tensor ``lr`` of shape
``[M]``, so a vectorized run matches the serial run of
``implicit_reg.core.optim.GD``, ``SGD`` and ``EGR`` to rounding
(``tests/test_vectorized.py``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from ..core.hvp import DEFAULT_METHOD, Params, check_method, check_scalar_loss, grad_and_hvp
from ..core.modified_gradient import EGR_METHODS, default_fd_radius, igr_coeff
from ..core.objective import load_trainable_params, trainable_named_params
from ..core.updates import egr_update, gd_update, sgd_update

__all__ = [
    "UPDATE_RULES",
    "Architecture",
    "check_vectorizable",
    "stack_models",
    "member_view",
    "member_sq_norms",
    "ensemble_loss_fns",
    "ensemble_losses",
    "ensemble_outputs",
    "ensemble_gradient",
    "CompiledGradient",
    "ensemble_modified_gradient_exact",
    "ensemble_modified_gradient_fd",
    "ensemble_egr_direction_exact",
    "ensemble_egr_direction_fd",
    "MinibatchOrder",
    "minibatch_indices",
    "VectorizedEnsemble",
]

#: the update rules an ensemble applies (engine.optimizers.update_rule maps a config to one)
UPDATE_RULES = ("gd", "sgd", "egr")

LossFn = Callable[[Tensor, Tensor], Tensor]


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class Architecture:
    """What the members share: the module structure; and their constant tensors.

    Attributes:
        template: a copy of one member on the ``meta`` device (structure only).
        names: trainable parameter names, in :func:`trainable_named_params` order.
        constants: frozen (``requires_grad=False``) parameters and buffers
            (e.g. the fixed first layer of a random-features model), stacked
            ``[M, …]``; never updated.
        size: M, the number of members.
    """

    template: nn.Module
    names: tuple[str, ...]
    constants: dict[str, Tensor]
    size: int

    def select(self, keep: Tensor) -> Architecture:
        """The architecture of the members at stack positions ``keep``."""
        return Architecture(
            template=self.template,
            names=self.names,
            constants={k: v[keep] for k, v in self.constants.items()},
            size=len(keep),
        )


def check_vectorizable(model: nn.Module) -> None:
    """Raise ``ValueError`` if ``model`` cannot be trained as an ensemble member.

    Members are pure functions of their parameters. Normalization layers
    with running statistics (BatchNorm) update buffers in every forward
    pass, and random layers (dropout in training mode) draw from one shared
    RNG, so neither could match the member's serial run; such runs are
    trained serially. Constant buffers (random features) are fine.
    """
    for name, mod in model.named_modules():
        if isinstance(mod, nn.modules.batchnorm._NormBase) and mod.track_running_stats:
            raise ValueError(
                f"vectorized training needs models without running statistics, found "
                f"{type(mod).__name__} at {name!r}; train models with BatchNorm serially"
            )
        if isinstance(mod, nn.modules.dropout._DropoutNd) and mod.p > 0 and mod.training:
            raise ValueError(
                f"vectorized training needs deterministic models, found dropout at {name!r}; "
                "train models with dropout serially"
            )
    if not trainable_named_params(model):
        raise ValueError("the model has no trainable parameters")


def _signature(model: nn.Module) -> list:
    return [
        (k, t.shape, t.dtype, t.device, getattr(t, "requires_grad", False))
        for k, t in [*model.named_parameters(), *model.named_buffers()]
    ]


def stack_models(models: Sequence[nn.Module]) -> tuple[Architecture, Params]:
    """Stack M models of one architecture: ``(arch, Θ)`` with Θ's tensors ``[M, …]``.

    The models are not modified; Θ holds detached copies.
    """
    models = list(models)
    if not models:
        raise ValueError("need at least one model")
    first = models[0]
    for model in models:
        check_vectorizable(model)
        if type(model) is not type(first) or _signature(model) != _signature(first):
            raise ValueError(
                "all members must share one architecture: same class, parameter and buffer "
                "names, shapes, dtypes, devices and requires_grad flags"
            )
    params, buffers = stack_module_state(models)
    names = tuple(trainable_named_params(first))
    constants = {k: v.detach() for k, v in {**params, **buffers}.items() if k not in names}
    template = copy.deepcopy(first).to("meta")
    arch = Architecture(template=template, names=names, constants=constants, size=len(models))
    return arch, tuple(params[k].detach().clone() for k in names)


def member_view(values: Tensor, like: Tensor) -> Tensor:
    """``values`` of shape ``[M]`` viewed as ``[M, 1, …]`` to broadcast against ``like``."""
    return values.view(values.shape[0], *([1] * (like.dim() - 1)))


def member_sq_norms(tensors: Sequence[Tensor]) -> Tensor:
    """‖t_m‖² per member, in float64, over a tuple of stacked tensors: shape ``[M]``.

    The per-member form of :func:`implicit_reg.core.modified_gradient.flat_norm` squared.
    """
    return sum((t.detach().double() ** 2).flatten(1).sum(1) for t in tensors)


# --------------------------------------------------------------------------- losses


def _num_samples(x: Tensor, x_batched: bool) -> int:
    n = x.shape[1] if x_batched else x.shape[0]
    if n == 0:
        raise ValueError("the data set is empty")
    return n


def ensemble_loss_fns(
    arch: Architecture,
    loss_fn: LossFn,
    x: Tensor,
    y: Tensor,
    *,
    chunk_size: int | None = None,
    x_batched: bool = False,
    y_batched: bool = False,
) -> list[Callable[[Params], Tensor]]:
    """One function per chunk, Θ ↦ ((n_c/N)·L_{c,m}(θ_m))_m of shape ``[M]``.

    The ensemble analogue of :func:`implicit_reg.core.objective.chunk_loss_fns`:
    summed over chunks, entry m is member m's mean loss over all N samples,
    whatever the chunk size. Summed over members it is 𝓛(Θ), whose gradient
    is every member's gradient and whose Hessian is block-diagonal.

    Args:
        arch: from :func:`stack_models`.
        loss_fn: mean-reduced loss ``(outputs, targets) -> scalar``.
        x: inputs, ``[N, …]`` shared by all members, or ``[M, N, …]`` with
            ``x_batched=True`` (e.g. each member's own minibatch).
        y: targets, ``[N, …]`` shared, or ``[M, N, …]`` with ``y_batched=True``
            (e.g. each member's own label-noise draw).
        chunk_size: samples per chunk (None: one chunk).
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
    n = _num_samples(x, x_batched)
    if _num_samples(y, y_batched) != n:
        raise ValueError(
            f"inputs and targets differ in length: {n} vs {_num_samples(y, y_batched)}"
        )
    for t, batched, what in ((x, x_batched, "x"), (y, y_batched, "y")):
        if batched and t.shape[0] != arch.size:
            raise ValueError(
                f"{what} is per member but has {t.shape[0]} rows for {arch.size} members"
            )
    names, constants, template = arch.names, arch.constants, arch.template

    def member(params: dict[str, Tensor], xc: Tensor, yc: Tensor) -> Tensor:
        loss = loss_fn(functional_call(template, params, (xc,)), yc)
        return check_scalar_loss(loss, "loss_fn's (mean-reduced) loss per member")

    batched = vmap(member, in_dims=(0, 0 if x_batched else None, 0 if y_batched else None))
    step = n if chunk_size is None else chunk_size
    fns = []
    for i in range(0, n, step):
        xc = x[:, i : i + step] if x_batched else x[i : i + step]
        yc = y[:, i : i + step] if y_batched else y[i : i + step]
        weight = min(step, n - i) / n

        def f(params: Params, xc=xc, yc=yc, weight=weight) -> Tensor:
            state = {**constants, **dict(zip(names, params))}
            return weight * batched(state, xc, yc)

        fns.append(f)
    return fns


def ensemble_losses(loss_fns: Sequence[Callable[[Params], Tensor]], params: Params) -> Tensor:
    """(L_m(θ_m))_m, shape ``[M]``, without autograd."""
    with torch.no_grad():
        return sum(f(tuple(params)) for f in loss_fns)


def ensemble_outputs(
    arch: Architecture, params: Params, x: Tensor, *, x_batched: bool = False
) -> Tensor:
    """Every member's outputs f_{θ_m}(x), shape ``[M, n, …]``, without autograd.

    ``x`` is ``[n, …]`` (shared) or ``[M, n, …]`` with ``x_batched=True``.
    """

    def member(state: dict[str, Tensor], xc: Tensor) -> Tensor:
        return functional_call(arch.template, state, (xc,))

    state = {**arch.constants, **dict(zip(arch.names, params))}
    with torch.no_grad():
        return vmap(member, in_dims=(0, 0 if x_batched else None))(state, x)


def ensemble_gradient(
    loss_fns: Sequence[Callable[[Params], Tensor]], params: Params
) -> tuple[Tensor, Params]:
    """Per-member losses ``[M]`` and gradients (∇L_m(θ_m))_m, stacked like Θ.

    One backward pass of 𝓛 = Σ_m L_m: ∂𝓛/∂θ_m = ∇L_m(θ_m) exactly (the
    backward of the sum passes a 1 to each member).
    """
    ps = tuple(p.detach().requires_grad_(True) for p in params)
    losses, grads = None, None
    for f in loss_fns:
        with torch.enable_grad():
            lc = f(ps)
            gs = torch.autograd.grad(lc.sum(), ps, allow_unused=True)
        gs = tuple(torch.zeros_like(p) if g is None else g for g, p in zip(gs, ps))
        losses = lc.detach() if losses is None else losses + lc.detach()
        grads = gs if grads is None else tuple(a + g for a, g in zip(grads, gs))
    return losses, grads


class CompiledGradient:
    """Per-member losses and gradients through ``torch.compile``: the same
    numbers as :func:`ensemble_gradient` (to rounding), computed by a compiled
    ``vmap(grad_and_value(member_loss))``.

    On CPU the compiled step is 1.6× (16 members of MLP 40→256→10 on 4,000
    rows) to 5× (small models) faster per call than the eager one, but every
    new shape (the first call, a smaller last minibatch, an ensemble that
    lost a diverged member) costs a compilation of seconds to a minute; see
    ``docs/vectorized.md``. Opt in with ``VectorizedEnsemble(compile=True)``.
    """

    def __init__(self, template: nn.Module, names: Sequence[str], loss_fn: LossFn) -> None:
        names = tuple(names)

        def member(params: Params, constants: dict[str, Tensor], xc: Tensor, yc: Tensor) -> Tensor:
            state = {**constants, **dict(zip(names, params))}
            return loss_fn(functional_call(template, state, (xc,)), yc)

        self._member = member
        self._compiled: dict[tuple[bool, bool], Callable] = {}

    def __call__(
        self,
        arch: Architecture,
        params: Params,
        x: Tensor,
        y: Tensor,
        *,
        chunk_size: int | None = None,
        x_batched: bool = False,
        y_batched: bool = False,
    ) -> tuple[Tensor, Params]:
        """``(losses [M], gradients)`` over the chunks of (x, y), as :func:`ensemble_gradient`."""
        from torch.func import grad_and_value

        key = (x_batched, y_batched)
        if key not in self._compiled:
            dims = (0, 0, 0 if x_batched else None, 0 if y_batched else None)
            self._compiled[key] = torch.compile(vmap(grad_and_value(self._member), in_dims=dims))
        fn = self._compiled[key]
        n = _num_samples(x, x_batched)
        step = n if chunk_size is None else chunk_size
        losses, grads = None, None
        params = tuple(p.detach() for p in params)
        for i in range(0, n, step):
            xc = x[:, i : i + step] if x_batched else x[i : i + step]
            yc = y[:, i : i + step] if y_batched else y[i : i + step]
            gs, lc = fn(params, arch.constants, xc, yc)
            weight = min(step, n - i) / n
            if weight != 1.0:
                gs, lc = tuple(weight * g for g in gs), weight * lc
            losses = lc if losses is None else losses + lc
            grads = tuple(gs) if grads is None else tuple(a + g for a, g in zip(grads, gs))
        return losses.detach(), tuple(g.detach() for g in grads)


def ensemble_modified_gradient_exact(
    loss_fns: Sequence[Callable[[Params], Tensor]],
    params: Params,
    coeffs: Tensor,
    *,
    method: str = DEFAULT_METHOD,
) -> tuple[Tensor, Params, Params]:
    """``(losses, G, G̃)`` with G̃ = g_m + 2μ_m·H_m g_m per member, from
    :func:`ensemble_egr_direction_exact`."""
    losses, g, hv = ensemble_egr_direction_exact(loss_fns, params, coeffs, method=method)
    return losses, g, tuple(gi + 2.0 * h for gi, h in zip(g, hv))


def ensemble_egr_direction_exact(
    loss_fns: Sequence[Callable[[Params], Tensor]],
    params: Params,
    coeffs: Tensor,
    *,
    method: str = DEFAULT_METHOD,
) -> tuple[Tensor, Params, Params]:
    """Per-member EGR parts g_m and H_m(μ_m g_m) through the package's one HVP.

    Calls :func:`implicit_reg.core.hvp.grad_and_hvp` on 𝓛(Θ) = Σ_m L_m(θ_m)
    with the direction V = μ ⊙ G (member m's block scaled by μ_m). The
    Hessian of 𝓛 is blockdiag(H_m), so the product is (μ_m H_m g_m)_m
    (Barrett & Dherin, ICLR 2021). With several chunks the full gradient is
    needed before the direction is known, so G is computed first and the
    HVP is accumulated chunk by chunk with that fixed direction.

    Args:
        loss_fns: from :func:`ensemble_loss_fns`.
        params: Θ, stacked.
        coeffs: μ, shape ``[M]``.
        method: HVP form, one of :data:`implicit_reg.core.hvp.HVP_METHODS`.

    Returns:
        ``(losses, G, HV)``: per-member losses ``[M]``, gradients and H_m(μ_m g_m),
        the arguments of :func:`implicit_reg.core.updates.egr_update`.
    """
    check_method(method)
    params = tuple(p.detach().requires_grad_(True) for p in params)

    def scale(g: Params) -> Params:
        return tuple(member_view(coeffs, x) * x for x in g)

    if len(loss_fns) == 1 and method == "double_backward":
        box: list[Tensor] = []

        def total(ps: Params) -> Tensor:
            box.append(loss_fns[0](ps))
            return box[-1].sum()

        g, hv = grad_and_hvp(total, params, scale, method=method)
        losses = box[0].detach()
    else:  # the torch.func forms and chunked data: gradient first, then H·(μ ⊙ G)
        losses, g = ensemble_gradient(loss_fns, params)
        v = scale(g)
        hv = None
        for f in loss_fns:
            _, hc = grad_and_hvp(lambda ps, f=f: f(ps).sum(), params, v, method=method)
            hv = hc if hv is None else tuple(a + b for a, b in zip(hv, hc))
    return losses, g, tuple(hv)


def ensemble_modified_gradient_fd(
    grad_at: Callable[[Params], tuple[Tensor, Params]],
    params: Params,
    coeffs: Tensor,
    *,
    radius: float,
) -> tuple[Tensor, Params, Params]:
    """``(losses, G, G̃)`` from :func:`ensemble_egr_direction_fd`, G̃ = g_m + 2·H_m v_m."""
    losses, g, hv = ensemble_egr_direction_fd(grad_at, params, coeffs, radius=radius)
    return losses, g, tuple(gi + 2.0 * h for gi, h in zip(g, hv))


def ensemble_egr_direction_fd(
    grad_at: Callable[[Params], tuple[Tensor, Params]],
    params: Params,
    coeffs: Tensor,
    *,
    radius: float,
) -> tuple[Tensor, Params, Params]:
    """Per-member finite-difference EGR parts (g_m, H_m v_m), two gradient evaluations in all.

    Member m's product H_m v_m with v_m = μ_m g_m is the forward difference of
    :func:`implicit_reg.core.modified_gradient.finite_difference_hvp`,

        H_m v_m ≈ [∇L_m(θ_m + ε_m v_m) − ∇L_m(θ_m)] / ε_m,   ε_m = r / ‖v_m‖,

    with ε_m scaled by member m's own ‖v_m‖ (so every member is perturbed by
    r in parameter space), and H_m v_m = 0 where v_m = 0.

    Args:
        grad_at: Θ ↦ (per-member losses, stacked gradients).
        params: Θ (not modified).
        coeffs: μ, shape ``[M]``.
        radius: r > 0.

    Returns:
        ``(losses, G, HV)`` as in :func:`ensemble_egr_direction_exact`.
    """
    if not radius > 0 or not math.isfinite(radius):
        raise ValueError(f"finite-difference radius must be positive and finite, got {radius}")
    params = tuple(p.detach() for p in params)
    losses, g = grad_at(params)
    v = tuple(member_view(coeffs, x) * x for x in g)
    vnorm = member_sq_norms(v).sqrt()  # float64, as flat_norm
    moving = vnorm > 0
    eps = torch.where(moving, radius / torch.where(moving, vnorm, 1.0), 0.0)
    eps = eps.to(params[0].dtype)
    shifted = tuple(p + member_view(eps, x) * x for p, x in zip(params, v))
    _, g_shift = grad_at(shifted)
    hv = tuple(
        torch.where(
            member_view(moving, gs),
            (gs - gi) / member_view(torch.where(moving, eps, 1.0), gs),
            0.0,
        )
        for gs, gi in zip(g_shift, g)
    )
    return losses, g, hv


# --------------------------------------------------------------------------- data order


class MinibatchOrder:
    """Endless minibatch indices: each epoch one ``torch.randperm(n, generator=generator)``
    cut into consecutive batches of ``batch_size`` (the last one may be smaller).

    An iterator whose position can be saved and restored (:meth:`state_dict`):
    the generator's state and the batches left in the current epoch, so a
    resumed run draws exactly the batches the uninterrupted one would.
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if n < 1:
            raise ValueError("the data set is empty")
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self._pending: list[Tensor] = []  # the batches left in this epoch

    def __iter__(self) -> MinibatchOrder:
        return self

    def __next__(self) -> Tensor:
        if not self._pending:
            perm = torch.randperm(self.n, generator=self.generator)
            self._pending = list(perm.split(self.batch_size))
        return self._pending.pop(0)

    def state_dict(self) -> dict:
        return {
            "generator": self.generator.get_state(),
            "pending": [t.clone() for t in self._pending],
        }

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self._pending = [t.clone() for t in state["pending"]]


def minibatch_indices(n: int, batch_size: int, generator: torch.Generator) -> MinibatchOrder:
    """The :class:`MinibatchOrder` of ``n`` samples in batches of ``batch_size``."""
    return MinibatchOrder(n, batch_size, generator)


# --------------------------------------------------------------------------- ensemble


def _per_member(name: str, values, size: int, *, allow_none: bool = False) -> list:
    """One value per member: a scalar is repeated; checked to be finite and >= 0."""
    if values is None and allow_none:
        return [None] * size
    if isinstance(values, (int, float)):
        values = [values] * size
    values = list(values)
    if len(values) != size:
        raise ValueError(f"need one {name} per member ({size}), got {len(values)}")
    for v in values:
        if v is None and allow_none:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{name} must be finite numbers >= 0, got {v!r}")
    return values


class VectorizedEnsemble:
    """M members trained together: GD, SGD (momentum) or EGR (exact or finite difference).

    The class holds the stacked state and calls the pure functions of this
    module. Member m follows exactly the update of its serial optimizer
    (``implicit_reg.core.optim.GD``, ``SGD`` or ``EGR``) with its own step
    ``lr[m]``, coefficient ``coeff[m]`` (EGR; None is h_m/4), inputs
    (``x[m]`` with ``x_per_member=True``), targets (``y[m]`` with
    ``y_per_member=True``, e.g. its own label-noise draw) and minibatch order
    (:func:`minibatch_indices` with ``torch.Generator().manual_seed(seeds[m])``;
    full batch when ``batch_size`` is None).

    Each :meth:`step` returns the metrics of the members still training, at
    the iterate before the update: the batch loss L_m(θ_t) and ‖∇L_m(θ_t)‖².
    A member whose loss is NaN, ±inf or above its ``max_loss`` has diverged
    at that step (:attr:`diverged_at`): its parameters stay at θ_t and it
    leaves the batched computation. :meth:`retire` takes members out for
    other reasons (a reached target), also frozen where they are.

    Args:
        models: the M initialized members (not modified).
        loss_fn: mean-reduced loss ``(outputs, targets) -> scalar``.
        x: training inputs ``[N, …]`` shared, or ``[M, N, …]`` with ``x_per_member``.
        y: targets ``[N, …]`` shared, or ``[M, N, …]`` with ``y_per_member``.
        optimizer: one of :data:`UPDATE_RULES`.
        lr: step size h, one per member or one for all.
        coeff: EGR's μ, one per member, one for all, or None (h_m/4).
        momentum, dampening, nesterov, weight_decay: SGD's, shared.
        egr_method: ``"exact"`` or ``"finite_difference"``.
        fd_radius: finite-difference radius r (None:
            :func:`implicit_reg.core.modified_gradient.default_fd_radius`).
        hvp_method: HVP form for exact EGR.
        batch_size: minibatch size (None: full batch).
        seeds: minibatch-order seed per member (needed with ``batch_size``).
        chunk_size: samples per physical chunk (None: one chunk).
        max_loss: divergence bound, one per member or one for all (inf: none).
        compile: evaluate gradients (GD, SGD, finite-difference EGR) with
            :class:`CompiledGradient` (``torch.compile``); exact EGR's
            double-backward HVP stays eager. Pays off on long runs only.
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        loss_fn: LossFn,
        x: Tensor,
        y: Tensor,
        *,
        optimizer: str = "gd",
        lr: float | Sequence[float],
        coeff: float | Sequence[float | None] | None = None,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        egr_method: str = "exact",
        fd_radius: float | None = None,
        hvp_method: str = DEFAULT_METHOD,
        batch_size: int | None = None,
        seeds: Sequence[int] | None = None,
        x_per_member: bool = False,
        y_per_member: bool = False,
        chunk_size: int | None = None,
        max_loss: float | Sequence[float] = math.inf,
        compile: bool = False,
    ) -> None:
        if optimizer not in UPDATE_RULES:
            raise ValueError(
                f"unknown optimizer {optimizer!r}; choose one of {', '.join(UPDATE_RULES)}"
            )
        if egr_method not in EGR_METHODS:
            raise ValueError(
                f"unknown EGR method {egr_method!r}; choose one of {', '.join(EGR_METHODS)}"
            )
        check_method(hvp_method)
        for name, value in (
            ("momentum", momentum),
            ("dampening", dampening),
            ("weight_decay", weight_decay),
        ):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov=True needs momentum > 0 and dampening = 0")
        if fd_radius is not None and (not math.isfinite(fd_radius) or fd_radius <= 0):
            raise ValueError(f"fd_radius must be a finite number > 0 or None, got {fd_radius!r}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
        self.arch, self.params = stack_models(models)
        size = self.arch.size
        ref = self.params[0]
        lrs = _per_member("lr", lr, size)
        coeffs = [
            igr_coeff(h) if c is None else c
            for h, c in zip(lrs, _per_member("coeff", coeff, size, allow_none=True))
        ]
        bounds = _max_losses(max_loss, size)
        for t, per_member, what in ((x, x_per_member, "x"), (y, y_per_member, "y")):
            if per_member and t.shape[0] != size:
                raise ValueError(
                    f"{what} is per member but has {t.shape[0]} rows for {size} members"
                )
        n = _num_samples(x, x_per_member)
        if _num_samples(y, y_per_member) != n:
            raise ValueError(
                f"inputs and targets differ in length: {n} vs {_num_samples(y, y_per_member)}"
            )
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise ValueError(f"batch_size must be an integer >= 1 or None, got {batch_size!r}")
        self.loss_fn = loss_fn
        self.x, self.y = x, y
        self.x_per_member, self.y_per_member = x_per_member, y_per_member
        self.optimizer, self.egr_method, self.hvp_method = optimizer, egr_method, hvp_method
        self.momentum, self.dampening, self.nesterov = momentum, dampening, nesterov
        self.weight_decay = weight_decay
        self.fd_radius = default_fd_radius(ref.dtype) if fd_radius is None else fd_radius
        self.batch_size, self.chunk_size = batch_size, chunk_size
        self.lr = torch.tensor(lrs, dtype=ref.dtype, device=ref.device)
        self.coeff = torch.tensor(coeffs, dtype=ref.dtype, device=ref.device)
        self.max_loss = torch.tensor(bounds, dtype=torch.float64)
        self.bufs: list[Tensor | None] = [None] * len(self.params)
        self._orders: list[MinibatchOrder] = []
        if batch_size is not None:
            if seeds is None or len(seeds) != size:
                raise ValueError("minibatch training needs one seed per member (seeds)")
            self._orders = [
                minibatch_indices(n, batch_size, torch.Generator().manual_seed(int(s)))
                for s in seeds
            ]
        self._compiled = (
            CompiledGradient(self.arch.template, self.arch.names, loss_fn) if compile else None
        )
        self.live = list(range(size))  # member ids still training, in stacked order
        self.diverged_at: list[int | None] = [None] * size
        self.final: list[dict[str, Tensor] | None] = [None] * size
        self.steps_done = 0

    @property
    def size(self) -> int:
        """M, the number of members (those no longer training included)."""
        return len(self.diverged_at)

    def _batch(self) -> tuple[Tensor, Tensor, bool, bool]:
        """The step's inputs and targets for the live members, and whether each is per member."""
        x, y = self.x, self.y
        if self.batch_size is None:
            return x, y, self.x_per_member, self.y_per_member
        idx = torch.stack([next(order) for order in self._orders]).to(x.device)  # [M, B]
        rows = torch.arange(len(self.live), device=x.device)[:, None]
        xb = x[rows, idx] if self.x_per_member else x[idx]  # [M, B, …]
        yb = y[rows.to(y.device), idx.to(y.device)] if self.y_per_member else y[idx.to(y.device)]
        return xb, yb, True, True

    def step(self) -> dict[int, dict[str, float]]:
        """One step for every live member; returns ``{member: {"loss", "grad_norm_sq"}}``."""
        if not self.live:
            raise ValueError("no member is training any more (all diverged or retired)")
        t = self.steps_done
        x, y, xb, yb = self._batch()
        fns = ensemble_loss_fns(
            self.arch, self.loss_fn, x, y, chunk_size=self.chunk_size, x_batched=xb, y_batched=yb
        )
        if self._compiled is None:

            def gradient(ps: Params) -> tuple[Tensor, Params]:
                return ensemble_gradient(fns, ps)
        else:

            def gradient(ps: Params) -> tuple[Tensor, Params]:
                return self._compiled(
                    self.arch, ps, x, y, chunk_size=self.chunk_size, x_batched=xb, y_batched=yb
                )

        hv = None
        if self.optimizer == "egr" and self.egr_method == "exact":
            losses, g, hv = ensemble_egr_direction_exact(
                fns, self.params, self.coeff, method=self.hvp_method
            )
        elif self.optimizer == "egr":
            losses, g, hv = ensemble_egr_direction_fd(
                gradient, self.params, self.coeff, radius=self.fd_radius
            )
        else:
            losses, g = gradient(self.params)
        gsq = member_sq_norms(g)
        lossd = losses.detach().double().cpu()
        ok = torch.isfinite(lossd) & (lossd <= self.max_loss)
        bad = (~ok).nonzero().flatten().tolist()
        # a member whose loss at θ_t is bad is frozen at θ_t: only then is θ_t copied (the
        # update below is in place)
        before = tuple(p.detach().clone() for p in self.params) if bad else None
        new = [p.detach() for p in self.params]
        # the serial optimizers' own update functions, with one step h_m per member
        if self.optimizer == "sgd":
            sgd_update(
                new, list(g), self.bufs, lr=self.lr, momentum=self.momentum,
                dampening=self.dampening, nesterov=self.nesterov, weight_decay=self.weight_decay,
            )  # fmt: skip
        elif self.optimizer == "egr":
            egr_update(new, list(g), list(hv), lr=self.lr)
        else:
            gd_update(new, list(g), lr=self.lr)
        out = {
            m: {"loss": loss, "grad_norm_sq": sq}
            for m, loss, sq in zip(self.live, lossd.tolist(), gsq.tolist())
        }
        self.steps_done += 1
        for i in bad:
            self.diverged_at[self.live[i]] = t
        self.params = tuple(new)
        if bad:  # frozen at θ_t, the iterate whose loss was bad, not at the update just made
            self._drop(bad, frozen_from=before)
        return out

    def outputs(self, x: Tensor, *, x_batched: bool) -> Tensor:
        """Every live member's outputs ``[M, n, …]``, without autograd."""
        return ensemble_outputs(self.arch, self.params, x, x_batched=x_batched)

    def gradient(
        self, x: Tensor, y: Tensor, *, x_batched: bool, chunk_size: int | None = None
    ) -> tuple[Tensor, Params]:
        """Per-member mean losses ``[M]`` and gradients of the live members over (x, y)
        (``y`` per member), in chunks (:func:`ensemble_gradient`)."""
        fns = ensemble_loss_fns(
            self.arch, self.loss_fn, x, y, chunk_size=chunk_size, x_batched=x_batched,
            y_batched=True,
        )  # fmt: skip
        return ensemble_gradient(fns, self.params)

    def retire(self, members: Iterable[int]) -> None:
        """Stop training ``members`` (they keep their current parameters)."""
        members = set(members)
        unknown = members - set(self.live)
        if unknown:
            raise ValueError(f"members {sorted(unknown)} are not training; live: {self.live}")
        self._drop([self.live.index(m) for m in sorted(members)], frozen_from=self.params)

    def _drop(self, positions: list[int], *, frozen_from: Params) -> None:
        """Take the members at stack ``positions`` out, recording their parameters from ``frozen_from``."""
        for i in positions:
            m = self.live[i]
            self.final[m] = {k: p[i].detach().clone() for k, p in zip(self.arch.names, frozen_from)}
        keep_pos = [i for i in range(len(self.live)) if i not in set(positions)]
        keep = torch.tensor(keep_pos, dtype=torch.long, device=self.params[0].device)
        self.live = [self.live[i] for i in keep_pos]
        self.arch = self.arch.select(keep)
        self.params = tuple(p[keep] for p in self.params)
        self.bufs = [None if b is None else b[keep] for b in self.bufs]
        self.lr, self.coeff = self.lr[keep], self.coeff[keep]
        self.max_loss = self.max_loss[keep.cpu()]
        if self.x_per_member:
            self.x = self.x[keep.to(self.x.device)]
        if self.y_per_member:
            self.y = self.y[keep.to(self.y.device)]
        self._orders = [self._orders[i] for i in keep_pos] if self._orders else []

    def state_dict(self) -> dict:
        """Everything :meth:`step` depends on besides the constructor's arguments: the
        live members' stacked parameters and momentum buffers, their data order, the
        retired members' last parameters, and the step count (for checkpoints)."""
        return {
            "live": list(self.live),
            "params": [p.clone() for p in self.params],
            "bufs": [None if b is None else b.clone() for b in self.bufs],
            "orders": [o.state_dict() for o in self._orders],
            "final": [None if f is None else dict(f) for f in self.final],
            "diverged_at": list(self.diverged_at),
            "steps_done": self.steps_done,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` into an ensemble built with the same arguments."""
        if len(state["final"]) != self.size or self.live != list(range(self.size)):
            raise ValueError("load_state_dict needs a freshly built ensemble of the same members")
        gone = [i for i in range(self.size) if i not in set(state["live"])]
        if gone:
            self._drop(gone, frozen_from=self.params)
        if self.live != list(state["live"]):
            raise ValueError("the saved live members do not match this ensemble")
        like = self.params[0]
        # copies: the steps update both in place, never the caller's saved state
        self.params = tuple(p.to(device=like.device, copy=True) for p in state["params"])
        self.bufs = [
            None if b is None else b.to(device=like.device, copy=True) for b in state["bufs"]
        ]
        for order, saved in zip(self._orders, state["orders"]):
            order.load_state_dict(saved)
        self.final = [None if f is None else dict(f) for f in state["final"]]
        self.diverged_at = list(state["diverged_at"])
        self.steps_done = int(state["steps_done"])

    def member_params(self, m: int) -> dict[str, Tensor]:
        """Member ``m``'s trainable parameters by name (its last iterate)."""
        if isinstance(m, bool) or not isinstance(m, int) or not 0 <= m < self.size:
            raise ValueError(f"no member {m!r}; members are 0..{self.size - 1}")
        if self.final[m] is not None:
            return dict(self.final[m])
        i = self.live.index(m)
        return {k: p[i].detach().clone() for k, p in zip(self.arch.names, self.params)}

    def load_member(self, m: int, model: nn.Module) -> nn.Module:
        """Copy member ``m``'s parameters into ``model`` (same architecture); returns it."""
        return load_trainable_params(model, self.member_params(m))


def _max_losses(values, size: int) -> list[float]:
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values] * size
    values = [float(v) for v in values]
    if len(values) != size:
        raise ValueError(f"need one max_loss per member ({size}), got {len(values)}")
    if any(not v > 0 for v in values):
        raise ValueError(f"max_loss must be > 0 (inf: no bound), got {values}")
    return values
