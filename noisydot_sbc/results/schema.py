"""The SBC results schema and the Dataset builders: what ``results.nc`` holds; the netCDF read/write.

One job: define and validate the Datasets the project writes, and move them to and from netCDF.
:data:`SCHEMA` encodes the schema of ``results.nc`` (documented in ``docs/sbc.md``) and
:func:`build_sbc_dataset` checks a chunk or a whole run against it; :func:`save_dataset` (atomic)
and :func:`load_dataset` are the one netCDF write and read; :func:`add_variables`,
:func:`build_ppc_dataset` and :func:`build_grid_dataset` build the other Datasets (run-level
summaries, a fit's posterior predictive check, measures on a grid). Diagnostics are whatever the
inference method declared (see :mod:`noisydot_sbc.diagnostics`): the schema fixes the SBC
variables only; the diagnostics derived from declared statistics take their dims and kind from
``diagnostics.DERIVED`` (or come as ``(dims, array)``), so a posterior without NUTS statistics
makes a valid file without NUTS fields.
"""
from __future__ import annotations

import datetime as _dt
import json
import platform
from importlib import metadata
from pathlib import Path

import numpy as np
import xarray as xr

from .._validation import as_array, atomic_write
from ..diagnostics import DERIVED

__all__ = [
    "SCHEMA",
    "UNDEFINED_OK",
    "INFINITE_OK",
    "REQUIRED_VARS",
    "REQUIRED_ATTRS",
    "DEFAULT_ATTRS",
    "package_versions",
    "build_sbc_dataset",
    "save_dataset",
    "load_dataset",
    "add_variables",
    "build_ppc_dataset",
    "build_grid_dataset",
]

# variable -> (dims, kind) with kind 'f' float, 'i' int, 'b' bool, 'U' str
SCHEMA: dict[str, tuple[tuple[str, ...], str]] = {
    "true": (("replicate", "quantity"), "f"),
    "rank": (("replicate", "quantity"), "i"),
    "posterior_mean": (("replicate", "quantity"), "f"),
    "posterior_sd": (("replicate", "quantity"), "f"),
    "z_score": (("replicate", "parameter"), "f"),
    "contraction": (("replicate", "parameter"), "f"),
    "draws": (("replicate", "chain", "draw", "parameter"), "f"),
    "wall_time_share": (("replicate",), "f"),
    "failed": (("replicate",), "b"),
    "error": (("replicate",), "U"),
}
# diagnostics derived from declared statistics (present only when declared)
SCHEMA.update({name: (("replicate",) + d.dims, d.kind) for name, d in DERIVED.items()})
# NaN = undefined diagnostic (constant draws), or no reference (beyond sbc.reference_replicates, or
# the reference quadrature failed: ref_certified is False there)
UNDEFINED_OK = ("r_hat", "ess_bulk", "ess_tail", "bfmi", "ref_w1_log", "ref_kl_log", "ref_median_shift", "ref_sd_ratio")
# variables where inf is a stated value (NaN still refused outside failed replicates): a quadrature's
# error_estimate is inf where its walk was cut short (node budget, lattice edge) and it has no estimate
INFINITE_OK = ("error_estimate",)
REQUIRED_VARS = ("true", "rank", "failed")
REQUIRED_ATTRS = ("num_ranks",)
DEFAULT_ATTRS = {"config_yaml": "", "seed": -1, "model": "", "prior": "", "chain_method": "", "inference": ""}


