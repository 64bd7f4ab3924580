"""Curvature of data sharded across processes (``torch.distributed``).

A curvature operator built with ``process_group=`` (see
:class:`implicit_reg.probes.operator.CurvatureOperator`) measures the loss over
the union of the ranks' data. Every rank of the group holds the same model and
its own shard of the data (any sizes, none empty); each computes the
size-weighted sum of its chunks, and one all-reduce adds the ranks' sums:

    H v = (1/N)·Σ_r Σ_{c ∈ shard r} ∇²[n_c·L_c](θ) v,      N = Σ_r N_r,

and the same for the loss, the gradient, the Gauss–Newton matrix and the
Fisher. Every rank then holds the full-data product, the number a single
process computes on the concatenated data (to rounding: only the order of the
additions differs). Without a process group nothing changes.

Estimators on every rank. The estimators (:func:`~implicit_reg.probes.lanczos`,
:func:`~implicit_reg.probes.hutchpp`, :func:`~implicit_reg.probes.slq_density`,
the flatness measures) run on every rank, unchanged. Their random vectors come
from private generators seeded with ``seed``, so with the same ``seed`` every
rank draws the same vectors (seeded identically; nothing is broadcast). The
all-reduced products are bitwise equal on every rank, so every rank runs the
same arithmetic, takes the same branches and asks for the same number of
products. This is checked, not assumed: before each product the ranks exchange
a small header (:data:`HEADER`: a failure flag, the number of entries, and
checksums Σx, Σ|x| of the vectors and of θ), and a rank whose vectors or
parameters differ from rank 0's (another seed, a model that drifted) makes
every rank raise the same ``ValueError``.

Errors on one rank. A probe that fails on one rank (a NaN in its shard, a loss
that is not finite, an empty shard, a parameter of another shape) must not
leave the other ranks waiting in a collective. The failing rank reports its
failure in the header and every rank raises one ``ValueError`` that names the
ranks and their reasons (:meth:`Ranks.guard`).

Cost per product: the all-reduce of the products (b·dim numbers for a block of
b vectors) and one of the header (6 numbers per rank); a
pickled all-gather of the parameter names and shapes when an operator is
built. With the ``gloo`` backend on CPU and ``nccl`` on GPUs alike; the header
lives on the GPU for ``nccl`` and on the CPU otherwise.

DDP. :func:`unwrap` returns the module inside a ``DistributedDataParallel``
(or ``DataParallel``) wrapper; the operators measure that module through
``functional_call`` on detached copies of the parameters, so no DDP hook fires
and no DDP collective runs during a probe.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

__all__ = ["HEADER", "Ranks", "resolve_group", "shard_ranks", "unwrap", "shard_rows"]

#: numbers each rank puts in a product's header: failed, entries, Σv, Σ|v|, Σθ, Σ|θ|
HEADER = 6

#: relative tolerance of the checksum comparison (identical vectors give identical
#: checksums; another seed or another model differs at O(1))
CHECK_RTOL = 1e-9


def _dist():
    import torch.distributed as dist

    return dist


def resolve_group(process_group):
    """The process group to sum over, or None (one process).

    ``None``: no group (the default: a single process, unchanged). ``"auto"``:
    the default group when ``torch.distributed`` is initialized, else None. A
    ``ProcessGroup`` (e.g. ``torch.distributed.group.WORLD``): that group.
    """
    if process_group is None:
        return None
    dist = _dist()
    if isinstance(process_group, str):
        if process_group != "auto":
            raise ValueError(
                f"process_group must be None, 'auto' or a torch.distributed ProcessGroup, "
                f"got {process_group!r}"
            )
        if not (dist.is_available() and dist.is_initialized()):
            return None
        return dist.group.WORLD
    if not dist.is_available() or not isinstance(process_group, dist.ProcessGroup):
        raise ValueError(
            "process_group must be None, 'auto' or a torch.distributed ProcessGroup, "
            f"got {type(process_group).__name__}"
        )
    if not dist.is_initialized():
        raise ValueError("process_group given but torch.distributed is not initialized")
    return process_group


def shard_ranks(process_group) -> Ranks | None:
    """:class:`Ranks` of ``process_group`` (:func:`resolve_group`), or None without one."""
    group = resolve_group(process_group)
    return None if group is None else Ranks(group)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel`` / ``DataParallel`` (itself otherwise).

    FSDP shards the parameters themselves, so the full θ is on no rank: a
    ``ValueError``.
    """
    if not isinstance(model, nn.Module):
        return model
    name = type(model).__name__
    if name in ("FullyShardedDataParallel", "FSDPModule") or any(
        type(m).__name__ == "FullyShardedDataParallel" for m in model.modules()
    ):
        raise ValueError(
            "FSDP shards the parameters across ranks; the probes need every parameter on "
            "every rank (use DDP, or gather the full model first)"
        )
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def _split(n: int, parts: int) -> list[int]:
    """Row counts of ``parts`` near-equal contiguous shards of ``n`` rows (the first ones
    one longer), as ``numpy.array_split``."""
    q, r = divmod(n, parts)
    return [q + (i < r) for i in range(parts)]


