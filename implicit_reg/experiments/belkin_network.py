"""belkin-network: the network peak at N ≈ n·k with Belkin et al.'s protocol, with and without weight reuse.

Belkin, Hsu, Ma & Mandal, "Reconciling modern machine-learning practice and
the classical bias–variance trade-off", PNAS 2019, Fig. 3 and SI §"Neural
networks": a one-hidden-layer ReLU network 784 → H → 10 on n MNIST digits,
trained with the squared loss on one-hot targets summed over the k = 10
outputs,

    L(θ) = (1/n) Σ_i ‖f_θ(x_i) − e_{y_i}‖²          ("mse_sum"),

by SGD with momentum 0.95 and step size 0.01 for thousands of epochs. Its
test loss and zero-one test error peak where the parameter count
N = (784 + 1)·H + (H + 1)·10 reaches n·k (the model can fit the n·k target
numbers), and fall again beyond. Below the threshold Belkin et al. decay the
step size and **reuse weights**: each network starts from the trained
weights of the next smaller one (the new units initialized afresh); above it
every network starts from a fresh initialization.

Weight reuse changes the networks below the threshold only, so a peak that
appears where reuse switches off could be an artifact of the switch (the
first fresh network after a chain of warm-started ones). We therefore run
the sweep twice, with and without reuse (identical configs above the
threshold are one run), and judge the peak in both.

Initialization (``model_options``): the readout starts at zero and every
hidden bias at +0.1 (:class:`implicit_reg.workloads.models.MLP`'s
``zero_readout`` and ``hidden_bias``). With MNIST pixels ≥ 0, a positive bias
keeps ReLU units of the smallest networks (H = 2, 4) from starting dead; the
zero readout makes a reused network start exactly as the trained smaller
one ended (a new unit's output weights are 0), so reuse is a continuation,
not a perturbation, and the fresh networks start at f ≡ 0, as the
random-features readout does.

Every run is one engine run (``implicit_reg.engine.train.run``) through the
resumable sweep store; the reuse chain passes each run's ``checkpoint.pt``
as the next run's ``init_from``.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from implicit_reg.engine.checkpoint import read_model_state
from implicit_reg.engine.config import RunConfig
from implicit_reg.engine.store import CHECKPOINT_FILE
from implicit_reg.report.report import (
    Claim,
    Report,
    Untested,
    attempt,
    fmt,
    mean_std,
    select_scale,
)
from implicit_reg.stats import paired_test

from ._spec import Plan, Spec, run_spec
from ._sweeps import (
    Peak,
    highest_bump,
    peak_of,
    run_configs,
    seed_band,
    sweep_dir,
    tidy_log_axes,
    workers_for,
)

NAME = "belkin-network"
TITLE = "Belkin et al.'s network double descent: the squared-loss peak at N ≈ n·k on MNIST, with and without weight reuse"
PAPER = (
    "Belkin, Hsu, Ma & Mandal, *Reconciling modern machine-learning practice and the classical "
    "bias–variance trade-off*, PNAS 2019, Fig. 3 and SI (fully connected network on MNIST, "
    "squared loss, weight reuse below the threshold)"
)
NUM_CLASSES = 10
INPUT_DIM = 784
MODEL_OPTIONS = {"zero_readout": True, "hidden_bias": 0.1}
CONDITIONS = ("with reuse", "without reuse")
CHECKPOINT_EPOCHS = 250  # a killed run resumes from its last multiple of this many epochs
NOISY = "with reuse, random new weights"  # Belkin et al.'s reuse: new weights from N(0, σ²)
REUSE_ARMS = ("with reuse", NOISY)
SHORT = {"with reuse": "with reuse", NOISY: "with reuse and random new weights"}
BELKIN_EPOCHS = 6000  # the longest training in Belkin et al. 2019, SI
LONG = "without reuse, longer"  # the fresh runs near n·k trained Config.long_epochs epochs


@dataclasses.dataclass(frozen=True)
class Config:
    n_train: int
    widths: tuple[int, ...]  # hidden units H, increasing
    epochs: int
    seeds: int
    lr: float = 0.01
    momentum: float = 0.95
    batch_size: int = 100
    # below the threshold the step size is multiplied by decay_factor every decay_epochs
    decay_epochs: int = 250
    decay_factor: float = 0.9
    eval_every_epochs: int = 100
    n_test: int | None = None  # None: every digit of the 5,000 not in the training set
    # fresh runs at these widths trained long_epochs epochs (same schedule, same seeds): do the
    # networks near n·k interpolate with more training, and does the peak appear then?
    long_epochs: int | None = None
    long_widths: tuple[int, ...] = ()
    # a second reuse chain whose new units start with weights from N(0, reuse_noise²), as
    # Belkin et al.'s do (variance 0.01): with the zero readout alone a new unit gets no
    # gradient once the smaller network fits the training set, so it never learns
    reuse_noise: float | None = None

    def n_params(self, width: int) -> int:
        """N = (784 + 1)·H + (H + 1)·10, the trainable parameters of 784 → H → 10."""
        return (INPUT_DIM + 1) * width + (width + 1) * NUM_CLASSES

    @property
    def threshold(self) -> int:
        """n·k: the target numbers to fit."""
        return self.n_train * NUM_CLASSES

    def below(self, width: int) -> bool:
        """Below the interpolation threshold, N < n·k: step decay (and reuse)."""
        return self.n_params(width) < self.threshold

    @property
    def reused_widths(self) -> list[int]:
        """The widths below n·k: the links of a reuse chain, in order."""
        return [w for w in self.widths if self.below(w)]

    @property
    def switch_width(self) -> int:
        """The first width above n·k, where reuse switches off."""
        return next(w for w in self.widths if not self.below(w))


CONFIGS = {
    # n·k = 4,000: H = 1, 2, 4 below (a reuse chain of three), H = 16 above
    "smoke": Config(n_train=400, widths=(1, 2, 4, 16), epochs=2, seeds=2, batch_size=100,
                    decay_epochs=1, eval_every_epochs=1, n_test=200, long_epochs=4,
                    long_widths=(2, 4, 16), reuse_noise=0.1),
    # n = 1,000: n·k = 10,000, the threshold at H ≈ 12.6
    "small": Config(n_train=1000, widths=(2, 4, 6, 8, 10, 11, 12, 13, 14, 16, 20, 25, 32, 50, 100),
                    epochs=2000, seeds=3, long_epochs=6000, long_widths=(8, 10, 12, 13, 14, 16, 20)),
    # n = 4,000: n·k = 40,000, the threshold at H ≈ 50.3; Belkin et al.'s own length and decay
    # (6,000 epochs, the step ×0.9 every 500 epochs below n·k): ~4 CPU-hours, resumable
    "full": Config(n_train=4000, widths=(4, 8, 16, 24, 32, 40, 44, 48, 50, 52, 56, 64, 80, 100,
                                         150, 250, 500),
                   epochs=6000, seeds=3, decay_epochs=500, reuse_noise=0.1),
}  # fmt: skip


def run_config(
    cfg: Config,
    width: int,
    seed: int,
    init_from: str | None = None,
    epochs: int | None = None,
    noise: float | None = None,
) -> RunConfig:
    """One engine run: 784 → H → 10 ReLU, mse_sum, SGD momentum, step decay below n·k.

    ``init_from`` (a checkpoint path) marks a run of the reuse chain, which
    also saves its own checkpoint for the next width; ``epochs`` (default
    ``cfg.epochs``) lengthens a run without changing its schedule, so its first
    ``cfg.epochs`` epochs are those of the shorter run; ``noise`` (with
    ``init_from``) draws the new units' weights from N(0, noise²).
    """
    per_epoch = -(-cfg.n_train // cfg.batch_size)
    below = cfg.below(width)
    return RunConfig(
        model="mlp", width=width, depth=1, activation="relu", model_options=MODEL_OPTIONS,
        init_from=init_from, init_from_noise=noise, dataset="mnist", n_train=cfg.n_train, n_test=cfg.n_test,
        loss="mse_sum", optimizer="sgd", lr=cfg.lr, momentum=cfg.momentum,
        batch_size=cfg.batch_size, steps=None, epochs=epochs or cfg.epochs,
        lr_decay_every=cfg.decay_epochs * per_epoch if below else None,
        lr_decay_factor=cfg.decay_factor if below else 1.0,
        eval_every=cfg.eval_every_epochs * per_epoch, probes=(), seed=seed,
        checkpoint_every=CHECKPOINT_EPOCHS * per_epoch,  # a runtime field: the hash is unchanged
    )  # fmt: skip


def _checkpoint_of(directory: Path, config: RunConfig) -> str:
    return str((directory / "runs" / config.config_hash() / CHECKPOINT_FILE).resolve())


def chain_links(cfg: Config, store: Path) -> list[tuple[RunConfig, ...]]:
    """The reuse chains' links, one tuple per width below n·k (every chain's link at that
    width, the seeds side by side): each link starts from the previous link's checkpoint in
    ``store``, named by path (so it is in the link's config hash)."""
    noises = (None,) if cfg.reuse_noise is None else (None, cfg.reuse_noise)
    chains: dict = {(noise, seed): [] for noise in noises for seed in range(cfg.seeds)}
    stages = []
    for w in cfg.reused_widths:
        for (noise, seed), chain in chains.items():
            previous = _checkpoint_of(Path(store), chain[-1]) if chain else None
            c = run_config(cfg, w, seed, init_from=previous, noise=noise if chain else None)
            chain.append(c.replace(checkpoint=True))
        stages.append(tuple(chain[-1] for chain in chains.values()))
    return stages


def plan(cfg: Config, store: Path | None = None) -> Plan:
    """Both sweeps: the reuse chains' links (:func:`chain_links`, in ``store``), then every
    fresh run (both sweeps above the threshold are the same fresh runs) and the longer ones.
    :func:`run` trains the links width by width first, each needing the previous checkpoint."""
    if store is None:
        raise ValueError("belkin-network's reuse links name their checkpoints: give the store")
    links = [c for stage in chain_links(cfg, Path(store)) for c in stage]
    seeds = range(cfg.seeds)
    fresh = [run_config(cfg, w, seed) for seed in seeds for w in cfg.widths]
    fresh += [run_config(cfg, w, seed, epochs=cfg.long_epochs) for seed in seeds
              for w in cfg.long_widths]  # fmt: skip
    return Plan(tuple(links + fresh))


def arm_rows(rows: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """One row per (condition, width, seed) from the runs' summaries (one per run): the
    reuse chains, each continued by the fresh runs above the threshold; the fresh runs; the
    longer fresh runs; with ``reused`` and ``N``."""
    rows = rows.drop_duplicates("config_hash").reset_index(drop=True)
    reused = rows.init_from.notna()
    noisy = rows.init_from_noise.notna()
    chain = reused | rows.checkpoint.astype(bool)  # a chain's first link is not reused
    longer = (rows.epochs != cfg.epochs) & (rows.epochs == cfg.long_epochs) & ~chain
    fresh = ~chain & ~longer
    above = fresh & ~rows.width.map(lambda w: cfg.below(int(w))).astype(bool)
    frames = []
    for seed in range(cfg.seeds):
        mine = rows.seed == seed
        arms = [("with reuse", chain & ~noisy, True), ("without reuse", fresh, False),
                (LONG, longer, False)]  # fmt: skip
        if cfg.reuse_noise is not None:  # its first link is the other chain's
            arms.append((NOISY, (chain & ~reused) | noisy, True))
        for condition, sel, continued in arms:
            part = rows[mine & sel].sort_values("width")
            if continued:  # a reuse chain goes on with the fresh runs above n·k
                part = pd.concat([part, rows[mine & above].sort_values("width")])
            if len(part):
                frames.append(part.assign(condition=condition, seed=seed))
    if not frames:
        raise ValueError("no finished belkin-network runs (a store-only report before its runs)")
    data = pd.concat(frames, ignore_index=True)
    data["reused"] = data.init_from.notna()
    data["N"] = [cfg.n_params(int(w)) for w in data.width]
    return data


# ---------------------------------------------------------------------- analysis
def per_seed(data: pd.DataFrame, condition: str, metric: str) -> pd.DataFrame:
    """``metric`` of every complete run as a (seed × width) table (NaN for diverged runs)."""
    d = data[(data.condition == condition) & (data.status == "complete")]
    return d.pivot_table(index="seed", columns="width", values=metric, aggfunc="first")


def sweep_peak(table: pd.DataFrame, cfg: Config, *, at: int | None = None):
    """:func:`~implicit_reg.experiments._sweeps.peak_of` of a (seed × width) table: a
    :class:`~implicit_reg.experiments._sweeps.Peak` (located on held-out seeds, or placed
    at width ``at``), or :class:`~implicit_reg.report.report.Untested` when the runs cannot
    test one (fewer than three widths finished, too few seeds, ``at`` at an end)."""
    table = table.dropna(axis=1, how="all")
    if table.shape[1] < 3:
        return Untested(f"only {table.shape[1]} width(s) have finished runs: too few for a peak")
    return attempt(peak_of, table, at=at)


def threshold_width(cfg: Config, widths) -> int:
    """The width whose N is nearest n·k on a log scale: where Belkin et al. place the peak."""
    widths = [int(w) for w in widths]
    return min(widths, key=lambda w: abs(np.log(cfg.n_params(w) / cfg.threshold)))


def peak_context(p, cfg: Config, what: str) -> str:
    """The seed means where a tested peak was placed (the numbers beside the test)."""
    if not isinstance(p, Peak):
        return ""
    m, left = p.means, p.xs[p.test.left]
    how = f"placed at H = {p.at}" if p.at is not None else "located on held-out seeds"
    desc = highest_bump(m.to_numpy())
    return (
        f"{what} peak {how}: H = {p.x} (N = {cfg.n_params(int(p.x)):,} = "
        f"{cfg.n_params(int(p.x)) / cfg.threshold:.2f}·n·k, {fmt(m[p.x])}) against H = {left} "
        f"({fmt(m[left])}) and the widest H = {p.xs[-1]} ({fmt(m[p.xs[-1]])}); {p.seeds} seeds"
        + (f"; highest bump of the mean at H = {p.xs[desc]} (descriptive)" if desc is not None
           else "; the mean has no interior bump")
    )  # fmt: skip


def _test(p):
    return p.test if isinstance(p, Peak) else p


def arms_in(data: pd.DataFrame) -> list[str]:
    """The sweeps of this report that have runs: both conditions, and the reuse chain with
    random new weights where the scale has one."""
    return [c for c in (*CONDITIONS, NOISY) if c in set(data.condition)]


@dataclasses.dataclass(frozen=True)
class Analysis:
    """``data``: one row per (condition, width, seed) (:func:`arm_rows`, or the stored
    ``runs.csv``); ``peaks[condition, what]``: the peak tests of each arm, ``what`` in
    "test_loss", "test_error" (located on held-out seeds) and "at n·k" (the test loss,
    placed at the width nearest n·k before the test), a Peak or an Untested."""

    data: pd.DataFrame
    peaks: dict


def analyze(rows: pd.DataFrame, cfg: Config) -> Analysis:
    data = rows if "condition" in rows else arm_rows(rows, cfg)
    peaks = {}
    for condition in [*arms_in(data), *([LONG] if LONG in set(data.condition) else [])]:
        for metric in ("test_loss", "test_error"):
            peaks[condition, metric] = sweep_peak(per_seed(data, condition, metric), cfg)
        table = per_seed(data, condition, "test_loss")
        cols = table.dropna(axis=1, how="all").columns
        w_k = threshold_width(cfg, cols) if table.shape[1] else None
        peaks[condition, "at n·k"] = (
            sweep_peak(table, cfg, at=w_k) if w_k is not None else Untested("no finished width")
        )
    return Analysis(data=data, peaks=peaks)


def claims(a: Analysis, cfg: Config) -> list[Claim]:
    """Per arm: the peak of the test loss and error, the peak placed at n·k, the widest
    network against the best below n·k; the longer runs' peak."""
    data, peaks = a.data, a.peaks
    out: list[Claim] = []

    def add(statement: str, paper: str, *tests, **kw) -> None:
        out.append(Claim(statement, paper, tuple(tests), **kw))

    for condition in arms_in(data):
        for metric, what in (("test_loss", "test loss"), ("test_error", "test error")):
            p = peaks[condition, metric]
            add(
                f"{what} rises to a peak and falls again as H grows ({condition})",
                "Belkin et al. 2019, Fig. 3",
                _test(p),
                context=peak_context(p, cfg, what),
                headline=(condition, metric) == ("with reuse", "test_loss"),
            )
        p = peaks[condition, "at n·k"]
        w_k = p.at if isinstance(p, Peak) else None
        if w_k is None:  # untested: the width it would have been placed at
            cols = per_seed(data, condition, "test_loss").dropna(axis=1, how="all").columns
            w_k = threshold_width(cfg, cols) if len(cols) else None
        add(
            f"the test-loss peak sits at N ≈ n·k = {cfg.threshold:,}: placed at H = {w_k} "
            f"before the test ({condition})",
            "Belkin et al. 2019 (N ≈ n·k for the squared loss)",
            _test(p),
            context=peak_context(p, cfg, "test loss"),
        )  # fmt: skip
    # the large networks beat the best small one (the "modern" regime)
    for condition in arms_in(data):
        t = per_seed(data, condition, "test_error")
        t = t.dropna(axis=0) if len(t.dropna(axis=0)) else t.dropna(axis=1)  # finished seeds
        small = [w for w in t.columns if cfg.below(int(w))]
        w_last = int(t.columns[-1]) if len(t.columns) else None
        if not small or w_last is None or cfg.below(w_last):
            continue  # no finished run above the threshold yet
        w_best = int(t[small].mean(axis=0).idxmin())
        add(
            f"the widest network beats the best network below the threshold ({condition})",
            "Belkin et al. 2019 (the test error of large networks falls below the classical "
            "optimum)",
            attempt(paired_test, t[w_best].to_numpy(), t[w_last].to_numpy()),
            context=f"test error {100 * t[w_best].mean():.1f}% at H = {w_best} (the best mean "
            f"below n·k: choosing it on these means favours the small network), "
            f"{100 * t[w_last].mean():.1f}% at H = {w_last}; paired",
        )

    if cfg.long_widths and LONG in set(data.condition):
        p = peaks[LONG, "test_loss"]
        add(
            f"test loss rises to a peak and falls again as H grows ({LONG}: {cfg.long_epochs} "
            "epochs)",
            f"Belkin et al. 2019, Fig. 3 (networks trained up to {BELKIN_EPOCHS:,} epochs)",
            _test(p),
            context=peak_context(p, cfg, "test loss"),
        )
    return out


def artifact_text(peaks: dict, cfg: Config) -> str:
    """Does the peak depend on weight reuse? The reuse arm against fresh initializations,
    with the verdicts of the peak claims above; never "made by reuse": the fresh arm starts
    from a zero readout, not from Belkin et al.'s Glorot initialization."""
    w_switch, w_last_reused = cfg.switch_width, cfg.reused_widths[-1]
    lines = [
        f"Reuse runs below n·k only, so it switches off at H = {w_switch} "
        f"(N = {cfg.n_params(w_switch):,}), the first width above n·k = {cfg.threshold:,}. "
        "What the arms can say: our fresh networks start from a zero readout and +0.1 hidden "
        "biases, not from Belkin et al.'s Glorot-uniform draw, so a missing fresh peak is not "
        "evidence that Belkin et al.'s fresh networks have none; the supportable comparison is "
        "how much larger the peak is with reuse."
    ]
    arms = [(arm, metric, what) for arm in REUSE_ARMS if (arm, "test_loss") in peaks
            for metric, what in (("test_loss", "test loss"), ("test_error", "test error"))]  # fmt: skip
    for arm, metric, what in arms:
        a, b = peaks[arm, metric], peaks["without reuse", metric]
        if not (isinstance(a, Peak) and isinstance(b, Peak)):
            lines.append(f"- {what}: the runs cannot test a peak in one of the sweeps.")
            continue
        where = {w_switch: " at the width where reuse switches off",
                 w_last_reused: " at the last reused width, so the switch to a fresh "
                                "initialization makes part of its fall"}.get(a.x, "")  # fmt: skip
        lines.append(
            f"- {what}: {SHORT[arm]} **{a.verdict}** (peak H = {a.x}{where}); without reuse "
            f"**{b.verdict}** (H = {b.x})." + height_text(a, b, cfg, SHORT[arm])
        )
    lines.append(
        "\nReading: where both arms peak, reuse inflates the peak rather than making it; where "
        "only the reused arm's peak is reproduced, the fresh arm's rise is the share of it "
        "that does not need reuse, and the fresh arm's own peak test says how large a peak "
        "its seeds could have shown."
    )
    return "\n".join(lines)


def height_text(a, b, cfg: Config, arm: str = "with reuse") -> str:
    """How much of the reuse sweep's rise the fresh sweep has at the same widths (seed means,
    descriptive), and how much of a peak at the last reused width falls across the switch."""
    m_a, m_b = a.means, b.means
    left, top = a.xs[a.test.left], a.x
    if not {left, top} <= set(m_b.index):
        return ""
    rise_a, rise_b = m_a[top] - m_a[left], m_b[top] - m_b[left]
    if rise_a <= 0:
        return ""
    text = (
        f" Between H = {left} and {top} the mean rises {fmt(rise_a)} {arm} and {fmt(rise_b)} "
        f"without ({100 * rise_b / rise_a:.0f}% of it): reuse inflates the peak."
    )
    w_switch = cfg.switch_width
    fall = m_a[top] - m_a[a.xs[-1]]
    if top == cfg.reused_widths[-1] and w_switch in m_a.index and fall > 0:
        drop = m_a[top] - m_a[w_switch]
        text += (
            f" {arm.capitalize()} the peak is the last reused width, so {100 * drop / fall:.0f}% "
            f"of its fall is the step to a fresh initialization at H = {w_switch} "
            f"({fmt(m_a[top])} → {fmt(m_a[w_switch])})."
        )
    return text


def fit_text(data: pd.DataFrame, cfg: Config) -> str:
    """How well the networks near the threshold fit the training set (the peak presumes
    that the network at N ≈ n·k interpolates)."""
    ok = data[(data.status == "complete") & (data.condition == "without reuse")]
    m = ok.groupby("width")[["train_loss", "train_error", "test_loss"]].mean()
    above = [w for w in m.index if not cfg.below(int(w))]
    below = [w for w in m.index if cfg.below(int(w))]
    if not above or not below:
        return "Too few widths on both sides of n·k to say."
    w_a, w_b, w_max = above[0], below[-1], m.index[-1]
    ratio = m.train_loss[w_b] / m.train_loss[w_max]
    text = (
        f"Just below n·k (H = {w_b}, no reuse) the train loss ends at "
        f"{fmt(m.train_loss[w_b])} (train error {100 * m.train_error[w_b]:.2g}%), just above "
        f"it (H = {w_a}) at {fmt(m.train_loss[w_a])} ({100 * m.train_error[w_a]:.2g}%), against "
        f"{fmt(m.train_loss[w_max])} at H = {w_max} ({ratio:.3g}× less than at H = {w_b}). "
        "Belkin et al.'s peak is that of networks that interpolate at N ≈ n·k, trained for up "
        f"to {BELKIN_EPOCHS:,} epochs. "
    )
    if cfg.epochs >= BELKIN_EPOCHS:
        return text + (
            f"Ours are trained as long ({cfg.epochs:,} epochs), so what the networks near the "
            "threshold leave on the training set is not that of a shorter schedule."
        )
    return text + (
        f"Ours are trained for {cfg.epochs:,} epochs. "
        + (
            f"The longer runs below test whether {cfg.long_epochs:,} epochs change the fit."
            if cfg.long_widths
            else "Longer training would test whether the schedule matters (not run at this scale)."
        )
    )


def add_longer(report: Report, a: Analysis, cfg: Config) -> None:
    """The longer fresh runs near n·k: do they fit the training set (the peak's claim is
    among the claims)?"""
    data = a.data
    if not cfg.long_widths or LONG not in set(data.condition):
        return
    base, long = per_seed(data, "without reuse", "test_loss"), per_seed(data, LONG, "test_loss")
    p = a.peaks[LONG, "test_loss"]
    tr_base = per_seed(data, "without reuse", "train_loss")
    tr_long = per_seed(data, LONG, "train_loss")
    rows = []
    for w in cfg.long_widths:
        if w not in long or w not in base:
            continue
        seeds = long[w].dropna().index.intersection(base[w].dropna().index)
        d_test = attempt(paired_test, long[w][seeds].to_numpy(), base[w][seeds].to_numpy())
        rows.append({
            "H": w, "N/(n·k)": f"{cfg.n_params(w) / cfg.threshold:.2f}", "seeds": len(seeds),
            f"train loss, {cfg.epochs} ep": mean_std(tr_base[w][seeds]),
            f"train loss, {cfg.long_epochs} ep": mean_std(tr_long[w][seeds]),
            f"test loss, {cfg.epochs} ep": mean_std(base[w][seeds]),
            f"test loss, {cfg.long_epochs} ep": mean_std(long[w][seeds]),
            "test loss change (longer − shorter)": d_test.sentence(),
        })  # fmt: skip
    near = [w for w in cfg.long_widths if 0.8 <= cfg.n_params(w) / cfg.threshold <= 1.3]
    near = [w for w in near if w in long and w in base]
    if near:
        ratio = np.exp(np.nanmean(np.log(tr_long[near].to_numpy() / tr_base[near].to_numpy())))
        fitted = bool(np.nanmax(tr_long[near].to_numpy()) < 1e-4)
        report.add_text(
            f"Near the threshold (H = {', '.join(map(str, near))}, 0.8–1.3·n·k) the longer runs "
            f"end at {ratio:.2f}× the train loss of the shorter ones (geometric mean over widths "
            f"and seeds): "
            + ("they interpolate now. " if fitted else
               "they are stuck short of interpolation, not slow to reach it, so undertraining "
               "by epochs is not why the peak is missing here. ")
            + f"With the longer training the test-loss peak claim is {p.verdict}.",
            heading="Does longer training make the peak?",
        )  # fmt: skip
    report.add_table(
        rows,
        heading=f"Longer training near the threshold ({cfg.long_epochs} against {cfg.epochs} epochs)",
        caption=(
            "Fresh initializations, the same seeds and the same step-size schedule, so the "
            f"first {cfg.epochs} epochs of a longer run are the shorter run; the change is "
            "paired over seeds (longer minus shorter). Mean ± std over seeds."
        ),
    )


def sweep_figure(data: pd.DataFrame, cfg: Config) -> Figure:
    fig = Figure(figsize=(16, 4.6), layout="constrained")
    axes = fig.subplots(1, 4)
    styles = {"with reuse": dict(color="C3", marker="o", ms=4),
              "without reuse": dict(color="C0", marker="s", ms=3, ls="--"),
              LONG: dict(color="C2", marker="^", ms=4, ls=":"),
              NOISY: dict(color="C1", marker="D", ms=3, ls="-.")}  # fmt: skip
    ok = data[data.status == "complete"]
    conditions = [c for c in (*CONDITIONS, NOISY, LONG) if c in set(ok.condition)]
    panels = (
        ("test_loss", "test loss (squared, summed over outputs)", True),
        ("test_error", "test error (fraction misclassified)", False),
        ("train_loss", "train loss", True),
        ("weight_norm", "‖θ‖₂ at the end", False),
    )
    for ax, (metric, ylabel, geometric) in zip(axes, panels):
        for condition in conditions:
            label = f"{condition} ({cfg.long_epochs} epochs)" if condition == LONG else condition
            rows = ok[ok.condition == condition]
            if condition in REUSE_ARMS:
                # the line breaks where reuse switches off: the step from the last reused
                # network to the first fresh one is a change of protocol, not a descent
                reused = rows.width.map(lambda w: cfg.below(int(w))).astype(bool)
                seed_band(ax, rows[reused], "N", metric, label=label, geometric=geometric,
                          **styles[condition])  # fmt: skip
                seed_band(ax, rows[~reused], "N", metric, label="_nolegend_",
                          geometric=geometric, **styles[condition])  # fmt: skip
                continue
            seed_band(ax, rows, "N", metric, label=label, geometric=geometric,
                      **styles[condition])  # fmt: skip
        if metric == "weight_norm":
            for condition in arms_in(ok):
                seed_band(ax, ok[ok.condition == condition], "N", "dist_from_init",
                          label=f"‖θ − θ₀‖ ({condition})", geometric=False, alpha=0.6,
                          color=styles[condition]["color"], ls=":")  # fmt: skip
        ax.axvline(cfg.threshold, ls="--", color="0.3", label=f"N = n·k = {cfg.threshold:,}")
        ax.set_xscale("log")
        if geometric:
            ax.set_yscale("log")
        ax.set_xlabel("trainable parameters N (count)")
        ax.set_ylabel(ylabel)
        if metric == "weight_norm":  # headroom: the legend is wide and the norms climb
            ax.set_ylim(0, 1.6 * ax.get_ylim()[1])
        ax.legend(fontsize=7, loc="upper right" if metric == "weight_norm" else "best")
    axes[0].set_title("test loss")
    axes[1].set_title("test error")
    axes[2].set_title("train loss")
    axes[3].set_title("norms (θ₀: the run's start, reused weights included)")
    fig.suptitle(
        f"MNIST, n = {cfg.n_train:,} (clean labels), 784→H→10 ReLU, squared loss summed over the "
        f"10 outputs, SGD lr {cfg.lr:g}, momentum {cfg.momentum:g}, batch {cfg.batch_size}, "
        f"{cfg.epochs} epochs (×{cfg.decay_factor:g} every {cfg.decay_epochs} epochs below n·k); "
        f"mean ± std over {data.seed.nunique()} of {cfg.seeds} seeds"
    )
    tidy_log_axes(fig)
    return fig


def table_rows(data: pd.DataFrame, cfg: Config) -> list[dict]:
    out = []
    ok = data[data.status == "complete"]
    for (w, condition), g in ok.groupby(["width", "condition"], sort=True):
        out.append({
            "H": int(w), "N": cfg.n_params(int(w)), "N/(n·k)": f"{cfg.n_params(int(w)) / cfg.threshold:.2f}",
            "condition": condition, "reused": "yes" if g.reused.any() else "no",
            "train loss": mean_std(g.train_loss.to_numpy()),
            "train error": mean_std(g.train_error.to_numpy()),
            "test loss": mean_std(g.test_loss.to_numpy()),
            "test error": mean_std(g.test_error.to_numpy()),
            "‖θ‖": mean_std(g.weight_norm.to_numpy()),
            "‖θ − θ₀‖": mean_std(g.dist_from_init.to_numpy()),
        })  # fmt: skip
    return out


def norm_text(data: pd.DataFrame, cfg: Config) -> str:
    """Does a norm peak at n·k? Each tested at the width nearest n·k, placed before the test."""
    lines = []
    for condition in arms_in(data):
        for metric, what in (("weight_norm", "‖θ‖"), ("dist_from_init", "‖θ − θ₀‖")):
            table = per_seed(data, condition, metric)
            cols = table.dropna(axis=1, how="all").columns
            w_k = threshold_width(cfg, cols) if len(cols) else None
            p = sweep_peak(table, cfg, at=w_k) if w_k is not None else Untested("no width")
            lines.append(f"- {condition}: {what} peaks at H = {w_k} (nearest n·k): "
                         f"**{p.verdict}**; {_test(p).sentence()}")  # fmt: skip
    return "\n".join(lines)


def added_units(data: pd.DataFrame, cfg: Config) -> tuple[list[dict], str]:
    """Do the units a reused network adds learn? ‖V[:, block]‖: the readout weights of each
    block of hidden units (those added at one width of the chain) in the last reused network,
    read from its checkpoint, mean ± std over seeds. With a zero readout a new unit's weights
    get no gradient while the residual is 0, so once a smaller network fits the training set
    the units added after it stay near 0, and the chain is that network trained on."""
    below = cfg.reused_widths
    if "run_dir" not in data:
        return [], ""  # a stored table: no checkpoints to read
    last = data[(data.status == "complete") & (data.width == below[-1]) & data.reused]
    norms: dict[str, dict[int, list[float]]] = {}
    for r in last.itertuples():
        path = Path(r.run_dir) / CHECKPOINT_FILE
        if not path.exists():
            continue
        readout = [v for v in read_model_state(path).values() if v.dim() == 2][-1]  # (k, H)
        for lo, hi in zip([0, *below], below):
            norms.setdefault(r.condition, {}).setdefault(hi, []).append(
                float(readout[:, lo:hi].norm())
            )
    arms = [a for a in REUSE_ARMS if a in norms]
    if not arms:
        return [], ""
    rows = [
        {"units added at H": hi, "units": f"{lo + 1}–{hi}",
         **{f"‖V[:, units]‖, {SHORT[a]}": mean_std(norms[a][hi]) if hi in norms[a] else "—"
            for a in arms}}
        for lo, hi in zip([0, *below], below)
    ]  # fmt: skip
    lines = []
    for a in arms:
        mean = {hi: float(np.mean(v)) for hi, v in norms[a].items()}
        top = max(mean.values())
        dead = [hi for hi in below if hi in mean and mean[hi] < 0.01 * top]
        alive = [hi for hi in below if hi in mean and hi not in dead]
        if dead:
            lines.append(
                f"- {SHORT[a]}: the units added at H = {', '.join(map(str, dead))} end with "
                f"readout norm ≤ {fmt(max(mean[h] for h in dead))}, against {fmt(top)} for the "
                f"largest block: they contribute nothing, so the network at H = {below[-1]} is "
                f"in effect the one of H = {alive[-1] if alive else below[0]}, trained on."
            )
        else:
            lines.append(
                f"- {SHORT[a]}: no block of added units stays near 0 (smallest readout norm "
                f"{fmt(min(mean.values()))}, largest {fmt(top)})"
                + (f"; they start at N(0, {cfg.reuse_noise:g}²), so this alone does not say they "
                   "learned." if a == NOISY else ".")
            )  # fmt: skip
    return rows, "\n".join(lines)


DATA_COLUMNS = (
    "condition", "width", "N", "seed", "reused", "status", "config_hash", "train_loss",
    "train_error", "test_loss", "test_error", "weight_norm", "dist_from_init", "grad_norm_sq",
    "wall_time_s",
)  # fmt: skip


def figures(a: Analysis, cfg: Config) -> list[tuple[Figure, str, str]]:
    return [
        (
            sweep_figure(a.data, cfg),
            "belkin_network.png",
            "Test loss, test error, train loss and the norms against the parameter count, with "
            "weight reuse below n·k (red) and from fresh initializations (blue, dashed)"
            + (
                ", and reuse with random new weights (orange, dash-dotted)"
                if NOISY in arms_in(a.data)
                else ""
            )
            + "; the dashed vertical line is N = n·k. The reuse arms' lines break where reuse "
            "switches off (their networks above n·k are the fresh ones). Mean ± std over seeds.",
        )
    ]


def extras(report: Report, a: Analysis, cfg: Config) -> None:
    """The reuse reading, the fit at the threshold, the longer runs, the added units, the
    per-width table, the norms, the protocol and ``runs.csv``."""
    data = a.data
    report.add_text(artifact_text(a.peaks, cfg), heading="Is the peak an artifact of weight reuse?")
    report.add_text(fit_text(data, cfg), heading="Do the networks at the threshold interpolate?")
    add_longer(report, a, cfg)
    units, units_text = added_units(data, cfg)
    if units:
        report.add_text(units_text, heading="Do the units a reused network adds learn?")
        report.add_table(
            units,
            caption=f"Readout weights of each block of hidden units in the last reused network "
            f"(H = {cfg.reused_widths[-1]}), by the width that added them; "
            "mean ± std over seeds.",
        )
    report.add_table(table_rows(data, cfg), heading="Per width and condition")
    report.add_text(norm_text(data, cfg), heading="Does a network norm peak at the threshold?")
    report.add_text(
        "Initialization: the readout starts at 0 and every hidden bias at +0.1 (the hidden "
        "weights keep PyTorch's default Kaiming-uniform draw). The positive bias keeps the ReLU "
        "units of the smallest networks alive on the nonnegative pixels; the zero readout makes "
        "a reused network start exactly where the smaller one ended, since a new unit's output "
        "weights are 0. Belkin et al. instead draw new weights from N(0, 0.01) and start the "
        "first network with Glorot-uniform; ours keeps every fresh network at f ≡ 0 at the start."
        + (
            f" The chain '{NOISY}' follows Belkin et al.'s reuse: its new units' incoming and "
            f"outgoing weights are drawn from N(0, {cfg.reuse_noise:g}²) (RunConfig."
            "init_from_noise), its biases as above."
            if cfg.reuse_noise is not None
            else ""
        ),
        heading="Protocol",
    )
    report.add_data(data[[c for c in DATA_COLUMNS if c in data]], "runs.csv")


SPEC = Spec(NAME, TITLE, PAPER, CONFIGS, plan, analyze, claims, figures, extras)


def run(scale: str, out: Path) -> Report:
    """Run belkin-network at ``scale`` and write its report into ``out`` (its plan names the
    reuse chains' checkpoints in the store, ``out/sweep``)."""
    store = sweep_dir(Path(out), NAME, NAME)
    for links in chain_links(select_scale(CONFIGS, scale), store):  # width by width
        run_configs(list(links), store, workers=workers_for(scale))  # (store-only: reads)
    spec = dataclasses.replace(SPEC, plan=functools.partial(plan, store=store))
    return run_spec(spec, scale, out)