def package_versions() -> dict:
    """Versions of Python, the platform and the packages that shape results."""
    out = {"python": platform.python_version(), "platform": platform.platform(), "machine": platform.machine()}
    for pkg in (
        "noisydot_sbc", "numpy", "scipy", "jax", "jaxlib", "numpyro", "arviz", "xarray", "netCDF4",
        "hydra-core", "omegaconf", "matplotlib", "seaborn", "pandas",
    ):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def build_sbc_dataset(arrays: dict, coords: dict, attrs: dict, descriptions: dict | None = None) -> xr.Dataset:
    """Assemble and validate one SBC Dataset (a chunk or a whole run).

    ``arrays``: variable name -> numpy array, for the names in :data:`SCHEMA` (``true``, ``rank``
    and ``failed`` required) and for the diagnostics of ``diagnostics.DERIVED``; extra variables
    (e.g. a declared replicate-level statistic) as ``(dims, array)`` tuples, e.g. from
    ``Diagnostics.variables()``. ``descriptions``: name -> text (stored as the variable's
    ``description`` attribute) or name -> dict of attributes (``Diagnostics.attrs()``: description
    and level; the plots give each declared replicate-level statistic a panel).
    ``coords``: ``quantity`` and ``parameter`` (lists of names) are required; ``replicate``
    (global replicate indices, default ``0..S-1``) optional. Sizes of ``chain``/``draw`` come
    from the arrays. ``attrs``: ``num_ranks`` (L) required; ``config_yaml``, ``seed``, ``model``,
    ``prior``, ``chain_method``, ``inference`` default to empty/-1; ``versions`` and ``created``
    are filled in. Failed replicates may hold NaN and rank -1. Every inconsistency raises
    ValueError naming the variable."""
    if not isinstance(arrays, dict) or not arrays:
        raise ValueError("arrays must be a non-empty dict of variable name -> array")
    missing = [v for v in REQUIRED_VARS if v not in arrays]
    if missing:
        raise ValueError(f"arrays is missing the required variable(s) {missing}")
    for c in ("quantity", "parameter"):
        if c not in coords:
            raise ValueError(f"coords must give '{c}' (a list of names)")
    missing = [a for a in REQUIRED_ATTRS if a not in attrs]
    if missing:
        raise ValueError(f"attrs is missing {missing}")
    num_ranks = attrs["num_ranks"]
    if not isinstance(num_ranks, (int, np.integer)) or num_ranks < 1:
        raise ValueError(f"attrs['num_ranks'] must be a positive integer (L), got {num_ranks!r}")

    sizes: dict[str, int] = {}
    coord_vals: dict[str, np.ndarray] = {}
    for c in ("quantity", "parameter"):
        names = [str(n) for n in coords[c]]
        if len(names) == 0 or len(set(names)) != len(names):
            raise ValueError(f"coords['{c}'] must be a non-empty list of distinct names, got {coords[c]!r}")
        coord_vals[c] = np.array(names, dtype=object)
        sizes[c] = len(names)

    data_vars = {}
    for name, value in arrays.items():
        if name in SCHEMA:
            dims, kind = SCHEMA[name]
            if isinstance(value, tuple):
                if tuple(value[0]) != dims:
                    raise ValueError(f"{name} is a schema variable with dims {dims}, got (dims, array) with {tuple(value[0])}")
                value = value[1]
            arr = as_array(name, value, kind=kind, finite=False, allow_empty=True)
        else:
            if not (isinstance(value, tuple) and len(value) == 2):
                raise ValueError(f"{name} is not in the schema: pass it as (dims, array)")
            dims, arr = tuple(value[0]), np.asarray(value[1])
        if arr.ndim != len(dims):
            raise ValueError(f"{name} must have dims {dims} ({len(dims)}-d), got shape {arr.shape}")
        for d, n in zip(dims, arr.shape):
            if d in sizes and sizes[d] != n:
                raise ValueError(
                    f"{name} has {n} entries along '{d}' but {'coords' if d in coord_vals else 'other variables'} "
                    f"give {sizes[d]} (shape {arr.shape}, dims {dims})"
                )
            sizes[d] = n
        data_vars[name] = (dims, arr)

    failed = data_vars["failed"][1]
    rank = data_vars["rank"][1]
    bad_rank = ((rank < 0) | (rank > num_ranks)).reshape(rank.shape[0], -1).any(axis=1) & ~failed
    if np.any(bad_rank):
        raise ValueError(f"rank must be in 0..num_ranks={num_ranks} in replicates not marked failed "
                         f"(first: replicate {int(np.argmax(bad_rank))})")
    for name, (dims, arr) in data_vars.items():
        if arr.dtype.kind == "f" and dims and dims[0] == "replicate" and name not in UNDEFINED_OK and arr.size:
            as_array(name, arr, failed=failed, allow_inf=name in INFINITE_OK)

    s = sizes["replicate"]
    rep = np.arange(s) if coords.get("replicate") is None else np.asarray(coords["replicate"])
    if rep.shape != (s,) or rep.dtype.kind not in "iu" or len(np.unique(rep)) != s:
        raise ValueError(f"coords['replicate'] must be {s} distinct integers, got {coords.get('replicate')!r}")
    c_all = {"replicate": rep.astype(np.int64), **coord_vals}
    for d in ("chain", "draw"):
        if d in sizes:
            c_all[d] = np.arange(sizes[d])

    full_attrs = dict(DEFAULT_ATTRS)
    full_attrs.update(attrs)
    if "versions" not in attrs:
        full_attrs["versions"] = json.dumps(package_versions())
    elif not isinstance(attrs["versions"], str):
        full_attrs["versions"] = json.dumps(attrs["versions"])
    full_attrs.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    for k, v in full_attrs.items():
        if isinstance(v, (bool, np.bool_)):
            full_attrs[k] = int(v)
        elif v is None:
            full_attrs[k] = ""
        elif not isinstance(v, (str, int, float, np.integer, np.floating)):
            raise ValueError(f"attrs['{k}'] must be a str or number (netCDF attribute), got {type(v).__name__}")
    ds = xr.Dataset(data_vars, coords=c_all, attrs=full_attrs)
    for name, text in (descriptions or {}).items():
        if name in ds.variables and text:
            extra = dict(text) if isinstance(text, dict) else {"description": text}
            ds[name].attrs.update({k: str(v) for k, v in extra.items() if v is not None})
    return ds


