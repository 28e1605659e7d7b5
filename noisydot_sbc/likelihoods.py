"""Pure-JAX likelihood building blocks for the noisy dot product (see shared design MATH.md).

Conventions: x (N, M), w (M,), y (N,), noise levels scalars (broadcastable).
"""
from __future__ import annotations

import jax.numpy as jnp


def moments(x, w, x_noise_lvl, w_noise_lvl, y_noise=0.0):
    """Exact mean and variance of y_n under the true process.

    E[y_n] = Σ_i x_ni w_i,
    Var[y_n] = Σ_i w_i² (x_ni² σ_w² + σ_x² (1 + σ_w²)) + σ_y².
    """
    mean = x @ w
    w2 = w * w
    var = (x * x) @ w2 * w_noise_lvl**2 + jnp.sum(w2) * x_noise_lvl**2 * (1.0 + w_noise_lvl**2) + y_noise**2
    return mean, var


def gaussian_logpdf(y, x, w, x_noise_lvl, w_noise_lvl, y_noise=0.0):
    """Log-density of the moment-matched heteroscedastic Gaussian approximation (per observation)."""
    mean, var = moments(x, w, x_noise_lvl, w_noise_lvl, y_noise)
    return -0.5 * (jnp.log(2.0 * jnp.pi * var) + (y - mean) ** 2 / var)
