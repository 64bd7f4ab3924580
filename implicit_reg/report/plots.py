"""Figures from tidy result tables: each function takes a DataFrame and returns a Figure.

Figures are built on ``matplotlib.figure.Figure`` directly (the Agg canvas;
pyplot and its global figure list are never touched) and drawn with seaborn.
Replicates (seeds) are shown as the mean with a ±1 standard-deviation band;
an axis is logarithmic when its values are positive and geometrically
spaced (the usual sweep over lr or width).

- :func:`plot_vs_lr`: a final metric against the learning rate, one line per width.
- :func:`plot_vs_params`: a final metric against the parameter count with the
  interpolation threshold n·k dashed (and n dotted) — Belkin et al. 2019.
- :func:`plot_vs_step`: a metric against the step, with 2/h dashed for λ_max
  (the edge of stability, Cohen et al. 2021).
- :func:`plot_measure_vs_gap`: a flatness/norm measure against the
  generalization gap (test error − train error).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

__all__ = [
    "LABELS",
    "FIGURE_KINDS",
    "FIGURE_FORMATS",
    "label",
    "is_geometric",
    "plot_vs_lr",
    "plot_vs_params",
    "plot_vs_step",
    "plot_measure_vs_gap",
    "save_figure",
    "plot_sweep",
]

FIGURE_FORMATS = (".png", ".svg", ".pdf")

# Axis labels with units ("fraction" for error rates, "count" for parameters).
LABELS = {
    "lr": "learning rate h",
    "width": "width (hidden units)",
    "depth": "depth (hidden layers)",
    "batch_size": "batch size B (samples)",
    "seed": "seed",
    "label_noise": "label noise (fraction of labels)",
    "n_train": "training samples n",
    "n_params": "trainable parameters (count)",
    "step": "step (optimizer iterations)",
    "train_error": "train error (fraction misclassified)",
    "test_error": "test error (fraction misclassified)",
    "train_error_clean": "train error on clean labels (fraction)",
    "train_loss": "train loss (mean per sample)",
    "test_loss": "test loss (mean per sample)",
    "gen_gap": "generalization gap (test − train error, fraction)",
    "grad_norm_sq": "‖∇L‖² (squared gradient norm)",
    "weight_norm": "‖θ‖₂ (weight norm)",
    "dist_from_init": "‖θ − θ₀‖₂ (distance from init)",
    "lambda_max": "λ_max (top Hessian eigenvalue)",
    "lambda_min": "λ_min (bottom Hessian eigenvalue)",
    "trace": "tr H (Hessian trace)",
    "eps_sharpness": "ε-sharpness (relative loss increase)",
    "gaussian_sharpness": "Gaussian sharpness (mean loss increase)",
    "geometric_complexity": "geometric complexity (mean ‖∂f/∂x‖²_F)",
}


def label(name: str) -> str:
    """The axis label for a column or metric name (the name itself if unknown)."""
    return LABELS.get(name, name)


def is_geometric(values) -> bool:
    """True if the distinct values are positive, at least 3, spanning ≥ 10×, and their
    log-spacing is more even than their linear spacing (a geometric sweep)."""
    v = np.unique(np.asarray(pd.to_numeric(pd.Series(values), errors="coerce").dropna(), float))
    if len(v) < 2 or v[0] <= 0:
        return False
    if v[-1] / v[0] < 10:
        return False
    if len(v) == 2:
        return True
    lin, log = np.diff(v), np.diff(np.log(v))
    return bool(np.std(log) / np.mean(log) < np.std(lin) / np.mean(lin))


def _require(df: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in df]
    if missing:
        raise ValueError(
            f"{what}: column(s) {', '.join(missing)} missing; available: {', '.join(map(str, df.columns))}"
        )


def _categorical_hue(df: pd.DataFrame, hue: str | None) -> tuple[pd.DataFrame, list[str] | None]:
    """Turn a numeric hue into ordered string categories (one legend entry per value)."""
    if hue is None:
        return df, None
    df = df.copy()
    values = sorted(df[hue].dropna().unique(), key=lambda x: (isinstance(x, str), x))
    names = [f"{x:g}" if isinstance(x, (int, float, np.number)) else str(x) for x in values]
    df[hue] = df[hue].map(dict(zip(values, names)))
    return df, names


def _legend(ax, hue: str | None, style: str | None = None, **kwargs) -> None:
    """Redraw the legend with readable names: seaborn's section headers (the column
    names of hue and style) become their labels; one section gets a title instead."""
    handles, names = ax.get_legend_handles_labels()
    if not handles:
        return
    headers = {c: label(c) for c in (hue, style) if c}
    names = [headers.get(n, n) for n in names]
    title = None
    if hue and not style and names and names[0] != headers[hue]:
        title = headers[hue]
    ax.legend(handles, names, title=title, **kwargs)


def _finite(df: pd.DataFrame, *cols: str) -> pd.DataFrame:
    d = df.replace([np.inf, -np.inf], np.nan)
    return d.dropna(subset=list(cols))


def _new_axes(figsize=(6.0, 4.2)):
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _scales(ax, x_values, y_values, logx: bool | None, logy: bool | None) -> None:
    if logx if logx is not None else is_geometric(x_values):
        ax.set_xscale("log")
        ticks = np.unique(pd.to_numeric(pd.Series(x_values), errors="coerce").dropna())
        if 1 < len(ticks) <= 8:  # label the swept values themselves
            ax.set_xticks(ticks, labels=[f"{t:g}" for t in ticks])
            ax.xaxis.set_minor_locator(NullLocator())
    y = pd.to_numeric(pd.Series(y_values), errors="coerce").dropna()
    if logy if logy is not None else (len(y) and (y > 0).all() and y.max() / y.min() > 100):
        ax.set_yscale("log")


def plot_vs_lr(
    summaries: pd.DataFrame,
    metric: str = "test_error",
    *,
    hue: str | None = "width",
    style: str | None = None,
    logx: bool | None = None,
    logy: bool | None = None,
) -> Figure:
    """Final ``metric`` against the learning rate h; one line per ``hue`` (and
    ``style``) value: the mean over the other runs (seeds) with a ±1 s.d. band."""
    _require(summaries, ["lr", metric] + [c for c in (hue, style) if c], "plot_vs_lr")
    d, order = _categorical_hue(_finite(summaries, "lr", metric), hue)
    d, style_order = _categorical_hue(d, style)
    fig, ax = _new_axes()
    sns.lineplot(
        data=d, x="lr", y=metric, hue=hue, hue_order=order, style=style, style_order=style_order,
        errorbar="sd", marker="o", palette="viridis" if hue else None, ax=ax,
    )  # fmt: skip
    _scales(ax, d["lr"], d[metric], logx, logy)
    ax.set_xlabel(label("lr"))
    ax.set_ylabel(label(metric))
    _legend(ax, hue, style)
    ax.set_title(f"{label(metric).split(' (')[0]} vs learning rate")
    return fig


def plot_vs_params(
    summaries: pd.DataFrame,
    metric: str = "test_error",
    *,
    hue: str | None = None,
    style: str | None = None,
    threshold: float | None = None,
    show_n: bool = True,
    logy: bool | None = None,
) -> Figure:
    """Final ``metric`` against the trainable-parameter count (log scale), with the
    interpolation threshold n·k as a dashed vertical line (Belkin et al. 2019) and,
    with ``show_n``, n as a dotted one. ``threshold`` overrides n·k (default: from
    the ``n_train`` and ``num_classes`` columns, which must be single-valued)."""
    _require(summaries, ["n_params", metric] + [c for c in (hue, style) if c], "plot_vs_params")
    d, order = _categorical_hue(_finite(summaries, "n_params", metric), hue)
    d, style_order = _categorical_hue(d, style)
    fig, ax = _new_axes()
    sns.lineplot(
        data=d, x="n_params", y=metric, hue=hue, hue_order=order, style=style,
        style_order=style_order, errorbar="sd", marker="o",
        palette="viridis" if hue else None, ax=ax,
    )  # fmt: skip
    ax.set_xscale("log")
    _scales(ax, d["n_params"], d[metric], False, logy)
    n = d["n_train"].dropna().unique() if "n_train" in d else []
    k = d["num_classes"].dropna().unique() if "num_classes" in d else []
    if threshold is None and len(n) == 1 and len(k) == 1:
        threshold = float(n[0]) * float(k[0])
    if threshold is not None:
        ax.axvline(threshold, ls="--", color="0.3", label=f"n·k = {threshold:,.0f}")
    if show_n and len(n) == 1:
        ax.axvline(float(n[0]), ls=":", color="0.5", label=f"n = {float(n[0]):,.0f}")
    _legend(ax, hue, style)
    ax.set_xlabel(label("n_params"))
    ax.set_ylabel(label(metric))
    ax.set_title(f"{label(metric).split(' (')[0]} vs model size")
    return fig


def plot_vs_step(
    histories: pd.DataFrame,
    metric: str = "lambda_max",
    *,
    hue: str | None = "lr",
    style: str | None = None,
    stability_lines: bool | None = None,
    logy: bool | None = None,
) -> Figure:
    """``metric`` against the step from a long-form history (mean over seeds ± s.d.).

    For ``lambda_max`` (or with ``stability_lines=True``) each learning rate h
    gets a dashed horizontal line at 2/h in its line's colour: the edge of
    stability of GD on a quadratic, where Cohen et al. (2021) find λ_max hovers.
    """
    _require(
        histories, ["step", "metric", "value"] + [c for c in (hue, style) if c], "plot_vs_step"
    )
    h = histories[histories["metric"] == metric]
    if h.empty:
        raise ValueError(
            f"metric {metric!r} is not in the history; logged: {', '.join(sorted(histories['metric'].unique()))}"
        )
    d, order = _categorical_hue(_finite(h, "value"), hue)
    d, style_order = _categorical_hue(d, style)
    fig, ax = _new_axes()
    palette = dict(zip(order, sns.color_palette("viridis", len(order)))) if hue else None
    sns.lineplot(
        data=d, x="step", y="value", hue=hue, hue_order=order, style=style,
        style_order=style_order, errorbar="sd", palette=palette, ax=ax,
    )  # fmt: skip
    if stability_lines if stability_lines is not None else metric == "lambda_max":
        if "lr" not in h:
            raise ValueError("2/h lines need an 'lr' column in the history")
        for lr in sorted(h["lr"].unique()):
            colour = palette[f"{lr:g}"] if hue == "lr" else "0.3"
            ax.axhline(2.0 / lr, ls="--", lw=1, color=colour, label=f"2/h = {2.0 / lr:g}")
    _scales(ax, d["step"], d["value"], False, logy)
    _legend(ax, hue, style, fontsize="small")
    ax.set_xlabel(label("step"))
    ax.set_ylabel(label(metric))
    ax.set_title(f"{label(metric).split(' (')[0]} during training")
    return fig


def plot_measure_vs_gap(
    summaries: pd.DataFrame,
    measure: str = "lambda_max",
    *,
    gap: str = "gen_gap",
    hue: str | None = "lr",
    logx: bool | None = None,
) -> Figure:
    """Scatter of a flatness/norm ``measure`` against the generalization gap
    (test error − train error), one point per run, coloured by ``hue``."""
    _require(summaries, [measure, gap] + ([hue] if hue else []), "plot_measure_vs_gap")
    d, order = _categorical_hue(_finite(summaries, measure, gap), hue)
    fig, ax = _new_axes()
    sns.scatterplot(
        data=d, x=measure, y=gap, hue=hue, hue_order=order,
        palette="viridis" if hue else None, s=45, ax=ax,
    )  # fmt: skip
    x = d[measure]
    if logx if logx is not None else (len(x) and (x > 0).all() and x.max() / x.min() > 30):
        ax.set_xscale("log")
    ax.set_xlabel(label(measure))
    ax.set_ylabel(label(gap))
    _legend(ax, hue)
    ax.set_title(f"{label(measure).split(' (')[0]} vs generalization gap")
    return fig


FIGURE_KINDS: dict[str, Callable[..., Figure]] = {
    "lr": plot_vs_lr,
    "params": plot_vs_params,
    "step": plot_vs_step,
    "gap": plot_measure_vs_gap,
}


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 150) -> Path:
    """Save to PNG, SVG or PDF (by suffix)."""
    path = Path(path)
    if path.suffix.lower() not in FIGURE_FORMATS:
        raise ValueError(
            f"unknown figure format {path.suffix!r}; use one of {', '.join(FIGURE_FORMATS)}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


_DEFAULT_HUE = {"lr": "width", "params": None, "step": "lr", "gap": "lr"}


def plot_sweep(
    sweep_dir: str | Path,
    kind: str = "lr",
    metric: str = "test_error",
    *,
    hue: str | None = "auto",
    style: str | None = None,
    where: dict[str, object] | None = None,
) -> Figure:
    """Load a sweep directory and draw figure ``kind`` (one of :data:`FIGURE_KINDS`) of
    ``metric`` (for ``"gap"``, the measure on the x axis). ``hue="auto"``: width for
    ``lr``, none for ``params``, lr for ``step`` and ``gap``. ``style``: a second
    column told apart by line style (``lr``, ``params``, ``step``). ``where``: keep
    only the runs whose config fields have these values, e.g. ``{"width": 256}``."""
    from .results import load_histories, load_summaries

    if kind not in FIGURE_KINDS:
        raise ValueError(f"unknown figure kind {kind!r}; choose one of {', '.join(FIGURE_KINDS)}")
    if hue == "auto":
        hue = _DEFAULT_HUE[kind]
    if kind == "step":
        table = load_histories(sweep_dir)
    else:
        table = load_summaries(sweep_dir)
    if table.empty:
        raise ValueError(f"no complete runs in {str(sweep_dir)!r}")
    for key, value in (where or {}).items():
        if key not in table:
            raise ValueError(f"cannot filter on {key!r}: not a column of the {kind} table")
        kept = table[table[key].astype(str) == str(value)]
        if kept.empty:
            values = ", ".join(map(str, sorted(table[key].astype(str).unique())))
            raise ValueError(f"no runs with {key} = {value}; values in the sweep: {values}")
        table = kept
    if style is not None:
        if kind == "gap":
            raise ValueError("style is not available for the gap scatter; use hue")
        if style not in table:
            raise ValueError(
                f"style column {style!r} missing; available: {', '.join(map(str, table.columns))}"
            )
    if hue is not None and hue not in table:
        raise ValueError(
            f"hue column {hue!r} missing; available: {', '.join(map(str, table.columns))}"
        )
    if kind != "step" and metric not in table:
        raise ValueError(
            f"metric {metric!r} not in the summaries; available: {', '.join(map(str, table.columns))}"
        )
    kwargs = {"style": style} if style is not None else {}
    return FIGURE_KINDS[kind](table, metric, hue=hue, **kwargs)