# --------------------------------------------------------------------------- netCDF files


def _encoding(ds: xr.Dataset) -> dict:
    enc = {}
    for name, var in ds.variables.items():
        if var.dtype == object:
            enc[name] = {"dtype": str}
    return enc


def _atomic_to_netcdf(ds: xr.Dataset, path: Path) -> None:
    atomic_write(path, lambda tmp: ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=_encoding(ds)))


def save_dataset(ds: xr.Dataset, path) -> Path:
    """Write ``ds`` to netCDF4 at ``path`` atomically (temp file + os.replace). Strings are stored
    as variable-length strings, bools as int8 flagged for decoding back to bool."""
    if not isinstance(ds, xr.Dataset):
        raise ValueError(f"ds must be an xarray.Dataset, got {type(ds).__name__}")
    path = Path(path)
    _atomic_to_netcdf(ds, path)
    return path


def load_dataset(path) -> xr.Dataset:
    """Load a netCDF file fully into memory (the file is closed afterwards)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path {str(path)!r} does not exist")
    try:
        ds = xr.load_dataset(path, engine="netcdf4")
    except Exception as exc:
        raise ValueError(f"path {str(path)!r} is not a readable netCDF file: {exc}") from exc
    for name in ("error", "quantity", "parameter"):
        if name in ds.variables and ds[name].dtype.kind in "SO":
            ds[name] = ds[name].astype(object)
    return ds


def add_variables(ds: xr.Dataset, variables: dict) -> xr.Dataset:
    """Return ``ds`` with extra variables given as name -> (dims, array) (e.g. run-level summaries)."""
    for name, value in variables.items():
        if not (isinstance(value, tuple) and len(value) == 2):
            raise ValueError(f"{name} must be given as (dims, array)")
        dims, arr = tuple(value[0]), np.asarray(value[1])
        for d, n in zip(dims, arr.shape):
            if d in ds.sizes and ds.sizes[d] != n:
                raise ValueError(f"{name} has {n} entries along '{d}' but the dataset has {ds.sizes[d]}")
    return ds.assign({name: (tuple(v[0]), np.asarray(v[1])) for name, v in variables.items()})


def build_ppc_dataset(y, y_rep, pit, z_obs, z_rep, thresholds, obs_exceed, rep_exceed_lo, rep_exceed_hi,
                      rep_exceed_mean, tail_ppp, attrs=None) -> xr.Dataset:
    """Posterior predictive check of a fit: observed y (obs), replicated y_rep (ppc_draw, obs),
    PIT values, standardised residuals and tail-exceedance fractions by threshold (in sd)."""
    y, y_rep = np.asarray(y, dtype=float), np.asarray(y_rep, dtype=float)
    if y.ndim != 1 or y_rep.ndim != 2 or y_rep.shape[1] != y.shape[0]:
        raise ValueError(f"y_rep must be (draws, {y.shape[0]}), got {y_rep.shape}")
    ds = xr.Dataset(
        {
            "y": (("obs",), y),
            "y_rep": (("ppc_draw", "obs"), y_rep),
            "pit": (("obs",), np.asarray(pit, dtype=float)),
            "z_obs": (("obs",), np.asarray(z_obs, dtype=float)),
            "z_rep": (("ppc_draw", "obs"), np.asarray(z_rep, dtype=float)),
            "obs_exceed": (("threshold",), np.asarray(obs_exceed, dtype=float)),
            "rep_exceed_lo": (("threshold",), np.asarray(rep_exceed_lo, dtype=float)),
            "rep_exceed_hi": (("threshold",), np.asarray(rep_exceed_hi, dtype=float)),
            "rep_exceed_mean": (("threshold",), np.asarray(rep_exceed_mean, dtype=float)),
            "tail_ppp": (("threshold",), np.asarray(tail_ppp, dtype=float)),
        },
        coords={"threshold": np.asarray(thresholds, dtype=float)},
        attrs={k: str(v) for k, v in (attrs or {}).items()},
    )
    return ds


def build_grid_dataset(variables: dict, coords: dict, long_names: dict | None = None, attrs=None) -> xr.Dataset:
    """A Dataset of measures on a grid: variables name -> array with dims in the order of ``coords``."""
    dims = tuple(coords)
    shape = tuple(len(v) for v in coords.values())
    data_vars = {}
    for name, arr in variables.items():
        arr = np.asarray(arr, dtype=float)
        if arr.shape != shape:
            raise ValueError(f"{name} must have shape {shape} (dims {dims}), got {arr.shape}")
        data_vars[name] = (dims, arr, {"long_name": (long_names or {}).get(name, name)})
    ds = xr.Dataset(data_vars, coords={k: np.asarray(v) for k, v in coords.items()},
                    attrs={k: (v if isinstance(v, (int, float, str)) else str(v)) for k, v in (attrs or {}).items()})
    for k in coords:
        if long_names and k in long_names:
            ds[k].attrs["long_name"] = long_names[k]
    return ds
