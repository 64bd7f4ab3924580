"""Closed forms of linear least squares that the linear double-descent experiments test.

Two results, each checked against an independent computation in the tests
(an explicit GD loop, Monte Carlo):

- **GD from zero on least squares, in the eigenbasis.** For the loss
  L(w) = (1/2n)‖Xw − y‖², preconditioned GD w_{t+1} = w_t − η·D·∇L(w_t)
  with a diagonal D > 0 (D = I: plain GD; per-group step sizes: the remedy of
  Heckel & Yilmaz, ICLR 2021) from w_0 = 0 is, with S = XᵀX/n, b = Xᵀy/n and
  A = D^{1/2} S D^{1/2} = V diag(λ) Vᵀ,

      w_t = D^{1/2} V diag((1 − (1 − ηλ_i)^t)/λ_i) Vᵀ D^{1/2} b,

  (directions with λ_i = 0 are never moved: D^{1/2}b lies in the range of A).
  Each direction is learned on its own time scale 1/(ηλ_i): this is the
  multi-scale picture of Pezeshki, Mitra, Bengio & Lajoie, "Multi-scale
  feature learning dynamics: insights for double descent", ICML 2022.
- **Expected risk of min-norm regression with isotropic Gaussian inputs.**
  x ~ N(0, I_d), y = xᵀβ + ε, ε ~ N(0, σ²), β̂ = X⁺y from n samples; the test
  risk R = E(xᵀβ̂ − y)² = ‖β̂ − β‖² + σ² has expectation

      n ≤ d − 2:  E R = ‖β‖²(1 − n/d) + σ²·n/(d − n − 1) + σ²,
      n ≥ d + 2:  E R = σ²·d/(n − d − 1) + σ²,

  and is infinite for d − 1 ≤ n ≤ d + 1 (Belkin, Hsu & Xu, "Two models of
  double descent for weak features", SIAM J. Math. Data Sci. 2020, Thm. 1;
  Hastie, Montanari, Rosset & Tibshirani, "Surprises in high-dimensional
  ridgeless least squares interpolation", Ann. Stat. 2022; the "more data can
  hurt" curve of Nakkiran 2019, arXiv 1912.07242). Derivation: for n < d,
  X⁺X = P projects onto the row space of X, a uniformly random n-dimensional
  subspace, so E‖(I − P)β‖² = (1 − n/d)‖β‖², and E‖X⁺ε‖² =
  σ²·E tr (XXᵀ)⁻¹ = σ²·n/(d − n − 1) (the mean of an inverse Wishart
  W_n(I, d) is I/(d − n − 1)); for n > d, β̂ − β = (XᵀX)⁻¹Xᵀε and
  E‖·‖² = σ²·E tr (XᵀX)⁻¹ = σ²·d/(n − d − 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from threadpoolctl import threadpool_limits

__all__ = [
    "gd_least_squares_path",
    "two_scale_data",
    "group_risk",
    "minnorm_expected_risk",
    "minnorm_risk_sample",
]


def _as_steps(steps: Sequence[int] | np.ndarray) -> np.ndarray:
    t = np.asarray(steps)
    if t.ndim != 1 or not np.issubdtype(t.dtype, np.integer) or np.any(t < 0):
        raise ValueError(f"steps must be a 1-D sequence of integers >= 0, got {steps!r}")
    return t.astype(np.int64)


def gd_least_squares_path(
    x: np.ndarray,
    y: np.ndarray,
    lr: float,
    steps: Sequence[int] | np.ndarray,
    precond: np.ndarray | None = None,
) -> np.ndarray:
    """The GD iterates w_t on L(w) = (1/2n)‖Xw − y‖² from w_0 = 0, in closed form.

    w_t = D^{1/2} V diag((1 − (1 − ηλ_i)^t)/λ_i) Vᵀ D^{1/2} b with
    A = D^{1/2}(XᵀX/n)D^{1/2} = V diag(λ) Vᵀ and b = Xᵀy/n (module docstring),
    for the update w_{t+1} = w_t − η·D·∇L(w_t).

    Args:
        x: (n, d) inputs; y: (n,) targets.
        lr: the step size η > 0 (stable when η·λ_max(A) < 2; not required).
        steps: the step counts t at which to return w_t.
        precond: the diagonal of D, shape (d,), all > 0 (None: D = I).

    Returns:
        (len(steps), d) float64 array, row j = w at ``steps[j]``.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"need x of shape (n, d) and y of shape (n,), got {x.shape}, {y.shape}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    n, d = x.shape
    p = np.ones(d) if precond is None else np.asarray(precond, dtype=np.float64)
    if p.shape != (d,) or not np.all(np.isfinite(p) & (p > 0)):
        raise ValueError(f"precond must be {d} finite numbers > 0, got {precond!r}")
    t = _as_steps(steps)
    root = np.sqrt(p)
    xs = x * root  # X D^{1/2}
    with threadpool_limits(1):
        lam, v = np.linalg.eigh(xs.T @ xs / n)
    c = v.T @ (xs.T @ y / n)  # Vᵀ D^{1/2} b
    tol = d * np.finfo(np.float64).eps * max(lam.max(), 0.0)
    live = lam > tol
    safe = np.where(live, lam, 1.0)
    # (1 − (1 − ηλ)^t)/λ for every (t, i), through expm1/log1p where 1 − ηλ > 0 (accurate for
    # small ηλ and large t); a negative base (η·λ > 1) takes the plain power
    base = 1.0 - lr * safe
    with np.errstate(over="ignore", invalid="ignore"):
        pos = base > 0
        logb = np.log(np.where(pos, base, 1.0))
        power = np.where(pos, np.exp(np.outer(t, logb)), np.power.outer(base, t).T)
        frac = np.where(pos, -np.expm1(np.outer(t, logb)), 1.0 - power) / safe
    frac = np.where(live, frac, 0.0)
    return (frac * c) @ v.T * root


