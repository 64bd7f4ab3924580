"""Probes over torch.distributed: 2 gloo CPU processes, each holding a shard of the data,
give the numbers one process gives on all of it.

One spawn of 2 processes (module fixture) runs every distributed case and saves each
rank's results; the tests compare them with single-process numbers computed here on the
concatenated data, in float64 (rtol 1e-10), and the two ranks with each other (bitwise).
The shards are uneven (15 and 8 rows) and of different forms (a tensor pair in chunks of 4
on rank 0, a list of batches of 5 and 3 on rank 1). A hang fails the test after
``JOIN_TIMEOUT`` seconds instead of blocking CI (and the process group's own timeout turns
a stuck collective into an error).
"""

from __future__ import annotations

import math
import os
import socket
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from implicit_reg.integrations import CurvatureTracker
from implicit_reg.probes import (
    GGNOperator,
    HessianOperator,
    eps_sharpness,
    gaussian_sharpness,
    geometric_complexity,
    grad_norm_sq,
    hutchpp,
    lanczos,
    power_iteration,
    run_probes,
    slq_density,
)
from implicit_reg.probes.distributed import resolve_group, shard_rows, unwrap

F64 = torch.float64
WORLD = 2
N, SPLIT = 23, 15  # rank 0: rows 0-14, rank 1: rows 15-22
JOIN_TIMEOUT = 120.0
RTOL = 1e-10
TRAIN_STEPS, EVERY = 5, 2


def _mlp(width=6, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, width), nn.Tanh(), nn.Linear(width, 2)).to(F64)


def _data(n=N, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g, dtype=F64), torch.randn(n, 2, generator=g, dtype=F64)


def _shard(rank):
    """Rank 0: a pair (chunked by 4); rank 1: a list of batches of 5 and 3 rows."""
    X, y = _data()
    if rank == 0:
        return (X[:SPLIT], y[:SPLIT]), 4
    return [(X[SPLIT : SPLIT + 5], y[SPLIT : SPLIT + 5]), (X[SPLIT + 5 :], y[SPLIT + 5 :])], None


def _measure(model, data, chunk_size=None, group=None) -> dict:
    """Every measure compared between 1 and 2 processes (same seeds everywhere)."""
    loss = nn.MSELoss()
    op = HessianOperator(model, loss, data, chunk_size=chunk_size, process_group=group)
    top = lanczos(op, 3)
    dens = slq_density(op, n_steps=12, n_runs=3, seed=5)
    moments = [
        sum(float((w * t**k).sum()) for t, w in zip(dens.nodes, dens.weights)) / 3
        for k in (1, 2, 3)
    ]
    ggn = GGNOperator(model, loss, data, chunk_size=chunk_size, process_group=group)
    flat = dict(chunk_size=chunk_size, process_group=group)
    return {
        "lambda_max": float(lanczos(op, 1).eigenvalues[0]),
        "top3": top.eigenvalues.tolist(),
        "lambda_min": float(lanczos(op, 1, which="SA").eigenvalues[0]),
        "power": float(power_iteration(op, max_iter=50).eigenvalues[0]),
        "hutchpp": hutchpp(op, n_hvp=30, seed=3).estimate,
        "slq_moments": moments,
        "slq_nodes": [t.tolist() for t in dens.nodes],
        "loss": op.loss(),
        "grad": op.gradient().tolist(),
        "grad_norm_sq": grad_norm_sq(model, loss, data, **flat),
        "eps_sharpness": eps_sharpness(model, loss, data, eps=1e-2, steps=4, **flat),
        "gaussian_sharpness": gaussian_sharpness(model, loss, data, seed=2, **flat).value,
        "geometric_complexity": geometric_complexity(model, data, **flat),
        "ggn_lambda_max": float(lanczos(ggn, 1).eigenvalues[0]),
    }


#: run_probes names compared between 1 and 2 processes
REGISTRY = ("loss", "lambda_max", "lambda_min", "trace", "grad_norm_sq", "grad_one_norm",
            "ggn_lambda_max", "fisher_trace", "eps_sharpness", "gaussian_sharpness",
            "geometric_complexity", "weight_norm")  # fmt: skip


def _registry(model, data, chunk_size=None, group=None) -> dict:
    return run_probes(REGISTRY, model, nn.MSELoss(), data, chunk_size=chunk_size,
                      process_group=group)  # fmt: skip


def _float32_data(data):
    if isinstance(data, list):
        return [(x.float(), y.float()) for x, y in data]
    return data[0].float(), data[1].float()


