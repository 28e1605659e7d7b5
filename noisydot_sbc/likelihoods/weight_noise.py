"""Direct quadratures over the weight noise, for the corners Fourier inversion cannot reach.

One job: the exact density as an integral over the weight noise w̃ of the conditional Gaussian
of y given w̃ (no characteristic function): :func:`direct_m1_pass` for M = 1 (over log|w̃/w|,
one pass per sign of w̃) and :func:`polar_m2_pass` for M = 2 (polar coordinates around the
singular point w̃ = 0). Each returns an :class:`~.inversion.InversionResult`; :mod:`.exact` uses
them as robust tiers.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from .inversion import InversionResult


def _log_floor(dtype):
    """Lowest log|w̃/w| (M = 1) or log radius (M = 2) a weight-noise quadrature goes down to: -90
    in float64, -83 in float32 (e^-z must stay finite; the integrands are written in units of e^z)."""
    return max(-90.0, math.log(float(jnp.finfo(dtype).tiny)) + 4.0)


def direct_m1_pass(y, x1, w1, x_noise_lvl, w_noise_lvl, y2, n_nodes):
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


def polar_m2_pass(y, x, w, x_noise_lvl, w_noise_lvl, y2, n_nodes):
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