def two_scale_data(
    n: int,
    d_fast: int,
    d_slow: int,
    kappa: float,
    noise: float,
    signal_fast: float,
    signal_slow: float,
    seed: int,
) -> dict[str, np.ndarray]:
    """One draw of the linear teacher–student data of Pezeshki et al. (ICML 2022), Sec. 2.

    Latent z ~ N(0, I_d) (d = d_fast + d_slow); the teacher is y = zᵀβ* + ε,
    ε ~ N(0, noise²), with β* Gaussian of squared norm ≈ ``signal_fast`` on the
    fast block and ≈ ``signal_slow`` on the slow block; the student sees
    x = Fz with F = diag(1 (d_fast times), 1/κ (d_slow times)), so the slow
    directions have κ² times less input variance and GD learns them κ² times
    more slowly. In x-coordinates the target weights are w* = F⁻¹β*.

    Returns ``x`` (n, d), ``y`` (n,), ``scale`` (the diagonal of F),
    ``beta`` (β*) and ``w_star`` (F⁻¹β*).
    """
    for name, v in (("n", n), ("d_fast", d_fast), ("d_slow", d_slow)):
        if not (isinstance(v, (int, np.integer)) and v >= 1):
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if not (kappa >= 1 and noise >= 0 and signal_fast >= 0 and signal_slow >= 0):
        raise ValueError("need kappa >= 1 and noise, signal_fast, signal_slow >= 0")
    rng = np.random.default_rng(seed)
    scale = np.r_[np.ones(d_fast), np.full(d_slow, 1.0 / kappa)]
    beta = np.r_[
        rng.standard_normal(d_fast) * math.sqrt(signal_fast / d_fast),
        rng.standard_normal(d_slow) * math.sqrt(signal_slow / d_slow),
    ]
    z = rng.standard_normal((n, d_fast + d_slow))
    y = z @ beta + noise * rng.standard_normal(n)
    return {"x": z * scale, "y": y, "scale": scale, "beta": beta, "w_star": beta / scale}


def group_risk(w: np.ndarray, data: dict[str, np.ndarray], d_fast: int) -> dict[str, np.ndarray]:
    """Population excess risk of the student weights ``w`` ((T, d) or (d,)), split by block.

    With x = Fz, z ~ N(0, I): E(xᵀw − zᵀβ*)² = Σ_i (F_ii w_i − β*_i)², a sum over
    the fast block (i < d_fast) and the slow block. The test risk adds the
    noise variance to the ``total``.
    """
    err = (np.atleast_2d(w) * data["scale"] - data["beta"]) ** 2
    fast, slow = err[:, :d_fast].sum(1), err[:, d_fast:].sum(1)
    return {"fast": fast, "slow": slow, "excess": fast + slow}


def minnorm_expected_risk(n: int, d: int, beta_norm2: float, noise2: float) -> float:
    """E‖β̂ − β‖² + σ² of min-norm least squares, x ~ N(0, I_d) (module docstring).

    Belkin, Hsu & Xu 2020, Thm. 1: ‖β‖²(1 − n/d) + σ²n/(d − n − 1) + σ² for
    n ≤ d − 2; σ²d/(n − d − 1) + σ² for n ≥ d + 2; inf in between.
    """
    if not (n >= 1 and d >= 1):
        raise ValueError(f"need n >= 1 and d >= 1, got n={n}, d={d}")
    if not (beta_norm2 >= 0 and noise2 >= 0):
        raise ValueError("beta_norm2 and noise2 must be >= 0")
    if n <= d - 2:
        return beta_norm2 * (1 - n / d) + noise2 * n / (d - n - 1) + noise2
    if n >= d + 2:
        return noise2 * d / (n - d - 1) + noise2
    return math.inf


def minnorm_risk_sample(
    n: int, d: int, beta_norm2: float, noise2: float, rng: np.random.Generator
) -> float:
    """One Monte Carlo draw of ‖β̂ − β‖² + σ² for min-norm least squares, x ~ N(0, I_d).

    β̂ = X⁺y through NumPy's SVD-based ``lstsq`` (the min-norm solution) on one
    BLAS thread; β is a uniformly random direction of squared norm ``beta_norm2``
    (the expected risk depends on β only through ‖β‖).
    """
    beta = rng.standard_normal(d)
    beta *= math.sqrt(beta_norm2) / np.linalg.norm(beta)
    x = rng.standard_normal((n, d))
    y = x @ beta + math.sqrt(noise2) * rng.standard_normal(n)
    with threadpool_limits(1):
        beta_hat = np.linalg.lstsq(x, y, rcond=None)[0]
    return float(np.sum((beta_hat - beta) ** 2) + noise2)
