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
and the widest on the clean labels (a control, 2 seeds). The runs live in
the ``double-descent-width`` sweep directory
(``OUT/../double-descent-width/sweep``).

Verdicts: on each seed's curve (smoothed over 5 evaluations) the rise is
test(bump) − test(early minimum) and the second descent test(bump) −
test(end), at the epochs found on the seed mean; each is judged by its mean
and SE over seeds (beyond 2 SE: reproduced).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from implicit_reg.report.report import (
    Report,
    effect_text,
    judge,
    mean_std,
    plot_band,
    seed_effect,
    select_scale,
)

from . import double_descent_width as ddw
from ._sweeps import (
    history_matrix,
    load_history,
    run_configs,
    sweep_dir,
    tidy_log_axes,
    verdict_of,
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


def smooth(test: np.ndarray) -> np.ndarray:
    """Each seed's curve (rows) smoothed by a centred running mean over ``SMOOTH`` evaluations."""
    return (
        pd.DataFrame(np.atleast_2d(test).T)
        .rolling(SMOOTH, center=True, min_periods=1)
        .mean()
        .to_numpy()
        .T
    )


def curve_stats(
    epochs: np.ndarray,
    test: np.ndarray,
    at: tuple[int, int] | None = None,
    rise_only: bool = False,
) -> dict:
    """Shape of the test-error curves (seeds × evaluations): early minimum, bump, end.

    Each seed's curve is smoothed by a centred running mean over ``SMOOTH``
    evaluations, so that evaluation noise does not count as a rise. On the seed
    mean m, the bump is the evaluation i that maximizes min(m_i − min_{j≤i} m_j,
    m_i − m_end) (the highest point with a fall on both sides), the early minimum
    the lowest point before it (``rise_only``: the lowest point of all, and the highest
    after it, for a curve that need not fall again); ``at=(i_early, i_peak)`` fixes them instead (to
    measure a second set of runs at the same epochs). ``rise`` = s(peak) −
    s(early) and ``second_descent`` = s(peak) − s(end) are per-seed effects with
    their SE over seeds (``seed_effect``), as (effect, SE).
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
    rise = seed_effect(sm[:, i_peak] - sm[:, i_early])
    fall = seed_effect(sm[:, i_peak] - sm[:, -1])
    return {
        "i_early": i_early,
        "i_peak": i_peak,
        "epoch_min": float(epochs[i_early]),
        "test_min": float(m[i_early]),
        "epoch_peak": float(epochs[i_peak]),
        "test_peak": float(m[i_peak]),
        "test_final": float(m[-1]),
        "test_best": float(m.min()),
        "rise": rise[0],
        "rise_se": rise[1],
        "second_descent": fall[0],
        "second_descent_se": fall[1],
        "seeds": int(sm.shape[0]),
    }


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
        ax.legend(fontsize=8)
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


def _pts(effect: float, se: float) -> str:
    return effect_text(100 * effect, 100 * se) + " points"


def run(scale: str, out: Path) -> Report:
    """Run double-descent-epochs at ``scale`` and write its report into ``out``."""
    cfg = select_scale(CONFIGS, scale)
    check_widths(cfg)
    report = Report(NAME, TITLE, scale, out, cfg, PAPER)
    wc = cfg.width_config
    setting = wc.mnist1d
    configs = run_list(cfg)
    control = run_list(cfg, control=True) if cfg.control_seeds else []
    directory = sweep_dir(Path(out), ddw.NAME, NAME)
    rows = run_configs(configs + control, directory, workers=workers_for(scale))
    note = rows.attrs["note"]
    noise_of = {c.config_hash(): c.label_noise for c in configs + control}
    rows["label_noise"] = rows.config_hash.map(noise_of)
    noisy, clean = rows[rows.label_noise > 0], rows[rows.label_noise == 0]
    history = load_history(noisy, ["width", "seed"])
    per_epoch = -(-setting.n_train // setting.batch_size)
    stats, curves = [], {}
    for w, role in zip(cfg.widths, ROLES):
        steps, test = history_matrix(history[history.width == w], "test_error")
        curves[w] = (steps, test)
        s = curve_stats(steps / per_epoch, test, rise_only=role == ROLES[1])
        _, train = history_matrix(history[history.width == w], "train_error")
        s.update(width=w, role=role, train_final=float(train.mean(0)[-1]))
        stats.append(s)
    big, mid, small = stats[2], stats[1], stats[0]
    ok = verdict_of(judge(big["rise"], big["rise_se"]),
                    judge(big["second_descent"], big["second_descent_se"]))  # fmt: skip
    report.add_claim(
        f"a large model (w = {big['width']}) shows epoch-wise double descent: test error falls, "
        "rises while it memorizes the noise, then falls again",
        "Nakkiran et al. 2019, Fig. 9–10",
        f"test error {100 * big['test_min']:.1f}% at epoch {big['epoch_min']:.3g}, "
        f"{100 * big['test_peak']:.1f}% at epoch {big['epoch_peak']:.3g}, "
        f"{100 * big['test_final']:.1f}% at the end ({big['seeds']} seeds); rise "
        f"{_pts(big['rise'], big['rise_se'])}, second descent "
        f"{_pts(big['second_descent'], big['second_descent_se'])}",
        ok,
        "rise and second descent both beyond 2 SE" if ok
        else "rise or second descent inside 2 SE" if ok is None else "reversed beyond 2 SE",
    )  # fmt: skip
    u = judge(mid["rise"], mid["rise_se"])
    report.add_claim(
        f"a medium model (w = {mid['width']}) overfits: its test error rises after an early minimum",
        "Nakkiran et al. 2019, Fig. 9",
        f"{100 * mid['test_min']:.1f}% at epoch {mid['epoch_min']:.3g} → "
        f"{100 * mid['test_peak']:.1f}% at epoch {mid['epoch_peak']:.3g} → "
        f"{100 * mid['test_final']:.1f}% at the end; rise {_pts(mid['rise'], mid['rise_se'])}",
        u,
    )
    mono = judge(MARGIN - small["rise"], small["rise_se"])
    report.add_claim(
        f"a small model (w = {small['width']}) that cannot fit the noise improves (nearly) "
        "monotonically",
        "Nakkiran et al. 2019, Fig. 9",
        f"final train error {100 * small['train_final']:.1f}%; largest bump of its test error "
        f"{_pts(small['rise'], small['rise_se'])}",
        mono,
        f"the bump is below {100 * MARGIN:g} point beyond 2 SE" if mono
        else f"a bump above {100 * MARGIN:g} point" if mono is False else "not decided",
    )  # fmt: skip
    if len(clean):
        ch = load_history(clean, ["width", "seed"])
        steps_c, test_c = history_matrix(ch, "test_error")
        steps_b, test_b = curves[big["width"]]
        if np.array_equal(steps_c, steps_b):
            i0, i1 = big["i_early"], big["i_peak"]
            c = curve_stats(steps_c / per_epoch, test_c, at=(i0, i1))
            sb, sc = smooth(test_b), smooth(test_c)
            eff = seed_effect(sb[:, i1] - sb[:, i0], sc[:, i1] - sc[:, i0])
            report.add_claim(
                f"the bump comes from the label noise: on clean labels w = {big['width']} rises "
                "less between the same epochs",
                "Nakkiran et al. 2019, Sec. 6 (epoch-wise double descent with label noise)",
                f"rise from epoch {big['epoch_min']:.3g} to {big['epoch_peak']:.3g}: "
                f"{100 * big['rise']:.1f} points with noise, {100 * c['rise']:.1f} points clean "
                f"({c['seeds']} seeds); difference {_pts(*eff)}",
                judge(*eff),
            )
            stats.append({**c, "width": big["width"], "role": "control: clean labels",
                          "train_final": float("nan")})  # fmt: skip
    report.add_figure(
        epochs_figure(
            history, cfg, per_epoch, load_history(clean, ["width", "seed"]) if len(clean) else None
        ),
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
            f"Seed means ({', '.join(str(s['seeds']) for s in stats)} seeds; planned "
            f"{cfg.seeds} on the noisy labels and {cfg.control_seeds} on the clean ones), "
            f"evaluated every {cfg.eval_every} steps "
            f"({cfg.eval_every / per_epoch:g} epochs), smoothed by a running mean over "
            f"{SMOOTH} evaluations. The runs live in `double-descent-width`'s store. Final test "
            "error per width (mean ± std over seeds): "
            + ", ".join(
                f"w = {w}: {mean_std(noisy[noisy.width == w].test_error.to_numpy())}"
                for w in cfg.widths
            )
            + "."
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
