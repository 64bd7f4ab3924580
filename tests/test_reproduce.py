"""The reproduction framework and every experiment at smoke scale.

Only that the files are produced and well formed is checked here, nothing
scientific: the experiments' claims are judged in their reports.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import zipfile
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest
from typer.testing import CliRunner

import implicit_reg
from implicit_reg.cli import app
from implicit_reg.engine.store import atomic_write_text
from implicit_reg.experiments import (
    available_experiments,
    load_experiment,
    reproduce,
    reproduce_all,
)
from implicit_reg.report.report import Report, select_scale, write_index
from implicit_reg.stats import paired_test

ROOT = Path(__file__).resolve().parents[1]
OURS = (
    "igr-toy",
    "igr-order",
    "double-descent-rf",
    "epoch-wise-linear",
    "epoch-wise-network",
    "sample-wise-linear",
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def check_report_dir(out: Path, name: str, scale: str = "smoke") -> str:
    """report.md, config.json, PNGs and CSVs in ``out`` exist and are well formed."""
    text = (out / "report.md").read_text(encoding="utf-8")
    assert "## Claims: the paper's and ours" in text
    assert "| claim | paper | ours | reproduces? |" in text
    assert f"implicit-reg reproduce {name} --scale {scale} --out {out}" in text
    assert f"implicit-reg {implicit_reg.__version__}" in text
    assert "Wall time:" in text and "```json" in text
    config = json.loads((out / "config.json").read_text())
    assert config["name"] == name and config["scale"] == scale
    summary = json.loads((out / "summary.json").read_text())
    assert summary["name"] == name and summary["claims"] and summary["wall_time_s"] > 0
    pngs = sorted(out.glob("*.png"))
    assert pngs, "no figure written"
    for png in pngs:
        data = png.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) < 300_000
        h, w = matplotlib.image.imread(png).shape[:2]
        assert h > 200 and w > 200
        assert f"]({png.name})" in text  # linked from the report
    for csv in out.glob("*.csv"):
        assert len(pd.read_csv(csv)) > 0
    assert not list(out.glob(".*.tmp")), "temporary files left behind"
    return text


@pytest.mark.parametrize("name", OURS)
def test_experiment_smoke_via_plain_function(tmp_path, name):
    report = reproduce(name, "smoke", tmp_path / name)
    assert isinstance(report, Report) and report.path == tmp_path / name / "report.md"
    assert report.wall_time_s is not None and report.claims
    check_report_dir(tmp_path / name, name)


def test_cli_runs_one_experiment(tmp_path):
    result = CliRunner().invoke(
        app, ["reproduce", "igr-order", "--scale", "smoke", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    check_report_dir(tmp_path, "igr-order")


def test_cli_unknown_name_and_scale_exit_2_with_one_line():
    runner = CliRunner()
    result = runner.invoke(app, ["reproduce", "no-such-experiment", "--scale", "smoke"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no-such-experiment" in lines[0]
    assert all(n in lines[0] for n in (*OURS, "all"))
    result = runner.invoke(app, ["reproduce", "igr-toy", "--scale", "huge"])
    assert result.exit_code == 2 and "smoke, small, full" in result.stderr


def test_registry_lists_our_experiments_and_rejects_unknown_names():
    names = available_experiments()
    assert set(OURS) <= set(names)
    assert not any(n.startswith("-") for n in names)  # _private helpers are not experiments
    module = load_experiment("igr-toy")
    assert module.NAME == "igr-toy" and module.__name__ == "implicit_reg.experiments.igr_toy"
    with pytest.raises(ValueError, match="igr-toy"):
        load_experiment("nope")
    with pytest.raises(ValueError, match="scale"):
        reproduce("igr-toy", "medium", Path("unused"))


# ---------------------------------------------------------------- a fake experiments directory

FAKE = '''
"""A tiny experiment for the framework tests."""
from pathlib import Path

from matplotlib.figure import Figure

from implicit_reg.report.report import Report, select_scale
from implicit_reg.stats import equivalence_test

from ._shared import VALUE

NAME = "{name}"
TITLE = "Fake experiment"
CONFIGS = {{"smoke": {{"n": 1}}, "small": {{"n": 2}}, "full": {{"n": 3}}}}


def run(scale: str, out: Path) -> Report:
    cfg = select_scale(CONFIGS, scale)
    report = Report(NAME, TITLE, scale, out, cfg, "nobody, 2024")
    report.add_claim(
        "x equals 1", "1", equivalence_test([VALUE, VALUE + 0.01, VALUE - 0.01], [1, 1, 1], margin=0.1)
    )
    fig = Figure()
    ax = fig.subplots()
    ax.plot([0, 1], [0, cfg["n"]])
    ax.set(xlabel="x", ylabel="y", title="fake")
    report.add_figure(fig, "fake.png", "a line")
    return report.write()
'''


FAKE_PACKAGE = "fake_experiments"


@pytest.fixture
def fake_dir(tmp_path, monkeypatch):
    """A package of experiments of its own, importable as FAKE_PACKAGE."""
    d = tmp_path / FAKE_PACKAGE
    d.mkdir()
    (d / "__init__.py").write_text("")
    (d / "_shared.py").write_text("VALUE = 1\n")
    (d / "fake_one.py").write_text(textwrap.dedent(FAKE.format(name="fake-one")))
    (d / "fake_two.py").write_text(textwrap.dedent(FAKE.format(name="fake-two")))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield d
    for key in [k for k in sys.modules if k.split(".")[0] == FAKE_PACKAGE]:
        del sys.modules[key]  # the next test loads its own directory afresh


def test_registry_discovers_files_and_shared_helpers(fake_dir, tmp_path):
    assert list(available_experiments(FAKE_PACKAGE)) == ["fake-one", "fake-two"]
    reports = reproduce_all("smoke", tmp_path / "out", FAKE_PACKAGE)
    assert [r.name for r in reports] == ["fake-one", "fake-two"]
    for name in ("fake-one", "fake-two"):
        text = check_report_dir(tmp_path / "out" / name, name)
        assert "| x equals 1 | 1 | " in text and "| reproduced |" in text
        assert "nobody, 2024" in text
    index = write_index(tmp_path / "out").read_text()
    assert "[fake-one](fake-one/report.md) | Fake experiment | smoke | 1/1 |" in index
    assert "[fake-two](fake-two/report.md)" in index


def test_registry_checks_the_interface(fake_dir):
    (fake_dir / "bad_name.py").write_text('NAME = "other"\nTITLE = "t"\ndef run(scale, out): ...\n')
    (fake_dir / "no_run.py").write_text('NAME = "no-run"\nTITLE = "t"\n')
    with pytest.raises(ValueError, match="expected 'bad-name'"):
        load_experiment("bad-name", FAKE_PACKAGE)
    with pytest.raises(ValueError, match="run"):
        load_experiment("no-run", FAKE_PACKAGE)
    with pytest.raises(ValueError, match="smoke, small, full"):
        select_scale({"smoke": 1}, "tiny")
    with pytest.raises(ValueError, match="no config for scale"):
        select_scale({"smoke": 1}, "smoke")


def test_every_entry_point_in_experiments_runs_its_experiment():
    """experiments/<stem>.py exists for every registered experiment and names it."""
    names = available_experiments()
    scripts = {p.stem.replace("_", "-"): p for p in (ROOT / "experiments").glob("*.py")}
    assert set(scripts) == set(names)
    for name, path in scripts.items():
        assert f'main("{name}")' in path.read_text()


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two" and os.listdir(path.parent) == ["a.txt"]


def test_wheel_ships_the_experiments_package(tmp_path):
    """Build the wheel as pip would: the experiments are a subpackage inside it."""
    wheel_builder = pytest.importorskip("hatchling.builders.wheel")
    (wheel,) = wheel_builder.WheelBuilder(str(ROOT)).build(
        directory=str(tmp_path), versions=["standard"]
    )
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    wanted = {"__init__.py", "igr_toy.py", "_flows.py"}
    assert {f"implicit_reg/experiments/{f}" for f in wanted} <= names


def test_cli_all_runs_every_experiment_writes_the_index_and_survives_a_failure(
    fake_dir, tmp_path, monkeypatch
):
    import implicit_reg.experiments as registry

    monkeypatch.setattr(registry, "PACKAGE", FAKE_PACKAGE)
    (fake_dir / "fake_bad.py").write_text(
        'NAME = "fake-bad"\nTITLE = "t"\ndef run(scale, out):\n    raise RuntimeError("boom")\n'
    )
    result = CliRunner().invoke(
        app, ["reproduce", "all", "--scale", "smoke", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 1
    assert "fake-bad failed: RuntimeError: boom" in result.stderr
    for name in ("fake-one", "fake-two"):
        check_report_dir(tmp_path / "o" / name, name)
    index = (tmp_path / "o" / "README.md").read_text()
    assert "fake-one" in index and "fake-two" in index and "fake-bad" not in index


def test_showcase_experiments_define_a_demo_scale_and_lines_say_the_verdicts(tmp_path):
    """Every experiment of ``make demo`` has a demo config; the printed lines carry each verdict."""
    from implicit_reg.experiments._showcase import SHOWCASE, showcase, summary_lines

    for name in SHOWCASE:
        assert "demo" in load_experiment(name).CONFIGS, name
    with pytest.raises(ValueError, match="not in the showcase"):
        showcase(tmp_path, ("no-such",))
    report = Report("x", "t", "demo", tmp_path, {"a": 1}, "p")
    report.add_claim("rises", "paper", paired_test([3.0, 5.0, 4.0], [1.0, 2.0, 3.0]))
    report.add_claim("falls", "paper", paired_test([0.1, -0.2, 0.3], [0.0, 0.0, 0.0]))
    report.write()
    lines = summary_lines(report)
    assert lines[0].startswith("x: 1/2 claims reproduced") and "yes" in lines[1]
    assert "n.c." in lines[2]
    assert "python -m implicit_reg.experiments._showcase x --out" in report.path.read_text()
    with pytest.raises(ValueError, match="no config for scale"):
        select_scale({"smoke": 1, "small": 2, "full": 3}, "demo")


def test_index_puts_the_hand_written_summary_first_and_notes_last(fake_dir, tmp_path):
    reproduce_all("smoke", tmp_path / "out", FAKE_PACKAGE)
    root = tmp_path / "out"
    (root / "SUMMARY.md").write_text("# What we saw\n\nOne line.\n")
    (root / "NOTES.md").write_text("¹ a footnote\n")
    text = write_index(root).read_text()
    assert text.startswith("# What we saw\n\nOne line.\n\n## Every report\n")
    assert text.index("[fake-one]") < text.index("¹ a footnote") and text.endswith("¹ a footnote\n")
