"""The cumulant generating function of y and its saddlepoint (see docs/likelihood.md).

One job: the per-term parameters, the centred CGF K̃(s) = K(s) - s E[y] (real or complex s, with
a custom JVP in bounded forms), its first two derivatives, the safeguarded Newton solver for the
saddlepoint K'(ŝ) = y and the first-order saddlepoint approximation. The inversion passes
(:mod:`.inversion`) and the exact density (:mod:`.exact`) build on these.

Per term i of observation n:  A = x_ni + σ_x e,  B = w_i (1 + σ_w u)  (independent Gaussians)
  log M_i(s) = -½ log(1 - s² c_i²) + (s μ_ni + s² v_ni / 2) / (1 - s² c_i²)
  c_i = σ_x σ_w |w_i|,  μ_ni = x_ni w_i,  v_ni = w_i² (x_ni² σ_w² + σ_x²)
K_n(s) = Σ_i log M_i(s) + σ_y² s² / 2, analytic for |Re s| < 1 / max_i c_i.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero


def term_params(x, w, x_noise_lvl, w_noise_lvl):
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


def cgf_from_terms(s, c2, mu, v, y2):
    """Centred K̃(s) = K(s) - s E[y] for s of shape (N, K) (real or complex); terms broadcast as (N, 1, M)."""
    return _centred_term_sum(s, c2, mu, v) + 0.5 * y2 * s * s


def cgf(s, x, w, x_noise_lvl, w_noise_lvl, y_noise=0.0):
    """Cumulant generating function K_n(s) of y_n (shape (N,)); s broadcastable to (N,).

    Complex ``s`` is allowed (principal branches; valid for |Re s| < 1/max_i σ_x σ_w |w_i|).
    """
    x = jnp.asarray(x)
    s = jnp.broadcast_to(jnp.asarray(s), (x.shape[0],))
    c2, mu, v = term_params(x, jnp.asarray(w), x_noise_lvl, w_noise_lvl)
    return cgf_from_terms(s[:, None], c2, mu[:, None, :], v[:, None, :], y_noise**2)[:, 0] + s * jnp.sum(mu, axis=-1)


def cgf_derivs(s, c2, mu, v, y2, with_value=True):
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


def saddlepoint_from_terms(delta, c2, mu, v, y2, n_iter, return_k2=False, rolled=False):
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
        _, k1, k2 = cgf_derivs(s, c2, mu, v, y2, with_value=False)
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
    c2, mu, v = term_params(x, jnp.asarray(w), x_noise_lvl, w_noise_lvl)
    c2, mu, v, y2 = lax.stop_gradient((c2, mu, v, jnp.asarray(y_noise, x.dtype) ** 2))
    return saddlepoint_from_terms(lax.stop_gradient(y - jnp.sum(mu, axis=-1)), c2, mu, v, y2, n_iter)


def saddlepoint_logpdf(y, x, w, x_noise_lvl, w_noise_lvl, y_noise=0.0):
    """First-order saddlepoint approximation log[exp(K(ŝ) - ŝ y) / √(2π K''(ŝ))] (not normalised)."""
    x = jnp.asarray(x)
    c2, mu, v = term_params(x, jnp.asarray(w), x_noise_lvl, w_noise_lvl)
    y2 = jnp.asarray(y_noise, x.dtype) ** 2
    delta = jnp.asarray(y, x.dtype) - jnp.sum(mu, axis=-1)
    s = lax.stop_gradient(saddlepoint_from_terms(*lax.stop_gradient((delta, c2, mu, v, y2)), 16))
    k0, _, k2 = cgf_derivs(s, c2, mu, v, y2)
    return k0 - s * delta - 0.5 * jnp.log(2.0 * jnp.pi * k2)
