"""igr-toy: GD on a two-parameter model lands on flatter, lower-norm minima than gradient flow.

Barrett & Dherin, "Implicit Gradient Regularization", ICLR 2021 (arXiv
2009.11162), the two-parameter example: the loss

    E(a, b) = ½(y − a·b·x)²,     x = 1, y = 0.6,

has a hyperbola of global minima ab = y/x. On it the Hessian is
x²·[[b², ab], [ab, a²]], so λ_max = x²(a² + b²) = x²‖θ‖²: flatter means
smaller norm, and the flattest minimum is the minimum-norm point
a = b = √(y/x). Gradient flow keeps a² − b² constant; a GD step multiplies it
by 1 − h²r² (r = y − abx), so GD drifts toward balanced, flat minima. The
modified loss Ẽ = E + (h/4)‖∇E‖² explains the drift: GD follows its flow to
O(h³) per step, against O(h²) for the flow of E.

What is run: from several initial points near (2.8, 3.5) (one per seed), GD
(the package's ``GD`` optimizer) for a time T = steps·h, the gradient flow of
E and the flow of Ẽ (∇Ẽ from ``implicit_reg.core.modified_gradient``), both with
``solve_ivp`` (DOP853, float64). At each end point we measure ‖∇E‖², λ_max
(2×2 Hessian from the package's ``grad_and_hvp``, cross-checked against
``torch.func.hessian``) and ‖θ‖; and we sweep h. The experiment is a
:class:`~implicit_reg.experiments._spec.Spec` that ``measure``s its end points and
trajectories (no engine runs); a store-only report re-judges them from
``endpoints.csv`` and ``trajectories.csv``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from implicit_reg.core.hvp import grad_and_hvp
from implicit_reg.report.report import Claim, Report, attempt, mean_std, plot_band
from implicit_reg.stats import paired_test, trend_test

from ._flows import gd_iterates, gradient_flow
from ._spec import Spec, run_spec

NAME = "igr-toy"
TITLE = "IGR on a two-parameter model: GD lands on flatter, lower-norm minima than gradient flow"
PAPER = (
    "Barrett & Dherin, *Implicit Gradient Regularization*, ICLR 2021 "
    "(arXiv 2009.11162): the two-parameter model E = ½(y − abx)²"
)


@dataclasses.dataclass(frozen=True)
class Config:
    x: float = 1.0  # input
    y: float = 0.6  # target; minima on ab = y/x
    h_small: float = 0.005  # GD step close to the flow
    h_moderate: float = 0.05  # GD step with a visible implicit regularization
    t_end: float = 10.0  # time T = steps·h of every run
    seeds: int = 5  # initial points, uniform in a square around init_center
    init_center: tuple[float, float] = (2.8, 3.5)
    init_halfwidth: float = 0.2
    h_sweep: tuple[float, ...] = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.055)
    rtol: float = 1e-10  # solve_ivp tolerances (DOP853, float64)
    atol: float = 1e-12
    path_points: int = 100  # points per trajectory kept in trajectories.csv


CONFIGS = {
    "smoke": Config(t_end=2.0, seeds=2, h_small=0.02, h_sweep=(0.02, 0.05), rtol=1e-7, atol=1e-9),
    "demo": Config(seeds=4, h_sweep=(0.005, 0.02, 0.035, 0.05), rtol=1e-8, atol=1e-10),
    "small": Config(),
    "full": Config(
        seeds=20,
        t_end=20.0,
        h_sweep=tuple(float(h) for h in np.round(np.linspace(0.0025, 0.06, 24), 4)),
    ),
}


# --------------------------------------------------------------------------- the model


def toy_loss(params: tuple[torch.Tensor, ...], x: float, y: float) -> torch.Tensor:
    """E(a, b) = ½(y − a·b·x)²."""
    a, b = params
    return 0.5 * (y - a * b * x) ** 2


def hessian_hvp(loss_fn, params: tuple[torch.Tensor, ...]) -> np.ndarray:
    """The Hessian, column by column, from the package's HVP: H e_i = grad_and_hvp(·, e_i)."""
    cols = []
    for i in range(len(params)):
        e = tuple(
            torch.ones_like(p) if j == i else torch.zeros_like(p) for j, p in enumerate(params)
        )
        g, hv = grad_and_hvp(loss_fn, params, e)
        cols.append(torch.stack([t.reshape(()) for t in hv]))
    return torch.stack(cols, 1).numpy()


