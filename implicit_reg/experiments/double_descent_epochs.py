"""double-descent-epochs: epoch-wise double descent with label noise.

Nakkiran, Kaplun, Bansal, Yang, Barak & Sutskever, "Deep Double Descent",
2019 (arXiv 1912.02292), Sec. 6 and Fig. 9–10: with label noise, the test
error of a model large enough to fit the noisy training set falls, rises
while the network memorizes the noisy labels, and falls again ("epoch-wise
double descent"); a medium model, which only just fits the training set at
the end, shows the rise without the second descent (a classical U), and a
small model, which never fits it, improves monotonically.

What is run: ``double-descent-width``'s MNIST-1D recipe at n = 4,000 (MLP
40 → w → w → 10, cross-entropy, SGD lr 0.01, momentum 0.9, batch 100, 500
epochs, 15% label noise, 12,000 test samples) at three widths below, near
and above its interpolation threshold, 5 seeds each, evaluated every epoch,
and the widest on the clean labels (a control, 2 seeds). They are
``double-descent-width``'s runs at its densely evaluated widths, so the plan
borrows that experiment's run store (``Plan(borrows="double-descent-width")``).
The experiment is a :class:`~implicit_reg.experiments._spec.Spec` (``plan``, a
typed ``analyze``, ``claims``, ``figures``, ``extras``) run by ``run_spec``; a
store-only report with no run store re-judges from the stored
``trajectories.csv``.

Verdicts: on each seed's curve (smoothed over 5 evaluations) the rise is
test(bump) − test(early minimum) and the second descent test(bump) −
test(end), at epochs located on held-out seeds and tested on the others
(:func:`implicit_reg.stats.peak_test`): locating a bump on the same means it
is tested on makes noise look like a bump.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from implicit_reg.report.report import Claim, Report, attempt, mean_std, plot_band
from implicit_reg.stats import paired_test, peak_test, welch_test

from . import double_descent_width as ddw
from ._spec import Plan, Spec, run_spec
from ._sweeps import history_matrix, load_history, store_only, tidy_log_axes

NAME = "double-descent-epochs"
TITLE = "Epoch-wise double descent with 15% label noise: test error against training time for small, medium and large MLPs on MNIST-1D"
PAPER = "Nakkiran et al., *Deep Double Descent*, arXiv 1912.02292, Sec. 6, Fig. 9–10"
MARGIN = 0.01  # a rise or fall counts when it exceeds one point of test error
SMOOTH = 5  # evaluations in the running mean of the test-error curve


@dataclasses.dataclass(frozen=True)
class Config:
    widths: tuple[
        int, int, int
    ]  # below, at and above the threshold; in double-descent-width's list
    width_config: ddw.Config  # the double-descent-width config of the same scale
    seeds: int = 5  # per width, on the noisy labels
    eval_every: int = 40  # steps between evaluations (40 = one epoch at n = 4,000, batch 100)
    # the widest width again on the clean labels, a control without memorization
    control_seeds: int = 2


CONFIGS = {
    "smoke": Config(
        widths=(2, 8, 32), width_config=ddw.CONFIGS["smoke"], seeds=2, eval_every=1, control_seeds=1
    ),
    # n = 4,000 (the MNIST-1D paper's scale), evaluated every epoch, 5 seeds
    "small": Config(widths=(10, 47, 300), width_config=ddw.CONFIGS["small"], seeds=5),
    "full": Config(
        widths=(10, 47, 300), width_config=ddw.CONFIGS["full"], seeds=8, control_seeds=3
    ),
}
ROLES = ("below the threshold", "near the threshold", "above the threshold")


def check_widths(cfg: Config) -> None:
    allowed = cfg.width_config.mnist1d.widths
    bad = [w for w in cfg.widths if w not in allowed]
    if bad:
        raise ValueError(
            f"widths {bad} are not run by double-descent-width; choose from {list(allowed)}"
        )
    setting = cfg.width_config.mnist1d
    sparse = [w for w in cfg.widths if setting.eval_every_at(w) != cfg.eval_every]
    if sparse:
        raise ValueError(
            f"double-descent-width evaluates widths {sparse} every "
            f"{setting.eval_every_at(sparse[0])} steps, not every {cfg.eval_every}: its runs "
            "would not be shared (set dense_widths/dense_eval_every there)"
        )


def run_list(cfg: Config, control: bool = False) -> list:
    """The engine configs: each width × ``cfg.seeds`` seeds on the noisy labels, or
    (``control``) the widest width × ``cfg.control_seeds`` on the clean labels:
    double-descent-width's runs, whose test and train errors are evaluated every
    ``cfg.eval_every`` steps at these widths (:func:`check_widths`)."""
    wc = cfg.width_config
    if control:
        w = cfg.widths[-1]
        return [wc.mnist1d.run_config(w, s, 0.0) for s in range(cfg.control_seeds)]
    return [
        wc.mnist1d.run_config(w, s, wc.label_noise) for w in cfg.widths for s in range(cfg.seeds)
    ]


def smooth(test: np.ndarray) -> np.ndarray:
    """Each seed's curve (rows) smoothed by a centred running mean over ``SMOOTH`` evaluations."""
    return (
        pd.DataFrame(np.atleast_2d(test).T)
        .rolling(SMOOTH, center=True, min_periods=1)
        .mean()
        .to_numpy()
        .T
    )


