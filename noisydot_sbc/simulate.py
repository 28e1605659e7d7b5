"""Simulation of the true generative process (see shared design MATH.md).

    x̃_ni = x_ni + σ_x e_ni,    w̃_ni = w_i (1 + σ_w u_ni),    y_n = Σ_i x̃_ni w̃_ni + σ_y v_n

All functions are pure JAX, vectorized, and bit-for-bit reproducible for a given key.

- :func:`simulate_y` (checked) and :func:`simulate_y_unchecked` (its traceable core, for use
  inside ``jit``/``vmap``): y from the true process;
- :func:`make_design`: a device design (x, w); :func:`design_kwargs` reads its arguments from a
  ``design`` config;
- :func:`simulate_replicates`: the SBC generator: for each replicate id a design, a truth drawn
  from the prior and y from the true process, all from one root key.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._validation import check_design, check_positive


def simulate_y(key, x, w, x_noise_lvl, w_noise_lvl, y_noise=0.0, shared_w_noise=False):
    """Draw y (shape (N,)) from the true process.

    ``shared_w_noise=True`` draws the weight noise u once per device (shape (M,))
    instead of once per observation (shape (N, M)).
    """
    check_design(x, w)
    check_positive("x_noise_lvl", x_noise_lvl)
    check_positive("w_noise_lvl", w_noise_lvl)
    check_positive("y_noise", y_noise, allow_zero=True)
    return simulate_y_unchecked(key, jnp.asarray(x), jnp.asarray(w), x_noise_lvl, w_noise_lvl, y_noise,
                                shared_w_noise)


def simulate_y_unchecked(key, x, w, x_noise_lvl, w_noise_lvl, y_noise=0.0, shared_w_noise=False):
    """Unchecked, traceable core of :func:`simulate_y` (use inside jit/vmap)."""
    n, m = x.shape
    ke, ku, kv = jax.random.split(key, 3)
    e = jax.random.normal(ke, (n, m), dtype=x.dtype)
    u_shape = (m,) if shared_w_noise else (n, m)
    u = jax.random.normal(ku, u_shape, dtype=x.dtype)
    v = jax.random.normal(kv, (n,), dtype=x.dtype)
    x_tilde = x + x_noise_lvl * e
    w_tilde = w * (1.0 + w_noise_lvl * u)
    return jnp.sum(x_tilde * w_tilde, axis=-1) + y_noise * v




class Design(NamedTuple):
    """A device design: inputs x (N, M) and weights w (M,)."""

    x: jax.Array
    w: jax.Array


def make_design(
    key,
    n_obs: int,
    n_inputs: int,
    x_dist: str = "normal",
    x_scale: float = 1.0,
    x_spread: float = 1.0,
    w_dist: str = "normal",
    w_scale: float = 1.0,
    dtype=jnp.float64,
) -> Design:
    """Draw a design.

    x_dist:
      - ``normal``: x_ni ~ N(0, x_scale²)
      - ``uniform``: x_ni ~ U(-x_scale, x_scale)
      - ``magnitude``: every row has norm-scale r_n = x_scale·exp(x_spread·z_n)... with
        z_n ~ U(-1/2, 1/2) and a random direction: ``x_spread`` controls how much |x_n|
        varies across observations (0 = every row equally large, the degenerate case).
    w_dist: ``normal`` (w_i ~ N(0, w_scale²)), ``uniform`` (U(-w_scale, w_scale)) or ``ones``.
    """
    if n_obs < 1:
        raise ValueError(f"n_obs must be >= 1, got {n_obs}")
    if n_inputs < 1:
        raise ValueError(f"n_inputs must be >= 1, got {n_inputs}")
    check_positive("x_scale", x_scale)
    check_positive("w_scale", w_scale)
    check_positive("x_spread", x_spread, allow_zero=True)
    kx, kr, kw = jax.random.split(key, 3)
    if x_dist == "normal":
        x = x_scale * jax.random.normal(kx, (n_obs, n_inputs), dtype=dtype)
    elif x_dist == "uniform":
        x = jax.random.uniform(kx, (n_obs, n_inputs), dtype=dtype, minval=-x_scale, maxval=x_scale)
    elif x_dist == "magnitude":
        direction = jax.random.normal(kx, (n_obs, n_inputs), dtype=dtype)
        direction = direction / jnp.linalg.norm(direction, axis=1, keepdims=True)
        z = jax.random.uniform(kr, (n_obs, 1), dtype=dtype, minval=-0.5, maxval=0.5)
        x = x_scale * jnp.exp(x_spread * z) * direction
    else:
        raise ValueError(f"x_dist must be 'normal', 'uniform' or 'magnitude', got {x_dist!r}")
    if w_dist == "normal":
        w = w_scale * jax.random.normal(kw, (n_inputs,), dtype=dtype)
    elif w_dist == "uniform":
        w = jax.random.uniform(kw, (n_inputs,), dtype=dtype, minval=-w_scale, maxval=w_scale)
    elif w_dist == "ones":
        w = w_scale * jnp.ones((n_inputs,), dtype=dtype)
    else:
        raise ValueError(f"w_dist must be 'normal', 'uniform' or 'ones', got {w_dist!r}")
    return Design(x=x, w=w)


DESIGN_ARGS = ("n_obs", "n_inputs", "x_dist", "x_scale", "x_spread", "w_dist", "w_scale")
_ARG_TYPES = {"n_obs": int, "n_inputs": int, "x_dist": str, "x_scale": float, "x_spread": float, "w_dist": str,
              "w_scale": float}


def _field(design, name):
    if isinstance(design, Mapping) or hasattr(design, "get"):
        return design[name]
    return getattr(design, name)


def design_kwargs(design, **overrides) -> dict:
    """The keyword arguments of :func:`make_design` (:data:`DESIGN_ARGS`), typed, from a ``design``
    config (a mapping, a DictConfig or a dataclass); ``overrides`` replace single entries."""
    out = {}
    for name in DESIGN_ARGS:
        try:
            out[name] = _ARG_TYPES[name](overrides[name] if name in overrides else _field(design, name))
        except (KeyError, AttributeError):
            raise ValueError(f"design.{name} is missing") from None
    return out


@lru_cache(maxsize=32)
def _replicate_simulator(design_items: tuple, new_design: bool, y_noise: float, shared_w_noise: bool, prior,
                         dtype):
    design = dict(design_items)

    def one(root_key, r):
        kd, kt, ky = jax.random.split(jax.random.fold_in(root_key, r), 3)
        if not new_design:
            kd = jax.random.fold_in(root_key, 2**30)
        d = make_design(kd, dtype=dtype, **design)
        truth = prior.sample(kt)
        sx, sw = truth["x_noise_lvl"], truth["w_noise_lvl"]
        # the naive (negative-control) prior can draw σ < 0; the device noise is |σ|
        y = simulate_y_unchecked(ky, d.x, d.w, jnp.abs(sx), jnp.abs(sw), y_noise, shared_w_noise)
        return d.x, d.w, y, sx.astype(dtype), sw.astype(dtype)

    return jax.jit(jax.vmap(one, in_axes=(None, 0)))


def simulate_replicates(root_key, replicate_ids, design, prior, dtype=jnp.float64) -> tuple[dict, dict]:
    """The SBC generator: one simulated data set per replicate id, vectorized.

    Replicate ``r`` draws, from ``fold_in(root_key, r)``, a design (:func:`make_design` with the
    arguments of the ``design`` config; with ``design.new_design_per_replicate`` false every
    replicate shares the design drawn from ``fold_in(root_key, 2**30)``), a truth from ``prior``
    (``prior.sample``) and y from the true process with ``design.y_noise`` and
    ``design.shared_w_noise``. A replicate id always gives the same replicate, whichever chunk it
    is simulated in. Returns ``(data, truth)``: data ``x`` (S, N, M), ``w`` (S, M), ``y`` (S, N);
    truth ``x_noise_lvl``, ``w_noise_lvl`` (S,) (signed: the device noise is ``|σ|``). The
    compiled simulator is cached on (design, prior, dtype).
    """
    ids = np.asarray(replicate_ids)
    if ids.ndim != 1 or ids.size == 0 or ids.dtype.kind not in "iu" or np.any(ids < 0):
        raise ValueError(f"replicate_ids must be a non-empty 1-d array of integers >= 0, got {replicate_ids!r}")
    y_noise = float(_field(design, "y_noise"))
    check_positive("y_noise", y_noise, allow_zero=True)
    fn = _replicate_simulator(tuple(design_kwargs(design).items()), bool(_field(design, "new_design_per_replicate")),
                              y_noise, bool(_field(design, "shared_w_noise")), prior, jnp.dtype(dtype))
    x, w, y, sx, sw = fn(root_key, jnp.asarray(ids))
    return {"x": x, "w": w, "y": y}, {"x_noise_lvl": sx, "w_noise_lvl": sw}
