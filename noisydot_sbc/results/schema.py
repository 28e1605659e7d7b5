"""Results I/O: the SBC xarray Dataset schema, crash-safe chunk files, measurements, posteriors.

This is the ONLY project module that imports xarray. The schema of ``results.nc`` is documented
in ``docs/sbc.md`` and encoded in :data:`SCHEMA`.

Chunks: each finished batch of replicates is written as ``run_dir/chunk_00003.nc`` by writing a
temporary file in the same folder and ``os.replace``-ing it (atomic on POSIX), so a killed run
leaves either a complete chunk or a ``.tmp`` file that :func:`finished_chunks` ignores and removes.
A run resumes by computing only the chunk indices not in :func:`finished_chunks`; :func:`run_lock`
keeps two runs in one folder from computing chunks at once.

Diagnostics are whatever the inference method declared (see :mod:`noisydot_sbc.diagnostics`): the
schema fixes the SBC variables only; the diagnostics derived from declared statistics take their
dims and kind from ``diagnostics.DERIVED`` (or come as ``(dims, array)``), so a posterior without
NUTS statistics makes a valid file without NUTS fields.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import platform
import re
from importlib import metadata
from pathlib import Path

import numpy as np
import xarray as xr

from .._validation import as_array, atomic_write
from ..diagnostics import DERIVED

__all__ = [
    "SCHEMA",
    "REQUIRED_VARS",
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
    "find_runs",
    "sweep_summary",
    "summarize_run",
    "run_lock",
    "RunLocked",
    "LOCK_NAME",
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
UNDEFINED_OK = ("r_hat", "ess_bulk", "ess_tail", "bfmi")  # NaN = undefined diagnostic (constant draws)
REQUIRED_VARS = ("true", "rank", "failed")
REQUIRED_ATTRS = ("num_ranks",)
DEFAULT_ATTRS = {"config_yaml": "", "seed": -1, "model": "", "prior": "", "chain_method": "", "inference": ""}
LOCK_NAME = "run.lock"
_CHUNK_RE = re.compile(r"^chunk_(\d{5,})\.nc$")
_TMP_RE = re.compile(r"^\.chunk_(\d{5,})\.nc\.(\d+)\..*\.tmp$")


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
            as_array(name, arr, failed=failed)

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


# --------------------------------------------------------------------------- files


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


def _chunk_path(run_dir, chunk_index: int) -> Path:
    if not isinstance(chunk_index, (int, np.integer)) or chunk_index < 0:
        raise ValueError(f"chunk_index must be a non-negative integer, got {chunk_index!r}")
    return Path(run_dir) / f"chunk_{int(chunk_index):05d}.nc"


def write_chunk(ds: xr.Dataset, run_dir, chunk_index: int) -> Path:
    """Atomically write one chunk as ``run_dir/chunk_NNNNN.nc``; returns the path."""
    path = _chunk_path(run_dir, chunk_index)
    if not isinstance(ds, xr.Dataset):
        raise ValueError(f"ds must be an xarray.Dataset, got {type(ds).__name__}")
    _atomic_to_netcdf(ds, path)
    return path


class RunLocked(RuntimeError):
    """Another process holds the run folder's lock (see :func:`run_lock`)."""


@contextlib.contextmanager
def run_lock(run_dir, wait: bool = False):
    """Hold the exclusive lock of ``run_dir`` (``fcntl.flock`` on ``run_dir/run.lock``) for the
    ``with`` block, so that two runs in one folder never compute chunks at once.

    ``wait=False``: if another process holds it, raise :class:`RunLocked` at once with a one-line
    message naming the folder and the holder's pid; ``wait=True``: block until it is free. The
    lock goes with the process (a killed run frees it); the lock file stays (deleting it would
    race with a waiting run). Yields the lock file's path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise RunLocked(
                f"run folder {str(run_dir)!r} is in use by another run (pid {holder}); wait for it to finish, "
                "or choose another run folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers: calls are sequential, no write is in progress
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def finished_chunks(run_dir, clean: bool = True) -> set[int]:
    """Indices of complete chunk files in ``run_dir`` (empty set if the folder does not exist).

    Temporary files left by a killed write are ignored; with ``clean=True`` those whose writing
    process is no longer alive are deleted."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return set()
    if not run_dir.is_dir():
        raise ValueError(f"run_dir {str(run_dir)!r} is not a directory")
    done = set()
    for p in run_dir.iterdir():
        m = _CHUNK_RE.match(p.name)
        if m and p.is_file():
            done.add(int(m.group(1)))
            continue
        t = _TMP_RE.match(p.name)
        if t and clean and not _pid_alive(int(t.group(2))):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
    return done


