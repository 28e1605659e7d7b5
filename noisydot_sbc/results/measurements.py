"""Measurements and posterior files: a device's (x, w, y) in netCDF/CSV, a fit's InferenceData.

One job: the files of real data and of a fit's posterior. :func:`load_measurements` reads device
measurements (``.nc`` or ``.csv`` with ``<stem>_w.csv``) and refuses anything missing, misshaped
or non-finite with a message naming it; :func:`save_measurements` writes the same layouts;
:func:`write_posterior` writes an ArviZ-compatible InferenceData netCDF, atomically, with the
measurement dims of :data:`MEASUREMENT_DIMS`.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import xarray as xr

from .._validation import as_array, atomic_write
from .schema import load_dataset, save_dataset

__all__ = ["load_measurements", "save_measurements", "MEASUREMENT_DIMS", "write_posterior"]


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