def _float32(data, chunk_size=None, group=None) -> dict:
    """λ_max, loss and gradient of a float32 model (the sums travel in its dtype)."""
    op = HessianOperator(_mlp().float(), nn.MSELoss(), data, chunk_size=chunk_size,
                         process_group=group)  # fmt: skip
    loss, grad = op.loss_and_gradient()
    return {"lambda_max": float(lanczos(op, 1).eigenvalues[0]), "loss": loss,
            "grad": grad.double().tolist()}  # fmt: skip


def _error(fn) -> str | None:
    try:
        fn()
    except ValueError as err:
        return str(err)
    return None


def _bad_input(rank, group) -> dict:
    """Each case raises the same ValueError on both ranks; the group stays usable after."""
    loss, (X, y) = nn.MSELoss(), _data()
    data = (X[:SPLIT], y[:SPLIT]) if rank == 0 else (X[SPLIT:], y[SPLIT:])
    model = _mlp()
    other = _mlp(width=7 if rank == 1 else 6)
    drifted = _mlp()
    if rank == 1:
        with torch.no_grad():
            drifted[0].bias.add_(1e-3)
    nan = (X[SPLIT:].clone(), y[SPLIT:])
    nan[0][2, 1] = float("nan")
    op = HessianOperator(model, loss, data, process_group=group)
    return {
        "shapes": _error(lambda: HessianOperator(other, loss, data, process_group=group)),
        "empty": _error(
            lambda: HessianOperator(
                model, loss, data if rank == 0 else (X[:0], y[:0]), process_group=group
            )
        ),
        "nan": _error(
            lambda: HessianOperator(model, loss, data if rank == 0 else nan, process_group=group)
        ),
        "values": _error(lambda: HessianOperator(drifted, loss, data, process_group=group)),
        "seed": _error(lambda: lanczos(op, 1, seed=rank)),
        "after": float(lanczos(op, 1).eigenvalues[0]),  # the group still works
    }


def _counting_allreduce(state, bucket):
    """DDP's default all-reduce (mean), counting its calls in ``state``."""
    state["calls"] += 1
    fut = dist.all_reduce(bucket.buffer(), async_op=True).get_future()
    return fut.then(lambda f: f.value()[0] / dist.get_world_size())


def _snapshot(model):
    return (
        [p.detach().clone() for p in model.parameters()],
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        torch.get_rng_state(),
    )


def _same(a, b) -> bool:
    (pa, ga, ra), (pb, gb, rb) = a, b
    grads = all((x is None and y is None) or torch.equal(x, y) for x, y in zip(ga, gb))
    return all(map(torch.equal, pa, pb)) and grads and torch.equal(ra, rb)


def _tracked_training(model, train, probe, *, tracker_options, wrap=None) -> dict:
    """TRAIN_STEPS of full-batch GD (lr 0.1), probed every EVERY steps; whether each
    probe left model, .grad and RNG as found, and the DDP hook calls during probes."""
    net = model if wrap is None else wrap(model)
    hook = {"calls": 0}
    if wrap is not None:
        net.register_comm_hook(hook, _counting_allreduce)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    tracker = CurvatureTracker(
        net, nn.MSELoss(), probe, every=EVERY, budget=None, **tracker_options
    )
    untouched, hook_calls_in_probes = [], 0
    for t in range(TRAIN_STEPS):
        before, calls = _snapshot(model), hook["calls"]
        if tracker.step(t) is not None:
            untouched.append(_same(before, _snapshot(model)))
            hook_calls_in_probes += hook["calls"] - calls
        opt.zero_grad()
        nn.MSELoss()(net(train[0]), train[1]).backward()
        opt.step()
    return {
        "rows": tracker.rows,
        "untouched": untouched,
        "hook_calls_in_probes": hook_calls_in_probes,
        "hook_calls": hook["calls"],
        "failures": tracker.failures,
        "theta": torch.cat([p.detach().reshape(-1) for p in model.parameters()]).tolist(),
    }


def _train_and_probe_sets():
    X, y = _data(n=16, seed=4)
    return (X, y), _data(n=N, seed=1)


def _tracker_under_ddp(rank, group) -> dict:
    (X, y), probe = _train_and_probe_sets()
    train = (X[rank * 8 : rank * 8 + 8], y[rank * 8 : rank * 8 + 8])  # equal shards: DDP's mean
    return _tracked_training(
        _mlp(),
        train,
        probe,
        tracker_options=dict(process_group=group, shard=True, seed=1),
        wrap=lambda m: nn.parallel.DistributedDataParallel(m),
    )


