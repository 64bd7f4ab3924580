"""double-descent-rf: min-norm random-features regression on MNIST-1D peaks at N = n.

Belkin, Hsu, Ma & Mandal, "Reconciling modern machine-learning practice and
the classical bias–variance trade-off", PNAS 2019, Sec. 3 and Fig. 2: for
random Fourier features φ(x) ∈ R^N and the minimum-norm least-squares
readout β = Φ⁺Y on one-hot targets, the test error against N traces the
classical U below N = n, peaks at the interpolation threshold N = n (the
readout must fit n numbers per output with N coefficients) and falls again
beyond it; the norm ‖β‖ of the interpolant peaks there too and then
decreases as N grows.

What is run: MNIST-1D (``load_dataset("mnist1d", task="regression")``,
one-hot targets), random Fourier features from ``build_model("rf_fourier")``
and :func:`implicit_reg.workloads.models.random_features`, the min-norm fit from
:func:`implicit_reg.workloads.models.min_norm_fit_gram` (one BLAS thread), for N/n
from 0.1 to 10, denser near 1, and several draws of the features (seeds). The
experiment is a :class:`~implicit_reg.experiments._spec.Spec` that ``measure``s its
sweep and bandwidth probe (no engine runs); a store-only report re-judges them from
``sweep.csv`` and ``bandwidth_probe.csv``.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from implicit_reg.report.report import Claim, Report, attempt, fmt, mean_std, plot_band
from implicit_reg.stats import equivalence_test, paired_test, peak_test
from implicit_reg.workloads.data import load_dataset
from implicit_reg.workloads.models import (
    build_model,
    min_norm_fit,
    min_norm_fit_gram,
    random_features,
)

from ._spec import Spec, run_spec

NAME = "double-descent-rf"
TITLE = "Double descent of min-norm random-features regression on MNIST-1D"
PAPER = (
    "Belkin, Hsu, Ma & Mandal, *Reconciling modern machine-learning practice and the classical "
    "bias–variance trade-off*, PNAS 2019, Sec. 3, Fig. 2 (random Fourier features, min-norm fit)"
)
# Reference measured earlier on this machine: RFF on MNIST-1D at n = 4,000,
# N/n -> (test error, ‖β‖).
REFERENCE = {0.25: (0.505, 37.0), 1.0: (0.906, 38_000.0), 10.0: (0.398, 138.0)}
#: "our numbers match the reference": the test error within ± this at every N/n (TOST)
REFERENCE_MARGIN = 0.03


@dataclasses.dataclass(frozen=True)
class Config:
    n_train: int = 4000
    n_test: int = 1000
    ratios: tuple[float, ...] = (
        0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0, 1.05, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0
    )  # fmt: skip
    seeds: int = 3  # independent draws of the random features
    features: str = "rf_fourier"  # or "rf_relu"
    data_seed: int = 0  # the MNIST-1D subset
    label_noise: float = 0.0
    bandwidth: float | None = None  # RFF bandwidth σ; None: the package default √d
    # check against the SVD min_norm_fit where n and N are at most this
    crosscheck_svd_max_n: int = 1000
    probe_bandwidths: tuple[float, ...] = (3.0, 4.0, 10.0)  # extra σ tried at probe_ratio
    probe_ratio: float = 0.25
    # σ also run at the reference's N/n (REFERENCE), to compare like with like; None: skip
    reference_bandwidth: float | None = 4.0


CONFIGS = {
    "smoke": Config(
        n_train=200, n_test=200, ratios=(0.25, 0.5, 1.0, 2.0, 4.0), seeds=2, probe_bandwidths=(4.0,)
    ),
    "demo": Config(
        n_train=1000,
        ratios=(0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0),
        seeds=3,
        probe_bandwidths=(),
        reference_bandwidth=None,
        crosscheck_svd_max_n=500,
    ),  # fmt: skip
    "small": Config(),
    "full": Config(
        ratios=tuple(
            sorted({*np.round(np.geomspace(0.1, 10, 21), 3).tolist(), 0.9, 0.95, 1.0, 1.05, 1.1})
        ),
        seeds=5,
    ),
}


def fit_one(data, width: int, seed: int, cfg: Config, bandwidth: float | None = None) -> dict:
    """Fit the min-norm readout on ``width`` random features; return the metrics."""
    extra = {} if bandwidth is None or cfg.features != "rf_fourier" else {"bandwidth": bandwidth}
    model = build_model(
        cfg.features, input_dim=data.input_dim, output_dim=data.output_dim, width=width, seed=seed,
        bias=False, **extra,
    ).double()  # fmt: skip
    t0 = time.perf_counter()
    phi = random_features(model, data.x_train)  # (n, N) float64
    phi_test = random_features(model, data.x_test)
    beta = min_norm_fit_gram(phi, data.y_train)  # (N, k)
    seconds = time.perf_counter() - t0
    pred, pred_train = phi_test @ beta, phi @ beta
    row = dict(
        seed=seed,
        N=width,
        ratio=width / data.n_train,
        test_error=float((pred.argmax(1) != data.y_test.argmax(1)).double().mean()),
        test_mse=float(((pred - data.y_test) ** 2).sum(1).mean()),
        train_mse=float(((pred_train - data.y_train) ** 2).sum(1).mean()),
        train_error=float((pred_train.argmax(1) != data.y_train.argmax(1)).double().mean()),
        norm=float(torch.linalg.norm(beta)),
        fit_seconds=seconds,
    )
    if max(phi.shape) <= cfg.crosscheck_svd_max_n:  # the SVD solution as an oracle
        oracle = min_norm_fit(phi, data.y_train)
        row["svd_rel_diff"] = float(torch.linalg.norm(beta - oracle) / torch.linalg.norm(oracle))
    return row


def sweep(cfg: Config) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The sweep over N (one row per seed and N), and the probe: every bandwidth
    at N/n = probe_ratio, and reference_bandwidth at the reference's N/n (one
    row per seed, bandwidth and N)."""
    data = load_dataset(
        "mnist1d", n_train=cfg.n_train, n_test=cfg.n_test, label_noise=cfg.label_noise,
        seed=cfg.data_seed, task="regression",
    ).to(dtype=torch.float64)  # fmt: skip
    widths = sorted({max(1, int(round(r * cfg.n_train))) for r in cfg.ratios})
    df = pd.DataFrame(
        [fit_one(data, w, s, cfg, cfg.bandwidth) for s in range(cfg.seeds) for w in widths]
    )
    default = cfg.bandwidth if cfg.bandwidth is not None else float(np.sqrt(data.input_dim))
    if cfg.features != "rf_fourier":
        return df, pd.DataFrame()
    runs = {(bw, cfg.probe_ratio) for bw in (*cfg.probe_bandwidths, default)}
    if cfg.reference_bandwidth is not None:
        runs |= {(cfg.reference_bandwidth, r) for r in REFERENCE}
    probe = [
        dict(bandwidth=bw, **fit_one(data, max(1, int(round(r * cfg.n_train))), s, cfg, bw))
        for bw, r in sorted(runs)
        for s in range(cfg.seeds)
    ]
    return df, pd.DataFrame(probe)


