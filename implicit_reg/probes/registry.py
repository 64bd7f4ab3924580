"""Named probes for the training engine and the CLI: :func:`run_probes`.

    run_probes(["lambda_max", "trace", "grad_norm_sq"], model, loss_fn, (X, y))
    -> {"lambda_max": ..., "trace": ..., "grad_norm_sq": ...}

Every probe is a full-data measurement (in chunks of ``chunk_size``) of the
trainable parameters, leaves the model exactly as found, and draws random
numbers only from generators seeded with ``seed``. The defaults are meant to
be cheap enough to run inside sweeps; :data:`DEFAULT_OPTIONS` lists the
options that tighten them.

Warm starts. A training run that probes λ_max again and again keeps one dict
``state`` between calls (``run_probes(..., state=state)``). The eigenvalue
probes read their previous eigenvector from it as Lanczos's start vector and
write the new one back (:data:`WARM_KEYS`; tensors only, so the dict can be
``torch.save``-d in a checkpoint). The answer is the same to the certified
tolerance; only the number of HVPs falls when the top eigenvector has moved
little since the last probe.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..core.hvp import DEFAULT_METHOD
from ..core.modified_equations import perturbed_one_norm
from ..core.objective import Data
from .bounds import (
    classification_margins,
    margin_quantile,
    pacbayes_measures,
    path_norm,
    spectral_complexity,
)
from .curvature import FisherOperator, GGNOperator
from .eigen import lanczos
from .flatness import (
    dist_from_init,
    eps_sharpness,
    gaussian_sharpness,
    geometric_complexity,
    weight_norms,
)
from .operator import CurvatureOperator, HessianOperator
from .state import DEFAULT_MODE, check_mode
from .trace import hutchinson, hutchpp

__all__ = [
    "PROBES",
    "DEFAULT_OPTIONS",
    "WARM_KEYS",
    "run_probes",
    "warm_start_vector",
    "lanczos_eig_solver",
]

#: keys of the ``state`` dict of :func:`run_probes`: probe name -> the entry it keeps
WARM_KEYS = {
    "lambda_max": "lambda_max.vec",
    "lambda_min": "lambda_min.vec",
    "ggn_lambda_max": "ggn_lambda_max.vec",
    "fisher_lambda_max": "fisher_lambda_max.vec",
}

#: weight of the seeded random direction mixed into a warm start vector; it
#: keeps every eigenvector in the Krylov space even when the previous vector
#: is (by symmetry, say) exactly orthogonal to the new top eigenvector
WARM_MIX = 1e-3

#: options of :func:`run_probes`, with their defaults
DEFAULT_OPTIONS: dict[str, object] = {
    "mode": DEFAULT_MODE,  # "eval" (dropout off, BN running stats) or "train"
    "method": DEFAULT_METHOD,  # HVP form
    "lanczos_tol": None,  # residual tol relative to ‖H‖; None: √ε of the dtype
    "lanczos_max_iter": None,  # None: min(dim, 300)
    "trace_method": "hutchpp",  # "hutchpp" (fixed budget) or "hutchinson" (adaptive)
    "trace_hvps": 30,  # Hutch++ budget in HVPs
    "trace_rtol": 0.05,  # Hutchinson: stop when SE <= rtol·|estimate|
    "trace_max_samples": 100,  # Hutchinson: at most this many HVPs
    "eps": 1e-3,  # ε of Keskar's ε-sharpness box
    "eps_steps": 10,  # projected gradient-ascent steps (one gradient each)
    "sigma": 1e-2,  # std of the Gaussian weight perturbation
    "gaussian_samples": 10,  # antithetic pairs (two losses each)
    "params": None,  # parameters the curvature probes measure (see probes.selection); None: all
    "block_size": None,  # vectors per batched product; None: as fit operator.DEFAULT_BLOCK_MEMORY
    "batch_loss": None,  # (model, batch) -> (mean loss, batch size) for batches not (x, y)
    "fisher_kind": "exact",  # "exact", "mc" or "empirical" for the fisher_* probes
    "fisher_mc_samples": 1,  # targets drawn per sample when fisher_kind="mc"
    "margin_percentile": 10.0,  # γ of the "/margin" measures: this percentile of the margins
    "pacbayes_max_increase": 0.1,  # σ search: largest σ raising the train error by at most this
    "pacbayes_samples": 10,  # σ search: Monte Carlo weight draws per σ tried
    "one_norm_eps": 1e-8,  # ε of grad_one_norm's Σ√(g² + ε) (Adam's ε, inside the root)
    "process_group": None,  # a torch.distributed group or "auto": each rank holds a data shard
}


class _Context:
    """Shared state of one :func:`run_probes` call: one operator per curvature, cached results."""

    def __init__(self, model, loss_fn, data, chunk_size, seed, init_state, options, state=None):
        self.model, self.loss_fn, self.data = model, loss_fn, data
        self.state = state
        self.chunk_size, self.seed = chunk_size, seed
        self.init_state, self.options = init_state, options
        self.cache: dict[str, object] = {}
        self._ops: dict[str, CurvatureOperator] = {}

    def operator(self, curvature: str = "hessian") -> CurvatureOperator:
        if curvature not in self._ops:
            o = self.options
            kw = dict(
                chunk_size=self.chunk_size, mode=o["mode"], seed=self.seed, params=o["params"],
                block_size=o["block_size"], batch_loss=o["batch_loss"],
                process_group=o["process_group"],
            )  # fmt: skip
            if curvature == "hessian":
                op = HessianOperator(self.model, self.loss_fn, self.data, method=o["method"], **kw)
            elif curvature == "ggn":
                op = GGNOperator(self.model, self.loss_fn, self.data, **kw)
            else:
                op = FisherOperator(
                    self.model, self.loss_fn, self.data, kind=o["fisher_kind"],
                    mc_samples=o["fisher_mc_samples"], **kw,
                )  # fmt: skip
            self._ops[curvature] = op
        return self._ops[curvature]

    @property
    def op(self) -> HessianOperator:
        return self.operator("hessian")

    def once(self, key: str, fn: Callable[[], object]):
        if key not in self.cache:
            self.cache[key] = fn()
        return self.cache[key]

    def kw(self) -> dict:
        return {"chunk_size": self.chunk_size, "mode": self.options["mode"]}

    def shard_kw(self) -> dict:
        """:meth:`kw` and the process group, for the measures that sum over ranks."""
        return {**self.kw(), "process_group": self.options["process_group"]}


def warm_start_vector(prev: Tensor | None, dim: int, *, seed: int, device, mix: float = WARM_MIX):
    """Start vector for Lanczos from a previous eigenvector, or None for a cold start.

    Returns ``v/‖v‖ + mix·r/‖r‖`` with ``v = prev[:, 0]`` (or ``prev`` when it is
    one vector) and ``r`` a standard normal vector from a generator seeded with
    ``seed``; None when ``prev`` is None, not a tensor, not finite or of the wrong
    length (e.g. the measured parameters changed), so that the caller starts cold.
    """
    if not isinstance(prev, Tensor) or prev.dim() not in (1, 2) or prev.shape[0] != dim:
        return None
    v = (prev if prev.dim() == 1 else prev[:, 0]).to(device=device, dtype=torch.float64)
    norm = v.norm()
    if not torch.isfinite(norm) or norm == 0:
        return None
    gen = torch.Generator(device=device).manual_seed(int(seed) + 7919)
    r = torch.randn(dim, generator=gen, device=device, dtype=torch.float64)
    return v / norm + mix * r / r.norm()


def lanczos_eig_solver(max_iter: int = 40, *, seed: int = 0):
    """``solve(op, v0) -> (λ_max, u)``: Lanczos (k = 1, at most ``max_iter`` iterations)
    warm-started from the previous vector ``v0`` by :func:`warm_start_vector` (cold when
    None): the eigensolver :func:`implicit_reg.core.central_flow.central_flow` takes."""

    def solve(op, v0):
        start = warm_start_vector(v0, op.dim, seed=seed, device=op.device)
        res = lanczos(op, 1, v0=start, max_iter=max_iter)
        return float(res.eigenvalues[0]), res.eigenvectors[:, 0]

    return solve


def _eig_result(ctx: _Context, which: str, name: str, curvature: str = "hessian"):
    def run():
        op = ctx.operator(curvature)
        key = WARM_KEYS[name]
        v0 = None
        if ctx.state is not None:
            v0 = warm_start_vector(ctx.state.get(key), op.dim, seed=ctx.seed, device=op.device)
        res = lanczos(
            op, 1, which=which, tol=ctx.options["lanczos_tol"],
            max_iter=ctx.options["lanczos_max_iter"], seed=ctx.seed, v0=v0,
        )  # fmt: skip
        if ctx.state is not None and res.eigenvectors is not None:
            ctx.state[key] = res.eigenvectors.detach().to("cpu", op.dtype).clone()
        return res

    return ctx.once(name, run)


def _eig(ctx: _Context, which: str, curvature: str = "hessian") -> float:
    prefix = "" if curvature == "hessian" else curvature + "_"
    name = prefix + ("lambda_max" if which == "LA" else "lambda_min")
    return float(_eig_result(ctx, which, name, curvature).eigenvalues[0])


def _trace(ctx: _Context, curvature: str = "hessian"):
    def run():
        o, op = ctx.options, ctx.operator(curvature)
        if o["trace_method"] == "hutchpp":
            return hutchpp(op, n_hvp=o["trace_hvps"], seed=ctx.seed)
        if o["trace_method"] == "hutchinson":
            return hutchinson(
                op, rtol=o["trace_rtol"], max_samples=o["trace_max_samples"],
                min_samples=min(10, o["trace_max_samples"]), seed=ctx.seed,
            )  # fmt: skip
        raise ValueError(
            f"trace_method must be 'hutchpp' or 'hutchinson', got {o['trace_method']!r}"
        )

    return ctx.once("trace:" + curvature, run)


def _loss_grad(ctx: _Context):
    return ctx.once("loss_grad", lambda: ctx.op.loss_and_gradient())


def _grad_norm_sq(ctx: _Context) -> float:
    g = _loss_grad(ctx)[1].double()
    return float(g @ g)


def _one_norm(ctx: _Context) -> float:
    """N = Σ_i √((∂_iL)² + ε), the perturbed one-norm that Adam's modified equation
    penalizes or anti-penalizes (Cattaneo, Klusowski & Shigida, ICML 2024), in float64."""
    g = _loss_grad(ctx)[1].double()
    return float(perturbed_one_norm([g], ctx.options["one_norm_eps"]))


def _dist(ctx: _Context) -> float:
    if ctx.init_state is None:
        raise ValueError("probe 'dist_from_init' needs init_state (the initial state_dict)")
    return dist_from_init(ctx.model, ctx.init_state)


def _margin(ctx: _Context) -> float:
    """γ, the ``margin_percentile`` of the training margins (Jiang et al. 2020, eq. 22),
    computed once per call and shared by every "/margin" measure."""

    def run():
        m = classification_margins(ctx.model, ctx.data, seed=ctx.seed, **ctx.kw())
        return margin_quantile(m, ctx.options["margin_percentile"])

    return ctx.once("margin", run)


def _spectral(ctx: _Context, form: str, init: bool) -> float:
    if init and ctx.init_state is None:
        raise ValueError("the spec_*_init probes need init_state (the initial state_dict)")
    return spectral_complexity(
        ctx.model, None, init_state=ctx.init_state if init else None, form=form,
        margin=_margin(ctx),
    ).value  # fmt: skip


def _pacbayes(ctx: _Context, key: str) -> float:
    """One σ search per call, shared by the ``pacbayes_*`` probes (Jiang et al. 2020,
    eqs. 48, 49, 53); ``pacbayes_init`` needs init_state."""
    if key == "pacbayes_init" and ctx.init_state is None:
        raise ValueError("probe 'pacbayes_init' needs init_state (the initial state_dict)")
    o = ctx.options
    out = ctx.once(
        "pacbayes",
        lambda: pacbayes_measures(
            ctx.model, ctx.data, init_state=ctx.init_state,
            max_increase=o["pacbayes_max_increase"], n_samples=o["pacbayes_samples"],
            seed=ctx.seed, **ctx.kw(),
        ),
    )  # fmt: skip
    return out[key]


def _over_margin_sq(value: float, gamma: float) -> float:
    """value/γ², inf when γ ≤ 0 (the margin bound is vacuous)."""
    return value / gamma**2 if gamma > 0 else float("inf")


def _gaussian(ctx: _Context) -> float:
    o = ctx.options
    return gaussian_sharpness(
        ctx.model,
        ctx.loss_fn,
        ctx.data,
        sigma=o["sigma"],
        n_samples=o["gaussian_samples"],
        seed=ctx.seed,
        **ctx.shard_kw(),
    ).value


#: the named probes of :func:`run_probes`: probe name -> the function that measures it
PROBES: dict[str, Callable[[_Context], float]] = {
    "loss": lambda ctx: float(_loss_grad(ctx)[0]),
    "lambda_max": lambda ctx: _eig(ctx, "LA"),
    "lambda_min": lambda ctx: _eig(ctx, "SA"),
    "lambda_max_hvps": lambda ctx: _eig_result(ctx, "LA", "lambda_max").n_hvp,
    "ggn_lambda_max": lambda ctx: _eig(ctx, "LA", "ggn"),
    "ggn_trace": lambda ctx: float(_trace(ctx, "ggn").estimate),
    "fisher_lambda_max": lambda ctx: _eig(ctx, "LA", "fisher"),
    "fisher_trace": lambda ctx: float(_trace(ctx, "fisher").estimate),
    "trace": lambda ctx: float(_trace(ctx).estimate),
    "trace_stderr": lambda ctx: float(_trace(ctx).stderr),
    "grad_norm_sq": _grad_norm_sq,
    "grad_one_norm": _one_norm,
    "weight_norm": lambda ctx: weight_norms(ctx.model)["total"],
    "dist_from_init": _dist,
    "eps_sharpness": lambda ctx: eps_sharpness(
        ctx.model,
        ctx.loss_fn,
        ctx.data,
        eps=ctx.options["eps"],
        steps=ctx.options["eps_steps"],
        **ctx.shard_kw(),
    ),
    "gaussian_sharpness": _gaussian,
    "geometric_complexity": lambda ctx: geometric_complexity(
        ctx.model, ctx.data, seed=ctx.seed, **ctx.shard_kw()
    ),
    # probes.bounds (Jiang et al. 2020, App. C; Bartlett et al. 2017; Dziugaite & Roy 2017)
    "margin": _margin,
    "path_norm": lambda ctx: path_norm(ctx.model),
    "path_norm_margin": lambda ctx: _over_margin_sq(path_norm(ctx.model), _margin(ctx)),
    "spec_orig": lambda ctx: _spectral(ctx, "fro", init=False),
    "spec_init": lambda ctx: _spectral(ctx, "fro", init=True),
    "spec_bartlett": lambda ctx: _spectral(ctx, "bartlett", init=False),
    "spec_bartlett_init": lambda ctx: _spectral(ctx, "bartlett", init=True),
    "pacbayes_sigma": lambda ctx: _pacbayes(ctx, "pacbayes_sigma"),
    "pacbayes_flatness": lambda ctx: _pacbayes(ctx, "pacbayes_flatness"),
    "pacbayes_orig": lambda ctx: _pacbayes(ctx, "pacbayes_orig"),
    "pacbayes_init": lambda ctx: _pacbayes(ctx, "pacbayes_init"),
}


#: probes that pass over the data without the operator's sum over ranks (the margins and
#: the PAC-Bayes σ search): refused with ``process_group``
NOT_DISTRIBUTED = (
    "margin", "path_norm_margin", "spec_orig", "spec_init", "spec_bartlett",
    "spec_bartlett_init", "pacbayes_sigma", "pacbayes_flatness", "pacbayes_orig",
    "pacbayes_init",
)  # fmt: skip


def run_probes(
    names: Sequence[str],
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    data: Data,
    *,
    chunk_size: int | None = None,
    seed: int = 0,
    init_state: Mapping[str, Tensor] | None = None,
    state: dict[str, Tensor] | None = None,
    **options,
) -> dict[str, float]:
    """Run the named probes and return ``{name: value}`` in the order given.

    Names (see :data:`PROBES`): ``loss``, ``lambda_max``, ``lambda_min``,
    ``trace``, ``trace_stderr``, ``grad_norm_sq``, ``weight_norm``,
    ``dist_from_init`` (needs ``init_state``), ``eps_sharpness``,
    ``gaussian_sharpness``, ``geometric_complexity``; the bounds of
    :mod:`implicit_reg.probes.bounds`: ``margin`` (γ, eq. 22), ``path_norm`` (eq. 44),
    ``path_norm_margin`` (eq. 43), ``spec_orig``/``spec_init`` (eqs. 30/29),
    ``spec_bartlett``/``spec_bartlett_init`` (Bartlett et al. 2017 with M_i = 0 or
    W_i⁰), every "/margin" measure ``inf`` when γ ≤ 0, and ``pacbayes_sigma``,
    ``pacbayes_flatness``, ``pacbayes_orig``, ``pacbayes_init`` (eqs. 53/49/48; NaN
    when the σ search is not bracketed). Probes that share work
    share it (one operator; one trace run for ``trace`` and ``trace_stderr``;
    one gradient for ``loss`` and ``grad_norm_sq``; one margins pass for every
    "/margin" measure; one σ search for the ``pacbayes_*``). ``lambda_max_hvps`` is
    the number of HVPs the ``lambda_max`` probe spent (its cost, for tracking
    what warm starts save). ``ggn_lambda_max``, ``ggn_trace``,
    ``fisher_lambda_max`` and ``fisher_trace`` measure the Gauss–Newton
    matrix and the Fisher (``fisher_kind``: exact, mc or empirical) with the
    same estimators and options as the Hessian ones.

    With the option ``params`` (a selection as in
    :mod:`implicit_reg.probes.selection`, e.g. ``"layers.0.*"``) the
    curvature probes and ``grad_norm_sq`` measure only those parameters, the
    others held constant; ``eps_sharpness``, ``gaussian_sharpness``,
    ``weight_norm`` and ``dist_from_init`` always see the whole model.

    Only trainable parameters (``requires_grad=True``) are measured. The
    model, its ``.grad``, modes, buffers and the global RNG are left as found.

    Args:
        names: probe names; an unknown name raises ``ValueError`` listing the
            valid ones.
        model, loss_fn, data: as for :class:`HessianOperator`.
        chunk_size: rows per chunk (the peak memory), None for one chunk.
        seed: seeds every random draw (Lanczos start, trace probes, noise).
        init_state: initial ``state_dict`` for ``dist_from_init``.
        state: a dict the caller keeps between probe calls of one run, or
            None. The eigenvalue probes read their previous eigenvector from
            it as a warm start and write the new one back (keys in
            :data:`WARM_KEYS`, CPU tensors in the parameters' dtype). An
            entry of the wrong length is ignored (cold start).
        **options: overrides of :data:`DEFAULT_OPTIONS` (unknown keys raise).
            ``process_group``: each rank holds a shard of ``data`` and the
            probes measure all of it (:mod:`implicit_reg.probes.distributed`);
            those in :data:`NOT_DISTRIBUTED` are refused.
    """
    if isinstance(names, str):
        names = [names]
    unknown = [n for n in names if n not in PROBES]
    if unknown:
        raise ValueError(f"unknown probe name(s) {unknown}; valid: {', '.join(PROBES)}")
    bad = [k for k in options if k not in DEFAULT_OPTIONS]
    if bad:
        raise ValueError(f"unknown probe option(s) {bad}; valid: {', '.join(DEFAULT_OPTIONS)}")
    opts = {**DEFAULT_OPTIONS, **options}
    check_mode(opts["mode"])
    local = [n for n in names if n in NOT_DISTRIBUTED]
    if opts["process_group"] is not None and local:
        raise ValueError(
            f"probe(s) {local} are not summed over ranks (process_group): run them on the "
            "whole data in one process"
        )
    if state is not None and not isinstance(state, dict):
        raise ValueError(
            f"state must be a dict (kept by the caller between calls) or None, got {type(state).__name__}"
        )
    ctx = _Context(model, loss_fn, data, chunk_size, seed, init_state, opts, state)
    out = {}
    for name in names:
        out[name] = float(PROBES[name](ctx))
    return out