def load_chunk(run_dir, chunk_index: int) -> xr.Dataset:
    """Load one chunk; ValueError naming the file when missing or unreadable."""
    path = _chunk_path(run_dir, chunk_index)
    if not path.is_file():
        raise ValueError(f"chunk {chunk_index} is missing: {str(path)!r}")
    return load_dataset(path)


def merge_chunks(run_dir, expected=None) -> xr.Dataset:
    """Concatenate all chunks of a run along ``replicate``, in chunk-index order.

    ``expected``: an int (chunks 0..expected-1 must all be there) or an iterable of indices;
    missing chunks raise ValueError listing them. Chunks must agree on quantity/parameter/chain/
    draw and on ``num_ranks``; replicate indices must not repeat."""
    done = sorted(finished_chunks(run_dir))
    if expected is not None:
        want = set(range(expected)) if isinstance(expected, (int, np.integer)) else {int(i) for i in expected}
        missing = sorted(want - set(done))
        if missing:
            raise ValueError(f"run_dir {str(run_dir)!r} is missing chunk(s) {missing}")
        done = sorted(want)
    if not done:
        raise ValueError(f"run_dir {str(run_dir)!r} holds no finished chunk")
    parts = [load_chunk(run_dir, i) for i in done]
    first = parts[0]
    for i, p in zip(done[1:], parts[1:]):
        for c in ("quantity", "parameter", "chain", "draw"):
            a = first.coords.get(c)
            b = p.coords.get(c)
            if (a is None) != (b is None) or (a is not None and not np.array_equal(a.values, b.values)):
                raise ValueError(f"chunk {i} has a different '{c}' coordinate than chunk {done[0]}")
        if p.attrs.get("num_ranks") != first.attrs.get("num_ranks"):
            raise ValueError(f"chunk {i} has num_ranks={p.attrs.get('num_ranks')} but chunk {done[0]} has {first.attrs.get('num_ranks')}")
    merged = xr.concat(parts, dim="replicate", data_vars="minimal", coords="minimal", compat="override",
                       join="exact", combine_attrs="override")
    rep = merged["replicate"].values
    if len(np.unique(rep)) != rep.size:
        raise ValueError("chunks repeat replicate indices: they do not belong to one run")
    merged.attrs["chunks"] = len(done)
    return merged


# --------------------------------------------------------------------------- measurements


def _check_xwy(x, w, y, source: str):
    if x.ndim != 2:
        raise ValueError(f"{source}: x must be 2-d (obs, input), got shape {x.shape}")
    if w.ndim != 1 or w.shape[0] != x.shape[1]:
        raise ValueError(f"{source}: w must have shape ({x.shape[1]},) to match x {x.shape}, got {w.shape}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{source}: y must have shape ({x.shape[0]},) to match x {x.shape}, got {y.shape}")
    for name, a in (("x", x), ("w", w), ("y", y)):
        as_array(f"{source}: {name}", a)
    return x, w, y


