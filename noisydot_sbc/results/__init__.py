"""Results I/O: the SBC xarray Dataset schema, crash-safe chunk files, measurements, posteriors.

This is the ONLY project package that imports xarray, one module per job: :mod:`.schema` (the
schema of ``results.nc``, documented in ``docs/sbc.md``, the Dataset builders and the one netCDF
read/write), :mod:`.store` (the run folder's chunk files and its lock), :mod:`.measurements`
(device measurements in netCDF/CSV and a fit's posterior file) and :mod:`.sweep` (finished runs
-> per-run figures and a side-by-side summary). Every public name is re-exported here, so
``from noisydot_sbc import results; results.X`` reaches it without naming the module.
"""
from .measurements import MEASUREMENT_DIMS, load_measurements, save_measurements, write_posterior
from .schema import (
    DEFAULT_ATTRS,
    REQUIRED_ATTRS,
    REQUIRED_VARS,
    SCHEMA,
    UNDEFINED_OK,
    add_variables,
    build_grid_dataset,
    build_ppc_dataset,
    build_sbc_dataset,
    load_dataset,
    package_versions,
    save_dataset,
)
from .store import LOCK_NAME, RunLocked, finished_chunks, load_chunk, merge_chunks, run_lock, write_chunk
from .sweep import find_runs, summarize_run, sweep_summary

__all__ = [
    "SCHEMA",
    "UNDEFINED_OK",
    "REQUIRED_VARS",
    "REQUIRED_ATTRS",
    "DEFAULT_ATTRS",
    "build_sbc_dataset",
    "write_chunk",
    "finished_chunks",
    "load_chunk",
    "merge_chunks",
    "save_dataset",
    "load_dataset",
    "package_versions",
    "load_measurements",
    "write_posterior",
    "add_variables",
    "build_ppc_dataset",
    "build_grid_dataset",
    "save_measurements",
    "MEASUREMENT_DIMS",
    "find_runs",
    "sweep_summary",
    "summarize_run",
    "run_lock",
    "RunLocked",
    "LOCK_NAME",
]
