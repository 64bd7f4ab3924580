"""One run: the update rules against independent oracles, stopping rules, determinism, storage."""

from __future__ import annotations

import io
import json

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian

from implicit_reg.engine.config import RunConfig
from implicit_reg.engine.store import ResultStore, read_json
from implicit_reg.engine.train import OneHotMSELoss, make_loss, run, step_budget
from implicit_reg.workloads.data import load_dataset
from implicit_reg.workloads.models import build_model

TINY = dict(dataset="teacher", n_train=30, n_test=20, width=3, probes=(), eval_every=1)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest's: one torch thread


def final_state(result) -> dict[str, torch.Tensor]:
    ckpt = torch.load(io.BytesIO(result.checkpoint), weights_only=True)
    return ckpt["state_dict"]


def initial_model_and_data(cfg: RunConfig):
    spec = cfg.dataset_spec()
    data = load_dataset(spec.pop("name"), **spec).to("cpu", getattr(torch, cfg.dtype))
    mspec = cfg.model_spec(data.input_dim, data.output_dim)
    model = build_model(mspec.pop("name"), **mspec).to(dtype=getattr(torch, cfg.dtype))
    return model, data


def assert_states_close(a, b, tol):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=tol, atol=tol)


def test_full_batch_gd_in_chunks_matches_torch_sgd_on_the_whole_data():
    """Oracle: torch.optim.SGD on the mean loss over all N samples, one backward."""
    cfg = RunConfig(**TINY, lr=0.3, steps=4, dtype="float64", chunk_size=7, checkpoint=True)
    model, data = initial_model_and_data(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    for _ in range(4):
        opt.zero_grad()
        nn.CrossEntropyLoss()(model(data.x_train), data.y_train).backward()
        opt.step()
    ours = run(cfg, raise_errors=True)
    assert_states_close(final_state(ours), model.state_dict(), 1e-12)
    # the chunk size does not change the trajectory
    whole = run(cfg.replace(chunk_size=None), raise_errors=True)
    assert_states_close(final_state(whole), final_state(ours), 1e-12)


def test_gd_with_momentum_and_mse_matches_torch_sgd():
    cfg = RunConfig(
        **TINY, lr=0.2, momentum=0.9, weight_decay=1e-3, loss="mse", steps=3,
        dtype="float64", chunk_size=11, checkpoint=True,
    )  # fmt: skip
    model, data = initial_model_and_data(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, weight_decay=1e-3)
    onehot = nn.functional.one_hot(data.y_train, data.num_classes).double()
    for _ in range(3):
        opt.zero_grad()
        nn.functional.mse_loss(model(data.x_train), onehot).backward()
        opt.step()
    assert_states_close(final_state(run(cfg, raise_errors=True)), model.state_dict(), 1e-12)


def test_sgd_draws_minibatches_without_replacement_from_the_seeded_generator():
    """Oracle: a fresh torch.randperm(N) per epoch from Generator(seed), batches of B in
    order (the last one short), torch.optim.SGD with Nesterov momentum."""
    n, b, epochs = 30, 8, 2
    cfg = RunConfig(
        **TINY, optimizer="sgd", batch_size=b, lr=0.1, momentum=0.5, nesterov=True,
        epochs=epochs, steps=None, seed=3, dtype="float64", checkpoint=True,
    )  # fmt: skip
    total, per_epoch = step_budget(cfg, n)
    assert (total, per_epoch) == (8, 4)
    model, data = initial_model_and_data(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5, nesterov=True)
    gen = torch.Generator().manual_seed(3)
    seen = []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        seen.append(sorted(perm.tolist()))
        for idx in perm.split(b):
            opt.zero_grad()
            nn.CrossEntropyLoss()(model(data.x_train[idx]), data.y_train[idx]).backward()
            opt.step()
    assert all(s == list(range(n)) for s in seen)  # every sample once per epoch
    ours = run(cfg, raise_errors=True)
    assert ours.summary["steps_done"] == 8 and ours.summary["epochs_done"] == 2
    assert_states_close(final_state(ours), model.state_dict(), 1e-12)


def _flat_loss(model, loss_fn, x, y):
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]

    def f(theta):
        parts = torch.split(theta, sizes)
        params = {k: t.reshape(s) for k, t, s in zip(names, parts, shapes)}
        return loss_fn(functional_call(model, params, (x,)), y)

    return f