def load_measurements(path, weights_path=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Load device measurements as float64 numpy ``(x (N, M), w (M,), y (N,))``.

    netCDF (``.nc``): variables ``x`` (obs, input), ``w`` (input), ``y`` (obs).

    CSV (``.csv``): one row per observation with header columns ``x_0, ..., x_{M-1}, y`` (any
    order, no other columns); the weights in a second CSV, by default ``<stem>_w.csv`` beside it
    (or ``weights_path``), with header ``w_0, ..., w_{M-1}`` and a single row.
    Anything missing, misshaped or non-finite raises ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".nc", ".nc4", ".cdf"):
        ds = load_dataset(path)
        missing = [v for v in ("x", "w", "y") if v not in ds.variables]
        if missing:
            raise ValueError(f"{path.name}: missing variable(s) {missing}; expected x (obs, input), w (input), y (obs)")
        want = {"x": ("obs", "input"), "w": ("input",), "y": ("obs",)}
        out = []
        for v, dims in want.items():
            da = ds[v]
            if set(da.dims) != set(dims) or len(da.dims) != len(dims):
                raise ValueError(f"{path.name}: variable {v} has dims {da.dims}; expected {dims} (dims are read by name)")
            da = da.transpose(*dims)
            try:
                out.append(np.asarray(da.values, dtype=float))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path.name}: variable {v} is not numeric (dtype {da.dtype}): {exc}") from None
        return _check_xwy(*out, path.name)
    if suffix == ".csv":
        import pandas as pd

        try:
            df = pd.read_csv(path)
        except Exception as exc:
            raise ValueError(f"{path.name}: not a readable CSV: {exc}") from exc
        if "y" not in df.columns:
            raise ValueError(f"{path.name}: missing column 'y' (columns: {list(df.columns)})")
        xcols = [c for c in df.columns if re.fullmatch(r"x_\d+", str(c))]
        other = [c for c in df.columns if c != "y" and c not in xcols]
        if other:
            raise ValueError(f"{path.name}: unexpected column(s) {other}; expected x_0..x_{{M-1}} and y")
        m = len(xcols)
        want = [f"x_{i}" for i in range(m)]
        if m == 0 or sorted(xcols, key=lambda c: int(c[2:])) != want:
            raise ValueError(f"{path.name}: x columns must be x_0..x_{{M-1}} without gaps, got {xcols}")
        wpath = Path(weights_path) if weights_path is not None else path.with_name(f"{path.stem}_w.csv")
        if not wpath.is_file():
            raise ValueError(f"weights file {str(wpath)!r} does not exist (CSV layout: weights in <stem>_w.csv)")
        try:
            wdf = pd.read_csv(wpath)
        except Exception as exc:
            raise ValueError(f"{wpath.name}: not a readable CSV: {exc}") from exc
        wcols = [f"w_{i}" for i in range(m)]
        if sorted(map(str, wdf.columns)) != sorted(wcols):
            raise ValueError(f"{wpath.name}: columns must be {wcols} (to match x_0..x_{m - 1}), got {list(wdf.columns)}")
        if len(wdf) != 1:
            raise ValueError(f"{wpath.name}: must hold exactly one row of weights, got {len(wdf)}")
        for name, frame, cols in ((path.name, df, want + ["y"]), (wpath.name, wdf, wcols)):
            for c in cols:
                try:
                    frame[c].to_numpy(dtype=float)
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"{name}: column {c} is not numeric: {exc}") from None
        x = df[want].to_numpy(dtype=float)
        y = df["y"].to_numpy(dtype=float)
        w = wdf[wcols].to_numpy(dtype=float)[0]
        return _check_xwy(x, w, y, path.name)
    raise ValueError(f"path {str(path)!r}: unsupported file type {suffix!r}; use .nc or .csv")


MEASUREMENT_DIMS = {"y": ["obs"], "x": ["obs", "input"], "w": ["input"]}


def write_posterior(samples: dict, sample_stats: dict | None, path, observed: dict | None = None,
                    constant_data: dict | None = None, attrs: dict | None = None, dims: dict | None = None) -> Path:
    """Write an ArviZ-compatible InferenceData netCDF (groups posterior, sample_stats,
    observed_data, constant_data) via ``arviz.from_dict(...).to_netcdf``, atomically.

    ``samples``: site -> (chain, draw, ...); ``sample_stats``: ArviZ names -> (chain, draw).
    ``dims``: variable -> dim names beyond (chain, draw); the measurements ``y``, ``x``, ``w`` get
    ``obs`` / ``input`` (:data:`MEASUREMENT_DIMS`) unless given."""
    import arviz as az

    if not samples:
        raise ValueError("samples is empty")
    shapes = {k: np.shape(v) for k, v in samples.items()}
    for k, s in shapes.items():
        if len(s) < 2:
            raise ValueError(f"samples[{k!r}] must be (chain, draw, ...), got shape {s}")
        as_array(f"samples[{k!r}]", samples[k], kind="f")
    cd = {s[:2] for s in shapes.values()}
    if len(cd) != 1:
        raise ValueError(f"samples: all sites must share (chain, draw), got {shapes}")
    for k, v in (sample_stats or {}).items():
        if np.shape(v)[:2] != next(iter(cd)):
            raise ValueError(f"sample_stats[{k!r}] has shape {np.shape(v)}, expected (chain, draw) = {next(iter(cd))}")
    names = set(samples) | set(observed or {}) | set(constant_data or {})
    all_dims = {k: v for k, v in MEASUREMENT_DIMS.items() if k in names}
    all_dims.update(dims or {})
    idata = az.from_dict(
        posterior={k: np.asarray(v) for k, v in samples.items()},
        sample_stats={k: np.asarray(v) for k, v in (sample_stats or {}).items()} or None,
        observed_data={k: np.asarray(v) for k, v in observed.items()} if observed else None,
        constant_data={k: np.asarray(v) for k, v in constant_data.items()} if constant_data else None,
        attrs=attrs,
        dims=all_dims or None,
    )
    return atomic_write(Path(path), lambda tmp: idata.to_netcdf(str(tmp)))


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


