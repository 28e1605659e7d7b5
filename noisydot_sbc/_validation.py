"""Input checks shared by the public entry points, and the one atomic file write.

Every check raises ``ValueError`` naming the offending argument. :func:`as_finite_array`,
:func:`check_positive` and :func:`check_design` only run on concrete (non-traced) values: inside
``jit`` the arrays are tracers and the checks are skipped, because the entry points already
validated them. :func:`as_array` is the host-side (numpy) check-and-convert used by the
statistics, diagnostics and results modules: dtype kind, rank, emptiness and finiteness, where
rows of a leading replicate axis that the caller marks ``failed`` may hold NaN (failed fits are
data, never an error).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import jax

__all__ = ["as_finite_array", "as_array", "check_positive", "check_design", "atomic_write"]

_KIND_NAMES = {"f": "float", "i": "integer", "b": "bool", "U": "string", "numeric": "numeric"}


def _is_concrete(value) -> bool:
    return not isinstance(value, jax.core.Tracer)


def as_finite_array(name: str, value, ndim: int | None = None, allow_empty: bool = False):
    """Return ``value`` unchanged after checking shape rank, emptiness and finiteness."""
    if not _is_concrete(value):
        return value
    arr = np.asarray(value)
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {arr.shape}")
    if not allow_empty and arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}); at least one value is needed")
    if not np.all(np.isfinite(arr)):
        bad = int(np.sum(~np.isfinite(arr)))
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf)")
    return value


def check_positive(name: str, value, allow_zero: bool = False):
    """Check that a noise level (scalar or array) is finite and positive."""
    if not _is_concrete(value):
        return value
    arr = np.asarray(value)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if allow_zero:
        if np.any(arr < 0):
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    elif np.any(arr <= 0):
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return value


def check_design(x, w, y=None):
    """Check a design (x: (N, M), w: (M,)) and optional observations y: (N,)."""
    as_finite_array("x", x, ndim=2)
    as_finite_array("w", w, ndim=1)
    if _is_concrete(x) and _is_concrete(w):
        xs, ws = np.shape(x), np.shape(w)
        if xs[1] != ws[0]:
            raise ValueError(
                f"x has {xs[1]} inputs per observation (shape {xs}) but w has {ws[0]} weights "
                f"(shape {ws}); x must be (N, M) and w must be (M,)"
            )
        if not np.any(np.asarray(w) != 0):
            raise ValueError("w is all zero: the device output carries no information about the noise")
    if y is not None:
        as_finite_array("y", y, ndim=1)
        if _is_concrete(y) and _is_concrete(x) and np.shape(y)[0] != np.shape(x)[0]:
            raise ValueError(
                f"y has {np.shape(y)[0]} observations but x has {np.shape(x)[0]} rows; they must match"
            )


def as_array(
    name: str,
    value,
    *,
    ndim: int | tuple | None = None,
    kind: str = "numeric",
    finite: bool = True,
    allow_inf: bool = False,
    failed=None,
    allow_empty: bool = False,
) -> np.ndarray:
    """Check ``value`` and return it as a numpy array of the requested ``kind``.

    ``kind``: ``"numeric"`` (any number or bool, returned as is), ``"f"`` (float64 unless already
    floating), ``"i"`` (int64; floats that are whole numbers are accepted), ``"b"`` (bool; 0/1
    integers accepted) or ``"U"`` (strings, returned as an object array). ``ndim``: required rank
    (an int or a tuple of allowed ranks). ``finite``: refuse NaN/inf; with ``failed`` ((S,) bool,
    the leading axis) only in rows not marked failed, and the message names the first such
    replicate; with ``allow_inf`` refuse NaN only (±inf is a stated value, e.g. "no estimate").
    Raises ``ValueError`` naming ``name``."""
    arr = np.asarray(value)
    if kind == "U":
        if arr.dtype.kind not in "UO":
            raise ValueError(f"{name} must hold strings, got dtype {arr.dtype}")
        arr = np.array([str(v) for v in arr.ravel()], dtype=object).reshape(arr.shape)
    elif kind == "b":
        if arr.dtype != bool:
            if not (arr.dtype.kind in "iu" and np.all((arr == 0) | (arr == 1))):
                raise ValueError(f"{name} must be bool, got dtype {arr.dtype}")
            arr = arr.astype(bool)
    elif kind in ("numeric", "f", "i"):
        if arr.dtype.kind not in "fiub":
            raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
        if kind == "f" and arr.dtype.kind != "f":
            arr = arr.astype(np.float64)
        elif kind == "i" and arr.dtype.kind not in "iub":
            ok_rows = np.isfinite(arr)
            if failed is None and not np.all(ok_rows):
                raise ValueError(f"{name} must be integer, got non-finite values")
            if np.any(arr[ok_rows] != np.round(arr[ok_rows])):
                raise ValueError(f"{name} must be integer, got dtype {arr.dtype} with fractional values")
    else:
        raise ValueError(f"kind must be one of {sorted(_KIND_NAMES)}, got {kind!r}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if arr.ndim not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(f"{name} must be {want}-dimensional, got shape {arr.shape}")
    if not allow_empty and arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}); at least one value is needed")
    if finite and arr.dtype.kind == "f":
        bad = np.isnan(arr) if allow_inf else ~np.isfinite(arr)
        what = "NaN" if allow_inf else "non-finite values"
        if failed is not None:
            f = np.asarray(failed, bool)
            if arr.ndim == 0 or f.shape != arr.shape[:1]:
                raise ValueError(f"failed must have shape ({arr.shape[0] if arr.ndim else 0},) to match {name} {arr.shape}")
            bad_rows = bad.reshape(arr.shape[0], -1).any(axis=1) & ~f
            if bad_rows.any():
                raise ValueError(
                    f"{name} contains {what} in {int(bad_rows.sum())} replicate(s) not marked failed "
                    f"(first: replicate {int(np.argmax(bad_rows))})"
                )
        elif bad.any():
            raise ValueError(f"{name} contains {int(bad.sum())} " + ("NaN value(s)" if allow_inf else
                                                                    "non-finite value(s) (NaN or inf)"))
    if kind == "i" and arr.dtype.kind != "i":
        if arr.dtype.kind == "f":
            arr = np.where(np.isfinite(arr), arr, -1)
        arr = arr.astype(np.int64)
    return arr


def atomic_write(path, writer: Callable[[Path], object]) -> Path:
    """Write a file atomically: ``writer(tmp)`` writes a temporary file in the same folder, which
    then replaces ``path`` (``os.replace``, atomic on POSIX), so a killed process leaves either the
    old file, the complete new one, or a ``.<name>.<pid>.<random>.tmp`` file (removed here on any
    error). The temporary file gets the usual permissions (0666 minus the umask; ``mkstemp`` would
    leave 0600). Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