def hessian_autograd(loss_fn, theta: np.ndarray) -> np.ndarray:
    """Independent oracle: the Hessian by ``torch.func.hessian`` in float64."""
    t = torch.as_tensor(theta, dtype=torch.float64)
    return torch.func.hessian(lambda v: loss_fn((v[0], v[1])))(t).numpy()


def endpoint_metrics(theta: np.ndarray, cfg: Config) -> dict[str, float]:
    """‖∇E‖², λ_max (via HVP and via torch.func.hessian), ‖θ‖ and ab at θ."""
    if not np.all(np.isfinite(theta)):
        nan = float("nan")
        return dict(grad_norm_sq=nan, lambda_max=nan, lambda_max_check=nan, norm=nan, ab=nan)

    def loss_fn(p):
        return toy_loss(p, cfg.x, cfg.y)

    params = tuple(torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in theta)
    g, _ = grad_and_hvp(loss_fn, params)
    hess = hessian_hvp(loss_fn, params)
    return dict(
        grad_norm_sq=float(sum(float(x) ** 2 for x in g)),
        lambda_max=float(np.linalg.eigvalsh(hess)[-1]),
        lambda_max_check=float(np.linalg.eigvalsh(hessian_autograd(loss_fn, theta))[-1]),
        norm=float(np.linalg.norm(theta)),
        ab=float(theta[0] * theta[1]),
    )


def grad_norm_sq_path(thetas: np.ndarray, cfg: Config) -> np.ndarray:
    """‖∇E‖² = r²(a² + b²)x² along a path (rows of θ), r = y − abx (closed form)."""
    a, b = thetas[:, 0], thetas[:, 1]
    r = cfg.y - a * b * cfg.x
    return (r * cfg.x) ** 2 * (a**2 + b**2)


def initial_points(cfg: Config) -> np.ndarray:
    """One initial point per seed, uniform in the square init_center ± init_halfwidth."""
    rng = np.random.default_rng(0)
    return np.asarray(cfg.init_center) + rng.uniform(
        -cfg.init_halfwidth, cfg.init_halfwidth, size=(cfg.seeds, 2)
    )


# --------------------------------------------------------------------------- simulation