def save_measurements(path, x, w, y, attrs=None) -> list[Path]:
    """Write measurements in the layout :func:`load_measurements` reads (by suffix: .nc or .csv).

    CSV writes two files: ``<stem>.csv`` (x_0..x_{M-1}, y) and ``<stem>_w.csv`` (w_0..w_{M-1}).
    """
    x, w, y = _check_xwy(np.asarray(x, dtype=float), np.asarray(w, dtype=float), np.asarray(y, dtype=float), "data")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".nc":
        ds = xr.Dataset({"x": (("obs", "input"), x), "w": (("input",), w), "y": (("obs",), y)},
                        attrs={k: str(v) for k, v in (attrs or {}).items()})
        return [save_dataset(ds, path)]
    if suffix == ".csv":
        import pandas as pd

        df = pd.DataFrame(x, columns=[f"x_{i}" for i in range(x.shape[1])])
        df["y"] = y
        df.to_csv(path, index=False, float_format="%.17g")
        wpath = path.with_name(f"{path.stem}_w.csv")
        pd.DataFrame(w[None], columns=[f"w_{i}" for i in range(w.shape[0])]).to_csv(wpath, index=False,
                                                                                     float_format="%.17g")
        return [path, wpath]
    raise ValueError(f"path {str(path)!r}: unsupported file type {suffix!r}; use .nc or .csv")


