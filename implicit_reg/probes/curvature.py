"""Gauss–Newton and Fisher matrices as operators: J^T Λ J over the data.

All three have the form (Martens 2020, "New insights and perspectives on the
natural gradient method", JMLR 21; Schraudolph 2002)

    M = (1/N)·Σ_c J_cᵀ Λ_c J_c,     J_c = ∂f_θ(x_c)/∂θ_S,

with f the model's outputs on chunk c and Λ_c a PSD matrix in output space:

- :class:`GGNOperator`, the generalized Gauss–Newton matrix: Λ_c is the
  Hessian of the size-weighted chunk loss n_c·ℓ(f, y) in the outputs,
  computed with the package's one HVP (:func:`implicit_reg.core.hvp.grad_and_hvp`)
  on ``f ↦ n_c·loss_fn(f, y)``. It is H without the term that carries the
  second derivatives of the network; PSD for any loss convex in f (squared
  error, cross-entropy). Use it for a PSD stand-in for H (at the edge of
  stability its λ_max tracks that of H).
- :class:`FisherOperator` with ``kind="exact"``: the Fisher of the model's
  predictive distribution p(y|f), Λ = s·E_{y∼p(·|f)}[g gᵀ] per sample, with
  g = ∂(−log p(y|f))/∂f, summed over the classes in closed form. For
  cross-entropy (a categorical likelihood on logits) and squared error (a
  Gaussian one) it equals the GGN.
- ``kind="mc"``: the same expectation from ``mc_samples`` targets drawn from
  p(·|f) (seeded by ``seed``; the same draws on every pass, so it is one fixed
  PSD operator). Cheaper than exact when there are many classes.
- ``kind="empirical"``: the empirical Fisher, g taken at the observed y
  (Kunstner, Balles & Hennig, NeurIPS 2019: not a curvature matrix in
  general; offered because it is widely used).

Likelihoods: ``nn.CrossEntropyLoss()`` (mean; logits of shape ``(n, C)``;
−log p = ℓ, scale s = 1) and ``nn.MSELoss()`` (mean over all n·C entries;
p = N(f, I/2), −log p = ‖f − y‖² + const, s = 1/C). Other losses: pass
``likelihood="categorical"`` or ``"gaussian"`` when the loss is that one.

The product with a block of vectors V runs as one pass per chunk: one
forward and ``vjp`` (J^T u), J v from the ``vjp`` of that linear map (so
train-mode dropout and BatchNorm see one forward), and both under
:func:`torch.func.vmap` over the columns of V.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import vjp, vmap

from ..core.hvp import grad_and_hvp
from .batches import BatchLoss, Term
from .operator import CurvatureOperator
from .selection import Selection
from .state import DEFAULT_MODE

__all__ = ["GGNOperator", "FisherOperator", "FISHER_KINDS", "LIKELIHOODS", "infer_likelihood"]

#: the ``kind`` of :class:`FisherOperator`: the exact expectation, Monte Carlo, or empirical
FISHER_KINDS = ("exact", "mc", "empirical")
LIKELIHOODS = ("categorical", "gaussian")


class _OutputSpaceOperator(CurvatureOperator):
    """M = (1/N)·Σ_c J_cᵀ Λ_c J_c; subclasses give Λ_c u (batched over u)."""

    def __init__(self, model, loss_fn, data, **kw):
        if kw.get("batch_loss") is not None:
            raise ValueError(
                f"{type(self).__name__} needs the model's outputs: give (inputs, targets) "
                "batches and loss_fn, not batch_loss"
            )
        super().__init__(model, loss_fn, data, **kw)

    def _output_block(self, term: Term, out: Tensor) -> Callable[[Tensor], Tensor]:
        """u ↦ Λ_c u for one output-shaped u (called under vmap)."""
        raise NotImplementedError

    def _block_product(self, term: Term, params, vs):
        primals = tuple(p.detach() for p in params)
        out, jt = vjp(lambda *ps: term.output(ps), *primals)  # jt(u) = Jᵀu
        _, jv_of = vjp(jt, torch.zeros_like(out))  # jv_of(v) = (J v,): Jᵀ is linear in u
        lam = self._output_block(term, out.detach())

        def one(*v):
            (jv,) = jv_of(tuple(v))
            return jt(lam(jv))

        return vmap(one, randomness="same")(*vs)


class GGNOperator(_OutputSpaceOperator):
    """G = (1/N)·Σ_c J_cᵀ ∇²_f[n_c·ℓ(f, y_c)] J_c, the generalized Gauss–Newton matrix.

    Same arguments as :class:`implicit_reg.probes.operator.CurvatureOperator`
    (data as ``(inputs, targets)``; ``batch_loss`` is not accepted, the
    outputs are needed). PSD whenever ℓ is convex in the outputs.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        data,
        *,
        chunk_size: int | None = None,
        mode: str = DEFAULT_MODE,
        seed: int = 0,
        params: Selection = None,
        block_size: int | None = None,
        block_memory: int | None = None,
        batch_loss: BatchLoss | None = None,
        process_group=None,
    ):
        super().__init__(
            model, loss_fn, data, params=params, chunk_size=chunk_size, block_size=block_size,
            block_memory=block_memory,
            mode=mode, seed=seed, batch_loss=batch_loss, process_group=process_group,
        )  # fmt: skip

    def _output_block(self, term, out):
        def lam(u):
            return grad_and_hvp(lambda o: term.output_loss(o[0]), (out,), (u,), method="vjp")[1][0]

        return lam