def curves_figure(df: pd.DataFrame, probe: pd.DataFrame, cfg: Config) -> Figure:
    """Test error, test MSE and ‖β‖ against N/n, mean ± std over feature draws."""
    fig = Figure(figsize=(15, 4.4), layout="constrained")
    axes = fig.subplots(1, 3)
    panels = (
        ("test_error", "test classification error", False),
        ("test_mse", "test MSE, mean of ‖f(x) − y‖²", True),
        ("norm", "‖β‖ of the min-norm readout", True),
    )
    for ax, (col, label, log) in zip(axes, panels):
        piv = df.pivot(index="seed", columns="ratio", values=col)
        plot_band(ax, piv.columns.values, piv.values, label=f"ours, σ = √d, n = {cfg.n_train:,}",
                  color="C0", geometric=log, marker="o", ms=3)  # fmt: skip
        if cfg.reference_bandwidth is not None and len(probe):
            sel = probe[np.isclose(probe.bandwidth, cfg.reference_bandwidth)]
            v = sel.pivot(index="seed", columns="ratio", values=col)
            if log:  # geometric mean ± std, as the bands
                lv = np.log10(v.values)
                mid = 10 ** lv.mean(0)
                yerr = [mid - 10 ** (lv.mean(0) - lv.std(0)), 10 ** (lv.mean(0) + lv.std(0)) - mid]
            else:
                mid, yerr = v.values.mean(0), v.values.std(0)
            ax.errorbar(v.columns.values, mid, yerr=yerr, fmt="D", color="C1", ms=5, capsize=3,
                        label=f"ours, σ = {cfg.reference_bandwidth:g} (reference's N/n)")  # fmt: skip
        if col in ("test_error", "norm") and cfg.n_train == 4000:
            i = 0 if col == "test_error" else 1
            ax.plot(list(REFERENCE), [v[i] for v in REFERENCE.values()], "kx", ms=9, mew=2,
                    label="reference, n = 4,000 (re-measured here earlier, not the paper)")  # fmt: skip
        ax.axvline(1.0, color="k", ls="--", lw=1, label="N = n (interpolation threshold)")
        ax.set(xscale="log", xlabel="N / n  (random features per training sample)", ylabel=label)
        lo, hi = df.ratio.min(), max(df.ratio.max(), probe.ratio.max() if len(probe) else 0)
        ticks = [t for t in (0.1, 0.25, 0.5, 1, 2, 5, 10) if lo <= t <= hi]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
        if log:
            ax.set_yscale("log")
        ax.set_title(label.split(",")[0] + " vs N/n")
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(
        f"Min-norm {cfg.features} regression on MNIST-1D, n = {cfg.n_train:,}, "
        f"one-hot targets, {cfg.seeds} feature draws (mean ± std)"
    )
    return fig


