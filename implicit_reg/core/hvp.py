"""The one Hessian-vector product of the package.

Every caller that needs curvature goes through :func:`grad_and_hvp`: EGR's
exact gradient, power iteration, Lanczos, Hutchinson, Hutch++ and the
spectral density. It returns the gradient and one HVP from a single pass,

    g = ∇L(θ),    Hv = ∇²L(θ) v      (v = g when ``vec`` is None),

because EGR needs exactly the pair (g, Hg) and the probes need Hv for many v.

Three ways of computing the product are offered (Pearlmutter 1994):

- ``"double_backward"``: reverse-over-reverse with ``torch.autograd.grad``
  and ``create_graph=True``. Works on any loss closure whose graph reaches the
  given leaf tensors, including a user's ``nn.Module`` parameters.
- ``"vjp"``: reverse-over-reverse with ``torch.func.vjp(torch.func.grad(f))``.
- ``"jvp"``: forward-over-reverse with ``torch.func.jvp(torch.func.grad(f))``.

The two ``torch.func`` forms need ``f`` to be a pure function of its inputs.
``benchmarks/bench_hvp.py`` measures the three; the fastest on CPU is
:data:`DEFAULT_METHOD`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = [
    "HVP_METHODS",
    "DEFAULT_METHOD",
    "grad_and_hvp",
    "hvp_of_graph",
    "check_method",
    "check_scalar_loss",
]

HVP_METHODS = ("double_backward", "vjp", "jvp")
DEFAULT_METHOD = "double_backward"

Params = tuple[Tensor, ...]


def check_method(method: str) -> str:
    """Return ``method`` if it names an HVP form, else raise ``ValueError``."""
    if method not in HVP_METHODS:
        raise ValueError(f"unknown HVP method {method!r}; choose one of {', '.join(HVP_METHODS)}")
    return method


def check_scalar_loss(loss: Tensor, what: str = "the loss") -> Tensor:
    """Return ``loss`` if it is a 0-dim tensor, else raise ``ValueError`` naming ``what``
    and what it got (a shape or a type). The one such check of the package."""
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        got = f"shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(f"{what} must be a scalar tensor, got {got}")
    return loss


def hvp_of_graph(
    grads: Sequence[Tensor],
    params: Sequence[Tensor],
    vec: Sequence[Tensor],
    *,
    retain_graph: bool = False,
) -> Params:
    """H v from gradients g = ∇L that still carry their graph: H v = ∇_θ(g·v).

    The second half of :func:`grad_and_hvp`'s ``"double_backward"``, also used
    when the caller already ran ``loss.backward(create_graph=True)`` and
    ``.grad`` holds g with its graph. A g without a graph is constant in θ
    (its rows of H are zero). Returns detached tensors shaped like ``params``.
    ``retain_graph=True`` keeps g's graph for further directions: the forward
    pass and first backward are then paid once for many products H v_1, H v_2, …
    (the looped block product of :class:`implicit_reg.probes.operator.HessianOperator`).
    """
    params = tuple(params)
    needs = [g.requires_grad for g in grads]
    if not any(needs):  # loss is linear in params: H = 0
        return tuple(torch.zeros_like(p) for p in params)
    with torch.enable_grad():
        hv = torch.autograd.grad(
            [g for g, n in zip(grads, needs) if n],
            params,
            grad_outputs=[x.detach() for x, n in zip(vec, needs) if n],
            allow_unused=True,
            retain_graph=retain_graph,
        )
    return tuple(torch.zeros_like(p) if h is None else h.detach() for h, p in zip(hv, params))


def grad_and_hvp(
    loss_fn: Callable[[Params], Tensor],
    params: Sequence[Tensor],
    vec: Sequence[Tensor] | Callable[[Params], Sequence[Tensor]] | None = None,
    *,
    method: str = DEFAULT_METHOD,
) -> tuple[Params, Params]:
    """Gradient and Hessian-vector product of a scalar loss.

    Computes ``g = ∇_θ L(θ)`` and ``H v`` with ``H = ∇²_θ L(θ)``. When ``vec``
    is None the product is ``H g`` with ``g`` detached, which is the term of
    the EGR gradient ∇(L + μ‖∇L‖²) = g + 2μ·H g (Barrett & Dherin, ICLR 2021).

    Args:
        loss_fn: maps the tuple ``params`` to a scalar loss. For
            ``"double_backward"`` it may ignore its argument and close over
            leaf tensors, as long as those leaves are ``params``.
        params: the tensors to differentiate with respect to.
        vec: direction, one tensor per parameter; or a function of the
            (detached) gradient returning the direction, e.g. ``μ ⊙ g`` for
            per-group EGR coefficients; or None for ``v = g``.
        method: one of :data:`HVP_METHODS`.

    Returns:
        ``(g, Hv)``, each a tuple shaped like ``params``, both detached.
    """
    check_method(method)
    params = tuple(params)

    def direction(g: Params) -> Params:
        v = g if vec is None else vec(g) if callable(vec) else vec
        v = tuple(x.detach() for x in v)
        if len(v) != len(params) or any(x.shape != p.shape for x, p in zip(v, params)):
            raise ValueError("vec must have one tensor per parameter, with matching shapes")
        return v

    if method == "double_backward":
        with torch.enable_grad():
            loss = check_scalar_loss(loss_fn(params))
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
            grads = tuple(torch.zeros_like(p) if g is None else g for g, p in zip(grads, params))
            v = direction(tuple(g.detach() for g in grads))
            hv = hvp_of_graph(grads, params, v)
        return tuple(g.detach() for g in grads), hv

    from torch.func import grad, jvp, vjp

    def scalar(*ps: Tensor) -> Tensor:
        return check_scalar_loss(loss_fn(ps))

    primals = tuple(p.detach() for p in params)
    grad_fn = grad(scalar, argnums=tuple(range(len(primals))))
    if method == "vjp":
        g, vjp_fn = vjp(grad_fn, *primals)
        hv = vjp_fn(direction(tuple(g)))  # H symmetric: vᵀH = (Hv)ᵀ
        return tuple(g), tuple(hv)
    # forward-over-reverse; a direction that depends on g needs g first
    v = direction(tuple(grad_fn(*primals))) if vec is None or callable(vec) else direction(())
    try:
        g, hv = jvp(grad_fn, primals, v)
    except RuntimeError as err:
        if "ZeroTensors are immutable" not in str(err):
            raise
        raise RuntimeError(
            "grad_and_hvp(method='jvp') hit a PyTorch bug in forward-over-reverse AD "
            "(pytorch/pytorch#123996: F.mse_loss/nn.MSELoss with reduction='mean' under "
            "jvp(grad(f))); use method='double_backward' or 'vjp', or write the loss as "
            "((out - y) ** 2).mean()"
        ) from err
    return tuple(g), tuple(hv)