def find_runs(root, filename: str = "results.nc") -> list[Path]:
    """All ``filename`` files below ``root`` (a Hydra multirun folder or an outputs folder), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"root {str(root)!r} is not a folder")
    return sorted(root.rglob(filename))


def sweep_summary(paths) -> xr.Dataset:
    """One Dataset summarising several SBC runs side by side, on dims (model, prior, quantity).

    Built on :func:`summarize_run`. Variables: ``ecdf_p`` (ECDF uniformity p-value per quantity,
    failed replicates left out), ``divergent_fraction``,
    ``failed_fraction``, ``ess_bulk_per_s`` (median over replicates of the smaller bulk ESS of the
    two parameters divided by the fit's wall-time share), ``contraction_w``/``contraction_x``
    (median log-scale contraction), ``abs_corr_log`` (median |posterior corr of the logs|),
    ``multimodal_fraction``, ``n_replicates``.
    """
    rows = []
    for p in paths:
        ds = load_dataset(p)
        run = summarize_run(ds)  # the per-run figures: one implementation
        ok = ~np.asarray(ds["failed"].values, bool)
        n = ds.sizes["replicate"]
        quantities = [str(q) for q in ds["quantity"].values]
        ess = np.asarray(ds["ess_bulk"].values).min(axis=1) if "ess_bulk" in ds else np.full(n, np.nan)
        t = np.asarray(ds["wall_time_share"].values) if "wall_time_share" in ds else np.full(n, np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            per_s = (ess / t)[ok]
        rows.append({
            "model": str(ds.attrs.get("model", "?")), "prior": str(ds.attrs.get("prior", "?")),
            "quantity": quantities,
            "ecdf_p": np.array([run[f"ecdf_p_{q}"] for q in quantities]),
            "divergent_fraction": run["divergent_fraction"],
            "failed_fraction": run["failed"] / run["replicates"],
            "ess_bulk_per_s": float(np.nanmedian(per_s)) if np.isfinite(per_s).any() else np.nan,
            "contraction_w": run.get("contraction_log_w_noise_lvl", np.nan),
            "contraction_x": run.get("contraction_log_x_noise_lvl", np.nan),
            "abs_corr_log": float(np.nanmedian(np.abs(ds["corr_log"].values[ok]))) if "corr_log" in ds and ok.any()
            else np.nan,
            "multimodal_fraction": float(np.mean(ds["multimodal"].values[ok])) if "multimodal" in ds and ok.any()
            else np.nan,
            "n_replicates": run["replicates"],
        })
        ds.close()
    if not rows:
        raise ValueError("paths is empty: no SBC results to summarise")
    order = ["latent", "marginal", "gaussian"]
    models = sorted({r["model"] for r in rows}, key=lambda m: (order.index(m) if m in order else len(order), m))
    priors = sorted({r["prior"] for r in rows})
    quantities = rows[0]["quantity"]
    scalar = ("divergent_fraction", "failed_fraction", "ess_bulk_per_s", "contraction_w", "contraction_x",
              "abs_corr_log", "multimodal_fraction", "n_replicates")
    data = {k: np.full((len(models), len(priors)), np.nan) for k in scalar}
    ecdf = np.full((len(models), len(priors), len(quantities)), np.nan)
    for r in rows:
        i, j = models.index(r["model"]), priors.index(r["prior"])
        for k in scalar:
            data[k][i, j] = r[k]
        if r["quantity"] == quantities:
            ecdf[i, j] = r["ecdf_p"]
    return xr.Dataset(
        {**{k: (("model", "prior"), v) for k, v in data.items()}, "ecdf_p": (("model", "prior", "quantity"), ecdf)},
        coords={"model": models, "prior": priors, "quantity": quantities},
    )


def summarize_run(ds) -> dict:
    """One SBC run (a results Dataset or the path of a results.nc) as a row of figures.

    Keys: ``model``, ``prior``, ``inference``, ``num_ranks``; ``replicates`` (all) and ``failed``;
    per quantity q ``ecdf_p_<q>`` (ECDF uniformity test over the non-failed replicates) and
    ``coverage90_<q>`` (fraction of non-failed replicates whose true value lies in the central
    90% posterior interval, read from the rank: normalised rank (rank + 1/2)/(L + 1) in
    (0.05, 0.95)), with ``coverage90_expected`` its exact value under calibration for this L;
    per parameter p ``z_mean_<p>`` / ``z_sd_<p>`` (mean and sd of the posterior z-scores),
    ``contraction_<p>`` (median posterior contraction) and, when stored, ``contraction_log_<p>``
    (median log-scale contraction); ``divergent_fraction`` (fits with any divergent transition;
    NaN when the inference method declares no divergences); ``seconds_per_fit`` (mean wall-time
    share of a non-failed fit; NaN when not stored). Failed replicates enter only ``failed``."""
    from .. import sbc

    if not isinstance(ds, xr.Dataset):
        ds = load_dataset(ds)
    for v in REQUIRED_VARS:
        if v not in ds.variables:
            raise ValueError(f"ds is missing the variable {v!r}; not an SBC results Dataset")
    L = int(ds.attrs["num_ranks"])
    failed = np.asarray(ds["failed"].values, bool)
    ok = ~failed
    row = {"model": str(ds.attrs.get("model", "")), "prior": str(ds.attrs.get("prior", "")),
           "inference": str(ds.attrs.get("inference", "")), "num_ranks": L,
           "replicates": int(failed.size), "failed": int(failed.sum())}
    quantities = [str(q) for q in ds["quantity"].values]
    ranks = np.asarray(ds["rank"].transpose("replicate", "quantity").values)
    ecdf = sbc.uniformity_tests(ranks, L, failed=failed)["ecdf_p"] if ok.any() else np.full(len(quantities), np.nan)
    def inside(r):
        u = (np.asarray(r) + 0.5) / (L + 1)
        return (u > 0.05) & (u < 0.95)

    row["coverage90_expected"] = float(np.mean(inside(np.arange(L + 1))))
    for j, q in enumerate(quantities):
        row[f"ecdf_p_{q}"] = float(ecdf[j])
        row[f"coverage90_{q}"] = float(np.mean(inside(ranks[ok, j]))) if ok.any() else np.nan

    def median_ok(var, p):
        if var not in ds.variables or not ok.any():
            return np.nan
        v = np.asarray(ds[var].sel(parameter=p).values, dtype=float)[ok]
        return float(np.median(v))

    for p in [str(p) for p in ds["parameter"].values]:
        if "z_score" in ds.variables and ok.any():
            z = np.asarray(ds["z_score"].sel(parameter=p).values, dtype=float)[ok]
            row[f"z_mean_{p}"], row[f"z_sd_{p}"] = float(np.mean(z)), float(np.std(z, ddof=1)) if z.size > 1 else np.nan
        else:
            row[f"z_mean_{p}"] = row[f"z_sd_{p}"] = np.nan
        row[f"contraction_{p}"] = median_ok("contraction", p)
        if "contraction_log" in ds.variables:
            row[f"contraction_log_{p}"] = median_ok("contraction_log", p)
    row["divergent_fraction"] = (float(np.mean(np.asarray(ds["diverging"].values)[ok] > 0))
                                 if "diverging" in ds.variables and ok.any() else np.nan)
    row["seconds_per_fit"] = (float(np.mean(np.asarray(ds["wall_time_share"].values, dtype=float)[ok]))
                              if "wall_time_share" in ds.variables and ok.any() else np.nan)
    return row
