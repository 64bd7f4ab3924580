"""Nakkiran et al.'s CNN family: the model, its stacked (grouped-convolution) ensemble and
the engine's paths for it. Oracles: explicit parameter counting, torch.optim.Adam/SGD on
the serial ``nn`` model in a plain loop, the serial engine."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from implicit_reg.engine.config import RunConfig
from implicit_reg.engine.plan import group_key, plan_sweep
from implicit_reg.ensemble.batched import BatchedEnsemble
from implicit_reg.ensemble.stacked import StackedCNN, stacked_model
from implicit_reg.ensemble.vectorized import MinibatchOrder
from implicit_reg.workloads.models import CNN, build_model, count_params

SIDE, N, B = 8, 40, 16


def cnn(k: int, seed: int, side: int = SIDE) -> nn.Module:
    return build_model("cnn", input_dim=side * side, output_dim=10, width=k, seed=seed).double()


@pytest.mark.parametrize("k", [1, 3, 16])
def test_cnn_parameter_count_and_pooling(k):
    model = build_model("cnn", input_dim=784, output_dim=10, width=k)
    c = [1, k, 2 * k, 4 * k, 8 * k]
    expected = sum((9 * c[j - 1] + 2) * c[j] for j in range(1, 5)) + (8 * k + 1) * 10
    assert count_params(model) == expected
    pools = [m for m in model.features if isinstance(m, (nn.MaxPool2d, nn.AdaptiveMaxPool2d))]
    assert len(pools) == 3  # [1, 2, 2, global]: 28 -> 14 -> 7 -> 1
    h = model.features(torch.rand(2, 1, 28, 28))
    assert h.shape == (2, 8 * k, 1, 1)
    assert model(torch.rand(5, 784)).shape == (5, 10)


def test_cnn_bad_input():
    with pytest.raises(ValueError, match="square images"):
        CNN(40, 10, 2)
    with pytest.raises(ValueError, match="no extra arguments"):
        build_model("cnn", input_dim=64, output_dim=10, width=2, zero_readout=True)


def _serial(models, x, y, seeds, lrs, steps, make_opt):
    """The oracle: each model trained alone by a plain torch loop; per-step losses."""
    losses = []
    for i, model in enumerate(models):
        opt = make_opt(model.parameters(), lrs[i])
        order = MinibatchOrder(N, B, torch.Generator().manual_seed(seeds[i]))
        row = []
        for _ in range(steps):
            idx = next(order)
            loss = nn.functional.cross_entropy(model(x[idx]), y[i][idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            row.append(loss.item())
        losses.append(row)
    return torch.tensor(losses, dtype=torch.float64)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_stacked_cnn_equals_serial_float64(optimizer):
    """Every member of the grouped-convolution ensemble follows its serial run: parameters,
    BatchNorm running statistics, eval-mode outputs and per-step losses, 60 steps, float64,
    to 1e-10 relative (measured ~1e-14)."""
    torch.manual_seed(0)
    x = torch.rand(N, SIDE * SIDE, dtype=torch.float64)
    y = torch.randint(0, 10, (3, N))
    seeds, lrs, steps = [0, 1, 2], [1e-2, 1e-2, 3e-2], 60
    if optimizer == "adam":

        def make_opt(p, lr):
            return torch.optim.Adam(p, lr=lr, betas=(0.8, 0.99), eps=1e-7, weight_decay=1e-3)

        kw = dict(betas=(0.8, 0.99), eps=1e-7, weight_decay=1e-3)
    else:

        def make_opt(p, lr):
            return torch.optim.SGD(p, lr=lr, momentum=0.9, weight_decay=1e-3)

        kw = dict(momentum=0.9, weight_decay=1e-3)
    ens = BatchedEnsemble(
        [cnn(2, s) for s in seeds], nn.CrossEntropyLoss(), x, y, optimizer=optimizer, lr=lrs,
        batch_size=B, seeds=seeds, y_per_member=True, **kw,
    )  # fmt: skip
    assert isinstance(ens.stacked, StackedCNN)
    fast = torch.stack([ens.step() for _ in range(steps)], 1)
    models = [cnn(2, s) for s in seeds]
    slow = _serial(models, x, y, seeds, lrs, steps, make_opt)
    assert torch.allclose(fast, slow, rtol=1e-10, atol=0)
    out = ens.outputs(x, x_batched=False)
    for i, model in enumerate(models):
        mine = ens.member_params(i)
        for name, p in model.named_parameters():
            assert torch.allclose(
                mine[name], p.detach(), rtol=1e-10, atol=1e-12 * float(p.detach().abs().max())
            )
        bufs = ens.member_buffers(i)
        for name, b in model.named_buffers():
            assert torch.allclose(bufs[name].to(b.dtype), b, rtol=1e-10, atol=1e-12), name
        model.eval()
        ref = model(x)
        assert torch.allclose(out[i], ref, rtol=1e-10, atol=1e-10 * float(ref.abs().max()))
        loaded = ens.load_member(i, cnn(2, 99).eval())
        assert torch.allclose(loaded(x), ref, rtol=1e-10, atol=1e-10 * float(ref.abs().max()))


def test_fast_adam_rejects_what_it_does_not_apply():
    x, y = torch.rand(N, SIDE * SIDE, dtype=torch.float64), torch.randint(0, 10, (N,))
    models = [cnn(1, 0), cnn(1, 1)]
    loss = nn.CrossEntropyLoss()
    with pytest.raises(ValueError, match="adam takes no momentum"):
        BatchedEnsemble(models, loss, x, y, optimizer="adam", lr=1e-3, momentum=0.9)
    with pytest.raises(ValueError, match="betas in"):
        BatchedEnsemble(models, loss, x, y, optimizer="adam", lr=1e-3, betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="applies gd, sgd, adam"):
        BatchedEnsemble(models, loss, x, y, optimizer="egr", lr=1e-3)


def test_stacked_cnn_batch_stats_modes_do_not_move_running_statistics():
    x = torch.rand(N, SIDE * SIDE, dtype=torch.float64)
    st = stacked_model([cnn(1, 0), cnn(1, 1)])
    params = st.stack()
    before = {k: v.clone() for k, v in st.buffers().items()}
    st.forward(params, x, x_batched=False, stats="batch")
    st.forward(params, x, x_batched=False, stats="running")
    assert all(torch.equal(before[k], v) for k, v in st.buffers().items())
    st.forward(params, x, x_batched=False, stats="update")
    assert not torch.equal(
        before["features.1.running_mean"], st.buffers()["features.1.running_mean"]
    )
    assert int(st.buffers()["features.1.num_batches_tracked"][0]) == 1
    with pytest.raises(ValueError, match="stats"):
        st.forward(params, x, x_batched=False, stats="eval")
    with pytest.raises(ValueError, match="one width"):
        stacked_model([cnn(1, 0), cnn(2, 1)])


def test_stacked_cnn_retire_and_checkpoint_round_trip():
    """A retired member keeps its parameters and statistics; a checkpoint restores the rest
    so that training continues bit for bit."""
    torch.manual_seed(1)
    x = torch.rand(N, SIDE * SIDE, dtype=torch.float64)
    y = torch.randint(0, 10, (3, N))

    def make():
        return BatchedEnsemble(
            [cnn(1, s) for s in range(3)], nn.CrossEntropyLoss(), x, y, optimizer="adam",
            lr=1e-2, batch_size=B, seeds=[0, 1, 2], y_per_member=True,
        )  # fmt: skip

    a = make()
    for _ in range(5):
        a.step()
    a.retire([1])
    kept = a.member_buffers(1)
    state = a.state_dict()
    b = make()
    b.load_state_dict(state)
    for _ in range(4):
        assert torch.equal(a.step(), b.step())
    for m in range(3):
        for k, v in a.member_buffers(m).items():
            assert torch.equal(v, b.member_buffers(m)[k])
    assert all(torch.equal(v, a.member_buffers(1)[k]) for k, v in kept.items())


def _engine_config(**kw) -> RunConfig:
    base = dict(
        model="cnn", width=2, dataset="mnist", n_train=48, n_test=32, label_noise=0.25,
        optimizer="adam", lr=3e-3, batch_size=16, steps=None, epochs=4, eval_every=12,
        eval_at=(1, 2, 5), probes=(), dtype="float64", chunk_size=24,
    )  # fmt: skip
    base.update(kw)
    return RunConfig(**base)


def test_planner_groups_cnn_adam_by_width_and_leaves_heavy_serial():
    small = [_engine_config(seed=s, label_noise=p) for s in range(2) for p in (0.0, 0.25)]
    other = [_engine_config(width=3, seed=s) for s in range(2)]
    assert group_key(small[0]) == group_key(small[3]) != group_key(other[0])
    plan = plan_sweep(small + other)
    assert sorted(len(g) for g in plan.groups) == [2, 4] and not plan.singles
    big = [_engine_config(width=8, dataset="mnist", n_train=4000, batch_size=128, seed=s)
           for s in range(2)]  # fmt: skip
    assert not plan_sweep(big).groups  # above FAST_MODEL_MAX_STEP_FLOPS: one at a time


def test_engine_cnn_ensemble_equals_serial_runs(tmp_path):
    """Runs of one width trained as a stacked ensemble by the engine equal their serial
    engine runs in float64 (Adam, BatchNorm, label noise): every evaluation (``eval_at``
    and ``eval_every``) of every metric, to 1e-10 relative."""
    pytest.importorskip("mlxtend")
    import pandas as pd

    from implicit_reg.engine.store import HISTORY_FILE, ResultStore, store_root
    from implicit_reg.engine.sweep import run_sweep

    configs = [_engine_config(seed=s, label_noise=p) for s in range(2) for p in (0.0, 0.25)]
    assert len(plan_sweep(configs).groups) == 1
    tables = []
    for name, vec in (("fast", True), ("slow", False)):
        run_sweep(configs, tmp_path / name, vectorize=vec, progress=False)
        store = ResultStore(store_root(tmp_path / name))
        tables.append([pd.read_csv(store.path_for(c) / HISTORY_FILE) for c in configs])
    for f, s in zip(*tables):
        assert list(f.step.unique()) == list(s.step.unique())
        assert list(s.step.unique())[:4] == [0, 1, 2, 5] and 12 in set(s.step)
        assert len(f) == len(s) and list(f.metric) == list(s.metric)
        assert f.value.to_numpy() == pytest.approx(s.value.to_numpy(), rel=1e-10, abs=1e-13)


def test_eval_at_validation():
    with pytest.raises(ValueError, match="eval_at"):
        _engine_config(eval_at=(5, 2))
    with pytest.raises(ValueError, match="eval_at"):
        _engine_config(eval_at=(0,))
    assert _engine_config(eval_at="1, 3").eval_at == (1, 3)
    assert _engine_config(eval_at=()).config_hash() == _engine_config(eval_at=[]).config_hash()
