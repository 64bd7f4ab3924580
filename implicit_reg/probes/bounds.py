"""Norm-, margin- and PAC-Bayes-based generalization measures of a classifier.

The definitions follow Jiang, Neyshabur, Mobahi, Krishnan & Bengio,
"Fantastic generalization measures and where to find them" (ICLR 2020,
arXiv 1912.02178), Appendix C; equation numbers below are theirs, as tagged
in the public re-implementation of Dziugaite et al. (NeurIPS 2020,
github.com/nitarshan/robust-generalization-measures, ``measures.py``), which
also fixes the σ-search details (0.1 in error, 10 Monte Carlo samples):

- :func:`classification_margins`, :func:`margin_quantile`: the output margin
  γ used by every "/margin" measure, eq. (22): the 10th percentile of the
  training margins f(x)[y] − max_{j≠y} f(x)[j].
- :func:`path_norm`: eq. (44), Σ_i f_{w²}(**1**)[i] (Neyshabur, Tomioka &
  Srebro, COLT 2015), and eq. (43) divided by γ².
- :func:`spectral_complexity`: eqs. (29) "spec-init" and (30) "spec-orig",
  the margin-normalized spectral product of Bartlett, Foster & Telgarsky
  (NeurIPS 2017), or Bartlett's own (2,1)-norm form.
- :func:`pacbayes_sigma`, :func:`pacbayes_bound`, :func:`pacbayes_measures`:
  eqs. (48) "pacbayes.init", (49) "pacbayes.orig" and (53)
  "pacbayes.flatness", with σ found by bisection (Dziugaite & Roy, UAI 2017;
  Jiang et al. 2020, Appendix C).

Every function leaves the model as it found it (:func:`preserved`), takes
device and dtype from the parameters, reads the data in chunks (a result is a
count or a mean over all N samples, so it does not depend on the chunk size in
``mode="eval"``) and draws random numbers only from a private generator.

Outputs and targets. A classifier's output is either ``(n, k)`` logits with
k ≥ 2 (prediction argmax, targets class indices) or one logit per sample,
``(n,)`` or ``(n, 1)`` (prediction 1 when the logit is > 0, targets 0/1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from threadpoolctl import threadpool_limits
from torch import Tensor, nn
from torch.func import functional_call

from ..core.objective import Data, iter_chunks, num_samples, trainable_named_params
from .arguments import check_count, check_positive
from .state import DEFAULT_MODE, check_mode, preserved, seeded_rng

__all__ = [
    "SpectralComplexity",
    "SigmaSearch",
    "classification_margins",
    "margin_quantile",
    "path_norm",
    "spectral_complexity",
    "pacbayes_sigma",
    "pacbayes_bound",
    "pacbayes_measures",
]

# layers a path norm can pass: Linear and positively homogeneous maps (σ(cz) = cσ(z), c > 0)
_HOMOGENEOUS = (nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Flatten, nn.Dropout)
_SPECTRAL_FORMS = ("fro", "bartlett")


def _initial_value(init_state: Mapping[str, Tensor], key: str, w: Tensor) -> Tensor:
    """``init_state[key]`` in float64 on ``w``'s device; ValueError when it is missing or
    its shape is not ``w``'s."""
    if key not in init_state:
        raise ValueError(f"init_state has no entry {key!r}")
    w0 = init_state[key].detach().to(device=w.device, dtype=torch.float64)
    if w0.shape != w.shape:
        raise ValueError(
            f"init_state[{key!r}] has shape {tuple(w0.shape)}, the model's is {tuple(w.shape)}"
        )
    return w0


