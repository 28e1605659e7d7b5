"""Fourier-inversion passes for the exact density, with their error estimates (see docs/likelihood.md).

One job: one quadrature pass of the inversion integral per observation, p(y) from the CGF on a
line or contour through the saddlepoint: :func:`fast_pass` (real arithmetic, grouped logarithms,
optional analytic derivatives: the speed path), :func:`fourier_pass` (the vertical line in complex
arithmetic) and :func:`tilted_pass` (the contour bent into the half-plane where exp(-s y) decays);
the :class:`InversionResult` every pass returns, and the tolerances and error-estimate helpers
that certify a pass. Which pass runs where is decided in :mod:`.exact`.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from .cumulants import cgf_from_terms


class InversionResult(NamedTuple):
    """Per-observation output of one quadrature pass: log density and its error indicators."""

    logp: jax.Array        # (N,) log density
    err_disc: jax.Array    # (N,) estimated relative discretisation error, from the rule with step 2h
    err_tail: jax.Array    # (N,) |integrand| at the last node relative to the integrand at v = 0


# --- fast float64 phase arithmetic for the fast pass -----------------------------------------
# Hand-written because XLA's CPU backend evaluates float64 cos, sin and atan2 (the complex log's
# argument) one element at a time: measured on the 2-core Xeon inside a compiled loop, 14-18 ns
# per element for cos, 21 ns for atan2 and 32 ns for a complex log, against 1.4 ns for the
# polynomial below, which XLA vectorises. The fast pass spends one complex log and one cosine per
# node and observation, so these were about a third of its cost.

_PIO2 = (1.5707963267341256e+00, 6.077100506303966e-11, 2.0222662487959506e-21)  # π/2 in three parts
# (the first two with 33 significant bits, so k·part is exact for |k| < 2^20: Cody-Waite reduction)
PHASE_MAX = 2.0 ** 19   # |phase| up to which sincos is accurate to ~2 ulp (the reduction stays exact)
_SIN = (-1.0 / 6, 1.0 / 120, -1.0 / 5040, 1.0 / 362880, -1.0 / 39916800, 1.0 / 6227020800, -1.0 / 1307674368000)
_COS = (1.0 / 24, -1.0 / 720, 1.0 / 40320, -1.0 / 3628800, 1.0 / 479001600, -1.0 / 87178291200,
        1.0 / 20922789888000)


def _horner(r2, coefs):
    p = coefs[-1]
    for c in coefs[-2::-1]:
        p = c + r2 * p
    return p


def sincos(x):
    """(sin x, cos x) elementwise. float64: reduction by π/2 in three parts (Cody-Waite) and the
    Taylor polynomials of sin and cos on [-π/4, π/4] up to r^15 and r^16 (truncation below
    5e-17): within 2.3e-16 of the libm values for |x| ≤ :data:`PHASE_MAX` (tested against NumPy);
    beyond it the caller must not trust the result. Other dtypes: ``jnp.sin``, ``jnp.cos``."""
    if jnp.result_type(x) != jnp.float64:
        return jnp.sin(x), jnp.cos(x)
    k = jnp.round(x * (2.0 / math.pi))
    r = ((x - k * _PIO2[0]) - k * _PIO2[1]) - k * _PIO2[2]
    r2 = r * r
    s = r + r * r2 * _horner(r2, _SIN)
    c = 1.0 - 0.5 * r2 + r2 * r2 * _horner(r2, _COS)
    q = jnp.clip(k, -PHASE_MAX, PHASE_MAX).astype(jnp.int32) & 3
    sin_x = jnp.where(q == 0, s, jnp.where(q == 1, c, jnp.where(q == 2, -s, -c)))
    cos_x = jnp.where(q == 0, c, jnp.where(q == 1, -s, jnp.where(q == 2, -c, s)))
    return sin_x, cos_x


def half_angle(re, im, mod2):
    """(cos ½θ, sin ½θ) for z = re + i·im = |z| e^{iθ}, θ ∈ (-π, π], |z|² = ``mod2``: the unit
    vector of the principal √z, with square roots and one division (no atan2). Each half is
    computed where it has no cancellation (cos ½θ from 1 + cos θ where re ≥ 0, sin ½θ from
    1 - cos θ where re < 0) and the other from sin θ = 2 sin ½θ cos ½θ."""
    mod = jnp.sqrt(mod2)
    cos_t = re / mod
    pos = re >= 0.0
    ch = jnp.sqrt(0.5 * (1.0 + jnp.where(pos, cos_t, 1.0)))                  # ≥ √½ where used
    sh = jnp.where(im >= 0.0, 1.0, -1.0) * jnp.sqrt(0.5 * (1.0 - jnp.where(pos, 0.0, cos_t)))  # |sh| ≥ √½ where used
    return jnp.where(pos, ch, im / (2.0 * mod * sh)), jnp.where(pos, im / (2.0 * mod * ch), sh)


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


def fourier_pass(delta, s_hat, k0, k2, c2, mu, v, y2, h, n_nodes):
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
    expo = cgf_from_terms(s, c2, mu[:, None, :], v[:, None, :], y2) - k0[:, None] - 1j * t * delta[:, None]
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



_TILTED_RATE = 1.2   # a₀: assumed lower bound of the convergence rate a in e(h) = C exp(-a/h) of the bent-contour rule


def tilted_pass(y, delta, s_hat, k0, sd, c2, mu, v, y2, h, u_max, kappa=0.75, t0=3.0):
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
    Centred form as in :func:`fourier_pass` (``delta`` = y - E[y], ``k0`` = K̃(ŝ)); ``y`` itself
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
    expo = cgf_from_terms(s, c2, mu[:, None, :], v[:, None, :], y2) - k0[:, None] - (s - s_hat[:, None]) * delta[:, None]
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


def fast_pass(delta, s_hat, k0, sd, c2, mu, v, y2, h, n_nodes, group, dparams=None):
    """Real-arithmetic version of :func:`fourier_pass` for the common case (the speed path).
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
    half_log_mod = jnp.zeros_like(b)   # ½ Σ_groups log|Π D_i|
    rot_re = rot_im = None             # exp(i ½ Σ_groups arg Π D_i), the groups' half-angle unit vectors multiplied
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
            mod2 = pr_re * pr_re + pr_im * pr_im
            half_log_mod = half_log_mod + 0.25 * jnp.log(mod2)
            hc, hs = half_angle(pr_re, pr_im, mod2)
            if rot_re is None:
                rot_re, rot_im = hc, hs
            else:
                rot_re, rot_im = rot_re * hc - rot_im * hs, rot_re * hs + rot_im * hc
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
    # the node's integrand exp(e_re + i (e_im - φ)), φ = ½ arg Π D: its phase from sincos(e_im) and
    # the unit vector (cos φ, sin φ) = rot (one principal log per group, as the group condition allows)
    e_re = e_re - half_log_mod + 0.5 * y2 * diff - k0[:, None]
    e_im = e_im + y2 * ab - b * delta[:, None]
    amp = jnp.exp(e_re)
    sin_e, cos_e = sincos(e_im)
    re = amp * (cos_e * rot_re + sin_e * rot_im)
    total = 0.5 + jnp.sum(re, axis=-1)
    half = 0.5 + jnp.sum(re[:, 1::2], axis=-1)
    err_disc = _step_halving(total, half)
    err_tail = _tail_estimate(e_re[:, -1], e_re[:, -2], total)
    safe_total = jnp.where(total > 0, total, 1.0)
    logp = k0 - s_hat * delta + jnp.log(h * safe_total / (jnp.pi * sd))
    logp = jnp.where(total > 0, logp, -jnp.inf)
    phase_ok = jnp.all(jnp.abs(e_im) <= PHASE_MAX, axis=-1)   # where sincos is accurate
    err_disc = jnp.where((total > 0) & phase_ok, err_disc, jnp.inf)
    res = InversionResult(logp, err_disc, err_tail)
    if not with_d:
        return res
    f_im = amp * (sin_e * rot_re - cos_e * rot_im)
    cols = []
    for j in range(n_par):
        d0j = dk0[j] + 0.5 * dy2[j] * s_hat * s_hat
        dkr = dk_re[j] + 0.5 * dy2[j] * diff
        dki = dk_im[j] + dy2[j] * ab
        corr = jnp.sum(re * (dkr - d0j[:, None]) - f_im * dki, axis=-1)
        cols.append(d0j + corr / safe_total)
    return res, jnp.stack(cols, axis=-1)


def tolerances(dtype):
    eps = float(jnp.finfo(dtype).eps)
    # target: estimated relative error ≤ 1e-9 in float64 (1e-6 in float32)
    return dict(disc=1e-9, tail=1e-10) if eps < 1e-10 else dict(disc=1e-6, tail=1e-6)


def distrust(res: InversionResult, trusted):
    """The pass's result with an infinite error estimate where ``trusted`` is False: a pass that
    takes the logarithm of grouped products is worth nothing where their branch check fails
    (a node's term can have the wrong sign while both step sizes agree), so it neither certifies
    nor wins against another tier there."""
    return res._replace(err_disc=jnp.where(trusted, res.err_disc, jnp.inf))


def error_estimate(res: InversionResult, eps):
    return jnp.maximum(jnp.maximum(res.err_disc, res.err_tail), eps)
