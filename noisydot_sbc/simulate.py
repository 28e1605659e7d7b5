"""Simulation of the true generative process (see shared design MATH.md).

    x̃_ni = x_ni + σ_x e_ni,    w̃_ni = w_i (1 + σ_w u_ni),    y_n = Σ_i x̃_ni w̃_ni + σ_y v_n

All functions are pure JAX, vectorized, and bit-for-bit reproducible for a given key.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

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
    return _simulate_y(key, jnp.asarray(x), jnp.asarray(w), x_noise_lvl, w_noise_lvl, y_noise, shared_w_noise)


def _simulate_y(key, x, w, x_noise_lvl, w_noise_lvl, y_noise=0.0, shared_w_noise=False):
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
