"""flat-optimizers at smoke scale: a well-formed report, every arm trained by the engine."""

from __future__ import annotations

import pandas as pd
import torch

from implicit_reg.experiments import load_experiment, reproduce


def test_smoke_report_is_well_formed(tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "flat-optimizers"  # its runs go to lr-sweep's store, tmp_path/lr-sweep
    report = reproduce("flat-optimizers", "smoke", out)
    text = report.path.read_text(encoding="utf-8")
    module = load_experiment("flat-optimizers")
    assert text.startswith(f"# {module.TITLE}\n")
    assert (out / "flat_optimizers.png").read_bytes().startswith(b"\x89PNG")
    runs = pd.read_csv(out / "runs.csv")
    cfg = module.CONFIGS["smoke"]
    assert len(runs) == (3 + len(cfg.rhos)) * cfg.seeds
    assert set(runs.optimizer) == {"gd", "egr", "sam"}
    assert sorted(runs.rho.dropna().unique()) == sorted(cfg.rhos)
    assert (runs.step_ratio > 0).all()
    # a rerun reads the store instead of training again
    again = reproduce("flat-optimizers", "smoke", out)
    assert "0 of them trained by this call" in again.path.read_text(encoding="utf-8")
    assert (tmp_path / "lr-sweep" / "sweep").is_dir()  # Plan(borrows="lr-sweep")
