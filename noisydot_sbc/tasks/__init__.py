"""The tasks ``run.py`` runs, one module each, selected by ``task.name``:

- ``sbc`` (:mod:`.sbc`): simulation-based calibration of one model under one prior (chunked, resumable);
- ``fit`` (:mod:`.fit`): fit a model to measured data (x, w, y) from a netCDF or CSV file;
- ``degeneracy`` (:mod:`.degeneracy`): the identifiability map over design features.

Each is one function ``run_<task>(cfg) -> dict`` (headline figures) over the shared steps of
:mod:`.common`; :func:`run` sets the precision and dispatches.
"""
from __future__ import annotations

from .common import configure_platform


def run(cfg) -> dict:
    """Run the task named ``cfg.task.name``; returns a small dict of headline figures."""
    configure_platform(cfg)
    task = str(cfg.task.name)
    if task == "sbc":
        from .sbc import run_sbc

        return run_sbc(cfg)
    if task == "fit":
        from .fit import run_fit

        return run_fit(cfg)
    if task == "degeneracy":
        from .degeneracy import run_degeneracy

        return run_degeneracy(cfg)
    raise ValueError(f"task.name must be 'sbc', 'fit' or 'degeneracy', got {task!r}")


__all__ = ["run"]