def _keep(n: int, points: int) -> np.ndarray:
    """Indices of a path of n points to save: the fast start densely, then evenly."""
    head = np.arange(min(n, points // 4))
    return np.unique(
        np.concatenate([head, np.linspace(0, n - 1, points - len(head)).round()])
    ).astype(int)


def simulate(cfg: Config) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run GD, the flow of E and the flow of Ẽ_h from every initial point.

    Returns:
        ``(endpoints, paths)``: one row per (seed, h, method) with end-point
        metrics, and the kept trajectory points for h_small and h_moderate.
    """

    def loss_fn(p):
        return toy_loss(p, cfg.x, cfg.y)

    hs = sorted(set(cfg.h_sweep) | {cfg.h_small, cfg.h_moderate})
    rows, paths = [], []
    for seed, theta0 in enumerate(initial_points(cfg)):
        init = tuple(torch.tensor(v, dtype=torch.float64) for v in theta0)
        flow_e = gradient_flow(
            loss_fn, init, cfg.t_end, dense_output=True, rtol=cfg.rtol, atol=cfg.atol
        )
        for h in hs:
            steps = int(round(cfg.t_end / h))
            t_gd = np.arange(steps + 1) * h
            gd = gd_iterates(loss_fn, init, h, steps)
            flow_m = gradient_flow(
                loss_fn,
                init,
                t_gd[-1],
                coeff=h / 4,
                dense_output=True,
                rtol=cfg.rtol,
                atol=cfg.atol,
            )
            ref_e, ref_m = flow_e.sol(t_gd).T, flow_m.sol(t_gd).T
            runs = {
                "GD": gd,
                "flow of E": ref_e,
                "flow of Ẽ": ref_m,
            }
            for method, path in runs.items():
                t = t_gd
                row = dict(seed=seed, h=h, method=method, steps=steps, t_end=float(t[-1]))
                row.update(a0=theta0[0], b0=theta0[1], a=path[-1, 0], b=path[-1, 1])
                row.update(endpoint_metrics(path[-1], cfg))
                if method == "GD":
                    row["max_dev_from_flow_E"] = float(np.max(np.linalg.norm(gd - ref_e, axis=1)))
                    row["max_dev_from_flow_Emod"] = float(
                        np.max(np.linalg.norm(gd - ref_m, axis=1))
                    )
                rows.append(row)
                if h in (cfg.h_small, cfg.h_moderate):
                    keep = _keep(len(t), cfg.path_points)
                    paths.append(
                        pd.DataFrame(
                            dict(
                                seed=seed,
                                h=h,
                                method=method,
                                t=t[keep],
                                a=path[keep, 0],
                                b=path[keep, 1],
                            )
                        )
                    )
    return pd.DataFrame(rows), pd.concat(paths, ignore_index=True)


# --------------------------------------------------------------------------- figures

COLORS = {"GD": "C3", "flow of E": "C0", "flow of Ẽ": "C2"}


MARKERS = {"GD": "o", "flow of E": "s", "flow of Ẽ": "^"}


def _draw_paths(ax, sub: pd.DataFrame, ms: float, labels: bool) -> None:
    for method in COLORS:
        for s, (_, g) in enumerate(sub[sub.method == method].groupby("seed")):
            style = dict(color=COLORS[method], label=method if labels and s == 0 else None)
            if method == "GD":
                ax.plot(g.a, g.b, ".", ms=ms, **style)
            else:
                ax.plot(g.a, g.b, "--" if method == "flow of E" else "-", lw=1.3, **style)


def phase_space_figure(paths: pd.DataFrame, cfg: Config) -> Figure:
    """Trajectories in the (a, b) plane for h_small and h_moderate, and a zoom on
    the end points at h_moderate."""
    fig = Figure(figsize=(15, 5.2), layout="constrained")
    axes = fig.subplots(1, 3, width_ratios=[1, 1, 0.8])
    lo, hi = 0.0, max(cfg.init_center) + cfg.init_halfwidth + 0.3
    grid = np.linspace(lo + 1e-3, hi, 300)
    aa, bb = np.meshgrid(grid, grid)
    log_loss = np.log10(0.5 * (cfg.y - aa * bb * cfg.x) ** 2 + 1e-6)
    a_min = math.sqrt(cfg.y / cfg.x)
    branch = np.linspace(cfg.y / cfg.x / hi, hi, 400)
    for ax, h in zip(axes[:2], (cfg.h_small, cfg.h_moderate)):
        ax.contourf(aa, bb, log_loss, levels=20, cmap="Greys", alpha=0.35)
        ax.plot(
            branch, cfg.y / cfg.x / branch, "k-", lw=1.2, label=f"minima: ab = {cfg.y / cfg.x:g}"
        )
        ax.plot([a_min], [a_min], "k*", ms=14, label="minimum-norm point a = b = √0.6")
        sub = paths[paths.h == h]
        _draw_paths(ax, sub, ms=3, labels=h == cfg.h_small)
        starts = sub[sub.t == 0]
        ax.plot(
            starts.a, starts.b, "ko", ms=4, label="initial points" if h == cfg.h_small else None
        )
        ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel="a", ylabel="b", aspect="equal")
        ax.set_title(f"h = {h:g}: {int(round(cfg.t_end / h))} GD steps to T = {cfg.t_end:g}")
    # zoom on the end points at h_moderate
    ax = axes[2]
    sub = paths[(paths.h == cfg.h_moderate) & (paths.seed == 0)]
    ends = sub.groupby("method").tail(1)
    pad_a = 0.5 * (ends.a.max() - ends.a.min()) + 0.005
    pad_b = 0.3 * (ends.b.max() - ends.b.min()) + 0.01
    box = (ends.a.min() - pad_a, ends.a.max() + pad_a, ends.b.min() - pad_b, ends.b.max() + pad_b)
    ax.contourf(aa, bb, log_loss, levels=20, cmap="Greys", alpha=0.35)
    ax.plot(branch, cfg.y / cfg.x / branch, "k-", lw=1.2)
    _draw_paths(ax, sub, ms=5, labels=False)
    for method in COLORS:
        e = ends[ends.method == method]
        ax.plot(e.a, e.b, MARKERS[method], color=COLORS[method], ms=9, mec="k",
                label=f"end point, {method}")  # fmt: skip
    ax.set(xlim=box[:2], ylim=box[2:], xlabel="a", ylabel="b")
    ax.text(0.03, 0.03, "down the hyperbola = toward a = b:\nlower norm, flatter",
            transform=ax.transAxes, fontsize=8, va="bottom")  # fmt: skip
    ax.set_title(f"zoom on the end points from initial point 0, h = {cfg.h_moderate:g}")
    ax.legend(fontsize=8, loc="upper right")
    axes[0].legend(fontsize=8, loc="center right")
    fig.suptitle(
        f"E(a,b) = ½({cfg.y:g} − ab)²: GD, flow of E and flow of Ẽ = E + (h/4)‖∇E‖² "
        f"from {cfg.seeds} initial points"
    )
    return fig


def sweep_figure(ends: pd.DataFrame, cfg: Config) -> Figure:
    """End-point ‖θ‖ and λ_max against h, relative to the flow of E from the same
    initial point (paired), mean ± std over seeds."""
    fig = Figure(figsize=(11, 4.3), layout="constrained")
    axes = fig.subplots(1, 2)
    base = ends[ends.method == "flow of E"].set_index(["seed", "h"])
    for ax, col, label in (
        (axes[0], "lambda_max", "λ_max(∇²E)"),
        (axes[1], "norm", "‖θ‖"),
    ):
        for method in ("GD", "flow of Ẽ"):
            e = ends[ends.method == method].set_index(["seed", "h"])
            rel = (100 * (e[col] / base.loc[e.index, col] - 1)).rename("rel").reset_index()
            piv = rel.pivot(index="seed", columns="h", values="rel")
            plot_band(ax, piv.columns.values, piv.values, label=method, color=COLORS[method],
                      marker="o", ms=4)  # fmt: skip
        ax.axhline(0, color=COLORS["flow of E"], ls="--", label="flow of E (reference)")
        ax.set(xlabel="learning rate h", ylabel=f"{label} at the end point, % vs flow of E")
        ax.set_title(f"{label} at T = {cfg.t_end:g}, relative to the flow of E")
    axes[0].legend(fontsize=8)
    fig.suptitle(
        "Larger h lands on flatter, lower-norm minima: change against gradient flow from the same "
        f"initial point (mean ± std over {cfg.seeds} initial points)"
    )
    return fig


def grad_norm_figure(paths: pd.DataFrame, cfg: Config) -> Figure:
    """‖∇E‖² along the trajectories at h_moderate, geometric mean ± std over seeds."""
    fig = Figure(figsize=(6.5, 4.3), layout="constrained")
    ax = fig.subplots()
    sub = paths[paths.h == cfg.h_moderate]
    for method in COLORS:
        g = sub[sub.method == method]
        piv_a = g.pivot(index="seed", columns="t", values="a")
        piv_b = g.pivot(index="seed", columns="t", values="b")
        gn = grad_norm_sq_path(np.stack([piv_a.values.ravel(), piv_b.values.ravel()], 1), cfg)
        gn = np.maximum(gn.reshape(piv_a.shape), 1e-300)
        plot_band(ax, piv_a.columns.values, gn, label=method, color=COLORS[method], geometric=True)
    ax.set(yscale="log", xlabel="time t (GD: step k at t = k·h)", ylabel="‖∇E(θ(t))‖²")
    ax.set_ylim(1e-12, None)
    alive = sub[grad_norm_sq_path(sub[["a", "b"]].to_numpy(), cfg) > 1e-12].t
    ax.set_xlim(0, 1.05 * alive.max() if len(alive) else cfg.t_end)
    ax.set_title(f"‖∇E‖² along the path, h = {cfg.h_moderate:g} ({cfg.seeds} initial points)")
    ax.legend()
    return fig


# --------------------------------------------------------------------------- report


@dataclasses.dataclass(frozen=True)
class Analysis:
    """One row per (seed, h, method) of end-point metrics (``ends``) and the kept
    trajectory points at h_small and h_moderate (``paths``)."""

    ends: pd.DataFrame
    paths: pd.DataFrame

    def at(self, h: float, method: str, col: str) -> np.ndarray:
        """``col`` at the end point of ``method`` at step ``h``, ordered by seed."""
        e = self.ends
        return e[(e.h == h) & (e.method == method)].sort_values("seed")[col].to_numpy()


def analyze(tables: tuple[pd.DataFrame, pd.DataFrame], cfg: Config) -> Analysis:
    return Analysis(*tables)


def flatter_with_h(a: Analysis) -> Claim:
    """The larger h, the flatter GD's end point: a trend test on −λ_max over h."""
    gd_ends = a.ends[a.ends.method == "GD"]
    sweep = gd_ends.groupby("h")["lambda_max"].mean()
    piv = gd_ends.pivot_table(index="seed", columns="h", values="lambda_max")
    return Claim(
        "The larger h, the flatter the minimum GD reaches (λ_max falls with h)",
        "Barrett & Dherin 2021: the implicit regularization strength h/4 grows with h",
        (attempt(trend_test, piv.columns.to_numpy(), -piv.to_numpy()),),
        context="mean λ_max of GD's end point: "
        + ", ".join(f"{lam:.3f} (h = {h:g})" for h, lam in sweep.items())
        + "; the test is on −λ_max",
    )


def claims(a: Analysis, cfg: Config) -> list[Claim]:
    """GD ends flatter and at a lower norm than the flow; it follows the flow of Ẽ more
    closely than that of E; the larger h, the flatter."""
    hm, hs, at = cfg.h_moderate, cfg.h_small, a.at
    gd_norm, gf_norm = at(hm, "GD", "norm"), at(hm, "flow of E", "norm")
    gd_lam, gf_lam = at(hm, "GD", "lambda_max"), at(hm, "flow of E", "lambda_max")
    devs = [(h, at(h, "GD", "max_dev_from_flow_E"), at(h, "GD", "max_dev_from_flow_Emod"))
            for h in (hs, hm)]  # fmt: skip
    return [
        Claim(
            f"Moderate-h GD lands on lower-norm (‖θ‖) and flatter (λ_max) minima than gradient "
            f"flow (h = {hm:g})",
            "Barrett & Dherin 2021, Sec. 4: GD ends closer to the flat, minimum-norm minimum",
            (attempt(paired_test, gf_norm, gd_norm), attempt(paired_test, gf_lam, gd_lam)),
            context=f"‖θ‖: GD {mean_std(gd_norm)}, flow of E {mean_std(gf_norm)}; λ_max: GD "
            f"{mean_std(gd_lam)}, flow of E {mean_std(gf_lam)} (flattest: "
            f"{2 * cfg.x * cfg.y:g}); tests: flow − GD, paired over {cfg.seeds} initial points",
            headline=True,
        ),
        Claim(
            "GD follows the flow of Ẽ = E + (h/4)‖∇E‖² more closely than the flow of E, "
            f"at h = {hs:g} and {hm:g}",
            "Barrett & Dherin 2021: local error O(h³) against Ẽ, O(h²) against E",
            tuple(attempt(paired_test, de, dm) for _, de, dm in devs),
            context="; ".join(
                f"h = {h:g}: max ‖θ_k − θ(kh)‖ to E {mean_std(de)}, to Ẽ {mean_std(dm)}"
                for h, de, dm in devs
            ),
        ),
        flatter_with_h(a),
    ]


def figures(a: Analysis, cfg: Config) -> list[tuple[Figure, str, str]]:
    return [
        (
            phase_space_figure(a.paths, cfg),
            "phase_space.png",
            "Phase space: GD iterates (dots), gradient flow of E (dashed) and of the modified "
            "loss Ẽ (solid); black line: the minima ab = 0.6; star: the minimum-norm, flattest "
            "minimum.",
        ),
        (
            sweep_figure(a.ends, cfg),
            "endpoints_vs_h.png",
            "Sharpness and norm of the end point against h, as a change against the flow of E "
            "from the same initial point (the flow of E does not depend on h; absolute values "
            "in the table and in endpoints.csv).",
        ),
        (
            grad_norm_figure(a.paths, cfg),
            "grad_norm_path.png",
            f"‖∇E‖² along the trajectories at h = {cfg.h_moderate:g} (geometric mean ± std over "
            "initial points): GD's first steps cut ‖∇E‖² fastest; later every run converges at "
            "a rate set by the curvature of the minimum it approaches, slower for the flatter "
            "ones.",
        ),
    ]


def extras(report: Report, a: Analysis, cfg: Config) -> None:
    """The end-point table and the reading."""
    hm, hs, at, ends = cfg.h_moderate, cfg.h_small, a.at, a.ends
    check = float(np.nanmax(np.abs(ends.lambda_max - ends.lambda_max_check)))
    closed = float(np.nanmax(np.abs(ends.lambda_max - cfg.x**2 * ends.norm**2)))
    report.add_table(
        [
            {
                "h": h,
                "method": method,
                "‖∇E‖² at end": mean_std(at(h, method, "grad_norm_sq"), 2),
                "λ_max at end": mean_std(at(h, method, "lambda_max")),
                "‖θ‖ at end": mean_std(at(h, method, "norm")),
                "ab at end": mean_std(at(h, method, "ab")),
            }
            for h in (hs, hm)
            for method in COLORS
        ],
        heading="End points",
        caption=(
            f"End points at T = {cfg.t_end:g}, mean ± std over {cfg.seeds} initial points "
            f"(uniform in ({cfg.init_center[0]:g}, {cfg.init_center[1]:g}) ± "
            f"{cfg.init_halfwidth:g}). λ_max is the top eigenvalue of the 2×2 Hessian built from "
            f"the package's `grad_and_hvp`; it agrees with `torch.func.hessian` to {check:.1e}, "
            f"and with the closed form x²‖θ‖² on the minima to {closed:.1e}. The flows of Ẽ and "
            "GD reach points on the hyperbola too (‖∇E‖² ≈ 0): they differ in *which* minimum."
        ),
    )
    first = ends[(ends.method == "GD") & (ends.h == hm)]
    r0 = float(np.mean(np.abs(cfg.y - first.a0 * first.b0 * cfg.x)))
    share = {
        h: float(np.mean((at(h, "flow of E", "norm") - at(h, "flow of Ẽ", "norm"))
                         / (at(h, "flow of E", "norm") - at(h, "GD", "norm"))))
        for h in (hs, hm)
    }  # fmt: skip
    ratio = {
        h: float(
            np.mean(at(h, "GD", "max_dev_from_flow_E") / at(h, "GD", "max_dev_from_flow_Emod"))
        )
        for h in (hs, hm)
    }
    report.add_text(
        "Gradient flow of E keeps the imbalance a² − b² fixed; a GD step multiplies it by "
        "1 − h²r² with r = y − ab, and r is large at the start (ab ≈ 10 against 0.6), so the "
        "first steps move GD toward the balanced, flat, low-norm part of the hyperbola. "
        f"The flow of Ẽ accounts for {100 * share[hs]:.0f}% of GD's reduction of ‖θ‖ at "
        f"h = {hs:g} and {100 * share[hm]:.0f}% at h = {hm:g}; GD stays {ratio[hs]:.0f}× closer to "
        f"the flow of Ẽ than to the flow of E over the whole path at h = {hs:g}, but only "
        f"{ratio[hm]:.1f}× at h = {hm:g}. There h·|r| ≈ {hm * r0:.2f} at the start, too large "
        "for the first-order modified loss to be accurate: the higher-order terms of the "
        "backward-error series carry the rest of the implicit regularization. "
        + (
            "The end-point sharpness falls with h beyond the noise (the trend claim above)."
            if flatter_with_h(a).verdict == "reproduced"
            else "The end-point sharpness does not fall with h beyond the noise (see the figure)."
        ),
        heading="Reading",
    )


SPEC = Spec(
    NAME, TITLE, PAPER, CONFIGS, None, analyze, claims, figures, extras,
    measure=simulate, measured=("endpoints.csv", "trajectories.csv"),
)  # fmt: skip


def run(scale: str, out: Path) -> Report:
    """Run igr-toy at ``scale`` and write its report into ``out`` (a store-only report
    re-judges the stored ``endpoints.csv`` and ``trajectories.csv``)."""
    return run_spec(SPEC, scale, out)
