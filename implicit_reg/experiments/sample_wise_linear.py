"""sample-wise-linear: more data can hurt, in min-norm linear and random-features regression.

Nakkiran, "More data can hurt for linear regression: sample-wise double
descent", 2019 (arXiv 1912.07242): for min-norm least squares with isotropic
Gaussian inputs in d dimensions, the test risk against the number of samples
n rises towards n = d and falls beyond it, so in a range below d more data
gives a worse predictor. The expected risk has a closed form on both sides of
d (Belkin, Hsu & Xu 2020, Thm. 1; :func:`~implicit_reg.experiments._linear.minnorm_expected_risk`),
drawn here beside the Monte Carlo. The same happens for random-features
regression at a fixed number of features N when n passes through N (the
interpolation threshold of Belkin et al., PNAS 2019, crossed along n instead
of N; Nakkiran et al., "Deep double descent", arXiv 1912.02292, Sec. 7).

What is run: (a) x ~ N(0, I_d), y = xᵀβ + ε, β̂ = X⁺y by the package's
:func:`~implicit_reg.workloads.models.min_norm_fit_gram`, the risk
‖β̂ − β‖² + σ² exactly (no test set), several draws per n; (b) MNIST-1D with
one-hot targets, N random Fourier features (``build_model("rf_fourier")``,
:func:`~implicit_reg.workloads.models.random_features`), the min-norm readout
on the first n samples of a random order of the 4,000 training samples
(nested subsets), test error and test MSE on the 1,000 test samples, one
feature draw and order per seed. The experiment is a
:class:`~implicit_reg.experiments._spec.Spec` that ``measure``s both tables (no engine
runs); a store-only report re-judges them from ``linear.csv`` and ``random_features.csv``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from implicit_reg.report.report import Claim, Report, attempt, fmt, mean_std, plot_band
from implicit_reg.stats import equivalence_test, paired_test, welch_test
from implicit_reg.workloads.data import load_dataset
from implicit_reg.workloads.models import build_model, min_norm_fit_gram, random_features

from ._linear import minnorm_expected_risk
from ._spec import Spec, run_spec

NAME = "sample-wise-linear"
TITLE = (
    "Sample-wise double descent: more data can hurt min-norm linear regression at n ≈ d and "
    "random-features regression at n ≈ N"
)
PAPER = (
    "Nakkiran, *More data can hurt for linear regression: sample-wise double descent*, 2019 "
    "(arXiv 1912.07242), Fig. 1; closed form: Belkin, Hsu & Xu, *Two models of double descent "
    "for weak features*, SIAM J. Math. Data Sci. 2020, Thm. 1; Nakkiran et al., *Deep double "
    "descent*, 2019 (arXiv 1912.02292), Sec. 7"
)
#: the Monte Carlo risk "matches" the closed form when their ratio is within 1 ± this (TOST)
CLOSED_FORM_MARGIN = 0.15


@dataclasses.dataclass(frozen=True)
class Config:
    # (a) min-norm linear regression, isotropic Gaussian inputs
    d: int = 1000
    n_over_d: tuple[float, ...] = (
        0.1, 0.25, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 1.02, 1.05, 1.1, 1.2, 1.4, 1.7, 2.0
    )  # fmt: skip
    beta_norm2: float = 1.0  # ‖β‖²
    noise2: float = 0.25  # σ²
    trials: int = 8  # draws (X, β, ε) per n
    # (b) random-features regression on MNIST-1D at a fixed N
    features: int = 1000  # N
    n_over_N: tuple[float, ...] = (
        0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0, 1.05, 1.1, 1.25, 1.5, 2.0, 3.0, 4.0
    )  # fmt: skip
    rf_seeds: int = 3  # feature draws (each with its own order of the training samples)
    # the claims: "more data hurts" compares n = hurt_from·d with n = hurt_to·d (and ·N)
    hurt_from: float = 0.5
    hurt_to: float = 0.9


CONFIGS = {
    "smoke": Config(
        d=40,
        n_over_d=(0.25, 0.5, 0.9, 1.1, 2.0),
        trials=4,
        features=100,
        n_over_N=(0.5, 0.9, 1.0, 2.0),
        rf_seeds=2,
    ),  # fmt: skip
    "demo": Config(d=400, trials=8, features=500, rf_seeds=3),
    "small": Config(),
    "full": Config(
        trials=40,
        rf_seeds=8,
        n_over_N=tuple(
            sorted({*np.round(np.geomspace(0.1, 4, 19), 3).tolist(), 0.9, 0.95, 1.0, 1.05, 1.1})
        ),
    ),  # fmt: skip
}


def sample_sizes(d: int, ratios) -> list[int]:
    """n = round(r·d), without the n at which the expected risk is infinite (|n − d| ≤ 1)."""
    out = sorted({max(1, int(round(r * d))) for r in ratios})
    return [n for n in out if abs(n - d) > 1]


def linear_sweep(cfg: Config) -> pd.DataFrame:
    """Monte Carlo risk of min-norm regression (one row per n and trial) beside the closed form."""
    rows = []
    for n in sample_sizes(cfg.d, cfg.n_over_d):
        for trial in range(cfg.trials):
            rng = np.random.default_rng([cfg.d, n, trial])
            beta = rng.standard_normal(cfg.d)
            beta *= math.sqrt(cfg.beta_norm2) / np.linalg.norm(beta)
            x = rng.standard_normal((n, cfg.d))
            y = x @ beta + math.sqrt(cfg.noise2) * rng.standard_normal(n)
            beta_hat = min_norm_fit_gram(x, y)
            rows.append(
                {
                    "n": n, "n/d": n / cfg.d, "trial": trial,
                    "risk": float(np.sum((beta_hat - beta) ** 2) + cfg.noise2),
                    "norm": float(np.linalg.norm(beta_hat)),
                    "closed_form": minnorm_expected_risk(n, cfg.d, cfg.beta_norm2, cfg.noise2),
                }
            )  # fmt: skip
    return pd.DataFrame(rows)


def rf_sweep(cfg: Config) -> pd.DataFrame:
    """Min-norm random-features regression on MNIST-1D at N features, n swept (one row per
    seed and n)."""
    data = load_dataset("mnist1d", task="regression").to(dtype=torch.float64)
    pool = len(data.x_train)
    sizes = sorted({min(pool, max(1, int(round(r * cfg.features)))) for r in cfg.n_over_N})
    rows = []
    for seed in range(cfg.rf_seeds):
        model = build_model("rf_fourier", input_dim=data.input_dim, output_dim=data.output_dim,
                            width=cfg.features, seed=seed, bias=False).double()  # fmt: skip
        order = torch.as_tensor(np.random.default_rng([7, seed]).permutation(pool))
        phi_all = random_features(model, data.x_train)[order]
        y_all = data.y_train[order]
        phi_test = random_features(model, data.x_test)
        for n in sizes:
            beta = min_norm_fit_gram(phi_all[:n], y_all[:n])
            pred = phi_test @ beta
            rows.append(
                {
                    "seed": seed, "n": n, "n/N": n / cfg.features,
                    "test_error": float((pred.argmax(1) != data.y_test.argmax(1)).double().mean()),
                    "test_mse": float(((pred - data.y_test) ** 2).sum(1).mean()),
                    "norm": float(torch.linalg.norm(beta)),
                }
            )  # fmt: skip
    return pd.DataFrame(rows)


def _at(df: pd.DataFrame, xcol: str, x: float, col: str) -> np.ndarray:
    """The values of ``col`` at the grid point nearest ``x``, ordered by seed/trial."""
    grid = np.sort(df[xcol].unique())
    g = grid[np.argmin(np.abs(grid - x))]
    return df[np.isclose(df[xcol], g)].sort_values(df.columns[0])[col].to_numpy()


def nearest(df: pd.DataFrame, xcol: str, x: float) -> float:
    grid = np.sort(df[xcol].unique())
    return float(grid[np.argmin(np.abs(grid - x))])


def figure(lin: pd.DataFrame, rf: pd.DataFrame, cfg: Config) -> Figure:
    fig = Figure(figsize=(14, 4.6), layout="constrained")
    axes = fig.subplots(1, 3)
    ax = axes[0]
    g = lin.groupby("n")
    m, se = g.risk.mean(), g.risk.std(ddof=1) / np.sqrt(g.risk.count())
    ax.errorbar(m.index, m.to_numpy(), yerr=2 * se.to_numpy(), fmt="o", ms=4, capsize=2,
                label=f"Monte Carlo, mean ± 2 SE over {cfg.trials} draws")  # fmt: skip
    nn = np.r_[np.arange(1, cfg.d - 1), np.arange(cfg.d + 2, int(lin.n.max()) + 1)]
    cf = np.array([minnorm_expected_risk(int(n), cfg.d, cfg.beta_norm2, cfg.noise2) for n in nn])
    for part in (nn < cfg.d, nn > cfg.d):
        ax.plot(nn[part], cf[part], "k-", lw=1)
    ax.plot([], [], "k-", label="closed form E R (Belkin, Hsu & Xu 2020)")
    ax.axvline(cfg.d, color="k", ls="--", lw=0.8, label="n = d")
    ax.axhline(cfg.beta_norm2 + cfg.noise2, color="0.6", ls=":", lw=1, label="risk of β̂ = 0")
    ax.set(yscale="log", xlabel="training samples n", ylabel="test risk E(xᵀβ̂ − y)²",
           title=f"(a) min-norm linear regression, d = {cfg.d:,}")  # fmt: skip
    ax.legend(fontsize=7)
    for ax, col, ylabel in (
        (axes[1], "test_error", "test classification error"),
        (axes[2], "test_mse", "test MSE, mean of ‖f(x) − y‖²"),
    ):
        piv = rf.pivot(index="seed", columns="n", values=col)
        plot_band(ax, piv.columns.to_numpy(), piv.to_numpy(), label=f"N = {cfg.features:,}, "
                  f"mean ± std over {cfg.rf_seeds} draws", marker="o", ms=3,
                  geometric=col == "test_mse")  # fmt: skip
        ax.axvline(cfg.features, color="k", ls="--", lw=0.8, label="n = N")
        ax.set(xscale="log", xlabel="training samples n (log)", ylabel=ylabel,
               title=f"({'b' if col == 'test_error' else 'c'}) RF on MNIST-1D: {ylabel.split(',')[0]}")  # fmt: skip
        if col == "test_mse":
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.suptitle(
        f"Sample-wise double descent: (a) x ~ N(0, I_d), ‖β‖² = {cfg.beta_norm2:g}, σ² = "
        f"{cfg.noise2:g}; (b) min-norm readout on N = {cfg.features:,} random features"
    )
    return fig


def measure(cfg: Config) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(a) the linear Monte Carlo beside the closed form, (b) the random-features sweep."""
    return linear_sweep(cfg), rf_sweep(cfg)


