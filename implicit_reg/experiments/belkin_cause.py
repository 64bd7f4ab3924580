"""belkin-cause: what makes Belkin et al.'s network peak at N ≈ n·k: reuse, initialization variance or interpolation?

Belkin, Hsu, Ma & Mandal, PNAS 2019 (Fig. 3 and SI, "Neural networks"): a
784 → H → 10 ReLU network on n MNIST digits, squared loss on one-hot targets
summed over the k = 10 outputs ("mse_sum"), SGD with momentum 0.95. Its test
loss peaks where N = (784 + 1)·H + (H + 1)·10 reaches n·k. Below the
threshold Belkin et al. **reuse** weights (each network starts from the
trained smaller one), above it they initialize Glorot-uniform.
``belkin-network`` found its peak with reuse but not from its fresh
networks, which start from a zero readout and +0.1 hidden biases, an
initialization with no output variance at the start. Theory names that
variance as a driver of the network peak (Geiger et al. 2020, "Scaling
description of generalization with number of parameters in deep learning";
d'Ascoli, Refinetti, Biroli & Krzakala 2020, "Double trouble in double
descent": the average of the predictors of many initializations removes the
part of the peak that initialization variance makes).

This experiment varies one cause at a time at n = 1,000 (n·k = 10,000,
H ≈ 12.6), every arm at one step-size schedule (constant, no decay at any
width, so that the schedule is not a further change at n·k):

- **fresh initializations** at every width: Glorot-uniform (Belkin et al.'s;
  zero biases), PyTorch's default, and belkin-network's zero readout with
  +0.1 hidden biases (:class:`implicit_reg.workloads.models.MLP`'s ``init``,
  ``zero_readout``, ``hidden_bias``), ≥ 5 seeds, SGD;
- the same Glorot networks trained by **full-batch GD** (momentum 0.95);
- **reuse chains** (first link a fresh network of ``Config.chain_init``; each
  larger network starts from the trained smaller one, its new weights from
  N(0, 0.1²) as Belkin et al.'s) that switch to the fresh networks of the same
  initialization at 0.6, 1.0 and 1.3·n·k: if the peak follows the switch
  rather than n·k, reuse makes it. The chains start from PyTorch's default
  initialization, not Glorot: with Belkin et al.'s optimizer (momentum 0.95) most
  ReLU units of the Glorot networks die in the first epochs (7–11 of 13 at
  H = 13 after 40 epochs, measured; none without momentum), so a Glorot chain
  would reuse dead networks;
- the **ensemble-averaged predictor** f̄ = mean over seeds of f_s at every
  width (from each run's final parameters): for the squared loss
  E_s‖f_s − y‖² = ‖f̄ − y‖² + E_s‖f_s − f̄‖², so if averaging removes the
  peak, initialization variance makes it. Its loss is judged on jackknife
  pseudo-values over seeds, S·L(f̄_S) − (S − 1)·L(f̄_{S∖s}), whose mean is an
  unbiased estimate of the infinite-ensemble loss ‖E f − y‖² (the squared loss
  of a mean is a U-statistic of order 2 in the seeds, so the jackknife removes
  its 1/S bias exactly) and whose spread gives the jackknife standard error;
- **optimization failure** apart from generalization: each run's dead ReLU
  units (never active on a training digit), its training loss against the
  best reached at its width, and whether it predicts one class for most test
  digits.

Peaks are placed before the test (at the width nearest n·k, or at a chain's
last reused width) and judged by :func:`implicit_reg.stats.peak_test`.
Final parameters: every run's ``params.pt`` (``RunConfig.save_params``; an
ensemble member's own unpadded model), read after training.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from implicit_reg.engine.config import RunConfig
from implicit_reg.engine.store import CHECKPOINT_FILE, PARAMS_FILE
from implicit_reg.report.report import (
    Claim,
    Report,
    Untested,
    attempt,
    fmt,
    mean_std,
    select_scale,
)
from implicit_reg.stats import paired_ratio, paired_test, welch_test

from ._spec import Plan, Spec, run_spec
from ._sweeps import (
    Peak,
    peak_of,
    run_configs,
    seed_band,
    store_only,
    sweep_dir,
    tidy_log_axes,
    workers_for,
)

NAME = "belkin-cause"
TITLE = (
    "What makes Belkin et al.'s network peak: weight reuse, initialization variance or "
    "interpolation (Glorot and default fresh networks, switched reuse chains, the "
    "ensemble-averaged predictor, full-batch GD)"
)
PAPER = (
    "Belkin, Hsu, Ma & Mandal, PNAS 2019, Fig. 3 and SI; Geiger et al. 2020 (J. Stat. Mech.); "
    "d'Ascoli, Refinetti, Biroli & Krzakala, ICML 2020 (the ensemble average of "
    "initializations)"
)
NUM_CLASSES = 10
INPUT_DIM = 784
#: the fresh networks' initializations: MLP model_options
INITS = {
    "Glorot": {"init": "glorot"},
    "default": {"init": "default"},
    "zero readout": {"zero_readout": True, "hidden_bias": 0.1},  # belkin-network's
}
SGD_ARMS = {f"fresh, {name}": name for name in INITS}
GD_ARM = "fresh, Glorot, full-batch GD"
FRESH_ARMS = (*SGD_ARMS, GD_ARM)


def switch_arm(fraction: float) -> str:
    return f"reuse, fresh from {fraction:g}·n·k"


@dataclasses.dataclass(frozen=True)
class Config:
    n_train: int
    widths: tuple[int, ...]  # hidden units H, increasing
    epochs: int
    seeds: int
    lr: float = 0.01
    momentum: float = 0.95
    batch_size: int = 100
    # the reuse chains switch to fresh networks (of chain_init) at these fractions of n·k
    switches: tuple[float, ...] = (0.6, 1.0, 1.3)
    reuse_noise: float = 0.1  # a reused network's new weights: N(0, reuse_noise²)
    chain_init: str = "default"  # the chains' first link and the fresh runs after the switch
    gd_epochs: int | None = None  # the full-batch GD arm's steps (None: no GD arm)
    gd_lr: float = 0.01
    eval_every_epochs: int = 100
    checkpoint_epochs: int = 250  # mid-run checkpoints: a killed run resumes from there
    n_test: int | None = None  # None: every digit of the 5,000 not in the training set

    def __post_init__(self) -> None:
        if list(self.widths) != sorted(set(self.widths)) or len(self.widths) < 3:
            raise ValueError(f"widths must be >= 3 increasing integers, got {self.widths}")
        if self.seeds < 2:
            raise ValueError(f"the ensemble and the tests need >= 2 seeds, got {self.seeds}")
        if not self.switches or any(s <= 0 for s in self.switches):
            raise ValueError(f"switches must be positive fractions of n·k, got {self.switches}")

    def n_params(self, width: int) -> int:
        """N = (784 + 1)·H + (H + 1)·10, the trainable parameters of 784 → H → 10."""
        return (INPUT_DIM + 1) * width + (width + 1) * NUM_CLASSES

    @property
    def threshold(self) -> int:
        """n·k: the target numbers to fit."""
        return self.n_train * NUM_CLASSES

    def reused(self, width: int, fraction: float) -> bool:
        """A chain that switches at ``fraction``·n·k reuses the networks with N below it."""
        return self.n_params(width) < fraction * self.threshold

    @property
    def chain_widths(self) -> list[int]:
        """The links of the chain: every width some switch arm reuses."""
        return [w for w in self.widths if self.reused(w, max(self.switches))]

    def last_reused(self, fraction: float) -> int | None:
        below = [w for w in self.widths if self.reused(w, fraction)]
        return below[-1] if below else None

    @property
    def nk_width(self) -> int:
        """The width whose N is nearest n·k on a log scale: where Belkin et al. place the peak."""
        return min(self.widths, key=lambda w: abs(np.log(self.n_params(w) / self.threshold)))


CONFIGS = {
    # n·k = 2,000: H = 1, 2 below 1.3·n·k
    "smoke": Config(n_train=200, widths=(1, 2, 3, 5, 8), epochs=2, seeds=3, eval_every_epochs=1,
                    checkpoint_epochs=1, gd_epochs=2, n_test=300),
    # n = 1,000: n·k = 10,000, H ≈ 12.6; 0.6·n·k after H = 6, 1.0 after 12, 1.3 after 16
    "small": Config(n_train=1000, widths=(2, 4, 6, 8, 10, 11, 12, 13, 14, 16, 20, 32, 100),
                    epochs=2000, seeds=5, gd_epochs=4000),
    # n = 4,000: n·k = 40,000, H ≈ 50.3 (the widths); not run yet (about 8× small)
    "full": Config(n_train=4000, widths=(16, 24, 32, 40, 44, 48, 50, 52, 56, 64, 100, 250),
                   epochs=2000, seeds=5, gd_epochs=4000),
}  # fmt: skip


def run_config(
    cfg: Config,
    width: int,
    seed: int,
    *,
    init: str = "Glorot",
    gd: bool = False,
    init_from: str | None = None,
) -> RunConfig:
    """One engine run: 784 → H → 10 ReLU, mse_sum, SGD (or full-batch GD) with momentum,
    constant step; ``init_from`` (a checkpoint path) makes it a reuse link, which saves its
    own ``checkpoint.pt`` for the next width."""
    per_epoch = 1 if gd else -(-cfg.n_train // cfg.batch_size)
    epochs = cfg.gd_epochs if gd else cfg.epochs
    c = RunConfig(
        model="mlp", width=width, depth=1, activation="relu", model_options=dict(INITS[init]),
        init_from=init_from, init_from_noise=cfg.reuse_noise if init_from else None,
        dataset="mnist", n_train=cfg.n_train, n_test=cfg.n_test, loss="mse_sum",
        optimizer="gd" if gd else "sgd", lr=cfg.gd_lr if gd else cfg.lr, momentum=cfg.momentum,
        batch_size=None if gd else cfg.batch_size, steps=None, epochs=epochs,
        eval_every=cfg.eval_every_epochs * per_epoch, probes=(), seed=seed,
        checkpoint_every=cfg.checkpoint_epochs * per_epoch,  # runtime fields: the hash is
        save_params=True,  # unchanged; params.pt holds the final parameters
    )  # fmt: skip
    return c


def _checkpoint_of(store: Path, config: RunConfig) -> str:
    return str((Path(store) / "runs" / config.config_hash() / CHECKPOINT_FILE).resolve())


def chain_links(cfg: Config, store: Path) -> list[tuple[RunConfig, ...]]:
    """The reuse chains' links, one tuple per width (the seeds side by side): the first a
    fresh Glorot network, each next one started from the previous link's checkpoint in
    ``store`` (named by path, so it is in the link's config hash)."""
    stages, previous = [], [None] * cfg.seeds
    for w in cfg.chain_widths:
        links = []
        for seed in range(cfg.seeds):
            prior = previous[seed]
            c = run_config(cfg, w, seed, init=cfg.chain_init,
                           init_from=prior and _checkpoint_of(store, prior))  # fmt: skip
            links.append(c.replace(checkpoint=True))
        previous = links
        stages.append(tuple(links))
    return stages


def phases(cfg: Config, store: Path) -> list[tuple[str, list[RunConfig]]]:
    """The runs in the order they are trained, what the claims need most first: the fresh
    Glorot and default networks, the reuse chains (width by width), the zero readout, GD."""
    seeds, widths = range(cfg.seeds), cfg.widths

    def fresh(init: str):
        return (f"fresh, {init}", [run_config(cfg, w, s, init=init) for s in seeds for w in widths])

    out = [fresh("Glorot"), fresh("default")]
    out += [(f"reuse link H = {links[0].width}", list(links)) for links in chain_links(cfg, store)]
    out += [fresh(init) for init in INITS if init not in ("Glorot", "default")]
    if cfg.gd_epochs:
        out.append((GD_ARM, [run_config(cfg, w, s, gd=True) for s in seeds for w in widths]))
    return out


def plan(cfg: Config, store: Path | None = None) -> Plan:
    """Every run of :func:`phases` (the chain links name their checkpoints in ``store``)."""
    if store is None:
        raise ValueError("belkin-cause's reuse links name their checkpoints: give the store")
    return Plan(tuple(c for _, runs in phases(cfg, Path(store)) for c in runs))


def run(scale: str, out: Path) -> Report:
    """Train belkin-cause's phases in order (:func:`phases`; a killed run resumes from its
    store, ``out/sweep``), then write the report."""
    store = sweep_dir(Path(out), NAME, NAME)
    cfg = select_scale(CONFIGS, scale)
    if not store_only():
        for _, runs in phases(cfg, store):
            run_configs(runs, store, workers=workers_for(scale))
    spec = dataclasses.replace(SPEC, plan=functools.partial(plan, store=store))
    return run_spec(spec, scale, out)


# ---------------------------------------------------------------------- final parameters
def _init_name(options) -> str:
    """The INITS name of a run's ``model_options`` (a dict, or its JSON text in a table)."""
    if isinstance(options, str):
        options = json.loads(options.replace("'", '"').replace("True", "true"))
    for name, opts in INITS.items():
        if dict(options or {}) == opts:
            return name
    raise ValueError(f"model_options {options!r} is none of belkin-cause's inits {list(INITS)}")


def final_state(run_dir: str | Path) -> dict[str, torch.Tensor] | None:
    """A run's final parameters: its ``params.pt`` (``save_params``; an ensemble member's
    unpadded model), else a reuse link's ``checkpoint.pt``; None when neither exists."""
    from implicit_reg.engine.checkpoint import read_checkpoint

    for name in (PARAMS_FILE, CHECKPOINT_FILE):
        if (Path(run_dir) / name).is_file():
            return read_checkpoint(Path(run_dir) / name)["state_dict"]
    return None


@torch.no_grad()
def run_outputs(rows: pd.DataFrame) -> tuple[dict[str, np.ndarray], pd.DataFrame, np.ndarray]:
    """Each complete run's test outputs f(x_test) [n_test, k] (by config hash), a table of
    its dead ReLU units (never active on a training digit) and the share of test digits
    given its most frequent class, and the test labels."""
    from implicit_reg.engine.workload import load_run_data
    from implicit_reg.workloads.models import build_model

    outputs, diag, y_test = {}, [], None
    for r in rows[rows.status == "complete"].drop_duplicates("config_hash").itertuples():
        state = final_state(r.run_dir)
        if state is None:
            continue
        config = RunConfig.from_file(Path(r.run_dir) / "config.json")
        data = load_run_data(config)
        model = build_model(**config.model_spec(data.input_dim, data.output_dim)).to(
            data.x_test.dtype
        )
        model.load_state_dict(state)
        hidden = model.net[1](model.net[0](data.x_train.flatten(1)))  # (n, H), after ReLU
        f = model(data.x_test)
        y_test = data.y_test.numpy()
        outputs[r.config_hash] = f.double().numpy()
        top = np.bincount(f.argmax(1).numpy(), minlength=NUM_CLASSES).max() / len(f)
        diag.append({"config_hash": r.config_hash, "dead_units": int((hidden.amax(0) <= 0).sum()),
                     "top_class_share": float(top)})  # fmt: skip
    return (
        outputs,
        pd.DataFrame(diag, columns=["config_hash", "dead_units", "top_class_share"]),
        y_test,
    )


def sq_loss(f: np.ndarray, y: np.ndarray) -> float:
    """(1/n) Σ_i ‖f(x_i) − e_{y_i}‖², the mse_sum loss."""
    return float(((f - np.eye(f.shape[1])[y]) ** 2).sum(1).mean())


def zero_one(f: np.ndarray, y: np.ndarray) -> float:
    return float((f.argmax(1) != y).mean())


def jackknife(outs: list[np.ndarray], y: np.ndarray, metric) -> tuple[float, list[float]]:
    """``metric`` of the mean of S outputs, and the jackknife pseudo-values over the S
    seeds, S·m(f̄) − (S − 1)·m(f̄ without seed s); for the squared loss their mean is the
    unbiased estimate of the infinite-ensemble loss ‖E f − y‖² (a U-statistic)."""
    s = len(outs)
    total = np.sum(outs, axis=0)
    full = metric(total / s, y)
    return full, [s * full - (s - 1) * metric((total - o) / (s - 1), y) for o in outs]


# ---------------------------------------------------------------------- the arms
#: the loss of the best constant predictor of one-hot targets of 10 balanced classes
#: (0.1 for every output): 1 − 2·0.1 + 10·0.1² = 0.9
TRIVIAL_LOSS = 0.9
#: a run is stuck when its train loss has not gone STUCK_SHARE of the way from the trivial
#: loss down to the best any run reached at its width
STUCK_SHARE = 0.9
#: ... or when most of its units are dead, or one class takes this share of the test digits
ONE_CLASS_SHARE = 0.5


def arm_rows(rows: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """One row per (condition, width, seed): the fresh arms (by init; GD) and the switch
    arms (the chain's links below s·n·k, the fresh runs of its init above it), with ``N``."""
    rows = rows.drop_duplicates("config_hash").reset_index(drop=True)
    gd = rows.optimizer == "gd"
    chain = rows.init_from.notna() | rows.checkpoint.astype(bool)
    inits = rows.model_options.map(_init_name)
    frames = []
    for arm, init in SGD_ARMS.items():
        frames.append(rows[~gd & ~chain & (inits == init)].assign(condition=arm))
    frames.append(rows[gd].assign(condition=GD_ARM))
    after = rows[~gd & ~chain & (inits == cfg.chain_init)]
    for s in cfg.switches:
        reused = rows.width.map(lambda w, s=s: cfg.reused(int(w), s)).astype(bool)
        fresh = after.width.map(lambda w, s=s: not cfg.reused(int(w), s)).astype(bool)
        part = pd.concat([rows[chain & reused], after[fresh]])
        frames.append(part.assign(condition=switch_arm(s)))
    data = pd.concat(frames, ignore_index=True)
    if not len(data):
        raise ValueError("no finished belkin-cause runs (a store-only report before its runs)")
    data["reused"] = data.init_from.notna()
    data["N"] = [cfg.n_params(int(w)) for w in data.width]
    return data.sort_values(["condition", "width", "seed"]).reset_index(drop=True)


def add_outputs(data: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """Per run: dead units and the one-class share (:func:`run_outputs`), and per fresh arm
    and width the ensemble of its seeds: the 5-member ensemble's test loss and error, each
    seed's jackknife pseudo-values of the squared loss (``ens_loss_jk``; not of the 0-1 error,
    which is no U-statistic, so its ensemble error is the 5-member one) and its variance term
    ``var_term`` = mean_i ‖f_s(x_i) − f̄(x_i)‖²·S/(S − 1)."""
    outputs, diag, y = run_outputs(data)
    data = data.merge(diag, on="config_hash", how="left")
    cols = ("ens_loss", "ens_error", "ens_loss_jk", "var_term", "ens_members")
    for c in cols:
        data[c] = np.nan
    for _, g in data[data.condition.isin(FRESH_ARMS)].groupby(["condition", "width"]):
        g = g[g.config_hash.isin(outputs)]
        if len(g) < 2:
            continue
        outs = [outputs[h] for h in g.config_hash]
        loss, loss_jk = jackknife(outs, y, sq_loss)
        err = zero_one(np.mean(outs, axis=0), y)
        mean = np.mean(outs, axis=0)
        var = [float(((o - mean) ** 2).sum(1).mean()) * len(outs) / (len(outs) - 1) for o in outs]
        data.loc[g.index, "ens_loss"], data.loc[g.index, "ens_error"] = loss, err
        data.loc[g.index, "ens_loss_jk"] = loss_jk
        data.loc[g.index, "var_term"], data.loc[g.index, "ens_members"] = var, len(outs)
    return data


def mark_stuck(data: pd.DataFrame) -> pd.DataFrame:
    """``stuck``: the run did not train properly (module constants: its train loss is above
    best + (1 − STUCK_SHARE)·(TRIVIAL_LOSS − best) for the best train loss of any run at its
    width, or at least half its hidden units are dead, or one class takes ONE_CLASS_SHARE
    of the test digits); NaN where the diagnostics are missing."""
    best = data.groupby("width").train_loss.transform("min")
    high = data.train_loss > best + (1 - STUCK_SHARE) * (TRIVIAL_LOSS - best)
    dead = data.dead_units >= data.width / 2
    one = data.top_class_share >= ONE_CLASS_SHARE
    stuck = (high | dead | one).astype(float)
    stuck[data.dead_units.isna() & ~high] = np.nan
    return data.assign(best_train_loss=best, stuck=stuck)


# ---------------------------------------------------------------------- analysis
def per_seed(data: pd.DataFrame, condition: str, metric: str) -> pd.DataFrame:
    """``metric`` of every complete run as a (seed × width) table."""
    d = data[(data.condition == condition) & (data.status == "complete")]
    return d.pivot_table(index="seed", columns="width", values=metric, aggfunc="first")


def placed_peak(table: pd.DataFrame, at: int | None):
    """:func:`~implicit_reg.experiments._sweeps.peak_of` placed at width ``at`` (before the
    test), or Untested when the finished runs cannot test it."""
    table = table.dropna(axis=1, how="all")
    if at is None:
        return Untested("no width to place the peak at")
    if at not in table.columns:
        return Untested(f"no finished run at H = {at}")
    if table.shape[1] < 3:
        return Untested(f"only {table.shape[1]} width(s) have finished runs: too few for a peak")
    return attempt(peak_of, table, at=at)


@dataclasses.dataclass(frozen=True)
class Analysis:
    """``data``: one row per (condition, width, seed) with the per-run diagnostics and the
    ensemble columns (:func:`add_outputs`) where the final parameters were read;
    ``peaks[condition, what]``: Peak or Untested, ``what`` in "test_loss", "test_error",
    "ens_loss_jk", "var_term" (placed at the width nearest n·k), "located"
    (the test loss, the peak located on a held-out seed),
    "proper" (test loss at n·k on the seeds that trained properly at every width) and,
    for the switch arms, "switch" (the test loss placed at the last reused width)."""

    data: pd.DataFrame
    peaks: dict
    missing: int = 0  # planned runs not in the store yet (a store-only report mid-sweep)


def analyze(rows: pd.DataFrame, cfg: Config) -> Analysis:
    missing = int(rows.attrs.get("missing", 0))
    if "condition" in rows:  # a stored runs.csv
        data = rows
    else:
        data = mark_stuck(add_outputs(arm_rows(rows, cfg), cfg))
    peaks = {}
    at = cfg.nk_width
    for arm in sorted(set(data.condition)):
        for what in ("test_loss", "test_error", "ens_loss_jk", "var_term"):
            if what in data and data.loc[data.condition == arm, what].notna().any():
                peaks[arm, what] = placed_peak(per_seed(data, arm, what), at)
        table = per_seed(data, arm, "test_loss")
        if arm in FRESH_ARMS and table.dropna(axis=1, how="all").shape[1] >= 3:
            # where the curve peaks, located on a held-out seed (not placed at n·k)
            peaks[arm, "located"] = attempt(peak_of, table.dropna(axis=1, how="all"))
        stuck = per_seed(data, arm, "stuck") if "stuck" in data else None
        if stuck is not None and stuck.notna().any().any():
            proper = stuck.reindex_like(table).fillna(1).max(axis=1) == 0
            peaks[arm, "proper"] = (
                placed_peak(table[proper], at) if proper.sum() >= 3
                else Untested(f"{int(proper.sum())} seed(s) trained properly at every width")
            )  # fmt: skip
        for s in cfg.switches:
            if arm == switch_arm(s):
                peaks[arm, "switch"] = placed_peak(table, cfg.last_reused(s))
    return Analysis(data=data, peaks=peaks, missing=missing)


def _test(p):
    return p.test if isinstance(p, Peak) else p


def peak_context(p, cfg: Config, what: str) -> str:
    if not isinstance(p, Peak):
        return ""
    m, left = p.means, p.xs[p.test.left]
    return (
        f"{what} placed at H = {p.x} (N = {cfg.n_params(int(p.x)):,} = "
        f"{cfg.n_params(int(p.x)) / cfg.threshold:.2f}·n·k, mean {fmt(m[p.x])}) against "
        f"H = {left} ({fmt(m[left])}) and the widest H = {p.xs[-1]} ({fmt(m[p.xs[-1]])}); "
        f"{p.seeds} seeds"
    )


def rise_split(a: Analysis, arm: str):
    """Averaging and the rise into n·k: per seed the single network's rise L_s(n·k) −
    L_s(left) and the ensemble's (its jackknife pseudo-values), between the left reference
    of the single networks' peak test and n·k. Returns (paired_test "the single rise is
    larger", paired_ratio ensemble rise / single rise) or an Untested twice."""
    p = a.peaks.get((arm, "test_loss"))
    if not isinstance(p, Peak) or (arm, "ens_loss_jk") not in a.peaks:
        u = Untested("no single-network peak test or no ensemble to compare")
        return u, u
    single, ens = per_seed(a.data, arm, "test_loss"), per_seed(a.data, arm, "ens_loss_jk")
    left, at = p.xs[p.test.left], p.x
    seeds = single[[left, at]].dropna().index.intersection(ens[[left, at]].dropna().index)
    s_rise = (single.loc[seeds, at] - single.loc[seeds, left]).to_numpy()
    e_rise = (ens.loc[seeds, at] - ens.loc[seeds, left]).to_numpy()
    ratio = attempt(paired_ratio, ens.loc[seeds, at], ens.loc[seeds, left],
                    single.loc[seeds, at], single.loc[seeds, left])  # fmt: skip
    return attempt(paired_test, s_rise, e_rise), ratio


def switch_step(a: Analysis, cfg: Config, fraction: float):
    """Welch test of the first fresh width's test loss over the last reused width's, in the
    arm switched at ``fraction``·n·k (different networks, so unpaired); None if not run."""
    t = per_seed(a.data, switch_arm(fraction), "test_loss")
    w = cfg.last_reused(fraction)
    first = next((x for x in cfg.widths if not cfg.reused(x, fraction)), None)
    if w is None or first is None or w not in t or first not in t:
        return None
    return attempt(welch_test, t[first].dropna(), t[w].dropna())


def fieller(r) -> str:
    """A paired_ratio's 90% Fieller set in words (an interval, two rays, or every ratio)."""
    lo, hi = r.ci
    if r.ci_kind == "interval":
        return f"90% Fieller interval {lo:.2f} to {hi:.2f}"
    if r.ci_kind == "exclusive":
        return f"90% Fieller set: below {lo:.2f} or above {hi:.2f} (the single rise is not sure)"
    return "90% Fieller set: every ratio (the single rise is not sure)"


def claims(a: Analysis, cfg: Config) -> list[Claim]:
    out: list[Claim] = []
    at = cfg.nk_width
    where = f"H = {at}, N = {cfg.n_params(at) / cfg.threshold:.2f}·n·k"

    def add(statement: str, paper: str, p, **kw) -> None:
        out.append(Claim(statement, paper, (_test(p),), **kw))

    arms = [arm for arm in FRESH_ARMS if (arm, "test_loss") in a.peaks]
    for arm in arms:
        for what, name in (("test_loss", "test loss"), ("test_error", "test error")):
            add(f"the single networks' {name} peaks at n·k ({where}, placed before the test; {arm})",
                "Belkin et al. 2019, Fig. 3", a.peaks[arm, what],
                context=peak_context(a.peaks[arm, what], cfg, name),
                headline=(arm, what) == ("fresh, Glorot", "test_loss"))  # fmt: skip
        if (arm, "located") in a.peaks:
            p = a.peaks[arm, "located"]
            add(f"the single networks' test loss has a peak somewhere (located on a held-out "
                f"seed, tested on the others; {arm})", "Belkin et al. 2019, Fig. 3", p,
                context=peak_context(p, cfg, "test loss").replace("placed at", "located at"))  # fmt: skip
        if (arm, "proper") in a.peaks:
            add(f"the test loss peaks at n·k on the seeds that trained properly at every width ({arm})",
                "Belkin et al. 2019, Fig. 3 (optimization failure left out)", a.peaks[arm, "proper"],
                context=peak_context(a.peaks[arm, "proper"], cfg, "test loss"))  # fmt: skip
    for arm in arms:
        for what, name in (("ens_loss_jk", "test loss"),):
            if (arm, what) in a.peaks:
                add(f"the ensemble-averaged predictor's {name} still peaks at n·k ({arm}; "
                    "jackknife over seeds)",
                    "Geiger et al. 2020; d'Ascoli et al. 2020 (averaging removes the variance part)",
                    a.peaks[arm, what], context=peak_context(a.peaks[arm, what], cfg,
                                                             f"ensemble {name}"))  # fmt: skip
        if (arm, "var_term") in a.peaks:
            add(f"the initialization-variance term E‖f_s − f̄‖² peaks at n·k ({arm})",
                "Geiger et al. 2020; d'Ascoli et al. 2020", a.peaks[arm, "var_term"],
                context=peak_context(a.peaks[arm, "var_term"], cfg, "variance term"))  # fmt: skip
        test, r = rise_split(a, arm)
        out.append(Claim(
            f"averaging the seeds lowers the test-loss rise into n·k (the initialization-"
            f"variance part of the rise is > 0; {arm})",
            "Geiger et al. 2020; d'Ascoli et al. 2020", (_test(test),),
            context=(f"ensemble rise / single-network rise = {r.ratio:.2f} ({fieller(r)}; per "
                     "seed " + ", ".join(f"{v:.2f}" for v in r.per_seed) + "): near 0, "
                     "averaging removes the rise; near 1, it keeps it")
            if hasattr(r, "ratio") else "",
        ))  # fmt: skip
    for s in cfg.switches:
        arm = switch_arm(s)
        if (arm, "test_loss") not in a.peaks:
            continue
        w = cfg.last_reused(s)
        add(f"the test loss peaks where reuse switches off (last reused H = {w}; {arm})",
            "the reuse artifact: a peak that follows the switch", a.peaks[arm, "switch"],
            context=peak_context(a.peaks[arm, "switch"], cfg, "test loss"))  # fmt: skip
        step = switch_step(a, cfg, s)
        if step is not None:
            first = next(x for x in cfg.widths if not cfg.reused(x, s))
            out.append(Claim(
                f"the first fresh network after the switch (H = {first}) has a higher test loss "
                f"than the last reused one (H = {w}; {arm}; added after seeing the chains)",
                "the reuse artifact: a step up where reuse switches off", (step,),
            ))  # fmt: skip
        add(f"the test loss peaks at n·k ({where}; {arm})", "Belkin et al. 2019, Fig. 3",
            a.peaks[arm, "test_loss"], context=peak_context(a.peaks[arm, "test_loss"], cfg,
                                                            "test loss"))  # fmt: skip
    return out


def reading(a: Analysis, cfg: Config) -> str:
    """Which of reuse, initialization variance and interpolation makes the peak: the
    verdicts above, side by side (each sentence names its claim's verdict)."""
    pk, at = a.peaks, cfg.nk_width

    def v(key) -> str:
        p = pk.get(key)
        return "not run" if p is None else p.verdict

    lines = [f"The peak is placed at H = {at} (N nearest n·k) before every test."]
    fit = a.data[(a.data.condition == "fresh, Glorot") & (a.data.width == at)]
    if len(fit):
        lines.append(
            f"- **Interpolation.** Fresh Glorot networks at H = {at} end at train loss "
            f"{fmt(fit.train_loss.mean())} (train error {100 * fit.train_error.mean():.2g}%). "
            f"Their test-loss peak at n·k is **{v(('fresh, Glorot', 'test_loss'))}**, PyTorch "
            f"default's **{v(('fresh, default', 'test_loss'))}**, the zero readout's "
            f"**{v(('fresh, zero readout', 'test_loss'))}**, full-batch GD's "
            f"**{v((GD_ARM, 'test_loss'))}**: a peak at n·k without any reuse is what "
            "interpolation alone would make."
        )
    for arm in FRESH_ARMS:
        if (arm, "ens_loss_jk") in pk:
            test, r = rise_split(a, arm)
            ratio = (f"; the ensemble keeps {r.ratio:.2f} of the single networks' rise "
                     f"({fieller(r)})") if hasattr(r, "ratio") else ""  # fmt: skip
            lines.append(
                f"- **Initialization variance ({arm}).** The averaged predictor's peak at n·k is "
                f"**{v((arm, 'ens_loss_jk'))}**, the variance term's **{v((arm, 'var_term'))}**; "
                f"averaging lowers the rise: **{test.verdict}**{ratio}."
            )
    for s in cfg.switches:
        arm = switch_arm(s)
        if (arm, "switch") in pk:
            lines.append(
                f"- **Reuse, switched at {s:g}·n·k** (last reused H = {cfg.last_reused(s)}): "
                f"peak at the switch **{v((arm, 'switch'))}**, at n·k **{v((arm, 'test_loss'))}**."
            )
    lines += ["", conclusion(a, cfg)]
    lines.append(
        "\nReading rule, fixed before the runs: reuse makes the peak if it follows the switch "
        "(reproduced at the switch for 0.6 and 1.3·n·k, not at n·k there); initialization "
        "variance makes it if the single networks peak at n·k and the averaged predictor does "
        "not, with the variance term peaking; interpolation makes it if the averaged "
        "predictor of fresh networks still peaks at n·k."
    )
    return "\n".join(lines)


def _rise(p) -> str:
    """A placed peak's rise and fall with their 90% intervals."""
    if not isinstance(p, Peak):
        return "not testable"
    r, f = p.test.rise, p.test.fall
    return (f"rise {r.effect:+.3g} [{r.ci[0]:.3g}, {r.ci[1]:.3g}], fall {f.effect:+.3g} "
            f"[{f.ci[0]:.3g}, {f.ci[1]:.3g}]")  # fmt: skip


def conclusion(a: Analysis, cfg: Config) -> str:
    """The answer, one sentence per cause, each from the verdicts of the rule below."""
    pk = a.peaks
    verdict = {k: getattr(p, "verdict", "not tested") for k, p in pk.items()}
    out = ["**Answer**, from the verdicts (Glorot is Belkin et al.'s initialization):"]
    ends = [s for s in cfg.switches if s != 1.0]
    sw = [verdict.get((switch_arm(s), "switch"), "not run") for s in ends]
    nk = [verdict.get((switch_arm(s), "test_loss"), "not run") for s in ends]
    if "not run" in sw or "not tested" in sw + nk:
        out.append("- reuse: the switched chains have not all finished (or cannot be tested); "
                   "not decided.")  # fmt: skip
    else:
        follows = all(v == "reproduced" for v in sw) and all(v != "reproduced" for v in nk)
        never = all(v == "not reproduced" for v in sw)
        what = ("the peak follows the switch: reuse makes it" if follows else
                "no peak at the switch: reuse does not make one" if never else
                "the switch tests are mixed or inconclusive: not decided")  # fmt: skip
        out.append(
            f"- reuse: {what} (" + "; ".join(
                f"switch at {s:g}·n·k: at the switch {v} ({_rise(pk[switch_arm(s), 'switch'])}), "
                f"at n·k {w}" for s, v, w in zip(ends, sw, nk)) + ")."
        )  # fmt: skip
    steps = [(f, switch_step(a, cfg, f)) for f in cfg.switches]
    steps = [(f, t) for f, t in steps if t is not None and hasattr(t, "effect")]
    if steps:
        out.append(
            "- the step up from the last reused to the first fresh network (added after seeing "
            "the chains; Welch): " + "; ".join(
                f"at {f:g}·n·k {t.verdict} ({t.effect:+.3g} [{t.ci[0]:.3g}, {t.ci[1]:.3g}])"
                for f, t in steps) + "."
        )  # fmt: skip
    for arm in ("fresh, Glorot", f"fresh, {cfg.chain_init}"):
        out += _variance_lines(a, arm, verdict)
    return "\n".join(out)


def _variance_lines(a: Analysis, arm: str, verdict: dict) -> list[str]:
    """Initialization variance and interpolation for one fresh arm, from its verdicts."""
    single, ens = a.peaks.get((arm, "test_loss")), a.peaks.get((arm, "ens_loss_jk"))
    if single is None or ens is None:
        return [
            f"- {arm}: not all finished; initialization variance and interpolation not decided."
        ]
    test, r = rise_split(a, arm)
    out = [
        f"- {arm}: single networks at n·k {verdict[arm, 'test_loss']} ({_rise(single)}); "
        f"the averaged predictor at n·k {verdict[arm, 'ens_loss_jk']} ({_rise(ens)})."
    ]
    if verdict[arm, "test_loss"] == "not reproduced":
        out.append("  With no single-network peak at n·k there is nothing for averaging to "
                   "remove: neither initialization variance nor interpolation makes a peak at "
                   "n·k in this arm.")  # fmt: skip
    elif verdict[arm, "test_loss"] != "reproduced":
        out.append("  The single-network peak at n·k is not established, so neither "
                   "initialization variance nor interpolation can be named as its cause.")  # fmt: skip
    else:
        share = f" (the ensemble keeps {r.ratio:.2f}: {fieller(r)})" if hasattr(r, "ratio") else ""
        out.append(
            f"  Averaging lowers the rise: {test.verdict}{share}; "
            + ("interpolation alone makes a peak (the averaged predictor still peaks)."
               if verdict[arm, "ens_loss_jk"] == "reproduced" else
               "the averaged predictor's peak is not established, so the peak is "
               "initialization variance at the threshold, not the mean predictor's.")
        )  # fmt: skip
    return out


def failure_rows(data: pd.DataFrame, cfg: Config) -> list[dict]:
    """Per fresh arm and width: the seeds that trained properly, dead units, the train loss
    against the best at the width, one-class runs, beside the test loss."""
    out = []
    d = data[data.condition.isin([*FRESH_ARMS, *(switch_arm(s) for s in cfg.switches)])]
    d = d[d.status == "complete"].drop_duplicates(["condition", "config_hash"])
    for (arm, w), g in d.groupby(["condition", "width"], sort=True):
        if arm.startswith("reuse") and not g.reused.any():
            continue  # the fresh Glorot rows of a switch arm are listed under their own arm
        row = {"condition": arm, "H": int(w), "N/(n·k)": f"{cfg.n_params(int(w)) / cfg.threshold:.2f}",
               "train loss": mean_std(g.train_loss), "test loss": mean_std(g.test_loss),
               "test error": mean_std(g.test_error)}  # fmt: skip
        if "stuck" in g and g.stuck.notna().any():
            row.update({
                "best train loss at H": fmt(g.best_train_loss.iloc[0]),
                "dead units": mean_std(g.dead_units),
                "one class": int((g.top_class_share >= ONE_CLASS_SHARE).sum()),
                "trained properly": f"{int((g.stuck == 0).sum())}/{len(g)}",
            })  # fmt: skip
        if "ens_loss" in g and g.ens_loss.notna().any():
            row["ensemble test loss"] = fmt(g.ens_loss.iloc[0])
            row["ensemble (∞, jackknife)"] = mean_std(g.ens_loss_jk)
            row["ensemble test error"] = f"{100 * g.ens_error.iloc[0]:.1f}%"
        out.append(row)
    return out


STYLES = {
    "fresh, Glorot": dict(color="C0", marker="o", ms=4),
    "fresh, default": dict(color="C2", marker="s", ms=3),
    "fresh, zero readout": dict(color="C7", marker="^", ms=3),
    GD_ARM: dict(color="C4", marker="D", ms=3, ls=":"),
}


def sweep_figure(data: pd.DataFrame, cfg: Config) -> Figure:
    fig = Figure(figsize=(17, 4.8), layout="constrained")
    axes = fig.subplots(1, 4)
    ok = data[data.status == "complete"]
    panels = (("test_loss", "test loss, single networks (solid) and averaged (dashed)"),
              ("test_error", "test error (fraction)"), ("train_loss", "train loss"))  # fmt: skip
    for ax, (metric, title) in zip(axes, panels):
        for arm, style in STYLES.items():
            rows = ok[ok.condition == arm]
            if not len(rows):
                continue
            seed_band(ax, rows, "N", metric, label=arm, geometric=metric != "test_error", **style)
            ens = {"test_loss": "ens_loss", "test_error": "ens_error"}.get(metric)
            if ens and ens in rows and rows[ens].notna().any():
                m = rows.groupby("N")[ens].first().dropna()
                ax.plot(m.index, m.to_numpy(), ls="--", color=style["color"], lw=1,
                        label=f"{arm}: mean of {int(rows.ens_members.max())} seeds' outputs")  # fmt: skip
        ax.set_title(title, fontsize=9)
    ax = axes[3]
    for i, s in enumerate(cfg.switches):
        rows = ok[ok.condition == switch_arm(s)]
        color = f"C{i + 1}"
        for part, label in ((rows[rows.reused], switch_arm(s)), (rows[~rows.reused], "_nolegend_")):
            seed_band(ax, part, "N", "test_loss", label=label, geometric=True, color=color,
                      marker="o", ms=3)  # fmt: skip
        ax.axvline(s * cfg.threshold, color=color, ls=":", lw=1)
    ax.set_title(
        f"reuse chains switched to fresh {cfg.chain_init} networks (dotted: the switch)", fontsize=9
    )
    for ax in axes:
        ax.axvline(cfg.threshold, ls="--", color="0.3", label=f"N = n·k = {cfg.threshold:,}")
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters N (count)")
        ax.legend(fontsize=6)
    for ax in (axes[0], axes[2], axes[3]):
        ax.set_yscale("log")
    fig.suptitle(
        f"MNIST, n = {cfg.n_train:,}, 784→H→10 ReLU, squared loss summed over 10 outputs, "
        f"SGD lr {cfg.lr:g} momentum {cfg.momentum:g} batch {cfg.batch_size}, {cfg.epochs} epochs "
        f"(GD: {cfg.gd_epochs} steps, lr {cfg.gd_lr:g}); mean ± std over seeds"
    )
    tidy_log_axes(fig)
    return fig


def figures(a: Analysis, cfg: Config) -> list[tuple[Figure, str, str]]:
    return [(
        sweep_figure(a.data, cfg), "belkin_cause.png",
        "Test loss, test error and train loss against N for fresh networks of three "
        "initializations (SGD) and Glorot under full-batch GD, with the averaged predictor of "
        "each arm's seeds (dashed); right: the reuse chains switched to fresh networks of their initialization at "
        "0.6, 1.0 and 1.3·n·k (the line breaks at the switch). Dashed grey: N = n·k.",
    )]  # fmt: skip


DATA_COLUMNS = (
    "condition", "width", "N", "seed", "reused", "optimizer", "status", "config_hash",
    "train_loss", "train_error", "test_loss", "test_error", "weight_norm", "dist_from_init",
    "dead_units", "top_class_share", "best_train_loss", "stuck", "ens_members", "ens_loss",
    "ens_error", "ens_loss_jk", "var_term", "wall_time_s",
)  # fmt: skip


def extras(report: Report, a: Analysis, cfg: Config) -> None:
    if a.missing:
        report.add_text(
            f"**Partial.** {a.missing} planned runs are not in the store yet; the claims and "
            "tables use the runs that finished, and an arm that has not started is left out. "
            "The sweep resumes where it stopped (runs by config hash, an ensemble in flight "
            f"from its last checkpoint, every {cfg.checkpoint_epochs} epochs): "
            "`python experiments/belkin_cause.py --scale small --out out/belkin-cause`.",
            heading="Status",
        )
    report.add_text(reading(a, cfg), heading="What makes the peak")
    report.add_table(
        failure_rows(a.data, cfg),
        heading="Optimization failure and generalization, per width",
        caption=(
            f"Mean ± std over seeds. A run is counted as not trained properly when its train "
            f"loss has not gone {STUCK_SHARE:.0%} of the way from the constant predictor's "
            f"{TRIVIAL_LOSS:g} to the best train loss of any run at its width, when half its "
            f"hidden units are dead (never active on a training digit), or when one class takes "
            f"{ONE_CLASS_SHARE:.0%} of the test digits. Ensemble: the predictor averaged over "
            "the seeds' outputs; '∞, jackknife': the pseudo-values' mean ± std, an unbiased "
            "estimate of the infinite ensemble's loss."
        ),
    )
    report.add_text(
        "Every run: constant step size (no decay at any width, unlike belkin-network, so "
        "that the schedule does not change at n·k). Glorot: weights U(±√(6/(fan_in + "
        "fan_out))), zero biases. Default: PyTorch's nn.Linear draw. Zero readout: "
        "belkin-network's (PyTorch's hidden weights, +0.1 hidden biases, readout 0). Reuse "
        f"links: a fresh {cfg.chain_init} network at H = {cfg.chain_widths[0]}, then each width "
        "starts from the "
        f"previous trained network, its new weights from N(0, {cfg.reuse_noise:g}²) and new "
        "biases 0 (RunConfig.init_from_noise).",
        heading="Protocol",
    )
    report.add_data(a.data[[c for c in DATA_COLUMNS if c in a.data]], "runs.csv")


SPEC = Spec(NAME, TITLE, PAPER, CONFIGS, plan, analyze, claims, figures, extras)