def _percentile(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 100:
        raise ValueError(f"percentile must be a number in (0, 100], got {value!r}")
    return float(value)


def _device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    if p is None:
        raise ValueError("the model has no parameters")
    return p.device


# ------------------------------------------------------------------ outputs, margins, errors
def _logits(out: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Check a chunk's outputs and targets; return (out as (n, k) or (n,), y as long)."""
    n = len(y)
    if y.ndim != 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(
            "targets must be a 1-D integer tensor of class indices, "
            f"got shape {tuple(y.shape)} and dtype {y.dtype}"
        )
    if out.ndim == 1 or (out.ndim == 2 and out.shape[1] == 1):
        out = out.reshape(-1)
        if len(out) != n:
            raise ValueError(f"the model gave {len(out)} outputs for {n} targets")
        if ((y != 0) & (y != 1)).any():
            raise ValueError("one output logit per sample needs 0/1 targets")
    elif out.ndim == 2 and out.shape[0] == n:
        if ((y < 0) | (y >= out.shape[1])).any():
            raise ValueError(f"targets must lie in [0, {out.shape[1]}) for {out.shape[1]} logits")
    else:
        raise ValueError(
            f"outputs must be (n, k) logits or one logit per sample; got {tuple(out.shape)} "
            f"for {n} targets"
        )
    return out, y.long()


def _margins(out: Tensor, y: Tensor) -> Tensor:
    """f(x)[y] − max_{j≠y} f(x)[j] per sample (one logit: (2y − 1)·f(x)), float64."""
    out, y = _logits(out, y.to(out.device))
    out = out.double()
    if out.ndim == 1:
        return (2 * y - 1).double() * out
    correct = out.gather(1, y[:, None]).squeeze(1)
    others = out.scatter(1, y[:, None], -math.inf)
    return correct - others.amax(1)


def _n_wrong(out: Tensor, y: Tensor) -> int:
    out, y = _logits(out, y.to(out.device))
    pred = (out > 0).long() if out.ndim == 1 else out.argmax(1)
    return int((pred != y).sum())


def classification_margins(
    model: nn.Module,
    data: Data,
    *,
    chunk_size: int | None = None,
    mode: str = DEFAULT_MODE,
    seed: int = 0,
) -> Tensor:
    """The output margin of every sample, in data order (float64, shape (N,)):

        γ_i = f(x_i)[y_i] − max_{j≠y_i} f(x_i)[j],

    (one logit per sample: γ_i = (2y_i − 1)·f(x_i)). Positive where the sample
    is classified correctly. ``seed`` fixes dropout masks in ``mode="train"``.
    """
    check_mode(mode)
    num_samples(data)
    device = _device(model)
    parts = []
    with preserved(model, mode), seeded_rng(seed), torch.no_grad():
        for x, y in iter_chunks(data, chunk_size):
            parts.append(_margins(model(x.to(device)), y).cpu())
    return torch.cat(parts)


def margin_quantile(margins: Tensor, percentile: float = 10.0) -> float:
    """The lower empirical ``percentile`` of the margins: the k-th smallest,
    k = max(1, ⌈p·N/100⌉) (numpy's ``method="inverted_cdf"``).

    Jiang et al. (2020, eq. 22 and the text around it) take the 10th percentile
    of the training margins as a robust stand-in for the minimum margin; for N
    a multiple of 10 this is the (N/10)-th smallest margin.
    """
    p = _percentile(percentile)
    if not isinstance(margins, Tensor) or margins.ndim != 1 or len(margins) == 0:
        raise ValueError("margins must be a non-empty 1-D tensor")
    if not torch.isfinite(margins).all():
        raise ValueError("margins must be finite (a NaN or inf output?)")
    # (1 − 1e-12): 99.9·1000/100 is 999.0000000000001 in floating point; it means 999
    k = max(1, math.ceil(p * len(margins) / 100 * (1 - 1e-12)))
    return float(margins.double().kthvalue(k).values)


# ------------------------------------------------------------------ layered networks
def _leaves(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if not list(m.children())]


def _linear_layers(model: nn.Module) -> list[nn.Linear]:
    """The nn.Linear layers, in order; every other leaf module must hold no parameters."""
    layers = []
    for m in _leaves(model):
        if isinstance(m, nn.Linear):
            layers.append(m)
        elif any(True for _ in m.parameters(recurse=False)):
            raise ValueError(
                f"spectral measures need a network whose only parametrized layers are "
                f"nn.Linear; found {type(m).__name__}"
            )
    if not layers:
        raise ValueError("the model has no nn.Linear layer")
    return layers


def _mlp_layers(model: nn.Module) -> list[nn.Module]:
    """The leaves of a sequential MLP of Linear and positively homogeneous layers.

    The leaves (in registration order) must be nn.Linear, ReLU, LeakyReLU,
    Identity, Flatten or Dropout, and the model must compute their composition
    (checked on one deterministic input); otherwise ``ValueError``.
    """
    leaves = _leaves(model)
    bad = [type(m).__name__ for m in leaves if not isinstance(m, (nn.Linear, *_HOMOGENEOUS))]
    if bad:
        raise ValueError(
            "path_norm is defined for MLPs of nn.Linear and positively homogeneous "
            f"activations (ReLU, LeakyReLU, Identity; Flatten/Dropout pass through); found {bad}"
        )
    linears = [m for m in leaves if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the model has no nn.Linear layer")
    w = linears[0].weight
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(3, linears[0].in_features, generator=g, dtype=torch.float64)
    x = x.to(device=w.device, dtype=w.dtype)
    with preserved(model, "eval"), torch.no_grad():
        composed = x
        for m in leaves:
            composed = m(composed)
        direct = model(x)
    if direct.shape != composed.shape or not torch.allclose(direct, composed, rtol=1e-4, atol=1e-6):
        raise ValueError(
            "the model is not the sequential composition of its layers "
            "(path_norm needs an nn.Sequential-like MLP)"
        )
    return leaves


def path_norm(model: nn.Module, *, include_bias: bool = True) -> float:
    """Path norm in Jiang et al.'s (2020) form, eq. (44):

        μ_path-norm = Σ_i f_{w²}(**1**)[i],

    the outputs, summed, of the network with every weight squared (w² = w ∘ w)
    applied to an all-ones input. For a network of Linear layers and
    positively homogeneous activations (ReLU, leaky ReLU, identity) this is

        μ = Σ_{paths p from an input or bias to an output} Π_{e ∈ p} w_e²
          = φ₂(w)²,

    the square of Neyshabur, Tomioka & Srebro's (COLT 2015, eq. 4) ℓ₂ path norm
    φ₂ (take the square root for theirs); biases are edges from a constant-1
    unit, as when every parameter is squared. It is invariant to rescaling a
    ReLU unit's incoming weights and bias by c > 0 and its outgoing weights by
    1/c. Computed as v ← (W∘W)·v + b∘b through the Linear layers from v = **1**
    (activations are the identity on v ≥ 0), in float64. ``include_bias=False``
    drops the bias paths. All layers count, frozen ones too (the measure is one
    of the function). Eq. (43), path-norm/margin, is ``path_norm / γ²``.

    Raises ``ValueError`` for anything but a sequential MLP of nn.Linear and
    ReLU/LeakyReLU/Identity (Flatten, Dropout allowed).
    """
    if not isinstance(include_bias, bool):
        raise ValueError(f"include_bias must be true or false, got {include_bias!r}")
    with preserved(model):
        layers = _mlp_layers(model)
        v = None
        for m in layers:
            if not isinstance(m, nn.Linear):
                continue
            w2 = m.weight.detach().double().square()
            v = torch.ones(m.in_features, dtype=torch.float64, device=w2.device) if v is None else v
            if len(v) != m.in_features:
                raise ValueError(
                    f"layer sizes do not chain: {len(v)} features into {m.in_features} inputs"
                )
            v = w2 @ v
            if include_bias and m.bias is not None:
                v = v + m.bias.detach().double().square()
    return float(v.sum())


# ------------------------------------------------------------------ spectral product
@dataclass
class SpectralComplexity:
    """A margin-normalized spectral measure and its parts.

    ``value = prod_spec_sq · sum_term / margin²`` (``inf`` when margin ≤ 0);
    ``spec_norms`` are ‖W_i‖₂ per Linear layer, in order.
    """

    value: float
    prod_spec_sq: float
    sum_term: float
    margin: float
    spec_norms: list[float]
    form: str


def spectral_complexity(
    model: nn.Module,
    data: Data | None,
    *,
    init_state: Mapping[str, Tensor] | None = None,
    form: str = "fro",
    percentile: float = 10.0,
    margin: float | None = None,
    chunk_size: int | None = None,
    mode: str = DEFAULT_MODE,
) -> SpectralComplexity:
    """Margin-normalized spectral product of Bartlett, Foster & Telgarsky (2017).

    With W_i the weight matrices of the d nn.Linear layers, M_i = W_i⁰ (their
    values in ``init_state``) or 0 when ``init_state`` is None, and γ the
    ``percentile`` of the training margins (:func:`margin_quantile`):

    - ``form="fro"`` (Jiang et al. 2020, eq. 29 "spec-init" with ``init_state``,
      eq. 30 "spec-orig" without):

          Π_i ‖W_i‖₂² · Σ_i ‖W_i − M_i‖_F² / ‖W_i‖₂²  /  γ²

    - ``form="bartlett"`` (Bartlett et al. 2017, Theorem 1.1, R_A² with ρ_i = 1):

          Π_i ‖W_i‖₂² · (Σ_i (‖(W_i − M_i)ᵀ‖_{2,1} / ‖W_i‖₂)^{2/3})³  /  γ²

      where ‖Aᵀ‖_{2,1} is the sum of the ℓ₂ norms of A's rows (the incoming
      weights of each unit, PyTorch's ``(out, in)`` layout).

    Biases are left out, as in both papers. Spectral norms are exact
    (``torch.linalg.matrix_norm(ord=2)``, an SVD under a one-thread BLAS
    limit), in float64. Jiang et al. drop the log and depth factors of the
    full bound; so does this. When γ ≤ 0 (more than ``percentile``% of the
    training set misclassified) the measure is vacuous and ``value`` is
    ``inf``; the parts are still returned. ``margin`` passes a γ computed
    before (e.g. shared with path-norm/margin); ``data`` is then not read and
    may be None.
    """
    if form not in _SPECTRAL_FORMS:
        raise ValueError(f"form must be one of {_SPECTRAL_FORMS}, got {form!r}")
    if init_state is not None and not isinstance(init_state, Mapping):
        raise ValueError(
            f"init_state must be a state dict (mapping) or None, got {type(init_state).__name__}"
        )
    percentile = _percentile(percentile)
    if margin is not None and (
        isinstance(margin, bool)
        or not isinstance(margin, (int, float))
        or not math.isfinite(margin)
    ):
        raise ValueError(f"margin must be a finite number or None, got {margin!r}")
    if margin is None and data is None:
        raise ValueError("spectral_complexity needs data (or a precomputed margin)")
    layers = _linear_layers(model)
    names = {id(m): name for name, m in model.named_modules()}
    spec, terms = [], []
    with preserved(model), threadpool_limits(1):
        for m in layers:
            w = m.weight.detach().double()
            key = f"{names[id(m)]}.weight" if names[id(m)] else "weight"
            if init_state is None:
                diff = w
            else:
                diff = w - _initial_value(init_state, key, w)
            s = float(torch.linalg.matrix_norm(w, ord=2))
            if s == 0:
                raise ValueError(f"layer {key!r} is all zeros: its spectral norm is 0")
            spec.append(s)
            if form == "fro":
                terms.append(float(diff.square().sum()) / s**2)
            else:
                terms.append((float(diff.norm(dim=1).sum()) / s) ** (2 / 3))
    if margin is None:
        margins = classification_margins(model, data, chunk_size=chunk_size, mode=mode)
        gamma = margin_quantile(margins, percentile)
    else:
        gamma = float(margin)
    prod = math.prod(s * s for s in spec)
    total = sum(terms) if form == "fro" else sum(terms) ** 3
    value = prod * total / gamma**2 if gamma > 0 else math.inf
    return SpectralComplexity(value, prod, total, gamma, spec, form)


# ------------------------------------------------------------------ PAC-Bayes σ and bound
@dataclass
class SigmaSearch:
    """Result of :func:`pacbayes_sigma`.

    ``sigma`` is the largest σ found whose estimated error rise is ≤ the
    target (``rise``); ``sigma_upper`` the smallest found above it (rise
    ``rise_upper`` > target), so σ* ∈ [sigma, sigma_upper]. ``base_error`` is
    the unperturbed training error, ``n_passes`` the number of full passes
    over the data. ``bracketed`` is False when the rise stayed ≤ the target up
    to ``sigma_max`` (then ``sigma = sigma_max``, ``sigma_upper = inf``).
    """

    sigma: float
    sigma_upper: float
    rise: float
    rise_upper: float
    base_error: float
    n_samples: int
    n_passes: int
    bracketed: bool


def pacbayes_sigma(
    model: nn.Module,
    data: Data,
    *,
    max_increase: float = 0.1,
    n_samples: int = 10,
    seed: int = 0,
    sigma_init: float = 0.1,
    sigma_max: float = 1e3,
    rtol: float = 1e-2,
    chunk_size: int | None = None,
    mode: str = DEFAULT_MODE,
) -> SigmaSearch:
    """The largest σ whose Gaussian weight noise raises the training error by
    at most ``max_increase`` (Jiang et al. 2020, Appendix C, the σ of eqs.
    48, 49 and 53; after Dziugaite & Roy 2017):

        σ* = max{σ : ê(σ) − e(θ) ≤ max_increase},
        ê(σ) = (1/K)·Σ_k err(θ + σ·z_k),   z_k ~ N(0, I),

    over the trainable parameters, with err the 0-1 training error (a count
    over all N samples, read in chunks). Jiang et al. train every model to
    (near) zero training error and ask the perturbed error to stay ≤ 0.1, so
    the two readings agree there; their reference code (Dziugaite et al.
    2020) bisects on the deviation from the unperturbed accuracy, as here.

    The K = ``n_samples`` directions z_k are common random numbers: the
    generator is re-seeded with ``seed`` before every σ, so ê is one fixed
    (almost everywhere continuous, nondecreasing in expectation) function of
    σ and the search is deterministic. Search: from ``sigma_init``, double or
    halve until the target is bracketed, then bisect until
    σ_upper − σ ≤ rtol·σ_upper. The returned bracket always satisfies
    rise ≤ max_increase < rise_upper. Cost: K full-data passes per σ tried.
    """
    target = check_positive("max_increase", max_increase)
    if target >= 1:
        raise ValueError(f"max_increase must be < 1 (an error rate), got {max_increase!r}")
    n_samples = check_count("n_samples", n_samples)
    sigma_init = check_positive("sigma_init", sigma_init)
    sigma_max = check_positive("sigma_max", sigma_max)
    if sigma_init > sigma_max:
        raise ValueError(f"sigma_init ({sigma_init}) must be <= sigma_max ({sigma_max})")
    rtol = check_positive("rtol", rtol)
    if rtol >= 1:
        raise ValueError(f"rtol must be < 1, got {rtol!r}")
    check_mode(mode)
    n = num_samples(data)
    device = _device(model)
    passes = 0

    with preserved(model, mode):
        named = trainable_named_params(model)
        if not named:
            raise ValueError("the model has no trainable parameters (requires_grad=True)")
        names = list(named)
        theta = [p.detach() for p in named.values()]
        frozen = {k: p.detach() for k, p in model.named_parameters() if not p.requires_grad}
        buffers = dict(model.named_buffers())

        def error(params: list[Tensor]) -> float:
            nonlocal passes
            passes += 1
            wrong = 0
            with seeded_rng(seed), torch.no_grad():  # same dropout masks every pass
                for x, y in iter_chunks(data, chunk_size):
                    state = {**frozen, **{k: b.clone() for k, b in buffers.items()}}
                    state.update(zip(names, params))
                    wrong += _n_wrong(functional_call(model, state, (x.to(device),)), y)
            return wrong / n

        base = error(theta)

        def rise(sigma: float) -> float:
            gen = torch.Generator(device=device).manual_seed(int(seed))
            total = 0.0
            for _ in range(n_samples):
                z = [
                    torch.randn(t.shape, generator=gen, device=device, dtype=t.dtype) for t in theta
                ]
                total += error([t + sigma * zi for t, zi in zip(theta, z)])
            return total / n_samples - base

        s, r = sigma_init, rise(sigma_init)
        if r <= target:  # grow until the rise exceeds the target
            lo, r_lo = s, r
            while True:
                if lo >= sigma_max:
                    return SigmaSearch(lo, math.inf, r_lo, math.nan, base, n_samples, passes, False)
                hi = min(2 * lo, sigma_max)
                r_hi = rise(hi)
                if r_hi > target:
                    break
                lo, r_lo = hi, r_hi
        else:  # shrink until it does not
            hi, r_hi = s, r
            while True:
                lo = hi / 2
                r_lo = rise(lo)
                if r_lo <= target:
                    break
                hi, r_hi = lo, r_lo
                if hi < 1e-12 * sigma_init:
                    raise ValueError(
                        f"the training error rises by more than {target} at every σ down to "
                        f"{hi:.3g}: is the model on a decision boundary (ties)?"
                    )
        while hi - lo > rtol * hi:
            mid = 0.5 * (lo + hi)
            r_mid = rise(mid)
            if r_mid <= target:
                lo, r_lo = mid, r_mid
            else:
                hi, r_hi = mid, r_mid
    return SigmaSearch(lo, hi, r_lo, r_hi, base, n_samples, passes, True)


def pacbayes_bound(dist_sq: float, sigma: float, m: int) -> float:
    """Jiang et al. (2020) eqs. (48)/(49):

        μ = ‖w − w⁰‖² / (4σ²) + log(m/σ) + 10,

    with ``dist_sq`` = ‖w − w⁰‖² ("pacbayes.init", eq. 48) or ‖w‖²
    ("pacbayes.orig", eq. 49), σ from :func:`pacbayes_sigma` and m the number
    of training samples. (The first term is half the KL divergence between
    N(w, σ²I) and N(w⁰, σ²I); log(m/σ) + 10 is their confidence and
    union-bound term. Their Table 1 correlates the raw μ; Dziugaite et al.
    2020 report √(μ/m).)
    """
    if isinstance(dist_sq, bool) or not isinstance(dist_sq, (int, float)):
        raise ValueError(f"dist_sq must be a finite number >= 0, got {dist_sq!r}")
    if not math.isfinite(dist_sq) or dist_sq < 0:
        raise ValueError(f"dist_sq must be a finite number >= 0, got {dist_sq!r}")
    sigma = check_positive("sigma", sigma)
    m = check_count("m", m)
    return dist_sq / (4 * sigma**2) + math.log(m / sigma) + 10


def pacbayes_measures(
    model: nn.Module,
    data: Data,
    *,
    init_state: Mapping[str, Tensor] | None = None,
    max_increase: float = 0.1,
    n_samples: int = 10,
    seed: int = 0,
    chunk_size: int | None = None,
    mode: str = DEFAULT_MODE,
    **search,
) -> dict[str, float]:
    """σ search plus the three PAC-Bayes measures of Jiang et al. (2020):

    ``pacbayes_sigma`` (σ), ``pacbayes_flatness`` = 1/σ² (eq. 53),
    ``pacbayes_orig`` (eq. 49, ‖w‖² over the trainable parameters, biases
    included) and, when ``init_state`` is given, ``pacbayes_init`` (eq. 48,
    ‖w − w⁰‖²). m = N, the size of ``data``. An unbracketed search
    (:class:`SigmaSearch`) gives NaN measures. ``search`` passes
    ``sigma_init``, ``sigma_max`` and ``rtol`` on to :func:`pacbayes_sigma`.
    """
    unknown = set(search) - {"sigma_init", "sigma_max", "rtol"}
    if unknown:
        raise ValueError(
            f"unknown search option(s) {sorted(unknown)}; valid: sigma_init, sigma_max, rtol"
        )
    m = num_samples(data)
    with preserved(model):
        named = trainable_named_params(model)
        w_sq = sum(float(p.detach().double().square().sum()) for p in named.values())
        d_sq = None
        if init_state is not None:
            if not isinstance(init_state, Mapping):
                raise ValueError(
                    f"init_state must be a state dict (mapping) or None, "
                    f"got {type(init_state).__name__}"
                )
            d_sq = 0.0
            for k, p in named.items():
                p0 = _initial_value(init_state, k, p)
                d_sq += float((p.detach().double() - p0).square().sum())
    res = pacbayes_sigma(
        model,
        data,
        max_increase=max_increase,
        n_samples=n_samples,
        seed=seed,
        chunk_size=chunk_size,
        mode=mode,
        **search,
    )
    out = {"pacbayes_sigma": res.sigma if res.bracketed else math.nan}
    if not res.bracketed:
        out.update(pacbayes_flatness=math.nan, pacbayes_orig=math.nan)
        if d_sq is not None:
            out["pacbayes_init"] = math.nan
        return out
    out["pacbayes_flatness"] = 1 / res.sigma**2
    out["pacbayes_orig"] = pacbayes_bound(w_sq, res.sigma, m)
    if d_sq is not None:
        out["pacbayes_init"] = pacbayes_bound(d_sq, res.sigma, m)
    return out