@dataclasses.dataclass(frozen=True)
class Analysis:
    """(a) ``lin``: one row per n and draw; (b) ``rf``: one row per feature draw and n;
    the sample sizes the claims compare, as grid points n/d and n/N."""

    lin: pd.DataFrame
    rf: pd.DataFrame
    n_a: float  # n/d nearest hurt_from
    n_b: float  # n/d nearest hurt_to
    below: float  # n/d nearest 0.8
    above: float  # n/d nearest 1.2
    rf_a: float  # n/N nearest hurt_from
    rf_b: float  # n/N nearest 1

    @property
    def means(self) -> pd.Series:
        return self.lin.groupby("n").risk.mean()


def analyze(tables: tuple[pd.DataFrame, pd.DataFrame], cfg: Config) -> Analysis:
    """The grid points nearest the sample sizes the claims name."""
    lin, rf = tables
    return Analysis(
        lin, rf,
        n_a=nearest(lin, "n/d", cfg.hurt_from), n_b=nearest(lin, "n/d", cfg.hurt_to),
        below=nearest(lin, "n/d", 0.8), above=nearest(lin, "n/d", 1.2),
        rf_a=nearest(rf, "n/N", cfg.hurt_from), rf_b=nearest(rf, "n/N", 1.0),
    )  # fmt: skip


