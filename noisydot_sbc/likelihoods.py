"""Pure-JAX likelihood building blocks for the noisy dot product (see shared design MATH.md).

Conventions: x (N, M), w (M,), y (N,), noise levels scalars (broadcastable).
"""
from __future__ import annotations

import inspect
import math

import numpy as np
from typing import NamedTuple

import jax.numpy as jnp

from ._validation import as_finite_array, check_design, check_positive


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


# ---------------------------------------------------------------------------------------------
# Exact marginal density by saddlepoint-shifted Fourier inversion (see docs/likelihood.md).
#
# Per term i of observation n:  A = x_ni + σ_x e,  B = w_i (1 + σ_w u)  (independent Gaussians)
#   log M_i(s) = -½ log(1 - s² c_i²) + (s μ_ni + s² v_ni / 2) / (1 - s² c_i²)
#   c_i = σ_x σ_w |w_i|,  μ_ni = x_ni w_i,  v_ni = w_i² (x_ni² σ_w² + σ_x²)
# K_n(s) = Σ_i log M_i(s) + σ_y² s² / 2, analytic for |Re s| < 1 / max_i c_i.
# ---------------------------------------------------------------------------------------------

from functools import partial

import jax
from jax import lax
from jax.custom_derivatives import SymbolicZero


def _term_params(x, w, x_noise_lvl, w_noise_lvl):
    """c² (M,), μ (N, M), v (N, M) of the per-term moment generating functions."""
    w2 = w * w
    c2 = (x_noise_lvl * w_noise_lvl) ** 2 * w2
    mu = x * w
    v = w2 * (x * x * w_noise_lvl**2 + x_noise_lvl**2)
    return c2, mu, v


def _centred_parts(s, c2, mu, v):
    """Per-term pieces of the centred CGF K̃_i(s) = K_i(s) - s μ_i at s[..., None] (terms on the last axis).

    K̃_i = -½ log D + A P with D = 1 - s² c²_i, A = s²/D, P = s c²_i μ_i + ½ v_i: the s μ_i part of
    K_i (whose sum over i is s E[y], the large term when the noise is small) is taken out exactly,
    so nothing of the size of s·E[y] is ever formed and subtracted again.
    """
    s = s[..., None]
    d = 1.0 - s * s * c2
    inv = 1.0 / d
    a = s * s * inv
    p = s * c2 * mu + 0.5 * v
    return s, inv, a, p, -0.5 * jnp.log(d) + a * p


@jax.custom_jvp
def _centred_term_sum(s, c2, mu, v):
    """Σ_i K̃_i(s) for s (..., K) (real or complex), c² (M,), μ and v broadcasting as (..., 1, M)."""
    return jnp.sum(_centred_parts(s, c2, mu, v)[-1], axis=-1)


def _centred_term_sum_jvp(primals, tangents):
    """Derivatives in bounded forms: far along a contour (|s c_i| up to ~1e12) D, s² and s³ overflow
    float32 where their ratios do not (autodiff's d(g/D) = dg/D - g dD/D² gave NaN there)."""
    s, c2, mu, v = primals
    ds, dc2, dmu, dv = tangents
    s_, inv, a, p, terms = _centred_parts(s, c2, mu, v)
    out = jnp.sum(terms, axis=-1)
    t_out = jnp.zeros_like(out)
    if not isinstance(ds, SymbolicZero):
        # d/ds: s c² / D + (2 s / D) (P / D) + A c² μ
        k1 = jnp.sum(s_ * c2 * inv + (2.0 * s_ * inv) * (p * inv) + a * c2 * mu, axis=-1)
        t_out = t_out + k1 * ds
    if not isinstance(dc2, SymbolicZero):
        # ∂/∂c² = A (½ + g/D), g/D = (s μ + ½ s² v)/D = s μ / D + ½ A v
        t_out = t_out + jnp.sum(a * (0.5 + s_ * mu * inv + 0.5 * a * v) * dc2, axis=-1)
    if not isinstance(dmu, SymbolicZero):
        t_out = t_out + jnp.sum(s_ * (a * c2) * dmu, axis=-1)
    if not isinstance(dv, SymbolicZero):
        t_out = t_out + jnp.sum(0.5 * a * dv, axis=-1)
    return out, t_out


_centred_term_sum.defjvp(_centred_term_sum_jvp, symbolic_zeros=True)


def _cgf_from_terms(s, c2, mu, v, y2):
    """Centred K̃(s) = K(s) - s E[y] for s of shape (N, K) (real or complex); terms broadcast as (N, 1, M)."""
    return _centred_term_sum(s, c2, mu, v) + 0.5 * y2 * s * s


def cgf(s, x, w, x_noise_lvl, w_noise_lvl, y_noise=0.0):
    """Cumulant generating function K_n(s) of y_n (shape (N,)); s broadcastable to (N,).

    Complex ``s`` is allowed (principal branches; valid for |Re s| < 1/max_i σ_x σ_w |w_i|).
    """
    x = jnp.asarray(x)
    s = jnp.broadcast_to(jnp.asarray(s), (x.shape[0],))
    c2, mu, v = _term_params(x, jnp.asarray(w), x_noise_lvl, w_noise_lvl)
    return _cgf_from_terms(s[:, None], c2, mu[:, None, :], v[:, None, :], y_noise**2)[:, 0] + s * jnp.sum(mu, axis=-1)


def _cgf_derivs(s, c2, mu, v, y2, with_value=True):
    """Centred K̃(s) = K(s) - s E[y], K̃'(s) = K'(s) - E[y] and K''(s) for real s of shape (N,), terms
    (N, M). K̃ is None if not with_value. (Centred: see :func:`_centred_parts`.)"""
    s = s[:, None]
    s2 = s * s
    d = 1.0 - s2 * c2
    inv = 1.0 / d
    g = s * mu + 0.5 * s2 * v
    g1 = mu + s * v
    sc2 = s * c2
    k1 = jnp.sum((sc2 + s * v + s * sc2 * mu + 2.0 * sc2 * g * inv) * inv, axis=-1)
    k2 = jnp.sum(
        (c2 + v + (2.0 * sc2 * sc2 + 4.0 * sc2 * g1 + 2.0 * c2 * g + 8.0 * sc2 * sc2 * g * inv) * inv) * inv,
        axis=-1,
    )
    s1 = s[:, 0]
    k0 = None
    if with_value:
        k0 = jnp.sum(-0.5 * jnp.log(d) + s2 * inv * (sc2 * mu + 0.5 * v), axis=-1) + 0.5 * y2 * s1 * s1
    return k0, k1 + y2 * s1, k2 + y2


def _saddlepoint_from_terms(delta, c2, mu, v, y2, n_iter, return_k2=False, rolled=False):
    """Safeguarded Newton for K̃'(ŝ) = δ = y - E[y] (i.e. K'(ŝ) = y) inside the strip |s| < 1/max c
    (fixed iteration count).

    ŝ only fixes the inversion line (the density does not depend on it), so a few unrolled
    iterations suffice; the quadrature's own checks catch a poor line. With ``return_k2`` also
    returns K'' at the last iterate (used as the scale of the nodes).
    """
    dtype = mu.dtype
    cmax = jnp.sqrt(jnp.max(c2))
    edge = (1.0 - 64 * jnp.finfo(dtype).eps) / cmax
    var = jnp.sum(v, axis=-1) + jnp.sum(c2) + y2  # = Var[y_n] (c² = σ_x² σ_w² w²)
    lo = jnp.full_like(delta, -edge)
    hi = jnp.full_like(delta, edge)
    s = jnp.clip(delta / var, -0.5 * edge, 0.5 * edge)
    k2 = var

    def newton(state):
        s, lo, hi, _ = state
        _, k1, k2 = _cgf_derivs(s, c2, mu, v, y2, with_value=False)
        f = k1 - delta
        lo = jnp.where(f < 0, s, lo)
        hi = jnp.where(f > 0, s, hi)
        step = s - f / k2
        return jnp.where((step >= lo) & (step <= hi), step, 0.5 * (lo + hi)), lo, hi, k2

    if rolled:   # a fori_loop: one copy of the step in the program however many iterations
        s, lo, hi, k2 = lax.fori_loop(0, n_iter, lambda _, st: newton(st), (s, lo, hi, k2))
    else:        # unrolled, for the fast path's few iterations (XLA fuses them)
        for _ in range(n_iter):
            s, lo, hi, k2 = newton((s, lo, hi, k2))
    if return_k2:
        return s, k2
    return s


