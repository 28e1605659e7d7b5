"""Results I/O: the SBC xarray Dataset schema, crash-safe chunk files, measurements, posteriors.

This is the ONLY project module that imports xarray. The schema of ``results.nc`` is documented
in ``docs/sbc.md`` and encoded in :data:`SCHEMA`.

Chunks: each finished batch of replicates is written as ``run_dir/chunk_00003.nc`` by writing a
temporary file in the same folder and ``os.replace``-ing it (atomic on POSIX), so a killed run
leaves either a complete chunk or a ``.tmp`` file that :func:`finished_chunks` ignores and removes.
A run resumes by computing only the chunk indices not in :func:`finished_chunks`.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np
import xarray as xr

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
    "diverging": (("replicate",), "i"),
    "tree_depth_hits": (("replicate",), "i"),
    "bfmi": (("replicate", "chain"), "f"),
    "r_hat": (("replicate", "parameter"), "f"),
    "ess_bulk": (("replicate", "parameter"), "f"),
    "ess_tail": (("replicate", "parameter"), "f"),
    "step_size": (("replicate", "chain"), "f"),
    "mean_tree_depth": (("replicate",), "f"),
    "n_steps": (("replicate",), "i"),
    "wall_time_share": (("replicate",), "f"),
    "failed": (("replicate",), "b"),
    "error": (("replicate",), "U"),
}
REQUIRED_VARS = ("true", "rank", "failed")
REQUIRED_ATTRS = ("num_ranks",)
DEFAULT_ATTRS = {"config_yaml": "", "seed": -1, "model": "", "prior": "", "chain_method": ""}
_KIND_NAMES = {"f": "float", "i": "integer", "b": "bool", "U": "string"}
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


def _coerce(name: str, value, kind: str) -> np.ndarray:
    arr = np.asarray(value)
    if kind == "U":
        if arr.dtype.kind not in "UO":
            raise ValueError(f"{name} must hold strings, got dtype {arr.dtype}")
        return np.array([str(v) for v in arr.ravel()], dtype=object).reshape(arr.shape)
    if kind == "b":
        if arr.dtype != bool:
            if arr.dtype.kind in "iu" and np.all((arr == 0) | (arr == 1)):
                return arr.astype(bool)
            raise ValueError(f"{name} must be bool, got dtype {arr.dtype}")
        return arr
    if kind == "i":
        if arr.dtype.kind not in "iub":
            if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
                return arr.astype(np.int64)
            raise ValueError(f"{name} must be integer, got dtype {arr.dtype}")
        return arr.astype(np.int64)
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    return arr.astype(np.float64) if arr.dtype.kind != "f" else arr


def build_sbc_dataset(arrays: dict, coords: dict, attrs: dict) -> xr.Dataset:
    """Assemble and validate one SBC Dataset (a chunk or a whole run).

    ``arrays``: variable name -> numpy array, for the names in :data:`SCHEMA` (``true``, ``rank``
    and ``failed`` required); extra variables may be given as ``(dims, array)`` tuples.
    ``coords``: ``quantity`` and ``parameter`` (lists of names) are required; ``replicate``
    (global replicate indices, default ``0..S-1``) optional. Sizes of ``chain``/``draw`` come
    from the arrays. ``attrs``: ``num_ranks`` (L) required; ``config_yaml``, ``seed``, ``model``,
    ``prior``, ``chain_method`` default to empty/-1; ``versions`` and ``created`` are filled in.
    Every inconsistency raises ValueError naming the variable."""
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
                raise ValueError(f"{name} is a schema variable: pass the array, not (dims, array)")
            arr = _coerce(name, value, kind)
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
    if np.any(rank < 0) or np.any(rank > num_ranks):
        raise ValueError(f"rank must be in 0..num_ranks={num_ranks}")
    for name, (dims, arr) in data_vars.items():
        if arr.dtype.kind == "f" and dims and dims[0] == "replicate":
            bad = ~np.isfinite(arr).reshape(arr.shape[0], -1).all(axis=1) & ~failed
            if name in ("r_hat", "ess_bulk", "ess_tail", "bfmi"):
                continue  # NaN = undefined diagnostic (constant draws); documented
            if np.any(bad):
                raise ValueError(
                    f"{name} has non-finite values in {int(bad.sum())} replicate(s) not marked failed "
                    f"(first: {int(np.argmax(bad))})"
                )

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
    return xr.Dataset(data_vars, coords=c_all, attrs=full_attrs)


# --------------------------------------------------------------------------- files


def _encoding(ds: xr.Dataset) -> dict:
    enc = {}
    for name, var in ds.variables.items():
        if var.dtype == object:
            enc[name] = {"dtype": str}
    return enc


def _atomic_to_netcdf(ds: xr.Dataset, path: Path, tmp_prefix: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{tmp_prefix}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=_encoding(ds))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_dataset(ds: xr.Dataset, path) -> Path:
    """Write ``ds`` to netCDF4 at ``path`` atomically (temp file + os.replace). Strings are stored
    as variable-length strings, bools as int8 flagged for decoding back to bool."""
    if not isinstance(ds, xr.Dataset):
        raise ValueError(f"ds must be an xarray.Dataset, got {type(ds).__name__}")
    path = Path(path)
    _atomic_to_netcdf(ds, path, f".{path.name}")
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
    _atomic_to_netcdf(ds, path, f".{path.name}")
    return path


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
        if a.size == 0:
            raise ValueError(f"{source}: {name} is empty")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{source}: {name} contains {int(np.sum(~np.isfinite(a)))} NaN/inf value(s)")
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
        x, w, y = (np.asarray(ds[v].values, dtype=float) for v in ("x", "w", "y"))
        return _check_xwy(x, w, y, path.name)
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
        try:
            x = df[want].to_numpy(dtype=float)
            y = df["y"].to_numpy(dtype=float)
            w = wdf[wcols].to_numpy(dtype=float)[0]
        except ValueError as exc:
            raise ValueError(f"{path.name}: non-numeric values: {exc}") from exc
        return _check_xwy(x, w, y, path.name)
    raise ValueError(f"path {str(path)!r}: unsupported file type {suffix!r}; use .nc or .csv")


def write_posterior(samples: dict, sample_stats: dict | None, path, observed: dict | None = None,
                    constant_data: dict | None = None, attrs: dict | None = None) -> Path:
    """Write an ArviZ-compatible InferenceData netCDF (groups posterior, sample_stats,
    observed_data, constant_data) via ``arviz.from_dict(...).to_netcdf``, atomically.

    ``samples``: site -> (chain, draw, ...); ``sample_stats``: ArviZ names -> (chain, draw)."""
    import arviz as az

    if not samples:
        raise ValueError("samples is empty")
    shapes = {k: np.shape(v) for k, v in samples.items()}
    for k, s in shapes.items():
        if len(s) < 2:
            raise ValueError(f"samples[{k!r}] must be (chain, draw, ...), got shape {s}")
        if not np.all(np.isfinite(np.asarray(samples[k], dtype=float))):
            raise ValueError(f"samples[{k!r}] contains NaN/inf")
    cd = {s[:2] for s in shapes.values()}
    if len(cd) != 1:
        raise ValueError(f"samples: all sites must share (chain, draw), got {shapes}")
    for k, v in (sample_stats or {}).items():
        if np.shape(v)[:2] != next(iter(cd)):
            raise ValueError(f"sample_stats[{k!r}] has shape {np.shape(v)}, expected (chain, draw) = {next(iter(cd))}")
    idata = az.from_dict(
        posterior={k: np.asarray(v) for k, v in samples.items()},
        sample_stats={k: np.asarray(v) for k, v in (sample_stats or {}).items()} or None,
        observed_data={k: np.asarray(v) for k, v in observed.items()} if observed else None,
        constant_data={k: np.asarray(v) for k, v in constant_data.items()} if constant_data else None,
        attrs=attrs,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        idata.to_netcdf(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


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

    Variables: ``ecdf_p`` (ECDF uniformity p-value per quantity), ``divergent_fraction``,
    ``failed_fraction``, ``ess_bulk_per_s`` (median over replicates of the smaller bulk ESS of the
    two parameters divided by the fit's wall-time share), ``contraction_w``/``contraction_x``
    (median log-scale contraction), ``abs_corr_log`` (median |posterior corr of the logs|),
    ``multimodal_fraction``, ``n_replicates``.
    """
    rows = []
    for p in paths:
        ds = load_dataset(p)
        ok = ~np.asarray(ds["failed"].values, bool)
        ess = np.asarray(ds["ess_bulk"].values).min(axis=1)
        t = np.asarray(ds["wall_time_share"].values)
        rows.append({
            "model": str(ds.attrs.get("model", "?")), "prior": str(ds.attrs.get("prior", "?")),
            "quantity": [str(q) for q in ds["quantity"].values],
            "ecdf_p": np.asarray(ds["ecdf_p"].values, dtype=float) if "ecdf_p" in ds else None,
            "divergent_fraction": float(np.mean(ds["diverging"].values[ok] > 0)) if ok.any() else np.nan,
            "failed_fraction": float(np.mean(~ok)),
            "ess_bulk_per_s": float(np.nanmedian((ess / t)[ok])) if ok.any() else np.nan,
            "contraction_w": float(np.nanmedian(ds["contraction_log"].sel(parameter="w_noise_lvl").values[ok]))
            if "contraction_log" in ds else np.nan,
            "contraction_x": float(np.nanmedian(ds["contraction_log"].sel(parameter="x_noise_lvl").values[ok]))
            if "contraction_log" in ds else np.nan,
            "abs_corr_log": float(np.nanmedian(np.abs(ds["corr_log"].values[ok]))) if "corr_log" in ds else np.nan,
            "multimodal_fraction": float(np.mean(ds["multimodal"].values[ok])) if "multimodal" in ds else np.nan,
            "n_replicates": int(ds.sizes["replicate"]),
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
        if r["ecdf_p"] is not None and r["quantity"] == quantities:
            ecdf[i, j] = r["ecdf_p"]
    return xr.Dataset(
        {**{k: (("model", "prior"), v) for k, v in data.items()}, "ecdf_p": (("model", "prior", "quantity"), ecdf)},
        coords={"model": models, "prior": priors, "quantity": quantities},
    )