@dataclasses.dataclass(frozen=True)
class CurveStats:
    """The shape of one width's test-error curves (seed means, smoothed): indices and
    epochs of the early minimum and of the bump, and ``rise``/``second_descent`` (see
    :func:`curve_stats`); ``width``, ``role`` and the final train error once known."""

    i_early: int
    i_peak: int
    epoch_min: float
    test_min: float
    epoch_peak: float
    test_peak: float
    test_final: float
    test_best: float
    rise: float
    second_descent: float
    seeds: int
    width: int = 0
    role: str = ""
    train_final: float = float("nan")


def curve_stats(
    epochs: np.ndarray,
    test: np.ndarray,
    at: tuple[int, int] | None = None,
    rise_only: bool = False,
) -> CurveStats:
    """Shape of the test-error curves (seeds × evaluations): early minimum, bump, end.

    Each seed's curve is smoothed by a centred running mean over ``SMOOTH``
    evaluations, so that evaluation noise does not count as a rise. On the seed
    mean m, the bump is the evaluation i that maximizes min(m_i − min_{j≤i} m_j,
    m_i − m_end) (the highest point with a fall on both sides), the early minimum
    the lowest point before it (``rise_only``: the lowest point of all, and the highest
    after it, for a curve that need not fall again); ``at=(i_early, i_peak)`` fixes them instead (to
    measure a second set of runs at the same epochs). ``rise`` = s(peak) −
    s(early) and ``second_descent`` = s(peak) − s(end), seed means. This is a
    description of the curves; the claims are tested with locations found on
    held-out seeds (:func:`implicit_reg.stats.peak_test`).
    """
    sm = smooth(test)
    m = sm.mean(0)
    if at is None and rise_only:  # overfitting: the lowest point, then the highest after it
        i_early = int(np.argmin(m))
        i_peak = i_early + int(np.argmax(m[i_early:]))
    elif at is None:
        run_min = np.minimum.accumulate(m)
        score = np.minimum(m - run_min, m - m[-1])
        i_peak = int(np.argmax(score))
        i_early = int(np.argmin(m[: i_peak + 1]))
    else:
        i_early, i_peak = at
    rise = sm[:, i_peak] - sm[:, i_early]
    fall = sm[:, i_peak] - sm[:, -1]
    return CurveStats(
        i_early=i_early,
        i_peak=i_peak,
        epoch_min=float(epochs[i_early]),
        test_min=float(m[i_early]),
        epoch_peak=float(epochs[i_peak]),
        test_peak=float(m[i_peak]),
        test_final=float(m[-1]),
        test_best=float(m.min()),
        rise=float(rise.mean()),
        second_descent=float(fall.mean()),
        seeds=int(sm.shape[0]),
    )


