"""Claims: sweeps that share one output directory train each run once.

Two sweeps started on the same directory (two shells, two cluster jobs) would
otherwise each train every pending run. Before a sweep trains a job (one run,
or the member runs of an ensemble) it *claims* the job's runs; a run another
sweep is training is left to that sweep, and a sweep that has nothing left to
claim waits until the runs it cannot take are finished or their owner is gone.

A claim is one file per run, ``SWEEP/.claims/<config_hash>.claim`` (``SWEEP``
the sweep directory, beside ``runs/``), holding its owner: host, pid, the process's
start time, the boot id and a random token. It is created atomically with
``os.link`` of a fully written temporary file (``O_CREAT | O_EXCL`` where the
file system has no hard links), so no reader ever sees a half-written claim;
its modification time is the owner's heartbeat, refreshed every
:data:`HEARTBEAT_S` seconds by a daemon thread. A claim is released when its
run's result is stored (complete, diverged or failed) or the run is lost, and
when the sweep ends (also on ``KeyboardInterrupt``). It is *taken over* when its
owner is dead: same host and boot, and the pid gone, a zombie, or reused by a
process started at another time; another boot of this host; or, from any
host, a heartbeat older than :data:`STALE_S` seconds.

The claims of one job are taken all or none, and every change of claims
(take, take over, release) happens under an ``fcntl.flock`` on
``SWEEP/.claims/.lock``, which the kernel drops when its holder dies, so two
sweeps never both take over one stale claim. A sweep never holds a claim while
it waits for another, so two sweeps cannot deadlock.

A run counts as still to do for a sweep when it was pending when the sweep
started and its ``summary.json`` has not changed since (checked after the claim
is taken): a run another sweep finished in the meantime is never trained again,
with ``resume=False`` too.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .backends import JobFeed
from .config import RunConfig
from .store import SUMMARY_FILE, ResultStore

try:
    import fcntl
except ModuleNotFoundError:  # pragma: no cover - not POSIX: the link alone
    fcntl = None

if TYPE_CHECKING:  # pragma: no cover
    from .backends import Backend
    from .record import RunResult

__all__ = [
    "CLAIMS_DIR",
    "HEARTBEAT_S",
    "STALE_S",
    "POLL_S",
    "Claims",
    "owner_alive",
    "claimed_results",
]

CLAIMS_DIR = ".claims"
#: seconds between heartbeats of a sweep's claims
HEARTBEAT_S = 20.0
#: a claim whose heartbeat is older than this is taken over, whatever its host
STALE_S = 300.0
#: seconds between looks at the runs that other sweeps hold
POLL_S = 2.0


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of ``pid`` from ``/proc``; None
    when there is no ``/proc`` entry (no such process, or no ``/proc``)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return fields[0], fields[19]


def _owner() -> dict[str, Any]:
    pid = os.getpid()
    stat = _proc_stat(pid)
    return {
        "host": socket.gethostname(),
        "boot_id": _boot_id(),
        "pid": pid,
        "proc_start": stat[1] if stat else "",
        "started_at": time.time(),
        "token": uuid.uuid4().hex,
    }


def owner_alive(owner: dict[str, Any], *, heartbeat_age: float, stale_s: float) -> bool:
    """Whether the owner of a claim may still be training it.

    Dead: a heartbeat older than ``stale_s`` seconds (any host); on this host, another
    boot, or the pid gone, a zombie, or now a process started at another time.
    """
    if heartbeat_age > stale_s:
        return False
    if owner.get("host") != socket.gethostname():
        return True  # another machine: only the heartbeat tells
    boot = _boot_id()
    if boot and owner.get("boot_id") and owner["boot_id"] != boot:
        return False
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    stat = _proc_stat(pid)
    if stat is None:
        return True  # no /proc: the pid exists, trust it
    state, start = stat
    if state in ("Z", "X"):
        return False
    return not (owner.get("proc_start") and start != owner["proc_start"])


class Claims:
    """This process's claims on the runs of one sweep directory.

    Args:
        root: the sweep directory (the claims live in ``root/.claims/``).
        heartbeat_s: seconds between heartbeats (a daemon thread touches every held claim);
            None: :data:`HEARTBEAT_S`.
        stale_s: a claim whose heartbeat is older than this is taken over; None: :data:`STALE_S`.
    """

    def __init__(
        self, root: str | Path, *, heartbeat_s: float | None = None, stale_s: float | None = None
    ) -> None:
        heartbeat_s = HEARTBEAT_S if heartbeat_s is None else heartbeat_s
        stale_s = STALE_S if stale_s is None else stale_s
        if not heartbeat_s > 0 or not stale_s > heartbeat_s:
            raise ValueError(
                f"need 0 < heartbeat_s < stale_s, got heartbeat_s={heartbeat_s}, stale_s={stale_s}"
            )
        self.dir = Path(root) / CLAIMS_DIR
        self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
        self.owner = _owner()
        self.held: set[str] = set()
        self.taken_over: list[dict[str, Any]] = []  # the dead owners' claims this process took
        self._stop = threading.Event()
        self._lock = threading.Lock()  # `held` and the files: the heartbeat thread vs the sweep
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ files
    def path(self, run_hash: str) -> Path:
        return self.dir / f"{run_hash}.claim"

    @contextmanager
    def _mutex(self) -> Iterator[None]:
        """Every change of claims under one ``flock``, dropped by the kernel if we die."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the flock

    def read(self, run_hash: str) -> tuple[dict[str, Any], float] | None:
        """(owner, heartbeat age in seconds) of a run's claim; None if unclaimed."""
        path = self.path(run_hash)
        try:
            age = time.time() - path.stat().st_mtime
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            owner = json.loads(text)
        except ValueError:  # unreadable (not written by us): judged by its age alone
            owner = {}
        return (owner if isinstance(owner, dict) else {}), age

    def _create(self, run_hash: str) -> bool:
        """Create the claim file atomically, complete on first sight; False if it exists."""
        data = json.dumps(self.owner).encode()
        fd, tmp = tempfile.mkstemp(prefix=".new.", suffix=".tmp", dir=self.dir)
        try:
            with os.fdopen(fd, "wb") as fh:  # no fsync: a claim need not outlive a crash of
                fh.write(data)  # the machine (another boot id: its owner counts as dead)
            try:
                os.link(tmp, self.path(run_hash))
            except FileExistsError:
                return False
            except OSError:  # no hard links here: O_CREAT | O_EXCL
                try:
                    fd2 = os.open(self.path(run_hash), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(fd2, "wb") as fh:
                    fh.write(data)
            return True
        finally:
            os.unlink(tmp)

    def _ours(self, run_hash: str) -> bool:
        found = self.read(run_hash)
        return found is not None and found[0].get("token") == self.owner["token"]

    # ------------------------------------------------------------ claims
    def acquire(
        self, configs: Sequence[RunConfig], needed: Callable[[RunConfig], bool] = lambda c: True
    ) -> list[RunConfig] | None:
        """Claim the runs of ``configs`` that are still ``needed``, all of them or none.

        Returns the claimed runs ([] when none is needed any more), or None when one of
        them is held by a live owner (then nothing is claimed). Dead owners' claims are
        taken over (and noted in :attr:`taken_over`).
        """
        with self._lock, self._mutex():
            todo = [c for c in configs if needed(c)]
            stale: list[tuple[str, dict[str, Any]]] = []
            for c in todo:
                h = c.config_hash()
                found = self.read(h)
                if found is None or h in self.held:
                    continue
                owner, age = found
                if owner_alive(owner, heartbeat_age=age, stale_s=self.stale_s):
                    return None
                stale.append((h, owner))
            for h, owner in stale:
                self.path(h).unlink(missing_ok=True)
                self.taken_over.append({"run": h, **owner})
            made: list[str] = []
            for c in todo:
                h = c.config_hash()
                if h in self.held:
                    continue
                if not self._create(h):  # a claimer outside the lock (none of ours): back off
                    for m in made:
                        self.path(m).unlink(missing_ok=True)
                    self.held.difference_update(made)
                    return None
                made.append(h)
                self.held.add(h)
        self._start_heartbeat()
        return todo

    def release(self, configs: Iterable[RunConfig | str]) -> None:
        """Give up the claims on ``configs`` (config or hash) that this process holds."""
        hashes = [c if isinstance(c, str) else c.config_hash() for c in configs]
        hashes = [h for h in hashes if h in self.held]
        if not hashes:
            return
        with self._lock, self._mutex():
            for h in hashes:
                if self._ours(h):
                    self.path(h).unlink(missing_ok=True)
                self.held.discard(h)

    def close(self) -> None:
        """Release every claim held and stop the heartbeat."""
        self._stop.set()
        self.release(list(self.held))

    def beat(self) -> None:
        """Refresh the heartbeat of every held claim; warn about one taken from us."""
        with self._lock:
            lost = []
            for h in list(self.held):
                try:
                    if self._ours(h):
                        os.utime(self.path(h))
                        continue
                except OSError:
                    pass
                self.held.discard(h)
                lost.append(h)
        for h in lost:
            warnings.warn(
                f"the claim on run {h} was taken over by another sweep (was this process "
                f"stopped for more than {self.stale_s:g} s?); both may train it",
                RuntimeWarning,
                stacklevel=2,
            )

    def _start_heartbeat(self) -> None:
        if self._thread is not None:
            return

        def loop() -> None:
            while not self._stop.wait(self.heartbeat_s):
                self.beat()

        self._thread = threading.Thread(target=loop, name="sweep-claims-heartbeat", daemon=True)
        self._thread.start()


def _stamp(store: ResultStore, config: RunConfig) -> int | None:
    """The summary's modification time (ns), None if the run has none."""
    try:
        return (store.path_for(config) / SUMMARY_FILE).stat().st_mtime_ns
    except FileNotFoundError:
        return None


def _jobs(configs: Sequence[RunConfig], grouped: bool, workers: int) -> list[list[RunConfig]]:
    """The jobs of the default backend on ``workers`` workers, longest first
    (:func:`~implicit_reg.engine.vectorized_sweep.plan_jobs`: the costliest ensemble split
    while that shortens the sweep), or one job per run."""
    if not grouped:
        return [[c] for c in configs]
    from .vectorized_sweep import plan_jobs

    return plan_jobs(configs, workers)


class _ClaimFeed(JobFeed):
    """The jobs of one sweep handed to a backend's ``stream`` one at a time, each claimed
    (all its runs or none) when it is taken; a job whose runs another sweep holds is
    skipped until that sweep stores them (then dropped) or dies (then taken over)."""

    def __init__(self, jobs, claims: Claims, needed, tried: set[str], poll_s: float) -> None:
        self.jobs, self.claims, self.needed, self.tried = list(jobs), claims, needed, tried
        self.poll_s = poll_s

    @property
    def done(self) -> bool:
        self.jobs = [j for j in self.jobs if any(self.needed(c) for c in j)]
        return not self.jobs

    def take(self) -> list[RunConfig] | None:
        for job in list(self.jobs):
            got = self.claims.acquire(job, self.needed)
            if got is None:  # held by another sweep: look again later
                continue
            self.jobs.remove(job)
            if got:
                self.tried.update(c.config_hash() for c in got)
                return got
        return None


def claimed_results(
    backend: Backend,
    pending: Sequence[RunConfig],
    store: ResultStore,
    *,
    at_once: int | None = 1,
    grouped: bool = True,
    heartbeat_s: float | None = None,
    stale_s: float | None = None,
    poll_s: float | None = None,
    root: str | Path | None = None,
) -> Iterator[RunResult]:
    """The backend's results for the pending runs that no other sweep is training.

    The runs are cut into jobs (``grouped``: the ensembles and single runs of
    :func:`~implicit_reg.engine.vectorized_sweep.plan_jobs` for ``at_once`` workers, longest
    first). A backend with ``stream`` (:class:`~implicit_reg.engine.backends.JobFeed`;
    the default backends) gets the jobs one at a time on one pool, each claimed, all
    members or none, when a worker frees (at most ``at_once`` in flight); another backend
    gets up to ``at_once`` claimed jobs (None: all) together (and plans their runs
    again). Each run's claim is released once the caller has stored its result (when the
    generator is resumed). Runs held by other live sweeps are left to them; when nothing else is left,
    this waits (looking every ``poll_s`` seconds) until they are stored or their owner
    dies, then takes over what is left. Each run is handed to the backend at most once per
    call (a run lost with its worker is not retried here). Close the generator (``with
    contextlib.closing(...)``) to release its claims at once if the caller stops early.
    ``root``: the directory of the claims (``root/.claims/``; None: the store root).
    ``heartbeat_s``, ``stale_s``, ``poll_s``: None reads :data:`HEARTBEAT_S`, :data:`STALE_S`,
    :data:`POLL_S` at call time.
    """
    from .backends import call_backend

    if not pending:
        return
    stamps = {c.config_hash(): _stamp(store, c) for c in pending}
    tried: set[str] = set()

    def needed(c: RunConfig) -> bool:
        h = c.config_hash()
        return h not in tried and _stamp(store, c) == stamps[h]

    claims = Claims(
        store.root if root is None else root,
        heartbeat_s=HEARTBEAT_S if heartbeat_s is None else heartbeat_s,
        stale_s=STALE_S if stale_s is None else stale_s,
    )
    poll_s = POLL_S if poll_s is None else poll_s
    jobs = _jobs(pending, grouped, at_once or 1)
    stream = getattr(backend, "stream", None)
    try:
        if stream is not None and at_once is not None:
            feed = _ClaimFeed(jobs, claims, needed, tried, poll_s)
            for result in stream(feed, store):
                yield result  # the caller stores it before asking for the next
                claims.release([result.config])
            return
        while jobs:
            taken: list[list[RunConfig]] = []
            waiting: list[list[RunConfig]] = []
            for job in jobs:
                if at_once is not None and len(taken) >= at_once:
                    waiting.append(job)
                    continue
                got = claims.acquire(job, needed)
                if got is None:
                    waiting.append(job)
                elif got:
                    taken.append(got)
            jobs = waiting
            if not taken:
                if jobs:  # all held by other sweeps: wait for them
                    time.sleep(poll_s)
                continue
            runs = [c for job in taken for c in job]
            tried.update(c.config_hash() for c in runs)
            for result in call_backend(backend, runs, store):
                yield result  # the caller stores it before asking for the next
                claims.release([result.config])
            claims.release(runs)
            jobs = [j for j in jobs if any(needed(c) for c in j)]
    finally:
        claims.close()