@dataclasses.dataclass(frozen=True)
class Analysis:
    """The sweep (one row per feature draw and N), the bandwidth probe (one row per draw,
    σ and N; empty for ``rf_relu``), the means by N/n, and the grid points the claims
    test: ``lo_r``, ``hi_r`` (nearest N/n = 0.5 and 2) and ``r_last`` (the widest)."""

    sweep: pd.DataFrame
    probe: pd.DataFrame
    mean: pd.DataFrame  # numeric columns, mean over draws, indexed by ratio
    lo_r: float
    hi_r: float

    @property
    def under(self) -> pd.DataFrame:
        return self.mean[self.mean.index < 1]

    @property
    def over(self) -> pd.DataFrame:
        return self.mean[self.mean.index > 1]

    @property
    def r_last(self) -> float:
        return float(self.over.index.max())

    def per_seed(self, ratio: float, col: str) -> np.ndarray:
        """``col`` at the grid ratio nearest ``ratio``, ordered by seed (feature draw)."""
        r = nearest_ratio(self.mean, ratio)
        return self.sweep[np.isclose(self.sweep.ratio, r)].sort_values("seed")[col].to_numpy()

    def at(self, ratio: float, col: str) -> str:
        return mean_std(self.sweep[np.isclose(self.sweep.ratio, ratio)][col].values)

    def probe_at(self, bw: float, ratio: float, col: str) -> np.ndarray:
        if not len(self.probe):
            return np.array([])
        p = self.probe
        return p[np.isclose(p.bandwidth, bw) & np.isclose(p.ratio, ratio)][col].to_numpy()


def nearest_ratio(mean: pd.DataFrame, ratio: float) -> float:
    grid = mean.index.to_numpy()
    return float(grid[np.argmin(np.abs(grid - ratio))])


def analyze(tables: tuple[pd.DataFrame, pd.DataFrame], cfg: Config) -> Analysis:
    """Means over feature draws by N/n and the grid points the claims test."""
    df, probe = tables
    mean = df.groupby("ratio").mean(numeric_only=True)
    return Analysis(df, probe, mean, nearest_ratio(mean, 0.5), nearest_ratio(mean, 2.0))


