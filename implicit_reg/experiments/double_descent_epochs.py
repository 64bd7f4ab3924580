"""double-descent-epochs: epoch-wise double descent with label noise.

Nakkiran, Kaplun, Bansal, Yang, Barak & Sutskever, "Deep Double Descent",
2019 (arXiv 1912.02292), Sec. 6 and Fig. 9–10: with label noise, the test
error of a model large enough to fit the noisy training set falls, rises
while the network memorizes the noisy labels, and falls again ("epoch-wise
double descent"); a medium model, which only just fits the training set at
the end, shows the rise without the second descent (a classical U), and a
small model, which never fits it, improves monotonically.

What is run: nothing new. The runs are those of ``double-descent-width``'s
MNIST-1D setting (MLP 40 → w → w → 10, cross-entropy, SGD lr 0.01, momentum
0.9, batch 100, 15% label noise) at three widths below, at and above its
interpolation threshold; their histories hold the train and test error
every ``eval_every`` steps. They are read from the ``double-descent-width``
sweep directory (``OUT/../double-descent-width/sweep``) and trained there if
missing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from implicit_reg.report.report import Report, mean_std, plot_band, select_scale

from . import double_descent_width as ddw
from ._sweeps import (
    history_matrix,
    load_history,
    run_configs,
    sweep_dir,
    tidy_log_axes,
    workers_for,
)

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


def run_list(cfg: Config, control: bool = False) -> list:
    """The engine configs: each width × ``cfg.seeds`` seeds on the noisy labels, or
    (``control``) the widest width × ``cfg.control_seeds`` on the clean labels; all
    evaluated every ``cfg.eval_every`` steps."""
    wc = cfg.width_config
    if control:
        w = cfg.widths[-1]
        return [
            wc.mnist1d.run_config(w, s, 0.0, eval_every=cfg.eval_every)
            for s in range(cfg.control_seeds)
        ]
    return [
        wc.mnist1d.run_config(w, s, wc.label_noise, eval_every=cfg.eval_every)
        for w in cfg.widths
        for s in range(cfg.seeds)
    ]


def curve_stats(epochs: np.ndarray, test: np.ndarray) -> dict:
    """Shape of the mean test-error curve: first minimum, the maximum after it, the end.

    The seed mean is smoothed by a centred running mean over ``SMOOTH``
    evaluations first, so that evaluation noise does not count as a rise.
    """
    m = pd.Series(test.mean(0)).rolling(SMOOTH, center=True, min_periods=1).mean().to_numpy()
    i_min = int(np.argmin(m))
    # the early minimum: the lowest point before the curve's highest point after it
    i_peak = i_min + int(np.argmax(m[i_min:]))
    i_early = int(np.argmin(m[: i_peak + 1]))
    return {
        "epoch_min": float(epochs[i_early]),
        "test_min": float(m[i_early]),
        "epoch_peak": float(epochs[i_peak]),
        "test_peak": float(m[i_peak]),
        "test_final": float(m[-1]),
        "test_best": float(m.min()),
        "rise": float(m[i_peak] - m[i_early]),
        "second_descent": float(m[i_peak] - m[-1]),
    }


def epochs_figure(history: pd.DataFrame, cfg: Config, per_epoch: float) -> Figure:
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
    ax_r.axhline(
        cfg.width_config.label_noise, ls=":", color="0.4", label="fraction of flipped labels"
    )
    for ax in (ax_t, ax_r):
        ax.set_xscale("log")
        ax.set_xlabel("epoch (passes over the training set)")
        ax.legend(fontsize=8)
    ax_t.set_ylabel("test error (fraction misclassified)")
    ax_t.set_title("test error during training")
    ax_r.set_ylabel("train error on the noisy labels (fraction)")
    ax_r.set_title("train error during training (memorizing the noisy labels)")
    fig.suptitle(
        f"MNIST-1D, n = {setting.n_train:,}, {100 * cfg.width_config.label_noise:g}% label noise: "
        f"MLP 40→w→w→10, SGD lr {setting.lr:g}, momentum {setting.momentum:g}, batch "
        f"{setting.batch_size}; mean ± std over {cfg.width_config.seeds} seed(s)"
    )
    tidy_log_axes(fig)
    return fig


def run(scale: str, out: Path) -> Report:
    """Run double-descent-epochs at ``scale`` and write its report into ``out``."""
    cfg = select_scale(CONFIGS, scale)
    check_widths(cfg)
    report = Report(NAME, TITLE, scale, out, cfg, PAPER)
    wc = cfg.width_config
    setting = wc.mnist1d
    configs = run_list(cfg)
    rows = run_configs(configs, sweep_dir(Path(out), ddw.NAME, NAME), workers=workers_for(scale))
    note = rows.attrs["note"]
    history = load_history(rows, ["width", "seed"])
    per_epoch = -(-setting.n_train // setting.batch_size)
    stats = []
    for w, role in zip(cfg.widths, ROLES):
        steps, test = history_matrix(history[history.width == w], "test_error")
        s = curve_stats(steps / per_epoch, test)
        _, train = history_matrix(history[history.width == w], "train_error")
        s.update(width=w, role=role, train_final=float(train.mean(0)[-1]))
        stats.append(s)
    big, mid, small = stats[2], stats[1], stats[0]
    ok = bool(big["rise"] > MARGIN and big["second_descent"] > MARGIN)
    report.add_claim(
        f"a large model (w = {big['width']}) shows epoch-wise double descent: test error falls, "
        "rises while it memorizes the noise, then falls again",
        "Nakkiran et al. 2019, Fig. 9–10",
        f"test error {100 * big['test_min']:.1f}% at epoch {big['epoch_min']:.3g}, "
        f"{100 * big['test_peak']:.1f}% at epoch {big['epoch_peak']:.3g}, "
        f"{100 * big['test_final']:.1f}% at the end",
        ok,
        f"rise {100 * big['rise']:.1f} points, second descent {100 * big['second_descent']:.1f} points"
        + ("" if ok else f" (needs both > {100 * MARGIN:g})"),
    )
    u = bool(mid["rise"] > MARGIN)
    report.add_claim(
        f"a medium model (w = {mid['width']}) overfits: its test error rises after an early minimum",
        "Nakkiran et al. 2019, Fig. 9",
        f"{100 * mid['test_min']:.1f}% at epoch {mid['epoch_min']:.3g} → "
        f"{100 * mid['test_peak']:.1f}% at epoch {mid['epoch_peak']:.3g} → "
        f"{100 * mid['test_final']:.1f}% at the end",
        u,
        f"rise {100 * mid['rise']:.1f} points",
    )
    mono = bool(small["rise"] <= MARGIN)
    report.add_claim(
        f"a small model (w = {small['width']}) that cannot fit the noise improves (nearly) monotonically",
        "Nakkiran et al. 2019, Fig. 9",
        f"final train error {100 * small['train_final']:.1f}%; largest rise of test error after "
        f"its minimum {100 * small['rise']:.1f} points",
        mono,
        "no rise above one point" if mono else "its test error rises too",
    )
    report.add_figure(
        epochs_figure(history, cfg, per_epoch),
        "double_descent_epochs.png",
        "Test error (left) and train error on the noisy labels (right) against the epoch, "
        "log scale, for three widths; mean ± std over seeds.",
    )
    report.add_table(
        [
            {
                "width": s["width"],
                "role": s["role"],
                "early minimum": f"{100 * s['test_min']:.1f}% at epoch {s['epoch_min']:.3g}",
                "later maximum": f"{100 * s['test_peak']:.1f}% at epoch {s['epoch_peak']:.3g}",
                "final test error": f"{100 * s['test_final']:.1f}%",
                "final train error": f"{100 * s['train_final']:.1f}%",
            }
            for s in stats
        ],
        heading="Shape of the test-error curves",
        caption=(
            f"Seed means ({wc.seeds} seed(s)), evaluated every {setting.eval_every} steps "
            f"({setting.eval_every / per_epoch:g} epochs), smoothed by a running mean over "
            f"{SMOOTH} evaluations. Runs shared with "
            f"`double-descent-width` (same configs, same store). Seeds: "
            + ", ".join(
                f"w = {w}: {mean_std(rows[rows.width == w].test_error.to_numpy())}"
                for w in cfg.widths
            )
            + " final test error."
        ),
    )
    report.add_data(pd.DataFrame(stats), "curve_stats.csv")
    report.add_data(
        history[history.metric.isin(["test_error", "train_error"])][
            ["width", "seed", "step", "metric", "value"]
        ],
        "trajectories.csv",
    )
    report.add_text(note, heading="Compute")
    return report.write()
