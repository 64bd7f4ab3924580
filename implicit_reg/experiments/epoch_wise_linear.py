"""epoch-wise-linear: epoch-wise double descent from features learned on two time scales.

Pezeshki, Mitra, Bengio & Lajoie, "Multi-scale feature learning dynamics:
insights for double descent", ICML 2022 (arXiv 2112.03215): in a linear
teacher–student model whose inputs have fast (large-variance) and slow
(small-variance) directions, the test error of GD from zero against time
first falls, then rises while the fast features overfit, then falls again
when the slow features are learned. Heckel & Yilmaz, "Early stopping in deep
networks: double descent and how to eliminate it", ICLR 2021 (arXiv
2007.10099): the epoch-wise bump is a sum of bias–variance trade-offs that
peak at different times, and step sizes scaled per group of parameters so
that all of them are learned at once remove it.

What is run: :func:`~implicit_reg.experiments._linear.two_scale_data`
(x = Fz, F = diag(1, …, 1, 1/κ, …, 1/κ), teacher y = zᵀβ* + ε), trained by
the package's :class:`~implicit_reg.core.optim.GD` on the squared loss
(1/2n)‖Xw − y‖², float64, with the fast and the slow weights as two
parameter groups: the same step η in both (plain GD), or η·κ² in the slow
group (the per-group step sizes of Heckel & Yilmaz; with them both blocks
have input variance 1 and the same time scale). Beside the simulation, the
closed form :func:`~implicit_reg.experiments._linear.gd_least_squares_path`
and the population risk Σ_i (F_ii w_i − β*_i)² + σ², split into its fast and
slow parts. The times at which the claims are read (first minimum, bump,
second minimum) are taken from the closed-form mean over separate pilot
draws, so they are not selected on the seeds that are judged. The experiment is a
:class:`~implicit_reg.experiments._spec.Spec` that ``measure``s its curves and the pilot
curves (no engine runs); a store-only report re-judges them from ``curves.csv`` (and
``pilot.csv``, recomputed in closed form where an older report did not store it).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from implicit_reg.core.optim import GD
from implicit_reg.report.report import Claim, Report, attempt, fmt, mean_std, plot_band
from implicit_reg.stats import paired_test, peak_test

from ._linear import gd_least_squares_path, group_risk, two_scale_data
from ._spec import Spec, run_spec

NAME = "epoch-wise-linear"
TITLE = (
    "Epoch-wise double descent in a linear teacher–student model with fast and slow features, "
    "and its removal by per-group step sizes"
)
PAPER = (
    "Pezeshki, Mitra, Bengio & Lajoie, *Multi-scale feature learning dynamics: insights for "
    "double descent*, ICML 2022 (arXiv 2112.03215), Sec. 2–3, Fig. 1–2; Heckel & Yilmaz, "
    "*Early stopping in deep networks: double descent and how to eliminate it*, ICLR 2021 "
    "(arXiv 2007.10099), Sec. 3–4"
)

SETTINGS = ("plain GD", "per-group step sizes")


@dataclasses.dataclass(frozen=True)
class Config:
    n: int = 200  # training samples
    d_fast: int = 140  # fast feature directions (input variance 1)
    d_slow: int = 20  # slow feature directions (input variance 1/κ²)
    kappa: float = 30.0  # ratio of the input scales: the slow block learns κ² times slower
    noise: float = 0.2  # label noise σ
    signal_fast: float = 1.0  # ‖β*‖² on the fast block (about)
    signal_slow: float = 0.3  # ‖β*‖² on the slow block (about)
    lr_scale: float = 1.0  # η = lr_scale / λ_max(XᵀX/n) of plain GD
    steps: int = 100_000  # simulated GD steps
    log_points: int = 80  # geometric grid of logged steps, 1..steps
    seeds: int = 5  # data draws simulated and judged
    pilot_seeds: int = 20  # separate draws (closed form only) that fix the read-out times


CONFIGS = {
    "smoke": Config(
        n=40, d_fast=24, d_slow=6, kappa=10.0, steps=3000, log_points=25, seeds=2, pilot_seeds=3
    ),  # fmt: skip
    "demo": Config(kappa=20.0, seeds=3, steps=30_000, log_points=60, pilot_seeds=10),
    "small": Config(),
    "full": Config(seeds=20, steps=300_000, log_points=120, pilot_seeds=50),
}


def log_steps(cfg: Config) -> np.ndarray:
    """0 and a geometric grid of step counts from 1 to ``cfg.steps`` (unique integers)."""
    return np.unique(np.r_[0, np.geomspace(1, cfg.steps, cfg.log_points).round()]).astype(np.int64)


def draw(cfg: Config, seed: int) -> dict[str, np.ndarray]:
    return two_scale_data(
        cfg.n, cfg.d_fast, cfg.d_slow, cfg.kappa, cfg.noise, cfg.signal_fast, cfg.signal_slow, seed
    )


def step_size(data: dict[str, np.ndarray], cfg: Config) -> float:
    """η = lr_scale / λ_max(XᵀX/n), the same for both settings (the remedy's slow block has
    λ_max ≤ that of the fast block, so η·κ² there is stable too)."""
    x = data["x"]
    return cfg.lr_scale / float(np.linalg.eigvalsh(x.T @ x / len(x)).max())


def precond(setting: str, cfg: Config) -> np.ndarray:
    """The per-coordinate step multipliers D: 1 everywhere, or κ² on the slow block."""
    slow = cfg.kappa**2 if setting == "per-group step sizes" else 1.0
    return np.r_[np.ones(cfg.d_fast), np.full(cfg.d_slow, slow)]


def closed_form(data, setting: str, cfg: Config, steps: np.ndarray) -> dict[str, np.ndarray]:
    w = gd_least_squares_path(
        data["x"], data["y"], step_size(data, cfg), steps, precond(setting, cfg)
    )
    return group_risk(w, data, cfg.d_fast)


def simulate(data, setting: str, cfg: Config, steps: np.ndarray) -> dict[str, np.ndarray]:
    """The package's GD, two parameter groups (fast, slow weights), float64; the population
    risk at ``steps``."""
    x = torch.tensor(data["x"])
    y = torch.tensor(data["y"])
    xf, xs = x[:, : cfg.d_fast], x[:, cfg.d_fast :]
    wf = torch.zeros(cfg.d_fast, dtype=torch.float64, requires_grad=True)
    ws = torch.zeros(cfg.d_slow, dtype=torch.float64, requires_grad=True)
    lr = step_size(data, cfg)
    slow = float(precond(setting, cfg)[-1])
    opt = GD([{"params": [wf], "lr": lr}, {"params": [ws], "lr": lr * slow}], lr=lr)
    want, logged = set(steps.tolist()), []
    for t in range(int(steps.max()) + 1):
        if t in want:
            logged.append(torch.cat([wf, ws]).detach().numpy().copy())
        opt.zero_grad(set_to_none=False)
        loss = 0.5 * ((xf @ wf + xs @ ws - y) ** 2).mean()
        loss.backward()
        opt.step()
    return group_risk(np.stack(logged), data, cfg.d_fast)


def readout_times(mean_risk: np.ndarray) -> tuple[int, int, int]:
    """Indices (first local minimum, highest point after it, lowest point after that) of a
    risk curve; on a monotone curve all three are the same index or the bump has height 0."""
    r = np.asarray(mean_risk)
    local = [i for i in range(1, len(r) - 1) if r[i] < r[i - 1] and r[i] <= r[i + 1]]
    i1 = local[0] if local else int(np.argmin(r))
    i2 = i1 + int(np.argmax(r[i1:]))
    i3 = i2 + int(np.argmin(r[i2:]))
    return i1, i2, i3


def bump(risk: np.ndarray, idx: tuple[int, int, int]) -> np.ndarray:
    """Height of a rise that is followed by a fall: min(R(t2) − R(t1), R(t2) − R(t3)) per row."""
    i1, i2, i3 = idx
    return np.minimum(risk[:, i2] - risk[:, i1], risk[:, i2] - risk[:, i3])


def pilot_curves(cfg: Config) -> pd.DataFrame:
    """The closed-form mean test risk over ``pilot_seeds`` draws not judged (seeds 1000+),
    per setting and logged step: the curves the read-out times are taken from."""
    steps = log_steps(cfg)
    frames = []
    for setting in SETTINGS:
        pilot = np.mean(
            [closed_form(draw(cfg, 1000 + s), setting, cfg, steps)["excess"] for s in range(cfg.pilot_seeds)],
            axis=0,
        )  # fmt: skip
        frames.append(
            pd.DataFrame({"setting": setting, "step": steps, "risk": pilot + cfg.noise**2})
        )
    return pd.concat(frames, ignore_index=True)


def run_all(cfg: Config) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Long table (setting, seed, step, source, fast, slow, risk) of the simulated seeds and
    the closed form on them (``attrs["sim_s"]``: the simulation's seconds), and the pilot
    curves (:func:`pilot_curves`)."""
    steps = log_steps(cfg)
    noise2 = cfg.noise**2
    frames, sim_s = [], 0.0
    for setting in SETTINGS:
        for seed in range(cfg.seeds):
            data = draw(cfg, seed)
            t0 = time.perf_counter()
            results = {"simulated": simulate(data, setting, cfg, steps)}
            sim_s += time.perf_counter() - t0
            results["closed form"] = closed_form(data, setting, cfg, steps)
            for source, r in results.items():
                frames.append(
                    pd.DataFrame(
                        {
                            "setting": setting, "seed": seed, "step": steps, "source": source,
                            "fast": r["fast"], "slow": r["slow"], "risk": r["excess"] + noise2,
                        }
                    )
                )  # fmt: skip
    df = pd.concat(frames, ignore_index=True)
    df.attrs["sim_s"] = sim_s
    return df, pilot_curves(cfg)