def saddlepoint(y, x, w, x_noise_lvl, w_noise_lvl, y_noise=0.0, n_iter=16):
    """The saddlepoint ŝ_n solving K_n'(ŝ) = y_n (shape (N,)), held constant under differentiation."""
    x = jnp.asarray(x)
    y = jnp.asarray(y, dtype=x.dtype)
    c2, mu, v = _term_params(x, jnp.asarray(w), x_noise_lvl, w_noise_lvl)
    c2, mu, v, y2 = lax.stop_gradient((c2, mu, v, jnp.asarray(y_noise, x.dtype) ** 2))
    return _saddlepoint_from_terms(lax.stop_gradient(y - jnp.sum(mu, axis=-1)), c2, mu, v, y2, n_iter)


def saddlepoint_logpdf(y, x, w, x_noise_lvl, w_noise_lvl, y_noise=0.0):
    """First-order saddlepoint approximation log[exp(K(ŝ) - ŝ y) / √(2π K''(ŝ))] (not normalised)."""
    x = jnp.asarray(x)
    c2, mu, v = _term_params(x, jnp.asarray(w), x_noise_lvl, w_noise_lvl)
    y2 = jnp.asarray(y_noise, x.dtype) ** 2
    delta = jnp.asarray(y, x.dtype) - jnp.sum(mu, axis=-1)
    s = lax.stop_gradient(_saddlepoint_from_terms(*lax.stop_gradient((delta, c2, mu, v, y2)), 16))
    k0, _, k2 = _cgf_derivs(s, c2, mu, v, y2)
    return k0 - s * delta - 0.5 * jnp.log(2.0 * jnp.pi * k2)


class InversionResult(NamedTuple):
    """Per-observation output of one quadrature pass: log density and its error indicators."""

    logp: jax.Array        # (N,) log density
    err_disc: jax.Array    # (N,) estimated relative discretisation error, from the rule with step 2h
    err_tail: jax.Array    # (N,) |integrand| at the last node relative to the integrand at v = 0


def _tail_estimate(log_last, log_prev, total):
    """Relative size of the truncated sum beyond the last node, extrapolating the decay of |f|
    geometrically from the last two nodes (ratio capped at 0.99: slow decay is flagged)."""
    r = jnp.minimum(jnp.exp(log_last - log_prev), 0.99)
    return jnp.exp(log_last) * r / (1.0 - r) / jnp.abs(total)


def _step_halving(total, half):
    """Relative error of a trapezoid sum with exponential convergence: the difference d between
    the rules with steps h and 2h estimates the error at 2h, and the error at h is then ≈ d²
    (e(h) ~ exp(-a/h) = e(2h)²). Used where the integrand is analytic in a strip and the rule is
    known to be in its asymptotic regime at the accepted tolerance (the Fourier passes)."""
    d = jnp.abs(total - 2.0 * half) / jnp.abs(total)
    return d * d


def _fourier_pass(delta, s_hat, k0, k2, c2, mu, v, y2, h, n_nodes):
    """Trapezoid rule in v = t √K''(ŝ) on the line s = ŝ + i t, nodes v_k = k h, k < n_nodes.

    log p = K̃(ŝ) - ŝ δ + log( h / (π √K'') · [½ + Σ_k Re exp(K̃(ŝ + i t_k) - K̃(ŝ) - i t_k δ)] ),
    in the centred form (K̃(s) = K(s) - s E[y], δ = y - E[y], ``k0`` = K̃(ŝ)), which is the same
    number as with K and y but never forms t·y (at small noise t ~ 1/sd and t·y loses the phase).
    ŝ and the node positions are held constant; only K depends (differentiably) on the noise levels.
    """
    dtype = mu.dtype
    cdtype = jnp.result_type(dtype, jnp.complex64)
    sd = lax.stop_gradient(jnp.sqrt(k2))
    v_nodes = h * jnp.arange(1, n_nodes, dtype=dtype)                  # (K-1,)
    t = v_nodes[None, :] / sd[:, None]                                   # (N, K-1)
    s = lax.complex(jnp.broadcast_to(s_hat[:, None], t.shape), t).astype(cdtype)
    expo = _cgf_from_terms(s, c2, mu[:, None, :], v[:, None, :], y2) - k0[:, None] - 1j * t * delta[:, None]
    f = jnp.exp(expo)
    re = jnp.real(f)
    total = 0.5 + jnp.sum(re, axis=-1)
    half = 0.5 + jnp.sum(re[:, 1::2], axis=-1)                          # nodes 2h, 4h, ...
    err_disc = _step_halving(total, half)
    err_tail = _tail_estimate(jnp.real(expo[:, -1]), jnp.real(expo[:, -2]), total)
    safe_total = jnp.where(total > 0, total, 1.0)
    logp = k0 - s_hat * delta + jnp.log(h * safe_total / (jnp.pi * sd))
    logp = jnp.where(total > 0, logp, -jnp.inf)
    err_disc = jnp.where(total > 0, err_disc, jnp.inf)
    return InversionResult(logp, err_disc, err_tail)


def _log_floor(dtype):
    """Lowest log|w̃/w| (M = 1) or log radius (M = 2) a weight-noise quadrature goes down to: -90
    in float64, -83 in float32 (e^-z must stay finite; the integrands are written in units of e^z)."""
    return max(-90.0, math.log(float(jnp.finfo(dtype).tiny)) + 4.0)


def _direct_m1_pass(y, x1, w1, x_noise_lvl, w_noise_lvl, y2, n_nodes):
    """M = 1: trapezoid over z = log|w̃/w| of the conditional Gaussian, one pass per sign of w̃.

    p(y) = Σ_± ∫ φ((±e^z - 1)/σ_w)/σ_w · N(y; ±x w e^z, σ_x² w² e^{2z} + σ_y²) e^z dz.
    The substitution opens up the log singularity at w̃ = 0 (split point u = -1/σ_w): for y ≠ 0
    the integrand decays double-exponentially at both ends, so the trapezoid rule converges
    exponentially. Node ranges are chosen per observation and held constant (stop_gradient).
    x1 (N,), w1 scalar. Returns an InversionResult (err_tail: integrand at the range ends).
    """
    dtype = x1.dtype
    sx, sw = x_noise_lvl, w_noise_lvl
    aw = jnp.abs(w1)
    sxs, sws, y2s = lax.stop_gradient((sx, sw, y2))
    floor = _log_floor(dtype)                                             # -90 (f64), -83 (f32)
    # lower end: the conditional factor is negligible below |y| / (|w| (|x| + 12 σ_x)) (when σ_y = 0)
    # (with readout noise the integrand decays like e^z below σ_y-scale: cut 1e-12 of that scale)
    ratio = jnp.where(y2s > 0, 1e-12 * jnp.maximum(jnp.abs(y), jnp.sqrt(y2s)), jnp.abs(y))
    ratio = ratio / (aw * (jnp.abs(x1) + 12.0 * sxs))
    z_lo_y = jnp.log(jnp.maximum(ratio, jnp.exp(floor))) - 0.5
    z_lo_plus = jnp.maximum(z_lo_y, jnp.log(jnp.maximum(1.0 - 12.0 * sws, jnp.exp(floor))))
    z_hi_plus = jnp.log1p(12.0 * sws)
    # the other sign (w̃ opposite to w) needs u < -1/σ_w: negligible when 12 σ_w < 1
    z_hi_minus = jnp.log(jnp.maximum(12.0 * sws - 1.0, jnp.exp(floor)))
    use_minus = 12.0 * sws > 1.0
    z_lo_minus = jnp.minimum(z_lo_y, z_hi_minus - 1.0)
    z_lo_plus = jnp.minimum(z_lo_plus, z_hi_plus - 1.0)
    grid = jnp.linspace(0.0, 1.0, n_nodes, dtype=dtype)

    def branch(sign, z_lo, z_hi):
        z = z_lo[:, None] + (z_hi - z_lo)[:, None] * grid[None, :]       # (N, K)
        h = (z_hi - z_lo) / (n_nodes - 1)
        ez = jnp.exp(z)
        emz = jnp.exp(-z)
        u = (sign * ez - 1.0) / sw
        # in units of e^z: sd / e^z and (y - mean) / e^z (bounded over the range; var = sd² itself
        # can be subnormal in float32 near the lower end, where its derivative then overflowed)
        sdn = jnp.sqrt((sx * w1) ** 2 + (y2 * emz) * emz)
        zr = (y[:, None] * emz - sign * x1[:, None] * w1) / sdn
        logg = -0.5 * u * u - 0.5 * zr * zr - jnp.log(sdn) - jnp.log(2.0 * jnp.pi * sw)
        return logg, h

    lg_p, h_p = branch(1.0, lax.stop_gradient(z_lo_plus), jnp.broadcast_to(z_hi_plus, y.shape))
    lg_m, h_m = branch(-1.0, lax.stop_gradient(z_lo_minus), jnp.broadcast_to(z_hi_minus, y.shape))
    lg_m = jnp.where(use_minus, lg_m, -jnp.inf)
    lw_p = lg_p + jnp.log(h_p)[:, None]
    lw_m = lg_m + jnp.log(h_m)[:, None]
    both = jnp.concatenate([lw_p, lw_m], axis=-1)
    logp = jax.scipy.special.logsumexp(both, axis=-1)
    half = jax.scipy.special.logsumexp(jnp.concatenate([lw_p[:, ::2], lw_m[:, ::2]], axis=-1), axis=-1) + jnp.log(2.0)
    err_disc = jnp.expm1(half - logp) ** 2   # double-exponential decay: error at h ≈ (difference)²
    ends = jnp.stack([lw_p[:, 0], lw_p[:, -1], lw_m[:, 0], lw_m[:, -1]], axis=-1)
    err_tail = jnp.exp(jnp.max(ends, axis=-1) - logp)
    # where the lower end sits on the floor (|y| below e^floor of the scale, y = 0 exactly when σ_y = 0)
    # the integrand is still ~constant there (the log singularity of the density at y = 0): the mass
    # cut off is about that constant times the missing width in z (infinite at y = 0, where the
    # density itself is infinite), which the end-node check above does not see
    width = lax.stop_gradient(jnp.maximum(floor - jnp.log(ratio), 0.0))
    low = jnp.exp(jnp.maximum(lg_p[:, 0], lg_m[:, 0]) - logp)
    err_tail = jnp.maximum(err_tail, jnp.where(width > 0, low * width, 0.0))
    err_tail = jnp.where(jnp.isinf(width), jnp.inf, err_tail)
    return InversionResult(logp, err_disc, err_tail)