def epochs_figure(
    history: pd.DataFrame, cfg: Config, per_epoch: float, control: pd.DataFrame | None = None
) -> Figure:
    fig = Figure(figsize=(13, 4.8), layout="constrained")
    ax_t, ax_r = fig.subplots(1, 2)
    setting = cfg.width_config.mnist1d
    for i, (w, role) in enumerate(zip(cfg.widths, ROLES)):
        h = history[history.width == w]
        n_params = setting.params(w, ddw.INPUT_DIM[setting.dataset])
        lab = f"w = {w} (N = {n_params:,}), {role}"
        steps, test = history_matrix(h, "test_error")
        keep = steps > 0
        plot_band(ax_t, steps[keep] / per_epoch, test[:, keep], label=lab, color=f"C{i}")
        steps, train = history_matrix(h, "train_error")
        keep = steps > 0
        plot_band(ax_r, steps[keep] / per_epoch, train[:, keep], label=lab, color=f"C{i}")
    # the bump of the widest model is a point or two on a scale of fifty: zoom on it
    h = history[history.width == cfg.widths[-1]]
    steps, test = history_matrix(h, "test_error")
    keep = steps / per_epoch >= 25  # past the early minimum
    if keep.sum() >= 3:
        ins = ax_t.inset_axes([0.45, 0.56, 0.52, 0.4])
        plot_band(ins, steps[keep] / per_epoch, test[:, keep], label="", color=f"C{len(ROLES) - 1}")
        ins.set_xscale("log")
        ins.set_xticks([30, 100, 300], ["30", "100", "300"], minor=False)
        ins.set_xticks([], minor=True)
        ins.set_title(f"w = {cfg.widths[-1]} from epoch 25 (zoom)", fontsize=7)
        ins.tick_params(labelsize=6)
    if control is not None:
        for ax, metric in ((ax_t, "test_error"), (ax_r, "train_error")):
            steps, v = history_matrix(control, metric)
            keep = steps > 0
            plot_band(ax, steps[keep] / per_epoch, v[:, keep], color="0.3", ls="--",
                      label=f"w = {cfg.widths[-1]}, clean labels (control)")  # fmt: skip
    ax_r.axhline(
        cfg.width_config.label_noise, ls=":", color="0.4", label="fraction of flipped labels"
    )
    for ax in (ax_t, ax_r):
        ax.set_xscale("log")
        ax.set_xlabel("epoch (passes over the training set)")
        ax.legend(fontsize=8, loc="lower left" if ax is ax_t else "best")
    ax_t.set_ylabel("test error (fraction misclassified)")
    ax_t.set_title("test error during training")
    ax_r.set_ylabel("train error on the noisy labels (fraction)")
    ax_r.set_title("train error during training (memorizing the noisy labels)")
    fig.suptitle(
        f"MNIST-1D, n = {setting.n_train:,}, {100 * cfg.width_config.label_noise:g}% label noise: "
        f"MLP 40→w→w→10, SGD lr {setting.lr:g}, momentum {setting.momentum:g}, batch "
        f"{setting.batch_size}; mean ± std over "
        + ", ".join(f"{history[history.width == w].seed.nunique()}" for w in cfg.widths)
        + " seeds (by width)"
    )
    tidy_log_axes(fig)
    return fig


