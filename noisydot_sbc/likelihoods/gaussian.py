"""Moments of y and the moment-matched Gaussian approximation to its density.

One job: the closed-form first two moments of each observation under the true process and the
heteroscedastic Gaussian log-density built from them (the cheap approximate likelihood).
Conventions: x (N, M), w (M,), y (N,), noise levels scalars (broadcastable).
"""
from __future__ import annotations

import jax.numpy as jnp


def moments(x, w, x_noise_lvl, w_noise_lvl, y_noise=0.0):
    """Exact mean and variance of y_n under the true process (x (..., N, M), w (M,) or (..., M),
    noise levels broadcasting against (..., N)).

    E[y_n] = Σ_i x_ni w_i,
    Var[y_n] = Σ_i w_i² (x_ni² σ_w² + σ_x² (1 + σ_w²)) + σ_y².
    """
    x, w = jnp.asarray(x), jnp.asarray(w)
    w2 = w * w
    if w.ndim == 1:       # x (..., N, M), w (M,)
        mean, xw2 = x @ w, (x * x) @ w2
    else:                 # batched weights w (..., M) against x (..., N, M)
        mean, xw2 = (x @ w[..., None])[..., 0], ((x * x) @ w2[..., None])[..., 0]
    var = xw2 * w_noise_lvl**2 + jnp.sum(w2, axis=-1, keepdims=True) * x_noise_lvl**2 * (1.0 + w_noise_lvl**2)
    return mean, var + y_noise**2


def gaussian_logpdf(y, x, w, x_noise_lvl, w_noise_lvl, y_noise=0.0):
    """Log-density of the moment-matched heteroscedastic Gaussian approximation (per observation)."""
    mean, var = moments(x, w, x_noise_lvl, w_noise_lvl, y_noise)
    return -0.5 * (jnp.log(2.0 * jnp.pi * var) + (y - mean) ** 2 / var)
