"""sample-wise: at a fixed width near the threshold, test error against the number of samples.

Nakkiran et al., "Deep Double Descent", 2019 (arXiv 1912.02292), Sec. 7 and
Fig. 11–12: the interpolation threshold depends on n as well as on the
model, so for a fixed model test error against n can rise where n crosses
the model's effective complexity (the largest n it fits); there more data
hurts.

What is run: ``double-descent-width``'s MNIST-1D recipe (MLP 40 → w → w →
10, cross-entropy, SGD lr 0.01, momentum 0.9, batch 100, 15% label noise, a
fixed number of epochs, so a larger n gets proportionally more steps) at
one width w (``small``: w = 21, N = 1,543; if it fits up to n ≈ N/1.2, as
the fit at N ≈ 4,700 for n = 4,000 suggests, its threshold n ≈ 1,300 lies
inside the swept n) for several training-set sizes n (nested subsets of the
MNIST-1D training pool, ``load_dataset(n_train=...)``), same test set. The
run at double-descent-width's own n is the same config, so the plan borrows
that experiment's run store (``Plan(borrows="double-descent-width")``), where
the new runs go too. The experiment is a :class:`~implicit_reg.experiments._spec.Spec`:
``plan``, a typed ``analyze``, ``claims`` and ``figures``, run by ``run_spec``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from implicit_reg.report.report import Claim, Report, attempt, mean_std
from implicit_reg.stats import paired_test, peak_test

from . import double_descent_width as ddw
from ._spec import Plan, Spec, run_spec
from ._sweeps import complete_seeds, seed_band, tidy_log_axes

NAME = "sample-wise"
TITLE = "Sample-wise non-monotonicity: test error against the number of training samples at a fixed width (MNIST-1D, 15% label noise)"
PAPER = "Nakkiran et al., *Deep Double Descent*, arXiv 1912.02292, Sec. 7, Fig. 11–12"


@dataclasses.dataclass(frozen=True)
class Config:
    width: int  # one of double-descent-width's MNIST-1D widths
    n_trains: tuple[int, ...]
    width_config: ddw.Config


CONFIGS = {
    "smoke": Config(width=8, n_trains=(32, 64), width_config=ddw.CONFIGS["smoke"]),
    # w = 21 (N = 1,543): at n = 4,000 the training error first reaches 0 near N ≈ 1.2·n, so
    # this width's threshold (n ≈ 1,300) lies inside the swept n
    "small": Config(
        width=21,
        n_trains=(250, 500, 750, 1000, 1250, 1500, 2000, 3000, 4000),
        width_config=ddw.CONFIGS["small"],
    ),  # fmt: skip
    "full": Config(
        width=21,
        n_trains=(250, 500, 750, 1000, 1250, 1500, 1750, 2000, 2500, 3000, 4000),
        width_config=ddw.CONFIGS["full"],
    ),  # fmt: skip
}


def run_list(cfg: Config) -> list:
    """The engine configs: each n × seed at the fixed width, on the noisy labels."""
    wc = cfg.width_config
    return [
        wc.mnist1d.run_config(cfg.width, s, wc.label_noise, n_train=n)
        for n in cfg.n_trains
        for s in range(wc.seeds)
    ]


def sample_figure(
    rows: pd.DataFrame, cfg: Config, n_params: int, n_fit: int | None = None
) -> Figure:
    setting = cfg.width_config.mnist1d
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    seed_band(ax, rows, "n_train", "test_error", label="test error", marker="o", color="C3")
    seed_band(ax, rows, "n_train", "train_error", label="train error (noisy labels)", marker="s",
              color="C0")  # fmt: skip
    ax.axvline(n_params, ls=":", color="0.3", label=f"n = N = {n_params:,} parameters")
    if n_params / 10 >= min(cfg.n_trains) / 2:
        ax.axvline(n_params / 10, ls="--", color="0.3", label=f"n·k = N (n = {n_params / 10:,.0f})")
    if n_fit is not None:  # the threshold measured here: the largest n the model fits
        ax.axvline(n_fit, ls="-", color="C2", lw=1.5,
                   label=f"largest n fitted to ≤ {100 * ddw.INTERPOLATED:g}% train error "
                   f"(n = {n_fit:,}): the measured threshold")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("training samples n")
    ax.set_ylabel("error (fraction misclassified)")
    ax.set_title(
        f"MNIST-1D, MLP 40→{cfg.width}→{cfg.width}→10 (N = {n_params:,}), "
        f"{100 * cfg.width_config.label_noise:g}% label noise,\nSGD lr {setting.lr:g}, momentum "
        f"{setting.momentum:g}, batch {setting.batch_size}, {setting.epochs} epochs; mean ± std "
        f"over {cfg.width_config.seeds} seed(s)",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    tidy_log_axes(fig)
    return fig


def plan(cfg: Config) -> Plan:
    """Each n × seed at the fixed width, stored with (and shared by) double-descent-width,
    whose own run at its n is one of them."""
    if cfg.width not in cfg.width_config.mnist1d.widths:
        raise ValueError(
            f"width {cfg.width} is not run by double-descent-width; choose from "
            f"{list(cfg.width_config.mnist1d.widths)}"
        )
    return Plan(tuple(run_list(cfg)), borrows=ddw.NAME)


@dataclasses.dataclass(frozen=True)
class Analysis:
    """What the sample-wise runs show. ``table``: test error as (seed × n), seeds with every
    n; ``n_fit``: the largest n whose mean train error is ≤ ``ddw.INTERPOLATED`` (read from
    training error, before any test); ``n_next``: the first n beyond it, where the theory
    puts the rise (None when there is none)."""

    rows: pd.DataFrame
    table: pd.DataFrame
    means: pd.Series
    n_params: int
    n_fit: int | None
    n_next: int | None

    @property
    def untestable(self) -> str:
        if self.n_fit is None:
            return f"no n is fitted to ≤ {100 * ddw.INTERPOLATED:g}% train error"
        if self.n_next is None:
            return f"no n beyond the largest fitted n = {self.n_fit:,}"
        return ""


def analyze(rows: pd.DataFrame, cfg: Config) -> Analysis:
    """The (seed × n) test errors and the threshold n read from the training error."""
    rows = rows[rows.status == "complete"].copy()
    rows["n_train"] = rows["n_train"].astype(int)
    table = complete_seeds(rows.pivot_table(index="seed", columns="n_train", values="test_error"))
    train = rows.groupby("n_train").train_error.mean().sort_index()
    fits = train[train <= ddw.INTERPOLATED]
    n_fit = int(fits.index.max()) if len(fits) else None
    n_next = next((int(n) for n in table.columns if n_fit is not None and n > n_fit), None)
    return Analysis(
        rows=rows, table=table, means=rows.groupby("n_train").test_error.mean().sort_index(),
        n_params=int(rows.n_params.iloc[0]), n_fit=n_fit, n_next=n_next,
    )  # fmt: skip


def claims(a: Analysis, cfg: Config) -> list[Claim]:
    """More data hurts where n crosses the model's effective complexity (Nakkiran et al.)."""
    ns, t = list(a.table.columns), a.table
    context = (
        "mean test error by n: "
        + ", ".join(f"{n:,}: {100 * v:.1f}%" for n, v in a.means.items())
        + f"; the largest n fitted to ≤ {100 * ddw.INTERPOLATED:g}% train error: "
        + (f"{a.n_fit:,}" if a.n_fit is not None else "none")
        + f"; one width (N = {a.n_params:,}) and {len(ns)} sample sizes, {len(t)} seeds: "
        "a design with little power for a rise confined to a narrow range of n"
    )
    rise = (
        (attempt(paired_test, t[a.n_next].to_numpy(), t[a.n_fit].to_numpy()),)
        if not a.untestable
        else ()
    )
    i_next = ns.index(a.n_next) if a.n_next is not None else None
    interior = i_next is not None and 0 < i_next < len(ns) - 1
    return [
        Claim(
            "near the threshold more data can hurt: the test error rises from the largest n "
            "the model fits to the next n",
            "Nakkiran et al. 2019, Fig. 11–12",
            rise, context=context, untested=a.untestable, headline=True,
        ),
        Claim(
            "the test error peaks where n crosses what the model can just fit (its effective "
            "complexity): above the smaller n and above the largest n",
            "Nakkiran et al. 2019, Sec. 7",
            (attempt(peak_test, t.to_numpy(), at=i_next),) if interior else (),
            context=f"peak placed at n = {a.n_next:,} (the first n not fitted)" if a.n_next else "",
            untested="" if interior
            else (a.untestable or f"n = {a.n_next:,} is not an interior point"),
        ),
    ]  # fmt: skip


