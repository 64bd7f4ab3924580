"""Config fields for the experiments: init_from, lr decay, model_options, loss names."""

from __future__ import annotations

import io

import pytest
import torch

from implicit_reg.engine.config import LOSSES, RunConfig
from implicit_reg.engine.train import run
from implicit_reg.engine.workload import build_run_model, load_run_data
from implicit_reg.workloads import losses
from implicit_reg.workloads.models import build_model

TINY = dict(dataset="teacher", n_train=30, n_test=20, probes=(), eval_every=5, steps=10)


pytestmark = pytest.mark.usefixtures("one_thread")


def final_state(result) -> dict[str, torch.Tensor]:
    return torch.load(io.BytesIO(result.checkpoint), weights_only=True)["state_dict"]


def small_checkpoint(tmp_path, **changes) -> tuple[str, dict]:
    cfg = RunConfig(**{**TINY, "width": 3, "checkpoint": True, **changes})
    result = run(cfg, tmp_path / "small", raise_errors=True)
    return str(tmp_path / "small" / cfg.config_hash() / "checkpoint.pt"), final_state(result)


def reused_model(cfg: RunConfig, small: dict):
    """The model ``cfg`` builds from ``small``'s weights, its seeded init alone, and for
    each tensor name (new, fresh, mask outside the leading block), the block checked to
    be ``small``'s tensor exactly."""
    data = load_run_data(cfg)
    model = build_run_model(cfg, data)
    spec = cfg.model_spec(data.input_dim, data.output_dim)
    fresh = build_model(spec.pop("name"), **spec).state_dict()  # the seeded init alone
    parts = {}
    for name, new in model.state_dict().items():
        old = small[name]
        block = tuple(slice(0, s) for s in old.shape)
        assert torch.equal(new[block], old), name
        rest = torch.ones_like(new, dtype=torch.bool)
        rest[block] = False
        parts[name] = (new, fresh[name], rest)
    return model, data, parts


def test_init_from_fills_the_leading_block_and_keeps_the_seeded_init_elsewhere(tmp_path):
    path, small = small_checkpoint(tmp_path)
    cfg = RunConfig(**{**TINY, "width": 5, "seed": 3, "init_from": path})
    _, _, parts = reused_model(cfg, small)
    for name, (new, fresh, rest) in parts.items():
        assert torch.equal(new[rest], fresh[rest]), name
    # the run starts there: dist_from_init is measured from the reused weights
    result = run(cfg.replace(steps=1, eval_every=1), raise_errors=True)
    assert result.metric("dist_from_init")[0] == (0, 0.0)


def test_init_from_noise_draws_the_new_weights_and_keeps_the_rest(tmp_path):
    """Belkin et al.'s reuse: the copied block is the checkpoint, a weight matrix's other
    entries are N(0, σ²) (seeded: the same seed, the same draw), biases keep the model's init."""
    path, small = small_checkpoint(tmp_path, depth=1)
    cfg = RunConfig(**{**TINY, "width": 400, "depth": 1, "seed": 3, "init_from": path,
                       "init_from_noise": 0.1})  # fmt: skip
    model, data, parts = reused_model(cfg, small)
    weights = 0
    for name, (new, fresh, rest) in parts.items():
        if new.dim() >= 2:
            weights += 1
            drawn = new[rest].double()
            n = drawn.numel()  # mean 0 and std 0.1 within 5 standard errors of the estimates
            assert abs(drawn.mean()) < 5 * 0.1 / n**0.5, name
            assert abs(drawn.std() - 0.1) < 5 * 0.1 / (2 * n) ** 0.5, name
            assert not torch.equal(new[rest], fresh[rest])
        else:
            assert torch.equal(new[rest], fresh[rest]), name
    assert weights == 2
    again = build_run_model(cfg, data).state_dict()
    other = build_run_model(cfg.replace(seed=4), data).state_dict()
    assert all(torch.equal(again[k], v) for k, v in model.state_dict().items())
    assert not torch.equal(other["net.0.weight"], model.state_dict()["net.0.weight"])
    assert cfg.config_hash() != cfg.replace(init_from_noise=None).config_hash()
    with pytest.raises(ValueError, match="needs init_from"):
        RunConfig(**{**TINY, "init_from_noise": 0.1})
    with pytest.raises(ValueError, match="init_from_noise"):
        cfg.replace(init_from_noise=-1.0)


def test_init_from_same_shape_continues_from_the_trained_weights(tmp_path):
    path, small = small_checkpoint(tmp_path)
    cfg = RunConfig(**{**TINY, "width": 3, "init_from": path})
    model = build_run_model(cfg, load_run_data(cfg))
    for name, t in model.state_dict().items():
        assert torch.equal(t, small[name])