def held_out(sm: np.ndarray) -> tuple[int, np.ndarray]:
    """How many seeds locate an epoch (the first ``max(1, S // 4)``, as
    :func:`implicit_reg.stats.peak_test` does) and the rows of the others, which test it."""
    n_loc = max(1, len(sm) // 4)
    return n_loc, sm[n_loc:]


def plan(cfg: Config) -> Plan:
    """Each width × seed on the noisy labels and the widest on the clean ones, every
    ``eval_every`` steps: double-descent-width's runs at its dense widths, so they are
    borrowed from (and trained into) that experiment's store."""
    check_widths(cfg)
    control = run_list(cfg, control=True) if cfg.control_seeds else []
    return Plan(tuple(run_list(cfg) + control), borrows=ddw.NAME)


def stored_trajectories(out: Path) -> pd.DataFrame | None:
    """A store-only report with no run store: the per-seed histories an earlier report
    wrote into ``out/trajectories.csv`` (noisy labels only), else None."""
    path = Path(out) / "trajectories.csv"
    if not (store_only() and path.is_file()):
        return None
    history = pd.read_csv(path)
    history.attrs["stored"] = True
    history.attrs["note"] = (
        "Re-judged from the per-seed histories stored in `trajectories.csv` (no training); "
        "the clean-label control's histories were not stored, so its claim is not re-tested."
    )
    return history


@dataclasses.dataclass(frozen=True)
class Analysis:
    """``history``: the noisy runs' test and train error histories (long form: width,
    seed, step, metric, value); ``clean``: the control's, None without it; ``final``:
    each noisy run's final test error (width, seed, test_error); ``stats``: the curve
    shape per width (below, near, above the threshold) and, after them, the control's at
    the epochs located on the noisy runs; ``peak``: the peak test of the widest model's
    smoothed curves (:func:`implicit_reg.stats.peak_test`, or Untested); ``stored``:
    re-judged from stored histories."""

    history: pd.DataFrame
    clean: pd.DataFrame | None
    final: pd.DataFrame
    per_epoch: int
    stats: tuple[CurveStats, ...]
    peak: Any
    stored: bool


def curves(history: pd.DataFrame, width: int, metric: str = "test_error"):
    """``(steps, values)`` of one width: seeds × the evaluations every seed logged."""
    return history_matrix(history[history.width == width], metric)


def analyze(rows: pd.DataFrame, cfg: Config) -> Analysis:
    """The noisy and clean histories (from the runs, or the stored trajectories), the
    curve shape per width and the widest model's peak test."""
    per_epoch = -(-cfg.width_config.mnist1d.n_train // cfg.width_config.mnist1d.batch_size)
    stored = bool(rows.attrs.get("stored"))
    clean_history = None
    if stored:
        history = rows
        last = history[history.metric == "test_error"].sort_values("step")
        final = last.groupby(["width", "seed"]).value.last().rename("test_error").reset_index()
    else:
        configs = plan(cfg).runs
        noise_of = {c.config_hash(): c.label_noise for c in configs}
        rows = rows.assign(label_noise=rows.config_hash.map(noise_of))
        noisy, clean = rows[rows.label_noise > 0], rows[rows.label_noise == 0]
        history = load_history(noisy, ["width", "seed"])
        final = noisy[["width", "seed", "test_error"]]
        if len(clean):
            clean_history = load_history(clean, ["width", "seed"])
    stats = []
    for w, role in zip(cfg.widths, ROLES):
        steps, test = curves(history, w)
        s = curve_stats(steps / per_epoch, test, rise_only=role == ROLES[1])
        _, train = curves(history, w, "train_error")
        stats.append(
            dataclasses.replace(s, width=w, role=role, train_final=float(train.mean(0)[-1]))
        )
    big = cfg.widths[-1]
    steps_b, test_b = curves(history, big)
    peak = attempt(peak_test, smooth(test_b))
    if clean_history is not None and hasattr(peak, "left"):
        steps_c, test_c = history_matrix(clean_history, "test_error")
        if np.array_equal(steps_c, steps_b):  # the control at the epochs located on noisy seeds
            c = curve_stats(steps_c / per_epoch, test_c, at=(peak.left, peak.index))
            stats.append(dataclasses.replace(c, width=big, role="control: clean labels"))
    return Analysis(history, clean_history, final, per_epoch, tuple(stats), peak, stored)


def claims(a: Analysis, cfg: Config) -> list[Claim]:
    """The widest model's double descent, the medium model's overfitting, the small model's
    monotone improvement, and the control without label noise."""
    small, mid, big = a.stats[:3]
    peak, per_epoch = a.peak, a.per_epoch
    steps_b, test_b = curves(a.history, big.width)
    sm_big = smooth(test_b)
    out = [
        Claim(
            f"a large model (w = {big.width}) shows epoch-wise double descent: test error "
            "falls, rises while it memorizes the noise, then falls again",
            "Nakkiran et al. 2019, Fig. 9–10",
            (peak,),
            context=f"seed means (descriptive): {100 * big.test_min:.1f}% at epoch "
            f"{big.epoch_min:.3g}, {100 * big.test_peak:.1f}% at epoch {big.epoch_peak:.3g}, "
            f"{100 * big.test_final:.1f}% at the end ({big.seeds} seeds); tested on curves "
            f"smoothed over {SMOOTH} evaluations (effects in fractions of the test set), the "
            "epochs located on held-out seeds",
            headline=True,
        )
    ]
    # the medium model: its early minimum located on held-out seeds, the rise from there to the
    # end of training tested on the others
    steps_m, test_m = curves(a.history, mid.width)
    sm_mid = smooth(test_m)
    n_loc, rest = held_out(sm_mid)
    i_min = int(np.argmin(sm_mid[:n_loc].mean(0)))
    out.append(
        Claim(
            f"a medium model (w = {mid.width}) overfits: its test error at the end is above "
            "its early minimum",
            "Nakkiran et al. 2019, Fig. 9",
            (attempt(paired_test, rest[:, -1], rest[:, i_min]),),
            context=f"seed means: {100 * mid.test_min:.1f}% at epoch {mid.epoch_min:.3g} → "
            f"{100 * mid.test_peak:.1f}% at epoch {mid.epoch_peak:.3g} → "
            f"{100 * mid.test_final:.1f}% at the end; the early minimum (epoch "
            f"{steps_m[i_min] / per_epoch:.3g}) located on {n_loc} held-out seed(s)",
        )
    )
    sm_small = smooth(curves(a.history, small.width)[1])
    n_loc, rest = held_out(sm_small)
    m_loc = sm_small[:n_loc].mean(0)
    i_top = int(np.argmax(m_loc - np.minimum.accumulate(m_loc)))
    i_low = int(np.argmin(m_loc[: i_top + 1]))
    bump = rest[:, i_top] - rest[:, i_low]
    out.append(
        Claim(
            f"a small model (w = {small.width}) that cannot fit the noise improves (nearly) "
            f"monotonically: its largest bump is below {100 * MARGIN:g} point",
            "Nakkiran et al. 2019, Fig. 9",
            (attempt(paired_test, np.full_like(bump, MARGIN), bump),),
            context=f"final train error {100 * small.train_final:.1f}%; the bump (largest rise "
            f"above the running minimum) located on {n_loc} held-out seed(s), measured on the "
            "others",
        )
    )
    claim_clean = (
        f"the bump comes from the label noise: on clean labels w = {big.width} rises less "
        "between the same epochs"
    )
    paper_clean = "Nakkiran et al. 2019, Sec. 6 (epoch-wise double descent with label noise)"
    control = a.stats[3] if len(a.stats) > 3 else None
    if control is not None:
        i0, i1 = control.i_early, control.i_peak  # located on held-out noisy seeds
        sc, tested = smooth(curves(a.clean, big.width)[1]), sm_big[list(peak.test_seeds)]
        out.append(
            Claim(
                claim_clean,
                paper_clean,
                (attempt(welch_test, tested[:, i1] - tested[:, i0], sc[:, i1] - sc[:, i0]),),
                context=f"rise from epoch {steps_b[i0] / per_epoch:.3g} to "
                f"{steps_b[i1] / per_epoch:.3g} (located on held-out noisy seeds): noisy minus "
                f"clean ({control.seeds} clean seeds), unpaired",
            )  # fmt: skip
        )
    elif cfg.control_seeds and (a.clean is None or not hasattr(peak, "left")):
        why = []
        if a.clean is None:
            why.append(
                "the clean-label runs' histories were not committed (re-judged from the "
                "stored noisy trajectories)"
                if a.stored
                else "the clean-label runs are not in the store"
            )
        if not hasattr(peak, "left"):
            why.append("no peak location to compare at")
        out.append(Claim(claim_clean, paper_clean, untested="; ".join(why)))
    return out


def figures(a: Analysis, cfg: Config) -> list[tuple[Figure, str, str]]:
    return [
        (
            epochs_figure(a.history, cfg, a.per_epoch, a.clean),
            "double_descent_epochs.png",
            "Test error (left) and train error on the noisy labels (right) against the epoch, "
            "log scale, for three widths; mean ± std over seeds.",
        )
    ]


def extras(report: Report, a: Analysis, cfg: Config) -> None:
    """The curve-shape table, ``curve_stats.csv`` and the histories (``trajectories.csv``)."""
    report.add_table(
        [
            {
                "width": s.width,
                "role": s.role,
                "early minimum": f"{100 * s.test_min:.1f}% at epoch {s.epoch_min:.3g}",
                "later maximum": f"{100 * s.test_peak:.1f}% at epoch {s.epoch_peak:.3g}",
                "final test error": f"{100 * s.test_final:.1f}%",
                "final train error": f"{100 * s.train_final:.1f}%",
            }
            for s in a.stats
        ],
        heading="Shape of the test-error curves",
        caption=(
            f"Seed means ({', '.join(str(s.seeds) for s in a.stats)} seeds; planned "
            f"{cfg.seeds} on the noisy labels and {cfg.control_seeds} on the clean ones), "
            f"evaluated every {cfg.eval_every} steps "
            f"({cfg.eval_every / a.per_epoch:g} epochs), smoothed by a running mean over "
            f"{SMOOTH} evaluations. The runs live in `double-descent-width`'s store. Final test "
            "error per width (mean ± std over seeds): "
            + ", ".join(
                f"w = {w}: {mean_std(a.final[a.final.width == w].test_error.to_numpy())}"
                for w in cfg.widths
            )
            + "."
        ),
    )
    report.add_data(pd.DataFrame([dataclasses.asdict(s) for s in a.stats]), "curve_stats.csv")
    report.add_data(
        a.history[a.history.metric.isin(["test_error", "train_error"])][
            ["width", "seed", "step", "metric", "value"]
        ],
        "trajectories.csv",
    )


SPEC = Spec(
    NAME, TITLE, PAPER, CONFIGS, plan, analyze, claims, figures, extras,
    stored=stored_trajectories,
)  # fmt: skip


def run(scale: str, out: Path) -> Report:
    """Run double-descent-epochs at ``scale`` and write its report into ``out``."""
    return run_spec(SPEC, scale, out)