def claims(a: Analysis, cfg: Config) -> list[Claim]:
    """The closed form, more data hurting below d, the peak at n ≈ d, and more data hurting
    random features at n = N."""
    lin, d = a.lin, cfg.d
    finite = [
        n for n, v in lin.groupby("n") if np.isfinite(v.closed_form.iloc[0]) and abs(n - d) > 1
    ]
    ra, rb = _at(lin, "n/d", a.n_a, "risk"), _at(lin, "n/d", a.n_b, "risk")
    means = a.means
    peak_n = min(means.index, key=lambda n: abs(n - d))
    rp = lin[lin.n == peak_n].risk.to_numpy()

    def closed(ratio: float) -> str:
        return fmt(minnorm_expected_risk(round(ratio * d), d, cfg.beta_norm2, cfg.noise2))

    out = [
        Claim(
            "The Monte Carlo risk of min-norm regression matches the closed form (within "
            f"±{100 * CLOSED_FORM_MARGIN:g}%) on both sides of d",
            "Belkin, Hsu & Xu 2020: E R = ‖β‖²(1 − n/d) + σ²n/(d−n−1) + σ² (n < d − 1), "
            "σ²d/(n−d−1) + σ² (n > d + 1)",
            tuple(
                attempt(
                    equivalence_test,
                    (v := lin[lin.n == n]).risk.to_numpy() / v.closed_form.to_numpy(),
                    np.ones(len(v)),
                    margin=CLOSED_FORM_MARGIN,
                )
                for n in finite
            ),
            context=f"the ratio MC risk / closed form at each of {len(finite)} sample sizes "
            f"({cfg.trials} draws each; unpaired draws, so the test's pairing with 1 is trivial)",
            effect="closed form",
        ),
        Claim(
            f"More data hurts below d: n = {a.n_b * d:,.0f} has a higher test risk than n = "
            f"{a.n_a * d:,.0f}",
            "Nakkiran 2019, Fig. 1",
            (attempt(welch_test, rb, ra),),
            context=f"risk n = {a.n_a * d:,.0f}: {mean_std(ra)} (closed form {closed(a.n_a)}); "
            f"n = {a.n_b * d:,.0f}: {mean_std(rb)} (closed form {closed(a.n_b)}); "
            "independent draws at each n",
            headline=True,
        ),
        Claim(
            f"The risk peaks at n ≈ d (placed by the theory at n = {peak_n:,}): above n = "
            f"{a.below * d:,.0f} and above n = {a.above * d:,.0f} (log scale: the risk is "
            "heavy-tailed near d)",
            "Nakkiran 2019, Fig. 1 (peak at n = d)",
            (
                attempt(welch_test, rp, _at(lin, "n/d", a.below, "risk"), log=True),
                attempt(welch_test, rp, _at(lin, "n/d", a.above, "risk"), log=True),
            ),
            context=f"highest mean risk at n = {int(means.idxmax()):,} ({fmt(means.max())}); at "
            f"n = {int(means.index.max()):,}: "
            f"{mean_std(lin[lin.n == means.index.max()].risk.to_numpy())}",
        ),
    ]
    rf, big_n = a.rf, cfg.features
    for col, what in (("test_error", "test error"), ("test_mse", "test MSE")):
        va, vb = _at(rf, "n/N", a.rf_a, col), _at(rf, "n/N", a.rf_b, col)
        out.append(Claim(
            f"Random features (N = {big_n:,}): the {what} at n = N is higher than at n = "
            f"{a.rf_a * big_n:,.0f} (more data hurts)",
            "Nakkiran et al. 2019, Sec. 7; Belkin et al. 2019 (peak at n = N)",
            (attempt(paired_test, vb, va, log=col == "test_mse"),),
            context=f"n = {a.rf_a * big_n:,.0f}: {mean_std(va)}; n = N: {mean_std(vb)}; highest "
            f"mean at n = {int(rf.groupby('n')[col].mean().idxmax()):,}; paired over feature "
            "draws",
        ))  # fmt: skip
    return out