def claims(a: Analysis, cfg: Config) -> list[Claim]:
    """The peak at N = n (placed by the theory), the second descent below the classical
    best, the norm's peak (log scale), and the match to the reference re-measured here."""
    mean, lo_r, hi_r = a.mean, a.lo_r, a.hi_r
    trio = np.stack([a.per_seed(r, "test_error") for r in (lo_r, 1.0, hi_r)], axis=1)
    out = [
        Claim(
            f"Test error peaks at the interpolation threshold N = n (placed by the theory): "
            f"above N/n = {lo_r:g} and N/n = {hi_r:g}",
            "Belkin et al. 2019, Fig. 2 (peak at N = n)",
            (attempt(peak_test, trio, at=1),),
            context=f"highest mean test error {mean.test_error.max():.3f} at N/n = "
            f"{float(mean.test_error.idxmax()):g}; paired over feature draws",
            headline=True,
        )
    ]
    under, over, df = a.under, a.over, a.sweep
    if len(under) and len(over):
        r_last = a.r_last
        # the classical best of each feature draw is its own minimum over N < n: choosing it
        # per draw favours the classical side, so the test is conservative for the claim
        under_best = (
            df[df.ratio < 1].pivot_table(index="seed", columns="ratio", values="test_error")
            .min(axis=1).sort_index().to_numpy()
        )  # fmt: skip
        out.append(Claim(
            "Beyond the threshold the test error falls again, below the classical regime's best",
            "Belkin et al. 2019, Fig. 2: second descent; the best model is the largest",
            (attempt(paired_test, under_best, a.per_seed(r_last, "test_error")),),
            context=f"best mean test error for N < n: {under.test_error.min():.3f} (N/n = "
            f"{float(under.test_error.idxmin()):g}); for N > n: {over.test_error.min():.3f} "
            f"(N/n = {over.test_error.idxmin():g}); tested: each draw's best N < n minus its "
            f"error at N/n = {r_last:g} (paired)",
        ))  # fmt: skip
        norm = functools.partial(a.per_seed, col="norm")
        out.append(Claim(
            "The norm of the min-norm solution peaks at N = n and falls as N grows (log scale: "
            "‖β‖ is heavy-tailed at N = n)",
            "Belkin et al. 2019, Fig. 2: ‖β‖ peaks at the threshold, then decreases",
            (
                attempt(paired_test, norm(1.0), norm(lo_r), log=True),
                attempt(paired_test, norm(1.0), norm(hi_r), log=True),
                attempt(paired_test, norm(hi_r), norm(r_last), log=True),
            ),
            context=f"peak mean ‖β‖ {fmt(mean.norm.max())} at N/n = "
            f"{float(mean.norm.idxmax()):g}; tests: N = n against N/n = {lo_r:g} and "
            f"{hi_r:g}, N/n = {hi_r:g} against {r_last:g}",
        ))  # fmt: skip
    bw_ref = cfg.reference_bandwidth
    if bw_ref is not None and len(a.probe) and cfg.n_train == 4000:
        errs = {r: float(np.mean(a.probe_at(bw_ref, r, "test_error"))) for r in REFERENCE}
        out.append(Claim(
            f"Our numbers match the reference re-measured here within ±{REFERENCE_MARGIN:g} at "
            "every N/n (RFF, n = 4,000; not the paper's)",
            "re-measured on this machine earlier, not from the paper: test error "
            + " / ".join(f"{v[0]:g}" for v in REFERENCE.values())
            + " at N/n = " + " / ".join(f"{r:g}" for r in REFERENCE),
            tuple(
                attempt(equivalence_test,
                    (v := a.probe_at(bw_ref, r, "test_error")),
                    np.full_like(v, REFERENCE[r][0]),
                    margin=REFERENCE_MARGIN,
                )
                for r in REFERENCE
            ),
            context=f"σ = {bw_ref:g}: " + " / ".join(f"{errs[r]:.3f}" for r in REFERENCE)
            + "; σ = √d: " + " / ".join(
                f"{float(np.mean(df[np.isclose(df.ratio, r)].test_error)):.3f}"
                if np.isclose(df.ratio, r).any() else "—" for r in REFERENCE
            ),
        ))  # fmt: skip
    return out


def figures(a: Analysis, cfg: Config) -> list[tuple[Figure, str, str]]:
    return [
        (
            curves_figure(a.sweep, a.probe, cfg),
            "double_descent.png",
            "Test error, test MSE and coefficient norm against N/n (log scale); dashed: N = n.",
        )
    ]


def reference_table(a: Analysis, cfg: Config) -> list[dict]:
    """Ours against the reference re-measured here, at the reference's N/n."""
    sigma0 = cfg.bandwidth if cfg.bandwidth is not None else float(np.sqrt(40))
    bw_ref = cfg.reference_bandwidth
    rows = []
    for ratio, (err, norm) in REFERENCE.items():
        have = bool(np.isclose(a.sweep.ratio, ratio).any())
        row = {"N/n": ratio, "reference test error (re-measured)": err}
        row[f"ours, σ = {sigma0:.3g}"] = a.at(ratio, "test_error") if have else "—"
        if bw_ref is not None:
            row[f"ours, σ = {bw_ref:g}"] = mean_std(a.probe_at(bw_ref, ratio, "test_error"))
        row["reference ‖β‖ (re-measured)"] = norm
        row[f"‖β‖, σ = {sigma0:.3g}"] = a.at(ratio, "norm") if have else "—"
        if bw_ref is not None:
            row[f"‖β‖, σ = {bw_ref:g}"] = mean_std(a.probe_at(bw_ref, ratio, "norm"))
        rows.append(row)
    return rows


