"""Curvature probes inside anyone's training loop: :class:`CurvatureTracker`.

A tracker holds a fixed probe set and, every ``every`` optimizer steps, measures
on it (full-data means over the probe set, in chunks):

- ``lambda_max``: λ_max(H) by Lanczos (:func:`implicit_reg.probes.lanczos`),
  started from the previous probe's eigenvector (mixed with a small seeded
  random direction, :func:`implicit_reg.probes.registry.warm_start_vector`)
  and *certified*: the row carries the residual ‖Hv − λv‖ of the Ritz pair
  (one explicit HVP), so a true eigenvalue of H lies within that distance of
  the logged λ (for any unit v, min_i |λ_i − vᵀHv| ≤ ‖Hv − (vᵀHv)v‖), and
  whether Lanczos met its tolerance (√ε of the dtype relative to ‖H‖). With ``top_k`` = k > 1 the
  same run also gives λ_2..λ_k.
- ``trace``: tr(H) by Hutch++ (Meyer et al., SOSA 2021) with its standard error.
- ``ggn_lambda_max``: λ_max of the generalized Gauss–Newton matrix
  (:class:`implicit_reg.probes.GGNOperator`), warm-started and certified the same way.
- ``grad_norm_sq``: ‖∇L(θ)‖², the implicit regularizer of GD (Barrett &
  Dherin, ICLR 2021); ``loss``: L(θ) on the probe set (same pass).
- ``weight_norm``: ‖θ‖₂; ``dist_from_init``: ‖θ − θ₀‖₂, θ₀ the weights
  when the tracker was built.
- ``preconditioned_lambda_max``: with an adaptive ``optimizer`` (Adam, AdamW,
  RMSprop), λ_max(P⁻¹H) with P the diagonal the optimizer's last step divided
  by (:func:`implicit_reg.probes.preconditioned_sharpness`; Cohen et al. 2022,
  arXiv 2207.14484), warm-started and certified like λ_max, beside its
  stability threshold ``preconditioned_threshold``
  (:func:`implicit_reg.probes.adaptive_eos_threshold`, 38/η for Adam at
  β₁ = 0.9). NaN before the optimizer's first step (no P yet). Measured by
  default whenever an adaptive optimizer is given.

Every probe leaves the model exactly as found: parameters, ``.grad``,
train/eval mode, buffers (BatchNorm statistics) and the global RNG
(:func:`implicit_reg.probes.preserved`), so the training run is bit for bit
the one it would have been without the tracker.

Bad input. Probe data or a loss the probes cannot use (a NaN or inf in the
data, a non-scalar loss, an empty probe set, no trainable parameters) is a
``ValueError`` from the constructor, before training. A probe that fails later
(the loss became NaN as the training diverged, say) is logged as a warning on
the ``implicit_reg.integrations.tracker`` logger with its reason, kept in
``failures`` (``{"step", "error"}``), and skipped (:meth:`step` returns None),
and the training goes on; the next probe is due ``every`` steps later.

Compute budget. With ``budget`` = b the tracker spaces its probes so that the
time spent probing stays within b times the time spent training, counted from
the first call: a probe that is due by ``every`` runs only when

    P ≤ b·T,

P the seconds probed so far, T the seconds trained so far (wall time since
the first call, less P). The first probe (step 0) runs at once. So at any
time P ≤ b·T + c, c the cost of one probe: the overhead P/T is at most b plus
one probe's cost amortized over the run, whatever the probes cost (a cold
Lanczos start costs several warm ones). The one-time cost of the first HVP in
a process (torch.func imports, seconds) is paid in the constructor, before
training (``setup_seconds``). ``budget=None`` probes exactly every ``every``
steps (deterministic steps; the cost is still recorded).

Under DDP (``torch.distributed``). Give the tracker the DDP-wrapped model (or
the module inside) and ``process_group`` (a ``ProcessGroup``, or ``"auto"``
for the default group): every rank measures its own shard of the probe set
(``shard=True`` cuts it from a probe set every rank holds in full,
:func:`implicit_reg.probes.distributed.shard_rows`) and the products are
summed over the ranks, so every rank logs the full-probe-set numbers of a
single process (:mod:`implicit_reg.probes.distributed`). The probes measure
the module inside the wrapper on detached copies of its parameters, so no DDP
hook or DDP collective runs during a probe; the model, ``.grad`` and RNG are
left as found on every rank. Whether a probe is due under the budget reads a
clock, so rank 0 decides and tells the others (one all-reduce per due step);
every rank must call :meth:`step` at every step. A probe that fails on one rank
fails on all, and all go on training. Without ``process_group`` each rank
measures its own probe data on its own, with no communication.

Example::

    tracker = CurvatureTracker(model, nn.CrossEntropyLoss(), (X_probe, y_probe), every=10)
    for t, (x, y) in enumerate(loader):
        tracker.step(t)                       # θ_t, before the t-th update, when due
        opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
    tracker.finish()                          # stop the training clock
    tracker.table()                           # one row per probe (pandas)
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ..probes import (
    GGNOperator,
    HessianOperator,
    PreconditionedOperator,
    adaptive_eos_threshold,
    dist_from_init,
    hutchpp,
    lanczos,
    preserved,
    weight_norms,
)
from ..probes.batches import BatchLoss
from ..probes.distributed import shard_ranks, shard_rows, unwrap
from ..probes.registry import WARM_KEYS, warm_start_vector
from ..probes.selection import Selection
from ..probes.state import DEFAULT_MODE, check_mode

__all__ = ["MEASURES", "DEFAULT_EVERY", "DEFAULT_BUDGET", "CurvatureTracker"]

logger = logging.getLogger(__name__)

#: measures a tracker can take (named as in :data:`implicit_reg.probes.PROBES` where it has
#: them); all those that apply are measured by default (``measures=None``)
MEASURES = (
    "loss",
    "lambda_max",
    "trace",
    "ggn_lambda_max",
    "grad_norm_sq",
    "weight_norm",
    "dist_from_init",
    "preconditioned_lambda_max",
)
#: warm-start key of the preconditioned sharpness (the others are in ``WARM_KEYS``)
PRECONDITIONED_KEY = "preconditioned_lambda_max.vec"
#: probe at most once per this many optimizer steps
DEFAULT_EVERY = 10
#: at most 10% of the training time is spent probing
DEFAULT_BUDGET = 0.1


def _is_adaptive(optimizer) -> bool:
    """Whether ``optimizer`` has a preconditioner the probe reads (Adam, AdamW, RMSprop)."""
    if optimizer is None:
        return False
    try:
        adaptive_eos_threshold(optimizer)
    except ValueError:
        return False
    return True


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


class CurvatureTracker:
    """Measures curvature on a fixed probe set every ``every`` steps, within a time budget.

    Args:
        model: the model being trained (measured in place, left as found).
        loss_fn: mean-reduced ``loss_fn(model(inputs), targets)``; None when
            ``batch_loss`` is given.
        probe_data: the fixed probe set: a pair of tensors ``(X, y)`` or a
            re-iterable of ``(inputs, targets)`` batches (inputs a tensor,
            tuple or dict), or of any batches with ``batch_loss``. Keep it
            small: every probe passes over it many times (one pass per HVP).
        every: probe at most once per ``every`` steps.
        measures: names from :data:`MEASURES`; None: every one that applies
            (no ``ggn_lambda_max`` with ``batch_loss``; ``preconditioned_lambda_max``
            only with an adaptive ``optimizer``).
        optimizer: the training optimizer, read (never changed) by
            ``preconditioned_lambda_max``: a ``torch.optim.Adam``, ``AdamW`` or
            ``RMSprop``; others are ignored when ``measures=None``.
        budget: most probing time per unit of training time (0.1: 10%), or
            None for no limit.
        top_k: eigenvalues of H the ``lambda_max`` probe computes (columns
            ``lambda_2`` ... ``lambda_k`` beside ``lambda_max``).
        chunk_size: rows per chunk of a tensor pair (peak memory); None: one chunk.
        batch_loss: ``(model, batch) -> (mean loss, batch size)`` for batches
            that are not ``(inputs, targets)``, e.g. a model that computes its
            own loss (:func:`implicit_reg.integrations.huggingface.model_loss`).
        mode: ``"eval"`` (default: dropout off, BatchNorm running statistics)
            or ``"train"`` (dropout masks drawn from ``seed``, the same on every
            pass; BatchNorm chunk statistics).
        seed: seeds Lanczos's first start vector, the warm-start mixing and
            Hutch++'s probe vectors (the same vectors at every probe).
        trace_hvps: Hutch++ budget in HVPs.
        lanczos_tol: residual tolerance relative to ‖H‖; None: √ε of the dtype.
        lanczos_max_iter: most Lanczos steps; None: Lanczos's default.
        params: the parameters the curvature measures see
            (:mod:`implicit_reg.probes.selection`); None: all trainable ones.
        clock: the timer (seconds); tests inject a fake one.
        process_group: None (one process, or each rank on its own); a
            ``torch.distributed`` ``ProcessGroup`` or ``"auto"`` (the default
            group when initialized): each rank holds a shard of the probe set and
            the measures are of the whole of it (see "Under DDP" above).
        shard: ``probe_data`` is the whole probe set, the same on every rank:
            keep only this rank's part (contiguous rows of a pair, every W-th
            batch of a list). Needs ``process_group``.

    Attributes:
        rows: one dict per probe: ``step``, the measures, their certificates
            (``lambda_max_residual``, ``lambda_max_converged``,
            ``lambda_max_hvps``, ``trace_stderr``, ...), ``probe_seconds``
            (this probe's cost) and ``overhead`` (probing / training time so far;
            NaN for a probe before any training).
        probe_seconds: total seconds spent probing.
        setup_seconds: the constructor's one product (checks the data, and pays
            torch.func's one-time imports before training, outside the budget).
        init_state: θ₀, the trainable parameters when the tracker was built.
        state: warm-start vectors kept between probes (keys
            :data:`implicit_reg.probes.WARM_KEYS`, as :func:`run_probes` uses,
            and :data:`PRECONDITIONED_KEY`).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None,
        probe_data,
        *,
        every: int = DEFAULT_EVERY,
        measures: Sequence[str] | None = None,
        budget: float | None = DEFAULT_BUDGET,
        optimizer: torch.optim.Optimizer | None = None,
        top_k: int = 1,
        chunk_size: int | None = None,
        batch_loss: BatchLoss | None = None,
        mode: str = DEFAULT_MODE,
        seed: int = 0,
        trace_hvps: int = 30,
        lanczos_tol: float | None = None,
        lanczos_max_iter: int | None = None,
        params: Selection = None,
        clock: Callable[[], float] = time.perf_counter,
        process_group=None,
        shard: bool = False,
    ):
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
        model = unwrap(model)  # DDP: the module inside, so no DDP hook fires in a probe
        self._ranks = shard_ranks(process_group)
        if shard:
            if self._ranks is None:
                raise ValueError("shard=True needs process_group (a ProcessGroup or 'auto')")
            probe_data = shard_rows(probe_data, self._ranks.group)
        adaptive = _is_adaptive(optimizer)
        if measures is None:
            measures = [
                m
                for m in MEASURES
                if not (m == "ggn_lambda_max" and batch_loss is not None)
                and not (m == "preconditioned_lambda_max" and not adaptive)
            ]
        if isinstance(measures, str):
            measures = [measures]
        measures = list(measures)
        unknown = [m for m in measures if m not in MEASURES]
        if unknown or not measures:
            raise ValueError(
                f"unknown or no measure(s) {unknown or measures}; valid: {', '.join(MEASURES)}"
            )
        if "ggn_lambda_max" in measures and batch_loss is not None:
            raise ValueError(
                "measure 'ggn_lambda_max' needs the model's outputs: give loss_fn and "
                "(inputs, targets) probe data instead of batch_loss, or leave it out of measures"
            )
        if "preconditioned_lambda_max" in measures and not adaptive:
            raise ValueError(
                "measure 'preconditioned_lambda_max' needs optimizer= a torch.optim.Adam, AdamW "
                f"or RMSprop (the one training the model), got {type(optimizer).__name__}"
            )
        if budget is not None and (
            isinstance(budget, bool)
            or not isinstance(budget, (int, float))
            or not math.isfinite(budget)
            or budget <= 0
        ):
            raise ValueError(f"budget must be a finite number > 0 or None, got {budget!r}")
        if trace_hvps is not None:
            _positive_int("trace_hvps", trace_hvps)
            if trace_hvps < 4:
                raise ValueError(f"trace_hvps must be >= 4 (Hutch++), got {trace_hvps}")
        if not callable(clock):
            raise ValueError("clock must be a function returning seconds")
        self.model, self.loss_fn, self.probe_data = model, loss_fn, probe_data
        self.batch_loss = batch_loss
        self.every = _positive_int("every", every)
        self.top_k = _positive_int("top_k", top_k)
        self.measures = measures
        self.optimizer = optimizer if adaptive else None
        self.budget = None if budget is None else float(budget)
        self.mode = check_mode(mode)
        self.chunk_size, self.seed, self.params = chunk_size, seed, params
        self.trace_hvps = trace_hvps
        self.lanczos_tol, self.lanczos_max_iter = lanczos_tol, lanczos_max_iter
        self.clock = clock
        self.init_state = {
            k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad
        }
        if not self.init_state:
            raise ValueError("the model has no trainable parameters (requires_grad=True)")
        self.state: dict[str, Tensor] = {}
        self.rows: list[dict] = []
        self.failures: list[dict] = []  # {"step", "error"} of each probe that raised
        self.probe_seconds = 0.0
        self._start: float | None = None
        self._end: float | None = None
        self._last_step: int | None = None
        self._calls = 0
        # Fail now, not at the first probe, on data the operator cannot read; and pay the
        # one-time cost of the first batched product (torch.func imports torch._dynamo and
        # sympy on first use, seconds) here, before training, not inside the budget.
        t0 = clock()
        op = self._operator("hessian")
        op.matmat(torch.zeros(op.dim, 1, dtype=op.dtype, device=op.device))
        self.setup_seconds = max(clock() - t0, 0.0)

    # ------------------------------------------------------------------ timing
    def train_seconds(self, now: float | None = None) -> float:
        """Seconds of training so far: wall time from the first call (to :meth:`finish`, once
        called), less probing."""
        if self._start is None:
            return 0.0
        if now is None:
            now = self.clock() if self._end is None else self._end
        return max(now - self._start - self.probe_seconds, 0.0)

    @property
    def overhead(self) -> float:
        """Probing time / training time so far (NaN before any training time)."""
        t = self.train_seconds()
        return self.probe_seconds / t if t > 0 else (0.0 if self.probe_seconds == 0 else math.nan)

    def finish(self) -> None:
        """Stop the training clock (the end of training); a later :meth:`step` restarts it."""
        if self._start is not None:
            self._end = self.clock()

    def due(self, step: int, now: float | None = None) -> bool:
        """Whether a probe at ``step`` respects ``every`` and the budget."""
        if self._last_step is not None and step - self._last_step < self.every:
            return False
        if self.budget is None:
            return True
        return self.probe_seconds <= self.budget * self.train_seconds(now)

    # ------------------------------------------------------------------- probes
    def step(self, step: int | None = None) -> dict | None:
        """Call once per optimizer step; probes when due and returns the row, else None.

        ``step`` is the number of optimizer steps taken so far (default: the
        number of earlier calls). The first call starts the training clock.
        """
        if step is None:
            step = self._calls
        self._calls += 1
        now = self.clock()
        if self._end is not None:  # training went on after finish(): count the gap as training
            self._end = None
        if self._start is None:
            self._start = now
        due = self.due(step, now)
        scheduled = self._last_step is None or step - self._last_step >= self.every
        if self._ranks is not None and self.budget is not None and scheduled:
            due = self._ranks.first_decides(due)  # a clock decides: rank 0's, on every rank
        if not due:
            return None
        return self._probe(step, now)

    def measure(self, step: int) -> dict | None:
        """Probe now (whatever the schedule), record the row and return it (None if the
        probe failed: the reason is logged and kept in ``failures``)."""
        now = self.clock()
        if self._start is None:
            self._start = now
        return self._probe(step, now)

    def _probe(self, step: int, now: float) -> dict | None:
        trained = self.train_seconds(now)  # training time up to this probe
        try:
            with preserved(self.model), torch.enable_grad():
                row = {"step": int(step), **self._measure()}
        except Exception as err:  # noqa: BLE001 - a failed probe must not end the training
            row = None
            reason = f"{type(err).__name__}: {err}"
            self.failures.append({"step": int(step), "error": reason})
            logger.warning("curvature probe at step %d failed (training goes on): %s", step, reason)
        cost = max(self.clock() - now, 0.0)
        self.probe_seconds += cost
        self._last_step = int(step)
        if row is None:
            return None
        row["probe_seconds"] = cost
        # probing / training time so far; NaN for a probe before any training (step 0)
        row["overhead"] = self.probe_seconds / trained if trained > 0 else math.nan
        self.rows.append(row)
        return row

    def table(self):
        """The rows as a pandas ``DataFrame``, one row per probe."""
        import pandas as pd

        return pd.DataFrame(self.rows)

    # ---------------------------------------------------------------- internals
    def _operator(self, curvature: str):
        kw = dict(
            chunk_size=self.chunk_size, mode=self.mode, seed=self.seed, params=self.params,
            process_group=None if self._ranks is None else self._ranks.group,
        )  # fmt: skip
        if curvature == "ggn":
            return GGNOperator(self.model, self.loss_fn, self.probe_data, **kw)
        return HessianOperator(
            self.model, self.loss_fn, self.probe_data, batch_loss=self.batch_loss, **kw
        )

    def _eig(self, op, name: str, k: int) -> dict:
        key = WARM_KEYS.get(name, PRECONDITIONED_KEY)
        v0 = warm_start_vector(self.state.get(key), op.dim, seed=self.seed, device=op.device)
        res = lanczos(
            op, min(k, op.dim), tol=self.lanczos_tol, max_iter=self.lanczos_max_iter,
            seed=self.seed, v0=v0,
        )  # fmt: skip
        self.state[key] = res.eigenvectors.detach().to("cpu", op.dtype).clone()
        out = {
            name: float(res.eigenvalues[0]),
            f"{name}_residual": float(res.residuals[0]),
            f"{name}_converged": bool(res.converged),
            f"{name}_hvps": int(res.n_hvp),
        }
        for i in range(1, len(res.eigenvalues)):
            out[f"lambda_{i + 1}"] = float(res.eigenvalues[i])
            out[f"lambda_{i + 1}_residual"] = float(res.residuals[i])
        return out

    def _measure(self) -> dict:
        m = self.measures
        out: dict = {}
        need_h = {"loss", "grad_norm_sq", "lambda_max", "trace"} & set(m)
        op = self._operator("hessian") if need_h else None
        if "loss" in m or "grad_norm_sq" in m:
            loss, g = op.loss_and_gradient()
            if "loss" in m:
                out["loss"] = float(loss)
            if "grad_norm_sq" in m:
                g = g.double()
                out["grad_norm_sq"] = float(g @ g)
        if "lambda_max" in m:
            out.update(self._eig(op, "lambda_max", self.top_k))
        if "trace" in m:
            tr = hutchpp(op, n_hvp=self.trace_hvps, seed=self.seed)
            out["trace"], out["trace_stderr"] = float(tr.estimate), float(tr.stderr)
        if "ggn_lambda_max" in m:
            out.update(self._eig(self._operator("ggn"), "ggn_lambda_max", 1))
        if "weight_norm" in m:
            out["weight_norm"] = weight_norms(self.model)["total"]
        if "dist_from_init" in m:
            out["dist_from_init"] = dist_from_init(self.model, self.init_state)
        if "preconditioned_lambda_max" in m:
            out.update(self._preconditioned(op or self._operator("hessian")))
        return out

    def _preconditioned(self, op) -> dict:
        name, opt = "preconditioned_lambda_max", self.optimizer
        out = {"preconditioned_threshold": adaptive_eos_threshold(opt)}
        named = dict(self.model.named_parameters())
        if not all("step" in opt.state.get(named[n], {}) for n in op.names):
            nan = float("nan")  # before the first step the optimizer has no P
            return {name: nan, f"{name}_residual": nan, f"{name}_converged": False,
                    f"{name}_hvps": 0, **out}  # fmt: skip
        out.update(self._eig(PreconditionedOperator.from_optimizer(op, opt), name, 1))
        return out
