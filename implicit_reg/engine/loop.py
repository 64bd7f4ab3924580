"""The one training loop: the schedule of every run, alone or as an ensemble member.

:func:`train_loop` drives a stepper (:mod:`implicit_reg.engine.steppers`) through
the schedule its runs share:

- evaluation of :data:`~implicit_reg.engine.config.BASE_METRICS` at step 0, every
  ``eval_every`` steps and at the end, and of the losses and error rates alone
  every ``error_every`` steps in between (light evaluations, forward passes only);
- the probes of ``probes`` (:func:`implicit_reg.probes.run_probes`) every
  ``probe_every`` steps (0: never during training) and always at the end, on
  each member's own model, with one warm-start ``state`` dict per member when
  ``run_probes`` takes one;
- stopping, per member: the step budget (``steps`` and/or ``epochs``, the
  smaller wins); ``target_train_loss``, checked against the full training
  loss at every full-batch step (the loss L(θ_t) that step computed) and at
  every evaluation; divergence (:func:`is_diverged`): a NaN/inf loss or one
  above ``max_loss`` ends the member with status ``"diverged"`` and
  ``diverged_at`` = the step whose loss it was. A probe that raises fails its
  member only (status ``"failed"``), unless ``raise_errors``.
- checkpoints (:class:`~implicit_reg.engine.checkpoint.Checkpoints`, placed by
  :func:`~implicit_reg.engine.checkpoint.mid_run_checkpoints`): every ``checkpoint_every`` steps the
  stepper's state (model, optimizer, data order), every member's record so
  far (history, status, probe state) and the global RNG state are saved
  atomically. :func:`train_loop` called again with the same checkpoints
  continues from the last one, and the run ends exactly as an uninterrupted
  one would (same floating-point operations on the same values). When the
  loop ends, the last ``keep_checkpoints`` files are kept.
- losses: ``stepper.step()`` returns each live member's batch loss L(θ_t) as a
  float or a tensor on the model's device (a dict member → loss, or one 1-D
  tensor over ``stepper.live``). The loop keeps them there and reads them, in
  step order, at most ``sync_every`` steps apart and always before an
  evaluation, a probe, a checkpoint and the end of the budget (one host
  transfer per member, not one per step). A member whose loss at step t
  diverged is recorded as diverging at t wherever it is read; until the read
  it trains on for at most ``sync_every − 1`` steps (their results are
  dropped; the live members' numbers do not depend on ``sync_every``). The
  full-batch ``target_train_loss`` and ``checkpoint=True`` read every step.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .checkpoint import Checkpoints, to_bytes
from .config import BASE_METRICS, RunConfig
from .record import RunResult, build_summary, failed_result

__all__ = [
    "Track",
    "SYNC_EVERY",
    "is_diverged",
    "step_budget",
    "train_loop",
    "results_of",
]


def is_diverged(loss: float, bound: float) -> bool:
    """The divergence rule: a NaN or infinite loss, or one above ``bound`` (``max_loss``)."""
    return not math.isfinite(loss) or loss > bound


#: the most optimizer steps between two reads of the losses by the host (:func:`train_loop`)
SYNC_EVERY = 32


def step_budget(config: RunConfig, n_train: int) -> tuple[int, int]:
    """``(total steps, steps per epoch)``: the smaller of ``steps`` and
    ``epochs × ⌈N/B⌉`` (full batch: one step per epoch)."""
    per_epoch = 1 if config.batch_size is None else math.ceil(n_train / config.batch_size)
    budgets = []
    if config.steps is not None:
        budgets.append(config.steps)
    if config.epochs is not None:
        budgets.append(config.epochs * per_epoch)
    return min(budgets), per_epoch


@dataclass
class Track:
    """One run's record inside the loop."""

    config: RunConfig
    history: list[dict[str, Any]] = field(default_factory=list)
    status: str = "complete"
    stop_reason: str = "budget"
    diverged_at: int | None = None
    diverged_loss: float | None = None
    step: int = 0
    last_probe: int | None = None
    error: str | None = None
    probe_state: dict[str, Any] = field(default_factory=dict)  # run_probes' warm starts

    def log(self, step: int, values: dict[str, float]) -> None:
        self.history.extend(
            {"step": step, "metric": k, "value": float(v)} for k, v in values.items()
        )

    def diverge(self, step: int, loss: float) -> None:
        self.status = self.stop_reason = "diverged"
        self.diverged_at, self.diverged_loss = step, loss

    def fail(self, error: str) -> None:
        self.status = self.stop_reason = "failed"
        self.error = error

    def state_dict(self) -> dict[str, Any]:
        return {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "config"
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def _probes_take_state() -> bool:
    from ..probes import run_probes

    return "state" in inspect.signature(run_probes).parameters


def train_loop(
    stepper,
    tracks: Sequence[Track],
    *,
    budget: int,
    loss_fn,
    checkpoints: Checkpoints | None = None,
    checkpoint_extra: dict[str, Any] | None = None,
    raise_errors: bool = False,
    sync_every: int = 1,
) -> None:
    """Train the stepper's members for at most ``budget`` steps through their shared
    schedule, filling ``tracks`` (one per member, in member order); see the module
    docstring. ``checkpoint_extra`` is stored in every checkpoint beside the state.
    ``sync_every``: the most steps between two reads of the losses (module docstring,
    "losses"); 1 reads every step's loss at that step."""
    if isinstance(sync_every, bool) or not isinstance(sync_every, int) or sync_every < 1:
        raise ValueError(f"sync_every must be an integer >= 1, got {sync_every!r}")
    _Schedule(stepper, list(tracks), budget, loss_fn, raise_errors, sync_every).run(
        checkpoints, checkpoint_extra or {}
    )


def _loss_table(pending: list, live: list[int]) -> dict[int, list[float]]:
    """Each live member's losses, in step order, from what ``stepper.step()`` returned at
    each step since the last sync: a dict member → loss (a float or a 0-dim tensor), or
    one 1-D tensor over the live members in ``live`` order. One host transfer per member
    (per sync for the 1-D form)."""
    with torch.no_grad():
        if isinstance(pending[0], torch.Tensor):
            rows = torch.stack(pending).tolist()  # [steps][live members]
            return {m: [row[j] for row in rows] for j, m in enumerate(live)}
        table = {}
        for m in live:
            column = [losses[m] for losses in pending if m in losses]
            if column and isinstance(column[0], torch.Tensor):
                column = torch.stack(column).tolist()
            table[m] = [float(v) for v in column]
        return table


class _Schedule:
    """The state of one :func:`train_loop` call: the stepper, the tracks, the step."""

    def __init__(
        self, stepper, tracks: list[Track], budget: int, loss_fn, raise_errors: bool,
        sync_every: int = 1,
    ):  # fmt: skip
        self.stepper, self.tracks, self.budget = stepper, tracks, budget
        self.loss_fn, self.raise_errors = loss_fn, raise_errors
        self.cfg = tracks[0].config  # the schedule's fields are shared by all members
        self.probe_names = [p for p in self.cfg.probes if p not in BASE_METRICS]
        self.with_state = bool(self.probe_names) and _probes_take_state()
        self.hashes = [t.config.config_hash() for t in tracks]
        self.step = 0
        self.sync_every = sync_every
        self.checkpoint_every = 0
        self.pending: list = []  # what stepper.step() returned since the last sync
        self.next_sync = 0

    def run(self, checkpoints: Checkpoints | None, extra: dict[str, Any]) -> None:
        self.checkpoint_every = checkpoints.every if checkpoints is not None else 0
        if any(
            t.config.checkpoint
            or (self.cfg.batch_size is None and t.config.target_train_loss is not None)
            for t in self.tracks
        ):
            # every loss is read at its own step: the full-batch target stops a run at the
            # step that reached it, and the checkpoint.pt of a diverged run holds the state
            # it stopped with (a mid-run checkpoint step is a sync step anyway)
            self.sync_every = 1
        saved = checkpoints.latest(self.hashes) if checkpoints is not None else None
        if saved is not None:
            self.resume(saved)
        else:
            self.start()
        self.next_sync = self.due_sync()
        while self.stepper.live and self.step < self.budget:
            self.advance()
            if checkpoints is not None and self.step % checkpoints.every == 0 and self.stepper.live:
                checkpoints.save(self.step, {**self.state(), **extra})
        for i, track in enumerate(self.tracks):
            if track.status == "complete" and track.last_probe != track.step:
                self.probe(i, track.step)  # the probes always run at the end
        if checkpoints is not None:
            checkpoints.finish()

    def start(self) -> None:
        """Step 0: evaluate (and probe, with ``probe_every``) every member."""
        reached: set[int] = set()
        stopped = []
        for i, values in self.stepper.evaluate(list(self.stepper.live)).items():
            self.tracks[i].log(0, values)
            if self.cfg.probe_every:
                self.probe(i, 0)
            if self.tracks[i].status != "failed" and self.check(
                i, 0, values["train_loss"], reached
            ):
                stopped.append(i)
        self.stop_at_target(reached)
        self.stepper.retire(stopped)

    def advance(self) -> None:
        """One step of every live member; at a sync step (:meth:`due_sync`) the losses
        since the last one are read and checked, then evaluation, probes and stopping."""
        try:
            self.pending.append(self.stepper.step())  # losses stay on the device until sync
        except Exception:
            if self.pending:  # a member that diverged since the last sync may be the cause
                self.sync()
                if not self.stepper.live:
                    return
            raise
        self.step += 1
        if self.step < self.next_sync:
            return
        reached = self.sync()
        step = self.step
        due = step % self.cfg.eval_every == 0 or step == self.budget or step in self.cfg.eval_at
        light = bool(self.cfg.error_every) and step % self.cfg.error_every == 0
        to_eval = [i for i in self.stepper.live if due or light or i in reached]
        if to_eval:
            stopped = []
            full = due or any(i in reached for i in to_eval)  # a member that stops: all metrics
            evaluated = (
                self.stepper.evaluate(to_eval)
                if full
                else self.stepper.evaluate(to_eval, light=True)
            )
            for i, values in evaluated.items():
                self.tracks[i].log(step, values)
                if self.check(i, step, values["train_loss"], reached):
                    stopped.append(i)
            reached -= set(stopped)
            self.stepper.retire(stopped)
        if self.cfg.probe_every and step % self.cfg.probe_every == 0:
            for i in list(self.stepper.live):
                self.probe(i, step)
        self.stop_at_target(reached)

    def due_sync(self) -> int:
        """The next step at which the losses are read: after ``sync_every`` steps, and
        at every evaluation, probe and checkpoint step and at the end of the budget."""
        step, due = self.step, [self.budget, self.step + self.sync_every]
        for every in (
            self.cfg.eval_every,
            self.cfg.error_every,
            self.cfg.probe_every,
            self.checkpoint_every,
        ):
            if every:
                due.append((step // every + 1) * every)
        due += [s for s in self.cfg.eval_at if s > step][:1]
        return min(due)

    def sync(self) -> set[int]:
        """Read the losses of the steps since the last sync (one host transfer per
        member), in step order: a member whose loss at step t diverged
        (:func:`is_diverged`) ends there (``diverged_at`` = t, its last good step t);
        the others have trained to the current step. Returns the members whose
        full-batch loss reached ``target_train_loss`` (read at every step then)."""
        first = self.step - len(self.pending)  # the iterate θ_first gave the first loss
        live = list(self.stepper.live)
        table = _loss_table(self.pending, live)
        self.pending = []
        self.next_sync = self.due_sync()
        reached, stopped = set(), []
        for i in live:
            track = self.tracks[i]
            bound, target = track.config.max_loss, track.config.target_train_loss
            if not table[i]:
                continue
            for j, loss in enumerate(table[i]):
                if is_diverged(loss, bound):
                    track.diverge(first + j, loss)  # the step whose loss it was
                    track.step = first + j
                    stopped.append(i)
                    break
            else:
                track.step = self.step
                last = table[i][-1]
                if self.cfg.batch_size is None and target is not None and last <= target:
                    reached.add(i)  # the full-batch loss L(θ_t) reached the target
        self.stepper.retire(stopped)
        return reached

    def check(self, i: int, step: int, loss: float, reached: set[int]) -> bool:
        """Divergence and target of member i at an evaluated loss; True if it diverged."""
        c = self.tracks[i].config
        if is_diverged(loss, c.max_loss):
            self.tracks[i].diverge(step, loss)
            return True
        if c.target_train_loss is not None and loss <= c.target_train_loss:
            reached.add(i)
        return False

    def stop_at_target(self, reached: set[int]) -> None:
        done = [i for i in reached if i in self.stepper.live]
        for i in done:
            self.tracks[i].stop_reason = "target_train_loss"
        self.stepper.retire(done)

    def probe(self, i: int, step: int) -> None:
        """The probes of member i at ``step``; a probe that raises fails the member."""
        track = self.tracks[i]
        track.last_probe = step
        if not self.probe_names or track.error is not None:
            return
        from ..probes import run_probes

        model, train, init_state = self.stepper.probe_target(i)
        extra = {"state": track.probe_state} if self.with_state else {}
        try:
            values = run_probes(
                self.probe_names, model, self.loss_fn, train, chunk_size=self.cfg.chunk_size,
                seed=track.config.seed, init_state=init_state, **extra,
                **(self.cfg.probe_options or {}),
            )  # fmt: skip
        except Exception:  # this run fails, as it would alone; the others go on
            if self.raise_errors:
                raise
            track.fail(traceback.format_exc())
            self.stepper.retire([i])
            return
        track.log(step, values)

    def state(self) -> dict[str, Any]:
        """What a checkpoint holds: enough to continue bit for bit."""
        return {
            "hashes": self.hashes,
            "step": self.step,
            "stepper": self.stepper.state_dict(),
            "tracks": [t.state_dict() for t in self.tracks],
            "rng": torch.get_rng_state(),
            # CUDA generators too, where CUDA is in use (dropout masks on a GPU)
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        }

    def resume(self, saved: dict[str, Any]) -> None:
        self.stepper.load_state_dict(saved["stepper"])
        for track, state in zip(self.tracks, saved["tracks"]):
            track.load_state_dict(state)
        torch.set_rng_state(saved["rng"])
        if saved.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        self.step = int(saved["step"])


def results_of(
    stepper, tracks: Sequence[Track], data: Sequence, meta: list[dict]
) -> list[RunResult]:
    """One :class:`~implicit_reg.engine.record.RunResult` per member, from its track."""
    results = []
    for i, track in enumerate(tracks):
        config = track.config
        if track.status == "failed":
            results.append(failed_result(config, track.error or "", meta=meta[i]))
            continue
        _, per_epoch = step_budget(config, data[i].n_train)
        summary = build_summary(
            config, status=track.status, stop_reason=track.stop_reason, steps_done=track.step,
            per_epoch=per_epoch, diverged_at=track.diverged_at, diverged_loss=track.diverged_loss,
            history=track.history, n_params=stepper.n_params(i), data=data[i],
        )  # fmt: skip
        result = RunResult(config=config, summary=summary, history=track.history, meta=meta[i])
        if config.save_params and track.status == "complete":
            result.params = final_params(stepper, i, config, data[i], track.step)
        results.append(result)
    return results


def final_params(stepper, member: int, config: RunConfig, data, step: int) -> bytes:
    """``params.pt`` of member ``member`` (``save_params``): a checkpoint dict
    (:func:`~implicit_reg.engine.checkpoint.read_checkpoint` reads it) with the final
    ``state_dict`` and the initial one (``init_state``: θ₀), no optimizer state. The
    same for a serial run and an ensemble member (its unpadded model)."""
    model, _, init_state = stepper.probe_target(member)
    return to_bytes(
        {
            "model_spec": config.model_spec(data.input_dim, data.output_dim),
            "dataset_spec": config.dataset_spec(),
            "loss": config.loss,
            "config": config.to_dict(),
            "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "init_state": {k: v.detach().clone() for k, v in init_state.items()},
            "step": step,
            "status": "complete",
        }
    )
