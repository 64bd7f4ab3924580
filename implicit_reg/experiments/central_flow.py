"""central-flow: at the edge of stability GD's time average follows the central flow,
not gradient flow.

Cohen, Damian, Talwalkar, Kolter & Lee, "Understanding Optimization in Deep
Learning with Central Flows", ICLR 2025 (arXiv 2410.24206). Full-batch GD
with step η oscillates once its sharpness S = λ_max(H) reaches 2/η; its
*time-averaged* trajectory follows the central flow

    dθ/dt = −η [∇L(θ) + ½σ²(t)∇S(θ)],   S ≤ 2/η, σ² ≥ 0, σ²(2/η − S) = 0,

(:func:`implicit_reg.core.central_flow.central_flow`, time in GD steps), whose
predicted time-averaged loss is L(θ) + ½σ²S(θ). Plain gradient flow
dθ/dt = −η∇L keeps sharpening past 2/η and leaves GD.

What is run: the ``edge-of-stability`` workload, smaller (MLP 40 → w → w → 10,
tanh, MNIST-1D, squared loss on one-hot targets), in float64. From one
initialization per seed: GD for ``steps`` steps (the package's ``GD``
optimizer); the central flow over the same time (Euler steps of ``dt``, σ² from
the linearized complementarity, the top eigenvector by the probes' Lanczos
warm-started from the previous step); gradient flow (the same Euler steps with
σ² = 0, i.e. ``central_flow`` with a step η too small for its edge to be
reached would not do: GF is integrated by SciPy's DOP853 over time η·t).

Compared at every ``probe_every`` GD steps: GD's loss averaged over a centred
window of ``window`` steps (its time average) against the central flow's
L + ½σ²S and against gradient flow's L; GD's sharpness (window average)
against the central flow's S and gradient flow's S; and the distance of the
window-averaged GD iterate from each flow's θ. The errors are averaged over
the part of the run after GD's sharpness first reaches 2/η ("at the edge").

Claims (per η, over seeds): the central flow's loss error and its weight
distance are smaller than gradient flow's (paired t on the log ratio), and
its predicted loss agrees with GD's time-averaged loss within ×/÷``margin``
over the edge phase (TOST on the log ratio). The cost: Lanczos HVPs and ∇S
evaluations per unit of flow time (one GD step), with the wall time per unit
against a GD step's.

The experiment is a :class:`~implicit_reg.experiments._spec.Spec` that ``measure``s its
tables (no engine runs): a store-only report re-judges ``trajectories.csv`` and ``cost.csv``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from implicit_reg.core.central_flow import ParamsHessian, central_flow
from implicit_reg.core.objective import chunk_loss_fns, trainable_named_params
from implicit_reg.probes.eigen import lanczos
from implicit_reg.probes.registry import lanczos_eig_solver
from implicit_reg.report.report import Claim, Report, attempt, mean_std
from implicit_reg.stats import equivalence_test, paired_test
from implicit_reg.workloads.data import load_dataset
from implicit_reg.workloads.models import build_model

from ._flows import gd_iterates, gradient_flow, unflatten
from ._spec import Spec, run_spec
from ._sweeps import tidy_log_axes

NAME = "central-flow"
TITLE = (
    "Central flow: at the edge of stability GD's time-averaged loss and sharpness follow the "
    "central flow, not gradient flow"
)
PAPER = (
    "Cohen, Damian, Talwalkar, Kolter & Lee, *Understanding Optimization in Deep Learning with "
    "Central Flows*, ICLR 2025 (arXiv 2410.24206), Fig. 1–3"
)


@dataclasses.dataclass(frozen=True)
class Config:
    lr: float = 2.0
    seeds: int = 3
    n_train: int = 250
    width: int = 24
    depth: int = 2
    activation: str = "tanh"
    steps: int = 300  # GD steps = flow time
    dt: float = 0.25  # Euler step of the central flow, in GD steps
    window: int = 10  # GD time average: centred window (steps; even: both phases of a 2-cycle)
    probe_every: int = 10  # compare every this many steps
    lanczos_max_iter: int = 30
    margin: float = 1.2  # TOST: CF's predicted loss within ×/÷1.2 of GD's time average


CONFIGS = {
    "smoke": Config(seeds=2, n_train=64, width=8, steps=60, dt=0.5, window=8, probe_every=6),
    "demo": Config(seeds=2, steps=200),
    "small": Config(),
    "full": Config(seeds=5, n_train=1000, width=32, steps=1000),
}


# ---------------------------------------------------------------- runs


def squared_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """mean((out − onehot(y))²) over samples and outputs: the value of
    ``make_loss("mse", num_classes=10)``, written out because ``F.mse_loss`` fails under
    the jvp-of-grad of :func:`~implicit_reg.core.central_flow.sharpness_gradient`
    ("ZeroTensors are immutable", torch 2.13: its forward-mode derivative of the
    target's zero tangent)."""
    return ((out - F.one_hot(y, out.shape[-1]).to(out.dtype)) ** 2).mean()


def problem(seed: int, cfg: Config):
    """Full-batch MSE (one-hot) of a tanh MLP on MNIST-1D as a function of its parameters."""
    data = load_dataset("mnist1d", n_train=cfg.n_train, n_test=1, seed=0)
    model = build_model(
        "mlp", input_dim=data.input_dim, output_dim=data.output_dim, width=cfg.width,
        depth=cfg.depth, activation=cfg.activation, seed=seed,
    ).double()  # fmt: skip
    x, y = data.train
    fns = list(chunk_loss_fns(model, squared_loss, (x.double(), y)))

    def loss_fn(p):
        return sum(f(p) for f in fns)

    theta0 = tuple(p.detach().clone() for p in trainable_named_params(model).values())
    return loss_fn, theta0


def _sharpness(loss_fn, theta0, z: np.ndarray, v0, max_iter: int) -> tuple[float, torch.Tensor]:
    op = ParamsHessian(loss_fn, unflatten(z, theta0))
    return lanczos_eig_solver(max_iter, seed=0)(op, v0)


@dataclasses.dataclass(frozen=True)
class Point:
    """One comparison time t (GD steps) of one seed."""

    seed: int
    t: float
    gd_loss: float  # L(θ_t), raw
    gd_loss_avg: float  # centred window average of L along GD
    gd_sharpness: float  # window average of S along GD
    cf_loss: float
    cf_loss_predicted: float  # L + ½σ²S
    cf_sharpness: float
    cf_sigma2: float
    gf_loss: float
    gf_sharpness: float
    dist_cf: float  # ‖θ̄_GD(t) − θ_CF(t)‖
    dist_gf: float  # ‖θ̄_GD(t) − θ_GF(t)‖
    gd_travel: float  # ‖θ̄_GD(t) − θ_0‖
    mf_loss: float = math.nan  # L along Barrett & Dherin's modified flow (L̃ = L + (η/4)‖∇L‖²)
    dist_mf: float = math.nan  # ‖θ̄_GD(t) − θ_MF(t)‖
    dist_cf_raw: float = math.nan  # the same three against the raw iterate θ_t
    dist_gf_raw: float = math.nan
    dist_mf_raw: float = math.nan


@dataclasses.dataclass(frozen=True)
class Cost:
    seed: int
    gd_seconds_per_step: float
    cf_seconds_per_unit: float
    cf_hvp_per_unit: float  # Lanczos HVPs per GD step of flow time
    cf_grad_s_per_unit: float  # ∇S evaluations (third-derivative contractions) per unit
    cf_lambda2_end: float  # second eigenvalue at the end of the central flow, × η/2


def run_seed(seed: int, cfg: Config) -> tuple[list[Point], Cost]:
    loss_fn, theta0 = problem(seed, cfg)
    t0 = time.perf_counter()
    gd = gd_iterates(loss_fn, theta0, cfg.lr, cfg.steps)  # (steps + 1, P)
    gd_sec = (time.perf_counter() - t0) / cfg.steps
    t0 = time.perf_counter()
    cf = central_flow(
        loss_fn, theta0, lr=cfg.lr, t_end=float(cfg.steps), dt=cfg.dt,
        eig_solver=lanczos_eig_solver(cfg.lanczos_max_iter, seed=0),
    )  # fmt: skip
    cf_sec = (time.perf_counter() - t0) / cfg.steps
    half = cfg.window // 2
    times = np.arange(half, cfg.steps - half + 1, cfg.probe_every)
    gf = gradient_flow(
        loss_fn, theta0, cfg.lr * cfg.steps, t_eval=cfg.lr * times, rtol=1e-8, atol=1e-10
    )
    # Barrett & Dherin's modified flow θ̇ = −∇(L + (η/4)‖∇L‖²), in flow time η·t (part 5)
    mf = gradient_flow(
        loss_fn, theta0, cfg.lr * cfg.steps, coeff=cfg.lr / 4, t_eval=cfg.lr * times,
        rtol=1e-8, atol=1e-10,
    )  # fmt: skip
    n_cf = len(cf.loss)
    # GD's loss and sharpness at every step of the windows (sharpness warm-started along GD)
    need = sorted({k for t in times for k in range(t - half, t + half)})
    gd_loss, gd_s, v = {}, {}, None
    for k in need:
        ps = unflatten(gd[k], theta0)
        with torch.no_grad():
            gd_loss[k] = float(loss_fn(ps))
        gd_s[k], v = _sharpness(loss_fn, theta0, gd[k], v, cfg.lanczos_max_iter)
    points, v_gf = [], None
    for j, t in enumerate(times):
        win = range(t - half, t + half)  # an even window: both phases of a period-2 cycle
        theta_bar = gd[list(win)].mean(0)
        i = min(int(round(t / cfg.dt)), n_cf - 1)
        with torch.no_grad():
            gf_loss = float(loss_fn(unflatten(gf.y[:, j], theta0)))
            mf_loss = float(loss_fn(unflatten(mf.y[:, j], theta0)))
        gf_s, v_gf = _sharpness(loss_fn, theta0, gf.y[:, j], v_gf, cfg.lanczos_max_iter)
        points.append(
            Point(
                seed=seed, t=float(t), gd_loss=gd_loss[int(t)] if int(t) in gd_loss else math.nan,
                gd_loss_avg=float(np.mean([gd_loss[k] for k in win])),
                gd_sharpness=float(np.mean([gd_s[k] for k in win])),
                cf_loss=float(cf.loss[i]), cf_loss_predicted=float(cf.loss_predicted[i]),
                cf_sharpness=float(cf.sharpness[i]), cf_sigma2=float(cf.sigma2[i]),
                gf_loss=gf_loss, gf_sharpness=gf_s,
                dist_cf=float(np.linalg.norm(theta_bar - cf.theta[i])),
                dist_gf=float(np.linalg.norm(theta_bar - gf.y[:, j])),
                gd_travel=float(np.linalg.norm(theta_bar - gd[0])),
                mf_loss=mf_loss, dist_mf=float(np.linalg.norm(theta_bar - mf.y[:, j])),
                dist_cf_raw=float(np.linalg.norm(gd[t] - cf.theta[i])),
                dist_gf_raw=float(np.linalg.norm(gd[t] - gf.y[:, j])),
                dist_mf_raw=float(np.linalg.norm(gd[t] - mf.y[:, j])),
            )
        )  # fmt: skip
    op = ParamsHessian(loss_fn, unflatten(cf.theta[-1], theta0))
    lam2 = float(lanczos(op, 2, max_iter=max(60, cfg.lanczos_max_iter)).eigenvalues[1])
    cost = Cost(
        seed=seed, gd_seconds_per_step=gd_sec, cf_seconds_per_unit=cf_sec,
        cf_hvp_per_unit=cf.n_hvp / cfg.steps, cf_grad_s_per_unit=1 / cfg.dt,
        cf_lambda2_end=lam2 * cfg.lr / 2,
    )  # fmt: skip
    return points, cost


def measure(cfg: Config) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The comparison points of every seed (one :class:`Point` per row) and the cost of
    each seed's central flow (one :class:`Cost` per row)."""
    points, costs = [], []
    for seed in range(cfg.seeds):
        p, c = run_seed(seed, cfg)
        points += p
        costs.append(c)
    return (
        pd.DataFrame([dataclasses.asdict(p) for p in points]),
        pd.DataFrame([dataclasses.asdict(c) for c in costs]),
    )


# ---------------------------------------------------------------- analysis (pure)


@dataclasses.dataclass(frozen=True)
class SeedErrors:
    """Mean relative errors over the edge phase (t ≥ the first time GD's window-averaged
    sharpness reaches ``reach``·2/η) of one seed."""

    seed: int
    edge_start: float  # NaN: GD never reached the edge
    edge_points: int
    loss_err_cf: float  # mean |log(L̄_GD / L_CF,pred)|
    loss_err_gf: float  # mean |log(L̄_GD / L_GF)|
    loss_logratio_cf: float  # mean log(L̄_GD / L_CF,pred) (signed, for the TOST)
    sharp_err_cf: float  # mean |log(S̄_GD / S_CF)|
    sharp_err_gf: float
    dist_cf: float  # mean ‖θ̄_GD − θ_CF‖ / ‖θ̄_GD − θ_0‖
    dist_gf: float


def seed_errors(points: list[Point], lr: float, reach: float = 0.95) -> list[SeedErrors]:
    out = []
    for seed in sorted({p.seed for p in points}):
        rows = sorted((p for p in points if p.seed == seed), key=lambda p: p.t)
        hit = [p.t for p in rows if p.gd_sharpness >= reach * 2 / lr]
        start = hit[0] if hit else math.nan
        edge = [p for p in rows if hit and p.t >= start]

        def mean(f, edge=edge):
            return float(np.mean([f(p) for p in edge])) if edge else math.nan

        out.append(
            SeedErrors(
                seed=seed, edge_start=start, edge_points=len(edge),
                loss_err_cf=mean(lambda p: abs(math.log(p.gd_loss_avg / p.cf_loss_predicted))),
                loss_err_gf=mean(lambda p: abs(math.log(p.gd_loss_avg / p.gf_loss))),
                loss_logratio_cf=mean(lambda p: math.log(p.gd_loss_avg / p.cf_loss_predicted)),
                sharp_err_cf=mean(lambda p: abs(math.log(p.gd_sharpness / p.cf_sharpness))),
                sharp_err_gf=mean(lambda p: abs(math.log(p.gd_sharpness / p.gf_sharpness))),
                dist_cf=mean(lambda p: p.dist_cf / p.gd_travel),
                dist_gf=mean(lambda p: p.dist_gf / p.gd_travel),
            )
        )  # fmt: skip
    return out


@dataclasses.dataclass(frozen=True)
class Analysis:
    """The comparison points (``trajectories``: the columns of :class:`Point`), the cost
    of each seed's central flow, and each seed's errors over the edge phase."""

    trajectories: pd.DataFrame
    costs: tuple[Cost, ...]
    errs: tuple[SeedErrors, ...]


def analyze(tables: tuple[pd.DataFrame, pd.DataFrame], cfg: Config) -> Analysis:
    """Each seed's errors over the edge phase (:func:`seed_errors`) from the tables
    :func:`measure` returns (the trajectories, the costs)."""
    trajectories, cost = tables
    points = [Point(**r) for r in trajectories.to_dict("records")]
    costs = tuple(Cost(**r) for r in cost.to_dict("records"))
    return Analysis(trajectories, costs, tuple(seed_errors(points, cfg.lr)))


def claims(a: Analysis, cfg: Config) -> list[Claim]:
    """The central flow beats gradient flow (loss, sharpness, weights: paired t on the
    log of the error ratio GF/CF) and its predicted loss equals GD's time average
    within ×/÷margin (TOST on the mean log ratio over the edge phase)."""
    lr, margin = cfg.lr, cfg.margin
    ok = [e for e in a.errs if e.edge_points > 0]
    cite = "Cohen et al. 2025, Fig. 1–3"
    statements = [
        f"η = {lr:g}: the central flow's predicted loss L + ½σ²S is GD's time-averaged loss "
        f"within ×/÷{margin:g} over the edge phase",
        f"η = {lr:g}: the central flow's loss error is smaller than gradient flow's "
        "(ratio of mean |log loss ratio| GF/CF > 1)",
        f"η = {lr:g}: the central flow's sharpness error is smaller than gradient flow's",
        f"η = {lr:g}: the central flow stays closer to GD's time-averaged iterate than "
        "gradient flow",
    ]
    if not ok:
        why = "GD never reached 2/η in any run"
        return [Claim(s, cite, (), untested=why, headline=i == 0) for i, s in enumerate(statements)]

    a = lambda f: np.array([f(e) for e in ok])  # noqa: E731
    tests = [
        attempt(equivalence_test, a(lambda e: e.loss_logratio_cf), margin=math.log(margin)),
        attempt(paired_test, a(lambda e: e.loss_err_gf), a(lambda e: e.loss_err_cf), log=True),
        attempt(paired_test, a(lambda e: e.sharp_err_gf), a(lambda e: e.sharp_err_cf), log=True),
        attempt(paired_test, a(lambda e: e.dist_gf), a(lambda e: e.dist_cf), log=True),
    ]
    contexts = [
        "mean log(L̄_GD/(L + ½σ²S)) over the edge phase, per seed "
        + ", ".join(f"{v:+.3f}" for v in a(lambda e: e.loss_logratio_cf)),
        f"mean |log(L̄_GD/L)|: CF {mean_std(a(lambda e: e.loss_err_cf))}, GF "
        f"{mean_std(a(lambda e: e.loss_err_gf))}; GF/CF",
        f"mean |log(S̄_GD/S)|: CF {mean_std(a(lambda e: e.sharp_err_cf))}, GF "
        f"{mean_std(a(lambda e: e.sharp_err_gf))}; GF/CF",
        f"mean ‖θ̄_GD − θ‖/‖θ̄_GD − θ₀‖: CF {mean_std(a(lambda e: e.dist_cf))}, GF "
        f"{mean_std(a(lambda e: e.dist_gf))}; GF/CF",
    ]
    return [
        Claim(s, cite, (t,), context=ctx, headline=i == 0)
        for i, (s, t, ctx) in enumerate(zip(statements, tests, contexts))
    ]


# ---------------------------------------------------------------- figure and report


def flow_figure(df: pd.DataFrame, cfg: Config) -> Figure:
    fig = Figure(figsize=(15, 4.6), layout="constrained")
    ax_l, ax_s, ax_d = fig.subplots(1, 3)
    for seed, g in df.groupby("seed"):
        lab = seed == df.seed.min()
        ax_l.plot(
            g.t,
            g.gd_loss,
            color="0.7",
            lw=0.8,
            label="GD (raw, at the probe step)" if lab else None,
        )
        ax_l.plot(
            g.t,
            g.gd_loss_avg,
            color="k",
            lw=1.5,
            label=f"GD, {cfg.window}-step average" if lab else None,
        )
        ax_l.plot(
            g.t,
            g.cf_loss_predicted,
            "--",
            color="C3",
            label="central flow L + ½σ²S" if lab else None,
        )
        ax_l.plot(g.t, g.gf_loss, ":", color="C0", label="gradient flow L" if lab else None)
        ax_l.plot(
            g.t, g.mf_loss, "-.", color="C2", lw=1, label="modified flow (L̃), L" if lab else None
        )
        ax_s.plot(
            g.t, g.gd_sharpness, color="k", lw=1.5, label="GD (window average)" if lab else None
        )
        ax_s.plot(g.t, g.cf_sharpness, "--", color="C3", label="central flow" if lab else None)
        ax_s.plot(g.t, g.gf_sharpness, ":", color="C0", label="gradient flow" if lab else None)
        ax_d.plot(g.t, g.dist_cf, "--", color="C3", label="central flow" if lab else None)
        ax_d.plot(g.t, g.dist_gf, ":", color="C0", label="gradient flow" if lab else None)
        ax_d.plot(
            g.t, g.dist_mf, "-.", color="C2", lw=1, label="modified flow (L̃)" if lab else None
        )
    ax_s.axhline(2 / cfg.lr, color="0.5", lw=1, label="2/η")
    ax_l.set(yscale="log", xlabel="time (GD steps)", ylabel="train loss")
    ax_l.set_title("loss: GD's time average vs the flows' predictions")
    ax_s.set(xlabel="time (GD steps)", ylabel="λ_max(H)")
    ax_s.set_title("sharpness")
    ax_d.set(yscale="log", xlabel="time (GD steps)", ylabel="‖θ̄_GD − θ_flow‖")
    ax_d.set_title("distance from GD's averaged iterate")
    for ax in (ax_l, ax_s, ax_d):
        ax.legend(fontsize=7)
    fig.suptitle(
        f"Full-batch GD (η = {cfg.lr:g}) on MNIST-1D (n = {cfg.n_train}), MLP 40→{cfg.width}→"
        f"{cfg.width}→10 {cfg.activation}, squared loss, float64; {cfg.seeds} seeds"
    )
    tidy_log_axes(fig)
    return fig


def regimes_figure(df: pd.DataFrame, cfg: Config) -> Figure:
    """Issue 21 part 5: the three pictures on one axis of η·λ_max. For each comparison
    time, GD's window-averaged η·S against the distance of GD's iterate from each flow,
    relative to how far GD has travelled: below 2, Barrett & Dherin's modified flow is
    the closer; at 2, the central flow."""
    fig = Figure(figsize=(12, 4.6), layout="constrained")
    axes = fig.subplots(1, 2)
    flows = (("gf", "gradient flow (L)", "C0", ":"), ("mf", "modified flow (L̃ = L + (η/4)‖∇L‖²)", "C2", "-."),
             ("cf", "central flow", "C3", "--"))  # fmt: skip
    x = df.gd_sharpness * cfg.lr
    for ax, suffix, what in (
        (axes[0], "_raw", "raw iterate θ_t"),
        (axes[1], "", "window average θ̄_t"),
    ):
        for key, label, color, ls in flows:
            y = df[f"dist_{key}{suffix}"] / df.gd_travel
            ax.scatter(x, y, s=6, color=color, alpha=0.5, label=label)
            # median over seeds per time, as a line
            med = df.assign(x=x, y=y).groupby("t")[["x", "y"]].median()
            ax.plot(med.x, med.y, ls, color=color, lw=1.2)
        ax.axvline(2, color="0.5", lw=1)
        ax.set(yscale="log", xlabel="η·λ_max of GD (window average)",
               ylabel="‖θ_GD − θ_flow‖ / ‖θ_GD − θ₀‖")  # fmt: skip
        ax.set_title(f"distance from GD's {what}")
        ax.legend(fontsize=7)
    fig.suptitle(
        f"Where each picture holds: GD (η = {cfg.lr:g}) against gradient flow, the modified flow "
        f"of backward error analysis and the central flow, along η·λ_max (2 = the edge); "
        f"{cfg.seeds} seeds"
    )
    tidy_log_axes(fig)
    return fig


def caveats(a: Analysis, cfg: Config) -> list[str]:
    """What limits the comparison, from the numbers: a second eigenvalue at the edge, GD's
    sharpness overshoot, and the flows' distances below the edge."""
    df = a.trajectories
    out = []
    lam2 = [c.cf_lambda2_end for c in a.costs]
    if any(v >= 0.95 for v in lam2):
        out.append(
            "λ₂·η/2 at the end of the central flow is " + ", ".join(f"{v:.3f}" for v in lam2)
            + ": a second eigenvalue reaches the edge, where the one-eigenvalue central flow "
            "of `core.central_flow` no longer applies (Cohen et al. then solve a semidefinite "
            "complementarity problem); the last part of the edge phase is outside what it models."
        )  # fmt: skip
    if len(df):
        top = df.groupby("seed").gd_sharpness.max() * cfg.lr / 2
        out.append(
            "GD's window-averaged sharpness overshoots 2/η before it settles (max η·S̄/2 per "
            "seed " + ", ".join(f"{v:.2f}" for v in top) + "), while the central flow holds "
            "S = 2/η; early in the edge phase its sharpness error is therefore larger than "
            "gradient flow's (table of quarters)."
        )
        below = df[df.gd_sharpness * cfg.lr < 1.9]
        if len(below):
            rel = {
                k: float(np.median(below[f"dist_{k}_raw"] / below.gd_travel))
                for k in ("mf", "gf", "cf")
            }
            out.append(
                "Below the edge (η·S̄ < 1.9) the median distance from GD's iterate, relative to "
                f"how far GD has moved, is {rel['mf']:.3f} for Barrett & Dherin's modified flow, "
                f"{rel['gf']:.3f} for gradient flow and {rel['cf']:.3f} for the central flow (there "
                f"gradient flow in Euler steps of dt = {cfg.dt:g} GD steps, which carry an "
                "implicit term of their own): the modified flow is the right picture below 2."
            )
    return out


def figures(a: Analysis, cfg: Config) -> list[tuple[Figure, str, str]]:
    return [
        (
            flow_figure(a.trajectories, cfg),
            "central_flow.png",
            "Left: GD's loss (grey: raw; black: its time average) against the central flow's "
            "predicted time-averaged loss L + ½σ²S (red dashed) and gradient flow (blue dotted). "
            "Middle: sharpness. Right: distance of GD's window-averaged iterate from each flow. "
            "One line per seed.",
        ),
        (
            regimes_figure(a.trajectories, cfg),
            "regimes.png",
            "Issue 21 part 5, the three pictures on one axis: relative distance of GD's iterate "
            "(left: raw; right: window-averaged) from gradient flow (blue), Barrett & Dherin's "
            "modified flow (green) and the central flow (red), against GD's η·λ_max; lines are "
            "medians over seeds at each time.",
        ),
    ]


def quarter_errors(a: Analysis) -> list[dict]:
    """The |log ratio| errors to GD's time average by quarter of each seed's edge phase."""
    df, rows = a.trajectories, []
    for e in a.errs:
        g = df[(df.seed == e.seed) & (df.t >= e.edge_start)] if e.edge_points else df.iloc[:0]
        g = g.sort_values("t")
        quarters = np.array_split(np.arange(len(g)), 4) if len(g) >= 4 else []
        for q, idx in enumerate(quarters):
            part = g.iloc[idx]
            rows.append({
                "seed": e.seed, "quarter of edge phase": q + 1,
                "t": f"{part.t.min():g}–{part.t.max():g}",
                "loss err CF": f"{np.mean(np.abs(np.log(part.gd_loss_avg / part.cf_loss_predicted))):.3g}",
                "loss err GF": f"{np.mean(np.abs(np.log(part.gd_loss_avg / part.gf_loss))):.3g}",
                "sharp err CF": f"{np.mean(np.abs(np.log(part.gd_sharpness / part.cf_sharpness))):.3g}",
                "sharp err GF": f"{np.mean(np.abs(np.log(part.gd_sharpness / part.gf_sharpness))):.3g}",
            })  # fmt: skip
    return rows


def extras(report: Report, a: Analysis, cfg: Config) -> None:
    report.add_table(
        [dataclasses.asdict(e) for e in a.errs],
        heading="Errors over the edge phase, per seed",
        caption=(
            "edge_start: first comparison time (GD steps) with GD's window-averaged sharpness "
            "≥ 0.95·2/η; errors are means over the comparison times from then on: |log ratio| "
            "of loss and sharpness, and the distance relative to how far GD has travelled."
        ),
    )
    if rows := quarter_errors(a):
        report.add_table(
            rows,
            heading="Errors over time",
            caption="|log ratio| to GD's time average, by quarter of the edge phase.",
        )
    report.add_table(
        [dataclasses.asdict(c) for c in a.costs],
        heading="Cost of the central flow",
        caption=(
            f"Per unit of flow time (one GD step): Lanczos HVPs (warm-started, ≤ "
            f"{cfg.lanczos_max_iter} iterations, plus the residual check) and ∇S evaluations "
            f"(1/dt = {1 / cfg.dt:g}; each one forward-over-reverse HVP and a reverse pass); "
            "wall seconds against one GD step's. cf_lambda2_end: the second eigenvalue at the "
            "end, × η/2 (the one-eigenvalue central flow holds while it stays below 1)."
        ),
    )
    report.add_data(pd.DataFrame([dataclasses.asdict(e) for e in a.errs]), "seed_errors.csv")
    report.add_text("\n".join(f"- {c}" for c in caveats(a, cfg)), heading="Limits")


SPEC = Spec(
    NAME, TITLE, PAPER, CONFIGS, None, analyze, claims, figures, extras,
    measure=measure, measured=("trajectories.csv", "cost.csv"),
)  # fmt: skip


def run(scale: str, out: Path) -> Report:
    """Run central-flow at ``scale`` and write its report into ``out``; a store-only report
    (``IMPLICIT_REG_STORE_ONLY=1``) re-analyses the ``trajectories.csv`` and ``cost.csv`` an
    earlier report wrote there instead of measuring again."""
    return run_spec(SPEC, scale, out)