def infer_likelihood(loss_fn) -> str:
    """``"categorical"`` for a mean ``nn.CrossEntropyLoss``, ``"gaussian"`` for a mean
    ``nn.MSELoss``; ``ValueError`` otherwise (pass ``likelihood=`` explicitly)."""
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        if loss_fn.reduction != "mean" or loss_fn.weight is not None or loss_fn.label_smoothing:
            raise ValueError(
                "the Fisher needs nn.CrossEntropyLoss() with reduction='mean', no class "
                "weights and no label smoothing"
            )
        return "categorical"
    if isinstance(loss_fn, nn.MSELoss):
        if loss_fn.reduction != "mean":
            raise ValueError("the Fisher needs nn.MSELoss() with reduction='mean'")
        return "gaussian"
    raise ValueError(
        f"cannot tell the likelihood of loss {loss_fn!r}; pass likelihood='categorical' "
        "(mean cross-entropy on logits) or 'gaussian' (mean squared error)"
    )


class FisherOperator(_OutputSpaceOperator):
    """F = (1/N)·Σ_i s·J_iᵀ E_{y∼p(·|f_i)}[g gᵀ] J_i (``kind="exact"`` or ``"mc"``), or
    the empirical Fisher with g at the observed y_i (``kind="empirical"``).

    Args:
        model, loss_fn, data: as for :class:`GGNOperator`.
        kind: ``"exact"`` (closed-form expectation over classes / the
            Gaussian), ``"mc"`` (``mc_samples`` draws per sample) or
            ``"empirical"``.
        mc_samples: targets drawn per sample for ``kind="mc"``.
        likelihood: ``"categorical"`` or ``"gaussian"``; None: from ``loss_fn``.
        seed: seeds the Monte-Carlo targets (the same on every pass) and
            train-mode dropout.
        Others: as :class:`implicit_reg.probes.operator.CurvatureOperator`.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        data,
        *,
        kind: str = "exact",
        mc_samples: int = 1,
        likelihood: str | None = None,
        chunk_size: int | None = None,
        mode: str = DEFAULT_MODE,
        seed: int = 0,
        params: Selection = None,
        block_size: int | None = None,
        block_memory: int | None = None,
        batch_loss: BatchLoss | None = None,
        process_group=None,
    ):
        if kind not in FISHER_KINDS:
            raise ValueError(f"kind must be one of {', '.join(FISHER_KINDS)}, got {kind!r}")
        if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
            raise ValueError(f"mc_samples must be a positive int, got {mc_samples!r}")
        if likelihood is None:
            likelihood = infer_likelihood(loss_fn)
        if likelihood not in LIKELIHOODS:
            raise ValueError(
                f"likelihood must be one of {', '.join(LIKELIHOODS)}, got {likelihood!r}"
            )
        self.kind, self.mc_samples, self.likelihood = kind, mc_samples, likelihood
        super().__init__(
            model, loss_fn, data, params=params, chunk_size=chunk_size, block_size=block_size,
            block_memory=block_memory,
            mode=mode, seed=seed, batch_loss=batch_loss, process_group=process_group,
        )  # fmt: skip

    def _output_block(self, term, out):
        n = term.size
        if self.likelihood == "categorical":
            if out.dim() != 2:
                raise ValueError(
                    f"a categorical Fisher needs logits of shape (n, C), got {tuple(out.shape)}"
                )
            p = torch.softmax(out, dim=1)
            if self.kind == "exact":
                # Σ_c p_c (p − e_c)(p − e_c)ᵀ = diag(p) − p pᵀ
                return lambda u: p * u - p * (p * u).sum(1, keepdim=True)
            if self.kind == "empirical":
                y = term.targets
                t = (
                    y.to(p.dtype)
                    if y.shape == p.shape
                    else nn.functional.one_hot(y, p.shape[1]).to(p.dtype)
                )
                gs = (p - t)[None]  # (1, n, C)
            else:
                draws = torch.multinomial(
                    p, self.mc_samples, replacement=True, generator=self._pass_gen
                )
                gs = p[None] - nn.functional.one_hot(draws.T, p.shape[1]).to(p.dtype)  # (M, n, C)
            scale = 1.0
        else:
            per_sample = out[0].numel() if out.dim() > 0 and n > 0 else 1
            scale = 1.0 / per_sample  # s: MSELoss averages over the per-sample entries too
            if self.kind == "exact":
                return lambda u: (2.0 * scale) * u  # E[g gᵀ] = 2 I for p = N(f, I/2)
            if self.kind == "empirical":
                gs = (2.0 * (out - term.targets.to(out.dtype)))[None]
            else:
                eps = torch.randn(
                    (self.mc_samples, *out.shape),
                    generator=self._pass_gen,
                    device=out.device,
                    dtype=out.dtype,
                )
                gs = -math.sqrt(2.0) * eps  # g = 2(f − y), y = f + ε/√2
        m = gs.shape[0]
        dims = tuple(range(2, gs.dim()))

        def lam(u):
            coeff = (gs * u[None]).sum(dim=dims, keepdim=True)  # gᵀu per draw and sample
            return (scale / m) * (coeff * gs).sum(0)

        return lam