def shard_rows(data, process_group="auto"):
    """This rank's shard of a data set that every rank holds in full.

    A pair of tensors ``(X, y)`` gives contiguous rows (shard sizes differ by at
    most one, as ``numpy.array_split``); a sequence of batches (a list) gives
    every W-th batch starting at the rank. Without a process group the data
    come back unchanged.
    """
    from ..core.objective import _is_pair

    group = resolve_group(process_group)
    if group is None:
        return data
    dist = _dist()
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    if _is_pair(data):
        x, y = data
        if len(x) != len(y):
            raise ValueError(f"inputs and targets differ in length: {len(x)} vs {len(y)}")
        sizes = _split(len(x), world)
        start = sum(sizes[:rank])
        return x[start : start + sizes[rank]], y[start : start + sizes[rank]]
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes, Tensor)):
        return list(data[rank::world])
    raise ValueError(
        f"shard_rows takes a pair of tensors (X, y) or a list of batches, got {type(data).__name__}"
    )


def _checksum(t: Tensor | None) -> tuple[float, float]:
    if t is None:
        return 0.0, 0.0
    t = t.detach().double()
    return float(t.sum()), float(t.abs().sum())


def _differ(a: float, b: float, scale: float) -> bool:
    if math.isnan(a) and math.isnan(b):
        return False
    return not abs(a - b) <= CHECK_RTOL * scale