def _tracker_with_a_failure_on_rank_1(rank, group) -> dict:
    """The probe loss is NaN on rank 1 at step 2 only: both ranks must record the same
    failure, skip that probe and go on (no rank left waiting in a collective)."""
    switch = {"nan": False}

    def loss_fn(out, y):
        bad = rank == 1 and switch["nan"]
        return nn.functional.mse_loss(out, y) * (float("nan") if bad else 1.0)

    model, (X, y) = _mlp(), _data()
    net = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    tracker = CurvatureTracker(
        net, loss_fn, (X, y), every=EVERY, budget=None, process_group=group, shard=True,
        measures=["loss", "lambda_max"],
    )  # fmt: skip
    for t in range(TRAIN_STEPS):
        switch["nan"] = t == 2
        tracker.step(t)
        opt.zero_grad()
        nn.MSELoss()(net(X), y).backward()
        opt.step()
    return {"steps": [r["step"] for r in tracker.rows], "failures": tracker.failures}


def _worker(rank, port, out_dir):
    cpu_imports = time.process_time()  # the child's CPU time so far: its imports
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60))
    try:
        group = resolve_group("auto")
        data, chunk = _shard(rank)
        t0 = time.perf_counter()
        results = {"probes": _measure(_mlp(), data, chunk, group)}
        results["probe_seconds"] = time.perf_counter() - t0
        results["registry"] = _registry(_mlp(), data, chunk, group)
        results["float32"] = _float32(_float32_data(data), chunk, group)
        results["registry_refused"] = _error(
            lambda: run_probes(["margin"], _mlp(), nn.MSELoss(), data, process_group=group)
        )
        results["bad"] = _bad_input(rank, group)
        results["ddp"] = _tracker_under_ddp(rank, group)
        results["ddp_failure"] = _tracker_with_a_failure_on_rank_1(rank, group)
        results["shard_sizes"] = HessianOperator(
            _mlp(), nn.MSELoss(), data, chunk_size=chunk, process_group=group
        ).shard_sizes
        results["cpu_seconds"] = (cpu_imports, time.process_time() - cpu_imports)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Both ranks' results (spawned once for the module), or a failure after JOIN_TIMEOUT."""
    out = tmp_path_factory.mktemp("distributed")
    ctx = mp.start_processes(
        _worker, args=(_free_port(), str(out)), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + JOIN_TIMEOUT
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the 2-process run did not finish within {JOIN_TIMEOUT:.0f} s (a hang?)")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def single():
    """The same measures in one process on the concatenated data (one chunk)."""
    return _measure(_mlp(), _data())


def _close(a, b, rtol=RTOL, atol=1e-13):
    a, b = torch.as_tensor(a, dtype=F64), torch.as_tensor(b, dtype=F64)
    return torch.allclose(a, b, rtol=rtol, atol=atol), float((a - b).abs().max())


@pytest.mark.parametrize(
    "name",
    [
        "lambda_max",
        "top3",
        "lambda_min",
        "power",
        "hutchpp",
        "slq_moments",
        "slq_nodes",
        "loss",
        "grad",
        "grad_norm_sq",
        "eps_sharpness",
        "gaussian_sharpness",
        "geometric_complexity",
        "ggn_lambda_max",
    ],
)
def test_two_shards_give_the_single_process_numbers(ranks, single, name):
    for r, res in enumerate(ranks):
        ok, err = _close(res["probes"][name], single[name])
        assert ok, f"{name} on rank {r}: max |2 proc - 1 proc| = {err:.3g}"
    assert ranks[0]["probes"][name] == ranks[1]["probes"][name], "the ranks differ"


def test_run_probes_over_two_shards_gives_the_single_process_numbers(ranks):
    want = _registry(_mlp(), _data())
    for r, res in enumerate(ranks):
        for name in REGISTRY:
            ok, err = _close(res["registry"][name], want[name])
            assert ok, f"run_probes {name} on rank {r}: max |2 proc - 1 proc| = {err:.3g}"
    assert ranks[0]["registry"] == ranks[1]["registry"]
    assert "['margin'] are not summed over ranks" in ranks[0]["registry_refused"]


def test_a_float32_model_matches_to_float32_rounding(ranks):
    want = _float32(_float32_data(_data()))
    for res in ranks:
        for k in want:
            ok, err = _close(res["float32"][k], want[k], rtol=1e-5, atol=1e-7)
            assert ok, f"float32 {k}: max |2 proc - 1 proc| = {err:.3g}"


def test_shard_sizes_are_uneven_and_sum_to_n(ranks):
    assert ranks[0]["shard_sizes"] == ranks[1]["shard_sizes"] == [SPLIT, N - SPLIT]


def test_a_single_process_equals_the_one_chunk_reference_and_nothing_is_trivial(single):
    """Guards against a comparison that cannot fail: the measures are not zero or equal."""
    (X, y), model = _data(), _mlp()
    params = {k: p.detach() for k, p in model.named_parameters()}
    dense = torch.func.hessian(
        lambda t: nn.MSELoss()(torch.func.functional_call(model, t, (X,)), y)
    )(params)
    H = torch.cat([torch.cat([b.reshape(p.numel(), -1) for b in row.values()], 1)
                   for row, p in zip(dense.values(), params.values())])  # fmt: skip
    eig = torch.linalg.eigvalsh(H)
    assert math.isclose(single["lambda_max"], float(eig[-1]), rel_tol=1e-10)
    assert math.isclose(single["lambda_min"], float(eig[0]), rel_tol=1e-8)
    assert single["lambda_max"] > single["top3"][2] > 0 and single["grad_norm_sq"] > 0


def test_bad_input_raises_the_same_clear_error_on_every_rank(ranks):
    b0, b1 = ranks[0]["bad"], ranks[1]["bad"]
    for case in ("shapes", "empty", "nan", "values", "seed"):
        assert b0[case] is not None and b0[case] == b1[case], (case, b0[case], b1[case])
    assert "'0.weight' of shape (6, 3)" in b0["shapes"] and "(7, 3)" in b0["shapes"]
    assert "rank 1" in b0["empty"] and "the data set is empty" in b0["empty"]
    assert "rank 1" in b0["nan"] and "NaN in the inputs at row 2" in b0["nan"]
    assert "parameter values differ" in b0["values"]
    assert "seed" in b0["seed"]
    assert b0["after"] == b1["after"] > 0


def test_tracker_under_ddp_equals_single_process_and_leaves_everything_as_found(ranks):
    (X, y), probe = _train_and_probe_sets()
    ref = _tracked_training(_mlp(), (X, y), probe, tracker_options=dict(seed=1))
    for r, res in enumerate(ranks):
        ddp = res["ddp"]
        assert not ddp["failures"], ddp["failures"]
        assert ddp["untouched"] == [True] * len(ref["rows"]) == [True, True, True]
        assert ddp["hook_calls_in_probes"] == 0 < ddp["hook_calls"]  # hooks fire in training only
        assert _close(ddp["theta"], ref["theta"])[0]  # DDP trained as full-batch GD
        assert [row["step"] for row in ddp["rows"]] == [row["step"] for row in ref["rows"]]
        for row, want in zip(ddp["rows"], ref["rows"]):
            for key in ("loss", "lambda_max", "trace", "ggn_lambda_max", "grad_norm_sq",
                        "weight_norm", "dist_from_init"):  # fmt: skip
                ok, err = _close(row[key], want[key])
                assert ok, f"rank {r} step {row['step']} {key}: |DDP - 1 proc| = {err:.3g}"
    for row0, row1 in zip(ranks[0]["ddp"]["rows"], ranks[1]["ddp"]["rows"]):
        assert {k: v for k, v in row0.items() if "seconds" not in k and k != "overhead"} == {
            k: v for k, v in row1.items() if "seconds" not in k and k != "overhead"
        }


def test_a_probe_failing_on_one_rank_fails_on_both_and_training_goes_on(ranks):
    f0, f1 = ranks[0]["ddp_failure"], ranks[1]["ddp_failure"]
    assert f0["steps"] == f1["steps"] == [0, 4]
    assert [f["step"] for f in f0["failures"]] == [f["step"] for f in f1["failures"]] == [2]
    assert f0["failures"][0]["error"] == f1["failures"][0]["error"]
    assert "rank 1" in f0["failures"][0]["error"] and "not finite" in f0["failures"][0]["error"]


def test_without_a_process_group_nothing_changes():
    X, y = _data()
    op = HessianOperator(_mlp(), nn.MSELoss(), (X, y), chunk_size=4)
    assert op._ranks is None and op.shard_sizes == [N] == [op.n_samples]
    assert resolve_group(None) is None and resolve_group("auto") is None  # not initialized
    assert shard_rows((X, y), None) is not None


def test_bad_process_group_arguments():
    X, y = _data()
    with pytest.raises(ValueError, match="process_group must be None, 'auto' or"):
        HessianOperator(_mlp(), nn.MSELoss(), (X, y), process_group="world")
    with pytest.raises(ValueError, match="process_group must be None, 'auto' or"):
        HessianOperator(_mlp(), nn.MSELoss(), (X, y), process_group=3)
    with pytest.raises(ValueError, match="shard=True needs process_group"):
        CurvatureTracker(_mlp(), nn.MSELoss(), (X, y), shard=True)


def test_unwrap_returns_the_module_inside_a_wrapper():
    m = _mlp()
    assert unwrap(nn.DataParallel(m)) is m and unwrap(m) is m
