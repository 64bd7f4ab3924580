"""Reproductions of published results: one module per result, found by a registry.

An *experiment* is a module of this package whose name does not start with
``_`` (``igr_toy`` is the experiment ``igr-toy``: ``_`` written as ``-``).
It defines

- ``NAME: str``: its name, equal to the one derived from the module name;
- ``TITLE: str``: one line saying what is reproduced;
- ``run(scale: str, out: Path) -> Report``: runs at ``scale`` (one of
  :data:`implicit_reg.report.SCALES`), writes ``report.md``, its figures
  (PNG) and data into ``out`` and returns the written
  :class:`~implicit_reg.report.Report`.

Modules starting with ``_`` hold helpers the experiments share; ``demo`` is
the optimizer demo of ``implicit-reg demo``, not a reproduction. The
registry lists modules with :mod:`pkgutil` without importing them, so one
broken experiment does not hide the others.

Usage::

    implicit-reg reproduce igr-toy --scale small --out out/igr-toy
    python experiments/igr_toy.py --scale small          # the same, from a checkout

or from Python: ``reproduce("igr-toy", "small", Path("out/igr-toy"))``.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from pathlib import Path
from types import ModuleType

from ..report.report import SCALES, Report, check_scale, write_index

__all__ = [
    "NOT_EXPERIMENTS",
    "PACKAGE",
    "available_experiments",
    "load_experiment",
    "reproduce",
    "reproduce_all",
    "main",
]

#: modules of this package that are not reproductions
NOT_EXPERIMENTS = frozenset({"demo"})
#: the package the registry lists when none is named (tests point it at a package of their own)
PACKAGE = __name__


def available_experiments(package: str | None = None) -> dict[str, str]:
    """``{name: module name}`` for every experiment module of ``package``, sorted by name.

    ``package`` is an importable package name (default: this one; tests pass a
    package of their own). The modules are listed, not imported.
    """
    package = PACKAGE if package is None else package
    pkg = importlib.import_module(package)
    found = {
        info.name.replace("_", "-"): f"{package}.{info.name}"
        for info in pkgutil.iter_modules(pkg.__path__)
        if not info.name.startswith("_") and not info.ispkg and info.name not in NOT_EXPERIMENTS
    }
    return dict(sorted(found.items()))


def load_experiment(name: str, package: str | None = None) -> ModuleType:
    """Import the experiment ``name`` and check its interface.

    Raises:
        ValueError: ``name`` is not an experiment (the message lists the valid
            names), or the module lacks ``NAME``/``TITLE``/``run`` or its
            ``NAME`` differs from its module's.
    """
    package = PACKAGE if package is None else package
    registry = available_experiments(package)
    if name not in registry:
        raise ValueError(
            f"unknown experiment {name!r}; choose one of {', '.join(registry) or '(none found)'}"
        )
    module = importlib.import_module(registry[name])
    for attr in ("NAME", "TITLE"):
        if not isinstance(getattr(module, attr, None), str):
            raise ValueError(f"experiment module {module.__name__} must define {attr} as a string")
    if not callable(getattr(module, "run", None)):
        raise ValueError(
            f"experiment module {module.__name__} must define run(scale, out) -> Report"
        )
    if module.NAME != name:
        raise ValueError(
            f"experiment module {module.__name__} defines NAME={module.NAME!r}, expected {name!r}"
        )
    return module


def reproduce(name: str, scale: str, out: Path, package: str | None = None) -> Report:
    """Run the experiment ``name`` at ``scale``, writing its files into ``out``."""
    check_scale(scale)
    module = load_experiment(name, package)
    report = module.run(scale, Path(out))
    if not isinstance(report, Report):
        raise TypeError(f"{name}.run must return a Report, got {type(report).__name__}")
    return report


def reproduce_all(scale: str, out: Path, package: str | None = None) -> list[Report]:
    """Run every experiment at ``scale``, each into ``out/<name>``."""
    check_scale(scale)
    return [reproduce(n, scale, Path(out) / n, package) for n in available_experiments(package)]


def main(name: str, argv: list[str] | None = None) -> Report:
    """The command line of one experiment's entry point (``experiments/<stem>.py``):
    ``--scale`` and ``--out`` as in ``implicit-reg reproduce NAME``."""
    parser = argparse.ArgumentParser(
        prog=f"experiments/{name.replace('-', '_')}.py", description=load_experiment(name).TITLE
    )
    parser.add_argument("--scale", choices=SCALES, default="small")
    parser.add_argument(
        "--out", type=Path, default=None, help=f"output directory (default out/reproduce/{name})"
    )
    args = parser.parse_args(argv)
    out = Path("out/reproduce") / name if args.out is None else args.out
    report = reproduce(name, args.scale, out)
    print(f"{name}: wrote {report.path} in {report.wall_time_s:.1f} s")
    write_index(out.parent) if args.out is None else None
    return report