def extras(report: Report, a: Analysis, cfg: Config) -> None:
    """The reference, sweep and bandwidth-probe tables, the reading and the method notes."""
    comparable, bw_ref, df = cfg.n_train == 4000, cfg.reference_bandwidth, a.sweep
    if comparable or bw_ref is not None:
        report.add_table(
            reference_table(a, cfg),
            heading="Against the reference re-measured here (not the paper's numbers)",
            caption=(
                "Reference: random Fourier features on MNIST-1D at n = 4,000, measured earlier on "
                "this machine with features we do not know exactly. Ours: mean ± std over "
                "feature draws, with the package's default bandwidth σ = √d"
                + (f" and with σ = {bw_ref:g} (see the bandwidth probe)" if bw_ref else "")
                + ("." if comparable else f" (not comparable: ours use n = {cfg.n_train:,}).")
            ),
        )
    report.add_table(
        [
            {
                "N/n": ratio,
                "N": int(g.N.iloc[0]),
                "test error": mean_std(g.test_error.values),
                "test MSE": mean_std(g.test_mse.values),
                "train MSE": mean_std(g.train_mse.values, 2),
                "‖β‖": mean_std(g.norm.values),
                "fit s": f"{g.fit_seconds.mean():.1f}",
            }
            for ratio, g in df.groupby("ratio")
        ],
        heading="Sweep",
        caption=(
            f"n = {cfg.n_train:,} training and {cfg.n_test:,} test samples, "
            f"{cfg.seeds} feature draws, mean ± std. Test MSE is the mean over test points of "
            "‖f(x) − y‖² summed over the 10 one-hot outputs. 'fit s': features + min-norm solve."
        ),
    )
    if len(a.probe):
        report.add_table(
            [
                {
                    "bandwidth σ": f"{bw:.3g}"
                    + (" (default √d)" if np.isclose(bw, np.sqrt(40)) else ""),
                    "test error": mean_std(g.test_error.values),
                    "‖β‖": mean_std(g.norm.values),
                }
                for bw, g in a.probe[np.isclose(a.probe.ratio, cfg.probe_ratio)].groupby(
                    "bandwidth"
                )
            ],
            heading=f"Bandwidth probe at N/n = {cfg.probe_ratio:g}",
            caption=(
                "The random Fourier features are cos(Wx + b) with W ~ N(0, 1/σ²); the sweep uses "
                "the package default σ = √d. The reference's features are not recorded; this "
                "probe shows how strongly the numbers at a fixed N/n depend on σ (reference at "
                f"N/n = 0.25: test error {REFERENCE[0.25][0]}, ‖β‖ {REFERENCE[0.25][1]:g})."
            ),
        )
    at_peak, under, over = df[np.isclose(df.ratio, 1.0)], a.under, a.over
    if len(at_peak) > 1 and len(under) and len(over):
        spread = float(at_peak.norm.max() / at_peak.norm.min())
        report.add_text(
            f"The test error goes from {under.test_error.min():.3f} (best with N < n) up to "
            f"{a.mean.test_error.max():.3f} at N/n = {float(a.mean.test_error.idxmax()):g} and "
            f"down again to {over.test_error.min():.3f} at N/n = {over.test_error.idxmin():g}, "
            "while ‖β‖ and the test MSE spike at N = n. The height of the spike "
            "itself (‖β‖ and test MSE at exactly N = n) is set by the smallest singular values "
            f"of the square feature matrix and varies by a factor {spread:.1f} between our "
            f"{cfg.seeds} feature draws, so a single reference value there is only an order of "
            "magnitude. Away from N = n the numbers are stable across draws. The bandwidth σ "
            "sets the scale of everything: ‖β‖ grows with σ, and the test error at a given N/n "
            "moves by several points between σ = 4 and √d.",
            heading="Reading",
        )
    notes = [
        "The fit is `min_norm_fit_gram` (Cholesky of the smaller Gram matrix, one BLAS thread), "
        "not the SVD-based `min_norm_fit`: at n = N = 4,000 the SVD took 121 s here against "
        "13 s for Gram + Cholesky, which puts n = 4,000 within the 10-minute budget. "
        "For N ≥ n the train MSE column shows how exactly each fit interpolates."
    ]
    if "svd_rel_diff" in df:
        d = df.svd_rel_diff.dropna()
        notes.append(
            f"Cross-check against the SVD `min_norm_fit` on the {len(d)} fits with n, N ≤ "
            f"{cfg.crosscheck_svd_max_n:,}: largest relative difference in β {d.max():.1e}."
        )
    report.add_text(" ".join(notes), heading="Method notes")


SPEC = Spec(
    NAME, TITLE, PAPER, CONFIGS, None, analyze, claims, figures, extras,
    measure=sweep, measured=("sweep.csv", "bandwidth_probe.csv"),
)  # fmt: skip


def run(scale: str, out: Path) -> Report:
    """Run double-descent-rf at ``scale`` and write its report into ``out`` (a store-only
    report re-judges the stored ``sweep.csv`` and ``bandwidth_probe.csv``)."""
    return run_spec(SPEC, scale, out)