def _polar_m2_pass(y, x, w, x_noise_lvl, w_noise_lvl, y2, n_nodes):
    """M = 2: two-dimensional quadrature over the weight noise in polar coordinates.

    With q_i = w̃_i / |w_i| ~ N(sign w_i, σ_w²) (isotropic in the plane),
    p(y) = ∫∫ φ₂(q) N(y; Σ_i x_i |w_i| q_i, σ_x² Σ_i w_i² q_i² + σ_y²) dq. The only singularity is
    at q = 0 (both weights zero at once, where the conditional variance vanishes): polar
    coordinates q = e^z (cos θ, sin θ), dq = e^{2z} dz dθ, turn it into an integrand that decays
    exponentially as z → -∞, and the integrand is smooth and periodic in θ, so the trapezoid rule
    converges exponentially in both directions (``n_nodes`` + 1 nodes in z, ``n_nodes`` in θ).
    This is the scheme for the heavy corner (σ_w ≳ 0.3, ‖x‖ ≲ σ_x) where the characteristic
    function decays only like t⁻² and Fourier inversion cannot reach 1e-8.
    Error estimate: the full difference to the rule on every other node in both directions (not
    its square: the rule may not yet be in its asymptotic regime when the integrand is peaked,
    which happens for small σ_w, where the Fourier passes are used instead).
    """
    dtype = x.dtype
    sx, sw = x_noise_lvl, w_noise_lvl
    sxs, sws, y2s = lax.stop_gradient((sx, sw, y2))
    b = jnp.abs(w)                                                        # (2,)
    a = x * b                                                             # (R, 2): x̃_i w̃_i = x̃_i |w_i| q_i
    c = jnp.where(w >= 0, 1.0, -1.0).astype(dtype)                       # centre of q, |c|² = 2
    floor = _log_floor(dtype)
    rc = jnp.sqrt(jnp.asarray(2.0, dtype))
    th_c = jnp.arctan2(c[1], c[0])

    def log_integrand(z, n_t, sx, sw, y2):
        """log of prior(q) N(y; a·q, σ_x² Σ b_i² q_i² + σ_y²) r² at q = e^z (cos θ, sin θ), (R, Z, T)."""
        th = th_c + (2.0 * jnp.pi / n_t) * jnp.arange(n_t, dtype=dtype)  # node 0 on the prior's centre
        ct, st = jnp.cos(th), jnp.sin(th)
        r = jnp.exp(z)[:, :, None]
        rm = jnp.exp(-z)[:, :, None]
        proj = a[:, 0, None, None] * ct + a[:, 1, None, None] * st
        bb = b[0] ** 2 * ct * ct + b[1] ** 2 * st * st
        d2 = r * r - 2.0 * r * (c[0] * ct + c[1] * st) + 2.0              # |q - c|²
        # sd and y - mean in units of r (var itself can be subnormal in float32 at small r)
        sdn = jnp.sqrt(sx * sx * bb + (y2 * rm) * rm)
        zr = (y[:, None, None] * rm - proj) / sdn
        return (-0.5 * d2 / (sw * sw) - jnp.log(2.0 * jnp.pi * sw * sw) - 0.5 * jnp.log(2.0 * jnp.pi)
                - jnp.log(sdn) - 0.5 * zr * zr + z[:, :, None])

    # --- where the integrand lives in z (nodes held constant under differentiation) ---------------
    z_top = jnp.log(rc + 12.0 * sws)
    z_prior = jnp.log(jnp.maximum(rc - 12.0 * sws, jnp.exp(floor)))
    # small r: the conditional factor vanishes below |y| / (‖a‖ + 12 σ_x max|w|) (as for M = 1)
    scale = jnp.where(y2s > 0, 1e-12 * jnp.maximum(jnp.abs(y), jnp.sqrt(y2s)), jnp.abs(y))
    ratio = scale / (jnp.sqrt(jnp.sum(a * a, axis=-1)) + 12.0 * sxs * jnp.max(b))
    z_bot = jnp.minimum(jnp.maximum(jnp.log(jnp.maximum(ratio, jnp.exp(floor))) - 0.5, z_prior), z_top - 1.0)
    # coarse scan: 40 nodes over [z_bot, z_top] and 24 over the prior's range, 32 angles
    u40 = jnp.linspace(0.0, 1.0, 40, dtype=dtype)
    zc_grid = jnp.concatenate([z_bot[:, None] + (z_top - z_bot)[:, None] * u40,
                               jnp.broadcast_to(jnp.linspace(jnp.maximum(z_prior, z_top - 6.0), z_top, 24, dtype=dtype),
                                                (y.shape[0], 24))], axis=1)
    prof = jnp.max(log_integrand(zc_grid, 32, sxs, sws, y2s), axis=-1)   # (R, 64)
    top = jnp.max(prof, axis=-1, keepdims=True)
    live = prof >= top - 45.0
    step = ((z_top - z_bot) / 39.0)[:, None]
    z_lo = jnp.min(jnp.where(live, zc_grid - step, jnp.inf), axis=-1)
    z_hi = jnp.max(jnp.where(live, zc_grid + step, -jnp.inf), axis=-1)
    z_lo = jnp.maximum(z_lo, z_bot)
    z_hi = jnp.minimum(z_hi, z_top)
    z_mid = jnp.take_along_axis(zc_grid, jnp.argmax(prof, axis=-1)[:, None], axis=-1)[:, 0]
    z_mid = jnp.clip(z_mid, z_lo, z_hi)
    # sinh map z = z_mid + L sinh(v): dense where the integrand peaks (width ~ σ_w/√2 in z),
    # sparse in the long e^z tail towards r = 0, which becomes double-exponentially decaying in v
    ell = jnp.clip(sws / rc, 0.05, 1.0)
    v_lo, v_hi = jnp.arcsinh((z_lo - z_mid) / ell), jnp.arcsinh((z_hi - z_mid) / ell)
    v_lo, v_hi, z_mid = lax.stop_gradient((v_lo, v_hi, z_mid))
    n_z = n_nodes + (1 - n_nodes % 2)                                     # odd: the half rule keeps both ends
    n_t = n_nodes + n_nodes % 2                                           # even: the half rule is periodic too
    grid = jnp.linspace(0.0, 1.0, n_z, dtype=dtype)
    vv = v_lo[:, None] + (v_hi - v_lo)[:, None] * grid[None, :]          # (R, Z)
    z = z_mid[:, None] + ell * jnp.sinh(vv)
    hv = (v_hi - v_lo) / (n_z - 1)
    ht = 2.0 * jnp.pi / n_t
    logg = log_integrand(z, n_t, sx, sw, y2) + jnp.log(ell * jnp.cosh(vv))[:, :, None]
    end_w = jnp.log(jnp.ones(n_z, dtype).at[0].set(0.5).at[-1].set(0.5))
    logp = jax.scipy.special.logsumexp(logg + end_w[None, :, None], axis=(1, 2)) + jnp.log(hv * ht)
    end_w2 = jnp.log(jnp.ones(n_z // 2 + 1, dtype).at[0].set(0.5).at[-1].set(0.5))
    half = jax.scipy.special.logsumexp(logg[:, ::2, ::2] + end_w2[None, :, None], axis=(1, 2)) + jnp.log(4.0 * hv * ht)
    err_disc = jnp.abs(jnp.expm1(half - logp))
    ends = jnp.maximum(jnp.max(logg[:, 0, :], axis=-1), jnp.max(logg[:, -1, :], axis=-1))
    err_tail = jnp.exp(ends + jnp.log(hv * 2.0 * jnp.pi) - logp)
    return InversionResult(logp, err_disc, err_tail)


_TILTED_RATE = 1.2   # a₀: assumed lower bound of the convergence rate a in e(h) = C exp(-a/h) of the bent-contour rule


def _tilted_pass(y, delta, s_hat, k0, sd, c2, mu, v, y2, h, u_max, kappa=0.75, t0=3.0):
    """Inversion along a contour bent towards the side where exp(-s y) decays, with a sinh map.

    The vertical line s = ŝ + i t leaves a tail ~ t^-M (the density's singular point y = 0, where
    all w̃ can vanish together): for M ≥ 2 and σ_w ≳ 0.3 a truncated vertical line cannot reach
    1e-8. Here the contour is s(t) = ŝ + i t + sign(y) κ (√(t² + T₀²) - T₀) (T₀ = max(``t0`` standard
    units, 2/max c_i), see below): near the saddlepoint it is the steepest-descent line, for large t it runs at the angle
    atan(1/κ) > 45° into the half-plane where |exp(-s y)| = exp(-Re(s) y) decays exponentially.
    It stays in the upper half-plane, so it never meets the branch cuts [1/c_i, ∞) of K; for
    κ ≤ 1 every term |M_i| stays bounded (|1 - s² c²| ≥ 1 along a ray steeper than 45°), and the
    deformation is valid because the integrand decays at least like |s|^-M, M ≥ 2.
    With t = ℓ sinh(u) (ℓ: see below) and trapezoid nodes u_k = k h, k ≤ u_max/h, the integrand decays
    exponentially in u at y = 0 (the algebraic tail, e^{-(M-1)u}) and double-exponentially for
    y ≠ 0, so the rule converges exponentially (the strip of analyticity in u is at most |Im u| < atan κ).
    p(y) = (1/π) ∫_0^∞ Re[exp(K(s) - s y) s'(t) / i] dt, by Hermitian symmetry of the contour.
    Error estimate from the rules with steps 2h and 4h (d_k: relative difference to the rule with
    step k h): the rule converges like e(h) = C e^{-a/h}, a = 2π × the half-width of the strip; a is
    not known per observation (measured 2.1 .. 2.9 in the hardest cases), so the estimate is
    max(d₂ e^{-a₀/(2h)}, d₂³/d₄²) with a conservative a₀ = 1.2 (the second form, the three-level
    extrapolation, takes over when the rule is not yet converging: d₂ ≈ d₄ gives ≈ d₂). Squaring d₂
    (as for the vertical line) under-estimated by up to 500x at coarse steps in testing.
    Centred form as in :func:`_fourier_pass` (``delta`` = y - E[y], ``k0`` = K̃(ŝ)); ``y`` itself
    only gives the direction of the bend.
    """
    dtype = mu.dtype
    cdtype = jnp.result_type(dtype, jnp.complex64)
    n_u = 4 * int(round(u_max / (4 * h))) + 1                              # the 4h rule keeps the last node
    u = h * jnp.arange(n_u, dtype=dtype)
    sig = jnp.sign(y)[:, None]
    isd = lax.stop_gradient(1.0 / sd)[:, None]
    # node scale: the saddlepoint width 1/√K'', or half the distance to the nearest branch point
    # ±1/c_max when ŝ is near the edge of the strip (the rule's strip of analyticity in u then
    # stays ≥ π/2 wide around u = 0 instead of shrinking with that distance)
    cmax = lax.stop_gradient(jnp.sqrt(jnp.max(c2)))
    edge = lax.stop_gradient(1.0 / cmax - jnp.abs(s_hat))[:, None]
    ell = jnp.minimum(isd, 0.5 * edge)
    t = jnp.sinh(u)[None, :] * ell                                        # (N, K)
    # the bend starts above t0 standard units and above twice the largest branch point: there the
    # integrand is in its algebraic regime (|exp K| ~ |s|^-M, nearly independent of Re s), so moving
    # Re s away from ŝ does not amplify it (nearer the real axis it would: ŝ minimises K(σ) - σ y)
    big_t = jnp.maximum(t0 * isd, 2.0 / cmax)
    root = jnp.sqrt(t * t + big_t * big_t)
    s = lax.complex(s_hat[:, None] + sig * kappa * (root - big_t), t).astype(cdtype)
    ds_over_i = 1.0 - 1j * (sig * kappa * t / root)
    expo = _cgf_from_terms(s, c2, mu[:, None, :], v[:, None, :], y2) - k0[:, None] - (s - s_hat[:, None]) * delta[:, None]
    f = jnp.real(jnp.exp(expo) * ds_over_i) * (jnp.cosh(u)[None, :] * ell)
    wts = jnp.ones(n_u, dtype).at[0].set(0.5)
    total = h * jnp.sum(f * wts, axis=-1)
    half = 2.0 * h * jnp.sum((f * wts)[:, ::2], axis=-1)
    quarter = 4.0 * h * jnp.sum((f * wts)[:, ::4], axis=-1)
    safe_total = jnp.where(total > 0, total, 1.0)
    d2 = jnp.abs(total - half) / safe_total
    d4 = jnp.abs(total - quarter) / safe_total
    tiny = jnp.finfo(dtype).tiny
    err_disc = jnp.maximum(d2 * math.exp(-_TILTED_RATE / (2.0 * h)), d2 * d2 * d2 / jnp.maximum(d4 * d4, tiny))
    # rounding: the sum of |terms| relative to the result (cancellation on the bent contour)
    cond = h * jnp.sum(jnp.abs(f) * wts, axis=-1) / safe_total
    err_disc = jnp.maximum(err_disc, 64.0 * jnp.finfo(dtype).eps * cond)
    log_abs = jnp.log(jnp.abs(f) + tiny)
    last2 = jnp.max(log_abs[:, -2:], axis=-1)                          # max of pairs: robust to a zero
    prev2 = jnp.max(log_abs[:, -4:-2], axis=-1)                        # crossing of Re f at one node
    err_tail = _tail_estimate(last2 + jnp.log(2.0 * h), prev2 + jnp.log(2.0 * h), total)
    logp = k0 - s_hat * delta + jnp.log(safe_total / jnp.pi)
    logp = jnp.where(total > 0, logp, -jnp.inf)
    err_disc = jnp.where(total > 0, err_disc, jnp.inf)
    return InversionResult(logp, err_disc, err_tail)


def _fast_pass(delta, s_hat, k0, sd, c2, mu, v, y2, h, n_nodes, group, dparams=None):
    """Real-arithmetic version of :func:`_fourier_pass` for the common case (the speed path).
    Centred form (``delta`` = y - E[y], ``k0`` = K̃(ŝ)): per term it accumulates
    K̃_i = -½ log D_i + s² (s c²_i μ_i + ½ v_i) / D_i, which holds no s μ_i.

    The M terms are accumulated one at a time (a Python loop, unrolled at trace time, so XLA fuses
    the whole pass into elementwise work on (N, nodes) arrays with no (N, nodes, M) temporaries).
    Per (observation, node, term): products and one division; Σ_i log D_i is taken as the log of
    the product of D_i over groups of ``group`` terms (one complex log per group). Each
    D_i = 1 - s² c_i² has Re D_i > 0 and |arg D_i| ≤ asin(c_i |ŝ|), so the principal log of a
    group's product is exact as long as Σ_group asin(c_i |ŝ|) < π; the caller checks the
    sufficient condition Σ_group c_i |ŝ| < 1.9.

    ``dparams = (dc2 (P, M), dv (P, N, M), dy2 (P,))``, the derivatives of c², v and σ_y² w.r.t.
    P parameters, makes it also return d log p / d parameters (N, P), computed analytically in
    the same pass at the same nodes (ŝ and the nodes held fixed):
    d log p = dK(ŝ) + Σ_k Re[f_k (dK(s_k) - dK(ŝ))] / (½ + Σ_k Re f_k), with
    ∂K/∂c²_i = s²/D_i (½ + g_i/D_i), ∂K/∂v_i = s²/(2 D_i), ∂K/∂σ_y² = s²/2.
    """
    n, m = mu.shape
    dtype = mu.dtype
    b = (h * jnp.arange(1, n_nodes, dtype=dtype))[None, :] / sd[:, None]          # (N, K) = t
    a = s_hat[:, None]
    diff = a * a - b * b
    ab = a * b
    e_re = jnp.zeros_like(b)
    e_im = jnp.zeros_like(b)
    log_d = jnp.zeros(b.shape, jnp.result_type(dtype, jnp.complex64))
    with_d = dparams is not None
    if with_d:
        dc2, dv, dy2 = dparams
        n_par = dc2.shape[0]
        dk_re = [jnp.zeros_like(b) for _ in range(n_par)]
        dk_im = [jnp.zeros_like(b) for _ in range(n_par)]
        dk0 = [jnp.zeros_like(s_hat) for _ in range(n_par)]
    pr_re = pr_im = None
    for i in range(m):
        c = c2[i]
        mu_i = mu[:, i:i + 1]
        v_i = v[:, i:i + 1]
        p = 1.0 - c * diff
        q = 2.0 * ab * c                                                           # D = p - i q
        inv = 1.0 / (p * p + q * q)
        cm = c * mu_i
        p_re = a * cm + 0.5 * v_i                                                  # P = s c² μ + ½ v
        p_im = b * cm
        gre = diff * p_re - 2.0 * ab * p_im                                         # g̃ = s² P
        gim = diff * p_im + 2.0 * ab * p_re
        gd_re = (gre * p - gim * q) * inv                                           # g̃ / D
        gd_im = (gre * q + gim * p) * inv
        e_re = e_re + gd_re
        e_im = e_im + gd_im
        if pr_re is None:
            pr_re, pr_im = p, -q
        else:
            pr_re, pr_im = pr_re * p + pr_im * q, pr_im * p - pr_re * q                # × (p - i q)
        if (i + 1) % group == 0 or i == m - 1:
            log_d = log_d + jnp.log(lax.complex(pr_re, pr_im))
            pr_re = pr_im = None
        if with_d:
            a_re = (diff * p - 2.0 * ab * q) * inv                                     # s²/D
            a_im = (diff * q + 2.0 * ab * p) * inv
            b_re = 0.5 + gd_re + a * mu_i                                              # ½ + g/D, g/D = g̃/D + s μ
            b_im = gd_im + b * mu_i
            ab_re = a_re * b_re - a_im * b_im
            ab_im = a_re * b_im + a_im * b_re
            s0 = s_hat * s_hat
            d0 = 1.0 - c * s0
            amp0 = s0 / d0
            bb0 = 0.5 + (s_hat * mu[:, i] + 0.5 * s0 * v[:, i]) / d0
            for j in range(n_par):
                dk_re[j] = dk_re[j] + ab_re * dc2[j, i] + 0.5 * a_re * dv[j, :, i:i + 1]
                dk_im[j] = dk_im[j] + ab_im * dc2[j, i] + 0.5 * a_im * dv[j, :, i:i + 1]
                dk0[j] = dk0[j] + amp0 * bb0 * dc2[j, i] + 0.5 * amp0 * dv[j, :, i]
    e_re = e_re - 0.5 * jnp.real(log_d) + 0.5 * y2 * diff - k0[:, None]
    e_im = e_im - 0.5 * jnp.imag(log_d) + y2 * ab - b * delta[:, None]
    amp = jnp.exp(e_re)
    cos_e = jnp.cos(e_im)
    re = amp * cos_e
    total = 0.5 + jnp.sum(re, axis=-1)
    half = 0.5 + jnp.sum(re[:, 1::2], axis=-1)
    err_disc = _step_halving(total, half)
    err_tail = _tail_estimate(e_re[:, -1], e_re[:, -2], total)
    safe_total = jnp.where(total > 0, total, 1.0)
    logp = k0 - s_hat * delta + jnp.log(h * safe_total / (jnp.pi * sd))
    logp = jnp.where(total > 0, logp, -jnp.inf)
    err_disc = jnp.where(total > 0, err_disc, jnp.inf)
    res = InversionResult(logp, err_disc, err_tail)
    if not with_d:
        return res
    f_im = amp * jnp.sin(e_im)
    cols = []
    for j in range(n_par):
        d0j = dk0[j] + 0.5 * dy2[j] * s_hat * s_hat
        dkr = dk_re[j] + 0.5 * dy2[j] * diff
        dki = dk_im[j] + dy2[j] * ab
        corr = jnp.sum(re * (dkr - d0j[:, None]) - f_im * dki, axis=-1)
        cols.append(d0j + corr / safe_total)
    return res, jnp.stack(cols, axis=-1)


class LogpdfResult(NamedTuple):
    """Exact log density per observation with the quadrature's own error estimate (nats)."""

    logp: jax.Array
    err: jax.Array         # estimated |log p error| per observation (an indicator, not a proof)
    fallback: jax.Array    # bool: the observation was evaluated by the robust scheme


def _tolerances(dtype):
    eps = float(jnp.finfo(dtype).eps)
    # target: estimated relative error ≤ 1e-9 in float64 (1e-6 in float32)
    return dict(disc=1e-9, tail=1e-10) if eps < 1e-10 else dict(disc=1e-6, tail=1e-6)


def _distrust(res: InversionResult, trusted):
    """The pass's result with an infinite error estimate where ``trusted`` is False: a pass that
    takes the logarithm of grouped products is worth nothing where their branch check fails
    (a node's term can have the wrong sign while both step sizes agree), so it neither certifies
    nor wins against another tier there."""
    return res._replace(err_disc=jnp.where(trusted, res.err_disc, jnp.inf))


def _error_estimate(res: InversionResult, eps):
    return jnp.maximum(jnp.maximum(res.err_disc, res.err_tail), eps)


class _Opts(NamedTuple):
    """Static quadrature options (hashable: a nondiff argument of the custom JVP)."""

    h: float
    n_nodes: int
    n_iter: int
    group: int
    fallback_nodes: int
    fallback_batch: int
    polar_nodes: int
    tilted_h: float
    tilted_range: float


class _Stage(NamedTuple):
    """Phase 1 (the fast pass) for every observation, plus what the robust tiers start from."""

    delta: jax.Array       # (N,) y - E[y]
    logp: jax.Array        # (N,) fast-pass log density
    err: jax.Array         # (N,) its error estimate
    ok: jax.Array          # (N,) bool: certified by the fast pass
    extra: jax.Array       # (N,) error added to whatever tier wins (data rounding; ∞ where singular)
    jac: jax.Array | None  # (N, P) analytic fast-pass derivative w.r.t. the requested noise levels


def _fast_stage(sx, sw, sy, y, x, w, opts: _Opts, jac_wrt: tuple = ()) -> _Stage:
    """The fast pass over all N observations of one design, its certification and error terms."""
    dtype = x.dtype
    n, m = x.shape
    eps = float(jnp.finfo(dtype).eps)
    tol = _tolerances(dtype)
    g = min(opts.group, m)
    c2, mu, v = _term_params(x, w, sx, sw)
    delta = y - jnp.sum(mu, axis=-1)       # y - E[y]: the centred form never forms s·E[y] (see _centred_parts)
    s_hat, k2 = _saddlepoint_from_terms(delta, c2, mu, v, sy * sy, opts.n_iter, return_k2=True)
    sd = jnp.sqrt(k2)
    branch_ok = _branch_ok(c2, s_hat, g)
    k0, _, _ = _cgf_derivs(s_hat, c2, mu, v, sy * sy)
    if jac_wrt:
        # analytic derivatives of c², v, σ_y² w.r.t. (σ_x, σ_w, σ_y), rows in the order of jac_wrt
        w2 = w * w
        dc2_all = (2.0 * sx * sw * sw * w2, 2.0 * sx * sx * sw * w2, jnp.zeros_like(w2))
        dv_all = (jnp.broadcast_to(2.0 * sx * w2, mu.shape), 2.0 * sw * w2 * x * x, jnp.zeros_like(mu))
        dy2_all = (jnp.zeros((), dtype), jnp.zeros((), dtype), 2.0 * sy)
        dparams = tuple(jnp.stack([d[i] for i in jac_wrt]) for d in (dc2_all, dv_all, dy2_all))
        main, jac = _fast_pass(delta, s_hat, k0, sd, c2, mu, v, sy * sy, opts.h, opts.n_nodes, g, dparams)
    else:
        main, jac = _fast_pass(delta, s_hat, k0, sd, c2, mu, v, sy * sy, opts.h, opts.n_nodes, g), None
    main = _distrust(main, branch_ok & _line_ok(delta, s_hat, c2, mu, v, sy * sy))
    ok = (main.err_disc < tol["disc"]) & (main.err_tail < tol["tail"])
    # the data's own rounding: δ = y - E[y] is known to about ρ = eps (|y| + Σ_i |x_i w_i|), and
    # d log p / dy = -ŝ, so log p is uncertain by |ŝ| ρ + ρ² / (2 K''): negligible unless the
    # density is far narrower than the rounding of its location (noise levels ~1e-15 of |y|)
    rho = eps * (jnp.abs(y) + jnp.sum(jnp.abs(mu), axis=-1))
    extra = lax.stop_gradient(jnp.abs(s_hat) * rho + 0.5 * rho * rho / k2)
    if m == 1:   # y = 0 exactly without readout noise: the true density is infinite (log singularity)
        extra = jnp.where((y == 0) & (sy == 0), jnp.inf, extra)
    return _Stage(delta, main.logp, _error_estimate(main, eps), ok, extra, jac)


_MAX_LINE_RESIDUAL = 1.0   # |K'(ŝ) - y| / √K''(ŝ) above which a vertical-line pass is not trusted


def _line_ok(delta, s_hat, c2, mu, v, y2):
    """The inversion line passes (near) the saddlepoint: |K'(ŝ) - y| / √K''(ŝ) < 1. Off it the
    integrand oscillates at that standardised frequency on top of the peak exp(K(ŝ) - ŝ y), which
    then exceeds the density by exp(residual²/2) or (near the edge of the strip, where a few Newton
    steps can stall) by hundreds of nats; the nodes alias the oscillation and both step sizes can
    agree on a wrong value (seen: log p = 2304 certified at 8e-16 where the density is e^-17)."""
    _, k1, k2 = _cgf_derivs(s_hat, c2, mu, v, y2, with_value=False)
    return jnp.abs(k1 - delta) < _MAX_LINE_RESIDUAL * jnp.sqrt(k2)


def _branch_ok(c2, s_hat, g):
    """The fast pass's sufficient condition Σ_group c_i |ŝ| < 1.9 for its grouped logarithms."""
    m = c2.shape[-1]
    ng = -(-m // g)
    cabs = jnp.pad(jnp.sqrt(c2), (0, ng * g - m)).reshape(ng, g).sum(-1)
    return jnp.max(cabs) * jnp.abs(s_hat) < 1.9


def _finish(logp, err, extra, jac=None):
    """Final error estimate: the winning tier's plus the data-rounding term; ∞ where anything is not
    finite (never a silent NaN: such a value is always flagged)."""
    err = err + extra
    bad = ~jnp.isfinite(logp)
    if jac is not None:
        bad = bad | ~jnp.all(jnp.isfinite(jac), axis=-1)
    return jnp.where(bad, jnp.inf, err)


def _tier_names(m):
    """The robust tiers in the order they are tried, for M terms (the last one is not checked)."""
    if m == 1:
        return ("direct",)
    return ("medium", "tilted", "polar", "vertical") if m == 2 else ("medium", "tilted", "vertical")


def _tier_pass(tier, opts: _Opts, sx, sw, sy, y, delta, x, w) -> InversionResult:
    """One robust tier on R observations y, δ = y - E[y] (R,), x (R, M) of one weight vector w (M,).
    Differentiable in (σ_x, σ_w, σ_y). The inversion-line tiers solve for their own saddlepoint.

    medium:   the fast pass again with half the step and four times the range (8x the nodes);
    tilted:   inversion along the bent contour with a sinh map (the t^-M tail, M >= 2);
    polar:    M = 2, quadrature over the weight noise in polar coordinates;
    vertical: per-term complex inversion with step h/2 and a 16x range (the last tier, M >= 2);
    direct:   M = 1, direct quadrature over log|w̃|.
    """
    m = x.shape[-1]
    g = min(opts.group, m)
    y2 = sy * sy
    if tier == "direct":
        return _direct_m1_pass(y, x[:, 0], w[0], sx, sw, y2, opts.fallback_nodes)
    if tier == "polar":
        return _polar_m2_pass(y, x, w, sx, sw, y2, opts.polar_nodes)
    if tier not in ("medium", "tilted", "vertical"):
        raise ValueError(f"unknown tier {tier!r}")
    c2, mu, v = _term_params(x, w, sx, sw)
    # the line must pass through the saddlepoint itself (the bend assumes it, and a vertical line
    # off it aliases an oscillation, see _line_ok): near the edge of the strip the fast path's few
    # Newton steps can stall, so refine (from constant inputs, so ŝ and K''(ŝ) are constants under
    # differentiation), and trust the pass only if the refined line is on the saddlepoint
    consts = lax.stop_gradient((delta, c2, mu, v, y2))
    s_hat, k2s = _saddlepoint_from_terms(*consts, 4 * opts.n_iter + 16, return_k2=True, rolled=True)
    s_hat = lax.stop_gradient(s_hat)
    sd = lax.stop_gradient(jnp.sqrt(k2s))
    on_line = _line_ok(consts[0], s_hat, *consts[1:])
    k0, _, _ = _cgf_derivs(s_hat, c2, mu, v, y2)
    if tier == "tilted":
        res = _tilted_pass(y, delta, s_hat, k0, sd, c2, mu, v, y2, opts.tilted_h, opts.tilted_range)
    elif tier == "medium":
        res = _fast_pass(delta, s_hat, k0, sd, c2, mu, v, y2, 0.5 * opts.h, 8 * (opts.n_nodes - 1) + 1, g)
        on_line = on_line & _branch_ok(lax.stop_gradient(c2), s_hat, g)
    else:
        res = _fourier_pass(delta, s_hat, k0, sd * sd, c2, mu, v, y2, 0.5 * opts.h, 32 * (opts.n_nodes - 1) + 1)
    return _distrust(res, on_line)


def _certified(res: InversionResult, tol):
    return (res.err_disc < tol["disc"]) & (res.err_tail < tol["tail"])


def _exact_impl(sx, sw, sy, y, x, w, opts: _Opts, jac_wrt: tuple):
    """Log density, error estimate, fallback flag and d log p / d(noise levels in ``jac_wrt``).

    The fast pass covers every observation; observations that fail its checks are recomputed,
    ``fallback_batch`` at a time in ``lax.while_loop``s, by the tiers of :func:`_tier_pass`
    (M >= 2: medium, bent contour, for M = 2 polar, then the long vertical line; M = 1: direct
    quadrature). Each loop runs zero times when nothing needs it, and stays a loop under ``vmap``
    (a ``lax.cond`` would become a select that always pays for the robust schemes). Derivatives:
    analytic inside the fast pass, forward-mode autodiff at fixed nodes in the tiers, so no loop
    is ever differentiated. (:func:`loglik_grid` runs the same tiers host-side on gathered
    observations instead of in loops.)
    """
    dtype = x.dtype
    n, m = x.shape
    eps = float(jnp.finfo(dtype).eps)
    tol = _tolerances(dtype)
    st = _fast_stage(sx, sw, sy, y, x, w, opts, jac_wrt)
    theta = (sx, sw, sy)
    r = min(opts.fallback_batch, n)

    def with_jac(fn, theta):
        """fn(theta) -> (logp, aux); returns (aux, jacobian (N, len(jac_wrt)) or None)."""
        if not jac_wrt:
            return fn(theta)[1], None
        free = lambda sub: fn(tuple(sub[jac_wrt.index(i)] if i in jac_wrt else theta[i] for i in range(3)))
        jac, aux = jax.jacfwd(free, has_aux=True)(tuple(theta[i] for i in jac_wrt))
        return aux, jnp.stack(jac, axis=-1)

    def tier(name, checked, state):
        """Recompute the observations flagged in state[0], r at a time; those that the tier does not
        certify (when ``checked``) are flagged in state[5] for the next tier."""

        def fn(th, idx):
            res = _tier_pass(name, opts, *th, y[idx], st.delta[idx], x[idx], w)
            return res.logp, res

        def body(stt):
            todo, logp, err, fb, jac, nxt = stt
            idx = jnp.argsort(~todo, stable=True)[:r]          # up to r observations still to do
            res, jac_r = with_jac(lambda th: fn(th, idx), theta)
            e_r = _error_estimate(res, eps)
            sel = todo[idx]
            better = sel & (e_r <= err[idx])
            logp = logp.at[idx].set(jnp.where(better, res.logp, logp[idx]))
            err = err.at[idx].set(jnp.where(better, e_r, err[idx]))
            fb = fb.at[idx].set(fb[idx] | better)
            if jac is not None:
                jac = jac.at[idx].set(jnp.where(better[:, None], jac_r, jac[idx]))
            if checked:
                nxt = nxt.at[idx].set(nxt[idx] | (sel & ~_certified(res, tol)))
            return todo.at[idx].set(False), logp, err, fb, jac, nxt

        return lax.while_loop(lambda stt: jnp.any(stt[0]), body, state)

    nobody = jnp.zeros(n, bool)
    names = _tier_names(m)
    state = (~st.ok, st.logp, st.err, nobody, st.jac, nobody)
    for i, name in enumerate(names):
        if i:
            state = (state[5],) + tuple(state[1:5]) + (nobody,)
        state = tier(name, i < len(names) - 1, state)
    _, logp, err, fb, jac, _ = state
    return logp, _finish(logp, err, st.extra, jac), fb, jac


@partial(jax.custom_jvp, nondiff_argnums=(6,))
def _exact(sx, sw, sy, y, x, w, opts):
    logp, err, fb, _ = _exact_impl(sx, sw, sy, y, x, w, opts, ())
    return logp, err, fb.astype(logp.dtype)


def _exact_jvp(opts, primals, tangents):
    sx, sw, sy, y, x, w = primals
    for name, t in zip(("y", "x", "w"), tangents[3:]):
        if not isinstance(t, SymbolicZero):
            raise NotImplementedError(
                f"the exact NoisyDot log-density is differentiable w.r.t. the noise levels only, not {name}"
            )
    jac_wrt = tuple(i for i in range(3) if not isinstance(tangents[i], SymbolicZero))
    logp, err, fb, jac = _exact_impl(sx, sw, sy, y, x, w, opts, jac_wrt)
    t_out = jnp.zeros_like(logp)
    for col, i in enumerate(jac_wrt):
        t_out = t_out + jac[:, col] * tangents[i]
    zero = jnp.zeros_like(logp)
    return (logp, err, fb.astype(logp.dtype)), (t_out, zero, zero)


_exact.defjvp(_exact_jvp, symbolic_zeros=True)

# one compiled function per (shapes, dtype, options): eager calls reuse it instead of re-tracing and
# re-compiling the while loops on every call (inside an outer jit it is simply inlined)
_exact_jit = jax.jit(_exact, static_argnums=(6,))


def noisydot_logpdf_with_error(
    y, x, w, x_noise_lvl, w_noise_lvl, y_noise=0.0, *, h=0.6, n_nodes=13, n_iter=6, group=8,
    fallback_nodes=512, fallback_batch=16, polar_nodes=128, tilted_h=0.05, tilted_range=28.0,
):
    """Exact log p(y_n | x_n, w, σ_x, σ_w, σ_y) per observation, with an error estimate.

    Fast path: trapezoid rule on the saddlepoint-shifted inversion line (``n_nodes`` nodes of step
    ``h`` in standardised units, nodes k h for k < n_nodes). Observations whose step-halving,
    truncation or branch check fails are recomputed, ``fallback_batch`` at a time inside
    ``lax.while_loop``s (zero iterations, so zero cost, when all pass), by the robust tiers:
    M = 1: direct quadrature over log|w̃| (``fallback_nodes`` nodes per sign of w̃);
    M ≥ 2: the fast pass with step h/2 and 4x the range; then inversion along a contour bent into
    the half-plane where exp(-s y) decays, sinh-mapped nodes of step ``tilted_h`` up to
    u = ``tilted_range`` (the t^-M tail of the heavy corner, M ≥ 2); then, for M = 2, quadrature
    over the weight noise in polar coordinates (``polar_nodes``² nodes); then, for what is still
    not certified, complex inversion with step h/2 and a 16x longer range.
    The result per observation is whichever has the smaller error estimate.
    Differentiable (custom JVP, so also reverse mode) w.r.t. the three noise levels; the
    derivative is that of the quadrature at its fixed nodes. Not differentiable w.r.t. y, x, w.
    Unchecked and traceable: validate inputs with :func:`noisydot_logpdf` or the distribution.
    """
    x = jnp.asarray(x)
    dtype = jnp.result_type(x.dtype, float)
    x = x.astype(dtype)
    w = jnp.asarray(w, dtype)
    y = jnp.asarray(y, dtype)
    sx = jnp.asarray(x_noise_lvl, dtype)
    sw = jnp.asarray(w_noise_lvl, dtype)
    sy = jnp.asarray(y_noise, dtype)
    opts = _opts_from(dict(h=h, n_nodes=n_nodes, n_iter=n_iter, group=group, fallback_nodes=fallback_nodes,
                           fallback_batch=fallback_batch, polar_nodes=polar_nodes, tilted_h=tilted_h,
                           tilted_range=tilted_range))
    logp, err, fb = _exact_jit(sx, sw, sy, y, x, w, opts)
    return LogpdfResult(logp, err, fb > 0.5)


def noisydot_logpdf(y, x, w, x_noise_lvl, w_noise_lvl, y_noise=0.0, **kwargs):
    """Exact marginal log-density of each observation y_n (shape (N,)) of the noisy dot product.

    Accuracy (float64): |error| < 1e-8 nats over the strong-prior region; see docs/likelihood.md
    for the measured table and the heavy-noise corners. Checks concrete inputs (ValueError
    naming the argument); traceable under jit/vmap/grad.
    """
    check_design(x, w, y)
    check_positive("x_noise_lvl", x_noise_lvl)
    check_positive("w_noise_lvl", w_noise_lvl)
    check_positive("y_noise", y_noise, allow_zero=True)
    return noisydot_logpdf_with_error(y, x, w, x_noise_lvl, w_noise_lvl, y_noise, **kwargs).logp


# ---------------------------------------------------------------------------------------------
# Many parameter points per replicate (a quadrature over (σ_x, σ_w)): two-phase evaluation.
# ---------------------------------------------------------------------------------------------

class GridResult(NamedTuple):
    """Summed log-likelihood of each replicate at each of its parameter points (host arrays)."""

    loglik: np.ndarray     # (S, K) Σ_n log p(y_sn | x_sn, w_s, σ_x,sk, σ_w,sk, σ_y)
    err: np.ndarray        # (S, K) Σ_n of the per-observation error estimates (nats)
    n_robust: np.ndarray   # (S, K) observations the fast pass could not certify (evaluated by the tiers)
    grad: np.ndarray | None = None   # (S, K, 2) d loglik / d(σ_x, σ_w) when asked for


def _opts_from(kwargs) -> _Opts:
    """Quadrature options (the defaults are those of :func:`noisydot_logpdf_with_error`)."""
    d = {k: p.default for k, p in inspect.signature(noisydot_logpdf_with_error).parameters.items()
         if p.kind is inspect.Parameter.KEYWORD_ONLY}
    unknown = set(kwargs) - set(d)
    if unknown:
        raise ValueError(f"unknown quadrature option(s) {sorted(unknown)}; known: {sorted(d)}")
    d.update(kwargs)
    return _Opts(float(d["h"]), int(d["n_nodes"]), int(d["n_iter"]), int(d["group"]), int(d["fallback_nodes"]),
                 int(d["fallback_batch"]), int(d["polar_nodes"]), float(d["tilted_h"]), float(d["tilted_range"]))


@partial(jax.jit, static_argnames=("opts", "with_grad"))
def _grid_fast(y, x, w, sx, sw, sy, opts, with_grad):
    """Phase 1 on a block of P points: y (P, N), x (P, N, M), w (P, M), σ (P,). Per (point, observation)
    the fast-pass result, its certification and what phase 2 starts from."""

    def one(y1, x1, w1, sx1, sw1):
        st = _fast_stage(sx1, sw1, sy, y1, x1, w1, opts, (0, 1) if with_grad else ())
        jac = st.jac if with_grad else jnp.zeros(y1.shape + (0,), y1.dtype)
        return st.logp, st.err, st.ok, st.extra, st.delta, jac

    return jax.vmap(one)(y, x, w, sx, sw)


@partial(jax.jit, static_argnames=("tier", "opts", "with_grad"))
def _grid_tier(y, delta, x, w, sx, sw, sy, tier, opts, with_grad):
    """Phase 2: one robust tier on a bucket of B independent (replicate, point, observation) triples:
    y, δ, σ_x, σ_w (B,), x and w (B, M)."""

    def one(y1, d1, x1, w1, sx1, sw1):
        def f(th):
            res = _tier_pass(tier, opts, th[0], th[1], sy, y1[None], d1[None], x1[None], w1)
            return res.logp[0], res
        if with_grad:
            jac, res = jax.jacfwd(f, has_aux=True)((sx1, sw1))
            jac = jnp.stack(jac)
        else:
            res = f((sx1, sw1))[1]
            jac = jnp.zeros((0,), y1.dtype)
        return res.logp[0], res.err_disc[0], res.err_tail[0], jac

    return jax.vmap(one)(y, delta, x, w, sx, sw)


def _pad_to(a, size):
    """a (n, ...) padded to (size, ...) with copies of its first row (valid inputs, results dropped)."""
    n = a.shape[0]
    if n == size:
        return a
    return np.concatenate([a, np.broadcast_to(a[:1], (size - n,) + a.shape[1:])], axis=0)


def loglik_grid(y, x, w, x_noise_lvl, w_noise_lvl, y_noise=0.0, *, with_grad=False, block_obs=8192,
                bucket=128, **options) -> GridResult:
    """Summed exact log-likelihood of S replicates at K parameter points each, two-phase (host level).

    y (S, N), x (S, N, M), w (S, M), x_noise_lvl and w_noise_lvl (S, K), y_noise a scalar. Returns a
    :class:`GridResult` of NumPy arrays (S, K) (``grad`` (S, K, 2) w.r.t. (σ_x, σ_w) if ``with_grad``).

    Phase 1: the vectorised fast pass for every (replicate, point, observation), in blocks of about
    ``block_obs`` observations (points padded to a fixed block, so one compiled function serves every
    call with the same N and M). Phase 2: only the triples the fast pass could not certify are
    gathered on the host and evaluated, tier after tier (those of :func:`noisydot_logpdf_with_error`,
    in the same order, each tier only on what the previous one did not certify), in buckets of
    ``bucket`` triples padded to that size, so each tier compiles once. Under ``vmap`` the in-graph
    version pays every ``while_loop`` round of the worst observation for the whole batch; here the
    robust work is proportional to the number of uncertified triples. Per observation the result
    is the one :func:`noisydot_logpdf_with_error` returns (whichever tier has the smaller error
    estimate; same passes, same nodes), summed over observations. Value only by default; with
    ``with_grad`` also the derivative (analytic in phase 1, forward-mode in the tiers).
    ``options``: the quadrature options of :func:`noisydot_logpdf_with_error`.
    """
    as_finite_array("y", y, ndim=2)
    as_finite_array("x", x, ndim=3)
    as_finite_array("w", w, ndim=2)
    x = np.asarray(x)
    dtype = np.dtype(jnp.result_type(x.dtype, float))
    x = x.astype(dtype)
    y = np.asarray(y, dtype)
    w = np.asarray(w, dtype)
    s_rep, n, m = x.shape
    if y.shape != (s_rep, n):
        raise ValueError(f"y must have shape (S, N) = {(s_rep, n)} to match x {x.shape}, got {y.shape}")
    if w.shape != (s_rep, m):
        raise ValueError(f"w must have shape (S, M) = {(s_rep, m)} to match x {x.shape}, got {w.shape}")
    if np.any(np.all(w == 0, axis=-1)):
        raise ValueError("w is all zero in some replicate: the device output carries no information about the noise")
    sx = np.asarray(x_noise_lvl, dtype)
    sw = np.asarray(w_noise_lvl, dtype)
    for name, a in (("x_noise_lvl", sx), ("w_noise_lvl", sw)):
        if a.ndim != 2 or a.shape[0] != s_rep:
            raise ValueError(f"{name} must have shape (S, K) with S = {s_rep}, got {a.shape}")
        check_positive(name, a)
    if sx.shape != sw.shape:
        raise ValueError(f"x_noise_lvl {sx.shape} and w_noise_lvl {sw.shape} must have the same shape (S, K)")
    if np.ndim(y_noise) != 0:
        raise ValueError(f"y_noise must be a scalar, got shape {np.shape(y_noise)}")
    check_positive("y_noise", y_noise, allow_zero=True)
    if int(bucket) < 1 or int(block_obs) < 1:
        raise ValueError("bucket and block_obs must be >= 1")
    opts = _opts_from(options)
    k = sx.shape[1]
    eps = float(np.finfo(dtype).eps)
    tol = _tolerances(dtype)
    sy = jnp.asarray(y_noise, dtype)
    n_pts = s_rep * k
    rep = np.repeat(np.arange(s_rep), k)
    sx_p, sw_p = sx.reshape(-1), sw.reshape(-1)

    # ---- phase 1: the fast pass everywhere ----------------------------------------------------
    pb = max(1, min(n_pts, int(block_obs) // n))
    outs = []
    for start in range(0, n_pts, pb):
        sl = slice(start, min(start + pb, n_pts))
        r = rep[sl]
        args = [_pad_to(a, pb) for a in (y[r], x[r], w[r], sx_p[sl], sw_p[sl])]
        res = _grid_fast(*args, sy, opts=opts, with_grad=bool(with_grad))
        outs.append([np.asarray(a)[: sl.stop - sl.start] for a in res])
    logp, err, ok, extra, delta, jac = (np.concatenate(c, axis=0) for c in zip(*outs))
    logp, err, jac = logp.copy(), err.copy(), jac.copy()

    # ---- phase 2: the uncertified triples, tier by tier, in fixed-size buckets -----------------
    todo_p, todo_n = np.nonzero(~ok)
    n_robust = np.bincount(todo_p, minlength=n_pts)
    names = _tier_names(m)
    for i, tier in enumerate(names):
        if todo_p.size == 0:
            break
        nxt = []
        for start in range(0, todo_p.size, int(bucket)):
            p_i, n_i = todo_p[start:start + int(bucket)], todo_n[start:start + int(bucket)]
            r = rep[p_i]
            args = [_pad_to(a, int(bucket)) for a in (y[r, n_i], delta[p_i, n_i], x[r, n_i], w[r], sx_p[p_i],
                                                     sw_p[p_i])]
            lp_r, ed, et, jac_r = (np.asarray(a)[: p_i.size] for a in _grid_tier(
                *args, sy, tier=tier, opts=opts, with_grad=bool(with_grad)))
            e_r = np.maximum(np.maximum(ed, et), eps)
            better = e_r <= err[p_i, n_i]
            logp[p_i[better], n_i[better]] = lp_r[better]
            err[p_i[better], n_i[better]] = e_r[better]
            if with_grad:
                jac[p_i[better], n_i[better]] = jac_r[better]
            if i < len(names) - 1:
                keep = ~((ed < tol["disc"]) & (et < tol["tail"]))
                nxt.append((p_i[keep], n_i[keep]))
        if nxt:
            todo_p = np.concatenate([a for a, _ in nxt])
            todo_n = np.concatenate([b for _, b in nxt])
        else:
            todo_p = todo_n = np.zeros(0, int)

    # ---- per-observation finish (as in noisydot_logpdf_with_error), sum over observations ------
    err = err + extra
    bad = ~np.isfinite(logp)
    if with_grad:
        bad |= ~np.all(np.isfinite(jac), axis=-1)
    err = np.where(bad, np.inf, err)
    shape = (s_rep, k)
    grad = jac.sum(axis=1).reshape(shape + (2,)) if with_grad else None
    return GridResult(logp.sum(axis=1).reshape(shape), err.sum(axis=1).reshape(shape), n_robust.reshape(shape), grad)