def figures(a: Analysis, cfg: Config) -> list[tuple[Figure, str, str]]:
    return [
        (
            sample_figure(a.rows, cfg, a.n_params, a.n_fit),
            "sample_wise.png",
            "Test and train error against the number of training samples at a fixed width; "
            "mean ± std over seeds. Green: the measured threshold (the largest n the model "
            "fits); dotted: n equal to the parameter count.",
        )
    ]


def extras(report: Report, a: Analysis, cfg: Config) -> None:
    setting, wc = cfg.width_config.mnist1d, cfg.width_config
    report.add_table(
        [
            {
                "n": n,
                "steps": int(g.steps_done.iloc[0]),
                "train error": mean_std(g.train_error.to_numpy()),
                "test error": mean_std(g.test_error.to_numpy()),
                "‖θ‖": mean_std(g.weight_norm.to_numpy()),
                **(
                    {"λ_max": mean_std(g.lambda_max.to_numpy())}
                    if "lambda_max" in g and g.lambda_max.notna().any()
                    else {}
                ),
            }
            for n, g in a.rows.groupby("n_train")
        ],
        heading="Per training-set size",
        caption=(
            f"Width {cfg.width} (N = {a.n_params:,}), {setting.epochs} epochs each (steps grow "
            f"with n), the same test set (data set `{setting.dataset}`), mean ± std over "
            f"{wc.seeds} seed(s). The n = {setting.n_train:,} runs are shared with "
            "`double-descent-width`."
        ),
    )
    cols = ["n_train", "seed", "n_params", "steps_done", "train_error", "test_error",
            "train_loss", "test_loss", "weight_norm", "lambda_max"]  # fmt: skip
    report.add_data(a.rows[[c for c in cols if c in a.rows]], "runs.csv")


SPEC = Spec(NAME, TITLE, PAPER, CONFIGS, plan, analyze, claims, figures, extras)


def run(scale: str, out: Path) -> Report:
    """Run sample-wise at ``scale`` and write its report into ``out``."""
    return run_spec(SPEC, scale, out)