def matrix(df: pd.DataFrame, setting: str, col: str, source: str = "simulated") -> np.ndarray:
    sel = df[(df.setting == setting) & (df.source == source)]
    return sel.pivot(index="seed", columns="step", values=col).to_numpy()


def figure(df: pd.DataFrame, times: dict, cfg: Config) -> Figure:
    steps = np.sort(df.step.unique())
    x = np.where(steps == 0, 0.5, steps)  # step 0 drawn at 0.5 on the log axis
    fig = Figure(figsize=(13, 4.6), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, setting in zip(axes, SETTINGS):
        plot_band(ax, x, matrix(df, setting, "risk"), label="test risk, simulated GD", color="C0",
                  marker="o", ms=2.5, lw=0)  # fmt: skip
        cf = matrix(df, setting, "risk", "closed form").mean(0)
        ax.plot(x, cf, "-", color="k", lw=1, label="closed form (mean over the same draws)")
        for col, c, name in (("fast", "C1", "fast block"), ("slow", "C2", "slow block")):
            plot_band(
                ax, x, matrix(df, setting, col), label=f"excess risk, {name}", color=c, ls="--"
            )
        for i, ls in zip(times[setting], (":", "-.", ":")):
            ax.axvline(x[i], color="0.5", ls=ls, lw=0.8)
        ax.set(
            xscale="log",
            xlabel="GD step t (log; step 0 drawn at 0.5)",
            ylabel="test risk / excess risk",
        )
        slow = "η" if setting == "plain GD" else f"η·κ² = {cfg.kappa**2:g}·η"
        ax.set_title(f"{setting}: step η on fast weights, {slow} on slow weights", fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle(
        f"Linear teacher–student, n = {cfg.n}, {cfg.d_fast} fast + {cfg.d_slow} slow directions, "
        f"κ = {cfg.kappa:g}, σ = {cfg.noise:g}; mean ± std over {cfg.seeds} draws; grey lines: "
        "read-out times from pilot draws"
    )
    return fig


@dataclasses.dataclass(frozen=True)
class Analysis:
    """The curves (one row per setting, seed, logged step and source), the pilot curves,
    the read-out indices (first minimum, bump, second minimum) per setting taken from the
    pilot, and the largest relative difference of simulated and closed-form risk."""

    curves: pd.DataFrame
    pilot: pd.DataFrame
    times: dict[str, tuple[int, int, int]]
    rel: float
    sim_s: float | None  # GD simulation seconds; None when read back from a stored table
    pilot_recomputed: bool  # the stored report had no pilot.csv: recomputed (closed form)

    @property
    def steps(self) -> np.ndarray:
        return np.sort(self.curves.step.unique())

    def bump(self, setting: str) -> np.ndarray:
        return bump(matrix(self.curves, setting, "risk"), self.times[setting])


def analyze(tables: tuple[pd.DataFrame, pd.DataFrame], cfg: Config) -> Analysis:
    """Read-out times from the pilot curves (recomputed in closed form when a stored report
    has none), and the check of the simulation against the closed form."""
    df, pilot = tables
    recomputed = not len(pilot)
    if recomputed:
        pilot = pilot_curves(cfg)
    times = {
        setting: readout_times(pilot[pilot.setting == setting].sort_values("step").risk.to_numpy())
        for setting in SETTINGS
    }
    sim, cf = (
        df[df.source == s].sort_values(["setting", "seed", "step"])
        for s in ("simulated", "closed form")
    )
    rel = float(np.max(np.abs(sim.risk.to_numpy() - cf.risk.to_numpy()) / cf.risk.to_numpy()))
    return Analysis(df, pilot, times, rel, df.attrs.get("sim_s"), recomputed)


def claims(a: Analysis, cfg: Config) -> list[Claim]:
    """The epoch-wise bump at the pilot's times, its fast/slow mechanism, and its removal by
    per-group step sizes."""
    df, steps, plain, remedy = a.curves, a.steps, "plain GD", "per-group step sizes"
    i1, i2, i3 = a.times[plain]
    t1, t2, t3 = (int(steps[i]) for i in (i1, i2, i3))
    risk = matrix(df, plain, "risk")
    fast, slow = matrix(df, plain, "fast"), matrix(df, plain, "slow")
    b_plain, b_remedy = a.bump(plain), a.bump(remedy)
    r_end = matrix(df, remedy, "risk")[:, -1]
    # the read-out times come from pilot draws, not the ones tested: the peak is located
    # before it is tested
    return [
        Claim(
            "The test risk against GD time falls, rises, then falls again (epoch-wise double "
            "descent)",
            "Pezeshki et al. 2022, Fig. 1–2",
            (attempt(peak_test, risk[:, [i1, i2, i3]], at=1),),
            context=f"test risk at t = {t1:,} (first minimum): {mean_std(risk[:, i1])}; t = "
            f"{t2:,} (bump): {mean_std(risk[:, i2])}; t = {t3:,} (second minimum): "
            f"{mean_std(risk[:, i3])}; the three times were read off pilot draws, not the draws "
            "tested",
            headline=True,
        ),
        Claim(
            "The bump is the fast features overfitting (their excess risk rises from t₁ to t₂); "
            "the second descent is the slow features being learned (theirs falls from t₂ to t₃)",
            "Pezeshki et al. 2022, Sec. 3 and Fig. 1 (top)",
            (
                attempt(paired_test, fast[:, i2], fast[:, i1]),
                attempt(paired_test, slow[:, i2], slow[:, i3]),
            ),
        ),
        Claim(
            f"Per-group step sizes (η·κ² = {cfg.kappa**2:g}η on the slow weights) shrink the bump",
            "Heckel & Yilmaz 2021, Sec. 3–4",
            (attempt(paired_test, b_plain, b_remedy),),
            context=f"bump height min(R(t₂) − R(t₁), R(t₂) − R(t₃)): plain GD "
            f"{mean_std(b_plain)}, per-group {mean_std(b_remedy)} (its read-out steps "
            f"{', '.join(f'{int(steps[i]):,}' for i in a.times[remedy])}); final test risk plain "
            f"{mean_std(risk[:, -1])}, per-group {mean_std(r_end)}",
        ),
    ]


def figures(a: Analysis, cfg: Config) -> list[tuple[Figure, str, str]]:
    return [
        (
            figure(a.curves, a.times, cfg),
            "epoch_wise_linear.png",
            "Test risk against GD steps (log axis), simulated with the package's GD (dots, mean "
            "± std over draws) and the closed form (black line); dashed: the excess risk of the "
            "fast and of the slow block. Left: one step size; right: κ² times the step on the "
            "slow weights. Grey: the read-out times of the claims (first minimum, bump, second "
            "minimum).",
        )
    ]


def extras(report: Report, a: Analysis, cfg: Config) -> None:
    """The check against the closed form, the read-out table and the reading."""
    df, steps = a.curves, a.steps
    if a.pilot_recomputed:  # a stored report without its pilot curves: keep them now
        report.add_data(a.pilot, "pilot.csv")
    check = "agree to float64 round-off" if a.rel < 1e-6 else "**differ: a bug**"
    stored = (
        "; here read back from `curves.csv`, stored to 8 significant digits, so the full-"
        "precision check is that of the report which computed it"
        if a.sim_s is None
        else ""
    )
    recomputed = (
        " The pilot curves (`pilot.csv`) were not stored with the table; they were recomputed "
        "in closed form from the config (no GD simulation)."
        if a.pilot_recomputed
        else ""
    )
    report.add_text(
        "GD from zero on least squares follows its closed form in the eigenbasis, "
        "w_t = V diag((1 − (1 − ηλ)^t)/λ) Vᵀ Xᵀy/n (Pezeshki et al. 2022, Sec. 3): the largest "
        f"relative difference of the test risk, package GD against the closed form, over "
        f"{len(df) // 2:,} (draw, setting, step) points is {a.rel:.1e}; they {check} (a "
        f"deterministic check of the code, not a claim of the paper{stored}).{recomputed}",
        heading="Check: the simulation against the closed form",
    )
    table = []
    for setting in SETTINGS:
        r = matrix(df, setting, "risk")
        for name, i in zip(("first minimum", "bump", "second minimum"), a.times[setting]):
            table.append({"setting": setting, "read-out": name, "step t": int(steps[i]),
                          "test risk": mean_std(r[:, i]),
                          "fast excess": mean_std(matrix(df, setting, "fast")[:, i]),
                          "slow excess": mean_std(matrix(df, setting, "slow")[:, i])})  # fmt: skip
        table.append({"setting": setting, "read-out": "start (w = 0)", "step t": 0,
                      "test risk": mean_std(r[:, 0]), "fast excess": "", "slow excess": ""})  # fmt: skip
    report.add_table(
        table,
        heading="Read-out points",
        caption=(
            f"Mean ± std over {cfg.seeds} draws (data and teacher). The steps are the first "
            f"local minimum, the highest point after it and the lowest point after that of the "
            f"closed-form mean over {cfg.pilot_seeds} other draws. Noise floor σ² = "
            f"{fmt(cfg.noise**2)}."
        ),
    )
    report.add_text(
        "The student's population risk is exact (Gaussian inputs with a known covariance), so "
        "there is no test-set noise; the spread is over draws of the training set and teacher. "
        "Every curve converges to the same least-squares solution (n > d here), so the "
        "per-group step sizes change the path, not the end point. Heckel & Yilmaz's two-layer "
        "ReLU network, in the configuration of their notebook, is run in `epoch-wise-network`; "
        "the linear model above is their Sec. 3 mechanism with the remedy in closed form. "
        + (
            f"GD simulation time: {a.sim_s:.1f} s."
            if a.sim_s is not None
            else "GD simulation time: that of the report which computed `curves.csv`."
        ),
        heading="Reading",
    )


SPEC = Spec(
    NAME, TITLE, PAPER, CONFIGS, None, analyze, claims, figures, extras,
    measure=run_all, measured=("curves.csv", "pilot.csv"),
)  # fmt: skip


def run(scale: str, out: Path) -> Report:
    """Run epoch-wise-linear at ``scale`` and write its report into ``out`` (a store-only
    report re-judges the stored ``curves.csv``; the pilot curves are read from ``pilot.csv``
    or, absent, recomputed in closed form)."""
    return run_spec(SPEC, scale, out)