def test_init_from_errors_say_what_is_wrong(tmp_path):
    cfg = RunConfig(**{**TINY, "width": 5, "init_from": str(tmp_path / "nope.pt")})
    with pytest.raises(ValueError, match="not found"):
        build_run_model(cfg, load_run_data(cfg))
    result = run(cfg)  # a run records the reason instead of raising
    assert result.status == "failed" and "not found" in result.summary["error"]
    path, _ = small_checkpoint(tmp_path)
    narrower = RunConfig(**{**TINY, "width": 2, "init_from": path})
    with pytest.raises(ValueError, match="does not fit"):
        build_run_model(narrower, load_run_data(narrower))
    deeper = RunConfig(**{**TINY, "width": 5, "depth": 3, "init_from": path})
    with pytest.raises(ValueError, match="incompatible architecture"):
        build_run_model(deeper, load_run_data(deeper))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        build_run_model(cfg.replace(init_from=str(junk)), load_run_data(cfg))
    with pytest.raises(ValueError, match="init_from"):
        RunConfig(**{**TINY, "init_from": " "})


@pytest.mark.parametrize("optimizer", ["gd", "sgd"])
def test_lr_decay_matches_torch_step_lr(optimizer):
    """Oracle: torch.optim.SGD with torch.optim.lr_scheduler.StepLR(step_size=K, gamma=f)."""
    extra = {"batch_size": 8, "momentum": 0.9} if optimizer == "sgd" else {}
    cfg = RunConfig(
        **{**TINY, "width": 4, "optimizer": optimizer, "lr": 0.2, "steps": 12,
           "lr_decay_every": 5, "lr_decay_factor": 0.5, "checkpoint": True, "dtype": "float64",
           **extra}
    )  # fmt: skip
    result = run(cfg, raise_errors=True)
    data = load_run_data(cfg)
    model = build_run_model(cfg, data)
    loss_fn = losses.make_loss(cfg.loss, num_classes=data.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    gen = torch.Generator().manual_seed(cfg.seed)
    order: list[torch.Tensor] = []
    for _ in range(cfg.steps):
        if optimizer == "sgd":
            if not order:
                order.extend(torch.randperm(data.n_train, generator=gen).split(8))
            idx = order.pop(0)
            x, y = data.x_train[idx], data.y_train[idx]
        else:
            x, y = data.train
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
        sched.step()
    for name, t in model.state_dict().items():
        torch.testing.assert_close(final_state(result)[name], t, rtol=1e-12, atol=1e-12)
    assert final_state(result).keys() == model.state_dict().keys()


def test_lr_decay_validation():
    with pytest.raises(ValueError, match="lr_decay_every"):
        RunConfig(lr_decay_factor=0.5)
    with pytest.raises(ValueError, match="lr_decay_factor"):
        RunConfig(lr_decay_every=10, lr_decay_factor=0.0)
    with pytest.raises(ValueError, match="lr_decay_every"):
        RunConfig(lr_decay_every=0)


def test_model_options_reach_build_model_and_are_checked():
    cfg = RunConfig(**{**TINY, "model": "rf_relu", "width": 6, "model_options": {"bias": False}})
    model = build_run_model(cfg, load_run_data(cfg))
    default = build_run_model(cfg.replace(model_options=None), load_run_data(cfg))
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_default = sum(p.numel() for p in default.parameters() if p.requires_grad)
    assert n_default - n == load_run_data(cfg).output_dim  # the readout bias c is gone
    bad = RunConfig(**{**TINY, "model_options": {"no_such_option": 1}})
    with pytest.raises(ValueError, match="no_such_option"):
        build_run_model(bad, load_run_data(bad))
    with pytest.raises(ValueError, match="width"):
        RunConfig(model_options={"width": 3})
    with pytest.raises(ValueError, match="model_options"):
        RunConfig(model_options={"x": object()})


def test_new_fields_enter_the_hash_only_when_set():
    base = RunConfig()
    assert base.config_hash() == RunConfig.from_dict({}).config_hash()
    assert "init_from" not in _non_default(base) and "model_options" not in _non_default(base)
    changed = {
        RunConfig(init_from="a.pt"),
        RunConfig(lr_decay_every=10),
        RunConfig(lr_decay_every=10, lr_decay_factor=0.5),
        RunConfig(model_options={"bias": False}),
    }
    hashes = {c.config_hash() for c in changed}
    assert len(hashes) == 4 and base.config_hash() not in hashes
    again = RunConfig.from_json(RunConfig(model_options={"bias": False}).to_json())
    assert again.config_hash() == RunConfig(model_options={"bias": False}).config_hash()


def _non_default(cfg: RunConfig) -> dict:
    fresh = RunConfig().to_dict()
    return {k: v for k, v in cfg.to_dict().items() if v != fresh[k]}


def test_loss_names_come_from_the_losses_module():
    assert LOSSES is losses.LOSSES
    for name in losses.LOSSES:
        task = "regression" if name != "cross_entropy" else "classification"
        RunConfig(loss=name, task=task, dataset="teacher")
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        RunConfig(loss="hinge")