def test_chunked_exact_egr_step_matches_explicit_hessian():
    """θ₁ = θ₀ − h(g + 2μHg), μ = h/4, with H = torch.func.hessian of the full-data loss."""
    h = 0.4
    cfg = RunConfig(
        **TINY, optimizer="egr", lr=h, steps=1, dtype="float64", chunk_size=7,
        activation="tanh", checkpoint=True,
    )  # fmt: skip
    model, data = initial_model_and_data(cfg)
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    f = _flat_loss(model, nn.CrossEntropyLoss(), data.x_train, data.y_train)
    g = torch.func.grad(f)(theta)
    H = hessian(f)(theta)
    expected = theta - h * (g + 2 * (h / 4) * H @ g)
    state = final_state(run(cfg, raise_errors=True))
    got = torch.cat([state[k].reshape(-1) for k, _ in model.named_parameters()])
    torch.testing.assert_close(got, expected, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("method", ["exact", "finite_difference"])
def test_chunked_egr_follows_the_unchunked_egr_optimizer(method):
    base = RunConfig(
        **TINY, optimizer="egr", egr_method=method, egr_coeff=0.3, lr=0.5, steps=3,
        dtype="float64", activation="tanh", checkpoint=True,
    )  # fmt: skip
    whole = final_state(run(base, raise_errors=True))  # implicit_reg.core.optim.EGR.step
    chunked = final_state(run(base.replace(chunk_size=8), raise_errors=True))
    assert_states_close(chunked, whole, 1e-10 if method == "exact" else 1e-6)


def test_history_is_long_form_with_base_metrics_probes_and_clean_error():
    cfg = RunConfig(
        **{**TINY, "eval_every": 2, "probes": ("lambda_max", "trace", "grad_norm_sq")},
        label_noise=0.2, steps=4, probe_every=2,
    )  # fmt: skip
    res = run(cfg, raise_errors=True)
    df = res.history_frame()
    assert list(df.columns) == ["step", "metric", "value"]
    steps = {m: sorted(df[df.metric == m].step) for m in df.metric.unique()}
    for m in ("train_loss", "test_loss", "train_error", "test_error", "train_error_clean",
              "grad_norm_sq", "weight_norm", "dist_from_init"):  # fmt: skip
        assert steps[m] == [0, 2, 4], m
    assert steps["lambda_max"] == [0, 2, 4] and steps["trace"] == [0, 2, 4]
    assert not df.duplicated(["step", "metric"]).any()
    # summary = the last value of each metric
    last = df.groupby("metric").value.last()
    for m, v in last.items():
        assert res.summary[m] == pytest.approx(v)
    assert df[(df.metric == "dist_from_init") & (df.step == 0)].value.item() == 0.0
    assert res.summary["lambda_max"] > 0


def test_probes_run_at_the_end_only_by_default():
    res = run(RunConfig(**{**TINY, "probes": ("lambda_max",)}, steps=3), raise_errors=True)
    assert [s for s, _ in res.metric("lambda_max")] == [3]


def test_same_config_twice_gives_identical_metrics():
    cfg = RunConfig(
        **{**TINY, "probes": ("lambda_max", "trace")}, optimizer="sgd", batch_size=7,
        momentum=0.9, steps=6, label_noise=0.1,
    )  # fmt: skip
    a, b = run(cfg, raise_errors=True), run(cfg, raise_errors=True)
    assert a.history == b.history
    c = run(cfg.replace(seed=1), raise_errors=True)
    assert c.history != a.history


def test_divergence_is_a_result_not_an_exception():
    res = run(RunConfig(**{**TINY, "width": 16}, lr=100.0, steps=50))
    assert res.status == "diverged" and res.summary["stop_reason"] == "diverged"
    assert 0 <= res.summary["diverged_at"] < 50
    assert res.summary["steps_done"] == res.summary["diverged_at"]
    loss = res.summary["train_loss"]
    assert not (loss == loss) or loss > 1e6 or loss == float("inf")  # NaN, inf or above the bound
    # a bound below the initial loss: diverged at step 0
    early = run(RunConfig(**TINY, max_loss=1e-3, steps=5))
    assert early.status == "diverged" and early.summary["diverged_at"] == 0


def test_target_train_loss_stops_the_run():
    cfg = RunConfig(**{**TINY, "width": 32}, lr=1.0, steps=500, target_train_loss=1.5)
    res = run(cfg, raise_errors=True)
    assert res.status == "complete" and res.summary["stop_reason"] == "target_train_loss"
    assert 0 < res.summary["steps_done"] < 500
    losses = [v for _, v in res.metric("train_loss")]
    assert min(losses) <= 1.5 < losses[0]


def test_a_run_that_raises_is_recorded_as_failed_with_its_traceback(monkeypatch, tmp_path):
    import implicit_reg.engine.steppers as steppers_mod

    def broken(*args, **kwargs):
        raise RuntimeError("evaluation exploded")

    monkeypatch.setattr(steppers_mod, "evaluate", broken)
    cfg = RunConfig(**TINY, steps=2)
    res = run(cfg, tmp_path)
    assert res.status == "failed"
    assert "Traceback" in res.summary["error"] and "evaluation exploded" in res.summary["error"]
    assert read_json(tmp_path / cfg.config_hash() / "summary.json")["status"] == "failed"
    with pytest.raises(RuntimeError, match="exploded"):
        run(cfg, raise_errors=True)


def test_run_writes_config_versions_history_checkpoint_and_summary(tmp_path):
    cfg = RunConfig(**TINY, steps=3, checkpoint=True)
    res = run(cfg, tmp_path)
    d = tmp_path / cfg.config_hash()
    assert {p.name for p in d.iterdir()} == {
        "config.json", "meta.json", "history.csv", "summary.json", "checkpoint.pt",
    }  # fmt: skip
    assert RunConfig.from_dict(json.loads((d / "config.json").read_text())) == cfg
    meta = read_json(d / "meta.json")
    assert meta["torch"] == torch.__version__ and "implicit_reg" in meta
    assert read_json(d / "summary.json")["test_error"] == res.summary["test_error"]
    lines = (d / "history.csv").read_text().splitlines()
    assert lines[0] == "step,metric,value" and len(lines) == 1 + len(res.history)
    # the checkpoint is what `implicit-reg probe` loads: rebuild the model from it
    ckpt = torch.load(d / "checkpoint.pt", weights_only=True)
    assert ckpt["loss"] == "cross_entropy" and "optimizer" in ckpt
    spec, dspec = dict(ckpt["model_spec"]), dict(ckpt["dataset_spec"])
    model = build_model(spec.pop("name"), **spec)
    model.load_state_dict(ckpt["state_dict"])
    data = load_dataset(dspec.pop("name"), **dspec)
    loss_fn = make_loss(ckpt["loss"], num_classes=data.num_classes)
    with torch.no_grad():
        loss = float(loss_fn(model(data.x_train), data.y_train))
    assert loss == pytest.approx(res.summary["train_loss"], rel=1e-6)


def test_only_a_summary_makes_a_run_complete(tmp_path):
    cfg = RunConfig(**TINY, steps=1)
    store = ResultStore(tmp_path)
    d = store.path_for(cfg)
    d.mkdir(parents=True)
    (d / "config.json").write_text(cfg.to_json())
    (d / "history.csv").write_text("step,metric,va")  # a write cut short
    assert not store.is_complete(cfg) and store.status(cfg) is None
    store.write(run(cfg))
    assert store.is_complete(cfg) and store.status(cfg) == "complete"
    assert not list(d.glob(".*.tmp"))  # no temporary files left behind


def test_one_hot_mse_is_mean_over_samples_and_classes():
    out = torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([2, 0])
    expected = ((0.5**2 + 1.0 + 1.0**2) + (1.0 + 0 + 0)) / 6
    assert float(OneHotMSELoss(3)(out, y)) == pytest.approx(expected)
    with pytest.raises(ValueError, match="needs class labels"):
        make_loss("cross_entropy", num_classes=None)


def test_minibatch_egr_follows_egr_on_the_same_batches():
    """Oracle: implicit_reg.core.optim.EGR stepped on the batches of one seeded permutation."""
    from implicit_reg.core.optim import EGR

    cfg = RunConfig(
        **TINY, optimizer="egr", batch_size=8, lr=0.3, epochs=1, steps=None, seed=5,
        activation="tanh", dtype="float64", chunk_size=3, checkpoint=True,
    )  # fmt: skip
    model, data = initial_model_and_data(cfg)
    opt = EGR(model.parameters(), lr=0.3)
    for idx in torch.randperm(30, generator=torch.Generator().manual_seed(5)).split(8):
        opt.step(lambda idx=idx: nn.CrossEntropyLoss()(model(data.x_train[idx]), data.y_train[idx]))
    assert_states_close(final_state(run(cfg, raise_errors=True)), model.state_dict(), 1e-11)