def figures(a: Analysis, cfg: Config) -> list[tuple[Figure, str, str]]:
    return [
        (
            figure(a.lin, a.rf, cfg),
            "sample_wise_linear.png",
            "(a) Test risk of min-norm linear regression against n (Monte Carlo, mean ± 2 SE; "
            "black: the closed form, infinite at n = d ± 1). (b, c) Test error and MSE of "
            "min-norm random-features regression at fixed N against n; dashed: the threshold.",
        )
    ]


def extras(report: Report, a: Analysis, cfg: Config) -> None:
    d, big_n = cfg.d, cfg.features
    report.add_table(
        [
            {
                "n": n, "n/d": n / d, "draws": len(v), "MC risk": mean_std(v.risk.to_numpy()),
                "SE": fmt(v.risk.std(ddof=1) / np.sqrt(len(v))),
                "closed form": fmt(v.closed_form.iloc[0]), "‖β̂‖": mean_std(v.norm.to_numpy()),
            }
            for n, v in a.lin.groupby("n")
        ],
        heading="(a) Min-norm linear regression",
        caption=f"d = {d:,}, ‖β‖² = {cfg.beta_norm2:g}, σ² = {cfg.noise2:g}; the risk is "
        "computed exactly for each draw (‖β̂ − β‖² + σ²), so the spread is over draws only.",
    )  # fmt: skip
    report.add_table(
        [
            {
                "n": n, "n/N": n / big_n, "test error": mean_std(v.test_error.to_numpy()),
                "test MSE": mean_std(v.test_mse.to_numpy()), "‖β‖": mean_std(v.norm.to_numpy()),
            }
            for n, v in a.rf.groupby("n")
        ],
        heading="(b) Random-features regression at fixed N",
        caption=f"N = {big_n:,} random Fourier features (bandwidth: the package default √d), "
        f"MNIST-1D one-hot targets, nested subsets of the 4,000 training samples, 1,000 test "
        f"samples; mean ± std over {cfg.rf_seeds} feature draws.",
    )  # fmt: skip


SPEC = Spec(
    NAME, TITLE, PAPER, CONFIGS, None, analyze, claims, figures, extras,
    measure=measure, measured=("linear.csv", "random_features.csv"),
)  # fmt: skip


def run(scale: str, out: Path) -> Report:
    """Run sample-wise-linear at ``scale`` and write its report into ``out`` (a store-only
    report re-judges the stored ``linear.csv`` and ``random_features.csv``)."""
    return run_spec(SPEC, scale, out)
