"""Input checks shared by the public entry points.

Every check raises ``ValueError`` naming the offending argument. Checks only
run on concrete (non-traced) values: inside ``jit`` the arrays are tracers and
the checks are skipped, because the entry points already validated them.
"""
from __future__ import annotations

import numpy as np
import jax


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
