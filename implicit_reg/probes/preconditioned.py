"""Preconditioned sharpness λ_max(P⁻¹H): the edge of stability of adaptive methods.

Cohen et al. 2022, "Adaptive gradient methods at the edge of stability"
(arXiv 2207.14484): a preconditioned method θ ← θ − η P⁻¹ m with a diagonal
P > 0 is linearly stable on the quadratic model of L only while the
*preconditioned sharpness* λ_max(P⁻¹H) stays below a threshold, and full-batch
Adam/RMSProp train with λ_max(P_t⁻¹H_t) rising to that threshold and hovering
there ("adaptive edge of stability"), while λ_max(H) itself need not settle:

    Adam (EMA momentum β₁):            λ_max(P⁻¹H) ≤ (2 + 2β₁) / ((1 − β₁)·η)   (38/η at β₁ = 0.9)
    RMSProp, preconditioned GD:        λ_max(P⁻¹H) ≤ 2/η
    RMSProp with heavy-ball momentum μ (torch's ``momentum``): (2 + 2μ)/η

P⁻¹H is not symmetric, but it is similar to the symmetric

    A = P^{-1/2} H P^{-1/2},   P⁻¹H = P^{-1/2} A P^{1/2},

so both have the same (real) eigenvalues, and u is an eigenvector of A iff
P^{-1/2}u is a (right) eigenvector of P⁻¹H. :class:`PreconditionedOperator`
wraps any operator with the flat-vector interface (a
:class:`~implicit_reg.probes.operator.HessianOperator`, a GGN, an explicit
:class:`~implicit_reg.probes.operator.MatrixOperator`) and scales vectors by
d = P^{-1/2} around its ``matvec``/``matmat``: A v = d ⊙ H(d ⊙ v). The
package's one :func:`~implicit_reg.probes.eigen.lanczos` then runs on A
unchanged, and its certificate is the explicit residual ‖A u − λu‖ of the
symmetric operator (an eigenvalue of A, hence of P⁻¹H, lies within it).

The preconditioner is read from a torch optimizer's state, exactly as the
optimizer's own update divides by it (torch 2.x ``adam.py``/``rmsprop.py``):

    Adam, AdamW:  P = √v_t / √(1 − β₂^t) + ε        (v_t = ``exp_avg_sq``, t = ``step``;
                  ``max_exp_avg_sq`` instead of v_t when ``amsgrad``)
    RMSprop:      P = √v_t + ε                     (v_t = ``square_avg``; no bias correction)
    centered:     P = √(v_t − g̅_t²) + ε             (g̅_t = ``grad_avg``)
    implicit_reg.Adam: P = ψ(v_t/b₂), b₂ = 1 − β₂^t with ``bias_correction`` (else 1),
                  ψ(v) = √v + ε (``eps_placement="outside"``) or √(v + ε) ("inside")

This is the P of the step just taken (the one stored in the state), as in
Cohen et al.'s measurements. ε is added *outside* the square root and after
bias correction, as torch does. Adam's first-moment bias correction
1/(1 − β₁^t) scales the step, not P; it → 1 as t grows and the threshold
above is the t → ∞ one. Coupled weight decay (``Adam(weight_decay=λ)``)
adds λ·I to the Hessian the optimizer sees; measure it by putting the
penalty into the loss. AdamW's decoupled decay θ ← (1 − η·λ)θ acts outside P
and is in neither H nor the threshold.

Nothing here changes the model (the wrapped operator runs inside
:func:`~implicit_reg.probes.state.preserved`) or the optimizer's state
(P is built out of place).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..core.optim import Adam
from .eigen import EigResult, lanczos

__all__ = [
    "PreconditionedOperator",
    "adaptive_preconditioner",
    "adaptive_eos_threshold",
    "preconditioned_sharpness",
]

_SUPPORTED = (
    "torch.optim.Adam, AdamW (amsgrad or not), RMSprop (centered or not) and implicit_reg.Adam"
)


def _scalar(x) -> float:
    return float(x.item()) if isinstance(x, Tensor) else float(x)


def _check_optimizer(optimizer) -> str:
    if isinstance(optimizer, (torch.optim.Adam, Adam)):  # AdamW subclasses torch's Adam
        return "adam"
    if isinstance(optimizer, torch.optim.RMSprop):
        return "rmsprop"
    raise ValueError(f"optimizer must be one of {_SUPPORTED}, got {type(optimizer).__name__}")


def _group_of(optimizer, param: Tensor) -> dict | None:
    for group in optimizer.param_groups:
        if any(p is param for p in group["params"]):
            return group
    return None


def _param_preconditioner(kind: str, group: dict, state: dict) -> Tensor:
    """P for one parameter, out of place (the state is only read)."""
    eps = _scalar(group["eps"])
    if kind == "adam":
        beta2 = _scalar(group["betas"][1])
        t = _scalar(state["step"])
        v = state["max_exp_avg_sq"] if group.get("amsgrad", False) else state["exp_avg_sq"]
        bc2 = 1.0 - beta2**t if group.get("bias_correction", True) else 1.0
        if group.get("eps_placement", "outside") == "inside":  # implicit_reg.Adam's option
            return (v / bc2 + eps).sqrt()
        # torch: denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        return v.sqrt() / math.sqrt(bc2) + eps
    v = state["square_avg"]
    if group.get("centered", False):
        # torch: avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
        v = v.addcmul(state["grad_avg"], state["grad_avg"], value=-1)
    return v.sqrt() + eps


def adaptive_preconditioner(optimizer, params: Sequence[Tensor], names=None) -> list[Tensor]:
    """The diagonal P (one tensor per parameter, shaped like it) that ``optimizer``
    divides its last step by, read from its state (see the module docstring).

    Args:
        optimizer: a ``torch.optim.Adam``, ``AdamW`` or ``RMSprop`` that has taken
            at least one step.
        params: the parameter tensors (the very objects the optimizer holds).
        names: labels for the error messages (default: their positions).

    Raises:
        ValueError: another optimizer; a parameter the optimizer does not hold or
            has not stepped yet; complex parameters; a P that is not finite and
            positive (e.g. ``eps=0`` with a zero second moment).
    """
    kind = _check_optimizer(optimizer)
    names = [f"#{i}" for i in range(len(params))] if names is None else list(names)
    out = []
    for name, p in zip(names, params):
        group = _group_of(optimizer, p)
        if group is None:
            raise ValueError(
                f"parameter {name} is not in the optimizer's param_groups "
                "(build the optimizer on this model's parameters)"
            )
        state = optimizer.state.get(p, {})
        if "step" not in state:
            raise ValueError(
                f"the optimizer has no state for parameter {name} yet: its preconditioner "
                "exists only after a first optimizer.step() with a gradient for it"
            )
        if p.is_complex():
            raise ValueError(f"parameter {name} is complex; only real parameters are supported")
        with torch.no_grad():
            P = _param_preconditioner(kind, group, state).detach()
        if not bool(torch.isfinite(P).all()) or not bool((P > 0).all()):
            raise ValueError(
                f"the preconditioner of parameter {name} is not finite and positive "
                f"(min {float(P.min()):.3g}); with eps=0 a zero second moment gives P = 0"
            )
        out.append(P)
    return out


def _flat_preconditioner(op, precond) -> Tensor:
    """A user-given diagonal P as a float64 flat vector of length ``op.dim``."""
    if isinstance(precond, Tensor):
        if precond.dim() != 1 or precond.shape[0] != op.dim:
            raise ValueError(
                f"a flat preconditioner must have shape ({op.dim},), got {tuple(precond.shape)}"
            )
        flat = precond
    elif isinstance(precond, (list, tuple)) and all(isinstance(t, Tensor) for t in precond):
        shapes = getattr(op, "shapes", None)
        if shapes is not None:
            got = [tuple(t.shape) for t in precond]
            if got != [tuple(s) for s in shapes]:
                raise ValueError(
                    "a preconditioner list needs one tensor per measured parameter, shaped "
                    f"like it: expected {[tuple(s) for s in shapes]}, got {got}"
                )
        flat = torch.cat([t.reshape(-1) for t in precond]) if precond else torch.empty(0)
        if flat.shape[0] != op.dim:
            raise ValueError(f"the preconditioner has {flat.shape[0]} entries, need {op.dim}")
    else:
        raise ValueError(
            "precond must be a flat tensor of shape (dim,) or a list of tensors, one per "
            f"measured parameter; got {type(precond).__name__}"
        )
    if flat.is_complex():
        raise ValueError("the preconditioner must be real")
    flat = flat.detach().to(device=op.device, dtype=torch.float64)
    if not bool(torch.isfinite(flat).all()) or not bool((flat > 0).all()):
        raise ValueError(
            "the preconditioner must be finite and positive everywhere "
            f"(min {float(flat.min()):.3g})"
        )
    return flat


class PreconditionedOperator:
    """A = P^{-1/2} H P^{-1/2} for a diagonal P > 0, on flat vectors; same eigenvalues as P⁻¹H.

    Args:
        op: the curvature operator H (``matvec``, optionally ``matmat``,
            ``dim``, ``dtype``, ``device``, ``n_hvp``).
        precond: the diagonal of P: a flat tensor ``(dim,)`` or a list of
            tensors shaped like the measured parameters (``op.shapes``);
            finite and positive.

    Attributes:
        base: the wrapped operator.
        p: P as a float64 flat vector.
        dim, dtype, device: those of ``op``.
        n_hvp: ``op.n_hvp`` (one product with A costs one product with H).

    Use :meth:`from_optimizer` to read P from an Adam/RMSprop state.
    """

    def __init__(self, op, precond):
        self.base = op
        self.p = _flat_preconditioner(op, precond)
        self.dim, self.dtype, self.device = op.dim, op.dtype, op.device
        self._d = self.p.rsqrt().to(op.dtype)  # d = P^{-1/2}

    @classmethod
    def from_optimizer(cls, op, optimizer) -> PreconditionedOperator:
        """Wrap ``op`` (a :class:`~implicit_reg.probes.operator.CurvatureOperator`:
        it knows its model and measured parameter names) with the P of
        :func:`adaptive_preconditioner` for exactly its measured parameters."""
        model, names = getattr(op, "model", None), getattr(op, "names", None)
        if model is None or names is None:
            raise ValueError(
                "from_optimizer needs a CurvatureOperator (with .model and .names); "
                "for other operators pass precond= explicitly"
            )
        named = dict(model.named_parameters())
        params = [named[n] for n in names]
        return cls(op, adaptive_preconditioner(optimizer, params, names=names))

    @property
    def n_hvp(self) -> int:
        return self.base.n_hvp

    def _check(self, x: Tensor, ndim: int) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != ndim or x.shape[0] != self.dim:
            shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
            want = f"({self.dim},)" if ndim == 1 else f"({self.dim}, b)"
            raise ValueError(f"expected shape {want}, got {shape}")
        return x.to(device=self.device, dtype=self.dtype)

    def matvec(self, vec: Tensor) -> Tensor:
        """A v = d ⊙ H(d ⊙ v), d = P^{-1/2}."""
        vec = self._check(vec, 1)
        return self._d * self.base.matvec(self._d * vec)

    def matmat(self, mat: Tensor) -> Tensor:
        """A V for a ``(dim, b)`` block: one ``op.matmat`` (or ``matvec`` per column)."""
        mat = self._check(mat, 2)
        d = self._d[:, None]
        if hasattr(self.base, "matmat"):
            return d * self.base.matmat(d * mat)
        return d * torch.stack([self.base.matvec(c) for c in (d * mat).T], dim=1)

    def parameter_directions(self, vectors: Tensor) -> Tensor:
        """Right eigenvectors of P⁻¹H from eigenvectors u of A: P^{-1/2}u, unit columns
        (float64). Accepts ``(dim,)`` or ``(dim, k)``."""
        squeeze = vectors.dim() == 1
        V = vectors[:, None] if squeeze else vectors
        if V.dim() != 2 or V.shape[0] != self.dim:
            raise ValueError(f"expected shape ({self.dim},) or ({self.dim}, k)")
        W = self.p.rsqrt()[:, None] * V.to(device=self.device, dtype=torch.float64)
        W = W / W.norm(dim=0, keepdim=True)
        return W[:, 0] if squeeze else W


def preconditioned_sharpness(
    op, optimizer=None, *, precond=None, k: int = 1, **lanczos_kwargs
) -> EigResult:
    """Top-k eigenvalues of P⁻¹H, certified: :func:`~implicit_reg.probes.eigen.lanczos`
    on :class:`PreconditionedOperator` (Cohen et al. 2022, arXiv 2207.14484).

    Args:
        op: the curvature operator H, e.g. ``HessianOperator(model, loss_fn, data)``.
        optimizer: an Adam/AdamW/RMSprop after its first step; P is read from
            its state for the operator's measured parameters. Or give
        precond: a diagonal P (flat ``(dim,)`` or one tensor per parameter).
        k: number of eigenvalues (largest first).
        **lanczos_kwargs: passed to ``lanczos`` (``tol``, ``max_iter``,
            ``seed``, ``v0`` for a warm start, ``which``, ``block_size``, ...).

    Returns:
        the :class:`~implicit_reg.probes.eigen.EigResult` of A = P^{-1/2}HP^{-1/2}:
        ``eigenvalues`` are those of P⁻¹H; ``residuals`` are ‖Au − λu‖;
        ``eigenvectors`` are A's (map them with
        :meth:`PreconditionedOperator.parameter_directions`). Compare
        ``eigenvalues[0]`` with :func:`adaptive_eos_threshold`.
    """
    if (optimizer is None) == (precond is None):
        raise ValueError("give exactly one of optimizer and precond")
    if optimizer is not None:
        pre = PreconditionedOperator.from_optimizer(op, optimizer)
    else:
        pre = PreconditionedOperator(op, precond)
    return lanczos(pre, k, **lanczos_kwargs)


def adaptive_eos_threshold(optimizer, group: int = 0) -> float:
    """The stability threshold of λ_max(P⁻¹H) for ``optimizer.param_groups[group]``
    (Cohen et al. 2022, arXiv 2207.14484):

        Adam / AdamW:  (2 + 2β₁) / ((1 − β₁)·η)
        RMSprop:       2/η, and (2 + 2μ)/η with torch's heavy-ball ``momentum`` μ

    with η = ``lr``. On the quadratic model with P frozen, one eigen-direction of
    P⁻¹H with eigenvalue λ evolves by a linear two-term recurrence whose
    spectral radius crosses 1 exactly at this λ (tested). Adam's is the
    t → ∞ threshold (first-moment bias correction → 1).
    """
    kind = _check_optimizer(optimizer)
    groups = optimizer.param_groups
    if isinstance(group, bool) or not isinstance(group, int) or not 0 <= group < len(groups):
        raise ValueError(f"group must be an int in [0, {len(groups)}), got {group!r}")
    g = groups[group]
    lr = _scalar(g["lr"])
    if not lr > 0:
        raise ValueError(f"the learning rate must be positive, got {lr}")
    if kind == "adam":
        beta1 = _scalar(g["betas"][0])
        return (2.0 + 2.0 * beta1) / ((1.0 - beta1) * lr)
    mu = _scalar(g.get("momentum", 0.0))
    return (2.0 + 2.0 * mu) / lr
