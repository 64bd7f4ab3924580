"""igr-order: one GD step is O(h²) from the flow of L but O(h³) from the flow of L̃.

Barrett & Dherin, "Implicit Gradient Regularization", ICLR 2021 (arXiv
2009.11162), backward error analysis: for θ' = θ − h∇L(θ) and
φ_h the time-h map of a flow,

    ‖θ' − φ_h^L(θ)‖ = O(h²),      ‖θ' − φ_h^{L̃}(θ)‖ = O(h³),

where L̃ = L + (h/4)‖∇L‖² is the modified loss. We measure both local errors
for h over two decades and fit the slope of log error against log h (expected
2 and 3), on the two-parameter model of ``igr-toy`` and on a small tanh MLP
fitted to teacher data. GD is one step of the package's ``GD`` optimizer;
∇L̃ comes from ``implicit_reg.core.modified_gradient``; the flows are integrated
by ``solve_ivp`` (DOP853, rtol = atol = 1e-12, float64). The experiment is a
:class:`~implicit_reg.experiments._spec.Spec` that ``measure``s its table of local
errors (no engine runs); a store-only report re-judges from ``local_errors.csv``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from implicit_reg.report.report import Claim, Report, attempt, mean_std, plot_band
from implicit_reg.stats import equivalence_test

from ._flows import gd_iterates, gradient_flow, product_toy, teacher_mlp
from ._spec import Spec, run_spec

NAME = "igr-order"
TITLE = "Backward error analysis: GD's one-step error is O(h²) against the flow of L, O(h³) against the flow of L̃"
PAPER = (
    "Barrett & Dherin, *Implicit Gradient Regularization*, ICLR 2021 "
    "(arXiv 2009.11162): GD follows L̃ = L + (h/4)‖∇L‖² to O(h³) per step"
)
EXPECTED = {"flow of L": 2.0, "flow of L̃": 3.0}
TOLERANCE = 0.15  # |fitted slope − expected| that counts as reproduced


@dataclasses.dataclass(frozen=True)
class Config:
    h_min: float = 1e-3
    h_max: float = 1e-1
    num_h: int = 9  # log-spaced step sizes
    seeds: int = 5  # initial points (toy) / teacher data and init (MLP)
    toy_y: float = 0.6  # E(a, b) = ½(y − ab)², x = 1
    mlp_width: int = 16  # tanh MLP input_dim → width → 1
    mlp_depth: int = 1
    input_dim: int = 4
    n_train: int = 32  # teacher regression data
    rtol: float = 1e-12
    atol: float = 1e-12


CONFIGS = {
    "smoke": Config(num_h=3, seeds=1, h_min=1e-2, mlp_width=4, n_train=8),
    "demo": Config(num_h=5, seeds=3, h_min=3e-3, mlp_width=8),
    "small": Config(),
    "full": Config(num_h=13, seeds=20, h_min=5e-4, mlp_width=32, mlp_depth=2, n_train=64),
}


def toy_problem(seed: int, cfg: Config):
    """E(a, b) = ½(y − ab)² at a random point (a, b) ~ U([0.5, 2]²) (stream 7)."""
    return product_toy(seed, cfg.toy_y, stream=7)


def mlp_problem(seed: int, cfg: Config):
    """Mean squared error of a tanh MLP (``build_model("mlp")``) on teacher data,
    as a function of its parameter tuple, and its number of parameters."""
    loss_fn, theta0 = teacher_mlp(
        seed, n_train=cfg.n_train, input_dim=cfg.input_dim, width=cfg.mlp_width,
        depth=cfg.mlp_depth,
    )  # fmt: skip
    return loss_fn, theta0, sum(t.numel() for t in theta0)


def local_errors(loss_fn, theta0, hs: np.ndarray, cfg: Config) -> list[dict]:
    """‖θ₁ − φ_h(θ₀)‖ for one GD step against the flows of L and of L̃_h."""
    rows = []
    for h in hs:
        step = gd_iterates(loss_fn, theta0, float(h), 1)[1]
        for flow, coeff in (("flow of L", 0.0), ("flow of L̃", h / 4)):
            sol = gradient_flow(
                loss_fn,
                theta0,
                float(h),
                coeff=coeff,
                t_eval=[float(h)],
                rtol=cfg.rtol,
                atol=cfg.atol,
            )
            rows.append(
                dict(h=float(h), flow=flow, error=float(np.linalg.norm(step - sol.y[:, -1])))
            )
    return rows


def fit_slope(h: np.ndarray, err: np.ndarray) -> float:
    """Least-squares slope of log err against log h."""
    return float(np.polyfit(np.log(h), np.log(err), 1)[0])


def measure(cfg: Config) -> pd.DataFrame:
    """Local errors for every model, seed, h and flow (the models labelled with their
    parameter counts)."""
    hs = np.geomspace(cfg.h_min, cfg.h_max, cfg.num_h)
    rows = []
    for seed in range(cfg.seeds):
        loss_fn, theta0 = toy_problem(seed, cfg)
        rows += [
            dict(model="two-parameter model", seed=seed, **r)
            for r in local_errors(loss_fn, theta0, hs, cfg)
        ]
        loss_fn, theta0, m = mlp_problem(seed, cfg)
        label = f"tanh MLP ({m} params)"
        rows += [dict(model=label, seed=seed, **r) for r in local_errors(loss_fn, theta0, hs, cfg)]
    return pd.DataFrame(rows)


def slopes(errors: pd.DataFrame) -> pd.DataFrame:
    """Fitted slopes per (model, flow, seed): over all h, and over the smaller half
    of the h values (closer to the asymptotic order)."""
    rows = []
    for (model, flow, seed), g in errors.groupby(["model", "flow", "seed"]):
        g = g.sort_values("h")
        small = g.iloc[: max(2, (len(g) + 1) // 2)]
        rows.append(dict(
            model=model, flow=flow, seed=seed,
            slope=fit_slope(g.h.values, g.error.values),
            slope_small_h=fit_slope(small.h.values, small.error.values),
            h_small_max=float(small.h.max()),
        ))  # fmt: skip
    return pd.DataFrame(rows)


COLORS = {"flow of L": "C0", "flow of L̃": "C2"}


def order_figure(errors: pd.DataFrame, fits: pd.DataFrame, cfg: Config) -> Figure:
    """Log–log local error against h, one panel per model."""
    models = list(dict.fromkeys(errors.model))
    fig = Figure(figsize=(5.2 * len(models), 4.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(models)))
    for ax, model in zip(axes, models):
        sub = errors[errors.model == model]
        for flow, color in COLORS.items():
            piv = sub[sub.flow == flow].pivot(index="seed", columns="h", values="error")
            s = fits[(fits.model == model) & (fits.flow == flow)].slope.values
            label = f"GD vs {flow}: slope {mean_std(s)}"
            plot_band(
                ax,
                piv.columns.values,
                piv.values,
                label=label,
                color=color,
                geometric=True,
                marker="o",
                ms=4,
            )
            h = piv.columns.values
            mid = np.exp(np.log(piv.values).mean(0))
            p = EXPECTED[flow]
            ax.plot(h, mid[0] * (h / h[0]) ** p, ":", color=color, label=f"reference slope {p:g}")
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="step size h",
            ylabel=r"one-step error $\|\theta_1 - \varphi_h(\theta_0)\|$",
        )
        ax.set_title(f"{model}, {cfg.seeds} seed(s)")
        ax.legend(fontsize=8)
    fig.suptitle(
        "Local error of one GD step against the gradient flows of L and of L̃ = L + (h/4)‖∇L‖²"
    )
    return fig


@dataclasses.dataclass(frozen=True)
class Analysis:
    """The local errors (one row per model, seed, h and flow), their fitted slopes (one
    row per model, flow and seed) and the models in the order measured."""

    errors: pd.DataFrame
    fits: pd.DataFrame
    models: tuple[str, ...]

    def slopes_of(self, model: str, flow: str, column: str = "slope") -> np.ndarray:
        f = self.fits
        return f[(f.model == model) & (f.flow == flow)][column].to_numpy()


def analyze(errors: pd.DataFrame, cfg: Config) -> Analysis:
    """The slope of log error against log h per model, flow and seed."""
    return Analysis(errors, slopes(errors), tuple(dict.fromkeys(errors.model)))


def claims(a: Analysis, cfg: Config) -> list[Claim]:
    """Each local error's order in h is the expected one: "slope = expected" is an
    equivalence, the mean slope within ±TOLERANCE (TOST)."""
    return [
        Claim(
            f"{model}: one GD step vs the {flow}: the local error's slope in h is "
            f"{expected:g} (within ±{TOLERANCE:g})",
            f"Barrett & Dherin 2021: local error O(h^{expected:g})",
            (attempt(equivalence_test, s, np.full_like(s, expected), margin=TOLERANCE),),
            context=f"fitted slope {mean_std(s)} over h ∈ [{cfg.h_min:g}, {cfg.h_max:g}]; "
            f"slope − {expected:g}",
            headline=(model, flow) == (a.models[0], "flow of L̃"),
        )
        for model in a.models
        for flow, expected in EXPECTED.items()
        for s in [a.slopes_of(model, flow)]
    ]


def figures(a: Analysis, cfg: Config) -> list[tuple[Figure, str, str]]:
    return [
        (
            order_figure(a.errors, a.fits, cfg),
            "local_error_order.png",
            "One-step error of GD against the flow of L (blue) and of the modified loss L̃ "
            "(green), geometric mean ± std over seeds; dotted lines have the expected slopes 2 "
            "and 3.",
        )
    ]


def extras(report: Report, a: Analysis, cfg: Config) -> None:
    report.add_data(a.fits, "slopes.csv")
    e = a.errors
    report.add_table(
        [
            {
                "model": model,
                "flow": flow,
                "expected slope": expected,
                "fitted slope": mean_std(a.slopes_of(model, flow)),
                "slope, smaller half of h": mean_std(a.slopes_of(model, flow, "slope_small_h")),
                f"error at h = {cfg.h_min:g}": mean_std(ef[ef.h == ef.h.min()].error.values, 2),
                f"error at h = {cfg.h_max:g}": mean_std(ef[ef.h == ef.h.max()].error.values, 2),
            }
            for model in a.models
            for flow, expected in EXPECTED.items()
            for ef in [e[(e.model == model) & (e.flow == flow)]]
        ],
        heading="Fitted slopes",
        caption=(
            f"Slopes of log error against log h, fitted over {cfg.num_h} log-spaced h in "
            f"[{cfg.h_min:g}, {cfg.h_max:g}] (and over the smaller half, h ≤ "
            f"{a.fits.h_small_max.max():.3g}), mean ± std over {cfg.seeds} seed(s). The "
            f"two-parameter model starts at (a, b) ~ U([0.5, 2]²); the MLP is "
            f"`build_model('mlp', activation='tanh', width={cfg.mlp_width}, "
            f"depth={cfg.mlp_depth})` on {cfg.n_train} teacher regression points "
            f"(`load_dataset('teacher')`), MSE loss, float64."
        ),
    )


SPEC = Spec(
    NAME, TITLE, PAPER, CONFIGS, None, analyze, claims, figures, extras,
    measure=measure, measured="local_errors.csv",
)  # fmt: skip


def run(scale: str, out: Path) -> Report:
    """Run igr-order at ``scale`` and write its report into ``out``."""
    return run_spec(SPEC, scale, out)