class Ranks:
    """The ranks of one process group, as a curvature operator sums over them.

    Attributes:
        group: the ``ProcessGroup``; rank, size: this rank and the group's size.
        device: where the header lives (the current CUDA device for a pure
            ``nccl`` group, else the CPU).
    """

    def __init__(self, group):
        dist = _dist()
        self.group = group
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        # NCCL alone takes only CUDA tensors; a mixed "cpu:gloo,cuda:nccl" group takes both
        self.nccl = str(dist.get_backend(group)).lower().strip() == "nccl"
        self.device = (
            torch.device("cuda", torch.cuda.current_device()) if self.nccl else torch.device("cpu")
        )

    # ---------------------------------------------------------------- header
    def _header(self, failed: bool, numel: int, vectors, theta) -> Tensor:
        """All ranks' header rows ``(size, HEADER)`` (one all-reduce of zeros but one's own row)."""
        h = torch.zeros(self.size, HEADER, dtype=torch.float64, device=self.device)
        h[self.rank] = torch.tensor(
            [float(failed), float(numel), *_checksum(vectors), *_checksum(theta)],
            dtype=torch.float64,
        )
        _dist().all_reduce(h, group=self.group)
        return h.cpu()

    def _raise_failures(self, h: Tensor, own: BaseException | None, what: str):
        """If any rank failed: gather every rank's reason and raise one ValueError on all."""
        failed = [r for r in range(self.size) if h[r, 0] != 0]
        if not failed:
            return
        reason = None if own is None else f"{type(own).__name__}: {own}"
        reasons: list = [None] * self.size
        _dist().all_gather_object(reasons, reason, group=self.group)
        lines = "; ".join(f"rank {r}: {reasons[r]}" for r in failed)
        ranks = ", ".join(map(str, failed))
        err = ValueError(
            f"{what} failed on rank{'s' if len(failed) > 1 else ''} {ranks} of {self.size} "
            f"(each rank holds a shard of the data) — {lines}"
        )
        if own is not None:
            raise err from own
        raise err

    @contextlib.contextmanager
    def guard(self, what: str = "the probe") -> Iterator[None]:
        """Run a rank's local work; if it raises, tell the other ranks (they raise too, at
        their next :meth:`sum` or :meth:`agree`) and raise one ``ValueError`` naming the
        failed ranks and their reasons."""
        try:
            yield
        except Exception as err:  # noqa: BLE001 - every rank must hear of it, then raise
            h = self._header(True, 0, None, None)
            self._raise_failures(h, err, what)
            raise  # unreachable: this rank's own row says it failed

    # ------------------------------------------------------------------ sums
    def sum(self, local: Tensor, vectors: Tensor | None = None, theta: Tensor | None = None):
        """Σ over the ranks of ``local`` (every rank gets the same tensor), after checking
        that no rank failed and that every rank applied the same ``vectors`` at the same
        ``theta`` (checksums against rank 0's)."""
        h = self._header(False, local.numel(), vectors, theta)
        self._raise_failures(h, None, "the probe")
        h0 = h[0]
        for r in range(1, self.size):
            hr = h[r]
            if hr[1] != h0[1]:
                raise ValueError(
                    f"rank {r} asked for a product of {int(hr[1])} numbers, rank 0 for "
                    f"{int(h0[1])}: every rank must run the same probe with the same arguments"
                )
            if _differ(float(hr[2]), float(h0[2]), float(h0[3])) or _differ(
                float(hr[3]), float(h0[3]), float(h0[3])
            ):
                raise ValueError(
                    f"rank {r}'s vectors differ from rank 0's (checksum Σv = {float(hr[2]):.6g} "
                    f"vs {float(h0[2]):.6g}): every rank must call the estimator with the same "
                    "arguments and the same seed (random vectors are drawn from a generator "
                    "seeded with `seed` on every rank, not broadcast)"
                )
            if _differ(float(hr[4]), float(h0[4]), float(h0[5])) or _differ(
                float(hr[5]), float(h0[5]), float(h0[5])
            ):
                raise ValueError(
                    f"rank {r}'s parameters differ from rank 0's (checksum Σθ = "
                    f"{float(hr[4]):.6g} vs {float(h0[4]):.6g}): every rank must hold the same "
                    "model (DDP broadcasts it when wrapping) and probe it at the same step"
                )
        out = local.contiguous()
        on = out.device
        if self.nccl and on.type != "cuda":
            out = out.to(self.device)
        _dist().all_reduce(out, group=self.group)
        return out.to(on)

    def agree(self, names, shapes, dtype, n_local: int, theta: Tensor) -> list[int]:
        """Check that every rank built the same operator (parameter names, shapes, dtype and
        values) and return the shard sizes ``[N_0, ..., N_{W-1}]``; a ``ValueError`` on every
        rank otherwise."""
        h = self._header(False, 0, None, None)
        self._raise_failures(h, None, "building the curvature operator")
        mine = {
            "params": [(n, tuple(s)) for n, s in zip(names, shapes)],
            "dtype": str(dtype),
            "n": int(n_local),
            "theta": _checksum(theta),
        }
        every: list = [None] * self.size
        _dist().all_gather_object(every, mine, group=self.group)
        ref = every[0]
        for r, other in enumerate(every[1:], start=1):
            if other["params"] != ref["params"]:
                diff = _first_difference(ref["params"], other["params"])
                raise ValueError(
                    f"the measured parameters differ across ranks: {diff} (rank 0 against "
                    f"rank {r}); every rank must measure the same model"
                )
            if other["dtype"] != ref["dtype"]:
                raise ValueError(
                    f"the parameters' dtype differs across ranks: {ref['dtype']} on rank 0, "
                    f"{other['dtype']} on rank {r}"
                )
            (s0, a0), (sr, ar) = ref["theta"], other["theta"]
            if _differ(sr, s0, a0) or _differ(ar, a0, a0):
                raise ValueError(
                    f"rank {r}'s parameter values differ from rank 0's (checksum Σθ = {sr:.6g} "
                    f"vs {s0:.6g}): every rank must hold the same model (DDP broadcasts it when "
                    "wrapping)"
                )
        return [int(e["n"]) for e in every]

    def first_decides(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank (one all-reduce), for decisions that read a clock."""
        t = torch.zeros(1, dtype=torch.float64, device=self.device)
        if self.rank == 0:
            t += float(bool(flag))
        _dist().all_reduce(t, group=self.group)
        return bool(t.item() != 0)


def _first_difference(a: list, b: list) -> str:
    for i in range(max(len(a), len(b))):
        x = a[i] if i < len(a) else None
        y = b[i] if i < len(b) else None
        if x != y:
            fmt = lambda p: "nothing" if p is None else f"{p[0]!r} of shape {p[1]}"  # noqa: E731
            return f"parameter {i} is {fmt(x)} on one rank and {fmt(y)} on the other"
    return "none"  # pragma: no cover - called only when the lists differ
